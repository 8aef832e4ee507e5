//! Configuration against real SQLite directories (and PostgreSQL URLs that are down or hung):
//! the node-name check and reading the first reachable of several directories.
mod support;

use mailcluster::config::{Config, DirectoryConfig, Role};
use mailcluster::directory::{open_writer, schema, DomainSource};
use mailcluster::names::{Domain, Strictness};
use mailcluster::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

const S1: &str = "storage-01.domain.ru";
const S2: &str = "storage-02.domain.ru";

fn d(s: &str) -> Domain {
    Domain::parse(s, Strictness::Admin).unwrap()
}

/// A SQLite directory with the given domains (domain, primary, backup).
fn sqlite_dir(dir: &Path, name: &str, domains: &[(&str, &str, &str)]) -> String {
    let url = format!("sqlite:{}", dir.join(format!("{name}.sqlite")).display());
    schema::init(&url, Role::Storage).unwrap();
    let mut w = open_writer(&url, Duration::from_secs(5)).unwrap();
    for (dom, p, b) in domains {
        w.add_domain(&d(dom), DomainSource::Ldomain, p, Some(b), true)
            .unwrap();
    }
    url
}

fn config_with(node: Option<&str>, dirs: &[(&str, &str)]) -> Config {
    Config {
        node: node.map(str::to_string),
        db_timeout: 1.0,
        directories: dirs
            .iter()
            .map(|(name, url)| DirectoryConfig {
                name: name.to_string(),
                url: url.to_string(),
                role: Role::Storage,
            })
            .collect(),
        ..Config::default()
    }
}

#[test]
fn node_name_must_appear_in_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let url = sqlite_dir(
        tmp.path(),
        "s1",
        &[("msk.domain.ru", S1, S2), ("spb.domain.ru", S2, S1)],
    );
    let mut dir = mailcluster::directory::open(&url, Duration::from_secs(5)).unwrap();

    config_with(Some(S1), &[]).check_node(dir.as_mut()).unwrap();
    config_with(Some("STORAGE-02.domain.ru."), &[])
        .check_node(dir.as_mut())
        .unwrap();

    let e = config_with(Some("storage-01"), &[])
        .check_node(dir.as_mut())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert_eq!(e.exit_code(), 78);
    let m = e.to_string();
    assert!(m.contains("node \"storage-01\""), "{m}");
    assert!(
        m.contains("known: storage-01.domain.ru, storage-02.domain.ru"),
        "{m}"
    );
    assert!(m.contains("set node = \"storage-01.domain.ru\""), "{m}");

    // Without node, the host name is used, and this machine is not in maps.
    let e = config_with(None, &[]).check_node(dir.as_mut()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("the host name"), "{e}");

    // An empty routing table has nothing to compare with.
    let empty = sqlite_dir(tmp.path(), "empty", &[]);
    let mut dir = mailcluster::directory::open(&empty, Duration::from_secs(5)).unwrap();
    config_with(Some("anything.example"), &[])
        .check_node(dir.as_mut())
        .unwrap();
}

/// A TCP port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn the_first_reachable_directory_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let a = sqlite_dir(tmp.path(), "a", &[("msk.domain.ru", S1, S2)]);
    let b = sqlite_dir(
        tmp.path(),
        "b",
        &[("msk.domain.ru", S1, S2), ("spb.domain.ru", S2, S1)],
    );
    let down = format!(
        "postgresql://mail:Zz9SecretPw@127.0.0.1:{}/mail",
        closed_port()
    );

    // The first is down: the second answers, and is kept.
    let c = config_with(Some(S1), &[("pg-down", &down), ("b", &b), ("a", &a)]);
    let mut dir = c.open_directory().unwrap();
    assert!(dir.route(&d("spb.domain.ru")).unwrap().is_some());
    assert!(dir.describe().starts_with("b "), "{}", dir.describe());
    assert!(!dir.describe().contains("Zz9SecretPw"));

    // "Not found" is an answer: never asked of the next directory.
    let c = config_with(Some(S1), &[("a", &a), ("b", &b)]);
    let mut dir = c.open_directory().unwrap();
    assert_eq!(dir.route(&d("spb.domain.ru")).unwrap(), None);

    // All down: temporary, naming each one, passwords hidden.
    let c = config_with(
        Some(S1),
        &[
            ("pg-down", &down),
            ("missing", "sqlite:/nonexistent/dir/x.sqlite"),
        ],
    );
    let mut dir = c.open_directory().unwrap();
    let e = dir.route(&d("msk.domain.ru")).unwrap_err();
    let m = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Temporary, "{m}");
    assert_eq!(e.exit_code(), 75);
    assert!(m.contains("pg-down") && m.contains("missing"), "{m}");
    assert!(!m.contains("Zz9SecretPw"), "{m}");
}

#[test]
fn a_hung_directory_is_left_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let b = sqlite_dir(tmp.path(), "b", &[("msk.domain.ru", S1, S2)]);
    // Accepts connections (the kernel completes the handshake) and never answers.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=mail dbname=mail",
        hung.local_addr().unwrap().port()
    );
    let c = config_with(Some(S1), &[("hung", &url), ("b", &b)]);
    let mut dir = c.open_directory().unwrap();
    let t = Instant::now();
    assert!(dir.route(&d("msk.domain.ru")).unwrap().is_some());
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // The working one is kept: the next call does not wait again.
    let t = Instant::now();
    assert!(dir.is_local_domain(&d("msk.domain.ru"), S1).unwrap());
    assert!(t.elapsed() < Duration::from_millis(500));
    drop(hung);
}

#[test]
fn no_directory_configured() {
    let e = Config::default().open_directory().err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("--db"));
}

#[test]
fn the_first_directory_is_read_again_once_it_is_back() {
    // Long enough that making the second database (a loaded machine) stays within it.
    const RETRY: Duration = Duration::from_secs(3);
    let tmp = tempfile::tempdir().unwrap();
    let b = sqlite_dir(tmp.path(), "b", &[("msk.domain.ru", S1, S2)]);
    // The preferred directory does not exist yet (its node is down).
    let a_url = format!("sqlite:{}", tmp.path().join("a.sqlite").display());
    let dirs = config_with(Some(S1), &[("a", &a_url), ("b", &b)]).directories;
    let mut dir = mailcluster::config::FirstReachable::new(dirs, Duration::from_secs(1))
        .retry_preferred_after(RETRY);
    use mailcluster::directory::Directory;
    let moved = std::time::Instant::now();
    assert!(dir.route(&d("msk.domain.ru")).unwrap().is_some());
    assert_eq!(dir.current_name(), Some("b"));

    // It comes back with a domain only it knows: within the retry period, b still answers.
    let a = sqlite_dir(tmp.path(), "a", &[("spb.domain.ru", S2, S1)]);
    assert_eq!(a, a_url);
    assert_eq!(dir.route(&d("spb.domain.ru")).unwrap(), None);
    assert_eq!(dir.current_name(), Some("b"));

    // After the period the reader goes back to it and stays there.
    std::thread::sleep((RETRY + Duration::from_millis(50)).saturating_sub(moved.elapsed()));
    assert!(dir.route(&d("spb.domain.ru")).unwrap().is_some());
    assert_eq!(dir.current_name(), Some("a"));
    assert!(dir.route(&d("spb.domain.ru")).unwrap().is_some());
    assert_eq!(dir.current_name(), Some("a"));
}
