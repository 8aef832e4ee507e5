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
    install(program, target, verbose, false);
}

/// [`init`] for a daemon answering requests: records are handed to a writer thread through
/// a bounded queue, so that a slow log (a busy syslog socket, a stalled disk) never holds up
/// a request. If the queue is full the record is dropped and counted (see
/// [`dropped_records`]); the writer reports the count once it catches up. Call
/// `log::logger().flush()` before exiting ([`crate::cli::exit`] does).
pub fn init_daemon(program: &'static str, target: LogTarget, verbose: bool) {
    install(program, target, verbose, true);
}

/// Records dropped because the writer thread of [`init_daemon`] fell behind.
pub fn dropped_records() -> u64 {
    background::DROPPED.load(Ordering::Relaxed)
}

fn install(program: &'static str, target: LogTarget, verbose: bool, in_background: bool) {
    let set = |logger: Box<dyn log::Log>| -> bool {
        let logger = if in_background {
            background::Background::start(logger)
        } else {
            logger
        };
        log::set_boxed_logger(logger).is_ok()
    };
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
                    if set(Box::new(syslog::BasicLogger::new(logger))) {
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
            let logger = builder.build();
            let max = logger.filter();
            if set(Box::new(logger)) {
                log::set_max_level(max);
                ACTIVE.store(STDERR, Ordering::Relaxed);
            }
        }
    }
}

mod background {
    //! The writer thread of [`super::init_daemon`].

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Records waiting for the writer at most (~150 bytes each: a few megabytes).
    const QUEUE: usize = 16384;
    /// The writer looks for records this often. It never sleeps *in* the queue: a receiver
    /// blocked there would make every record's sender take the queue's wake-up lock and
    /// wake it, and a sender preempted while holding that lock stalls all the others.
    const POLL: Duration = Duration::from_millis(20);
    /// After a second without records, it looks less often (an idle daemon stays quiet).
    const IDLE_POLL: Duration = Duration::from_millis(250);
    /// How long `flush` waits for the writer (a stuck log must not stop an exit).
    const FLUSH_WAIT: Duration = Duration::from_secs(2);

    pub(super) static DROPPED: AtomicU64 = AtomicU64::new(0);

    enum Job {
        Record {
            level: log::Level,
            target: String,
            text: String,
            /// Records dropped before this one was queued (reported before it).
            dropped_before: u64,
        },
        Flush(SyncSender<()>),
    }

    pub(super) struct Background {
        /// None when the writer thread could not be started: records are written in place.
        queue: Option<SyncSender<Job>>,
        /// The logger that writes (its `enabled` filters are asked from any thread).
        inner: Arc<dyn log::Log>,
    }

