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

use super::{Directory, DomainRecord, DomainSource, MailboxRecord};
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
    /// [`super::Directory::describe`].
    fn describe(&self) -> String;
    /// Rows of a query.
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Val>>>;
    /// Run a statement; the number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64>;
    /// Run several statements without parameters.
    fn batch(&mut self, sql: &str) -> Result<()>;
    /// Roll back an open transaction (best effort; never waits for a lost connection).
    fn rollback(&mut self);
    /// The query for [`Sql::columns`]: `$1` a table name, rows (column name, type) in order.
    fn columns_sql(&self) -> &'static str;
    /// Columns (name, type) of a table, None when the table does not exist.
    fn columns(&mut self, table: &str) -> Result<Option<Vec<(String, String)>>> {
        let rows = self.query(self.columns_sql(), &[Param::Text(table)])?;
        if rows.is_empty() {
            return Ok(None);
        }
        let text = |r: &Vec<Val>, i: usize| r.get(i).and_then(Val::text).unwrap_or_default();
        Ok(Some(
            rows.iter().map(|r| (text(r, 0), text(r, 1))).collect(),
        ))
    }
    /// Does `mail` have a `password` column? (cached per connection by the backend)
    fn has_password(&mut self) -> Result<bool>;
    /// Rows of two independent queries. The default runs one then the other; PostgreSQL
    /// pipelines them (both sent at once, one round trip).
    #[allow(clippy::type_complexity)]
    fn query_pair(
        &mut self,
        a: (&str, &[Param<'_>]),
        b: (&str, &[Param<'_>]),
    ) -> Result<(Vec<Vec<Val>>, Vec<Vec<Val>>)> {
        let ra = self.query(a.0, a.1)?;
        let rb = self.query(b.0, b.1)?;
        Ok((ra, rb))
    }
    /// The SQL dialect, for the few constructs written differently per backend.
    fn dialect(&self) -> Dialect {
        Dialect::Plain
    }
    /// The select-list expression for `mail.password` in a one-mailbox lookup: the column
    /// when it exists, else NULL. Default: ask [`Sql::has_password`] (a catalog probe, cached
    /// per connection). PostgreSQL reads it as `to_jsonb(mail) ->> 'password'`, which is
    /// NULL when there is no such column, so a one-shot process saves the probe's round trip.
    fn password_expr(&mut self) -> Result<&'static str> {
        Ok(if self.has_password()? {
            "mail.password"
        } else {
            "NULL"
        })
    }
}

/// How a backend spells a few things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite (and the default): `lower()` folds ASCII only, and is cheap.
    Plain,
    /// PostgreSQL: `lower()` under the database's collation (e.g. C.UTF-8, en_US.UTF-8) goes
    /// through the C library's wide-character functions, ~0.3-0.5 µs per row; on a table
    /// without an expression index (the seed's schema) that is milliseconds per lookup.
    Postgres,
}

/// `lower(EXPR) = PARAM`, the case-insensitive match of a name column against a lower-case
/// ASCII parameter (every name we look up is validated ASCII, see `crate::names`).
///
/// On PostgreSQL this is preceded by the same comparison under the "C" collation, which
/// folds ASCII only and is ~10× cheaper per row: a sequential scan evaluates it first (equal
/// cost estimates keep the written order) and runs the collation-aware `lower()` only on
/// the rows that pass; an expression index on `lower(EXPR)` (`mailctl schema init`) is still
/// used. Both must hold, so the rows matched are those `lower(EXPR) = PARAM` matched before,
/// minus stored names with non-ASCII letters that fold to ASCII (invalid names anyway).
fn ci_eq(d: Dialect, expr: &str, param: &str) -> String {
    match d {
        Dialect::Plain => format!("lower({expr}) = {param}"),
        Dialect::Postgres => {
            format!("lower(({expr}) COLLATE \"C\") = {param} AND lower({expr}) = {param}")
        }
    }
}

/// The ldomain row of `$1` (a domain) by its exact name, driven from `mdomain` (a handful of
/// rows): for each mdomain that `$1` ends with, the ldomain named by the rest of `$1` is one
/// lookup in the `UNIQUE (domain)` index of the seed's `ldomain` (dotted ldomain names too).
/// `{cols}` is the select list, `{extra}` more joins, `{cond}` more conditions.
fn exact_ldomain(param: &str, cols: &str, extra: &str, cond: &str) -> String {
    format!(
        "SELECT {cols} FROM mdomain \
         INNER JOIN ldomain ON (ldomain.domain = \
             left({param}, length({param}) - length(mdomain.domain) - 1)) \
         {extra} \
         WHERE right({param}, length(mdomain.domain) + 1) = '.' || mdomain.domain{cond}"
    )
}

/// On PostgreSQL, the queries for one domain or mailbox first match the names exactly as
/// stored (lower case: mailctl writes them so, and the seed's own Exim queries compared them
/// exactly), which the seed's unique indexes answer at once; only when that finds nothing do
/// they run the case-insensitive match (sequential scans on the seed's schema). Both parts are
/// one statement: the fallback is gated by `NOT EXISTS` on the exact part, which PostgreSQL
/// evaluates once, before the fallback's scans (or not at all: "never executed"). `exact` is
/// referenced twice, so every PostgreSQL version computes it once (no `MATERIALIZED`, which
/// needs 12+); `to_jsonb` (9.5+) is the newest function used.
/// A name stored in several letter cases therefore resolves to its lower-case row.
fn exact_first(exact: &str, fallback: &str) -> String {
    format!(
        "WITH exact AS ({exact}) \
         SELECT * FROM exact \
         UNION ALL \
         SELECT * FROM ({fallback}) AS ci WHERE NOT EXISTS (SELECT 1 FROM exact)"
    )
}

fn route_sql(d: Dialect) -> String {
    let ci = route_sql_ci(d);
    if d != Dialect::Postgres {
        return ci;
    }
    let exact = format!(
        "{} UNION ALL \
         SELECT 1, co_domain.domain, co_domain.active, co_maps.storage1, co_maps.storage2 \
         FROM co_maps INNER JOIN co_domain ON (co_maps.domain_id = co_domain.id) \
         WHERE co_domain.domain = $1",
        exact_ldomain(
            "$1",
            "0, ldomain.domain || '.' || mdomain.domain, ldomain.active AND mdomain.active, \
             maps.storage1, maps.storage2",
            "INNER JOIN maps ON (maps.ldomain_id = ldomain.id AND maps.mdomain_id = mdomain.id)",
            "",
        )
    );
    exact_first(&exact, &ci)
}

/// The case-insensitive route query: $1 domain, $2 its first label.
fn route_sql_ci(d: Dialect) -> String {
    format!(
        "SELECT 0, ldomain.domain || '.' || mdomain.domain, ldomain.active AND mdomain.active, \
                maps.storage1, maps.storage2 \
         FROM maps INNER JOIN ldomain ON (maps.ldomain_id = ldomain.id) \
                   INNER JOIN mdomain ON (maps.mdomain_id = mdomain.id) \
         WHERE {} \
           AND ({} OR ldomain.domain LIKE '%.%') \
         UNION ALL \
         SELECT 1, co_domain.domain, co_domain.active, co_maps.storage1, co_maps.storage2 \
         FROM co_maps INNER JOIN co_domain ON (co_maps.domain_id = co_domain.id) \
         WHERE {}",
        ci_eq(d, "ldomain.domain || '.' || mdomain.domain", "$1"),
        ci_eq(d, "ldomain.domain", "$2"),
        ci_eq(d, "co_domain.domain", "$1"),
    )
}

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

const MAIL_COLS: &str = "mail.mailbox, ldomain.domain || '.' || mdomain.domain, \
    mail.active, ldomain.active AND mdomain.active";
const MAIL_FROM: &str = "FROM mail INNER JOIN ldomain ON (mail.ldomain_id = ldomain.id) \
    INNER JOIN mdomain ON (mail.mdomain_id = mdomain.id)";

/// Every mailbox (the legacy `dir` excluded).
fn all_mail_sql(pw: &str) -> String {
    format!("SELECT {MAIL_COLS}, {pw} {MAIL_FROM} WHERE lower(mail.mailbox) <> 'dir'")
}

/// One mailbox: $1 mailbox, $2 domain, $3 its first label (the caller excludes `dir`).
fn one_mail_sql(d: Dialect, pw: &str) -> String {
    let ci = format!(
        "SELECT {MAIL_COLS}, {pw} {MAIL_FROM} WHERE {} AND {} AND ({} OR ldomain.domain LIKE '%.%') \
         ORDER BY mail.id LIMIT 1",
        ci_eq(d, "mail.mailbox", "$1"),
        ci_eq(d, "ldomain.domain || '.' || mdomain.domain", "$2"),
        ci_eq(d, "ldomain.domain", "$3"),
    );
    if d != Dialect::Postgres {
        return ci;
    }
    let exact = format!(
        "{} ORDER BY mail.id LIMIT 1",
        exact_ldomain(
            "$2",
            &format!("{MAIL_COLS}, {pw}"),
            "INNER JOIN mail ON (mail.ldomain_id = ldomain.id AND mail.mdomain_id = mdomain.id)",
            " AND mail.mailbox = $1",
        )
    );
    exact_first(&exact, &ci)
}

/// Many mailboxes by their exact names (PostgreSQL): `$1` the mailboxes, `$2` their domains,
/// one per line; each row starts with its key's position (from 1). Per key, the rows
/// [`one_mail_sql`]'s exact part finds, in the same order (`mail.id`).
fn many_mail_exact_sql(pw: &str) -> String {
    format!(
        "SELECT k.i, {MAIL_COLS}, {pw} \
         FROM unnest(string_to_array($1, chr(10)), string_to_array($2, chr(10))) \
              WITH ORDINALITY AS k(mailbox, domain, i) \
         INNER JOIN mdomain \
             ON (right(k.domain, length(mdomain.domain) + 1) = '.' || mdomain.domain) \
         INNER JOIN ldomain \
             ON (ldomain.domain = left(k.domain, length(k.domain) - length(mdomain.domain) - 1)) \
         INNER JOIN mail ON (mail.ldomain_id = ldomain.id AND mail.mdomain_id = mdomain.id \
                             AND mail.mailbox = k.mailbox) \
         ORDER BY k.i, mail.id"
    )
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
    let sql = route_sql(db.dialect());
    let rows = db.query(
        &sql,
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
    let sql = one_mail_sql(db.dialect(), db.password_expr()?);
    let rows = db.query(
        &sql,
        &[
            Param::Text(mailbox.as_str()),
            Param::Text(domain.as_str()),
            Param::Text(first_label(domain)),
        ],
    )?;
    Ok(rows.iter().find_map(|r| mailbox_record(r)))
}

/// [`super::Directory::mailboxes_of`]. On PostgreSQL, one statement finds every key whose
/// names are stored as asked (lower case, as mailctl writes them: the usual case); a key it
/// does not find is asked alone by [`mailbox`] (exact, then case-insensitive), so every
/// answer equals [`mailbox`]'s for its key. Elsewhere (SQLite: no round trips) one by one.
pub(crate) fn mailboxes_of(
    db: &mut dyn Sql,
    keys: &[(LocalPart, Domain)],
) -> Result<Vec<Option<MailboxRecord>>> {
    let mut out: Vec<Option<MailboxRecord>> = keys.iter().map(|_| None).collect();
    // Keys answered (a legacy `dir` is None without asking, as in `mailbox`).
    let mut done: Vec<bool> = keys.iter().map(|(m, _)| m.is_legacy_dir()).collect();
    // Validated names hold no line feed (the separator); checked all the same.
    let separable = keys
        .iter()
        .all(|(m, d)| !m.as_str().contains('\n') && !d.as_str().contains('\n'));
    if db.dialect() == Dialect::Postgres && keys.len() > 1 && separable {
        let sql = many_mail_exact_sql(db.password_expr()?);
        let join = |f: &dyn Fn(&(LocalPart, Domain)) -> &str| {
            keys.iter().map(f).collect::<Vec<_>>().join("\n")
        };
        let (mailboxes, domains) = (join(&|k| k.0.as_str()), join(&|k| k.1.as_str()));
        let rows = db.query(&sql, &[Param::Text(&mailboxes), Param::Text(&domains)])?;
        for row in &rows {
            let Some((position, rest)) = row.split_first() else {
                continue;
            };
            let Some(i) = position
                .int()
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| p.checked_sub(1))
                .filter(|i| *i < keys.len())
            else {
                continue;
            };
            // The first row of a key decides, as `LIMIT 1` does for one key.
            if !done[i] {
                done[i] = true;
                out[i] = mailbox_record(rest);
            }
        }
    }
    for (i, (m, d)) in keys.iter().enumerate() {
        if !done[i] {
            out[i] = mailbox(db, m, d)?;
        }
    }
    Ok(out)
}

/// [`super::Directory::route_and_mailbox`] in one [`Sql::query_pair`] (the mailbox query
/// runs whatever the route: on PostgreSQL it costs no extra round trip).
#[allow(clippy::type_complexity)]
pub(crate) fn route_and_mailbox(
    db: &mut dyn Sql,
    mailbox: &LocalPart,
    domain: &Domain,
) -> Result<(Option<DomainRecord>, Option<MailboxRecord>)> {
    if mailbox.is_legacy_dir() {
        return Ok((route(db, domain)?, None));
    }
    let d = db.dialect();
    let rsql = route_sql(d);
    let msql = one_mail_sql(d, db.password_expr()?);
    let label = first_label(domain);
    let (rrows, mrows) = db.query_pair(
        (&rsql, &[Param::Text(domain.as_str()), Param::Text(label)]),
        (
            &msql,
            &[
                Param::Text(mailbox.as_str()),
                Param::Text(domain.as_str()),
                Param::Text(label),
            ],
        ),
    )?;
    let rec = merge_routes(&rrows).remove(domain);
    let m = match &rec {
        Some(r) if r.source == DomainSource::Ldomain => {
            mrows.iter().find_map(|r| mailbox_record(r))
        }
        _ => None,
    };
    Ok((rec, m))
}

pub(crate) fn mailboxes(db: &mut dyn Sql) -> Result<Vec<MailboxRecord>> {
    let pw = if db.has_password()? {
        "mail.password"
    } else {
        "NULL"
    };
    let rows = db.query(&all_mail_sql(pw), &[])?;
    let mut out: Vec<MailboxRecord> = rows.iter().filter_map(|r| mailbox_record(r)).collect();
    out.sort_by_key(|m| m.address());
    out.dedup_by(|a, b| a.address() == b.address());
    Ok(out)
}

/// Every SQL backend is a directory through the queries of this module.
impl<T: Sql + Send> Directory for T {
    fn describe(&self) -> String {
        Sql::describe(self)
    }
    fn is_local_domain(&mut self, domain: &Domain, node: &str) -> Result<bool> {
        is_local_domain(self, domain, node)
    }
    fn route(&mut self, domain: &Domain) -> Result<Option<DomainRecord>> {
        route(self, domain)
    }
    fn mailbox(&mut self, m: &LocalPart, d: &Domain) -> Result<Option<MailboxRecord>> {
        mailbox(self, m, d)
    }
    fn route_and_mailbox(
        &mut self,
        m: &LocalPart,
        d: &Domain,
    ) -> Result<(Option<DomainRecord>, Option<MailboxRecord>)> {
        route_and_mailbox(self, m, d)
    }
    fn mailboxes_of(&mut self, keys: &[(LocalPart, Domain)]) -> Result<Vec<Option<MailboxRecord>>> {
        mailboxes_of(self, keys)
    }
    fn domains(&mut self, primary: Option<&str>) -> Result<Vec<DomainRecord>> {
        domains(self, primary)
    }
    fn mailboxes(&mut self) -> Result<Vec<MailboxRecord>> {
        mailboxes(self)
    }
    fn node_names(&mut self) -> Result<BTreeSet<String>> {
        node_names(self)
    }
    fn ping(&mut self) -> Result<()> {
        self.query("SELECT 1", &[]).map(|_| ())
    }
}
