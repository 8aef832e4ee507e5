//! mailctl's state directory (`[ctl] state_dir`, default `/var/lib/mailcluster`, files under
//! `ctl/`): the lock that keeps two mailctl runs apart, the decision log of two-phase
//! commits, changes pending for unreachable databases (drift to repair), the routes saved
//! by `failover` for `failback`, and a history of applied changes. No passwords are kept:
//! pending changes carry stored hashes only, and every file is mode 0600.

use crate::directory::txn::Change;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The decision about a two-phase change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Preparing; no decision yet (a crash here means: roll back).
    Prepare,
    /// Every participant prepared: commit everywhere.
    Commit,
    /// Roll back everywhere.
    Abort,
}

/// A participant of a two-phase change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Participant {
    pub database: String,
    /// The prepared-transaction id (PostgreSQL) or None (SQLite, one-phase last).
    pub gid: Option<String>,
    /// Commit or rollback done on this database.
    pub resolved: bool,
}

/// One entry of the decision log (`ctl/txn/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TxnLog {
    pub id: String,
    pub created: u64,
    /// What the change does (never a password).
    pub summary: Vec<String>,
    pub decision: Decision,
    pub participants: Vec<Participant>,
}

/// A change not yet applied to one database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingChange {
    pub change_id: String,
    pub at: u64,
    pub reason: String,
    pub change: Change,
}

/// A route saved by `failover` for `failback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRoute {
    pub domain: String,
    pub primary: String,
    pub backup: Option<String>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct State {
    dir: PathBuf,
}

/// The held lock; released on drop.
pub struct Lock {
    _file: File,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A short tag of this host (8 hex digits of a hash of its name), part of every change id
/// so that leftovers of another admin host's mailctl are never resolved here.
pub fn host_tag() -> String {
    use sha2::Digest;
    let name = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(name.as_bytes())[..4])
}

/// A fresh change id: time, host tag, pid and randomness; `[a-z0-9-]` only.
pub fn new_change_id() -> String {
    use rand::Rng;
    let r: u32 = rand::thread_rng().gen();
    format!("{}-{}-{}-{r:08x}", now(), host_tag(), std::process::id())
}

/// The host tag inside a change id made by [`new_change_id`].
pub fn host_tag_of(change_id: &str) -> Option<&str> {
    let mut parts = change_id.split('-');
    parts.next()?;
    let tag = parts.next()?;
    (tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tag)
}

/// A file-name-safe form of a database or node name.
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

impl State {
    /// Open (creating if needed) `<state_dir>/ctl`.
    pub fn open(state_dir: &Path) -> Result<State> {
        let dir = state_dir.join("ctl");
        for d in [
            dir.clone(),
            dir.join("txn"),
            dir.join("pending"),
            dir.join("failover"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| {
                Error::config(format!(
                    "cannot create mailctl's state directory {}: {e} (set [ctl] state_dir to a \
                     writable directory)",
                    d.display()
                ))
            })?;
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        Ok(State { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Take the exclusive lock (waits up to `wait` for another mailctl run to finish).
    pub fn lock(&self, wait: std::time::Duration) -> Result<Lock> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        use std::os::unix::io::AsRawFd;
        let start = std::time::Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Lock { _file: file });
            }
            if start.elapsed() >= wait {
                return Err(Error::temporary(format!(
                    "another mailctl is running (lock {} is held); try again when it is done",
                    path.display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::internal(format!("encoding {}: {e}", path.display())))?;
        let tmp = path.with_extension("tmp");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
        if let Some(parent) = path.parent() {
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::internal(format!(
                    "{} is damaged: {e}; inspect it and remove it by hand",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    fn txn_path(&self, id: &str) -> PathBuf {
        self.dir.join("txn").join(format!("{}.json", safe(id)))
    }

    /// Write (durably) a decision-log entry.
    pub fn save_txn(&self, log: &TxnLog) -> Result<()> {
        self.write_json(&self.txn_path(&log.id), log)
    }

    pub fn load_txn(&self, id: &str) -> Result<Option<TxnLog>> {
        self.read_json(&self.txn_path(id))
    }

    pub fn remove_txn(&self, id: &str) -> Result<()> {
        match std::fs::remove_file(self.txn_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing a decision-log entry", e)),
        }
    }

    /// Every decision-log entry.
    pub fn txns(&self) -> Result<Vec<TxnLog>> {
        let mut out = Vec::new();
        let dir = self.dir.join("txn");
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some("json") {
                if let Some(t) = self.read_json::<TxnLog>(&p)? {
                    out.push(t);
                }
            }
        }
        out.sort_by_key(|t| t.created);
        Ok(out)
    }

    fn pending_path(&self, database: &str) -> PathBuf {
        self.dir
            .join("pending")
            .join(format!("{}.json", safe(database)))
    }

    /// Changes recorded for `database` (oldest first).
    pub fn pending(&self, database: &str) -> Result<Vec<PendingChange>> {
        Ok(self
            .read_json(&self.pending_path(database))?
            .unwrap_or_default())
    }

    pub fn add_pending(&self, database: &str, items: Vec<PendingChange>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut all = self.pending(database)?;
        all.extend(items);
        self.write_json(&self.pending_path(database), &all)
    }

    pub fn clear_pending(&self, database: &str) -> Result<()> {
        match std::fs::remove_file(self.pending_path(database)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing pending changes", e)),
        }
    }

    fn failover_path(&self, node: &str) -> PathBuf {
        self.dir
            .join("failover")
            .join(format!("{}.json", safe(node)))
    }

    /// Routes saved when `node` failed over (domain → original row).
    pub fn saved_routes(&self, node: &str) -> Result<Vec<SavedRoute>> {
        Ok(self
            .read_json(&self.failover_path(node))?
            .unwrap_or_default())
    }

    /// Save original routes; an earlier saved row for the same domain is kept (it is the
    /// original).
    pub fn save_routes(&self, node: &str, routes: &[SavedRoute]) -> Result<()> {
        let mut all = self.saved_routes(node)?;
        for r in routes {
            if !all.iter().any(|a| a.domain == r.domain) {
                all.push(r.clone());
            }
        }
        self.write_json(&self.failover_path(node), &all)
    }

    /// Forget saved routes for these domains (after a failback).
    pub fn forget_routes(&self, node: &str, domains: &[String]) -> Result<()> {
        let all: Vec<SavedRoute> = self
            .saved_routes(node)?
            .into_iter()
            .filter(|r| !domains.contains(&r.domain))
            .collect();
        if all.is_empty() {
            match std::fs::remove_file(self.failover_path(node)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("removing saved routes", e)),
            }
        } else {
            self.write_json(&self.failover_path(node), &all)
        }
    }

    /// Append a line to the history (never a password).
    pub fn history(&self, line: &str) {
        let path = self.dir.join("history.log");
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            let clean: String = line.chars().filter(|c| !c.is_control()).collect();
            let _ = writeln!(f, "{} {clean}", now());
        }
    }
}
