//! `mailauth checkpassword` inside a real Dovecot 2.3, configured with `dovecot-snippets/` as
//! printed (paths substituted), over a seed-shaped directory: `doveadm auth test`,
//! `doveadm user`, iteration (`doveadm user -A`), IMAP login, LMTP delivery, and temporary
//! failures when the directory is unavailable.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::dovecot::{self, Dovecot, Paths};
use support::fixtures;
use support::pg::{self, Db, Pg};

const BIN: &str = env!("CARGO_BIN_EXE_mailauth");

struct Site {
    root: PathBuf,
    config: PathBuf,
    db: Db,
    dovecot: Dovecot,
}

impl Drop for Site {
    /// Stop Dovecot, then remove the root (also when a test panics).
    fn drop(&mut self) {
        self.dovecot.stop();
        if std::env::var_os("KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Removes a directory on drop (also when a test panics).
struct RootGuard(PathBuf);

impl Drop for RootGuard {
    fn drop(&mut self) {
        if std::env::var_os("KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh root (0755) under the system temp dir, removed by the caller's guard.
fn make_root(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("mc-auth-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("mkdir root");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    root
}

fn set_password(pg: &Pg, db: &Db, mailbox: &str, stored: &str) {
    assert!(!stored.contains('\''));
    let out = pg.psql(
        &db.name,
        &format!(
            "UPDATE mail SET password = '{stored}' WHERE mailbox = '{mailbox}' RETURNING mailbox"
        ),
    );
    assert_eq!(out.trim(), mailbox);
}

/// Build a storage-node site over a seed-shaped PostgreSQL database on `pg`: mailauth
/// config, passwd-file, Dovecot with the storage snippets.
fn build_site(tag: &str, pg: &Pg, db_timeout: f64, extra: &str) -> Site {
    let root = make_root(tag);
    let db = fixtures::load_pg(pg, &format!("auth_{tag}"));
    // Stored forms made by the real doveadm, as an admin would.
    set_password(
        pg,
        &db,
        "popova",
        &dovecot::doveadm_pw("SHA512-CRYPT", "popova-pw"),
    );
    set_password(
        pg,
        &db,
        "info",
        &dovecot::doveadm_pw("BLF-CRYPT", "info-pw"),
    );
    set_password(
        pg,
        &db,
        "sidorov",
        &dovecot::doveadm_pw("ARGON2ID", "sidorov-pw"),
    );
    let mail = root.join("mail");
    std::fs::create_dir_all(&mail).expect("mkdir mail");
    dovecot::chown_to(&mail, "mail");
    let (uid, gid) = dovecot::user_ids("mail");
    let config = root.join("mailcluster.toml");
    std::fs::write(
        &config,
        format!(
            "node = \"{}\"\ndb_timeout = {db_timeout}\n[[directory]]\nname = \"local\"\nurl = \"{}\"\n\n\
             [mail]\nhome = \"{}/{{domain}}/{{mailbox}}\"\nuid = {uid}\ngid = {gid}\n{extra}",
            fixtures::S1,
            db.url,
            mail.display()
        ),
    )
    .expect("write config");
    let passwd = root.join("users.passwd");
    let out = Command::new(BIN)
        .args([
            "--config",
            config.to_str().expect("path"),
            "passwd-file",
            "--output",
        ])
        .arg(&passwd)
        .output()
        .expect("passwd-file");
    assert!(out.status.success(), "{out:?}");
    let paths = Paths {
        mailauth: dovecot::install_mailauth(&root),
        config: config.clone(),
        passwd_file: passwd,
        mail_root: mail,
    };
    let body = [
        "storage/10-mailcluster-auth.conf",
        "storage/10-mailcluster-mail.conf",
        "storage/20-mailcluster-lmtp.conf",
    ]
    .iter()
    .map(|s| dovecot::snippet(s, &paths))
    .collect::<Vec<_>>()
    .join("\n");
    let d = Dovecot::start(&root, &body);
    Site {
        root,
        config,
        db,
        dovecot: d,
    }
}

static SITE: OnceLock<Site> = OnceLock::new();

/// The storage site shared by this test binary; stopped and removed at exit.
fn site() -> &'static Site {
    SITE.get_or_init(|| {
        extern "C" fn cleanup() {
            if let Some(s) = SITE.get() {
                s.dovecot.stop();
                if std::env::var_os("KEEP").is_none() {
                    let _ = std::fs::remove_dir_all(&s.root);
                }
            }
        }
        // SAFETY: registering a plain extern "C" fn without captured state.
        unsafe {
            libc::atexit(cleanup);
        }
        build_site("main", pg::shared(), 5.0, "")
    })
}

const PASSWORDS: &[&str] = &[
    "ivanov-pw",
    "petrov-pw",
    "sidorov-pw",
    "popova-pw",
    "olduser-pw",
    "info-pw",
    "admin-pw",
];

fn assert_no_passwords_in(text: &str) {
    for pw in PASSWORDS {
        assert!(!text.contains(pw), "password {pw} leaked:\n{text}");
    }
}

#[test]
fn doveadm_auth_test_succeeds_and_fails_as_it_should() {
    let s = site();
    let d = &s.dovecot;
    for (user, pw, what) in [
        ("ivanov@msk.domain.ru", "ivanov-pw", "bare MD5 hex (seed)"),
        ("popova@ekb.domain.ru", "popova-pw", "SHA512-CRYPT"),
        ("info@both.domain.ru", "info-pw", "BLF-CRYPT"),
        ("sidorov@spb.domain.ru", "sidorov-pw", "ARGON2ID"),
        ("Ivanov@MSK.domain.ru", "ivanov-pw", "upper case"),
    ] {
        let (code, out) = d.auth_test(user, pw);
        assert_eq!(code, 0, "{what}: {out}\n{}", d.log());
        assert!(out.contains("auth succeeded"), "{out}");
    }
    let (_, out) = d.auth_test("ivanov@msk.domain.ru", "ivanov-pw");
    assert!(out.contains("user=ivanov@msk.domain.ru"), "{out}");
    for (what, code_out) in [
        ("ivanov@msk.domain.ru", "wrong", "wrong password"),
        (
            "popova@ekb.domain.ru",
            "ivanov-pw",
            "another user's password",
        ),
        ("info@both.domain.ru", "INFO-PW", "wrong case"),
        ("petrov@msk.domain.ru", "petrov-pw", "disabled mailbox"),
        ("olduser@old.domain.ru", "olduser-pw", "disabled domain"),
        ("admin@shop.closed.ru", "admin-pw", "disabled mdomain"),
        ("ghost@msk.domain.ru", "x", "unknown user"),
        ("ivanov", "ivanov-pw", "no domain"),
        ("ivanov'--@msk.domain.ru", "ivanov-pw", "quote in the user"),
        ("%u@msk.domain.ru", "x", "percent in the user"),
    ]
    .map(|(user, pw, what)| {
        // Each failure costs Dovecot's ~0.5 s flush timer: ask in parallel.
        std::thread::spawn(move || (what, d.auth_test(user, pw)))
    })
    .map(|t| t.join().expect("thread"))
    {
        let (what, (code, out)) = (what, code_out);
        assert_eq!(code, 77, "{what}: {out}");
        assert!(out.contains("auth failed"), "{what}: {out}");
    }
    // Nothing in Dovecot's log (where our stderr goes) carries a password.
    assert_no_passwords_in(&d.log());
}

#[test]
fn doveadm_user_returns_home_mail_uid_gid() {
    let s = site();
    let d = &s.dovecot;
    let (uid, gid) = dovecot::user_ids("mail");
    let mail = s.root.join("mail");
    // (user+tag never reaches a userdb: '+' is not in Dovecot's auth_username_chars; LMTP
    // strips the tag itself with recipient_delimiter.)
    for user in [
        "ivanov@msk.domain.ru",
        "petrov@msk.domain.ru",
        "IVANOV@msk.domain.ru",
    ] {
        let (code, out) = d.user(user);
        assert_eq!(code, 0, "{user}: {out}\n{}", d.log());
        let mailbox = if user.starts_with("petrov") {
            "petrov"
        } else {
            "ivanov"
        };
        let home = format!("{}/msk.domain.ru/{mailbox}", mail.display());
        let fields: std::collections::BTreeMap<&str, &str> =
            out.lines().filter_map(|l| l.split_once('\t')).collect();
        assert_eq!(fields.get("uid"), Some(&uid.to_string().as_str()), "{out}");
        assert_eq!(fields.get("gid"), Some(&gid.to_string().as_str()), "{out}");
        assert_eq!(fields.get("home"), Some(&home.as_str()), "{out}");
        let want_mail = format!("maildir:{home}/Maildir");
        assert_eq!(fields.get("mail"), Some(&want_mail.as_str()), "{out}");
    }
    let (code, out) = d.user("ghost@msk.domain.ru");
    assert_eq!(code, 67, "{out}");
}

#[test]
fn iteration_lists_every_user() {
    let d = &site().dovecot;
    // `doveadm user MASK` iterates the userdbs (here: the passwd-file).
    let o = d.doveadm(&["user", "*"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got: Vec<&str> = out.lines().map(str::trim).collect();
    let want: Vec<&str> = fixtures::MAILBOXES.iter().map(|m| m.0).collect();
    assert_eq!(got, want, "{}", String::from_utf8_lossy(&o.stderr));
    // doveadm's -A path works with a mail command too.
    let o = d.doveadm(&["mailbox", "list", "-A"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn maildir(root: &Path, domain: &str, mailbox: &str) -> PathBuf {
    root.join("mail").join(domain).join(mailbox).join("Maildir")
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn lmtp_delivers_into_the_seed_layout_and_imap_reads_it() {
    let s = site();
    let d = &s.dovecot;
    let sock = d.run_dir().join("lmtp-exim");
    let body = "From: a@example.test\nSubject: lmtp test\n\nhello\n";
    let r = dovecot::lmtp_deliver(&sock, "a@example.test", "popova+news@ekb.domain.ru", body);
    assert!(r.starts_with("250"), "{r}\n{}", d.log());
    let md = maildir(&s.root, "ekb.domain.ru", "popova");
    assert_eq!(count_files(&md.join("new")), 1, "{}", md.display());
    // Disabled mailbox: mail already accepted upstream is still delivered.
    let r = dovecot::lmtp_deliver(&sock, "a@example.test", "petrov@msk.domain.ru", body);
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(
        count_files(&maildir(&s.root, "msk.domain.ru", "petrov").join("new")),
        1
    );
    // Unknown user: rejected.
    let r = dovecot::lmtp_deliver(&sock, "a@example.test", "ghost@msk.domain.ru", body);
    assert!(r.starts_with("550"), "{r}");
    // IMAP login over TCP reaches that Maildir.
    let (ok, exists) = dovecot::imap_login_select(d.imap_port, "popova@ekb.domain.ru", "popova-pw");
    assert!(ok, "{}", d.log());
    assert_eq!(exists, Some(1));
    let (ok, _) = dovecot::imap_login_select(d.imap_port, "popova@ekb.domain.ru", "bad");
    assert!(!ok);
    // Files belong to the mail user.
    use std::os::unix::fs::MetadataExt;
    let (uid, _) = dovecot::user_ids("mail");
    assert_eq!(std::fs::metadata(&md).expect("maildir").uid(), uid);
    assert_no_passwords_in(&d.log());
}

#[test]
fn imap_login_as_the_seed_user() {
    let s = site();
    let (ok, exists) =
        dovecot::imap_login_select(s.dovecot.imap_port, "ivanov@msk.domain.ru", "ivanov-pw");
    assert!(ok, "{}", s.dovecot.log());
    assert_eq!(exists, Some(0));
    assert!(maildir(&s.root, "msk.domain.ru", "ivanov")
        .join("cur")
        .is_dir());
    let _ = &s.config;
}

/// Login attempts while the database is stopped or hung: temporary failure within the
/// bound, nobody logs in, and lookups never say "unknown user".
fn assert_temporary(d: &Dovecot, bound: Duration) {
    let t = Instant::now();
    let (code, out) = d.auth_test("ivanov@msk.domain.ru", "ivanov-pw");
    assert_eq!(code, 77, "{out}");
    assert!(out.contains("code=temp_fail"), "{out}");
    let (code, out) = d.user("ivanov@msk.domain.ru");
    assert_eq!(
        code, 75,
        "lookup must be a temporary failure, not 'unknown': {out}"
    );
    let (ok, _) = dovecot::imap_login_select(d.imap_port, "ivanov@msk.domain.ru", "ivanov-pw");
    assert!(!ok);
    assert!(t.elapsed() < bound, "took {:?}", t.elapsed());
}

#[test]
fn database_stopped_or_hung_is_a_temporary_failure() {
    let pg = Pg::start_private();
    let s = build_site("down", &pg, 1.0, "");
    let d = &s.dovecot;
    assert_eq!(d.auth_test("ivanov@msk.domain.ru", "ivanov-pw").0, 0);
    pg.stop();
    assert_temporary(d, Duration::from_secs(10));
    pg.start();
    assert_eq!(
        d.auth_test("ivanov@msk.domain.ru", "ivanov-pw").0,
        0,
        "{}",
        d.log()
    );
    pg.hang();
    // Three requests, each bounded by db_timeout = 1 s (plus Dovecot's 0.5 s failure flush).
    assert_temporary(d, Duration::from_secs(8));
    pg.resume();
    assert_eq!(d.auth_test("ivanov@msk.domain.ru", "ivanov-pw").0, 0);
    assert_no_passwords_in(&d.log());
    drop(s);
    drop(pg);
}

#[test]
fn dovecot_proxy_front_end_routes_to_the_primary() {
    let s = site();
    let root = make_root("proxy");
    let _guard = RootGuard(root.clone());
    let (uid, gid) = dovecot::user_ids("mail");
    let db = s.db.url.clone();
    let config = root.join("mailcluster.toml");
    // The front end is no node's primary: every user goes to the storage (here: the shared
    // storage instance, standing in for both nodes).
    std::fs::write(
        &config,
        format!(
            "node = \"mail.domain.ru\"\n[[directory]]\nname = \"local\"\nurl = \"{db}\"\n\
             [mail]\nuid = {uid}\ngid = {gid}\n[ports]\nimap = {}\n\
             [auth]\nproxy_mode = true\n[auth.nodes]\n\"{}\" = \"127.0.0.1\"\n\"{}\" = \"127.0.0.1\"\n",
            s.dovecot.imap_port,
            fixtures::S1,
            fixtures::S2
        ),
    )
    .expect("write config");
    let paths = Paths {
        mailauth: dovecot::install_mailauth(&root),
        config,
        passwd_file: root.join("unused"),
        mail_root: root.join("mail"),
    };
    let proxy = Dovecot::start(
        &root,
        &dovecot::snippet("proxy/10-mailcluster-proxy.conf", &paths),
    );
    let (code, out) = proxy.auth_test("popova@ekb.domain.ru", "popova-pw");
    assert_eq!(code, 0, "{out}\n{}", proxy.log());
    for field in [
        "proxy",
        "host=127.0.0.1",
        &format!("port={}", s.dovecot.imap_port),
    ] {
        assert!(out.contains(field), "{field}: {out}");
    }
    let (code, out) = proxy.auth_test("popova@ekb.domain.ru", "wrong");
    assert_eq!(code, 77, "{out}");
    // A real IMAP login through the proxy reaches the storage's Maildir.
    let (ok, exists) =
        dovecot::imap_login_select(proxy.imap_port, "ivanov@msk.domain.ru", "ivanov-pw");
    assert!(ok, "{}\n{}", proxy.log(), s.dovecot.log());
    assert!(exists.is_some());
    let (ok, _) = dovecot::imap_login_select(proxy.imap_port, "ivanov@msk.domain.ru", "nope");
    assert!(!ok);
    assert_no_passwords_in(&proxy.log());
    drop(proxy);
}

/// `mailauth serve` (the warm path) as a child: listens on a unix socket only.
struct Serve {
    child: std::process::Child,
}

impl Serve {
    fn start(config: &Path, socket: &Path, log: &Path) -> Serve {
        let log = std::fs::File::create(log).expect("serve log");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["serve", "--log", "stderr", "--listen"])
            .arg(format!("unix:{}", socket.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mailauth serve");
        let t = Instant::now();
        while !socket.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            socket.exists(),
            "mailauth serve did not create {}",
            socket.display()
        );
        Serve { child }
    }
    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn through_the_daemon_socket_with_fallback_and_bounded_hang() {
    let root = make_root("sock-parent");
    let _guard = RootGuard(root.clone());
    let sock = root.join("mailauth.sock");
    let extra = format!(
        "[auth]\nsocket = \"{}\"\nsocket_timeout = 1.0\n[auth.http]\nsocket_mode = \"0666\"\n",
        sock.display()
    );
    let s = build_site("sock", pg::shared(), 5.0, &extra);
    let d = &s.dovecot;
    let serve_log = root.join("serve.log");
    let mut serve = Serve::start(&s.config, &sock, &serve_log);
    // Answered by the daemon.
    let (code, out) = d.auth_test("popova@ekb.domain.ru", "popova-pw");
    assert_eq!(code, 0, "{out}\n{}", d.log());
    let (code, out) = d.auth_test("popova@ekb.domain.ru", "bad");
    assert_eq!(code, 77, "{out}");
    let (code, out) = d.user("petrov@msk.domain.ru");
    assert_eq!(code, 0, "{out}");
    let (code, _) = d.user("ghost@msk.domain.ru");
    assert_eq!(code, 67);
    let (ok, _) = dovecot::imap_login_select(d.imap_port, "ivanov@msk.domain.ru", "ivanov-pw");
    assert!(ok, "{}", d.log());
    // ... and every one of them went through the daemon (its log lines are written by a
    // writer thread shortly after each answer: wait for them, bounded).
    let counts = |log: &str| {
        (
            log.matches("api path=/passdb").count(),
            log.matches("api path=/userdb").count(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = std::fs::read_to_string(&serve_log).unwrap_or_default();
    while counts(&log) != (3, 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        log = std::fs::read_to_string(&serve_log).unwrap_or_default();
    }
    assert_eq!(log.matches("api path=/passdb").count(), 3, "{log}");
    assert_eq!(log.matches("api path=/userdb").count(), 2, "{log}");
    assert_no_passwords_in(&log);
    // Daemon hung (SIGSTOP): bounded by socket_timeout, temporary failure, nobody logs in.
    serve.signal(libc::SIGSTOP);
    let t = Instant::now();
    let (code, out) = d.auth_test("ivanov@msk.domain.ru", "ivanov-pw");
    assert_eq!(code, 77, "{out}");
    assert!(out.contains("code=temp_fail"), "{out}");
    let (code, _) = d.user("ivanov@msk.domain.ru");
    assert_eq!(code, 75);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    // Daemon gone (killed; its socket file may remain): checkpassword uses the database.
    serve.signal(libc::SIGCONT);
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    let (code, out) = d.auth_test("ivanov@msk.domain.ru", "ivanov-pw");
    assert_eq!(code, 0, "{out}\n{}", d.log());
    let (code, _) = d.auth_test("ivanov@msk.domain.ru", "wrong");
    assert_eq!(code, 77);
    assert_no_passwords_in(&d.log());
    drop(serve);
    drop(s);
}
