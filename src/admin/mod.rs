//! The `mailctl` library: every node's database administered at once.
//!
//! * Reads come from one database (the first reachable, or `--from NAME`); writes go to
//!   all `[[directory]]` entries of the configuration.
//! * A change is all-or-nothing: PostgreSQL two-phase commit (`PREPARE TRANSACTION` on each,
//!   then `COMMIT PREPARED`), SQLite joining with an ordinary transaction committed last,
//!   and a decision log in the state directory ([`state`]) so that the next run commits or
//!   rolls back what a crash left prepared. An unreachable database aborts a change
//!   everywhere, naming it — unless `--partial`, which applies to what answers and records
//!   the rest as drift.
//! * [`drift`] compares all databases by natural keys and repairs; [`ops`] holds failover,
//!   rejoin, switchover and failback.

pub mod drift;
pub mod health;
pub mod ops;
pub mod password;
pub mod prompt;
pub mod render;
pub mod schema;
pub mod state;

use crate::config::{Config, DirectoryConfig, MailConfig, PortsConfig, Role};
use crate::directory::txn::{self, AdminDb, Change, Snapshot};
use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use state::{Decision, Participant, PendingChange, State, TxnLog};
use std::path::PathBuf;
use std::time::Duration;

/// `[ctl]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtlSettings {
    /// Where the decision log, pending changes and saved routes live (a `ctl/` below it).
    pub state_dir: PathBuf,
    /// Scheme for new passwords (Dovecot's names): SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT,
    /// PLAIN-MD5.
    pub password_scheme: String,
    /// The mailsync program for switchover/failback (default: `mailsync` next to mailctl).
    pub mailsync: Option<PathBuf>,
    /// Arguments for mailsync, each element one argument; `{domain}`, `{from}`, `{to}` and
    /// `{config}` are replaced (an element that is exactly `{config}` is dropped, with the
    /// `--config` before it, when mailctl runs without a configuration file).
    pub mailsync_args: Vec<String>,
    /// Seconds to wait for another mailctl run to release the lock.
    pub lock_wait: f64,
}

impl Default for CtlSettings {
    fn default() -> Self {
        CtlSettings {
            state_dir: default_state_dir(),
            password_scheme: password::DEFAULT_SCHEME.to_string(),
            mailsync: None,
            mailsync_args: [
                "--config", "{config}", "--domain", "{domain}", "{from}", "{to}",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            lock_wait: 10.0,
        }
    }
}

/// `/var/lib/mailcluster`, or `/var/db/mailcluster` on the BSDs.
pub fn default_state_dir() -> PathBuf {
    if cfg!(any(
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    )) {
        PathBuf::from("/var/db/mailcluster")
    } else {
        PathBuf::from("/var/lib/mailcluster")
    }
}

/// How to apply a change.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Apply database by database to those that answer; record the rest as drift.
    pub partial: bool,
    /// Databases that may be unreachable without aborting: the change is recorded as
    /// pending for them (failover: the failed node's own database).
    pub defer: Vec<String>,
}

/// A change not applied to one database, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    pub database: String,
    pub reason: String,
}

/// What applying a change did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub change_id: String,
    /// "two-phase", "single" (one database) or "partial".
    pub method: &'static str,
    pub changes: Vec<String>,
    pub applied: Vec<String>,
    pub missing: Vec<Missing>,
    /// Leftovers resolved and other notes.
    pub notes: Vec<String>,
}

/// The configured databases plus mailctl's state.
pub struct Cluster {
    pub directories: Vec<DirectoryConfig>,
    pub timeout: Duration,
    pub settings: CtlSettings,
    pub state: State,
    pub ports: PortsConfig,
    pub mail: MailConfig,
    pub config_path: Option<PathBuf>,
    /// Also resolve transactions prepared by mailctl on another host (`recover --foreign`).
    pub foreign: bool,
    /// Node name → IP address (`[auth.nodes]`), for health probes.
    pub node_addresses: std::collections::BTreeMap<String, String>,
}

