//! `mailauth serve` behind a real nginx mail proxy, with real Dovecot storages
//! (storage-01 = 127.0.0.2, storage-02 = 127.0.0.3, storage-03 = 127.0.0.4) and a real
//! PostgreSQL directory holding seed-shaped data: logins land on the user's primary, fail
//! when they should, move to the backup when the primary dies or hangs, stay out when the
//! database is gone, and a password-guessing burst is throttled without locking out the
//! owner.
mod support;

#[path = "mailauth_http_support/storage.rs"]
mod storage;

use mailcluster::config::Role;
use std::sync::OnceLock;
use std::time::Duration;
use storage::Storage;
use support::nginx::{
    header, imap_login, imap_login_from, pop3_login, wait_until, MailauthServe, Nginx, NginxOptions,
};

const MD5_SECRET: &str = "5ebe2294ecd0e0f08eab7690d2a6ee69"; // md5_hex("secret"), bare as in the seed
/// `doveadm pw -s SHA512-CRYPT -p hunter2`
const SHA512_HUNTER2: &str = "{SHA512-CRYPT}$6$kXdHo2713znJlNmZ$YaLDep09JwXQl7hVKXZrQ8oyXSFIeF5xE7N4MOPMGs4uHiyeC4ZRFNZmvF3eqLh242EWotWkX/DUPnc4jyMz21";

/// Seed-shaped rows: domains under example.test on storage-01/02/03, users with the seed's
/// bare MD5 and with SHA512-CRYPT, a disabled user, a disabled domain.
fn load_fixtures(pg: &support::pg::Pg, db: &support::pg::Db) {
    mailcluster::directory::schema::init(&db.url, Role::Storage).expect("schema init");
    pg.psql(
        &db.name,
        &format!(
            r#"
INSERT INTO mdomain (id, domain) VALUES (1, 'example.test');
INSERT INTO ldomain (id, domain, active) VALUES
  (1, 'branch', true), (2, 'other', true), (3, 'off', false), (4, 'flaky', true),
  (5, 'lonely', true), (6, 'dbtest', true);
INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2) VALUES
  (1, 1, 'storage-01', 'storage-02'),
  (2, 1, 'storage-02', 'storage-01'),
  (3, 1, 'storage-01', 'storage-02'),
  (4, 1, 'storage-03', 'storage-02'),
  (5, 1, 'storage-04', 'storage-05'),
  (6, 1, 'storage-01', 'storage-02');
INSERT INTO mail (mailbox, password, ldomain_id, mdomain_id, active) VALUES
  ('alice', '{MD5_SECRET}', 1, 1, true),
  ('bob', '{SHA512_HUNTER2}', 2, 1, true),
  ('carol', '{MD5_SECRET}', 1, 1, false),
  ('dave', '{MD5_SECRET}', 3, 1, true),
  ('erin', '{MD5_SECRET}', 4, 1, true),
  ('frank', '{{PLAIN}}p%a s+"x', 1, 1, true),
  ('gina', '{MD5_SECRET}', 1, 1, true),
  ('lou', '{MD5_SECRET}', 5, 1, true),
  ('dan', '{MD5_SECRET}', 6, 1, true);
"#
        ),
    );
}

fn config(db_url: &str, (imap, pop3, smtp): (u16, u16, u16), extra: &str) -> String {
    format!(
        r#"db_timeout = 1
[[directory]]
name = "test"
url = "{db_url}"
[ports]
imap = {imap}
pop3 = {pop3}
smtp = {smtp}
[auth.http]
timeout = 5
workers = 8
user_ttl = 2
[auth.health]
interval = 0.2
timeout = 0.3
[auth.throttle]
pair_limit = 3
ip_limit = 20
wait_initial = 1
wait_max = 4
[auth.nodes]
storage-01 = "127.0.0.2"
storage-02 = "127.0.0.3"
storage-03 = "127.0.0.4"
storage-04 = "127.0.0.5"
storage-05 = "127.0.0.6"
{extra}
"#
    )
}

