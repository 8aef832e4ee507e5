//! `mailctl schema init|check` end to end (the real binary) on SQLite and PostgreSQL.
mod support;

use std::process::Command;
use support::fixtures;

fn mailctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .args(args)
        .env_remove("MAILCLUSTER_CONFIG")
        .output()
        .expect("run mailctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = mailctl(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("schema"));
    let (code, out, _) = mailctl(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
    let (code, out, _) = mailctl(&["schema", "check", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--role"));
}

#[test]
fn schema_init_and_check_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", tmp.path().join("m.sqlite").display());
    // check before init: the file does not exist (config error), and is not created.
    let (code, _, err) = mailctl(&["schema", "check", "--db", &url]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("mailctl schema init"), "{err}");
    let (code, out, err) = mailctl(&["schema", "init", "--db", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = mailctl(&["schema", "check", "--db", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schema ok"), "{out}");
    // smtp role: no password column; checking it as storage names the column.
    let url = format!("sqlite:{}", tmp.path().join("s.sqlite").display());
    let (code, _, err) = mailctl(&["schema", "init", "--role", "smtp", "--db", &url]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = mailctl(&["schema", "check", "--role", "smtp", "--db", &url]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = mailctl(&["schema", "check", "--db", &url]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("missing column: mail.password"), "{out}");
    // bad usage
    let (code, _, _) = mailctl(&["schema", "check", "--role", "bogus", "--db", &url]);
    assert_eq!(code, 64, "usage error");
}

#[test]
fn schema_check_on_postgres_seed() {
    let db = fixtures::pg_seed("mailctl_seed");
    let (code, out, err) = mailctl(&["schema", "check", "--db", &db.url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("varchar(128)"), "{out}");
    let smtp = fixtures::pg_seed_smtp("mailctl_smtp");
    let (code, out, _) = mailctl(&["schema", "check", "--db", &smtp.tcp_url]);
    assert_eq!(code, 78);
    assert!(out.contains("mail.password"));
    assert!(!out.contains(support::pg::PASSWORD));
    let (code, _, _) = mailctl(&["schema", "check", "--role", "smtp", "--db", &smtp.tcp_url]);
    assert_eq!(code, 0);
    let empty = support::pg::shared().create_db("mailctl_empty");
    let (code, out, _) = mailctl(&["schema", "check", "--db", &empty.url]);
    assert_eq!(code, 78);
    assert!(out.contains("missing table: maps"), "{out}");
    let (code, _, err) = mailctl(&["schema", "init", "--db", &empty.url]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = mailctl(&["schema", "check", "--db", &empty.url]);
    assert_eq!(code, 0);
}

#[test]
fn unreachable_database_is_temporary() {
    // Nothing listens on port 1 of 127.0.0.1: connection refused → 75.
    let (code, _, err) = mailctl(&[
        "schema",
        "check",
        "--db",
        "postgresql://mail:s3cr3t@127.0.0.1:1/mail",
    ]);
    assert_eq!(code, 75, "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}
