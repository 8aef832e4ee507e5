//! The write side for `mailctl`: a per-database handle that opens a transaction, applies
//! typed [`Change`]s by natural keys (domain and mailbox names; row ids differ per database),
//! and prepares / commits / rolls back (PostgreSQL two-phase commit, plain transactions on
//! SQLite). Also reads a whole-database [`Snapshot`] for drift comparison and inspects or
//! widens the password column.
//!
//! This file and its siblings are the only places that know SQL. Every wait is bounded:
//! a database that is down or hung gives a *temporary* error naming the database.

use crate::config::Role;
use crate::error::{Error, ErrorKind, Result};
use crate::names::{Domain, LocalPart};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Whether a domain is a third-level `ldomain.mdomain` pair (routed by `maps`) or a whole
/// domain in `co_domain` (routed by `co_maps`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DomainKind {
    Ldomain,
    CoDomain,
}

impl fmt::Display for DomainKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainKind::Ldomain => "ldomain",
            DomainKind::CoDomain => "co_domain",
        })
    }
}

/// One typed change, by natural keys. Passwords are carried as stored hashes (never plain
/// text); [`fmt::Display`] never shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    AddDomain {
        #[serde(deserialize_with = "de_domain")]
        domain: Domain,
        kind: DomainKind,
        primary: String,
        backup: Option<String>,
        active: bool,
    },
    RemoveDomain {
        #[serde(deserialize_with = "de_domain")]
        domain: Domain,
    },
    SetDomainActive {
        #[serde(deserialize_with = "de_domain")]
        domain: Domain,
        active: bool,
    },
    SetRoute {
        #[serde(deserialize_with = "de_domain")]
        domain: Domain,
        primary: String,
        backup: Option<String>,
    },
    AddMailbox {
        #[serde(deserialize_with = "de_mailbox")]
        mailbox: LocalPart,
        #[serde(deserialize_with = "de_domain")]
        domain: Domain,
        /// The stored hash (`{SCHEME}...`); ignored on smtp-role databases.
        password: Option<String>,
        active: bool,
    },
    SetPassword {
        #[serde(deserialize_with = "de_mailbox")]
        mailbox: LocalPart,
        #[serde(deserialize_with = "de_domain")]
        domain: Domain,
        password: Option<String>,
    },
    SetMailboxActive {
        #[serde(deserialize_with = "de_mailbox")]
        mailbox: LocalPart,
        #[serde(deserialize_with = "de_domain")]
        domain: Domain,
        active: bool,
    },
    RemoveMailbox {
        #[serde(deserialize_with = "de_mailbox")]
        mailbox: LocalPart,
        #[serde(deserialize_with = "de_domain")]
        domain: Domain,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let onoff = |a: &bool| if *a { "enable" } else { "disable" };
        match self {
            Change::AddDomain {
                domain,
                kind,
                primary,
                backup,
                active,
            } => write!(
                f,
                "add {kind} {domain} (primary {primary}, backup {}{})",
                backup.as_deref().unwrap_or("none"),
                if *active { "" } else { ", disabled" }
            ),
            Change::RemoveDomain { domain } => write!(f, "remove domain {domain}"),
            Change::SetDomainActive { domain, active } => {
                write!(f, "{} domain {domain}", onoff(active))
            }
            Change::SetRoute {
                domain,
                primary,
                backup,
            } => write!(
                f,
                "route {domain}: primary {primary}, backup {}",
                backup.as_deref().unwrap_or("none")
            ),
            Change::AddMailbox {
                mailbox,
                domain,
                active,
                ..
            } => write!(
                f,
                "add mailbox {mailbox}@{domain}{}",
                if *active { "" } else { " (disabled)" }
            ),
            Change::SetPassword {
                mailbox, domain, ..
            } => write!(f, "set password of {mailbox}@{domain}"),
            Change::SetMailboxActive {
                mailbox,
                domain,
                active,
            } => write!(f, "{} mailbox {mailbox}@{domain}", onoff(active)),
            Change::RemoveMailbox { mailbox, domain } => {
                write!(f, "remove mailbox {mailbox}@{domain}")
            }
        }
    }
}

/// A domain as one database holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainState {
    /// `ldomain.active AND mdomain.active`, or `co_domain.active`.
    pub active: bool,
    /// `storage1`, lower-cased ("" when a co_domain has no co_maps row).
    pub primary: String,
    /// `storage2`, lower-cased; None when empty or equal to the primary.
    pub backup: Option<String>,
    /// `storage2` as stored (lower-cased; may be empty or equal to the primary), so that
    /// a saved route can be restored exactly.
    #[serde(skip)]
    pub storage2: String,
}

/// A mailbox as one database holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MailboxState {
    pub active: bool,
    /// The stored hash; None on smtp-role databases or when NULL.
    #[serde(skip)]
    pub password: Option<String>,
}

/// Everything a database holds, by natural keys (the legacy `dir` pseudo-mailbox excluded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub domains: BTreeMap<(String, DomainKind), DomainState>,
    /// Key: (domain, mailbox).
    pub mailboxes: BTreeMap<(String, String), MailboxState>,
}

/// The `mail.password` column as a database declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordColumn {
    /// Declared type, e.g. `character varying`.
    pub data_type: String,
    /// Maximum length in characters; None when unbounded (text, SQLite).
    pub max_len: Option<usize>,
}

