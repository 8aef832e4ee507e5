//! `mailauth serve` as nginx's auth_http service, tested through a real nginx mail proxy in
//! front of real Dovecot storages (127.0.0.2 = storage-01, 127.0.0.3 = storage-02,
//! 127.0.0.4 = storage-03) and a real PostgreSQL directory.
mod support;

use std::time::Duration;
use support::nginx::{
    header, http_raw, imap_login, parse_headers, pop3_login, MailauthServe, Nginx, NginxOptions,
};

fn h(v: &str) -> &[u8] {
    v.as_bytes()
}

/// The headers nginx sends for alice's IMAP login (plain), as (name, raw value).
fn alice_request() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("Auth-Method", h("plain")),
        ("Auth-User", h("alice@branch.example.test")),
        ("Auth-Pass", h("secret")),
        ("Auth-Protocol", h("imap")),
        ("Auth-Login-Attempt", h("1")),
        ("Client-IP", h("192.0.2.10")),
    ]
}

/// A config whose only directory answers nothing useful (a server that is not there).
fn broken_directory_config() -> String {
    let port = support::nginx::free_port("127.0.0.1");
    format!(
        r#"db_timeout = 1
[[directory]]
name = "gone"
url = "postgresql://mail:mailpw@127.0.0.1:{port}/mail?connect_timeout=1"
[ports]
imap = 143
pop3 = 110
smtp = 25
[auth.http]
timeout = 2
socket_mode = "0666"
[auth.health]
interval = 0.3
timeout = 0.3
"#
    )
}

#[test]
fn directory_down_never_grants() {
    let svc = MailauthServe::start(&broken_directory_config());
    // Directly: every protocol gets its temporary-failure text, never OK.
    for (proto, text) in [
        ("imap", "[UNAVAILABLE]"),
        ("pop3", "[SYS/TEMP]"),
        ("smtp", "Temporary"),
    ] {
        let r = svc.auth(&[
            ("Auth-Method", h("plain")),
            ("Auth-User", h("alice@branch.example.test")),
            ("Auth-Pass", h("secret")),
            ("Auth-Protocol", h(proto)),
            ("Auth-Login-Attempt", h("1")),
            ("Client-IP", h("192.0.2.10")),
        ]);
        let status = header(&r, "Auth-Status").unwrap_or_default();
        assert!(status.starts_with(text), "{proto}: {r:?}");
        assert!(header(&r, "Auth-Server").is_none());
        if proto == "smtp" {
            assert_eq!(header(&r, "Auth-Error-Code"), Some("454 4.7.0"));
        }
    }
    // Through nginx: the IMAP client is told to come back later, and is not let in.
    let nginx = Nginx::start(&NginxOptions {
        auth_http: format!("{}/auth", svc.addr),
        ..Default::default()
    });
    let answer = imap_login(nginx.imap, "alice@branch.example.test", "secret");
    assert!(answer.starts_with("a1 NO [UNAVAILABLE]"), "{answer}");
    let answer = pop3_login(nginx.pop3, "alice@branch.example.test", "secret");
    assert!(answer.starts_with("-ERR [SYS/TEMP]"), "{answer}");
    // The same over the unix socket (nginx's workers run as www-data: socket_mode).
    let nginx_unix = Nginx::start(&NginxOptions {
        auth_http: format!("unix:{}:/auth", svc.socket.display()),
        ..Default::default()
    });
    let answer = imap_login(nginx_unix.imap, "alice@branch.example.test", "secret");
    assert!(answer.starts_with("a1 NO [UNAVAILABLE]"), "{answer}");
    let log = svc.log_with("result=tempfail");
    assert!(log.contains("result=tempfail"), "{log}");
    assert!(!log.contains("secret"), "password in the log");
}

