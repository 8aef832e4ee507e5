//! The Directory on real PostgreSQL (the seed's DDL verbatim) and on SQLite, against the
//! seed-shaped fixtures of `tests/support/fixtures.rs`.
mod support;

use mailcluster::config::Role;
use mailcluster::directory::{self, Directory, DomainSource};
use mailcluster::names::{Domain, LocalPart, Strictness};
use mailcluster::ErrorKind;
use std::time::{Duration, Instant};
use support::fixtures::{self, md5_hex, S1, S2};
use support::pg;

const T: Duration = Duration::from_secs(5);

fn d(s: &str) -> Domain {
    Domain::parse(s, Strictness::Lookup).unwrap()
}
fn lp(s: &str) -> LocalPart {
    LocalPart::parse(s, Strictness::Lookup).unwrap()
}

/// Every read operation against the fixture dataset.
fn check_reads(dir: &mut dyn Directory, with_password: bool) {
    let what = dir.describe();
    // is_local_domain
    assert!(
        dir.is_local_domain(&d("msk.domain.ru"), S1).unwrap(),
        "{what}"
    );
    assert!(dir
        .is_local_domain(&d("MSK.Domain.RU"), "Storage-01.domain.ru")
        .unwrap());
    assert!(!dir.is_local_domain(&d("msk.domain.ru"), S2).unwrap());
    assert!(dir.is_local_domain(&d("nsk.domain.ru"), S2).unwrap());
    assert!(
        !dir.is_local_domain(&d("old.domain.ru"), S1).unwrap(),
        "disabled ldomain"
    );
    assert!(
        !dir.is_local_domain(&d("shop.closed.ru"), S2).unwrap(),
        "disabled mdomain"
    );
    assert!(dir.is_local_domain(&d("example.org"), S2).unwrap());
    assert!(!dir.is_local_domain(&d("gone.example.net"), S1).unwrap());
    assert!(
        dir.is_local_domain(&d("both.domain.ru"), S1).unwrap(),
        "ldomain wins"
    );
    assert!(!dir.is_local_domain(&d("both.domain.ru"), S2).unwrap());
    assert!(!dir.is_local_domain(&d("nowhere.domain.ru"), S1).unwrap());
    assert!(!dir.is_local_domain(&d("domain.ru"), S1).unwrap());

    // route
    let r = dir.route(&d("msk.domain.ru")).unwrap().unwrap();
    assert_eq!((r.primary.as_str(), r.backup.as_deref()), (S1, Some(S2)));
    assert!(r.active);
    assert_eq!(r.source, DomainSource::Ldomain);
    let r = dir.route(&d("Nsk.domain.ru")).unwrap().unwrap();
    assert_eq!(r.domain.as_str(), "nsk.domain.ru");
    assert_eq!((r.primary.as_str(), r.backup.as_deref()), (S2, Some(S1)));
    let r = dir.route(&d("ekb.domain.ru")).unwrap().unwrap();
    assert_eq!(r.backup, None, "empty storage2");
    let r = dir.route(&d("shop.closed.ru")).unwrap().unwrap();
    assert_eq!(r.backup, None, "storage2 = storage1");
    assert!(!r.active);
    let r = dir.route(&d("example.org")).unwrap().unwrap();
    assert_eq!(r.source, DomainSource::CoDomain);
    assert_eq!((r.primary.as_str(), r.backup.as_deref()), (S2, Some(S1)));
    let r = dir.route(&d("both.domain.ru")).unwrap().unwrap();
    assert_eq!(r.source, DomainSource::Ldomain);
    assert_eq!(r.primary, S1);
    let r = dir.route(&d("gone.example.net")).unwrap().unwrap();
    assert!(!r.active);
    assert!(dir.route(&d("nowhere.example.com")).unwrap().is_none());

    // mailbox
    for (addr, pw, mactive, dactive) in fixtures::MAILBOXES {
        let (m, dom) = addr.split_once('@').unwrap();
        let rec = dir
            .mailbox(&lp(m), &d(dom))
            .unwrap()
            .unwrap_or_else(|| panic!("{addr}"));
        assert_eq!(rec.address(), *addr);
        assert_eq!(rec.mailbox_active, *mactive, "{addr}");
        assert_eq!(rec.domain_active, *dactive, "{addr}");
        let want = if with_password { pw.map(md5_hex) } else { None };
        assert_eq!(rec.password, want, "{addr}");
    }
    let rec = dir
        .mailbox(&lp("KUZNETSOV"), &d("NSK.domain.ru"))
        .unwrap()
        .unwrap();
    assert_eq!(rec.address(), "kuznetsov@nsk.domain.ru");
    assert!(dir
        .mailbox(&lp("dir"), &d("msk.domain.ru"))
        .unwrap()
        .is_none());
    assert!(dir
        .mailbox(&lp("DIR"), &d("msk.domain.ru"))
        .unwrap()
        .is_none());
    assert!(dir
        .mailbox(&lp("nobody"), &d("msk.domain.ru"))
        .unwrap()
        .is_none());
    assert!(dir
        .mailbox(&lp("ivanov"), &d("spb.domain.ru"))
        .unwrap()
        .is_none());
    assert!(dir
        .mailbox(&lp("ivanov"), &d("example.org"))
        .unwrap()
        .is_none());

    // mailboxes_of: one answer per key, in order, each what `mailbox` answers (PostgreSQL:
    // one statement for the names stored as asked; `Kuznetsov` in `Nsk` is found by the
    // case-insensitive lookup of its key alone).
    let mut keys: Vec<(LocalPart, Domain)> = fixtures::MAILBOXES
        .iter()
        .map(|(addr, ..)| {
            let (m, dom) = addr.split_once('@').unwrap();
            (lp(m), d(dom))
        })
        .collect();
    for (m, dom) in [
        ("KUZNETSOV", "NSK.domain.ru"),
        ("dir", "msk.domain.ru"),
        ("nobody", "msk.domain.ru"),
        ("ivanov", "spb.domain.ru"),
        ("ivanov", "example.org"),
    ] {
        keys.push((lp(m), d(dom)));
    }
    keys.push(keys[0].clone());
    let many = dir.mailboxes_of(&keys).unwrap();
    let one: Vec<_> = keys
        .iter()
        .map(|(m, dom)| dir.mailbox(m, dom).unwrap())
        .collect();
    assert_eq!(many, one, "{what}");
    assert_eq!(
        many.iter().flatten().count(),
        fixtures::MAILBOXES.len() + 2,
        "{what}"
    );
    assert!(dir.mailboxes_of(&[]).unwrap().is_empty());
    assert_eq!(dir.mailboxes_of(&keys[..1]).unwrap(), one[..1]);

    // domains
    let all = dir.domains(None).unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.domain.as_str()).collect();
    assert_eq!(
        names,
        [
            "both.domain.ru",
            "ekb.domain.ru",
            "example.org",
            "gone.example.net",
            "kzn.domain.ru",
            "msk.domain.ru",
            "nsk.domain.ru",
            "old.domain.ru",
            "shop.closed.ru",
            "spb.domain.ru"
        ]
    );
    let s1: Vec<String> = dir
        .domains(Some("STORAGE-01.domain.ru"))
        .unwrap()
        .into_iter()
        .map(|r| r.domain.to_string())
        .collect();
    assert_eq!(
        s1,
        [
            "both.domain.ru",
            "ekb.domain.ru",
            "gone.example.net",
            "kzn.domain.ru",
            "msk.domain.ru",
            "old.domain.ru"
        ]
    );
    let s2 = dir.domains(Some(S2)).unwrap();
    assert_eq!(s2.len(), 4);
    assert!(s2.iter().all(|r| r.primary == S2));
    let kzn = s1.iter().position(|x| x == "kzn.domain.ru").unwrap();
    assert_eq!(
        dir.domains(Some(S1)).unwrap()[kzn].backup.as_deref(),
        Some(S2)
    );
    assert!(dir
        .domains(Some("storage-99.domain.ru"))
        .unwrap()
        .is_empty());

    // mailboxes
    let all = dir.mailboxes().unwrap();
    let addrs: Vec<String> = all.iter().map(|m| m.address()).collect();
    let want: Vec<&str> = fixtures::MAILBOXES.iter().map(|m| m.0).collect();
    assert_eq!(addrs, want);

    // node names
    let nodes = dir.node_names().unwrap();
    assert_eq!(
        nodes.into_iter().collect::<Vec<_>>(),
        [S1.to_string(), S2.to_string()]
    );
}

