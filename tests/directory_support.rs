//! Smoke tests of the test support itself: the throwaway PostgreSQL and the fixtures.
mod support;

use support::{fixtures, pg};

#[test]
fn pg_fixture_loads_and_answers() {
    let db = fixtures::pg_seed("support");
    let pg = pg::shared();
    let out = pg.psql(
        &db.name,
        "SELECT count(*) FROM mail WHERE mailbox <> 'dir';",
    );
    assert_eq!(out.trim(), fixtures::MAIL_ROWS.len().to_string());
    let smtp = fixtures::pg_seed_smtp("support_smtp");
    let out = pg.psql(
        &smtp.name,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'mail' AND column_name = 'password';",
    );
    assert_eq!(out.trim(), "0");
}

#[test]
fn sqlite_fixture_loads() {
    let dir = tempfile::tempdir().unwrap();
    let url = fixtures::sqlite_seed(dir.path());
    assert!(url.starts_with("sqlite:"));
    let smtp = fixtures::sqlite_seed_smtp(dir.path());
    assert!(smtp.ends_with("mail-smtp.sqlite"));
}

#[test]
fn private_cluster_stops_and_hangs() {
    let pg = pg::Pg::start_private();
    let db = pg.create_db("private");
    assert_eq!(pg.psql(&db.name, "SELECT 1;").trim(), "1");
    pg.hang();
    pg.resume();
    assert_eq!(pg.psql(&db.name, "SELECT 2;").trim(), "2");
    pg.stop();
    pg.start();
    assert_eq!(pg.psql(&db.name, "SELECT 3;").trim(), "3");
}
