//! `mailmap serve`: the line protocol, bounds, SIGHUP (reload + flush), SIGTERM (clean
//! exit, socket removed), loopback TCP, a second server refused — over a throwaway
//! PostgreSQL with the seed-shaped fixtures. (Outage behaviour: tests/exim_outage.rs.)
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;
use support::exim::{self, ask_socket, mailmap_bin, Serve, S1_IP, S2_IP};
use support::fixtures::{self, S1};
use support::pg;

#[test]
fn protocol_answers() {
    let db = fixtures::pg_seed("serve_protocol");
    let dir = exim::open_tempdir();
    let conf = exim::mailmap_config(dir.path(), "m.toml", S1, &db.url, "");
    let serve = Serve::start(&conf, &dir.path().join("s.sock"));
    let cases = [
        ("route msk.domain.ru", format!("OK {S1_IP} : {S2_IP}")),
        ("route msk.domain.ru\n", format!("OK {S1_IP} : {S2_IP}")),
        ("route msk.domain.ru\r\n", format!("OK {S1_IP} : {S2_IP}")),
        (
            "rcpt-route ivanov+x@msk.domain.ru",
            format!("OK {S1_IP} : {S2_IP}"),
        ),
        ("rcpt-route petrov@msk.domain.ru", "NOTFOUND".to_string()),
        (
            "recipient Ivanov@MSK.domain.ru",
            "OK ivanov@msk.domain.ru".to_string(),
        ),
        ("recipient a b@msk.domain.ru", "NOTFOUND".to_string()),
        ("local-domain msk.domain.ru", "OK msk.domain.ru".to_string()),
        ("local-domain spb.domain.ru", "NOTFOUND".to_string()),
        (
            "backup-domain spb.domain.ru",
            "OK spb.domain.ru".to_string(),
        ),
        ("backup-route sidorov@spb.domain.ru", format!("OK {S2_IP}")),
        (
            "home ivanov@msk.domain.ru",
            "OK /usr/mail/msk.domain.ru/ivanov".to_string(),
        ),
        (
            "maildir ivanov@msk.domain.ru",
            "OK /usr/mail/msk.domain.ru/ivanov/Maildir".to_string(),
        ),
        (
            "route msk.domain.ru\nroute spb.domain.ru",
            "NOTFOUND".to_string(),
        ),
        ("route x'; drop table maps; --", "NOTFOUND".to_string()),
        ("drop tables", "ERROR unknown request".to_string()),
        ("", "ERROR unknown request".to_string()),
        ("ping", "OK pong".to_string()),
    ];
    for (req, want) in &cases {
        assert_eq!(serve.ask(req).as_deref(), Some(want.as_str()), "{req:?}");
    }
    // over-long request: cut at the bound, answered NOTFOUND
    let long = format!("route {}.ru", "a".repeat(5000));
    assert_eq!(serve.ask(&long).as_deref(), Some("NOTFOUND"));
    assert_eq!(
        ask_socket(&serve.socket, b"route \xff\xfe.ru").as_deref(),
        Some("NOTFOUND")
    );
    // the CLI client
    let out = Command::new(mailmap_bin())
        .arg("--config")
        .arg(&conf)
        .args(["ask", "--socket"])
        .arg(&serve.socket)
        .args(["route", "spb.domain.ru"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{S2_IP} : {S1_IP}\n")
    );
}

#[test]
fn bounds_on_clients_and_time() {
    let db = fixtures::pg_seed("serve_bounds");
    let dir = exim::open_tempdir();
    let conf = exim::mailmap_config(
        dir.path(),
        "m.toml",
        S1,
        &db.url,
        "max_clients = 2\nclient_timeout = 5",
    );
    let serve = Serve::start(&conf, &dir.path().join("s.sock"));
    // two silent clients hold both slots: a third one is turned away at once
    // ("TEMPFAIL busy", or a reset if the server closed before reading the request:
    // either way ${readsocket} defers)
    let a = UnixStream::connect(&serve.socket).unwrap();
    let b = UnixStream::connect(&serve.socket).unwrap();
    let turned_away = pg::Pg::wait_until(Duration::from_secs(4), || {
        let answer = serve.ask("ping");
        answer.is_none() || answer.as_deref() == Some("TEMPFAIL busy")
    });
    assert!(turned_away);
    // the silent ones are closed after client_timeout (5 s) without an answer (or were
    // turned away as busy themselves if a finished client was still being counted)
    let t = std::time::Instant::now();
    for mut s in [a, b] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.is_empty() || out == "TEMPFAIL busy\n", "{out:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(pg::Pg::wait_until(Duration::from_secs(10), || serve
        .ask("ping")
        .as_deref()
        == Some("OK pong")));
    // SIGTERM still stops it when its socket file is gone (no wake-up connection possible)
    let mut serve = serve;
    std::fs::remove_file(&serve.socket).unwrap();
    assert_eq!(serve.stop(), Some(0));
}

#[test]
fn sighup_flushes_and_sigterm_cleans_up() {
    let db = fixtures::pg_seed("serve_signals");
    let dir = exim::open_tempdir();
    let conf = exim::mailmap_config(dir.path(), "m.toml", S1, &db.url, "positive_ttl = 3600");
    let socket = dir.path().join("s.sock");
    let mut serve = Serve::start(&conf, &socket);
    assert_eq!(
        serve.ask("route kzn.domain.ru").as_deref(),
        Some(format!("OK {S1_IP} : {S2_IP}").as_str())
    );
    // failover in the database: the cached answer stays until SIGHUP
    pg::shared().psql(
        &db.name,
        "UPDATE maps SET storage1 = 'storage-02.domain.ru', storage2 = 'storage-01.domain.ru' \
         WHERE ldomain_id = (SELECT id FROM ldomain WHERE domain = 'kzn');",
    );
    assert_eq!(
        serve.ask("route kzn.domain.ru").as_deref(),
        Some(format!("OK {S1_IP} : {S2_IP}").as_str())
    );
    serve.signal(libc::SIGHUP);
    let want = format!("OK {S2_IP} : {S1_IP}");
    assert!(pg::Pg::wait_until(Duration::from_secs(10), || serve
        .ask("route kzn.domain.ru")
        .as_deref()
        == Some(want.as_str())));
    // a second server on the same socket is refused (temporary failure), the first survives
    let out = Command::new(mailmap_bin())
        .arg("--config")
        .arg(&conf)
        .args(["serve", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(serve.ask("ping").as_deref(), Some("OK pong"));
    assert_eq!(serve.stop(), Some(0));
    assert!(!socket.exists());
}

#[test]
fn loopback_tcp() {
    let db = fixtures::pg_seed("serve_tcp");
    let dir = exim::open_tempdir();
    let conf = exim::mailmap_config(dir.path(), "m.toml", S1, &db.url, "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(mailmap_bin())
        .arg("--config")
        .arg(&conf)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ask = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"route spb.domain.ru").ok()?;
        s.shutdown(std::net::Shutdown::Write).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let ok = pg::Pg::wait_until(Duration::from_secs(10), || ask().is_some());
    let answer = ask();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(ok);
    assert_eq!(
        answer.as_deref(),
        Some(format!("OK {S2_IP} : {S1_IP}\n").as_str())
    );
    assert_eq!(status.code(), Some(0));
    // not loopback: refused as bad usage
    let out = Command::new(mailmap_bin())
        .arg("--config")
        .arg(&conf)
        .args(["serve", "--listen", "0.0.0.0:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
