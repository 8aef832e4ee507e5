//! Logging: to syslog (facility mail) when called from Exim or Dovecot, whose captured
//! output must carry only the answer; to stderr when run by hand.

use std::io::IsTerminal;

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

/// Initialise logging once. `verbose` raises the level to debug. `RUST_LOG` overrides the
/// level for stderr. Falls back to stderr if syslog is unavailable; never panics.
pub fn init(program: &'static str, target: LogTarget, verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let use_syslog = match target {
        LogTarget::Stderr => false,
        LogTarget::Syslog => true,
        LogTarget::Auto => !std::io::stderr().is_terminal(),
    };
    if use_syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_MAIL,
            hostname: None,
            process: program.to_string(),
            pid: std::process::id(),
        };
        if let Ok(logger) = syslog::unix(formatter) {
            if log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger))).is_ok() {
                log::set_max_level(level);
            }
            return;
        }
        // No syslog socket: stay silent rather than corrupt a captured answer.
        log::set_max_level(log::LevelFilter::Off);
        return;
    }
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format_timestamp(None);
    let _ = builder.try_init();
}