/// Width `schema upgrade` gives the password column.
pub const WIDE_PASSWORD_LEN: usize = 255;

/// A prepared-transaction identifier made by mailctl: `mailctl_<change id>_<index>`.
/// Only `[a-z0-9_-]`, so it can be spelled in `PREPARE TRANSACTION '...'` safely.
pub const GID_PREFIX: &str = "mailctl_";

/// Build the gid of participant `index` in change `change_id`.
pub fn gid(change_id: &str, index: usize) -> Result<String> {
    let g = format!("{GID_PREFIX}{change_id}_{index}");
    check_gid(&g)?;
    Ok(g)
}

/// The change id encoded in a gid made by [`gid`].
pub fn change_id_of(gid: &str) -> Option<&str> {
    let rest = gid.strip_prefix(GID_PREFIX)?;
    let (id, idx) = rest.rsplit_once('_')?;
    idx.parse::<usize>().ok()?;
    Some(id)
}

fn check_gid(g: &str) -> Result<()> {
    if g.is_empty()
        || g.len() > 190
        || !g
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(Error::internal(format!(
            "refusing transaction id {}",
            crate::names::printable(g)
        )));
    }
    Ok(())
}

/// A parameter of a statement.
#[derive(Debug, Clone)]
enum Param {
    Str(String),
    OptStr(Option<String>),
    Bool(bool),
    Int(i64),
}

/// A result cell.
#[derive(Debug, Clone)]
enum Cell {
    Null,
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Cell {
    fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Str(s) => Some(s.clone()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Bool(b) => Some(b.to_string()),
        }
    }
    fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            Cell::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
    fn boolean(&self) -> bool {
        match self {
            Cell::Bool(b) => *b,
            Cell::Int(i) => *i != 0,
            Cell::Str(s) => matches!(
                s.trim().to_ascii_lowercase().as_str(),
                "t" | "true" | "1" | "y" | "yes" | "on"
            ),
            Cell::Null => false,
        }
    }
}

struct PgConn {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

enum Backend {
    Pg(PgConn),
    Sqlite(rusqlite::Connection),
}

/// A write handle on one node database.
pub struct AdminDb {
    name: String,
    role: Role,
    timeout: Duration,
    backend: Backend,
    /// Set after a timeout or a lost connection: the session state is unknown.
    broken: bool,
}

impl AdminDb {
    /// Connect to the database `name` at `url` (role from the configuration).
    pub fn open(name: &str, url: &str, role: Role, timeout: Duration) -> Result<AdminDb> {
        let backend = if let Some(path) = url.strip_prefix("sqlite:") {
            Backend::Sqlite(open_sqlite(name, path, timeout)?)
        } else {
            Backend::Pg(open_pg(name, url, timeout)?)
        };
        Ok(AdminDb {
            name: name.to_string(),
            role,
            timeout,
            backend,
            broken: false,
        })
    }

    /// The configured name of this database.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    fn err(&self, kind: ErrorKind, what: impl fmt::Display) -> Error {
        Error::new(kind, format!("database {}: {what}", self.name))
    }

    /// Run one statement on the backend. A temporary failure on PostgreSQL marks the
    /// connection broken: the rest of this run must not act on a half-known state.
    fn guarded<T>(
        &mut self,
        pg: impl FnOnce(&mut PgConn, &str, Duration) -> Result<T>,
        sqlite: impl FnOnce(&mut rusqlite::Connection, &str) -> Result<T>,
    ) -> Result<T> {
        if self.broken {
            return Err(self.err(
                ErrorKind::Temporary,
                "connection lost earlier in this run; run the command again",
            ));
        }
        let name = self.name.clone();
        let timeout = self.timeout;
        let res = match &mut self.backend {
            Backend::Pg(conn) => pg(conn, &name, timeout),
            Backend::Sqlite(c) => sqlite(c, &name),
        };
        if let Err(e) = &res {
            if e.kind() == ErrorKind::Temporary && self.is_postgres() {
                self.broken = true;
            }
        }
        res
    }

