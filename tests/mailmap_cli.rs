//! `mailmap` subcommands against a throwaway PostgreSQL with the seed-shaped fixtures:
//! answers on stdout only, exit codes 0 / 1 / 64 / 75 / 78, nothing on stderr when not
//! run on a terminal (Exim captures stderr together with stdout).
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use support::exim::{self, mailmap_bin};
use support::fixtures::{self, S1, S2};

struct Env {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

/// `mailmap.toml` in `dir`: node storage-01, one directory at `url`, no `[map.hosts]`.
fn write_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let conf = dir.join("mailmap.toml");
    exim::write_public(
        &conf,
        &format!("node = \"{S1}\"\n[[directory]]\nname = \"t\"\nurl = \"{url}\"\n"),
    );
    conf
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let db = fixtures::pg_seed("mailmap_cli");
        let dir = exim::open_tempdir();
        // no [map.hosts]: route answers carry the node names as stored
        let conf = write_config(dir.path(), &db.url);
        Env { dir, conf }
    })
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn mailmap_with(conf: &std::path::Path, args: &[&str]) -> Out {
    let out = Command::new(mailmap_bin())
        .arg("--config")
        .arg(conf)
        .args(args)
        .output()
        .expect("run mailmap");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn mailmap(args: &[&str]) -> Out {
    mailmap_with(&env().conf, args)
}

fn found(args: &[&str], answer: &str) {
    let o = mailmap(args);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (0, format!("{answer}\n").as_str(), ""),
        "{args:?}"
    );
}

fn not_found(args: &[&str]) {
    let o = mailmap(args);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (1, "", ""),
        "{args:?}"
    );
}

#[test]
fn local_and_backup_domains() {
    found(&["local-domain", "msk.domain.ru"], "msk.domain.ru");
    found(&["local-domain", "MSK.Domain.RU."], "msk.domain.ru");
    found(&["local-domain", "both.domain.ru"], "both.domain.ru");
    found(
        &["local-domain", "--node", S2, "--", "nsk.domain.ru"],
        "nsk.domain.ru",
    );
    found(
        &["local-domain", "--node", S2, "example.org"],
        "example.org",
    );
    not_found(&["local-domain", "spb.domain.ru"]);
    not_found(&["local-domain", "old.domain.ru"]); // disabled
    not_found(&["local-domain", "gone.example.net"]); // disabled co_domain
    not_found(&["local-domain", "nowhere.example"]);
    found(&["backup-domain", "spb.domain.ru"], "spb.domain.ru");
    found(&["backup-domain", "example.org"], "example.org");
    not_found(&["backup-domain", "msk.domain.ru"]); // we are its primary
    not_found(&["backup-domain", "--node", S2, "ekb.domain.ru"]); // no backup
    not_found(&["backup-domain", "--node", S2, "shop.closed.ru"]); // disabled

    // a node name that maps/co_maps do not know (short host name): configuration error,
    // never "not ours" (a storage would relay its own domains away)
    for verb in ["local-domain", "backup-domain"] {
        let o = mailmap(&[verb, "--node", "storage-01", "msk.domain.ru"]);
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (78, "", ""),
            "{verb}"
        );
    }
}

#[test]
fn routes() {
    found(&["route", "msk.domain.ru"], &format!("{S1} : {S2}"));
    found(&["route", "nsk.domain.ru"], &format!("{S2} : {S1}"));
    found(&["route", "ekb.domain.ru"], S1);
    found(&["route", "both.domain.ru"], &format!("{S1} : {S2}")); // ldomain row wins
    found(&["route", "example.org"], &format!("{S2} : {S1}"));
    not_found(&["route", "old.domain.ru"]);
    not_found(&["route", "shop.closed.ru"]);
    not_found(&["route", "gone.example.net"]);
    not_found(&["route", "x'; drop table maps; --"]);
}

#[test]
fn recipients_and_paths() {
    found(
        &["recipient", "ivanov@msk.domain.ru"],
        "ivanov@msk.domain.ru",
    );
    found(
        &["recipient", "Ivanov+news@MSK.domain.ru"],
        "ivanov@msk.domain.ru",
    );
    found(
        &["recipient", "kuznetsov@nsk.domain.ru"],
        "kuznetsov@nsk.domain.ru",
    );
    found(&["recipient", "whoever@example.org"], "whoever@example.org"); // co_domain
    not_found(&["recipient", "petrov@msk.domain.ru"]);
    not_found(&["recipient", "olduser@old.domain.ru"]);
    not_found(&["recipient", "admin@shop.closed.ru"]);
    not_found(&["recipient", "dir@msk.domain.ru"]);
    not_found(&["recipient", "whoever@gone.example.net"]);
    not_found(&["recipient", "\"a b\"@msk.domain.ru"]);
    not_found(&["recipient", "--", "-ivanov@msk.domain.ru"]);
    found(
        &["rcpt-route", "ivanov@msk.domain.ru"],
        &format!("{S1} : {S2}"),
    );
    not_found(&["rcpt-route", "nobody@msk.domain.ru"]);
    found(&["backup-route", "sidorov@spb.domain.ru"], S2);
    not_found(&["backup-route", "ivanov@msk.domain.ru"]);
    not_found(&["backup-route", "nobody@spb.domain.ru"]);
    found(
        &["home", "ivanov+x@msk.domain.ru"],
        "/usr/mail/msk.domain.ru/ivanov",
    );
    found(
        &["maildir", "ivanov@msk.domain.ru"],
        "/usr/mail/msk.domain.ru/ivanov/Maildir",
    );
    found(
        &["home", "petrov@msk.domain.ru"],
        "/usr/mail/msk.domain.ru/petrov",
    );
    not_found(&["home", "nobody@msk.domain.ru"]);
}