/// Open databases of one run (reachable ones) and the unreachable ones with their error.
pub struct Session {
    pub dbs: Vec<AdminDb>,
    pub down: Vec<(String, Error)>,
    pub notes: Vec<String>,
    _lock: state::Lock,
}

impl Cluster {
    /// Build from the configuration: at least one directory, unique names.
    pub fn from_config(config: &Config) -> Result<Cluster> {
        let settings: CtlSettings = config.section("ctl")?;
        password::normalize_scheme(&settings.password_scheme)?;
        if config.directories.is_empty() {
            return Err(Error::config(
                "no [[directory]] configured (name, url, role for every node's database), \
                 and no --db given",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &config.directories {
            if d.name.is_empty()
                || d.name.len() > 64
                || !d
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            {
                return Err(Error::config(format!(
                    "[[directory]] name {} must be 1-64 letters, digits, '-', '.' or '_'",
                    crate::names::printable(&d.name)
                )));
            }
            if !seen.insert(d.name.to_ascii_lowercase()) {
                return Err(Error::config(format!(
                    "[[directory]] name {} appears twice",
                    d.name
                )));
            }
        }
        let state = State::open(&settings.state_dir)?;
        Ok(Cluster {
            directories: config.directories.clone(),
            timeout: config.db_timeout(),
            settings,
            state,
            ports: config.ports.clone(),
            mail: config.mail.clone(),
            config_path: config.source.as_ref().map(|(p, _)| p.clone()),
            foreign: false,
            node_addresses: config
                .section::<crate::auth::authenticator::AuthSettings>("auth")
                .map(|a| {
                    a.nodes
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    fn lock(&self) -> Result<state::Lock> {
        let wait = if self.settings.lock_wait.is_finite() && self.settings.lock_wait >= 0.0 {
            self.settings.lock_wait.min(3600.0)
        } else {
            10.0
        };
        self.state.lock(Duration::from_secs_f64(wait))
    }

    /// The directory entry named `name`.
    pub fn directory(&self, name: &str) -> Result<&DirectoryConfig> {
        self.directories
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::bad_input(format!(
                    "no [[directory]] named {} (configured: {})",
                    crate::names::printable(name),
                    self.names().join(", ")
                ))
            })
    }

    pub fn names(&self) -> Vec<String> {
        self.directories.iter().map(|d| d.name.clone()).collect()
    }

    /// Open one database.
    pub fn open_one(&self, name: &str) -> Result<AdminDb> {
        let d = self.directory(name)?;
        AdminDb::open(&d.name, &d.url, d.role, self.timeout)
    }

    /// Take the lock, connect to every database (in parallel), resolve leftovers of
    /// interrupted two-phase changes on the reachable ones.
    pub fn session(&self) -> Result<Session> {
        let lock = self.lock()?;
        let results: Vec<Result<AdminDb>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .directories
                .iter()
                .map(|d| s.spawn(move || AdminDb::open(&d.name, &d.url, d.role, self.timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::internal("connection thread failed")))
                })
                .collect()
        });
        let mut dbs = Vec::new();
        let mut down = Vec::new();
        for (d, r) in self.directories.iter().zip(results) {
            match r {
                Ok(db) => dbs.push(db),
                Err(e) => down.push((d.name.clone(), e)),
            }
        }
        let mut session = Session {
            dbs,
            down,
            notes: Vec::new(),
            _lock: lock,
        };
        self.recover(&mut session);
        Ok(session)
    }

    /// Connect to every database and resolve leftovers; returns what was done and which
    /// databases did not answer.
    pub fn recover_now(&self) -> Result<Vec<String>> {
        let mut session = self.session()?;
        let mut notes = std::mem::take(&mut session.notes);
        for (_, e) in &session.down {
            notes.push(format!(
                "{e} (its leftovers are resolved when it answers again)"
            ));
        }
        Ok(notes)
    }

    /// Resolve prepared transactions left by an interrupted run: commit those whose
    /// decision log says commit, roll back the rest (no decision = abort).
    fn recover(&self, session: &mut Session) {
        let mut open: Vec<(String, String)> = Vec::new(); // (database, gid) still prepared
        let my_tag = state::host_tag();
        let mut queried: Vec<String> = Vec::new();
        for db in session.dbs.iter_mut() {
            let gids = match db.prepared_gids() {
                Ok(g) => g,
                Err(e) => {
                    session
                        .notes
                        .push(format!("cannot list prepared transactions: {e}"));
                    continue;
                }
            };
            queried.push(db.name().to_string());
            for gid in gids {
                let Some(id) = txn::change_id_of(&gid).map(str::to_string) else {
                    continue;
                };
                if !self.foreign && state::host_tag_of(&id) != Some(my_tag.as_str()) {
                    session.notes.push(format!(
                        "database {}: transaction {gid} was prepared by mailctl on another \
                         host; resolve it there (or here with `mailctl recover --foreign`, \
                         which rolls back what that host's log does not say to commit)",
                        db.name()
                    ));
                    open.push((db.name().to_string(), gid));
                    continue;
                }
                let decision = match self.state.load_txn(&id) {
                    Ok(Some(log)) => log.decision,
                    Ok(None) => Decision::Abort,
                    Err(e) => {
                        session.notes.push(format!("{e}"));
                        open.push((db.name().to_string(), gid));
                        continue;
                    }
                };
                let res = if decision == Decision::Commit {
                    db.commit_prepared(&gid).map(|_| "committed")
                } else {
                    db.rollback_prepared(&gid).map(|_| "rolled back")
                };
                match res {
                    Ok(what) => {
                        self.state.history(&format!(
                            "recover {id}: {what} prepared transaction {gid} on {}",
                            db.name()
                        ));
                        session.notes.push(format!(
                            "database {}: {what} the transaction {gid} left prepared by an \
                             interrupted run (change {id})",
                            db.name()
                        ))
                    }
                    Err(e) => {
                        session.notes.push(format!("{e}"));
                        open.push((db.name().to_string(), gid));
                    }
                }
            }
        }
        // Retire decision-log entries whose participants are all resolved.
        let logs = match self.state.txns() {
            Ok(l) => l,
            Err(e) => {
                session.notes.push(format!("{e}"));
                return;
            }
        };
        for mut log in logs {
            let mut changed = false;
            for p in log.participants.iter_mut() {
                if p.resolved {
                    continue;
                }
                let done = match &p.gid {
                    None => {
                        if log.decision == Decision::Commit {
                            session.notes.push(format!(
                                "change {} was decided commit but SQLite database {} may have \
                                 missed it (interrupted run): check with `mailctl drift`",
                                log.id, p.database
                            ));
                        }
                        true
                    }
                    Some(gid) => {
                        queried.contains(&p.database)
                            && !open.iter().any(|(d, g)| d == &p.database && g == gid)
                    }
                };
                if done {
                    p.resolved = true;
                    changed = true;
                }
            }
            if log.participants.iter().all(|p| p.resolved) {
                let _ = self.state.remove_txn(&log.id);
            } else if changed {
                let _ = self.state.save_txn(&log);
            }
        }
    }

    /// Read everything from `from`, or from the first reachable database (in configuration
    /// order, those with pending changes last).
    pub fn read(&self, from: Option<&str>) -> Result<(String, Role, Snapshot)> {
        if let Some(name) = from {
            let mut db = self.open_one(name)?;
            let snap = db.snapshot()?;
            return Ok((db.name().to_string(), db.role(), snap));
        }
        let mut errors = Vec::new();
        // Databases that missed changes (a node back from a failure, not yet rejoined)
        // are read last.
        let mut order: Vec<&DirectoryConfig> = self.directories.iter().collect();
        order.sort_by_key(|d| {
            self.state
                .pending(&d.name)
                .map(|p| !p.is_empty())
                .unwrap_or(true)
        });
        for d in order {
            match AdminDb::open(&d.name, &d.url, d.role, self.timeout).and_then(|mut db| {
                let s = db.snapshot()?;
                Ok((d.name.clone(), d.role, s))
            }) {
                Ok(r) => return Ok(r),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(Error::temporary(format!(
            "no database answers: {}",
            errors.join("; ")
        )))
    }

    /// Apply `changes` to every database, all or nothing (see the module docs).
    pub fn apply(&self, changes: &[Change], opts: &ApplyOptions) -> Result<Outcome> {
        let mut session = self.session()?;
        self.apply_in(&mut session, changes, opts)
    }

    /// [`Cluster::apply`] within an open session.
    pub fn apply_in(
        &self,
        session: &mut Session,
        changes: &[Change],
        opts: &ApplyOptions,
    ) -> Result<Outcome> {
        let id = state::new_change_id();
        let mut out = Outcome {
            change_id: id.clone(),
            method: "two-phase",
            changes: changes.iter().map(|c| c.to_string()).collect(),
            applied: Vec::new(),
            missing: Vec::new(),
            notes: std::mem::take(&mut session.notes),
        };
        if changes.is_empty() {
            out.method = "none";
            return Ok(out);
        }
        let deferrable =
            |name: &str| opts.partial || opts.defer.iter().any(|d| d.eq_ignore_ascii_case(name));
        let fatal: Vec<String> = session
            .down
            .iter()
            .filter(|(n, _)| !deferrable(n))
            .map(|(_, e)| e.to_string())
            .collect();
        if !fatal.is_empty() {
            return Err(Error::temporary(format!(
                "nothing was changed in any database: {}. Bring it back and run the command \
                 again, or add --partial to apply to the databases that answer and record the \
                 rest as drift for `mailctl drift --repair`",
                fatal.join("; ")
            )));
        }
        if session.dbs.is_empty() {
            return Err(Error::temporary(format!(
                "no database answers: {}",
                session
                    .down
                    .iter()
                    .map(|(_, e)| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        self.preflight(session, changes)?;
        let deferred: Vec<(String, String)> = session
            .down
            .iter()
            .map(|(n, e)| (n.clone(), e.to_string()))
            .collect();

        if opts.partial {
            out.method = "partial";
            for db in session.dbs.iter_mut() {
                match apply_one(db, changes).and_then(|()| verify(db, changes)) {
                    Ok(()) => out.applied.push(db.name().to_string()),
                    Err(e) => {
                        db.rollback();
                        out.missing.push(Missing {
                            database: db.name().to_string(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        } else if session.dbs.len() == 1 {
            out.method = "single";
            let db = &mut session.dbs[0];
            if let Err(e) = apply_one(db, changes) {
                db.rollback();
                return Err(e);
            }
            out.applied.push(db.name().to_string());
        } else {
            self.two_phase(session, changes, &id, &mut out)?;
        }
        for (name, reason) in deferred {
            out.missing.push(Missing {
                database: name,
                reason,
            });
        }
        for m in &out.missing {
            let items = changes
                .iter()
                .map(|c| PendingChange {
                    change_id: id.clone(),
                    at: state::now(),
                    reason: m.reason.clone(),
                    change: c.clone(),
                })
                .collect();
            self.state.add_pending(&m.database, items)?;
        }
        for c in changes {
            self.state.history(&format!(
                "{id} {}: {c} (applied: {}; missing: {})",
                out.method,
                out.applied.join(","),
                out.missing
                    .iter()
                    .map(|m| m.database.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        Ok(out)
    }

    /// Checks before anything is written: 2PC available, hashes fit the password columns.
    fn preflight(&self, session: &mut Session, changes: &[Change]) -> Result<()> {
        let longest = changes
            .iter()
            .filter_map(|c| match c {
                Change::AddMailbox { password, .. } | Change::SetPassword { password, .. } => {
                    password.as_ref().map(|p| p.len())
                }
                _ => None,
            })
            .max();
        for db in session.dbs.iter_mut() {
            if let (Some(len), Role::Storage) = (longest, db.role()) {
                if let Some(col) = db.password_column()? {
                    if let Some(max) = col.max_len {
                        if len > max {
                            return Err(Error::bad_input(format!(
                                "nothing was changed: database {}: mail.password is \
                                 varchar({max}) but the new hash is {len} characters \
                                 ({} scheme). Run `mailctl schema upgrade` (widens the column \
                                 to varchar({}) everywhere) or choose a shorter scheme in \
                                 [ctl] password_scheme",
                                db.name(),
                                self.settings.password_scheme,
                                txn::WIDE_PASSWORD_LEN
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn two_phase(
        &self,
        session: &mut Session,
        changes: &[Change],
        id: &str,
        out: &mut Outcome,
    ) -> Result<()> {
        for db in session.dbs.iter_mut() {
            if let Some(0) = db.max_prepared_transactions()? {
                return Err(Error::config(format!(
                    "nothing was changed: database {} has max_prepared_transactions = 0, so \
                     an all-or-nothing change across the databases (two-phase commit) is \
                     impossible. Set `max_prepared_transactions = 10` in its postgresql.conf \
                     and restart PostgreSQL (a reload is not enough), or run with --partial \
                     to apply database by database and repair drift afterwards",
                    db.name()
                )));
            }
        }
        let mut log = TxnLog {
            id: id.to_string(),
            created: state::now(),
            summary: changes.iter().map(|c| c.to_string()).collect(),
            decision: Decision::Prepare,
            participants: Vec::new(),
        };
        for (i, db) in session.dbs.iter().enumerate() {
            log.participants.push(Participant {
                database: db.name().to_string(),
                gid: if db.is_postgres() {
                    Some(txn::gid(id, i)?)
                } else {
                    None
                },
                resolved: false,
            });
        }
        self.state.save_txn(&log)?;
        // Phase 1: every database does the work and promises to commit.
        let mut failure: Option<Error> = None;
        let mut prepared: Vec<usize> = Vec::new();
        let mut begun: Vec<usize> = Vec::new();
        for (i, db) in session.dbs.iter_mut().enumerate() {
            let r = (|| {
                db.begin()?;
                begun.push(i);
                for c in changes {
                    db.apply(c)?;
                }
                if let Some(gid) = &log.participants[i].gid {
                    db.prepare(gid)?;
                    prepared.push(i);
                }
                Ok::<(), Error>(())
            })();
            if let Err(e) = r {
                failure = Some(e);
                break;
            }
        }
        if let Some(e) = failure {
            log.decision = Decision::Abort;
            let _ = self.state.save_txn(&log);
            let mut all_undone = true;
            for i in begun {
                let db = &mut session.dbs[i];
                if prepared.contains(&i) {
                    if let Some(gid) = &log.participants[i].gid {
                        if db.rollback_prepared(gid).is_err() {
                            all_undone = false;
                            continue;
                        }
                    }
                } else {
                    db.rollback();
                }
            }
            if all_undone {
                let _ = self.state.remove_txn(id);
            }
            return Err(Error::new(
                e.kind(),
                format!("{e}; nothing was changed in any database"),
            ));
        }
        // The decision, durable before any COMMIT PREPARED.
        log.decision = Decision::Commit;
        self.state.save_txn(&log)?;
        // SQLite participants commit one-phase, last resource first.
        let mut committed_sqlite = false;
        for (i, db) in session.dbs.iter_mut().enumerate() {
            if log.participants[i].gid.is_some() {
                continue;
            }
            match db.commit() {
                Ok(()) => {
                    committed_sqlite = true;
                    log.participants[i].resolved = true;
                    out.applied.push(db.name().to_string());
                }
                Err(e) if !committed_sqlite => {
                    // Nothing is committed anywhere yet: turn the decision around.
                    log.decision = Decision::Abort;
                    self.state.save_txn(&log)?;
                    db.rollback();
                    for (j, p) in log.participants.iter().enumerate() {
                        if let Some(gid) = &p.gid {
                            let _ = session.dbs[j].rollback_prepared(gid);
                        }
                    }
                    let _ = self.state.remove_txn(id);
                    return Err(Error::new(
                        e.kind(),
                        format!("{e}; nothing was changed in any database"),
                    ));
                }
                Err(e) => {
                    db.rollback();
                    log.participants[i].resolved = true;
                    out.missing.push(Missing {
                        database: db.name().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        // Phase 2.
        for (i, db) in session.dbs.iter_mut().enumerate() {
            let Some(gid) = log.participants[i].gid.clone() else {
                continue;
            };
            match db.commit_prepared(&gid) {
                Ok(()) => {
                    log.participants[i].resolved = true;
                    out.applied.push(db.name().to_string());
                }
                Err(e) => out.notes.push(format!(
                    "{e}: the change is decided and prepared there; the next mailctl run \
                     commits it"
                )),
            }
        }
        if log.participants.iter().all(|p| p.resolved) {
            self.state.remove_txn(id)?;
        } else {
            self.state.save_txn(&log)?;
        }
        Ok(())
    }

    /// Directory names that belong to `node` (a maps node name such as
    /// `storage-01.domain.ru`): equal, or one is the other's first label(s).
    pub fn databases_of_node(&self, node: &str) -> Vec<String> {
        let node = node.to_ascii_lowercase();
        self.directories
            .iter()
            .filter(|d| {
                let n = d.name.to_ascii_lowercase();
                n == node
                    || node.starts_with(&format!("{n}."))
                    || n.starts_with(&format!("{node}."))
            })
            .map(|d| d.name.clone())
            .collect()
    }
}

/// One database, one transaction: begin, apply, commit.
fn apply_one(db: &mut AdminDb, changes: &[Change]) -> Result<()> {
    db.begin()?;
    for c in changes {
        db.apply(c)?;
    }
    db.commit()
}

/// Read back what `changes` should have made (after a one-by-one `--partial` apply).
fn verify(db: &mut AdminDb, changes: &[Change]) -> Result<()> {
    use crate::directory::txn::DomainKind;
    let snap = db.snapshot()?;
    let domain = |d: &crate::names::Domain| {
        snap.domains
            .get(&(d.as_str().to_string(), DomainKind::Ldomain))
            .or_else(|| {
                snap.domains
                    .get(&(d.as_str().to_string(), DomainKind::CoDomain))
            })
    };
    let mailbox = |m: &crate::names::LocalPart, d: &crate::names::Domain| {
        snap.mailboxes
            .get(&(d.as_str().to_string(), m.as_str().to_string()))
    };
    for c in changes {
        let ok = match c {
            Change::AddDomain {
                domain: d, primary, ..
            } => domain(d).is_some_and(|st| st.primary == *primary),
            Change::RemoveDomain { domain: d } => domain(d).is_none(),
            // The effective flag also depends on the second-level domain's.
            Change::SetDomainActive { domain: d, .. } => domain(d).is_some(),
            Change::SetRoute {
                domain: d,
                primary,
                backup,
            } => domain(d).is_some_and(|st| {
                st.primary == *primary
                    && st.backup == backup.clone().filter(|b| b != primary && !b.is_empty())
            }),
            Change::AddMailbox {
                mailbox: m,
                domain: d,
                active,
                ..
            }
            | Change::SetMailboxActive {
                mailbox: m,
                domain: d,
                active,
            } => mailbox(m, d).is_some_and(|st| st.active == *active),
            Change::SetPassword {
                mailbox: m,
                domain: d,
                password,
            } => {
                mailbox(m, d).is_some_and(|st| db.role() == Role::Smtp || st.password == *password)
            }
            Change::RemoveMailbox {
                mailbox: m,
                domain: d,
            } => mailbox(m, d).is_none(),
        };
        if !ok {
            return Err(Error::internal(format!(
                "database {}: committed, but reading back does not show: {c}",
                db.name()
            )));
        }
    }
    Ok(())
}

/// Is this error a reason to stop (as opposed to "already like that")?
pub(crate) fn is_benign(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::BadInput)
}
