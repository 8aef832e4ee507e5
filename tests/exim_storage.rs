//! The storage-node snippets (`exim-snippets/storage-node-{run,readsocket}.conf`) AS PRINTED
//! in real Exim 4.96, for both storages of the seed-shaped fixtures: own domains go to
//! Dovecot (LMTP), the domains a node is the BACKUP of are accepted and queued for the
//! primary (manualroute to it, never local, never MX), unknown recipients are refused.
//! `MC_SMARTHOST` (an optional macro of the snippet) keeps other domains off DNS.
mod support;

use std::sync::OnceLock;
use support::exim::{self, bt_hosts, bt_router, bt_transport, Exim, Serve, S1_IP, S2_IP};
use support::fixtures::{self, S1, S2};

const SMARTHOST: &str = "192.0.2.99";

struct Node {
    run: Exim,
    rs: Exim,
    _serve: Serve,
}

struct Env {
    _dir: tempfile::TempDir,
    s1: Node,
    s2: Node,
}

fn node(dir: &std::path::Path, name: &str, db_url: &str) -> Node {
    let conf = exim::mailmap_config(dir, &format!("{name}.toml"), name, db_url, "");
    let socket = dir.join(format!("{name}.sock"));
    let serve = Serve::start(&conf, &socket);
    let bin = exim::mailmap_bin().display().to_string();
    let conf_s = conf.display().to_string();
    let common = [
        ("MC_LMTP_SOCKET", "/nonexistent/lmtp"),
        ("MC_AUTH_SOCKET", "/nonexistent/auth-client"),
        ("MC_SMARTHOST", SMARTHOST),
        ("MC_RELAY_FROM", "127.0.0.1"), // no DNS for the SMTP nodes' names in tests
    ];
    let mut run_macros = vec![
        ("MC_MAILMAP", bin.as_str()),
        ("MC_CONFIG", conf_s.as_str()),
        ("MC_NODE", name),
    ];
    run_macros.extend(common);
    let sock_s = socket.display().to_string();
    let mut rs_macros = vec![("MC_SOCKET", sock_s.as_str())];
    rs_macros.extend(common);
    Node {
        run: Exim::new("storage-node-run.conf", &run_macros),
        rs: Exim::new("storage-node-readsocket.conf", &rs_macros),
        _serve: serve,
    }
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let db = fixtures::pg_seed("exim_storage");
        let dir = exim::open_tempdir();
        let s1 = node(dir.path(), S1, &db.url);
        let s2 = node(dir.path(), S2, &db.url);
        Env { _dir: dir, s1, s2 }
    })
}

fn variants(n: &'static Node) -> [(&'static str, &'static Exim); 2] {
    [("run", &n.run), ("readsocket", &n.rs)]
}

fn assert_local(v: &str, x: &Exim, addr: &str) {
    let r = x.bt(addr);
    assert_eq!(r.code, 0, "{v} {addr}: {}", r.all());
    assert_eq!(
        bt_router(&r).as_deref(),
        Some("mailmap_local"),
        "{v} {addr}: {}",
        r.all()
    );
    assert_eq!(
        bt_transport(&r).as_deref(),
        Some("dovecot_lmtp"),
        "{v} {addr}: {}",
        r.all()
    );
}

fn assert_queued_for(v: &str, x: &Exim, addr: &str, primary: &str) {
    let r = x.bt(addr);

    assert_eq!(r.code, 0, "{v} {addr}: {}", r.all());
    assert_eq!(
        bt_router(&r).as_deref(),
        Some("mailmap_backup"),
        "{v} {addr}: {}",
        r.all()
    );
    assert_eq!(
        bt_hosts(&r),
        vec![primary.to_string()],
        "{v} {addr}: {}",
        r.all()
    );
}

fn assert_not_ours(v: &str, x: &Exim, addr: &str) {
    let r = x.bt(addr);
    assert_eq!(
        bt_router(&r).as_deref(),
        Some("outbound"),
        "{v} {addr}: {}",
        r.all()
    );
    assert_eq!(
        bt_hosts(&r),
        vec![SMARTHOST.to_string()],
        "{v} {addr}: {}",
        r.all()
    );
}

fn assert_refused(v: &str, x: &Exim, addr: &str) {
    let r = x.bt(addr);
    assert_eq!(r.code, 2, "{v} {addr}: {}", r.all());
    assert!(r.all().contains("Unknown user"), "{v} {addr}: {}", r.all());
}

#[test]
fn snippets_parse() {
    let e = env();
    for (v, x) in variants(&e.s1) {
        let r = x.check();
        assert_eq!(r.code, 0, "{v}: {}", r.all());
    }
}

#[test]
fn storage1_delivers_its_own_domains() {
    let e = env();
    for (v, x) in variants(&e.s1) {
        for addr in [
            "ivanov@msk.domain.ru",
            "Ivanov+Tag@MSK.domain.ru",
            "smirnova@kzn.domain.ru",
            "popova@ekb.domain.ru",
            "info@both.domain.ru",
        ] {
            assert_local(v, x, addr);
        }
        for addr in [
            "nobody@msk.domain.ru",
            "petrov@msk.domain.ru",
            "dir@msk.domain.ru",
        ] {
            assert_refused(v, x, addr);
        }
        // disabled domains and the other node's domains without us as backup: not ours
        assert_not_ours(v, x, "olduser@old.domain.ru");
        assert_not_ours(v, x, "admin@shop.closed.ru");
        assert_not_ours(v, x, "someone@example.com");
    }
}

#[test]
fn storage1_queues_for_the_primary_of_its_backup_domains() {
    let e = env();
    for (v, x) in variants(&e.s1) {
        assert_queued_for(v, x, "sidorov@spb.domain.ru", S2_IP);
        assert_queued_for(v, x, "kuznetsov@nsk.domain.ru", S2_IP);
        assert_queued_for(v, x, "anyone@example.org", S2_IP); // co_domain, primary S2
        assert_refused(v, x, "nobody@spb.domain.ru");
    }
}

#[test]
fn storage2_sees_the_other_side() {
    let e = env();
    for (v, x) in variants(&e.s2) {
        assert_local(v, x, "sidorov@spb.domain.ru");
        assert_local(v, x, "kuznetsov@nsk.domain.ru");
        assert_local(v, x, "anyone@example.org"); // co_domain whose primary is this node
                                                  // storage-01's domains: not local; queued for storage-01 where we are the backup
        assert_queued_for(v, x, "ivanov@msk.domain.ru", S1_IP);
        assert_queued_for(v, x, "info@both.domain.ru", S1_IP);
        assert_not_ours(v, x, "popova@ekb.domain.ru"); // S1 without backup
    }
}

#[test]
fn rcpt_time_answers() {
    let e = env();
    for (v, x) in variants(&e.s1) {
        let rcpts = [
            "ivanov@msk.domain.ru",  // own
            "nobody@msk.domain.ru",  // own, unknown
            "sidorov@spb.domain.ru", // backup: accepted, queued for the primary
            "nobody@spb.domain.ru",  // backup, unknown
            "someone@example.com",   // relay
        ];
        let (codes, r) = x.rcpt_codes("192.0.2.1", &rcpts);
        assert_eq!(codes, vec![250, 550, 250, 550, 550], "{v}: {}", r.all());
        // from a relay host (MC_RELAY_FROM includes 127.0.0.1) other domains are relayed
        let (codes, r) = x.rcpt_codes("127.0.0.1", &rcpts);
        assert_eq!(codes, vec![250, 550, 250, 550, 250], "{v}: {}", r.all());
    }
}
