//! `mailauth checkpassword` as Dovecot runs it (fd 3, reply program, environment), against a
//! seed-shaped SQLite directory; `/usr/bin/env` stands in for checkpassword-reply so that the
//! environment handed over can be checked. Also the JSON API over a unix socket (the
//! library's `api::handle` behind a minimal HTTP/1.0 loop) and its failure modes.
mod support;

use mailcluster::auth::api;
use mailcluster::auth::authenticator::Authenticator;
use mailcluster::config::Config;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fixtures;

const BIN: &str = env!("CARGO_BIN_EXE_mailauth");

struct Env {
    dir: tempfile::TempDir,
    db: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = fixtures::sqlite_seed(dir.path());
        Env { dir, db }
    }

    /// Write a mailauth config with `extra` appended; returns its path.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = format!(
            "node = \"{}\"\n[[directory]]\nname = \"local\"\nurl = \"{}\"\n\n[mail]\nhome = \"{}/{{domain}}/{{mailbox}}\"\nuid = 8\ngid = 12\n\n{extra}",
            fixtures::S1,
            self.db,
            self.dir.path().join("mail").display()
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn mail(&self) -> PathBuf {
        self.dir.path().join("mail")
    }
}

/// Run `mailauth --config CONFIG checkpassword /usr/bin/env` with `input` on fd 3 (None: fd 3
/// closed) and exactly the environment `env`.
fn checkpassword(config: &Path, input: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
    checkpassword_args(
        &[
            "--config",
            config.to_str().expect("path"),
            "checkpassword",
            "/usr/bin/env",
        ],
        input,
        env,
    )
}

fn checkpassword_args(args: &[&str], input: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
    run(BIN, args, input, env, false).0
}