    fn exec(&mut self, sql: &str, params: &[Param]) -> Result<u64> {
        self.guarded(
            |pg, name, timeout| pg_exec(pg, name, timeout, sql, params),
            |c, name| sqlite_exec(c, name, sql, params),
        )
    }

    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Vec<Cell>>> {
        self.guarded(
            |pg, name, timeout| pg_query(pg, name, timeout, sql, params),
            |c, name| sqlite_query(c, name, sql, params),
        )
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        let name = self.name.clone();
        let timeout = self.timeout;
        match &mut self.backend {
            Backend::Pg(pg) => {
                let fut = pg.client.batch_execute(sql);
                match pg
                    .rt
                    .block_on(async move { tokio::time::timeout(timeout, fut).await })
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(pg_error(&name, e)),
                    Err(_) => {
                        self.broken = true;
                        Err(timeout_error(&name, timeout))
                    }
                }
            }
            Backend::Sqlite(c) => c.execute_batch(sql).map_err(|e| sqlite_error(&name, e)),
        }
    }

    /// PostgreSQL's `max_prepared_transactions` (None on SQLite, which needs no 2PC).
    pub fn max_prepared_transactions(&mut self) -> Result<Option<i64>> {
        if !self.is_postgres() {
            return Ok(None);
        }
        let rows = self.query(
            "SELECT CAST(setting AS BIGINT) FROM pg_settings WHERE name = 'max_prepared_transactions'",
            &[],
        )?;
        Ok(Some(
            rows.first()
                .and_then(|r| r.first())
                .and_then(Cell::int)
                .unwrap_or(0),
        ))
    }

    /// Start a transaction.
    pub fn begin(&mut self) -> Result<()> {
        self.batch("BEGIN")
    }

    /// Commit the open transaction (one-phase).
    pub fn commit(&mut self) -> Result<()> {
        self.batch("COMMIT")
    }

    /// Roll back the open transaction; errors are ignored (the session may be gone).
    pub fn rollback(&mut self) {
        if !self.broken {
            let _ = self.batch("ROLLBACK");
        }
    }

    /// `PREPARE TRANSACTION gid` (PostgreSQL only).
    pub fn prepare(&mut self, gid: &str) -> Result<()> {
        check_gid(gid)?;
        self.require_pg("PREPARE TRANSACTION")?;
        self.batch(&format!("PREPARE TRANSACTION '{gid}'"))
    }

    /// `COMMIT PREPARED gid`.
    pub fn commit_prepared(&mut self, gid: &str) -> Result<()> {
        check_gid(gid)?;
        self.require_pg("COMMIT PREPARED")?;
        self.batch(&format!("COMMIT PREPARED '{gid}'"))
    }

    /// `ROLLBACK PREPARED gid`.
    pub fn rollback_prepared(&mut self, gid: &str) -> Result<()> {
        check_gid(gid)?;
        self.require_pg("ROLLBACK PREPARED")?;
        self.batch(&format!("ROLLBACK PREPARED '{gid}'"))
    }

    fn require_pg(&self, what: &str) -> Result<()> {
        if self.is_postgres() {
            Ok(())
        } else {
            Err(self.err(ErrorKind::Internal, format!("{what} needs PostgreSQL")))
        }
    }

    /// Prepared transactions left by mailctl in this database (gids).
    pub fn prepared_gids(&mut self) -> Result<Vec<String>> {
        if !self.is_postgres() {
            return Ok(Vec::new());
        }
        let rows = self.query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
             AND gid LIKE 'mailctl\\_%' ORDER BY prepared",
            &[],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| r.first().and_then(Cell::text))
            .collect())
    }

    /// The declared `mail.password` column; None when there is none (smtp role).
    pub fn password_column(&mut self) -> Result<Option<PasswordColumn>> {
        match self.backend {
            Backend::Pg(_) => {
                let rows = self.query(
                    "SELECT CAST(data_type AS TEXT), CAST(character_maximum_length AS BIGINT) \
                     FROM information_schema.columns WHERE table_schema = current_schema() \
                     AND table_name = 'mail' AND column_name = 'password'",
                    &[],
                )?;
                Ok(rows.first().map(|r| PasswordColumn {
                    data_type: r.first().and_then(Cell::text).unwrap_or_default(),
                    max_len: r.get(1).and_then(Cell::int).map(|n| n.max(0) as usize),
                }))
            }
            Backend::Sqlite(_) => {
                let rows = self.query("SELECT name, type FROM pragma_table_info('mail')", &[])?;
                Ok(rows
                    .iter()
                    .find(|r| {
                        r.first()
                            .and_then(Cell::text)
                            .is_some_and(|n| n.eq_ignore_ascii_case("password"))
                    })
                    .map(|r| PasswordColumn {
                        data_type: r.get(1).and_then(Cell::text).unwrap_or_default(),
                        // SQLite does not enforce declared lengths.
                        max_len: None,
                    }))
            }
        }
    }

    /// Widen `mail.password` to varchar([`WIDE_PASSWORD_LEN`]) (PostgreSQL; SQLite has no
    /// limit). Returns true when something was changed.
    pub fn widen_password_column(&mut self) -> Result<bool> {
        let Some(col) = self.password_column()? else {
            return Ok(false);
        };
        if !self.is_postgres() || !matches!(col.max_len, Some(n) if n < WIDE_PASSWORD_LEN) {
            return Ok(false);
        }
        self.batch(&format!(
            "ALTER TABLE mail ALTER COLUMN password TYPE varchar({WIDE_PASSWORD_LEN})"
        ))?;
        Ok(true)
    }

    /// Read everything, by natural keys.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let mut snap = Snapshot::default();
        let rows = self.query(
            "SELECT lower(l.domain) || '.' || lower(m.domain), l.active, m.active, \
             lower(mp.storage1), lower(mp.storage2) \
             FROM maps mp JOIN ldomain l ON mp.ldomain_id = l.id \
             JOIN mdomain m ON mp.mdomain_id = m.id",
            &[],
        )?;
        for r in rows {
            let Some(name) = r.first().and_then(Cell::text) else {
                continue;
            };
            let active = r.get(1).is_some_and(Cell::boolean) && r.get(2).is_some_and(Cell::boolean);
            let primary = r.get(3).and_then(Cell::text).unwrap_or_default();
            let storage2 = r.get(4).and_then(Cell::text).unwrap_or_default();
            let backup = norm_backup(&primary, Some(storage2.clone()));
            snap.domains
                .entry((name, DomainKind::Ldomain))
                .or_insert(DomainState {
                    active,
                    primary,
                    backup,
                    storage2,
                });
        }
        let rows = self.query(
            "SELECT lower(c.domain), c.active, lower(cm.storage1), lower(cm.storage2) \
             FROM co_domain c LEFT JOIN co_maps cm ON cm.domain_id = c.id",
            &[],
        )?;
        for r in rows {
            let Some(name) = r.first().and_then(Cell::text) else {
                continue;
            };
            let active = r.get(1).is_some_and(Cell::boolean);
            let primary = r.get(2).and_then(Cell::text).unwrap_or_default();
            let storage2 = r.get(3).and_then(Cell::text).unwrap_or_default();
            let backup = norm_backup(&primary, Some(storage2.clone()));
            snap.domains
                .entry((name, DomainKind::CoDomain))
                .or_insert(DomainState {
                    active,
                    primary,
                    backup,
                    storage2,
                });
        }
        let password = if self.role == Role::Storage {
            "mail.password"
        } else {
            "NULL"
        };
        let rows = self.query(
            &format!(
                "SELECT lower(l.domain) || '.' || lower(m.domain), lower(mail.mailbox), \
                 mail.active, {password} FROM mail \
                 JOIN ldomain l ON mail.ldomain_id = l.id \
                 JOIN mdomain m ON mail.mdomain_id = m.id \
                 WHERE lower(mail.mailbox) <> 'dir' ORDER BY mail.id"
            ),
            &[],
        )?;
        for r in rows {
            let (Some(domain), Some(mailbox)) = (
                r.first().and_then(Cell::text),
                r.get(1).and_then(Cell::text),
            ) else {
                continue;
            };
            let active = r.get(2).is_some_and(Cell::boolean);
            let password = r.get(3).and_then(Cell::text);
            snap.mailboxes
                .entry((domain, mailbox))
                .or_insert(MailboxState { active, password });
        }
        Ok(snap)
    }

    /// The ids of an ldomain.mdomain domain: (ldomain id, mdomain id), via `maps`.
    fn ldomain_ids(&mut self, domain: &Domain) -> Result<Option<(i64, i64)>> {
        let rows = self.query(
            "SELECT CAST(l.id AS BIGINT), CAST(m.id AS BIGINT) FROM maps mp \
             JOIN ldomain l ON mp.ldomain_id = l.id JOIN mdomain m ON mp.mdomain_id = m.id \
             WHERE lower(l.domain) || '.' || lower(m.domain) = $1",
            &[Param::Str(domain.as_str().to_string())],
        )?;
        Ok(rows.first().and_then(|r| {
            Some((
                r.first().and_then(Cell::int)?,
                r.get(1).and_then(Cell::int)?,
            ))
        }))
    }

    fn co_domain_id(&mut self, domain: &Domain) -> Result<Option<i64>> {
        let rows = self.query(
            "SELECT CAST(id AS BIGINT) FROM co_domain WHERE lower(domain) = $1",
            &[Param::Str(domain.as_str().to_string())],
        )?;
        Ok(rows.first().and_then(|r| r.first()).and_then(Cell::int))
    }

    /// Where `domain` lives here: ldomain wins over co_domain, as on the read side.
    fn locate(&mut self, domain: &Domain) -> Result<Located> {
        if let Some((l, m)) = self.ldomain_ids(domain)? {
            return Ok(Located::Ldomain(l, m));
        }
        if let Some(c) = self.co_domain_id(domain)? {
            return Ok(Located::Co(c));
        }
        Err(self.err(
            ErrorKind::NotFound,
            format!("domain {domain} does not exist (see `mailctl drift`)"),
        ))
    }

    fn mailbox_exists(&mut self, mailbox: &LocalPart, l: i64, m: i64) -> Result<bool> {
        let rows = self.query(
            "SELECT 1 FROM mail WHERE lower(mailbox) = $1 \
             AND ldomain_id = CAST($2 AS BIGINT) AND mdomain_id = CAST($3 AS BIGINT)",
            &[
                Param::Str(mailbox.as_str().to_string()),
                Param::Int(l),
                Param::Int(m),
            ],
        )?;
        Ok(!rows.is_empty())
    }

    fn mailbox_ids(&mut self, mailbox: &LocalPart, domain: &Domain) -> Result<(i64, i64)> {
        match self.locate(domain)? {
            Located::Co(_) => Err(self.err(
                ErrorKind::NotFound,
                format!(
                    "{mailbox}@{domain}: {domain} is a co_domain, which holds no mailboxes \
                     in the seed's schema"
                ),
            )),
            Located::Ldomain(l, m) => {
                if self.mailbox_exists(mailbox, l, m)? {
                    Ok((l, m))
                } else {
                    Err(self.err(
                        ErrorKind::NotFound,
                        format!("mailbox {mailbox}@{domain} does not exist"),
                    ))
                }
            }
        }
    }

    /// Apply one change inside the open transaction.
    pub fn apply(&mut self, change: &Change) -> Result<()> {
        match change {
            Change::AddDomain {
                domain,
                kind,
                primary,
                backup,
                active,
            } => self.add_domain(domain, *kind, primary, backup.as_deref(), *active),
            Change::RemoveDomain { domain } => match self.locate(domain)? {
                Located::Ldomain(l, m) => {
                    let (li, mi) = (Param::Int(l), Param::Int(m));
                    self.exec(
                        "DELETE FROM mail WHERE ldomain_id = CAST($1 AS BIGINT) \
                         AND mdomain_id = CAST($2 AS BIGINT)",
                        &[li.clone(), mi.clone()],
                    )?;
                    self.exec(
                        "DELETE FROM maps WHERE ldomain_id = CAST($1 AS BIGINT)",
                        std::slice::from_ref(&li),
                    )?;
                    self.exec(
                        "DELETE FROM ldomain WHERE id = CAST($1 AS BIGINT) AND NOT EXISTS \
                         (SELECT 1 FROM mail WHERE ldomain_id = CAST($1 AS BIGINT))",
                        &[li],
                    )?;
                    self.exec(
                        "DELETE FROM mdomain WHERE id = CAST($1 AS BIGINT) \
                         AND NOT EXISTS (SELECT 1 FROM maps WHERE mdomain_id = CAST($1 AS BIGINT)) \
                         AND NOT EXISTS (SELECT 1 FROM mail WHERE mdomain_id = CAST($1 AS BIGINT))",
                        &[mi],
                    )?;
                    Ok(())
                }
                Located::Co(c) => {
                    self.exec(
                        "DELETE FROM co_maps WHERE domain_id = CAST($1 AS BIGINT)",
                        &[Param::Int(c)],
                    )?;
                    self.exec(
                        "DELETE FROM co_domain WHERE id = CAST($1 AS BIGINT)",
                        &[Param::Int(c)],
                    )?;
                    Ok(())
                }
            },
            Change::SetDomainActive { domain, active } => {
                match self.locate(domain)? {
                    Located::Ldomain(l, _) => self.exec(
                        "UPDATE ldomain SET active = $1 WHERE id = CAST($2 AS BIGINT)",
                        &[Param::Bool(*active), Param::Int(l)],
                    )?,
                    Located::Co(c) => self.exec(
                        "UPDATE co_domain SET active = $1 WHERE id = CAST($2 AS BIGINT)",
                        &[Param::Bool(*active), Param::Int(c)],
                    )?,
                };
                Ok(())
            }
            Change::SetRoute {
                domain,
                primary,
                backup,
            } => {
                check_node(primary)?;
                let backup = backup.clone().unwrap_or_default();
                if !backup.is_empty() {
                    check_node(&backup)?;
                }
                let n = match self.locate(domain)? {
                    Located::Ldomain(l, _) => self.exec(
                        "UPDATE maps SET storage1 = $1, storage2 = $2 \
                         WHERE ldomain_id = CAST($3 AS BIGINT)",
                        &[
                            Param::Str(primary.clone()),
                            Param::Str(backup),
                            Param::Int(l),
                        ],
                    )?,
                    Located::Co(c) => {
                        let n = self.exec(
                            "UPDATE co_maps SET storage1 = $1, storage2 = $2 \
                             WHERE domain_id = CAST($3 AS BIGINT)",
                            &[
                                Param::Str(primary.clone()),
                                Param::Str(backup.clone()),
                                Param::Int(c),
                            ],
                        )?;
                        if n == 0 {
                            self.exec(
                                "INSERT INTO co_maps (domain_id, storage1, storage2) \
                                 VALUES (CAST($1 AS BIGINT), $2, $3)",
                                &[
                                    Param::Int(c),
                                    Param::Str(primary.clone()),
                                    Param::Str(backup),
                                ],
                            )?
                        } else {
                            n
                        }
                    }
                };
                if n == 0 {
                    return Err(self.err(
                        ErrorKind::NotFound,
                        format!("domain {domain} has no routing row"),
                    ));
                }
                Ok(())
            }
            Change::AddMailbox {
                mailbox,
                domain,
                password,
                active,
            } => {
                if mailbox.is_legacy_dir() {
                    return Err(Error::bad_input(
                        "\"dir\" is the seed's legacy pseudo-mailbox and cannot be a user",
                    ));
                }
                let (l, m) = match self.locate(domain)? {
                    Located::Ldomain(l, m) => (l, m),
                    Located::Co(_) => {
                        return Err(self.err(
                            ErrorKind::BadInput,
                            format!(
                                "{domain} is a co_domain, which holds no mailboxes in the \
                                 seed's schema (routing only)"
                            ),
                        ))
                    }
                };
                if self.mailbox_exists(mailbox, l, m)? {
                    return Err(self.err(
                        ErrorKind::BadInput,
                        format!("mailbox {mailbox}@{domain} already exists"),
                    ));
                }
                if self.role == Role::Storage {
                    self.exec(
                        "INSERT INTO mail (mailbox, password, ldomain_id, mdomain_id, active) \
                         VALUES ($1, $2, CAST($3 AS BIGINT), CAST($4 AS BIGINT), $5)",
                        &[
                            Param::Str(mailbox.as_str().to_string()),
                            Param::OptStr(password.clone()),
                            Param::Int(l),
                            Param::Int(m),
                            Param::Bool(*active),
                        ],
                    )?;
                } else {
                    self.exec(
                        "INSERT INTO mail (mailbox, ldomain_id, mdomain_id, active) \
                         VALUES ($1, CAST($2 AS BIGINT), CAST($3 AS BIGINT), $4)",
                        &[
                            Param::Str(mailbox.as_str().to_string()),
                            Param::Int(l),
                            Param::Int(m),
                            Param::Bool(*active),
                        ],
                    )?;
                }
                Ok(())
            }
            Change::SetPassword {
                mailbox,
                domain,
                password,
            } => {
                let (l, m) = self.mailbox_ids(mailbox, domain)?;
                if self.role == Role::Storage {
                    self.exec(
                        "UPDATE mail SET password = $1 WHERE lower(mailbox) = $2 \
                         AND ldomain_id = CAST($3 AS BIGINT) AND mdomain_id = CAST($4 AS BIGINT)",
                        &[
                            Param::OptStr(password.clone()),
                            Param::Str(mailbox.as_str().to_string()),
                            Param::Int(l),
                            Param::Int(m),
                        ],
                    )?;
                }
                Ok(())
            }
            Change::SetMailboxActive {
                mailbox,
                domain,
                active,
            } => {
                let (l, m) = self.mailbox_ids(mailbox, domain)?;
                self.exec(
                    "UPDATE mail SET active = $1 WHERE lower(mailbox) = $2 \
                     AND ldomain_id = CAST($3 AS BIGINT) AND mdomain_id = CAST($4 AS BIGINT)",
                    &[
                        Param::Bool(*active),
                        Param::Str(mailbox.as_str().to_string()),
                        Param::Int(l),
                        Param::Int(m),
                    ],
                )?;
                Ok(())
            }
            Change::RemoveMailbox { mailbox, domain } => {
                let (l, m) = self.mailbox_ids(mailbox, domain)?;
                self.exec(
                    "DELETE FROM mail WHERE lower(mailbox) = $1 \
                     AND ldomain_id = CAST($2 AS BIGINT) AND mdomain_id = CAST($3 AS BIGINT)",
                    &[
                        Param::Str(mailbox.as_str().to_string()),
                        Param::Int(l),
                        Param::Int(m),
                    ],
                )?;
                Ok(())
            }
        }
    }

    fn add_domain(
        &mut self,
        domain: &Domain,
        kind: DomainKind,
        primary: &str,
        backup: Option<&str>,
        active: bool,
    ) -> Result<()> {
        check_node(primary)?;
        let backup = backup.unwrap_or("").to_string();
        if !backup.is_empty() {
            check_node(&backup)?;
        }
        if self.ldomain_ids(domain)?.is_some() || self.co_domain_id(domain)?.is_some() {
            return Err(self.err(
                ErrorKind::BadInput,
                format!("domain {domain} already exists"),
            ));
        }
        match kind {
            DomainKind::CoDomain => {
                self.exec(
                    "INSERT INTO co_domain (domain, active) VALUES ($1, $2)",
                    &[Param::Str(domain.as_str().to_string()), Param::Bool(active)],
                )?;
                let Some(c) = self.co_domain_id(domain)? else {
                    return Err(self.err(ErrorKind::Internal, "co_domain row vanished"));
                };
                self.exec(
                    "INSERT INTO co_maps (domain_id, storage1, storage2) \
                     VALUES (CAST($1 AS BIGINT), $2, $3)",
                    &[
                        Param::Int(c),
                        Param::Str(primary.to_string()),
                        Param::Str(backup),
                    ],
                )?;
                Ok(())
            }
            DomainKind::Ldomain => {
                let Some((label, parent)) = domain.split_first() else {
                    return Err(Error::bad_input(format!(
                        "{domain} is not a third-level domain (label.second-level); \
                         add it as a co_domain with --co"
                    )));
                };
                if label.len() > 32 || parent.len() > 32 {
                    return Err(Error::bad_input(format!(
                        "{domain}: the seed's ldomain/mdomain columns hold at most 32 \
                         characters per part; add it as a co_domain with --co"
                    )));
                }
                let (label, parent) = (label.to_string(), parent.to_string());
                let m = match self.id_by_name("mdomain", &parent)? {
                    Some(m) => m,
                    None => {
                        self.exec(
                            "INSERT INTO mdomain (domain, active) VALUES ($1, $2)",
                            &[Param::Str(parent.clone()), Param::Bool(true)],
                        )?;
                        self.id_by_name("mdomain", &parent)?
                            .ok_or_else(|| self.err(ErrorKind::Internal, "mdomain row vanished"))?
                    }
                };
                let l = match self.id_by_name("ldomain", &label)? {
                    Some(l) => {
                        let used = self.query(
                            "SELECT lower(m.domain) FROM maps mp JOIN mdomain m \
                             ON mp.mdomain_id = m.id WHERE mp.ldomain_id = CAST($1 AS BIGINT)",
                            &[Param::Int(l)],
                        )?;
                        if let Some(other) =
                            used.first().and_then(|r| r.first()).and_then(Cell::text)
                        {
                            return Err(self.err(
                                ErrorKind::BadInput,
                                format!(
                                    "cannot add {domain}: the label {label:?} is already used by \
                                     {label}.{other} (the seed's ldomain.domain is unique)"
                                ),
                            ));
                        }
                        self.exec(
                            "UPDATE ldomain SET active = $1 WHERE id = CAST($2 AS BIGINT)",
                            &[Param::Bool(active), Param::Int(l)],
                        )?;
                        l
                    }
                    None => {
                        self.exec(
                            "INSERT INTO ldomain (domain, active) VALUES ($1, $2)",
                            &[Param::Str(label.clone()), Param::Bool(active)],
                        )?;
                        self.id_by_name("ldomain", &label)?
                            .ok_or_else(|| self.err(ErrorKind::Internal, "ldomain row vanished"))?
                    }
                };
                self.exec(
                    "INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2) \
                     VALUES (CAST($1 AS BIGINT), CAST($2 AS BIGINT), $3, $4)",
                    &[
                        Param::Int(l),
                        Param::Int(m),
                        Param::Str(primary.to_string()),
                        Param::Str(backup),
                    ],
                )?;
                Ok(())
            }
        }
    }

    fn id_by_name(&mut self, table: &'static str, name: &str) -> Result<Option<i64>> {
        let sql = match table {
            "mdomain" => "SELECT CAST(id AS BIGINT) FROM mdomain WHERE lower(domain) = $1",
            _ => "SELECT CAST(id AS BIGINT) FROM ldomain WHERE lower(domain) = $1",
        };
        let rows = self.query(sql, &[Param::Str(name.to_string())])?;
        Ok(rows.first().and_then(|r| r.first()).and_then(Cell::int))
    }
}