struct Env {
    /// The directory's database (on the shared PostgreSQL).
    db_name: String,
    /// `[auth] socket`: where `mailauth checkpassword` asks the daemon.
    api_socket: std::path::PathBuf,
    s1: Storage,
    s2: Storage,
    s3: Mutex<Option<Storage>>,
    svc: MailauthServe,
    nginx: Nginx,
    ports: (u16, u16, u16),
}

use std::sync::Mutex;

/// One environment per test binary: three storages, PostgreSQL, mailauth, nginx.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let pg = support::pg::shared();
        let db = pg.create_db("mailauth_http");
        load_fixtures(pg, &db);
        let ports = storage::common_ports(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
        let (imap, pop3, smtp) = ports;
        let s1 = Storage::start_with_smtp("storage-01", "127.0.0.2", imap, pop3, Some(smtp));
        let s2 = Storage::start_with_smtp("storage-02", "127.0.0.3", imap, pop3, Some(smtp));
        let s3 = Storage::start("storage-03", "127.0.0.4", imap, pop3);
        // Two directories, the first one dead (as when a storage's database is lost):
        // logins must go on from the one that answers.
        let dead = support::nginx::free_port("127.0.0.1");
        let api_socket = std::env::temp_dir().join(format!(
            "mailauth-http-api-{}.sock",
            std::process::id()
        ));
        support::nginx::remove_at_exit(&api_socket);
        let svc = MailauthServe::start(&config(
            &format!("postgresql://mail:mailpw@127.0.0.1:{dead}/mail"),
            ports,
            &format!(
                "[auth]\nsmtp_allow_none = true\nsocket = \"{}\"\n[[directory]]\nname = \"live\"\nurl = \"{}\"\n",
                api_socket.display(),
                db.url
            ),
        ));
        let nginx = Nginx::start(&NginxOptions {
            auth_http: format!("{}/auth", svc.addr),
            smtp_none: true,
            ..Default::default()
        });
        Env {
            db_name: db.name.clone(),
            api_socket,
            s1,
            s2,
            s3: Mutex::new(Some(s3)),
            svc,
            nginx,
            ports,
        }
    })
}

/// Wait for `storage`'s log to show `n` logins of `user` on `service`.
fn landed(storage: &Storage, service: &str, user: &str, n: usize) -> bool {
    wait_until(Duration::from_secs(5), || {
        storage.logins(service, user) >= n
    })
}

