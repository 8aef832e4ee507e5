//! Database outage, in real Exim 4.96 with the snippets AS PRINTED: a temporary lookup
//! failure DEFERS (-bt exit 1 "cannot be resolved at this time", 451 at RCPT), never bounces
//! — for both variants — and `mailmap serve` with a warm cache keeps routing known
//! recipients (but never trusts a cached "not found" during the outage). The storage-node
//! snippets defer too (their local-domain, backup-domain and recipient lookups).
//! Uses a private PostgreSQL cluster (it is stopped here).
mod support;

use support::exim::{self, bt_hosts, Exim, Serve, S1_IP, S2_IP};
use support::fixtures::{self, S1};
use support::pg::Pg;

fn assert_deferred(v: &str, x: &Exim, addr: &str) {
    let r = x.bt(addr);
    assert_eq!(r.code, 1, "{v} {addr}: {}", r.all());
    assert!(
        r.all().contains("cannot be resolved at this time"),
        "{v} {addr}: {}",
        r.all()
    );
    assert!(!r.all().contains("Unrouteable"), "{v} {addr}: {}", r.all());
}

#[test]
fn database_down_defers_and_warm_cache_keeps_routing() {
    let pg = Pg::start_private();
    let db = fixtures::load_pg_smtp(&pg, "outage");
    let dir = exim::open_tempdir();
    let conf = exim::mailmap_config(
        dir.path(),
        "smtp.toml",
        "smtp-01.domain.ru",
        &db.url,
        "health_interval = 1",
    );
    let s1conf = exim::mailmap_config(dir.path(), "s1.toml", S1, &db.url, "");
    let socket = dir.path().join("mailmap.sock");
    let serve = Serve::start(&conf, &socket);
    let bin = exim::mailmap_bin().display().to_string();
    let conf_s = conf.display().to_string();
    let s1conf_s = s1conf.display().to_string();
    let run = Exim::new(
        "smtp-node-run.conf",
        &[("MC_MAILMAP", &bin), ("MC_CONFIG", &conf_s)],
    );
    let rs = Exim::new(
        "smtp-node-readsocket.conf",
        &[("MC_SOCKET", &socket.display().to_string())],
    );
    let storage = Exim::new(
        "storage-node-run.conf",
        &[
            ("MC_MAILMAP", &bin),
            ("MC_CONFIG", &s1conf_s),
            ("MC_NODE", S1),
            ("MC_SMARTHOST", "192.0.2.99"),
        ],
    );
    // The storage's own daemon, its cache cold: during the outage it has nothing to answer
    // from, so the storage's ${readsocket} lookups must defer (not refuse, not relay).
    let s1socket = dir.path().join("s1.sock");
    let s1serve = Serve::start(&s1conf, &s1socket);
    let s1socket_s = s1socket.display().to_string();
    let storage_rs = Exim::new(
        "storage-node-readsocket.conf",
        &[
            ("MC_SOCKET", &s1socket_s),
            ("MC_SMARTHOST", "192.0.2.99"),
            ("MC_RELAY_FROM", "127.0.0.1"),
        ],
    );

    // Warm the daemon's cache: a known recipient (positive) and an unknown one (negative).
    let r = rs.bt("ivanov@msk.domain.ru");
    assert_eq!(bt_hosts(&r), vec![S1_IP, S2_IP], "{}", r.all());
    let r = rs.bt("nobody@msk.domain.ru");
    assert_eq!(r.code, 2, "{}", r.all());

    pg.stop();
    // The daemon notices within [map] health_interval (1 s here) even with no cache miss.
    assert!(
        Pg::wait_until(std::time::Duration::from_secs(10), || serve
            .ask("stats")
            .is_some_and(|s| s.ends_with("db=down"))),
        "serve did not notice the outage"
    );

    // ${run}: every lookup defers.
    assert_deferred("run", &run, "ivanov@msk.domain.ru");
    assert_deferred("run", &run, "nobody@msk.domain.ru");
    assert_deferred("storage-run", &storage, "ivanov@msk.domain.ru");
    // S1 is the primary of msk and the backup of spb: both defer.
    assert_deferred("storage-readsocket", &storage_rs, "ivanov@msk.domain.ru");
    assert_deferred("storage-readsocket", &storage_rs, "sidorov@spb.domain.ru");
    let (codes, r) = run.rcpt_codes(
        "192.0.2.1",
        &["ivanov@msk.domain.ru", "nobody@msk.domain.ru"],
    );
    assert_eq!(codes, vec![451, 451], "{}", r.all());

    // ${readsocket}: the warm positive answer still routes; a cached negative one and an
    // unknown one defer.
    let r = rs.bt("ivanov@msk.domain.ru");
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(bt_hosts(&r), vec![S1_IP, S2_IP], "{}", r.all());
    assert_deferred("readsocket", &rs, "nobody@msk.domain.ru");
    assert_deferred("readsocket", &rs, "sidorov@spb.domain.ru");
    let (codes, r) = rs.rcpt_codes(
        "192.0.2.1",
        &[
            "ivanov@msk.domain.ru",
            "nobody@msk.domain.ru",
            "sidorov@spb.domain.ru",
        ],
    );
    assert_eq!(codes, vec![250, 451, 451], "{}", r.all());
    assert_eq!(
        serve
            .ask("stats")
            .as_deref()
            .map(|s| s.ends_with("db=down")),
        Some(true)
    );

    // The daemon itself gone: the readsocket variant defers too.
    let gone = Exim::new(
        "smtp-node-readsocket.conf",
        &[(
            "MC_SOCKET",
            &dir.path().join("nothing.sock").display().to_string(),
        )],
    );
    assert_deferred("no daemon", &gone, "ivanov@msk.domain.ru");
    let (codes, r) = gone.rcpt_codes("192.0.2.1", &["ivanov@msk.domain.ru"]);
    assert_eq!(codes, vec![451], "{}", r.all());

    // Back up: both variants answer from the database again.
    pg.start();
    for (v, x) in [("run", &run), ("readsocket", &rs)] {
        let ok = support::pg::Pg::wait_until(std::time::Duration::from_secs(10), || {
            x.bt("sidorov@spb.domain.ru").code == 0
        });
        assert!(ok, "{v}: no recovery");
        let r = x.bt("sidorov@spb.domain.ru");
        assert_eq!(bt_hosts(&r), vec![S2_IP, S1_IP], "{v}: {}", r.all());
        let r = x.bt("nobody@msk.domain.ru");
        assert_eq!(r.code, 2, "{v}: {}", r.all());
    }
    // The storage's daemon answers again too: its own recipient goes to Dovecot's LMTP.
    let ok = support::pg::Pg::wait_until(std::time::Duration::from_secs(10), || {
        storage_rs.bt("ivanov@msk.domain.ru").code == 0
    });
    assert!(ok, "storage-readsocket: no recovery");
    drop(s1serve);
    drop(serve);
    assert!(!socket.exists(), "serve removes its socket on SIGTERM");
}
