//! The directory's queries, written once for both backends.
//!
//! A backend implements [`Sql`] (run a parameterised statement, return plain values); the
//! operations of [`super::Directory`] and [`super::write::DirectoryWriter`] are generic
//! functions over it. SQL uses `$1`-style placeholders (SQLite maps them to `?1`), only
//! constructs both PostgreSQL and SQLite understand, and matches names case-insensitively
//! like the seed (`lower(ldomain.domain || '.' || mdomain.domain) = $1`).
//!
//! Every value that comes from outside is a bound parameter; table and column names are
//! constants of this module.

use super::{DomainRecord, DomainSource, MailboxRecord};
use crate::error::Result;
use crate::names::{Domain, LocalPart, Strictness};
use std::collections::{BTreeMap, BTreeSet};

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
}

impl Val {
    pub(crate) fn text(&self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s.clone()),
            Val::Int(i) => Some(i.to_string()),
            Val::Bool(b) => Some(b.to_string()),
            Val::Null => None,
        }
    }
    pub(crate) fn bool(&self) -> bool {
        match self {
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Text(s) => matches!(
                s.trim().to_ascii_lowercase().as_str(),
                "t" | "true" | "1" | "y" | "yes" | "on"
            ),
            Val::Null => false,
        }
    }
    pub(crate) fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Text(s) => s.trim().parse().ok(),
            Val::Bool(b) => Some(i64::from(*b)),
            Val::Null => None,
        }
    }
}

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Text(&'a str),
    Bool(bool),
    /// NULL for a text column.
    NullText,
}

/// What a backend provides. Every call is bounded in time by the backend.
pub(crate) trait Sql {
    /// Rows of a query.
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Val>>>;
    /// Run a statement; the number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64>;
    /// Run several statements without parameters.
    fn batch(&mut self, sql: &str) -> Result<()>;
    /// Roll back an open transaction (best effort; never waits for a lost connection).
    fn rollback(&mut self);
    /// Columns (name, type) of a table, None when the table does not exist.
    fn columns(&mut self, table: &str) -> Result<Option<Vec<(String, String)>>>;
    /// Does `mail` have a `password` column? (cached per connection by the backend)
    fn has_password(&mut self) -> Result<bool>;
}

const ROUTE_SQL: &str = "\
SELECT 0, ldomain.domain || '.' || mdomain.domain, ldomain.active AND mdomain.active, \
       maps.storage1, maps.storage2 \
FROM maps INNER JOIN ldomain ON (maps.ldomain_id = ldomain.id) \
          INNER JOIN mdomain ON (maps.mdomain_id = mdomain.id) \
WHERE lower(ldomain.domain || '.' || mdomain.domain) = $1 \
  AND (lower(ldomain.domain) = $2 OR ldomain.domain LIKE '%.%') \
UNION ALL \
SELECT 1, co_domain.domain, co_domain.active, co_maps.storage1, co_maps.storage2 \
FROM co_maps INNER JOIN co_domain ON (co_maps.domain_id = co_domain.id) \
WHERE lower(co_domain.domain) = $1";

const ALL_ROUTES_SQL: &str = "\
SELECT 0, ldomain.domain || '.' || mdomain.domain, ldomain.active AND mdomain.active, \
       maps.storage1, maps.storage2 \
FROM maps INNER JOIN ldomain ON (maps.ldomain_id = ldomain.id) \
          INNER JOIN mdomain ON (maps.mdomain_id = mdomain.id) \
UNION ALL \
SELECT 1, co_domain.domain, co_domain.active, co_maps.storage1, co_maps.storage2 \
FROM co_maps INNER JOIN co_domain ON (co_maps.domain_id = co_domain.id)";

const NODES_SQL: &str = "\
SELECT storage1, storage2 FROM maps UNION SELECT storage1, storage2 FROM co_maps";

fn mail_sql(with_password: bool, one: bool) -> String {
    let pw = if with_password {
        "mail.password"
    } else {
        "NULL"
    };
    let mut s = format!(
        "SELECT mail.mailbox, ldomain.domain || '.' || mdomain.domain, mail.active, \
                ldomain.active AND mdomain.active, {pw} \
         FROM mail INNER JOIN ldomain ON (mail.ldomain_id = ldomain.id) \
                   INNER JOIN mdomain ON (mail.mdomain_id = mdomain.id) \
         WHERE lower(mail.mailbox) <> 'dir'"
    );
    if one {
        s.push_str(
            " AND lower(mail.mailbox) = $1 \
              AND lower(ldomain.domain || '.' || mdomain.domain) = $2 \
              AND (lower(ldomain.domain) = $3 OR ldomain.domain LIKE '%.%') \
              ORDER BY mail.id LIMIT 1",
        );
    }
    s
}