#[test]
fn logins_land_on_the_primary_and_fail_when_they_should() {
    let e = env();
    let nginx = &e.nginx;
    // IMAP, the seed's bare MD5: storage-01 is branch.example.test's primary.
    let a = imap_login(nginx.imap, "alice@branch.example.test", "secret");
    assert!(a.starts_with("a1 OK"), "{a}\n{}", e.svc.log());
    assert!(landed(&e.s1, "imap-login", "alice@branch.example.test", 1));
    assert_eq!(e.s2.logins("imap-login", "alice@branch.example.test"), 0);
    // Case-insensitive login name; the backend sees the canonical address.
    let a = imap_login(nginx.imap, "Alice@Branch.Example.Test", "secret");
    assert!(a.starts_with("a1 OK"), "{a}");
    assert!(landed(&e.s1, "imap-login", "alice@branch.example.test", 2));
    // POP3, SHA512-CRYPT: other.example.test lives on storage-02.
    let p = pop3_login(nginx.pop3, "bob@other.example.test", "hunter2");
    assert!(p.starts_with("+OK"), "{p}\n{}", e.svc.log());
    assert!(landed(&e.s2, "pop3-login", "bob@other.example.test", 1));
    assert_eq!(e.s1.logins("pop3-login", "bob@other.example.test"), 0);
    // A password with '%', ' ', '+' and '"' (nginx escapes only %XX; '+' is literal).
    let a = imap_login(nginx.imap, "frank@branch.example.test", r#"p%a s+\"x"#);
    assert!(a.starts_with("a1 OK"), "{a}\n{}", e.svc.log());
    // Failures: wrong password, disabled user, disabled domain, unknown user.
    for (user, pass) in [
        ("alice@branch.example.test", "Secret"),
        ("alice@branch.example.test", "secret+"),
        ("carol@branch.example.test", "secret"),
        ("dave@off.example.test", "secret"),
        ("nobody@branch.example.test", "secret"),
        ("alice", "secret"),
    ] {
        let a = imap_login(nginx.imap, user, pass);
        assert!(a.starts_with("a1 NO [AUTHENTICATIONFAILED]"), "{user}: {a}");
        let p = pop3_login(nginx.pop3, user, pass);
        assert!(p.starts_with("-ERR [AUTH]"), "{user}: {p}");
    }
    for user in ["carol", "dave"] {
        assert_eq!(e.s1.logins("imap-login", &format!("{user}@")), 0);
    }
    // Both storages down for lonely.example.test: a temporary failure, nobody in.
    let a = imap_login(nginx.imap, "lou@lonely.example.test", "secret");
    assert!(a.starts_with("a1 NO [UNAVAILABLE]"), "{a}");
    let log = e.svc.log_with("result=ok node=storage-01");
    assert!(log.contains("result=ok node=storage-01"), "{log}");
    assert!(
        !log.contains("hunter2") && !log.contains("secret\""),
        "password logged: {log}"
    );
}

/// A counter from `/metrics`.
fn metric(svc: &MailauthServe, name: &str) -> u64 {
    let raw = support::nginx::http_raw(&svc.addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    String::from_utf8_lossy(&raw)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}: {}", String::from_utf8_lossy(&raw)))
}

/// `mailauth_user_cache_hits_total` from `/metrics`.
fn cache_hits(svc: &MailauthServe) -> u64 {
    metric(svc, "mailauth_user_cache_hits_total")
}

/// Cached logins in use are read again in the background once past 3/4 of their life
/// (entries due together in one statement on PostgreSQL): a mailbox still active stays
/// cached with a new life, one disabled meanwhile is dropped by its refresh. A service of its
/// own (its counters count only this test's requests) on a database of its own; routes
/// cached longer than logins here (a login is served from the cache only with its route
/// cached). An entry lives between 3/4 of `user_ttl` and `user_ttl`, at random, and is due
/// at 3/4 of its life: the test logs in every 200 ms, so that each entry is used while due
/// (at least 3 s before it would expire), instead of guessing one instant when both are.
#[test]
fn the_login_cache_refresher_renews_active_entries_and_drops_disabled_ones() {
    let e = env();
    let pg = support::pg::shared();
    let db = pg.create_db("mailauth_http_refresh");
    load_fixtures(pg, &db);
    const USER_TTL: f64 = 16.0;
    let svc = MailauthServe::start(&config(&db.url, e.ports, "").replace(
        "user_ttl = 2\n",
        &format!("user_ttl = {USER_TTL}\nroute_ttl = 60\n"),
    ));
    let auth = |user: &str| -> String {
        let req = format!(
            "GET /auth HTTP/1.0\r\nAuth-Method: plain\r\nAuth-User: {user}\r\n\
             Auth-Pass: secret\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\n\
             Client-IP: 192.0.2.7\r\n\r\n"
        );
        String::from_utf8_lossy(&support::nginx::http_raw(&svc.addr, req.as_bytes())).into_owned()
    };
    let ok = |a: &str| a.contains("Auth-Status: OK");
    let refused = |a: &str| a.contains("Auth-Status: [AUTHENTICATIONFAILED]");
    let (alice, gina) = ("alice@branch.example.test", "gina@branch.example.test");
    let start = std::time::Instant::now();
    for user in [alice, gina] {
        let a = auth(user);
        assert!(ok(&a), "{a}\n{}", svc.log());
    }
    pg.psql(
        &db.name,
        "UPDATE mail SET active = false WHERE mailbox = 'gina'",
    );
    // Until both entries were refreshed: alice is served throughout; gina from her cached
    // entry until its refresh drops it, then refused by the directory.
    let mut gina_refused = false;
    let refreshed = wait_until(Duration::from_secs_f64(USER_TTL + 10.0), || {
        let a = auth(alice);
        assert!(ok(&a), "{a}\n{}", svc.log());
        // Once refused, gina is not asked again here (failures are throttled per client).
        if !gina_refused {
            let g = auth(gina);
            gina_refused = refused(&g);
            assert!(gina_refused || ok(&g), "{g}\n{}", svc.log());
        }
        std::thread::sleep(Duration::from_millis(200));
        metric(&svc, "mailauth_cache_refreshes_total") >= 2
    });
    assert!(refreshed, "no refresh\n{}", svc.log());
    // Past the longest first life: alice's entry was renewed (a hit), gina's dropped (the
    // directory's current record decides: disabled).
    std::thread::sleep(Duration::from_secs_f64(USER_TTL + 0.5).saturating_sub(start.elapsed()));
    let hits = metric(&svc, "mailauth_user_cache_hits_total");
    let a = auth(alice);
    assert!(ok(&a), "{a}\n{}", svc.log());
    assert_eq!(metric(&svc, "mailauth_user_cache_hits_total"), hits + 1);
    let a = auth(gina);
    assert!(refused(&a), "{a}\n{}", svc.log());
}

#[test]
fn the_login_cache_follows_password_changes_at_once_and_disabling_within_user_ttl() {
    let e = env();
    let pg = support::pg::shared();
    let user = "dan@dbtest.example.test";
    let login = |pass: &str| imap_login(e.nginx.imap, user, pass);
    let a = login("secret");
    assert!(a.starts_with("a1 OK"), "{a}\n{}", e.svc.log());
    // The next login of the same user comes from the cache (the database still answers).
    let hits = cache_hits(&e.svc);
    assert!(login("secret").starts_with("a1 OK"));
    assert!(cache_hits(&e.svc) > hits);
    // A new password works at once; the old one is refused at once.
    pg.psql(
        &e.db_name,
        "UPDATE mail SET password = md5('fresh') WHERE mailbox = 'dan'",
    );
    let a = login("fresh");
    assert!(a.starts_with("a1 OK"), "{a}\n{}", e.svc.log());
    let a = login("secret");
    assert!(a.starts_with("a1 NO [AUTHENTICATIONFAILED]"), "{a}");
    // Disabled: refused once the cached record expires (user_ttl = 2 s here).
    pg.psql(
        &e.db_name,
        "UPDATE mail SET active = false WHERE mailbox = 'dan'",
    );
    assert!(wait_until(Duration::from_secs(6), || login("fresh")
        .starts_with("a1 NO [AUTHENTICATIONFAILED]")));
    pg.psql(
        &e.db_name,
        "UPDATE mail SET active = true, password = md5('secret') WHERE mailbox = 'dan'",
    );
}

#[test]
fn smtp_auth_through_nginx_is_routed_to_the_primary_mta() {
    let e = env();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let before = (e.s1.smtp_connections(), e.s2.smtp_connections());
    let mut c = support::nginx::LineClient::connect(e.nginx.smtp);
    assert!(c.line().starts_with("220"));
    c.command("EHLO client.example", &["250 "]);
    let r = c.command(
        &format!("AUTH PLAIN {}", b64("\0bob@other.example.test\0hunter2")),
        &["2", "4", "5"],
    );
    assert!(r.last().is_some_and(|l| l.starts_with("235")), "{r:?}");
    c.command("QUIT", &["221", "4", "5"]);
    // other.example.test lives on storage-02: its Exim got the connection.
    assert!(wait_until(Duration::from_secs(5), || e
        .s2
        .smtp_connections()
        > before.1));
    assert_eq!(e.s1.smtp_connections(), before.0);
    // Wrong password: 535, no backend connection.
    let mut c = support::nginx::LineClient::connect(e.nginx.smtp);
    assert!(c.line().starts_with("220"));
    c.command("EHLO client.example", &["250 "]);
    let r = c.command(
        &format!("AUTH PLAIN {}", b64("\0bob@other.example.test\0nope")),
        &["2", "4", "5"],
    );
    assert!(
        r.last().is_some_and(|l| l.starts_with("535 5.7.8")),
        "{r:?}"
    );
    smtp_without_auth_only_for_our_domains_when_allowed(e);
}

/// `[auth] smtp_allow_none = true`: SMTP without AUTH is routed by the recipient's domain
/// to its storage's MTA; a foreign recipient is refused (never an open relay).
/// (Called from the SMTP AUTH test: both count the storages' SMTP sessions.)
fn smtp_without_auth_only_for_our_domains_when_allowed(e: &Env) {
    let before = e.s1.smtp_connections();
    let mut c = support::nginx::LineClient::connect(e.nginx.smtp);
    assert!(c.line().starts_with("220"));
    c.command("EHLO mx.example.org", &["250 "]);
    c.command("MAIL FROM:<x@example.org>", &["2", "4", "5"]);
    let r = c.command("RCPT TO:<somebody@elsewhere.example>", &["2", "4", "5"]);
    assert!(
        r.last().is_some_and(|l| l.starts_with("550 5.7.1")),
        "{r:?}"
    );
    let mut c = support::nginx::LineClient::connect(e.nginx.smtp);
    assert!(c.line().starts_with("220"));
    c.command("EHLO mx.example.org", &["250 "]);
    c.command("MAIL FROM:<x@example.org>", &["2", "4", "5"]);
    let r = c.command("RCPT TO:<alice@branch.example.test>", &["2", "4", "5"]);
    assert!(r.last().is_some_and(|l| l.starts_with("250")), "{r:?}");
    c.command("QUIT", &["221", "4", "5"]);
    // branch.example.test lives on storage-01: its Exim got the session.
    assert!(wait_until(Duration::from_secs(5), || e
        .s1
        .smtp_connections()
        > before));
}

#[test]
fn primary_dead_or_hung_moves_new_logins_to_the_backup() {
    let e = env();
    let user = "erin@flaky.example.test";
    let guard = e.s3.lock().unwrap_or_else(|p| p.into_inner());
    let s3 = guard.as_ref().expect("storage-03");
    let a = imap_login(e.nginx.imap, user, "secret");
    assert!(a.starts_with("a1 OK"), "{a}");
    assert!(landed(s3, "imap-login", user, 1));
    let metrics = || {
        String::from_utf8_lossy(&support::nginx::http_raw(
            &e.svc.addr,
            b"GET /metrics HTTP/1.0\r\n\r\n",
        ))
        .to_string()
    };
    let s3_imap = |up: u8| {
        let want = format!(
            "mailauth_backend_up{{node=\"storage-03\",proto=\"imap\",addr=\"127.0.0.4:{}\"}} {up}",
            e.ports.0
        );
        move |m: &str| m.contains(&want)
    };
    // Hung (SIGSTOP): the kernel still accepts connections, but no greeting comes.
    s3.hang();
    assert!(
        wait_until(Duration::from_secs(5), || s3_imap(0)(&metrics())),
        "{}",
        metrics()
    );
    let a = imap_login(e.nginx.imap, user, "secret");
    assert!(a.starts_with("a1 OK"), "{a}");
    assert!(landed(&e.s2, "imap-login", user, 1));
    let p = pop3_login(e.nginx.pop3, user, "secret");
    assert!(p.starts_with("+OK"), "{p}");
    assert!(landed(&e.s2, "pop3-login", user, 1));
    // Back: logins return to the primary.
    s3.resume();
    assert!(wait_until(
        Duration::from_secs(5),
        || s3_imap(1)(&metrics())
    ));
    let a = imap_login(e.nginx.imap, user, "secret");
    assert!(a.starts_with("a1 OK"), "{a}");
    assert!(landed(s3, "imap-login", user, 2));
    drop(guard);
    // Dead: killed outright.
    let mut guard = e.s3.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mut s3) = guard.take() {
        s3.stop();
    }
    assert!(wait_until(
        Duration::from_secs(5),
        || s3_imap(0)(&metrics())
    ));
    let a = imap_login(e.nginx.imap, user, "secret");
    assert!(a.starts_with("a1 OK"), "{a}");
    assert!(landed(&e.s2, "imap-login", user, 2));
    assert!(metrics().contains("mailauth_auth_backup_routes_total"));
    let log = e.svc.log_with("is up again");
    assert!(log.contains("storage-03 imap (127.0.0.4"), "{log}");
    assert!(log.contains("is down"), "{log}");
    assert!(log.contains("is up again"), "{log}");
}