#[test]
fn reads_on_postgres_unix_socket() {
    let db = fixtures::pg_seed("reads_unix");
    let mut dir = directory::open(&db.url, T).unwrap();
    check_reads(dir.as_mut(), true);
    assert!(!dir.describe().contains(pg::PASSWORD));
}

#[test]
fn reads_on_postgres_tcp_url() {
    let db = fixtures::pg_seed("reads_tcp");
    let mut dir = directory::open(&db.tcp_url, T).unwrap();
    check_reads(dir.as_mut(), true);
    assert!(!dir.describe().contains(pg::PASSWORD));
}

#[test]
fn postgres_connection_string_forms() {
    let pg = pg::shared();
    let db = fixtures::pg_seed("conn_forms");
    let sock = pg.socket_dir().display().to_string();
    let enc = sock.replace('/', "%2F");
    let port = pg.port();
    for url in [
        format!("postgresql://mail@{enc}:{port}/{}", db.name),
        format!(
            "postgresql:///{}?host={sock}&port={port}&user=mail",
            db.name
        ),
        format!(
            "postgres://mail:{}@localhost:{port}/{}?sslmode=require",
            pg::PASSWORD,
            db.name
        ),
        format!(
            "host = '{sock}' port = {port} user = mail dbname = {}",
            db.name
        ),
        format!(
            "host=127.0.0.1 port={port} user=mail password='{}' dbname={} sslmode=disable",
            pg::PASSWORD,
            db.name
        ),
    ] {
        let mut dir = directory::open(&url, T).unwrap();
        assert!(
            dir.is_local_domain(&d("msk.domain.ru"), S1)
                .unwrap_or_else(|e| panic!("{url}: {e}")),
            "{url}"
        );
        assert!(!dir.describe().contains(pg::PASSWORD));
    }
    // Wrong password: a configuration error, not "not found", without the password.
    let url = format!("postgresql://mail:wrong-pw@127.0.0.1:{port}/{}", db.name);
    let e = directory::open(&url, T)
        .and_then(|mut x| x.route(&d("msk.domain.ru")))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");
    // A database that does not exist: configuration.
    let e = directory::open(&pg.url("no_such_db"), T)
        .and_then(|mut x| x.route(&d("msk.domain.ru")))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    // A database without the tables: configuration, pointing at schema check.
    let empty = pg.create_db("conn_empty");
    let e = directory::open(&empty.url, T)
        .and_then(|mut x| x.route(&d("msk.domain.ru")))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("schema check"), "{e}");
}