/// A node name as stored (`storage1`/`storage2`): trimmed, lower-case; None when empty.
pub(crate) fn node_name(v: &Val) -> Option<String> {
    let s = v.text()?;
    let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

/// Normalise a node name given by a caller for comparisons.
pub(crate) fn norm_node(node: &str) -> String {
    node.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn route_record(row: &[Val]) -> Option<DomainRecord> {
    let [src, name, active, s1, s2] = row else {
        return None;
    };
    let source = if src.int() == Some(0) {
        DomainSource::Ldomain
    } else {
        DomainSource::CoDomain
    };
    let name = name.text()?;
    let domain = match Domain::parse(name.trim(), Strictness::Lookup) {
        Ok(d) => d,
        Err(e) => {
            log::warn!("directory: ignoring a domain row with an invalid name: {e}");
            return None;
        }
    };
    let Some(primary) = node_name(s1) else {
        log::warn!("directory: domain {domain} has an empty storage1; ignored");
        return None;
    };
    let backup = node_name(s2).filter(|b| *b != primary);
    Some(DomainRecord {
        domain,
        active: active.bool(),
        primary,
        backup,
        source,
    })
}

/// Merge route rows: one record per domain, the ldomain row winning over a co_domain row.
fn merge_routes(rows: &[Vec<Val>]) -> BTreeMap<Domain, DomainRecord> {
    let mut out: BTreeMap<Domain, DomainRecord> = BTreeMap::new();
    for rec in rows.iter().filter_map(|r| route_record(r)) {
        match out.get(&rec.domain) {
            None => {
                out.insert(rec.domain.clone(), rec);
            }
            Some(prev) => {
                if prev.source != rec.source {
                    log::warn!(
                        "directory: {} is both an ldomain.mdomain (maps) and a co_domain \
                         (co_maps); using the ldomain row",
                        rec.domain
                    );
                } else {
                    log::warn!(
                        "directory: {} appears more than once in {}; using the first row",
                        rec.domain,
                        if rec.source == DomainSource::Ldomain {
                            "maps"
                        } else {
                            "co_maps"
                        }
                    );
                }
                if prev.source == DomainSource::CoDomain && rec.source == DomainSource::Ldomain {
                    out.insert(rec.domain.clone(), rec);
                }
            }
        }
    }
    out
}

/// The domain's first label. An ldomain row without a dot can only match a domain whose
/// first label it is: the queries filter `ldomain` on it before joining (no concatenation
/// per joined row), and still match ldomain rows that contain a dot the slow way.
fn first_label(domain: &Domain) -> &str {
    domain.as_str().split('.').next().unwrap_or_default()
}

pub(crate) fn route(db: &mut dyn Sql, domain: &Domain) -> Result<Option<DomainRecord>> {
    let rows = db.query(
        ROUTE_SQL,
        &[
            Param::Text(domain.as_str()),
            Param::Text(first_label(domain)),
        ],
    )?;
    Ok(merge_routes(&rows).remove(domain))
}

pub(crate) fn is_local_domain(db: &mut dyn Sql, domain: &Domain, node: &str) -> Result<bool> {
    let node = norm_node(node);
    Ok(route(db, domain)?.is_some_and(|r| r.active && r.primary == node))
}

pub(crate) fn domains(db: &mut dyn Sql, primary: Option<&str>) -> Result<Vec<DomainRecord>> {
    let rows = db.query(ALL_ROUTES_SQL, &[])?;
    let want = primary.map(norm_node);
    Ok(merge_routes(&rows)
        .into_values()
        .filter(|r| match &want {
            Some(n) => r.primary == *n,
            None => true,
        })
        .collect())
}

pub(crate) fn node_names(db: &mut dyn Sql) -> Result<BTreeSet<String>> {
    let rows = db.query(NODES_SQL, &[])?;
    Ok(rows.iter().flatten().filter_map(node_name).collect())
}

fn mailbox_record(row: &[Val]) -> Option<MailboxRecord> {
    let [mailbox, domain, mactive, dactive, password] = row else {
        return None;
    };
    let mb = mailbox.text()?;
    let mailbox = match LocalPart::parse_mailbox(mb.trim(), Strictness::Lookup) {
        Ok(m) if !m.is_legacy_dir() => m,
        Ok(_) => return None,
        Err(e) => {
            log::warn!("directory: ignoring a mail row with an invalid mailbox: {e}");
            return None;
        }
    };
    let domain = match Domain::parse(domain.text()?.trim(), Strictness::Lookup) {
        Ok(d) => d,
        Err(e) => {
            log::warn!("directory: ignoring a mail row with an invalid domain: {e}");
            return None;
        }
    };
    Some(MailboxRecord {
        mailbox,
        domain,
        mailbox_active: mactive.bool(),
        domain_active: dactive.bool(),
        password: password.text(),
    })
}

pub(crate) fn mailbox(
    db: &mut dyn Sql,
    mailbox: &LocalPart,
    domain: &Domain,
) -> Result<Option<MailboxRecord>> {
    if mailbox.is_legacy_dir() {
        return Ok(None);
    }
    let with_password = db.has_password()?;
    let rows = db.query(
        &mail_sql(with_password, true),
        &[
            Param::Text(mailbox.as_str()),
            Param::Text(domain.as_str()),
            Param::Text(first_label(domain)),
        ],
    )?;
    Ok(rows.iter().find_map(|r| mailbox_record(r)))
}

pub(crate) fn mailboxes(db: &mut dyn Sql) -> Result<Vec<MailboxRecord>> {
    let with_password = db.has_password()?;
    let rows = db.query(&mail_sql(with_password, false), &[])?;
    let mut out: Vec<MailboxRecord> = rows.iter().filter_map(|r| mailbox_record(r)).collect();
    out.sort_by_key(|m| m.address());
    out.dedup_by(|a, b| a.address() == b.address());
    Ok(out)
}