fn de_domain<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Domain, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    Domain::parse(&s, crate::names::Strictness::Admin).map_err(serde::de::Error::custom)
}

fn de_mailbox<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<LocalPart, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    LocalPart::parse_mailbox(&s, crate::names::Strictness::Admin).map_err(serde::de::Error::custom)
}

enum Located {
    Ldomain(i64, i64),
    Co(i64),
}

fn norm_backup(primary: &str, backup: Option<String>) -> Option<String> {
    backup.filter(|b| !b.is_empty() && b != primary)
}

fn check_node(node: &str) -> Result<()> {
    let n = crate::names::parse_node_name(node, crate::names::Strictness::Admin)?;
    if n.len() > 32 {
        return Err(Error::bad_input(format!(
            "node name {n} is longer than the seed's storage1/storage2 columns (32 characters)"
        )));
    }
    Ok(())
}

// ---- PostgreSQL ----

fn timeout_error(name: &str, timeout: Duration) -> Error {
    Error::temporary(format!(
        "database {name}: no answer within {:.1} s (down or hung; a transaction prepared \
         by an interrupted mailctl may hold locks: run mailctl again to resolve it)",
        timeout.as_secs_f64()
    ))
}

fn pg_error(name: &str, e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        use tokio_postgres::error::SqlState;
        let code = db.code();
        let kind = if *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::STRING_DATA_RIGHT_TRUNCATION
            || *code == SqlState::CHECK_VIOLATION
            || *code == SqlState::NOT_NULL_VIOLATION
        {
            ErrorKind::BadInput
        } else if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN {
            ErrorKind::Config
        } else if *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::QUERY_CANCELED
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
        {
            ErrorKind::Temporary
        } else {
            ErrorKind::Internal
        };
        let hint = match kind {
            ErrorKind::Config => " (run `mailctl schema check`)",
            ErrorKind::Temporary => {
                " (try again; `mailctl` resolves leftover prepared transactions first)"
            }
            _ => "",
        };
        return Error::new(kind, format!("database {name}: {}{hint}", db.message()));
    }
    Error::temporary(format!("database {name}: {}", pg_text(&e)))
}