    impl Background {
        pub(super) fn start(inner: Box<dyn log::Log>) -> Box<dyn log::Log> {
            let inner: Arc<dyn log::Log> = Arc::from(inner);
            let (queue, jobs) = sync_channel(QUEUE);
            let writer = Arc::clone(&inner);
            let started = std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_all(&*writer, jobs))
                .is_ok();
            Box::new(Background {
                queue: started.then_some(queue),
                inner,
            })
        }
    }

    fn write(inner: &dyn log::Log, level: log::Level, target: &str, text: std::fmt::Arguments) {
        inner.log(
            &log::Record::builder()
                .level(level)
                .target(target)
                .args(text)
                .build(),
        );
    }

    /// Every [`POLL`] ([`IDLE_POLL`] when idle), write what is queued; end when every
    /// sender is gone.
    fn write_all(inner: &dyn log::Log, jobs: Receiver<Job>) {
        let mut reported = 0;
        let mut idle_since = Instant::now();
        loop {
            let job = match jobs.try_recv() {
                Ok(job) => job,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    let idle = idle_since.elapsed() > Duration::from_secs(1);
                    std::thread::sleep(if idle { IDLE_POLL } else { POLL });
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            };
            idle_since = Instant::now();
            match job {
                Job::Record {
                    level,
                    target,
                    text,
                    dropped_before,
                } => {
                    if dropped_before > reported {
                        let lost = dropped_before - reported;
                        let text = format_args!("{lost} log records dropped: the log was too slow");
                        write(inner, log::Level::Warn, &target, text);
                        reported = dropped_before;
                    }
                    write(inner, level, &target, format_args!("{text}"));
                }
                Job::Flush(done) => {
                    inner.flush();
                    let _ = done.send(());
                }
            }
        }
    }

    /// `try_send` retried until `wait` passes (`SyncSender` has no timed send).
    fn send_within(queue: &SyncSender<Job>, mut job: Job, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match queue.try_send(job) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(j)) if Instant::now() < deadline => {
                    job = j;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
    }

    impl log::Log for Background {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            self.inner.enabled(metadata)
        }

        fn log(&self, record: &log::Record<'_>) {
            if !self.inner.enabled(record.metadata()) {
                return;
            }
            let Some(queue) = &self.queue else {
                return self.inner.log(record);
            };
            let job = Job::Record {
                level: record.level(),
                target: record.target().to_string(),
                text: record.args().to_string(),
                dropped_before: DROPPED.load(Ordering::Relaxed),
            };
            match queue.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => self.inner.log(record),
            }
        }

        /// Wait (a bounded time) until the records logged so far are written.
        fn flush(&self) {
            let Some(queue) = &self.queue else {
                return self.inner.flush();
            };
            let (done, written) = sync_channel(1);
            if send_within(queue, Job::Flush(done), FLUSH_WAIT) {
                let _ = written.recv_timeout(FLUSH_WAIT);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::sync::{Condvar, Mutex};

        /// A logger that writes nothing until the test opens its gate.
        #[derive(Default)]
        struct Gated {
            open: Mutex<bool>,
            opened: Condvar,
            lines: Mutex<Vec<String>>,
        }

        impl Gated {
            fn open(&self) {
                *self.open.lock().unwrap() = true;
                self.opened.notify_all();
            }
        }

        struct Shared(Arc<Gated>);

        impl log::Log for Shared {
            fn enabled(&self, m: &log::Metadata<'_>) -> bool {
                m.level() <= log::Level::Info
            }
            fn log(&self, r: &log::Record<'_>) {
                let mut open = self.0.open.lock().unwrap();
                while !*open {
                    open = self.0.opened.wait(open).unwrap();
                }
                self.0.lines.lock().unwrap().push(r.args().to_string());
            }
            fn flush(&self) {}
        }

        fn record(logger: &dyn log::Log, level: log::Level, text: &str) {
            logger.log(
                &log::Record::builder()
                    .level(level)
                    .args(format_args!("{text}"))
                    .build(),
            );
        }

        #[test]
        fn a_stuck_writer_holds_nobody_up_and_drops_are_reported() {
            let gated = Arc::new(Gated::default());
            let logger = Background::start(Box::new(Shared(Arc::clone(&gated))));
            let dropped_before = DROPPED.load(Ordering::Relaxed);
            // The writer is stuck on the first record: the queue fills, the rest is
            // dropped and counted, and no caller waits.
            for i in 0..QUEUE + 100 {
                record(&*logger, log::Level::Info, &format!("line {i}"));
            }
            record(&*logger, log::Level::Debug, "filtered out");
            let dropped = DROPPED.load(Ordering::Relaxed) - dropped_before;
            assert!(dropped >= 90, "{dropped}");
            gated.open();
            logger.flush();
            record(&*logger, log::Level::Info, "after");
            logger.flush();
            let lines = gated.lines.lock().unwrap();
            // What was queued, in order, then the count of the dropped ones, then "after".
            let kept = lines.len() - 2;
            assert_eq!(
                kept as u64 + dropped,
                QUEUE as u64 + 100,
                "every record kept or counted"
            );
            let in_order = lines[..kept]
                .iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i}"));
            assert!(in_order);
            let report = format!("{dropped} log records dropped: the log was too slow");
            assert_eq!(lines[kept], report);
            assert_eq!(lines[kept + 1], "after");
        }
    }
}
