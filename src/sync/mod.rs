//! mailsync: the Maildir replicator (design §3.4).
//!
//! - [`scan`]: list a domain tree (no symlinks followed, errors recorded, cached by
//!   directory mtime);
//! - [`plan`]: the Maildir-aware plan (renames, links, puts, safe deletes, conflicts);
//! - [`wire`], [`ops`], [`server`], [`client`]: the framed protocol, `mailsync serve` and
//!   the sender;
//! - [`transport`]: child process or SSH;
//! - [`manifest`]: the per-domain record of what was in sync, kept on both ends;
//! - [`promote`]: raise the next UID after an unplanned failover.

pub mod client;
pub mod dirat;
mod durable;
pub mod entry;
pub mod fsops;
pub mod manifest;
pub mod ops;
pub mod plan;
pub mod promote;
pub mod scan;
pub mod server;
pub mod transport;
pub mod wire;

use crate::error::{Error, Result};
use crate::names::Domain;
pub use client::{DomainReport, SendOptions};
pub use fsops::SyncMode;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// The `[sync]` section of the configuration.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// SSH private key.
    pub identity: Option<PathBuf>,
    /// known_hosts file for the remote host keys.
    pub known_hosts: Option<PathBuf>,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// Command run on the remote (default `mailsync serve`).
    pub remote_command: Option<String>,
    /// Mail root on the remote (default: the local one).
    pub remote_root: Option<PathBuf>,
    pub jobs: Option<usize>,
    /// State directory (default: `<mail root>/.mailsync`).
    pub state_dir: Option<PathBuf>,
    /// Extra exclude patterns.
    pub excludes: Vec<String>,
    /// Replicate Dovecot index/cache files too (default: no; Dovecot rebuilds them).
    pub index_files: bool,
    pub compress: bool,
    /// Bandwidth limit, e.g. "10M" (bytes per second).
    pub bwlimit: Option<String>,
    /// UIDs added by `promote` (default 100000).
    pub promote_margin: Option<u32>,
    /// SSH connect/handshake timeout in seconds (default 30).
    pub timeout: Option<u64>,
    /// How received files are made durable: `file` (fsync each) or `filesystem` (a
    /// filesystem sync per batch; Linux, the default there).
    pub fsync: Option<String>,
}

/// Parse a rate like `500K`, `10M`, `1G` (bytes per second; plain numbers are KiB/s as
/// with rsync).
pub fn parse_rate(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        Some('b' | 'B') => (&s[..s.len() - 1], 1),
        _ => (s, 1 << 10),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| Error::bad_input(format!("bad rate {s:?} (use e.g. 500K, 10M)")))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::bad_input(format!("bad rate {s:?}")));
    }
    Ok((v * mult as f64) as u64)
}

/// Where a domain goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A local directory (the remote root): local transport.
    Path(PathBuf),
    /// A host reached over SSH.
    Host(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Path(p) => write!(f, "{}", p.display()),
            Target::Host(h) => f.write_str(h),
        }
    }
}

/// One domain to replicate.
#[derive(Debug, Clone)]
pub struct Job {
    pub domain: Domain,
    pub target: Target,
}

/// Settings of a run.
pub struct RunOptions {
    pub send: SendOptions,
    pub jobs: usize,
    pub compress: bool,
    pub bwlimit: u64,
    /// Program and arguments of the local transport (`[mailsync, serve, ...]`).
    pub local_command: Vec<String>,
    pub ssh: transport::SshOptions,
    /// The mail root on the remote host (SSH).
    pub remote_root: PathBuf,
    pub progress: bool,
}

/// The whole run.
#[derive(Debug, Default, serde::Serialize)]
pub struct RunReport {
    pub domains: u64,
    pub ok: bool,
    pub files_sent: u64,
    pub bytes_sent: u64,
    pub wire_bytes: u64,
    pub renames: u64,
    pub links: u64,
    pub deletes: u64,
    pub conflicts: u64,
    pub adopted: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_domain: Vec<DomainReport>,
}

impl RunReport {
    pub fn summary(&self) -> String {
        format!(
            "mailsync: {} domain(s), {} failed; sent {} file(s), {} bytes of data, {} bytes on the wire; \
             {} rename(s), {} link(s), {} delete(s), {} conflict(s), {} adopted; {:.2}s",
            self.domains,
            self.per_domain.iter().filter(|d| !d.ok).count(),
            self.files_sent,
            self.bytes_sent,
            self.wire_bytes,
            self.renames,
            self.links,
            self.deletes,
            self.conflicts,
            self.adopted,
            self.seconds
        )
    }
}

fn connect(target: &Target, opts: &RunOptions) -> Result<client::Session> {
    let (conn, mut keep) = match target {
        Target::Path(root) => transport::local(&opts.local_command, root, opts.bwlimit)?,
        Target::Host(host) => transport::ssh(host, &opts.remote_root, &opts.ssh, opts.bwlimit)?,
    };
    match client::Session::start(conn, target.to_string(), opts.compress, None) {
        Ok(mut s) => {
            s.keep = Some(keep);
            Ok(s)
        }
        // The remote end did not speak the protocol: its exit status and stderr say why
        // (e.g. "mailsync: command not found", a configuration error).
        Err(e) => match keep.finish() {
            Err(why) => Err(why.context(format!("{target}"))),
            Ok(()) => Err(e),
        },
    }
}

/// Domains replicated in parallel by default (`--jobs`). One more than the 2 cores of the
/// benchmark host: a worker waits for its remote (the receiver's syncs) while the others
/// work (BENCHMARKS.md, round 13: a day run 5 % faster than with 2).
pub const DEFAULT_JOBS: usize = 3;

