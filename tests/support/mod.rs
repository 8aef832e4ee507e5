//! Test support: throwaway PostgreSQL, Exim, Dovecot, nginx and sshd instances on
//! 127.0.0.1 high ports under a temp dir, started once per test binary and stopped on drop.
#![allow(dead_code)]

pub mod dovecot;
pub mod exim;
pub mod fixtures;
pub mod nginx;
pub mod pg;
pub mod pg_2pc;
pub mod sshd;