#[test]
fn reads_on_postgres_smtp_role() {
    let db = fixtures::pg_seed_smtp("reads_smtp");
    let mut dir = directory::open(&db.url, T).unwrap();
    check_reads(dir.as_mut(), false);
}

#[test]
fn reads_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let url = fixtures::sqlite_seed(tmp.path());
    let mut dir = directory::open(&url, T).unwrap();
    check_reads(dir.as_mut(), true);
    let url = fixtures::sqlite_seed_smtp(tmp.path());
    let mut dir = directory::open(&url, T).unwrap();
    check_reads(dir.as_mut(), false);
}

#[test]
fn sqlite_missing_file_is_a_config_error_and_is_not_created() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("absent.sqlite");
    let e = directory::open(&format!("sqlite:{}", path.display()), T)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("absent.sqlite"), "{e}");
    assert!(e.to_string().contains("mailctl schema init"), "{e}");
    assert!(!path.exists());
    // An existing file without the tables: configuration, pointing at schema check.
    let empty = tmp.path().join("empty.sqlite");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE other (x INTEGER);")
        .unwrap();
    let mut dir = directory::open(&format!("sqlite:{}", empty.display()), T).unwrap();
    let e = dir.route(&d("msk.domain.ru")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("schema check"), "{e}");
    // Not a database at all.
    let junk = tmp.path().join("junk.sqlite");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let e = directory::open(&format!("sqlite:{}", junk.display()), T)
        .and_then(|mut x| x.route(&d("msk.domain.ru")))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
}