#[test]
fn a_guessing_burst_is_slowed_then_refused_but_the_owner_gets_in() {
    let e = env();
    let user = "gina@branch.example.test";
    let attempt = |ip: &str, pass: &str, n: u32| {
        let n = n.to_string();
        e.svc.auth(&[
            ("Auth-Method", b"plain"),
            ("Auth-User", user.as_bytes()),
            ("Auth-Pass", pass.as_bytes()),
            ("Auth-Protocol", b"imap"),
            ("Auth-Login-Attempt", n.as_bytes()),
            ("Client-IP", ip.as_bytes()),
        ])
    };
    // Distinct wrong passwords from one address: growing Auth-Wait...
    let mut waits = Vec::new();
    for (i, pw) in ["guess1", "guess2", "guess3"].iter().enumerate() {
        let r = attempt("192.0.2.66", pw, i as u32 + 1);
        assert_ne!(header(&r, "Auth-Status"), Some("OK"));
        waits.push(header(&r, "Auth-Wait").unwrap_or("none").to_string());
    }
    assert_eq!(waits, ["1", "2", "4"]);
    // ...then refused without a check, even with the right password.
    let r = attempt("192.0.2.66", "secret", 4);
    assert_ne!(header(&r, "Auth-Status"), Some("OK"), "{r:?}");
    assert!(e.svc.log_with("result=blocked").contains("result=blocked"));
    // Past ~10 attempts of one connection: no more Auth-Wait (nginx closes it).
    let r = attempt("192.0.2.66", "guess9", 11);
    assert_eq!(header(&r, "Auth-Wait"), None, "{r:?}");
    // The owner, from another address, logs in (through nginx, from 127.0.0.77).
    let r = attempt("198.51.100.5", "secret", 1);
    assert_eq!(header(&r, "Auth-Status"), Some("OK"), "{r:?}");
    let a = imap_login_from("127.0.0.77", e.nginx.imap, user, "secret");
    assert!(a.starts_with("a1 OK"), "{a}");
    // A phone behind a NAT retrying one stale password does not lock out the branch.
    for i in 0..10 {
        attempt("203.0.113.9", "old-password", i + 1);
    }
    let r = attempt("203.0.113.9", "secret", 1);
    assert_eq!(header(&r, "Auth-Status"), Some("OK"), "{r:?}");
}