/// The useful text of a driver error (the server's message, or the cause).
fn pg_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

fn open_pg(name: &str, url: &str, timeout: Duration) -> Result<PgConn> {
    // Connection strings, TLS modes and certificates exactly as the read side.
    let info = super::postgres::ConnInfo::parse(url)
        .map_err(|e| Error::new(e.kind(), format!("database {name}: {e}")))?;
    let (mut config, tls) = info
        .connector()
        .map_err(|e| Error::new(e.kind(), format!("database {name}: {e}")))?;
    config.connect_timeout(timeout);
    let desc = info.describe().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the database runtime", e))?;
    let client = rt.block_on(async {
        let connect = async {
            let (client, conn) = config.connect(tls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(Error::temporary(format!(
                "database {name} ({desc}) is unreachable: {}",
                pg_text(&e)
            ))),
            Err(_) => Err(Error::temporary(format!(
                "database {name} ({desc}) is unreachable: no answer within {:.1} s",
                timeout.as_secs_f64()
            ))),
        }
    })?;
    let pg = PgConn { rt, client };
    // Let the server give up on locks before we give up on the server.
    let ms = (timeout.as_millis() as u64).saturating_mul(4) / 5;
    let set = format!("SET lock_timeout = {}", ms.max(100));
    let fut = pg.client.batch_execute(&set);
    match pg
        .rt
        .block_on(async move { tokio::time::timeout(timeout, fut).await })
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(pg_error(name, e)),
        Err(_) => return Err(timeout_error(name, timeout)),
    }
    Ok(pg)
}