fn check_writes(url: &str, with_password: bool) {
    let mut w = directory::open_writer(url, T).unwrap();
    let new = d("tver.domain.ru");
    w.add_domain(&new, DomainSource::Ldomain, S2, Some(S1), true)
        .unwrap();
    assert!(w.is_local_domain(&new, S2).unwrap());
    let e = w
        .add_domain(&new, DomainSource::Ldomain, S2, Some(S1), true)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    // A new mdomain is created on the fly.
    let other = d("shop.other.ru");
    let e = w
        .add_domain(&other, DomainSource::Ldomain, S1, None, true)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput, "label shop is taken: {e}");
    let other = d("sochi.other.ru");
    w.add_domain(&other, DomainSource::Ldomain, S1, None, true)
        .unwrap();
    let r = w.route(&other).unwrap().unwrap();
    assert_eq!((r.primary.as_str(), r.backup), (S1, None));
    assert!(r.active);
    // co_domain
    let co = d("example.com");
    w.add_domain(&co, DomainSource::CoDomain, S1, Some(S2), true)
        .unwrap();
    let r = w.route(&co).unwrap().unwrap();
    assert_eq!(r.source, DomainSource::CoDomain);
    assert!(w
        .add_domain(&d("second.com"), DomainSource::Ldomain, S1, None, true)
        .is_err());
    let e = w
        .add_domain(&d("example.org"), DomainSource::Ldomain, S1, None, true)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    // node names are validated
    let e = w
        .add_domain(
            &d("x1.domain.ru"),
            DomainSource::Ldomain,
            "bad node'",
            None,
            true,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    let e = w
        .add_domain(
            &d("x2.domain.ru"),
            DomainSource::Ldomain,
            &format!("{}.ru", "a".repeat(40)),
            None,
            true,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);

    // mailboxes
    let hash = md5_hex("new-pw");
    w.add_mailbox(&lp("Gagarin"), &new, Some(&hash), true)
        .unwrap();
    let m = w.mailbox(&lp("gagarin"), &new).unwrap().unwrap();
    assert!(m.is_active());
    assert_eq!(m.password, with_password.then(|| hash.clone()));
    assert_eq!(
        w.add_mailbox(&lp("gagarin"), &new, None, true)
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput
    );
    assert_eq!(
        w.add_mailbox(&lp("dir"), &new, None, true)
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput
    );
    assert_eq!(
        w.add_mailbox(&lp("a+b"), &new, None, true)
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput
    );
    assert_eq!(
        w.add_mailbox(&lp("info"), &co, None, true)
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput,
        "co_domain recipients are not mailboxes"
    );
    assert_eq!(
        w.add_mailbox(&lp("x"), &d("nowhere.domain.ru"), None, true)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    w.set_mailbox_active(&lp("gagarin"), &new, false).unwrap();
    assert!(
        !w.mailbox(&lp("gagarin"), &new)
            .unwrap()
            .unwrap()
            .mailbox_active
    );
    assert_eq!(
        w.set_mailbox_active(&lp("nobody"), &new, false)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    if with_password {
        w.set_mailbox_password(&lp("gagarin"), &new, None).unwrap();
        assert_eq!(
            w.mailbox(&lp("gagarin"), &new).unwrap().unwrap().password,
            None
        );
    } else {
        assert_eq!(
            w.set_mailbox_password(&lp("gagarin"), &new, None)
                .unwrap_err()
                .kind(),
            ErrorKind::BadInput
        );
    }
    w.remove_mailbox(&lp("gagarin"), &new).unwrap();
    assert!(w.mailbox(&lp("gagarin"), &new).unwrap().is_none());

    // domain flags and routes
    w.set_domain_active(&d("msk.domain.ru"), false).unwrap();
    assert!(!w.is_local_domain(&d("msk.domain.ru"), S1).unwrap());
    assert!(
        !w.mailbox(&lp("ivanov"), &d("msk.domain.ru"))
            .unwrap()
            .unwrap()
            .domain_active
    );
    w.set_domain_active(&d("msk.domain.ru"), true).unwrap();
    w.set_domain_active(&d("gone.example.net"), true).unwrap();
    assert!(w.is_local_domain(&d("gone.example.net"), S1).unwrap());
    w.set_route(&d("msk.domain.ru"), S2, Some(S1)).unwrap();
    assert!(w.is_local_domain(&d("msk.domain.ru"), S2).unwrap());
    w.set_route(&d("example.org"), S1, None).unwrap();
    let r = w.route(&d("example.org")).unwrap().unwrap();
    assert_eq!((r.primary.as_str(), r.backup), (S1, None));
    assert_eq!(
        w.set_route(&d("nowhere.domain.ru"), S1, None)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    // Only the ldomain row of a name that is both changes.
    w.set_route(&d("both.domain.ru"), S2, None).unwrap();
    assert!(w.is_local_domain(&d("both.domain.ru"), S2).unwrap());
    // No dir rows were made: every mail row is a real mailbox or a fixture dir row.
    let n = w.mailboxes().unwrap().len();
    assert_eq!(n, fixtures::MAILBOXES.len());
}

#[test]
fn writes_on_postgres() {
    let db = fixtures::pg_seed("writes");
    check_writes(&db.url, true);
    let db = fixtures::pg_seed_smtp("writes_smtp");
    check_writes(&db.tcp_url, false);
}

#[test]
fn writes_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    check_writes(&fixtures::sqlite_seed(tmp.path()), true);
    check_writes(&fixtures::sqlite_seed_smtp(tmp.path()), false);
}

const HOSTILE: &[&str] = &[
    "'",
    "\"",
    "'; drop table mail; --",
    "x'; drop table mail; --.domain.ru",
    "${run{/bin/touch /tmp/pwned}}",
    "a.${run{/bin/true}}.ru",
    "nul\0.domain.ru",
    "msk.domain.ru\0",
    "msk.domain.ru\r\nx",
    "почта.рф",
    "msk.домен.ru",
    "%",
    "_.domain.ru",
    "msk.domain.ru'--",
    "msk.domain.ru or 1=1",
    "",
    ".",
    "..",
];

fn check_hostile(dir: &mut dyn Directory) {
    let long = "a".repeat(10_000);
    let long_dom = format!("{long}.domain.ru");
    let mut inputs: Vec<&str> = HOSTILE.to_vec();
    inputs.push(&long);
    inputs.push(&long_dom);
    for s in inputs {
        // Names fail validation first: nothing reaches SQL.
        let e = Domain::parse(s, Strictness::Lookup).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{s:?}");
        let e = LocalPart::parse(s, Strictness::Lookup);
        if let Ok(l) = e {
            // A few (like "_.domain.ru") are valid local parts: harmless lookups.
            assert!(dir.mailbox(&l, &d("msk.domain.ru")).unwrap().is_none());
        }
        // As node names they never panic and match nothing.
        assert!(!dir.is_local_domain(&d("msk.domain.ru"), s).unwrap());
        assert!(dir.domains(Some(s)).unwrap().is_empty(), "{s:?}");
    }
    // The tables are intact.
    assert_eq!(dir.mailboxes().unwrap().len(), fixtures::MAILBOXES.len());
}

#[test]
fn hostile_names_never_reach_sql() {
    let db = fixtures::pg_seed("hostile");
    let mut dir = directory::open(&db.url, T).unwrap();
    check_hostile(dir.as_mut());
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = directory::open(&fixtures::sqlite_seed(tmp.path()), T).unwrap();
    check_hostile(dir.as_mut());
}

#[test]
fn hostile_connection_strings_are_config_errors_without_secrets() {
    for url in [
        "host=/nonexistent user=mail password=s3cr3t sslmode=bogus",
        "host='unterminated user=mail password=s3cr3t",
        "postgresql://mail:s3cr3t@127.0.0.1:1/mail?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        "password=s3cr3t",
    ] {
        let e = directory::open(url, T).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
}

#[test]
fn schema_init_and_check_on_postgres() {
    let pg = pg::shared();
    // An empty database lacks everything.
    let empty = pg.create_db("schema_empty");
    let report = directory::schema::check(&empty.url, Role::Storage).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.missing_tables.len(), 6, "{report}");
    assert!(report.to_string().contains("missing table: mail"));
    // init creates it, twice is fine.
    directory::schema::init(&empty.url, Role::Storage).unwrap();
    directory::schema::init(&empty.url, Role::Storage).unwrap();
    let report = directory::schema::check(&empty.url, Role::Storage).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(report.warnings.iter().any(|w| w.contains("varchar(128)")));
    // The seed's database passes (with the varchar(128) warning).
    let seed = fixtures::pg_seed("schema_seed");
    let report = directory::schema::check(&seed.url, Role::Storage).unwrap();
    assert!(report.is_ok(), "{report}");
    // init on the seed's database only adds what is missing (indexes); data untouched.
    directory::schema::init(&seed.url, Role::Storage).unwrap();
    let mut dir = directory::open(&seed.url, T).unwrap();
    check_reads(dir.as_mut(), true);
    // An smtp database lacks mail.password for the storage role only.
    let smtp = fixtures::pg_seed_smtp("schema_smtp");
    let report = directory::schema::check(&smtp.url, Role::Storage).unwrap();
    assert_eq!(report.missing_columns, ["mail.password"]);
    assert!(directory::schema::check(&smtp.url, Role::Smtp)
        .unwrap()
        .is_ok());
    // A table without a column is named precisely.
    pg.psql(
        &smtp.name,
        "ALTER TABLE co_maps DROP COLUMN storage2; DROP TABLE mdomain;",
    );
    let report = directory::schema::check(&smtp.url, Role::Smtp).unwrap();
    assert_eq!(report.missing_columns, ["co_maps.storage2"]);
    assert_eq!(report.missing_tables, ["mdomain"]);
    // A fresh smtp-role schema, then the write side works on it.
    let fresh = pg.create_db("schema_fresh_smtp");
    directory::schema::init(&fresh.url, Role::Smtp).unwrap();
    assert!(directory::schema::check(&fresh.url, Role::Smtp)
        .unwrap()
        .is_ok());
    let mut w = directory::open_writer(&fresh.url, T).unwrap();
    w.add_domain(
        &d("msk.domain.ru"),
        DomainSource::Ldomain,
        S1,
        Some(S2),
        true,
    )
    .unwrap();
    w.add_mailbox(&lp("ivanov"), &d("msk.domain.ru"), Some("x"), true)
        .unwrap();
    assert_eq!(w.mailboxes().unwrap().len(), 1);
}

#[test]
fn schema_init_and_check_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", tmp.path().join("new.sqlite").display());
    let e = directory::schema::check(&url, Role::Storage).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    directory::schema::init(&url, Role::Storage).unwrap();
    directory::schema::init(&url, Role::Storage).unwrap();
    let report = directory::schema::check(&url, Role::Storage).unwrap();
    assert!(report.is_ok(), "{report}");
    let url = format!("sqlite:{}", tmp.path().join("smtp.sqlite").display());
    directory::schema::init(&url, Role::Smtp).unwrap();
    let report = directory::schema::check(&url, Role::Storage).unwrap();
    assert_eq!(report.missing_columns, ["mail.password"]);
    let missing_dir = format!("sqlite:{}", tmp.path().join("no/such/dir.sqlite").display());
    assert_eq!(
        directory::schema::init(&missing_dir, Role::Storage)
            .unwrap_err()
            .kind(),
        ErrorKind::Config
    );
}

#[test]
fn busy_sqlite_is_temporary() {
    let tmp = tempfile::tempdir().unwrap();
    let url = fixtures::sqlite_seed(tmp.path());
    let path = url.strip_prefix("sqlite:").unwrap();
    // Another process holds an exclusive lock (here: another connection).
    let locker = rusqlite::Connection::open(path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let bound = Duration::from_millis(300);
    let mut dir = directory::open(&url, bound).unwrap();
    let start = Instant::now();
    let e = dir.route(&d("msk.domain.ru")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Temporary, "{e}");
    assert!(start.elapsed() < bound + Duration::from_secs(2));
    let mut w = directory::open_writer(&url, bound).unwrap();
    let e = w.set_domain_active(&d("msk.domain.ru"), false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Temporary, "{e}");
    locker.execute_batch("COMMIT;").unwrap();
    assert!(dir.route(&d("msk.domain.ru")).unwrap().is_some());
}

/// A stopped and a hung (SIGSTOPped) PostgreSQL both become Temporary within the bound,
/// never "not found"; the directory recovers when the server is back.
#[test]
fn stopped_and_hung_postgres_are_temporary_within_the_bound() {
    let pg = pg::Pg::start_private();
    let db = fixtures::load_pg(&pg, "outage");
    let bound = Duration::from_millis(1500);
    // Scheduling slack on a loaded machine; a hang would exceed it by far.
    let slack = Duration::from_millis(3000);
    let dom = d("msk.domain.ru");
    // After an outage the same directory reconnects (retried: the box may be busy).
    let recovers = |dir: &mut Box<dyn Directory>| {
        let mut last = None;
        for _ in 0..5 {
            match dir.route(&dom) {
                Ok(r) => return assert!(r.is_some()),
                Err(e) => {
                    assert!(e.is_temporary(), "{e}");
                    last = Some(e);
                }
            }
        }
        panic!("no reconnect: {last:?}");
    };
    for url in [&db.url, &db.tcp_url] {
        let mut dir = directory::open(url, bound).unwrap();
        assert!(dir.is_local_domain(&dom, S1).unwrap());

        // Hung: established connection.
        pg.hang();
        let start = Instant::now();
        let e = dir.is_local_domain(&dom, S1).unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.kind(), ErrorKind::Temporary, "{e}");
        assert!(took >= bound - Duration::from_millis(100), "{took:?}");
        assert!(took < bound + slack, "{took:?}");
        assert!(e.to_string().contains("1.5s"), "{e}");
        assert!(!e.to_string().contains(pg::PASSWORD), "{e}");
        // Hung: a new connection (accepted by the kernel, never answered).
        let start = Instant::now();
        let e = dir.mailbox(&lp("ivanov"), &dom).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Temporary, "{e}");
        assert!(start.elapsed() < bound + slack);
        pg.resume();
        recovers(&mut dir);

        // Stopped: connection refused.
        pg.stop();
        let start = Instant::now();
        let e = dir.route(&dom).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Temporary, "{e}");
        assert!(start.elapsed() < bound + slack);
        let e = dir.mailboxes().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Temporary, "{e}");
        let e = directory::schema::check(url, Role::Storage).unwrap_err();
        assert!(e.is_temporary(), "{e}");
        pg.start();
        recovers(&mut dir);
    }
}