/// Run `bin args` with `input` on fd 3 (None: fd 3 closed), exactly the environment `env`,
/// and (if `fd4`) a pipe on fd 4 as Dovecot does; returns what was written on fd 4.
fn run(
    bin: &str,
    args: &[&str],
    input: Option<&[u8]>,
    env: &[(&str, &str)],
    fd4: bool,
) -> (Output, Vec<u8>) {
    let mut fds = [-1i32; 2];
    if input.is_some() {
        // SAFETY: pipe() fills two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let data = input.unwrap_or_default();
        assert!(data.len() < 60_000);
        // SAFETY: writing a live buffer to our pipe, then closing the write end.
        unsafe {
            assert_eq!(
                libc::write(fds[1], data.as_ptr().cast(), data.len()),
                data.len() as isize
            );
            libc::close(fds[1]);
        }
    }
    let mut reply = [-1i32; 2];
    if fd4 {
        // SAFETY: pipe() fills two descriptors.
        assert_eq!(unsafe { libc::pipe(reply.as_mut_ptr()) }, 0);
    }
    let read_fd = fds[0];
    let reply_wr = reply[1];
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe dup2/close between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move both out of the way first: either may itself be 3 or 4.
            let high = |fd: i32| {
                if fd >= 0 {
                    libc::fcntl(fd, libc::F_DUPFD, 10)
                } else {
                    -1
                }
            };
            let (read_fd, reply_wr) = (high(read_fd), high(reply_wr));
            if read_fd >= 0 {
                if libc::dup2(read_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else {
                libc::close(3);
            }
            if reply_wr >= 0 {
                if libc::dup2(reply_wr, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else {
                libc::close(4);
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run mailauth");
    let mut written = Vec::new();
    // SAFETY: closing our copies; reading the reply pipe (the child has exited, the reply
    // is far smaller than a pipe buffer).
    unsafe {
        if read_fd >= 0 {
            libc::close(read_fd);
        }
        if fd4 {
            libc::close(reply[1]);
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(reply[0], buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                written.extend_from_slice(&buf[..n as usize]);
            }
            libc::close(reply[0]);
        }
    }
    (out, written)
}

fn env_map(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn req(user: &str, pw: &str) -> Vec<u8> {
    format!("{user}\0{pw}\0\0").into_bytes()
}

const DOVECOT_ENV: &[(&str, &str)] = &[
    ("PROTO", "TCP"),
    ("ORIG_UID", "103"),
    ("SERVICE", "imap"),
    ("TCPREMOTEIP", "192.0.2.7"),
    ("TCPLOCALIP", "127.0.0.1"),
];

fn no_secret(out: &Output, secret: &str) {
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(secret),
        "password in the reply environment"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(secret),
        "password in the log: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A daemon on `sock` reading its own copy of the seed, where ivanov's password is
/// `via-daemon` (so that answers from it are told apart from the direct path's). The
/// returned directory holds that database.
fn serve_other_directory(sock: &std::path::Path) -> tempfile::TempDir {
    let other = tempfile::tempdir().expect("tempdir");
    let other_db = fixtures::sqlite_seed(other.path());
    let conn =
        rusqlite::Connection::open(other_db.strip_prefix("sqlite:").expect("url")).expect("open");
    conn.execute(
        "UPDATE mail SET password = '{PLAIN}via-daemon' WHERE mailbox = 'ivanov'",
        [],
    )
    .expect("update");
    let daemon_conf = other.path().join("daemon.toml");
    std::fs::write(
        &daemon_conf,
        format!("[[directory]]\nname = \"d\"\nurl = \"{other_db}\"\n[mail]\nuid = 8\ngid = 12\n"),
    )
    .expect("write");
    let auth =
        Arc::new(Authenticator::new(Config::load(&daemon_conf).expect("config")).expect("auth"));
    serve_api(UnixListener::bind(sock).expect("bind"), auth);
    other
}

impl Env {
    /// A configuration whose `[auth] socket` (the daemon's, not started) is `auth.sock` in
    /// the test's directory, asked for at most 1 s: (socket path, configuration path).
    fn daemon_config(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        let sock = self.dir.path().join("auth.sock");
        let conf = self.config(
            "d.toml",
            &format!(
                "[auth]\nsocket = \"{}\"\nsocket_timeout = 1.0\n",
                sock.display()
            ),
        );
        (sock, conf)
    }
}

#[test]
fn login_success_execs_the_reply_program_with_userdb_fields() {
    let e = Env::new();
    let conf = e.config("c.toml", "");
    for user in [
        "ivanov@msk.domain.ru",
        "IVANOV@Msk.Domain.RU",
        "ivanov+lists@msk.domain.ru",
    ] {
        let out = checkpassword(&conf, Some(&req(user, "ivanov-pw")), DOVECOT_ENV);
        assert_eq!(out.status.code(), Some(0), "{user}: {out:?}");
        let env = env_map(&out);
        let home = format!("{}/msk.domain.ru/ivanov", e.mail().display());
        assert_eq!(env["USER"], "ivanov@msk.domain.ru");
        assert_eq!(env["HOME"], home);
        assert_eq!(env["userdb_uid"], "8");
        assert_eq!(env["userdb_gid"], "12");
        assert_eq!(env["userdb_mail"], format!("maildir:{home}/Maildir"));
        assert_eq!(env["EXTRA"], "userdb_uid userdb_gid userdb_mail");
        assert!(!env.contains_key("AUTHORIZED"));
        assert!(!env.contains_key("proxy"));
        assert_eq!(env["ORIG_UID"], "103", "Dovecot's environment is passed on");
        no_secret(&out, "ivanov-pw");
    }
    // Stored as "Kuznetsov" in domain "Nsk": canonical lower case.
    let out = checkpassword(
        &conf,
        Some(&req("kuznetsov@nsk.domain.ru", "kuznetsov-pw")),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(env_map(&out)["USER"], "kuznetsov@nsk.domain.ru");
}

#[test]
fn failed_logins_exit_1() {
    let e = Env::new();
    let conf = e.config("c.toml", "");
    for (user, pw) in [
        ("ivanov@msk.domain.ru", "wrong"),
        ("ivanov@msk.domain.ru", ""),
        ("ivanov@msk.domain.ru", "IVANOV-PW"),
        ("ghost@msk.domain.ru", "x"),
        ("ivanov", "ivanov-pw"),
        ("petrov@msk.domain.ru", "petrov-pw"), // disabled mailbox
        ("olduser@old.domain.ru", "olduser-pw"), // disabled ldomain
        ("admin@shop.closed.ru", "admin-pw"),  // disabled mdomain
        ("smirnova@kzn.domain.ru", ""),        // NULL password
        ("dir@msk.domain.ru", ""),             // legacy pseudo-mailbox
        ("ivanov@msk.domain.ru'--", "ivanov-pw"),
        ("%u@msk.domain.ru", "x"),
        ("i'vanov@msk.domain.ru", "x"),
    ] {
        let out = checkpassword(&conf, Some(&req(user, pw)), DOVECOT_ENV);
        assert_eq!(out.status.code(), Some(1), "{user}: {out:?}");
        assert!(out.stdout.is_empty(), "nothing exec'd for {user}");
        if !pw.is_empty() {
            no_secret(&out, pw);
        }
    }
}

#[test]
fn lookups_answer_disabled_users_and_exit_3_for_unknown() {
    let e = Env::new();
    let conf = e.config("c.toml", "");
    let lookup = [("AUTHORIZED", "1"), ("SERVICE", "lmtp")];
    for user in [
        "petrov@msk.domain.ru",
        "olduser@old.domain.ru",
        "ivanov+tag@msk.domain.ru",
    ] {
        let out = checkpassword(&conf, Some(&req(user, "")), &lookup);
        assert_eq!(out.status.code(), Some(0), "{user}: {out:?}");
        let env = env_map(&out);
        assert_eq!(env["AUTHORIZED"], "2");
        assert!(env["userdb_mail"].starts_with("maildir:"));
    }
    for user in [
        "ghost@msk.domain.ru",
        "nodomain",
        "a'b@msk.domain.ru",
        "%d@x.ru",
    ] {
        let out = checkpassword(&conf, Some(&req(user, "")), &lookup);
        assert_eq!(out.status.code(), Some(3), "{user}: {out:?}");
    }
}

#[test]
fn hostile_input_and_bad_usage() {
    let e = Env::new();
    let conf = e.config("c.toml", "");
    let lookup = [("AUTHORIZED", "1")];
    // Framing problems: a failed login (1) or an unknown user in a lookup (3).
    let long = [b'a'; 600];
    let mut long_req = b"ivanov@msk.domain.ru\0".to_vec();
    long_req.extend_from_slice(&[b'p'; 500]);
    long_req.extend_from_slice(b"\0\0");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no NUL", b"ivanov@msk.domain.ru".to_vec()),
        ("one NUL", b"ivanov@msk.domain.ru\0ivanov-pw".to_vec()),
        ("600 bytes", long.to_vec()),
        ("user+password > 512", long_req),
        (
            "invalid UTF-8",
            b"iv\xffnov@msk.domain.ru\0ivanov-pw\0\0".to_vec(),
        ),
        ("empty user", b"\0ivanov-pw\0\0".to_vec()),
        ("empty input", Vec::new()),
        (
            "NUL inside user",
            b"iv\0anov@msk.domain.ru\0ivanov-pw\0\0".to_vec(),
        ),
    ];
    for (what, input) in &cases {
        let out = checkpassword(&conf, Some(input), DOVECOT_ENV);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        let out = checkpassword(&conf, Some(input), &lookup);
        assert_eq!(out.status.code(), Some(3), "{what} (lookup): {out:?}");
    }
    let ok = req("ivanov@msk.domain.ru", "ivanov-pw");
    // fd 3 not open, no reply program, strange AUTHORIZED, bad/missing config: 111.
    assert_eq!(checkpassword(&conf, None, &[]).status.code(), Some(111));
    let c = conf.to_str().expect("path");
    let out = checkpassword_args(&["--config", c, "checkpassword"], Some(&ok), &[]);
    assert_eq!(out.status.code(), Some(111));
    let out = checkpassword_args(
        &["--config", c, "checkpassword", "--bogus-flag"],
        Some(&ok),
        &[],
    );
    // "--bogus-flag" is taken as the reply program: exec fails → 111, never a login.
    assert_eq!(out.status.code(), Some(111));
    let out = checkpassword_args(&["--nope", "checkpassword", "/usr/bin/env"], Some(&ok), &[]);
    assert_eq!(out.status.code(), Some(111));
    let out = checkpassword(&conf, Some(&ok), &[("AUTHORIZED", "2")]);
    assert_eq!(out.status.code(), Some(111));
    let missing = e.dir.path().join("missing.toml");
    assert_eq!(
        checkpassword(&missing, Some(&ok), &[]).status.code(),
        Some(111)
    );
    let broken = e.dir.path().join("broken.toml");
    std::fs::write(&broken, "node = [\n").expect("write");
    assert_eq!(
        checkpassword(&broken, Some(&ok), &[]).status.code(),
        Some(111)
    );
    let bad_scheme = e.config("s.toml", "[auth]\ndefault_scheme = \"NOPE\"\n");
    assert_eq!(
        checkpassword(&bad_scheme, Some(&ok), &[]).status.code(),
        Some(111)
    );
    let no_db = e.dir.path().join("nodb.toml");
    std::fs::write(
        &no_db,
        "[[directory]]\nname = \"x\"\nurl = \"sqlite:/nonexistent/x.sqlite\"\n",
    )
    .expect("write");
    let out = checkpassword(&no_db, Some(&ok), &[]);
    assert_eq!(out.status.code(), Some(111));
    no_secret(&out, "ivanov-pw");
    // A reply program that does not exist: 111.
    let out = checkpassword_args(
        &[
            "--config",
            c,
            "checkpassword",
            "/nonexistent/checkpassword-reply",
        ],
        Some(&ok),
        &[],
    );
    assert_eq!(out.status.code(), Some(111));
    // Still works with an empty environment.
    assert_eq!(checkpassword(&conf, Some(&ok), &[]).status.code(), Some(0));
}

#[test]
fn unusable_stored_hashes_fail_the_login_with_a_logged_reason() {
    let e = Env::new();
    let path = e.db.strip_prefix("sqlite:").expect("sqlite url");
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute(
        "UPDATE mail SET password = '{NOPE}abc' WHERE mailbox = 'ivanov'",
        [],
    )
    .expect("update");
    conn.execute(
        "UPDATE mail SET password = '{SHA512-CRYPT}$6$broken' WHERE mailbox = 'popova'",
        [],
    )
    .expect("update");
    let conf = e.config("c.toml", "");
    let out = checkpassword(&conf, Some(&req("ivanov@msk.domain.ru", "abc")), &[]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("unknown password scheme"), "{log}");
    let out = checkpassword(&conf, Some(&req("popova@ekb.domain.ru", "popova-pw")), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed"));
    no_secret(&out, "popova-pw");
}

#[test]
fn proxy_mode_answers_the_primary_node() {
    let e = Env::new();
    let conf = e.config(
        "p.toml",
        &format!(
            "[auth]\nproxy_mode = true\n[auth.nodes]\n\"{}\" = \"127.0.0.9\"\n",
            fixtures::S2
        ),
    );
    // sidorov@spb: primary S2 → proxied.
    let out = checkpassword(
        &conf,
        Some(&req("sidorov@spb.domain.ru", "sidorov-pw")),
        DOVECOT_ENV,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let env = env_map(&out);
    assert_eq!(env["proxy"], "y");
    assert_eq!(env["host"], "127.0.0.9");
    assert_eq!(env["nopassword"], "y");
    assert_eq!(env["port"], "143");
    assert_eq!(
        env["EXTRA"],
        "userdb_uid userdb_gid userdb_mail proxy host port nopassword"
    );
    // The password is still checked.
    let out = checkpassword(
        &conf,
        Some(&req("sidorov@spb.domain.ru", "bad")),
        DOVECOT_ENV,
    );
    assert_eq!(out.status.code(), Some(1));
    // ivanov@msk: primary S1 = this node → local.
    let out = checkpassword(
        &conf,
        Some(&req("ivanov@msk.domain.ru", "ivanov-pw")),
        DOVECOT_ENV,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!env_map(&out).contains_key("proxy"));
    // Lookups are never proxied.
    let out = checkpassword(
        &conf,
        Some(&req("sidorov@spb.domain.ru", "")),
        &[("AUTHORIZED", "1")],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!env_map(&out).contains_key("proxy"));
}

/// A minimal HTTP/1.0 loop around `api::handle` (the daemon proper is `mailauth serve`).
fn serve_api(listener: UnixListener, auth: Arc<Authenticator>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let auth = auth.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, len) = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let r = api::handle(&auth, &path, &buf[head_end..head_end + len]);
                let _ = write!(
                    s,
                    "HTTP/1.0 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                    r.status,
                    r.content_type,
                    r.body.len()
                );
                let _ = s.write_all(&r.body);
            });
        }
    });
}

#[test]
fn daemon_socket_answers_falls_back_when_down_and_times_out_when_hung() {
    let e = Env::new();
    let (sock, conf) = e.daemon_config();
    let ok = req("ivanov@msk.domain.ru", "ivanov-pw");
    // No socket file: direct database.
    assert_eq!(checkpassword(&conf, Some(&ok), &[]).status.code(), Some(0));
    // A stale socket file nobody listens on: connection refused → direct database.
    drop(UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    assert_eq!(checkpassword(&conf, Some(&ok), &[]).status.code(), Some(0));
    std::fs::remove_file(&sock).expect("rm");

    // A hung daemon (accepts, never answers): bounded wait, then 111, never a login.
    let hung = UnixListener::bind(&sock).expect("bind");
    let t = Instant::now();
    let out = checkpassword(&conf, Some(&ok), &[]);
    assert_eq!(out.status.code(), Some(111), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    no_secret(&out, "ivanov-pw");
    drop(hung);
    std::fs::remove_file(&sock).expect("rm");

    // A working daemon: answers come from it. Prove it by pointing the daemon at a database
    // where ivanov has another password than the one the direct path would see.
    let _other = serve_other_directory(&sock);
    let out = checkpassword(&conf, Some(&req("ivanov@msk.domain.ru", "via-daemon")), &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(env_map(&out)["HOME"], "/usr/mail/msk.domain.ru/ivanov");
    assert_eq!(checkpassword(&conf, Some(&ok), &[]).status.code(), Some(1));
    let out = checkpassword(
        &conf,
        Some(&req("petrov@msk.domain.ru", "")),
        &[("AUTHORIZED", "1")],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(env_map(&out)["AUTHORIZED"], "2");
    let out = checkpassword(
        &conf,
        Some(&req("ghost@msk.domain.ru", "")),
        &[("AUTHORIZED", "1")],
    );
    assert_eq!(out.status.code(), Some(3));
    // Non-UTF-8 password through the daemon.
    let out = checkpassword(&conf, Some(b"ivanov@msk.domain.ru\0\xff\xfe\0\0"), &[]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn api_contract() {
    let e = Env::new();
    let auth =
        Authenticator::new(Config::load(&e.config("c.toml", "")).expect("config")).expect("auth");
    let json = |r: &api::ApiResponse| -> serde_json::Value {
        serde_json::from_slice(&r.body).expect("json")
    };
    let r = api::handle(
        &auth,
        "/passdb",
        br#"{"user":"Ivanov@msk.domain.ru","password":"ivanov-pw","service":"imap","remote_ip":"192.0.2.1","local_ip":"127.0.0.1"}"#,
    );
    assert_eq!(r.status, 200);
    let v = json(&r);
    assert_eq!(v["result"], "ok");
    assert_eq!(v["user"], "ivanov@msk.domain.ru");
    assert_eq!(v["uid"], 8);
    assert_eq!(v["gid"], 12);
    assert!(v["mail"]
        .as_str()
        .expect("mail")
        .ends_with("/msk.domain.ru/ivanov/Maildir"));
    assert!(v.get("proxy").is_none());
    let r = api::handle(
        &auth,
        "/passdb",
        br#"{"user":"ivanov@msk.domain.ru","password":"x"}"#,
    );
    assert_eq!(json(&r)["result"], "password_mismatch");
    assert!(!String::from_utf8_lossy(&r.body).contains("\"x\""));
    let r = api::handle(
        &auth,
        "/passdb",
        br#"{"user":"petrov@msk.domain.ru","password":"petrov-pw"}"#,
    );
    assert_eq!(json(&r)["result"], "user_disabled");
    let r = api::handle(
        &auth,
        "/passdb",
        br#"{"user":"no@msk.domain.ru","password":"x"}"#,
    );
    assert_eq!(json(&r)["result"], "user_unknown");
    let r = api::handle(&auth, "/userdb", br#"{"user":"petrov@msk.domain.ru"}"#);
    assert_eq!(json(&r)["result"], "ok");
    let r = api::handle(&auth, "/userdb", br#"{"user":"x'y@msk.domain.ru"}"#);
    assert_eq!(json(&r)["result"], "user_unknown");
    let r = api::handle(&auth, "/users", b"");
    assert_eq!(r.status, 200);
    let users = String::from_utf8(r.body).expect("utf8");
    let want: Vec<&str> = fixtures::MAILBOXES.iter().map(|m| m.0).collect();
    assert_eq!(users.lines().collect::<Vec<_>>(), want);
    for (path, body) in [
        ("/passdb", &b"{"[..]),
        ("/passdb", br#"{"user":"a@b.ru"}"#),
        ("/userdb", b"[]"),
        ("/passdb", &[b' '; 5000][..]),
    ] {
        let r = api::handle(&auth, path, body);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(json(&r)["result"], "internal_failure");
    }
    assert_eq!(api::handle(&auth, "/nope", b"").status, 404);

    // Database gone: 503 internal_failure, never user_unknown.
    std::fs::remove_file(e.db.strip_prefix("sqlite:").expect("url")).expect("rm db");
    let auth =
        Authenticator::new(Config::load(&e.config("c2.toml", "")).expect("config")).expect("auth");
    let r = api::handle(&auth, "/userdb", br#"{"user":"ivanov@msk.domain.ru"}"#);
    assert_ne!(r.status, 200);
    assert_eq!(json(&r)["result"], "internal_failure");
}

#[test]
fn users_and_passwd_file() {
    let e = Env::new();
    let conf = e.config("c.toml", "");
    let out = Command::new(BIN)
        .args(["--config", conf.to_str().expect("path"), "users"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let want: Vec<&str> = fixtures::MAILBOXES.iter().map(|m| m.0).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        want
    );
    let file = e.dir.path().join("users.passwd");
    let out = Command::new(BIN)
        .args([
            "--config",
            conf.to_str().expect("path"),
            "passwd-file",
            "--output",
            file.to_str().expect("path"),
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).expect("read");
    assert_eq!(text.lines().count(), want.len());
    let home = format!("{}/msk.domain.ru/ivanov", e.mail().display());
    assert!(text.contains(&format!(
        "ivanov@msk.domain.ru::8:12::{home}::userdb_mail=maildir:{home}/Maildir\n"
    )));
    assert!(!text.contains(&fixtures::md5_hex("ivanov-pw")));
}

const CLIENT: &str = env!("CARGO_BIN_EXE_mailauth-checkpassword");
const CP_REPLY: &str = "/usr/lib/dovecot/checkpassword-reply";

fn my_uid() -> String {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }.to_string()
}

/// Given Dovecot's reply program, `checkpassword` writes the reply on fd 4 itself (one exec
/// less per login). The bytes and the exit code must be exactly those of the real
/// checkpassword-reply run with the environment we would otherwise have exec'd it with.
#[test]
fn dovecot_reply_is_written_on_fd4_exactly_as_checkpassword_reply_would() {
    let e = Env::new();
    let conf = e.config("c.toml", "");
    let c = conf.to_str().expect("path");
    let uid = my_uid();
    for (user, pw, lookup, code) in [
        ("IVANOV+x@msk.domain.ru", "ivanov-pw", false, 0),
        ("petrov@msk.domain.ru", "", true, 2),
    ] {
        let mut env = vec![("ORIG_UID", uid.as_str()), ("SERVICE", "imap")];
        if lookup {
            env.push(("AUTHORIZED", "1"));
        }
        let input = req(user, pw);
        let (out, ours) = run(
            BIN,
            &["--config", c, "checkpassword", CP_REPLY],
            Some(&input),
            &env,
            true,
        );
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        assert!(out.stdout.is_empty());
        no_secret(&out, "ivanov-pw");
        let (out, _) = run(
            BIN,
            &["--config", c, "checkpassword", "/usr/bin/env"],
            Some(&input),
            &env,
            false,
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let vars = env_map(&out);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (out, theirs) = run(CP_REPLY, &[], None, &vars, true);
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        assert!(!ours.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }
    // Failures write nothing on fd 4.
    let (out, ours) = run(
        BIN,
        &["--config", c, "checkpassword", CP_REPLY],
        Some(&req("ivanov@msk.domain.ru", "nope")),
        &[],
        true,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(ours.is_empty());
    // Another reply program is still exec'd even with fd 4 open.
    let (out, ours) = run(
        BIN,
        &["--config", c, "checkpassword", "/usr/bin/env"],
        Some(&req("ivanov@msk.domain.ru", "ivanov-pw")),
        &[],
        true,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(ours.is_empty());
    assert_eq!(env_map(&out)["USER"], "ivanov@msk.domain.ru");
}

/// `mailauth-checkpassword`: asks the daemon; without one it hands the request over to
/// `mailauth checkpassword`, with the same answers and exit codes.
#[test]
fn small_client_asks_the_daemon_and_hands_over_without_it() {
    let e = Env::new();
    let (sock, conf) = e.daemon_config();
    let c = conf.to_str().expect("path");
    let uid = my_uid();
    let denv = [("ORIG_UID", uid.as_str()), ("SERVICE", "imap")];
    let lookup = [("ORIG_UID", uid.as_str()), ("AUTHORIZED", "1")];
    let client = |input: &[u8], env: &[(&str, &str)]| {
        run(CLIENT, &["--config", c, CP_REPLY], Some(input), env, true)
    };
    let ok = req("ivanov@msk.domain.ru", "ivanov-pw");

    // No daemon running: handed over to `mailauth checkpassword` (direct database).
    let (out, reply) = client(&ok, &denv);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let home = format!("{}/msk.domain.ru/ivanov", e.mail().display());
    assert!(
        String::from_utf8_lossy(&reply)
            .starts_with(&format!("user=ivanov@msk.domain.ru\tuserdb_home={home}\t")),
        "{reply:?}"
    );
    no_secret(&out, "ivanov-pw");
    let (out, reply) = client(&req("ivanov@msk.domain.ru", "wrong"), &denv);
    assert_eq!((out.status.code(), reply.len()), (Some(1), 0), "{out:?}");
    let (out, _) = client(&req("ghost@msk.domain.ru", ""), &lookup);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let (out, _) = run(
        CLIENT,
        &["--config", c, "/usr/bin/env"],
        Some(&ok),
        &denv,
        false,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(env_map(&out)["USER"], "ivanov@msk.domain.ru");
    // No [auth] socket configured at all: handed over too.
    let plain = e.config("p.toml", "");
    let (out, _) = run(
        CLIENT,
        &["--config", plain.to_str().expect("path"), CP_REPLY],
        Some(&ok),
        &denv,
        true,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // A hung daemon: bounded wait, then 111.
    let hung = UnixListener::bind(&sock).expect("bind");
    let t = Instant::now();
    let (out, reply) = client(&ok, &denv);
    assert_eq!((out.status.code(), reply.len()), (Some(111), 0), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    no_secret(&out, "ivanov-pw");
    drop(hung);
    std::fs::remove_file(&sock).expect("rm");

    // A daemon reading another database (ivanov's password differs there): its answers.
    let _other = serve_other_directory(&sock);
    let (out, reply) = client(&req("ivanov@msk.domain.ru", "via-daemon"), &denv);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "user=ivanov@msk.domain.ru\tuserdb_home=/usr/mail/msk.domain.ru/ivanov\tuserdb_uid=8\t\
         userdb_gid=12\tuserdb_mail=maildir:/usr/mail/msk.domain.ru/ivanov/Maildir\t"
    );
    let (out, _) = client(&ok, &denv);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (out, reply) = client(&req("petrov@msk.domain.ru", ""), &lookup);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&reply).starts_with("user=petrov@msk.domain.ru\t"));
    let (out, _) = client(&req("ghost@msk.domain.ru", ""), &lookup);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let (out, _) = client(b"ivanov@msk.domain.ru\0\xff\xfe\0\0", &denv);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Bad usage and unusable fd-3 data: 111 / refusal, never a login.
    for args in [
        vec!["--config", c],
        vec!["--config", c, "--bogus", CP_REPLY],
        vec!["--config"],
    ] {
        let (out, reply) = run(CLIENT, &args, Some(&ok), &denv, true);
        assert_eq!(
            (out.status.code(), reply.len()),
            (Some(111), 0),
            "{args:?}: {out:?}"
        );
    }
    let (out, _) = run(CLIENT, &["--config", c, CP_REPLY], None, &denv, true);
    assert_eq!(out.status.code(), Some(111), "{out:?}");
    let (out, _) = client(b"no-nul-here", &denv);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (out, _) = client(&ok, &[("AUTHORIZED", "2")]);
    assert_eq!(out.status.code(), Some(111), "{out:?}");
    // --help / --version like every binary of the toolkit (exit 0, on stdout).
    for arg in ["--help", "--version"] {
        let out = Command::new(CLIENT).arg(arg).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{arg}");
        let want = if arg == "--help" {
            "Usage"
        } else {
            env!("CARGO_PKG_VERSION")
        };
        assert!(String::from_utf8_lossy(&out.stdout).contains(want), "{arg}");
    }
    let missing = e.dir.path().join("missing.toml");
    let (out, _) = run(
        CLIENT,
        &["--config", missing.to_str().expect("path"), CP_REPLY],
        Some(&ok),
        &denv,
        true,
    );
    assert_eq!(out.status.code(), Some(111), "{out:?}");
}