fn pg_params(params: &[Param]) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    params
        .iter()
        .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
            match p {
                Param::Str(s) => Box::new(s.clone()),
                Param::OptStr(s) => Box::new(s.clone()),
                Param::Bool(b) => Box::new(*b),
                Param::Int(i) => Box::new(*i),
            }
        })
        .collect()
}

fn pg_exec(
    pg: &mut PgConn,
    name: &str,
    timeout: Duration,
    sql: &str,
    params: &[Param],
) -> Result<u64> {
    let boxed = pg_params(params);
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        boxed.iter().map(|b| b.as_ref() as _).collect();
    let fut = pg.client.execute(sql, &refs);
    match pg
        .rt
        .block_on(async move { tokio::time::timeout(timeout, fut).await })
    {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(pg_error(name, e)),
        Err(_) => Err(timeout_error(name, timeout)),
    }
}

fn pg_query(
    pg: &mut PgConn,
    name: &str,
    timeout: Duration,
    sql: &str,
    params: &[Param],
) -> Result<Vec<Vec<Cell>>> {
    use tokio_postgres::types::Type;
    let boxed = pg_params(params);
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        boxed.iter().map(|b| b.as_ref() as _).collect();
    let fut = pg.client.query(sql, &refs);
    let rows = match pg
        .rt
        .block_on(async move { tokio::time::timeout(timeout, fut).await })
    {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return Err(pg_error(name, e)),
        Err(_) => return Err(timeout_error(name, timeout)),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut cells = Vec::with_capacity(row.len());
        for (i, col) in row.columns().iter().enumerate() {
            let t = col.type_();
            let cell = if *t == Type::BOOL {
                row.try_get::<_, Option<bool>>(i)
                    .ok()
                    .flatten()
                    .map_or(Cell::Null, Cell::Bool)
            } else if *t == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)
                    .ok()
                    .flatten()
                    .map_or(Cell::Null, Cell::Int)
            } else if *t == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)
                    .ok()
                    .flatten()
                    .map_or(Cell::Null, |v| Cell::Int(v.into()))
            } else {
                match row.try_get::<_, Option<String>>(i) {
                    Ok(Some(s)) => Cell::Str(s),
                    Ok(None) => Cell::Null,
                    Err(e) => {
                        return Err(Error::internal(format!(
                            "database {name}: unexpected column type {t}: {e}"
                        )))
                    }
                }
            };
            cells.push(cell);
        }
        out.push(cells);
    }
    Ok(out)
}

