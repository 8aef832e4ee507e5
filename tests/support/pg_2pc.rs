//! A throwaway PostgreSQL cluster that allows two-phase commit (a non-zero
//! `max_prepared_transactions`, which needs a restart), built on [`super::pg::Pg`]:
//! started once per test binary, stopped at exit. Give every test its own databases.
#![allow(dead_code)]

use super::pg::Pg;
use std::sync::OnceLock;

static CLUSTER: OnceLock<Pg> = OnceLock::new();

/// `max_prepared_transactions` of [`cluster`].
pub const MAX_PREPARED: u32 = 20;

/// The 2PC-capable cluster of this test binary.
pub fn cluster() -> &'static Pg {
    CLUSTER.get_or_init(|| {
        let pg = Pg::start_private();
        pg.psql_as(
            "postgres",
            "postgres",
            &format!("ALTER SYSTEM SET max_prepared_transactions = {MAX_PREPARED};"),
        );
        pg.stop();
        pg.start();
        extern "C" fn stop_cluster() {
            if let Some(pg) = CLUSTER.get() {
                pg.stop();
                let _ = std::fs::remove_dir_all(pg.root());
            }
        }
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(stop_cluster);
        }
        pg
    })
}