#[test]
fn database_down_or_hung_lets_nobody_in() {
    let pg = support::pg::Pg::start_private();
    let db = pg.create_db("mailauth_http_down");
    load_fixtures(&pg, &db);
    // Only storage-02 here: the test's own instance on a free port pair.
    let ports = storage::common_ports(&["127.0.0.3"]);
    let s2 = Storage::start("storage-02", "127.0.0.3", ports.0, ports.1);
    let user = "bob@other.example.test";
    let mut logins = 0;
    // Strict (a ping per login), then with a lease on the directory's last answer (the
    // default is 0.1 s): a cached login is refused from at most `db_lease` after the
    // database stops answering.
    for lease in [0.0, 0.3] {
        let text = config(&db.url, ports, "").replace(
            "user_ttl = 2\n",
            &format!("user_ttl = 60\ndb_lease = {lease}\n"),
        );
        let svc = MailauthServe::start(&text);
        let nginx = Nginx::start(&NginxOptions {
            auth_http: format!("{}/auth", svc.addr),
            secret: None,
            smtp_none: false,
        });
        // Twice: the second login is one from the cache.
        for _ in 0..2 {
            let a = imap_login(nginx.imap, user, "hunter2");
            assert!(a.starts_with("a1 OK"), "{a}\n{}", svc.log());
            logins += 1;
        }
        assert!(landed(&s2, "imap-login", user, logins));
        // Hung database: answers within the bound, temporary failure.
        pg.hang();
        std::thread::sleep(Duration::from_secs_f64(lease));
        let start = std::time::Instant::now();
        let a = imap_login(nginx.imap, user, "hunter2");
        assert!(a.starts_with("a1 NO [UNAVAILABLE]"), "lease {lease}: {a}");
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{:?}",
            start.elapsed()
        );
        let p = pop3_login(nginx.pop3, user, "hunter2");
        assert!(p.starts_with("-ERR [SYS/TEMP]"), "{p}");
        pg.resume();
        // Stopped database.
        pg.stop();
        std::thread::sleep(Duration::from_secs_f64(lease));
        for pass in ["hunter2", "wrong"] {
            let a = imap_login(nginx.imap, user, pass);
            assert!(a.starts_with("a1 NO [UNAVAILABLE]"), "lease {lease}: {a}");
        }
        assert_eq!(s2.logins("imap-login", user), logins);
        // Back: logins work again (the pool reconnects).
        pg.start();
        assert!(wait_until(Duration::from_secs(10), || imap_login(
            nginx.imap, user, "hunter2"
        )
        .starts_with("a1 OK")));
        logins += 1;
    }
}

