//! The directory: which domains exist, where they live, which mailboxes they hold.
//! This module (and its backends) is the only place in the toolkit that knows SQL.
//!
//! Backends: PostgreSQL ([`postgres`], the seed's schema unchanged) and SQLite
//! ([`sqlite`], the embedded default). Open one with [`open`].

use crate::error::Result;
use crate::names::{Domain, LocalPart};
use std::collections::BTreeSet;
use std::time::Duration;

mod pgtls;
pub mod postgres;
pub mod schema;
mod sql;
pub mod sqlite;
pub mod txn;
pub mod write;

pub use write::{open_writer, DirectoryWriter};

/// Where a domain's row lives in the seed's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainSource {
    /// A third-level domain: `ldomain.domain || '.' || mdomain.domain`, routed by `maps`.
    Ldomain,
    /// A whole domain in `co_domain`, routed by `co_maps`.
    CoDomain,
}

/// A domain with its routing: primary node (`storage1`) and backup (`storage2`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainRecord {
    pub domain: Domain,
    /// `ldomain.active` (and `mdomain.active`) or `co_domain.active`.
    pub active: bool,
    /// `storage1`, lower-cased.
    pub primary: String,
    /// `storage2`, lower-cased; None when empty or equal to the primary.
    pub backup: Option<String>,
    pub source: DomainSource,
}

/// A mailbox row joined with its domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRecord {
    /// `mail.mailbox`, lower-cased.
    pub mailbox: LocalPart,
    pub domain: Domain,
    /// `mail.active`.
    pub mailbox_active: bool,
    /// The domain's active flag (ldomain and mdomain).
    pub domain_active: bool,
    /// The stored password (`mail.password`); None on smtp-role databases or when NULL.
    pub password: Option<String>,
}

impl MailboxRecord {
    /// `mailbox@domain`.
    pub fn address(&self) -> String {
        format!("{}@{}", self.mailbox, self.domain)
    }
    /// Both the mailbox and its domain are active: it may log in and receive new mail.
    pub fn is_active(&self) -> bool {
        self.mailbox_active && self.domain_active
    }
}

/// Read side of the directory. Every call is bounded in time: a database that is down or
/// hung yields an error of kind [`crate::error::ErrorKind::Temporary`], never "not found".
pub trait Directory: Send {
    /// A short description for logs and messages (backend and name; never a password).
    fn describe(&self) -> String;

    /// Is `domain` active and is `node` its primary (`maps.storage1` / `co_maps.storage1`)?
    fn is_local_domain(&mut self, domain: &Domain, node: &str) -> Result<bool>;

    /// The domain's routing, from `maps` (ldomain.mdomain) or `co_maps` (co_domain).
    /// When a name is both, the ldomain row wins (and the conflict is logged).
    /// Ok(None) when the domain is unknown.
    fn route(&mut self, domain: &Domain) -> Result<Option<DomainRecord>>;

    /// The mailbox `mailbox@domain` (the legacy pseudo-mailbox `dir` is never returned).
    /// `mailbox` is matched as given (strip a `+tag` subaddress before calling).
    /// Only ldomain domains hold mailboxes: `mail.ldomain_id` references `ldomain`, so
    /// co_domain recipients are not mailboxes in this schema (Ok(None) here; the lookup
    /// layer decides what a co_domain recipient means).
    fn mailbox(&mut self, mailbox: &LocalPart, domain: &Domain) -> Result<Option<MailboxRecord>>;

    /// Several mailboxes at once: one answer per key, in order, each what
    /// [`Directory::mailbox`] answers for it. The default asks one by one; PostgreSQL finds
    /// the names stored as asked in one statement (the login cache refresher of
    /// `mailauth serve` asks for every entry due, a few hundred a second on a busy proxy).
    fn mailboxes_of(&mut self, keys: &[(LocalPart, Domain)]) -> Result<Vec<Option<MailboxRecord>>> {
        keys.iter().map(|(m, d)| self.mailbox(m, d)).collect()
    }

    /// What an SMTP node asks per recipient: the domain's routing ([`Directory::route`])
    /// and, when it is an ldomain.mdomain domain, the mailbox ([`Directory::mailbox`]; None
    /// for a co_domain). The default asks one then the other; PostgreSQL sends both
    /// statements at once (one round trip for a one-shot `mailmap rcpt-route`).
    fn route_and_mailbox(
        &mut self,
        mailbox: &LocalPart,
        domain: &Domain,
    ) -> Result<(Option<DomainRecord>, Option<MailboxRecord>)> {
        let Some(rec) = self.route(domain)? else {
            return Ok((None, None));
        };
        if rec.source != DomainSource::Ldomain {
            return Ok((Some(rec), None));
        }
        let m = self.mailbox(mailbox, domain)?;
        Ok((Some(rec), m))
    }

    /// All domains, or those whose primary is `primary` (with their backup).
    fn domains(&mut self, primary: Option<&str>) -> Result<Vec<DomainRecord>>;

    /// All mailboxes (for Dovecot's userdb iteration), sorted by address.
    fn mailboxes(&mut self) -> Result<Vec<MailboxRecord>>;

    /// Every node name that appears in `maps` / `co_maps` (storage1 or storage2), lower-cased.
    fn node_names(&mut self) -> Result<BTreeSet<String>>;

    /// Does the database answer now? One trivial statement, bounded like every call:
    /// what a cached record needs before it may be trusted (`mailauth serve`'s login cache).
    fn ping(&mut self) -> Result<()>;
}

/// Default bound on every database wait (connect and each query).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Open a directory from a connection string: `sqlite:PATH`, `postgres://…`,
/// `postgresql://…`, or libpq `key=value` pairs (TLS: `sslmode`, `sslrootcert`; see
/// [`postgres`]). A missing SQLite file is a configuration error (never created here).
/// PostgreSQL connects lazily, on the first call, and reconnects after a failure; every
/// wait is bounded by `timeout` (see [`DEFAULT_TIMEOUT`], `Config::db_timeout`). For
/// writes, see [`open_writer`].
pub fn open(url: &str, timeout: Duration) -> Result<Box<dyn Directory>> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        Ok(Box::new(sqlite::SqliteDirectory::open(path, timeout)?))
    } else {
        Ok(Box::new(postgres::PgDirectory::connect(url, timeout)?))
    }
}