/// Replicate the domains, `opts.jobs` at a time, each worker with its own connection.
/// A failing domain does not stop the others.
pub fn run(jobs: Vec<Job>, opts: &RunOptions) -> RunReport {
    let start = Instant::now();
    let total = jobs.len();
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<Job>>());
    let results = Mutex::new(Vec::new());
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} domains {msg}",
        ) {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let workers = opts.jobs.clamp(1, 64).min(total.max(1));
    let pop = || queue.lock().ok().and_then(|mut q| q.pop_front());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut current: Option<(Target, client::Session)> = None;
                // The next domain, its local side being prepared (scan, record) by a helper
                // thread while this one works with the remote on the current domain.
                type Next<'s> = (Job, std::thread::ScopedJoinHandle<'s, client::Prepared>);
                let prefetch = |job: Job, current: &Option<(Target, client::Session)>| -> Next {
                    // The record needs the node pair: known when the session is open to
                    // the job's target.
                    let pair = current
                        .as_ref()
                        .filter(|(t, _)| *t == job.target)
                        .map(|(_, sess)| manifest::pair_key(&opts.send.node, &sess.remote_node));
                    let domain = job.domain.clone();
                    let h = s.spawn(move || client::prepare(&opts.send, &domain, pair.as_deref()));
                    (job, h)
                };
                let mut next: Option<Next> = None;
                loop {
                    let (job, prepared) = match next.take() {
                        Some((job, h)) => (job, Some(h)),
                        None => match pop() {
                            // The first domain: scanned while the connection is made.
                            Some(job) => {
                                let (job, h) = prefetch(job, &current);
                                (job, Some(h))
                            }
                            None => break,
                        },
                    };
                    bar.set_message(job.domain.to_string());
                    if current.as_ref().is_some_and(|(t, _)| *t != job.target) {
                        if let Some((_, s)) = current.take() {
                            let _ = s.close();
                        }
                    }
                    let mut rep = None;
                    if current.is_none() {
                        match connect(&job.target, opts) {
                            Ok(s) => current = Some((job.target.clone(), s)),
                            Err(e) => {
                                rep = Some(DomainReport {
                                    domain: job.domain.to_string(),
                                    remote: job.target.to_string(),
                                    errors: vec![e.message().to_string()],
                                    ..Default::default()
                                })
                            }
                        }
                    }
                    let prepared = prepared.and_then(|h| h.join().ok());
                    if rep.is_none() {
                        next = pop().map(|j| prefetch(j, &current));
                    }
                    let rep = match (rep, current.as_mut()) {
                        (Some(r), _) => r,
                        (None, Some((_, sess))) => {
                            // The remote scans the next domain while it applies this one.
                            let ahead = next
                                .as_ref()
                                .filter(|(j, _)| j.target == job.target)
                                .map(|(j, _)| &j.domain);
                            match client::sync_prepared(
                                sess,
                                &opts.send,
                                &job.domain,
                                prepared,
                                ahead,
                            ) {
                                Ok(r) => r,
                                Err(e) => {
                                    // The connection is unusable now.
                                    current = None;
                                    DomainReport {
                                        domain: job.domain.to_string(),
                                        remote: job.target.to_string(),
                                        errors: vec![e.message().to_string()],
                                        ..Default::default()
                                    }
                                }
                            }
                        }
                        (None, None) => continue,
                    };
                    for e in &rep.errors {
                        log::warn!("{}: {e}", rep.domain);
                    }
                    bar.inc(1);
                    if let Ok(mut r) = results.lock() {
                        r.push(rep);
                    }
                }
                if let Some((_, s)) = current.take() {
                    if let Err(e) = s.close() {
                        log::warn!("{}", e.message());
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut per_domain = results.into_inner().unwrap_or_default();
    per_domain.sort_by(|a, b| a.domain.cmp(&b.domain));
    let mut r = RunReport {
        domains: per_domain.len() as u64,
        seconds: start.elapsed().as_secs_f64(),
        ..Default::default()
    };
    for d in &per_domain {
        r.files_sent += d.files_sent;
        r.bytes_sent += d.bytes_sent;
        r.wire_bytes += d.wire_bytes;
        r.renames += d.renames;
        r.links += d.links;
        r.deletes += d.deletes;
        r.conflicts += d.conflicts.len() as u64;
        r.adopted += d.adopted;
        r.errors += d.errors.len() as u64;
    }
    r.ok = per_domain.iter().all(|d| d.ok);
    r.per_domain = per_domain;
    r
}

/// One run per node pair: an exclusive lock file in the state directory, held while alive.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    pub fn acquire(state_dir: &Path, name: &str) -> Result<RunLock> {
        use std::os::unix::io::AsRawFd;
        std::fs::create_dir_all(state_dir).map_err(|e| {
            Error::io(
                format!("cannot create state directory {}", state_dir.display()),
                e,
            )
        })?;
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = state_dir.join(format!("run-{safe}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::temporary(format!(
                "already running (lock {} is held)",
                path.display()
            )));
        }
        Ok(RunLock { _file: file })
    }
}

/// Status of the last run per domain, from the state directory.
pub fn status(state_dir: &Path) -> Result<Vec<DomainReport>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(state_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("cannot read {}", state_dir.display()), e)),
    };
    for item in rd.flatten() {
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(".status") {
            continue;
        }
        if let Ok((data, _)) = fsops::read_bounded(&item.path(), 64 << 20) {
            if let Ok(r) = serde_json::from_slice::<DomainReport>(&data) {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.domain.cmp(&b.domain));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert_eq!(parse_rate("500").unwrap(), 500 << 10);
        assert!(parse_rate("x").is_err());
    }
}