/// The Dovecot 2.4 path, run in Dovecot 2.3: the Lua passdb/userdb script of
/// dovecot-snippets/ asks `mailauth serve` over HTTP.
#[test]
fn lua_passdb_and_userdb_through_the_http_endpoint() {
    let e = env();
    let dir = tempfile::Builder::new()
        .prefix("mailauth-lua.")
        .tempdir()
        .expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
    }
    let script = dir.path().join("mailauth.lua");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dovecot-snippets/lua/mailauth.lua"
        ),
        &script,
    )
    .expect("copy the Lua script");
    let (imap, pop3, _) = storage::common_ports(&["127.0.0.7"]);
    let lua = Storage::start_lua(
        "lua-01",
        "127.0.0.7",
        (imap, pop3),
        &script,
        &format!("http://{}", e.svc.addr),
    );
    // passdb: right and wrong passwords, unknown and disabled users.
    let (rc, out) = lua.auth_test("bob@other.example.test", "hunter2");
    assert_eq!(rc, 0, "{out}\n{}", lua.log());
    let (rc, out) = lua.auth_test("bob@other.example.test", "wrong");
    assert_ne!(rc, 0, "{out}");
    // A password that is not UTF-8 is a plain mismatch (sent as password_b64), not a
    // temporary failure.
    let (rc, out) = lua.auth_test(
        "bob@other.example.test",
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"hunter\xe9"),
    );
    assert_ne!(rc, 0, "{out}");
    assert!(!out.contains("temp_fail"), "{out}");
    let (rc, out) = lua.auth_test("nobody@other.example.test", "hunter2");
    assert_ne!(rc, 0, "{out}");
    let (rc, out) = lua.auth_test("carol@branch.example.test", "secret");
    assert_ne!(rc, 0, "{out}");
    // userdb
    let (rc, out) = lua.user_lookup("bob@other.example.test");
    assert_eq!(rc, 0, "{out}\n{}", lua.log());
    assert!(out.contains("home"), "{out}");
    // A real IMAP login on that Dovecot.
    let a = imap_login_at("127.0.0.7", imap, "bob@other.example.test", "hunter2");
    assert!(a.starts_with("a1 OK"), "{a}\n{}", lua.log());
    let a = imap_login_at("127.0.0.7", imap, "bob@other.example.test", "nope");
    assert!(a.starts_with("a1 NO [AUTHENTICATIONFAILED]"), "{a}");

    // mailauth unreachable: a temporary failure, never "wrong password".
    let dead = support::nginx::free_port("127.0.0.1");
    let (imap2, pop32, _) = storage::common_ports(&["127.0.0.8"]);
    let lua_dead = Storage::start_lua(
        "lua-02",
        "127.0.0.8",
        (imap2, pop32),
        &script,
        &format!("http://127.0.0.1:{dead}"),
    );
    let a = imap_login_at("127.0.0.8", imap2, "bob@other.example.test", "hunter2");
    assert!(
        a.starts_with("a1 NO [UNAVAILABLE]"),
        "{a}\n{}",
        lua_dead.log()
    );
}