// ---- SQLite ----

fn sqlite_error(name: &str, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => ErrorKind::Temporary,
        Some(ErrorCode::ConstraintViolation) => ErrorKind::BadInput,
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => ErrorKind::Config,
        _ => {
            let msg = e.to_string();
            if msg.contains("no such table") || msg.contains("no such column") {
                ErrorKind::Config
            } else {
                ErrorKind::Internal
            }
        }
    };
    let hint = if kind == ErrorKind::Config {
        " (run `mailctl schema check`)"
    } else {
        ""
    };
    Error::new(kind, format!("database {name}: {e}{hint}"))
}

fn open_sqlite(name: &str, path: &str, timeout: Duration) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let c = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        Error::temporary(format!(
            "database {name} (sqlite:{path}) is unreachable: {e}"
        ))
    })?;
    c.busy_timeout(timeout).map_err(|e| sqlite_error(name, e))?;
    Ok(c)
}

fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sqlite_params(params: &[Param]) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    params
        .iter()
        .map(|p| match p {
            Param::Str(s) => Value::Text(s.clone()),
            Param::OptStr(Some(s)) => Value::Text(s.clone()),
            Param::OptStr(None) => Value::Null,
            Param::Bool(b) => Value::Integer(i64::from(*b)),
            Param::Int(i) => Value::Integer(*i),
        })
        .collect()
}