#[test]
fn hostile_requests_fail_cleanly() {
    let svc = MailauthServe::start(&broken_directory_config());
    let base = alice_request();
    let not_ok = |r: &[(String, String)], what: &str| {
        let status = header(r, "Auth-Status");
        assert!(status.is_some(), "{what}: no Auth-Status: {r:?}");
        assert_ne!(status, Some("OK"), "{what}: {r:?}");
        assert!(header(r, "Auth-Server").is_none(), "{what}: {r:?}");
    };
    // Missing headers, one at a time.
    for skip in 0..base.len() {
        let hs: Vec<_> = base
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, x)| *x)
            .collect();
        not_ok(&svc.auth(&hs), &format!("without {}", base[skip].0));
    }
    // Duplicated headers.
    for dup in [
        "Auth-User",
        "Auth-Pass",
        "Auth-Protocol",
        "Client-IP",
        "Auth-Method",
    ] {
        let mut hs = base.clone();
        hs.push((dup, h("other")));
        let r = svc.auth(&hs);
        not_ok(&r, &format!("duplicated {dup}"));
        assert_eq!(
            header(&r, "Auth-Status"),
            Some("Invalid request"),
            "{dup}: {r:?}"
        );
    }
    // Bad escapes, non-UTF-8, bad values.
    for (name, value) in [
        ("Auth-User", &b"alice%zz@branch.example.test"[..]),
        ("Auth-User", &b"alice%"[..]),
        ("Auth-User", &b"\xff\xfe@branch.example.test"[..]),
        ("Auth-Pass", &b"%G0"[..]),
        ("Client-IP", &b"not-an-ip"[..]),
        ("Auth-Protocol", &b"gopher"[..]),
        ("Auth-Method", &b"kerberos"[..]),
        ("Auth-Login-Attempt", &b"-1"[..]),
    ] {
        let mut hs: Vec<_> = base.iter().filter(|(n, _)| *n != name).copied().collect();
        hs.push((name, value));
        not_ok(&svc.auth(&hs), &format!("{name}={value:?}"));
    }
    // A 64 kB header, CR inside a value, header injection attempts, garbage.
    let big = vec![b'a'; 64 * 1024];
    let mut hs = base.clone();
    hs.push(("X-Big", &big));
    let r = svc.auth(&hs);
    assert_ne!(header(&r, "Auth-Status"), Some("OK"));
    assert!(r[0].1.contains("431"), "{r:?}");
    for raw in [
        &b"GET /auth HTTP/1.0\r\nAuth-User: a\rAuth-Status: OK\r\n\r\n"[..],
        &b"GET /auth HTTP/1.0\r\nAuth-Method: plain\r\n folded: x\r\n\r\n"[..],
        &b"\x00\x01\x02\r\n\r\n"[..],
        &b"GET /auth HTTP/1.0\r\n"[..], // never finished: closed by us
    ] {
        let r = parse_headers(&http_raw(&svc.addr, raw));
        assert_ne!(header(&r, "Auth-Status"), Some("OK"), "{raw:?}: {r:?}");
    }
    // Unknown methods of nginx: none (SMTP without AUTH) and external are refused.
    let mut hs: Vec<_> = base
        .iter()
        .filter(|(n, _)| *n != "Auth-Method" && *n != "Auth-Protocol")
        .copied()
        .collect();
    hs.push(("Auth-Method", h("none")));
    hs.push(("Auth-Protocol", h("smtp")));
    let r = svc.auth(&hs);
    assert_eq!(header(&r, "Auth-Status"), Some("Authentication required"));
    assert_eq!(header(&r, "Auth-Error-Code"), Some("530 5.7.0"));
    let mut hs: Vec<_> = base
        .iter()
        .filter(|(n, _)| *n != "Auth-Method")
        .copied()
        .collect();
    hs.push(("Auth-Method", h("external")));
    not_ok(&svc.auth(&hs), "external");
    // The service is still alive and counting.
    let metrics =
        String::from_utf8_lossy(&http_raw(&svc.addr, b"GET /metrics HTTP/1.0\r\n\r\n")).to_string();
    assert!(
        metrics.contains("mailauth_auth_total{result=\"invalid\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailauth_auth_total{result=\"refused\"} 2"),
        "{metrics}"
    );
}

#[test]
fn smtp_none_through_nginx_is_refused() {
    let svc = MailauthServe::start(&broken_directory_config());
    let nginx = Nginx::start(&NginxOptions {
        auth_http: format!("{}/auth", svc.addr),
        smtp_none: true,
        ..Default::default()
    });
    let mut c = support::nginx::LineClient::connect(nginx.smtp);
    assert!(c.line().starts_with("220"));
    c.command("EHLO client.example", &["250 "]);
    c.command("MAIL FROM:<x@example.org>", &["250", "5", "4"]);
    let r = c.command("RCPT TO:<alice@branch.example.test>", &["2", "4", "5"]);
    let last = r.last().cloned().unwrap_or_default();
    assert!(last.starts_with("530 5.7.0"), "{r:?}");
    let _ = Duration::from_secs(0);
}