/// IMAP LOGIN straight to a server at `ip`:`port` (not through nginx).
fn imap_login_at(ip: &str, port: u16, user: &str, pass: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let s = std::net::TcpStream::connect((ip, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    assert!(line.starts_with("* OK"), "{line}");
    let _ = w.write_all(format!("a1 LOGIN \"{user}\" \"{pass}\"\r\n").as_bytes());
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return String::new();
        }
        if line.starts_with("a1 ") {
            let _ = w.write_all(b"a2 LOGOUT\r\n");
            return line.trim_end().to_string();
        }
    }
}

/// The JSON API as `mailauth checkpassword` uses it: HTTP/1.0 over `[auth] socket`.
#[test]
fn json_api_over_the_checkpassword_socket() {
    use std::io::{Read, Write};
    let e = env();
    let ask = |req: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&e.api_socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let post = |path: &str, body: &str| {
        ask(&format!(
            "POST {path} HTTP/1.0\r\nHost: mailauth\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    };
    let ok = post(
        "/passdb",
        r#"{"user":"bob@other.example.test","password":"hunter2","service":"imap"}"#,
    );
    assert!(
        ok.starts_with("HTTP/1.0 200") && ok.contains(r#""result":"ok""#),
        "{ok}"
    );
    let bad = post(
        "/passdb",
        r#"{"user":"bob@other.example.test","password":"x"}"#,
    );
    assert!(bad.contains("password_mismatch"), "{bad}");
    let user = post("/userdb", r#"{"user":"alice@branch.example.test"}"#);
    assert!(user.contains(r#""result":"ok""#), "{user}");
    let users = ask("GET /users HTTP/1.0\r\n\r\n");
    assert!(
        users.contains("\r\n\r\nalice@branch.example.test\n")
            || users.contains("alice@branch.example.test\n"),
        "{users}"
    );
    let wrong_method = ask("GET /passdb HTTP/1.0\r\n\r\n");
    assert!(wrong_method.starts_with("HTTP/1.0 405"), "{wrong_method}");
    let garbage = post("/passdb", "{not json");
    assert!(
        garbage.starts_with("HTTP/1.0 400") && garbage.contains("internal_failure"),
        "{garbage}"
    );
}

/// APOP / CRAM-MD5 need the stored plaintext: granted (with Auth-Pass for the backend) for a
/// `{PLAIN}` password, refused for a hash.
#[test]
fn apop_only_with_a_stored_plaintext() {
    use md5::{Digest, Md5};
    let e = env();
    let salt = "<4711.1700000000@mail.example.test>";
    let plain = r#"p%a s+"x"#;
    let digest = hex::encode(Md5::digest(format!("{salt}{plain}").as_bytes()));
    let ask = |user: &str, method: &str, pass: &str| {
        e.svc.auth(&[
            ("Auth-Method", method.as_bytes()),
            ("Auth-User", user.as_bytes()),
            ("Auth-Pass", pass.as_bytes()),
            ("Auth-Salt", salt.as_bytes()),
            ("Auth-Protocol", b"pop3"),
            ("Auth-Login-Attempt", b"1"),
            ("Client-IP", b"198.51.100.44"),
        ])
    };
    let r = ask("frank@branch.example.test", "apop", &digest);
    assert_eq!(header(&r, "Auth-Status"), Some("OK"), "{r:?}");
    assert_eq!(header(&r, "Auth-Pass"), Some(plain), "{r:?}");
    assert_eq!(header(&r, "Auth-Server"), Some("127.0.0.2"), "{r:?}");
    let r = ask("frank@branch.example.test", "apop", &"0".repeat(32));
    assert_ne!(header(&r, "Auth-Status"), Some("OK"), "{r:?}");
    assert_eq!(header(&r, "Auth-Pass"), None);
    for method in ["apop", "cram-md5"] {
        let r = ask("alice@branch.example.test", method, &digest);
        assert_eq!(
            header(&r, "Auth-Status"),
            Some("Authentication method not supported"),
            "{r:?}"
        );
        assert_eq!(header(&r, "Auth-Pass"), None);
    }
}