#[test]
fn tls_modes() {
    let pg = pg::shared();
    let db = fixtures::pg_seed("tls");
    let ca = pg.ca_cert();
    let ca = ca.display();
    let ok = |url: &str| {
        let mut dir = directory::open(url, T).unwrap();
        dir.route(&d("msk.domain.ru"))
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .unwrap();
    };
    ok(&pg.url_with(&db.name, "127.0.0.1", "sslmode=disable"));
    ok(&pg.url_with(&db.name, "127.0.0.1", "sslmode=prefer"));
    ok(&pg.url_with(&db.name, "127.0.0.1", "sslmode=require"));
    ok(&pg.url_with(
        &db.name,
        "127.0.0.1",
        &format!("sslmode=verify-ca sslrootcert={ca}"),
    ));
    ok(&pg.url_with(
        &db.name,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    ));
    ok(&pg.url_with(
        &db.name,
        "127.0.0.1",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    ));
    ok(&format!(
        "{}?sslmode=verify-full&sslrootcert={ca}",
        pg.tcp_url(&db.name)
    ));
    // The certificate does not name the host: verify-full refuses, verify-ca accepts.
    let mismatch = |mode: &str| {
        format!(
            "host=wrong.example hostaddr=127.0.0.1 port={} user=mail password={} dbname={} \
             sslmode={mode} sslrootcert={ca}",
            pg.port(),
            pg::PASSWORD,
            db.name
        )
    };
    ok(&mismatch("verify-ca"));
    let mut dir = directory::open(&mismatch("verify-full"), T).unwrap();
    let e = dir.route(&d("msk.domain.ru")).unwrap_err();
    assert_ne!(e.kind(), ErrorKind::NotFound, "{e}");
    // require does not verify at all.
    ok(&mismatch("require").replace(&format!("sslrootcert={ca}"), ""));
    // A CA that did not sign the server certificate: verification fails.
    let tmp = tempfile::tempdir().unwrap();
    let wrong_ca = tmp.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, pg::unrelated_ca_pem()).unwrap();
    let url = pg.url_with(
        &db.name,
        "127.0.0.1",
        &format!("sslmode=verify-ca sslrootcert={}", wrong_ca.display()),
    );
    let mut dir = directory::open(&url, T).unwrap();
    let e = dir.route(&d("msk.domain.ru")).unwrap_err();
    assert_ne!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!e.to_string().contains(pg::PASSWORD), "{e}");
}