#[test]
fn shared_secret_is_required_when_configured() {
    let config = broken_directory_config()
        .replace("[auth.http]\n", "[auth.http]\nsecret = \"s3cr3t-key\"\n");
    let svc = MailauthServe::start(&config);
    let base = alice_request();
    // Without the key, with a wrong one, with a longer one: refused before any work.
    for key in [None, Some("s3cr3t-kez"), Some("s3cr3t-key2"), Some("")] {
        let mut hs = base.clone();
        if let Some(k) = key {
            hs.push(("X-Auth-Key", h(k)));
        }
        let r = svc.auth(&hs);
        assert!(r[0].1.contains("403"), "{key:?}: {r:?}");
        assert_ne!(header(&r, "Auth-Status"), Some("OK"));
    }
    // With the key, the request is handled (here: the directory is down).
    let mut hs = base.clone();
    hs.push(("X-Auth-Key", h("s3cr3t-key")));
    let r = svc.auth(&hs);
    assert!(
        header(&r, "Auth-Status").is_some_and(|s| s.starts_with("[UNAVAILABLE]")),
        "{r:?}"
    );
    // nginx sends it with auth_http_header.
    let nginx = Nginx::start(&NginxOptions {
        auth_http: format!("{}/auth", svc.addr),
        secret: Some("s3cr3t-key".into()),
        ..Default::default()
    });
    let answer = imap_login(nginx.imap, "alice@branch.example.test", "secret");
    assert!(answer.starts_with("a1 NO [UNAVAILABLE]"), "{answer}");
    let metrics =
        String::from_utf8_lossy(&http_raw(&svc.addr, b"GET /metrics HTTP/1.0\r\n\r\n")).to_string();
    assert!(
        metrics.contains("mailauth_http_bad_secret_total 4"),
        "{metrics}"
    );
}

/// Request log lines are written after the answer by a writer thread; SIGTERM writes out
/// the queued ones and exits 0.
#[test]
fn sigterm_writes_out_the_log_and_exits_cleanly() {
    let mut svc = MailauthServe::start(&broken_directory_config());
    for _ in 0..20 {
        let r = svc.auth(&alice_request());
        assert_ne!(header(&r, "Auth-Status"), Some("OK"));
    }
    assert_eq!(svc.terminate(), Some(0));
    let log = svc.log();
    assert_eq!(log.matches("result=tempfail").count(), 20, "{log}");
    assert!(log.contains("stopping on SIGTERM"), "{log}");
    assert!(!log.contains("secret"), "password in the log");
}

/// nginx-snippets/mail-proxy.conf as printed (ports, certificate paths and the module path
/// substituted) is a valid nginx configuration.
#[test]
fn nginx_snippet_passes_nginx_t() {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509NameBuilder, X509};
    let dir = tempfile::Builder::new()
        .prefix("mailauth-nginx-t.")
        .tempdir()
        .expect("tempdir");
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", "proxy.test").expect("cn");
    let name = name.build();
    let mut b = X509::builder().expect("x509");
    b.set_version(2).expect("version");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(2).expect("t"))
        .expect("na");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    let crt = dir.path().join("proxy.crt");
    let pem = dir.path().join("proxy.key");
    std::fs::write(&crt, b.build().to_pem().expect("pem")).expect("write crt");
    std::fs::write(&pem, key.private_key_to_pem_pkcs8().expect("pem")).expect("write key");
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/nginx-snippets/mail-proxy.conf"
    ))
    .expect("snippet");
    let mut text = format!(
        "load_module {};\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n",
        support::nginx::MAIL_MODULE,
        d = dir.path().display()
    );
    let mut body = snippet
        .replace("/etc/ssl/proxy.crt", &crt.display().to_string())
        .replace("/etc/ssl/proxy.key", &pem.display().to_string());
    for port in ["587", "25", "110", "995", "143", "993"] {
        let free = support::nginx::free_port("127.0.0.1");
        body = body.replace(
            &format!("listen {port};"),
            &format!("listen 127.0.0.1:{free};"),
        );
        body = body.replace(
            &format!("listen {port} ssl;"),
            &format!("listen 127.0.0.1:{free} ssl;"),
        );
    }
    assert!(!body.contains("listen 25;") && !body.contains("listen 993 ssl;"));
    text.push_str(&body);
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, text).expect("write conf");
    let out = std::process::Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(format!("{}/", dir.path().display()))
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx -t");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
