//! Logging: to syslog (facility mail) when called from Exim or Dovecot, whose captured
//! output must carry only the answer (Exim's `${run}` captures stdout *and* stderr); to
//! stderr when run by hand.
//!
//! `MAILCLUSTER_LOG=stderr|syslog|off` overrides the choice (Exim and Dovecot clear the
//! environment of the programs they run, so this only affects hand-run and test runs).
//! `RUST_LOG` refines the level when logging to stderr.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};

/// Environment variable that overrides the log target.
pub const LOG_ENV: &str = "MAILCLUSTER_LOG";

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// stderr (interactive use, tests).
    Stderr,
    /// syslog, facility mail, with the program name as ident.
    Syslog,
    /// stderr when stderr is a terminal, else syslog.
    Auto,
}

const NONE: u8 = 0;
const STDERR: u8 = 1;
const SYSLOG: u8 = 2;
const OFF: u8 = 3;

static ACTIVE: AtomicU8 = AtomicU8::new(NONE);

/// True when [`init`] sent log records to syslog (so a fatal error should be logged there
/// too, not only printed).
pub fn is_syslog() -> bool {
    ACTIVE.load(Ordering::Relaxed) == SYSLOG
}

/// True when [`init`] sent log records to stderr.
pub fn is_stderr() -> bool {
    ACTIVE.load(Ordering::Relaxed) == STDERR
}

/// Resolve `target` (and `$MAILCLUSTER_LOG`) to stderr (`Some(false)`), syslog
/// (`Some(true)`) or off (`None`).
fn resolve(target: LogTarget) -> Option<bool> {
    match std::env::var(LOG_ENV).ok().as_deref().map(str::trim) {
        Some("stderr") => return Some(false),
        Some("syslog") => return Some(true),
        Some("off") | Some("none") => return None,
        _ => {}
    }
    Some(match target {
        LogTarget::Stderr => false,
        LogTarget::Syslog => true,
        LogTarget::Auto => !std::io::stderr().is_terminal(),
    })
}

/// Initialise logging once. `verbose` raises the level to debug. `RUST_LOG` overrides the
/// level for stderr. If syslog is unavailable, logging is off (a captured answer must not
/// be corrupted); never panics. A second call does nothing.
pub fn init(program: &'static str, target: LogTarget, verbose: bool) {
    if ACTIVE.load(Ordering::Relaxed) != NONE {
        return;
    }
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    match resolve(target) {
        None => {
            ACTIVE.store(OFF, Ordering::Relaxed);
            log::set_max_level(log::LevelFilter::Off);
        }
        Some(true) => {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_MAIL,
                hostname: None,
                process: program.to_string(),
                pid: std::process::id(),
            };
            match syslog::unix(formatter) {
                Ok(logger) => {
                    if log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger))).is_ok() {
                        log::set_max_level(level);
                        ACTIVE.store(SYSLOG, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    // No syslog socket: stay silent rather than corrupt a captured answer.
                    ACTIVE.store(OFF, Ordering::Relaxed);
                    log::set_max_level(log::LevelFilter::Off);
                }
            }
        }
        Some(false) => {
            let mut builder = env_logger::Builder::new();
            builder.filter_level(level);
            if let Ok(spec) = std::env::var("RUST_LOG") {
                builder.parse_filters(&spec);
            }
            builder.format_timestamp(None);
            builder.format_target(false);
            if builder.try_init().is_ok() {
                ACTIVE.store(STDERR, Ordering::Relaxed);
            }
        }
    }
}