fn sqlite_exec(
    c: &mut rusqlite::Connection,
    name: &str,
    sql: &str,
    params: &[Param],
) -> Result<u64> {
    let values = sqlite_params(params);
    c.execute(&sqlite_sql(sql), rusqlite::params_from_iter(values.iter()))
        .map(|n| n as u64)
        .map_err(|e| sqlite_error(name, e))
}

fn sqlite_query(
    c: &mut rusqlite::Connection,
    name: &str,
    sql: &str,
    params: &[Param],
) -> Result<Vec<Vec<Cell>>> {
    use rusqlite::types::ValueRef;
    let values = sqlite_params(params);
    let mut stmt = c
        .prepare(&sqlite_sql(sql))
        .map_err(|e| sqlite_error(name, e))?;
    let ncols = stmt.column_count();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(values.iter()))
        .map_err(|e| sqlite_error(name, e))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| sqlite_error(name, e))? {
        let mut cells = Vec::with_capacity(ncols);
        for i in 0..ncols {
            let v = row.get_ref(i).map_err(|e| sqlite_error(name, e))?;
            cells.push(match v {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(n) => Cell::Int(n),
                ValueRef::Real(f) => Cell::Str(f.to_string()),
                ValueRef::Text(t) => Cell::Str(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(_) => Cell::Null,
            });
        }
        out.push(cells);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip_and_are_safe() {
        let g = gid("20260101t000000-123-abcd", 2).unwrap();
        assert_eq!(g, "mailctl_20260101t000000-123-abcd_2");
        assert_eq!(change_id_of(&g), Some("20260101t000000-123-abcd"));
        assert!(gid("x'; drop", 0).is_err());
        assert_eq!(change_id_of("other_1"), None);
    }

    #[test]
    fn change_display_never_shows_passwords() {
        let c = Change::AddMailbox {
            mailbox: LocalPart::parse_mailbox("ivanov", crate::names::Strictness::Admin).unwrap(),
            domain: Domain::parse("msk.domain.ru", crate::names::Strictness::Admin).unwrap(),
            password: Some("{SHA512-CRYPT}$6$secret".into()),
            active: true,
        };
        assert!(!c.to_string().contains("secret"));
    }
}
