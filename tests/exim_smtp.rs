//! The SMTP-node snippets (`exim-snippets/smtp-node-{run,readsocket}.conf`) AS PRINTED in
//! real Exim 4.96 (`exim -C … -bt` / `-bh`), over a throwaway PostgreSQL with the
//! seed-shaped fixtures. Route hosts: the fixtures' node names are mapped to TEST-NET IPs by
//! mailmap's `[map.hosts]` (see support::exim), so `byname` resolves without /etc/hosts.
mod support;

use std::path::PathBuf;
use std::sync::OnceLock;
use support::exim::{self, bt_hosts, Exim, Serve, S1_IP, S2_IP};
use support::fixtures;

struct Env {
    _dir: tempfile::TempDir,
    run: Exim,
    rs: Exim,
    _serve: Serve,
    pwn: PathBuf,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let db = fixtures::pg_seed_smtp("exim_smtp");
        let dir = exim::open_tempdir();
        let conf =
            exim::mailmap_config(dir.path(), "mailmap.toml", "smtp-01.domain.ru", &db.url, "");
        let socket = dir.path().join("mailmap.sock");
        let serve = Serve::start(&conf, &socket);
        let bin = exim::mailmap_bin().display().to_string();
        let conf_s = conf.display().to_string();
        let run = Exim::new(
            "smtp-node-run.conf",
            &[("MC_MAILMAP", &bin), ("MC_CONFIG", &conf_s)],
        );
        let rs = Exim::new(
            "smtp-node-readsocket.conf",
            &[("MC_SOCKET", &socket.display().to_string())],
        );
        let pwn = dir.path().join("pwn");
        Env {
            _dir: dir,
            run,
            rs,
            _serve: serve,
            pwn,
        }
    })
}

fn both() -> [(&'static str, &'static Exim); 2] {
    let e = env();
    [("run", &e.run), ("readsocket", &e.rs)]
}

#[test]
fn snippets_parse() {
    for (v, x) in both() {
        let r = x.check();
        assert_eq!(r.code, 0, "{v}: {}", r.all());
    }
}

#[test]
fn routes_to_primary_then_backup() {
    let cases: &[(&str, &[&str])] = &[
        ("ivanov@msk.domain.ru", &[S1_IP, S2_IP]),
        ("sidorov@spb.domain.ru", &[S2_IP, S1_IP]),
        ("Kuznetsov@NSK.Domain.RU", &[S2_IP, S1_IP]),
        ("popova@ekb.domain.ru", &[S1_IP]), // no backup
        ("ivanov+lists@msk.domain.ru", &[S1_IP, S2_IP]), // subaddress -> ivanov
        ("info@both.domain.ru", &[S1_IP, S2_IP]), // ldomain row wins over co_maps
        ("anyone@example.org", &[S2_IP, S1_IP]), // co_domain: any valid local part
    ];
    for (v, x) in both() {
        for (addr, hosts) in cases {
            let r = x.bt(addr);
            assert_eq!(r.code, 0, "{v} {addr}: {}", r.all());
            assert!(
                r.stdout.contains("router = storages"),
                "{v} {addr}: {}",
                r.all()
            );
            assert_eq!(bt_hosts(&r), hosts.to_vec(), "{v} {addr}: {}", r.all());
        }
    }
}

#[test]
fn unknown_and_disabled_recipients_fail() {
    for (v, x) in both() {
        for addr in [
            "nobody@msk.domain.ru",       // unknown mailbox
            "petrov@msk.domain.ru",       // disabled mailbox
            "olduser@old.domain.ru",      // disabled ldomain
            "admin@shop.closed.ru",       // disabled mdomain
            "anyone@gone.example.net",    // disabled co_domain
            "dir@msk.domain.ru",          // legacy pseudo-mailbox
            "ivanov@unknown.example.com", // unknown domain
        ] {
            let r = x.bt(addr);
            assert_eq!(r.code, 2, "{v} {addr}: {}", r.all());
            assert!(
                r.all().contains("Unrouteable address"),
                "{v} {addr}: {}",
                r.all()
            );
        }
    }
}

#[test]
fn rcpt_time_answers() {
    for (v, x) in both() {
        let (codes, r) = x.rcpt_codes(
            "192.0.2.1",
            &[
                "ivanov@msk.domain.ru",
                "nobody@msk.domain.ru",
                "petrov@msk.domain.ru",
                "olduser@old.domain.ru",
                "anyone@example.org",
            ],
        );
        assert_eq!(codes, vec![250, 550, 550, 550, 250], "{v}: {}", r.all());
    }
}

#[test]
fn hostile_recipients_run_nothing_and_route_nowhere() {
    let e = env();
    let pwn = e.pwn.display().to_string();
    let hostile = [
        "\"a b\"@msk.domain.ru".to_string(),
        format!("x@${{run{{/bin/touch {pwn}}}}}"),
        "x@${run{/bin/touch /tmp/pwn}}".to_string(),
        format!("${{run{{/bin/touch {pwn}}}}}@msk.domain.ru"),
        "\"ivanov@msk.domain.ru\"@msk.domain.ru".to_string(),
        "'ivanov'@msk.domain.ru".to_string(),
        "ivanov'--@msk.domain.ru".to_string(),
        "\"ivanov\\\"x\"@msk.domain.ru".to_string(),
        "-ivanov@msk.domain.ru".to_string(),
        // longer than a local part / label may be, yet short enough for Exim's parser
        format!("{}@msk.domain.ru", "a".repeat(200)),
        format!("ivanov@{}.domain.ru", "b".repeat(70)),
        "ivanov@msk.domain.ru\nroute x".to_string(),
    ];
    for (v, x) in both() {
        for addr in &hostile {
            let r = x.bt(addr);
            assert_ne!(r.code, 0, "{v} {addr}: routed: {}", r.all());
            assert!(bt_hosts(&r).is_empty(), "{v} {addr}: {}", r.all());
            assert!(!e.pwn.exists(), "{v} {addr}: a command ran");
        }
        let refs: Vec<&str> = hostile.iter().map(|s| s.as_str()).collect();
        let (codes, r) = x.rcpt_codes("192.0.2.1", &refs);
        assert_eq!(codes.len(), refs.len(), "{v}: {}", r.all());
        for (addr, code) in refs.iter().zip(&codes) {
            assert!((500..600).contains(code), "{v} {addr}: {code}\n{}", r.all());
        }
        assert!(!e.pwn.exists(), "{v}: a command ran");
    }
}