#[test]
fn domain_lists() {
    let o = mailmap(&["domains", "--node", S2]);
    assert_eq!(o.code, 0);
    assert_eq!(o.stdout, "example.org\nnsk.domain.ru\nspb.domain.ru\n");
    let o = mailmap(&["domains"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("msk.domain.ru\n") && !o.stdout.contains("old.domain.ru"));
}

#[test]
fn exit_codes_for_usage_config_and_outage() {
    let o = mailmap(&["route"]);
    assert_eq!((o.code, o.stdout.as_str()), (64, ""));
    let o = mailmap(&["frobnicate", "x"]);
    assert_eq!((o.code, o.stdout.as_str()), (64, ""));
    let e = env();
    let missing = e.dir.path().join("missing.toml");
    let o = mailmap_with(&missing, &["route", "msk.domain.ru"]);
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (78, "", ""));
    let bad = e.dir.path().join("bad.toml");
    exim::write_public(
        &bad,
        "[map]\npositive_ttl = \"soon\"\n[[directory]]\nname=\"x\"\nurl=\"sqlite:/nonexistent\"\n",
    );
    let o = mailmap_with(&bad, &["route", "msk.domain.ru"]);
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (78, "", ""));
    // a database that is not there: temporary (75), never "not found"
    let down = e.dir.path().join("down.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    exim::write_public(
        &down,
        &format!("node = \"{S1}\"\ndb_timeout = 2\n[[directory]]\nname=\"x\"\nurl=\"host=127.0.0.1 port={port} user=mail dbname=mail sslmode=disable\"\n"),
    );
    for args in [
        &["route", "msk.domain.ru"][..],
        &["recipient", "ivanov@msk.domain.ru"],
        &["local-domain", "msk.domain.ru"],
        &["rcpt-route", "nobody@msk.domain.ru"],
    ] {
        let o = mailmap_with(&down, args);
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (75, "", ""),
            "{args:?}"
        );
    }
}

/// Names are matched exactly as stored first (the seed's unique indexes answer at once), in
/// any letter case only when that finds nothing: dotted ldomain labels, mixed-case rows and
/// a name stored in two letter cases (the lower-case row wins).
#[test]
fn exact_names_first_then_any_case() {
    let db = fixtures::pg_seed("mailmap_cli_case");
    support::pg::shared().psql(
        &db.name,
        &format!(
            "INSERT INTO ldomain (domain) VALUES ('a.b'), ('dup'), ('Dup'), ('Mixed.Case');
             INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2)
               SELECT l.id, m.id, CASE WHEN l.domain = 'Dup' THEN '{S1}' ELSE '{S2}' END,
                      CASE WHEN l.domain = 'Dup' THEN '{S2}' ELSE '{S1}' END
               FROM ldomain l, mdomain m
               WHERE l.domain IN ('a.b', 'dup', 'Dup', 'Mixed.Case') AND m.domain = 'domain.ru';
             INSERT INTO mail (mailbox, ldomain_id, mdomain_id, active)
               SELECT v.mb, l.id, m.id, v.active
               FROM (VALUES ('dot', 'a.b', true), ('Twin', 'msk', true), ('twin', 'msk', false),
                            ('Upper', 'Mixed.Case', true)) AS v(mb, ld, active)
               JOIN ldomain l ON l.domain = v.ld, mdomain m
               WHERE m.domain = 'domain.ru' ORDER BY v.mb DESC;"
        ),
    );
    let dir = exim::open_tempdir();
    let conf = write_config(dir.path(), &db.url);
    let ask = |args: &[&str]| {
        let o = mailmap_with(&conf, args);
        assert_eq!(o.stderr, "", "{args:?}");
        (o.code, o.stdout.trim_end().to_string())
    };
    let s2s1 = format!("{S2} : {S1}");
    // a dotted ldomain label, exactly as stored
    assert_eq!(ask(&["route", "a.b.domain.ru"]), (0, s2s1.clone()));
    assert_eq!(ask(&["rcpt-route", "dot@a.b.domain.ru"]), (0, s2s1.clone()));
    assert_eq!(ask(&["rcpt-route", "DOT@A.B.Domain.RU"]), (0, s2s1.clone()));
    // stored in mixed case only: found through the case-insensitive match
    assert_eq!(ask(&["route", "mixed.case.domain.ru"]), (0, s2s1.clone()));
    assert_eq!(
        ask(&["recipient", "upper@mixed.case.domain.ru"]),
        (0, "upper@mixed.case.domain.ru".to_string())
    );
    // `dup` and `Dup` both stored: the lower-case row answers
    assert_eq!(ask(&["route", "dup.domain.ru"]), (0, s2s1.clone()));
    // `twin` (disabled) and `Twin` (active) both stored: the lower-case row answers
    assert_eq!(
        ask(&["recipient", "twin@msk.domain.ru"]),
        (1, String::new())
    );
    // unknown names still miss after both matches
    assert_eq!(
        ask(&["rcpt-route", "nobody@a.b.domain.ru"]),
        (1, String::new())
    );
    assert_eq!(ask(&["route", "c.a.b.domain.ru"]), (1, String::new()));
}