/// A PostgreSQL directory used (and dropped) inside a tokio runtime does not panic.
#[test]
fn postgres_directory_inside_an_async_context() {
    let db = fixtures::pg_seed("async_ctx");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut dir = directory::open(&db.url, T).unwrap();
        assert!(dir.is_local_domain(&d("msk.domain.ru"), S1).unwrap());
        assert_eq!(dir.mailboxes().unwrap().len(), fixtures::MAILBOXES.len());
        drop(dir);
    });
}

/// The seed's own Exim queries (LOCAL_DOMAINS on a storage, ROUTE_LIST on an SMTP node),
/// run verbatim by psql on the same database, agree with the Directory where the seed's
/// data is clean (lower-case names; the seed compares stored names case-sensitively and
/// ignores mdomain.active and co_domains in LOCAL_DOMAINS).
#[test]
fn agrees_with_the_seeds_own_queries() {
    let pg = pg::shared();
    let db = fixtures::pg_seed("seed_queries");
    let mut dir = directory::open(&db.url, T).unwrap();
    let local_domains = |domain: &str, node: &str| {
        pg.psql(
            &db.name,
            &format!(
                "SELECT ldomain.domain || '.' || mdomain.domain AS domainname FROM ldomain, \
                 mdomain,maps WHERE ldomain.domain || '.' || mdomain.domain = LOWER('{domain}') \
                 AND ldomain.active = 'true' AND maps.storage1 = '{node}' AND \
                 maps.ldomain_id = ldomain.id;"
            ),
        )
        .trim()
        .to_string()
    };
    let route_list = |domain: &str| {
        pg.psql(
            &db.name,
            &format!(
                "SELECT COALESCE(storage1,'') || ' : ' || COALESCE(storage2,'') FROM ( SELECT \
                 storage1,storage2 FROM maps INNER JOIN ldomain ON ( maps.ldomain_id = \
                 ldomain.id ) INNER JOIN mdomain ON ( maps.mdomain_id = mdomain.id ) WHERE \
                 ldomain.domain || '.' || mdomain.domain = '{domain}' UNION ALL SELECT \
                 storage1,storage2 FROM co_maps INNER JOIN co_domain ON ( co_maps.domain_id = \
                 co_domain.id) WHERE co_domain.domain = '{domain}') AS foo;"
            ),
        )
        .trim()
        .to_string()
    };
    for domain in [
        "msk.domain.ru",
        "spb.domain.ru",
        "kzn.domain.ru",
        "ekb.domain.ru",
        "old.domain.ru",
    ] {
        for node in [S1, S2] {
            let seed = local_domains(domain, node) == domain;
            assert_eq!(
                dir.is_local_domain(&d(domain), node).unwrap(),
                seed,
                "{domain} {node}"
            );
        }
    }
    for domain in [
        "msk.domain.ru",
        "spb.domain.ru",
        "ekb.domain.ru",
        "example.org",
        "old.domain.ru",
    ] {
        let r = dir.route(&d(domain)).unwrap().unwrap();
        let ours = format!("{} : {}", r.primary, r.backup.unwrap_or_default());
        assert_eq!(route_list(domain), ours.trim_end(), "{domain}");
    }
    assert_eq!(route_list("nowhere.domain.ru"), "");
    assert!(dir.route(&d("nowhere.domain.ru")).unwrap().is_none());
}
