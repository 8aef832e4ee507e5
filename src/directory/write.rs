//! The write side of the directory (a minimal set for the demo, the fixtures and
//! `mailctl`), implemented once over both backends.
//!
//! Writes follow the seed's schema: a third-level domain `label.mdomain` is an `ldomain`
//! row (label), an `mdomain` row (created when missing) and a `maps` row; a whole domain
//! outside that scheme is a `co_domain` row and a `co_maps` row. Mailboxes are `mail`
//! rows of ldomain domains only: `mail.ldomain_id` references `ldomain`, so co_domain
//! recipients are not mailboxes in this schema. The seed's legacy pseudo-mailbox `dir` is
//! never created. Each operation runs in one transaction; every value is a bound parameter.

use super::sql::{self, Param, Sql};
use super::{Directory, DomainSource};
use crate::error::{Error, Result};
use crate::names::{parse_node_name, Domain, LocalPart, Strictness};
use std::time::Duration;

/// Width of the seed's varchar columns (`ldomain.domain`, `mdomain.domain`, `mail.mailbox`,
/// `maps.storage1`/`storage2`).
pub const SEED_NAME_MAX: usize = 32;

/// Changes to the directory. Implemented by both backends (which also implement the read
/// side, [`Directory`]).
pub trait DirectoryWriter: Directory {
    /// Add a domain with its primary node (`storage1`) and backup (`storage2`, stored as
    /// `''` when None). `source` says whether it is a third-level `ldomain.mdomain` (the
    /// mdomain row is created when missing) or a `co_domain`.
    fn add_domain(
        &mut self,
        domain: &Domain,
        source: DomainSource,
        primary: &str,
        backup: Option<&str>,
        active: bool,
    ) -> Result<()>;

    /// Add a mailbox to an existing ldomain domain. `password` is stored as given (the
    /// caller hashes it); it is ignored on a database without `mail.password` (smtp role).
    fn add_mailbox(
        &mut self,
        mailbox: &LocalPart,
        domain: &Domain,
        password: Option<&str>,
        active: bool,
    ) -> Result<()>;

    /// Enable or disable a mailbox (NotFound when it does not exist).
    fn set_mailbox_active(
        &mut self,
        mailbox: &LocalPart,
        domain: &Domain,
        active: bool,
    ) -> Result<()>;

    /// Replace a mailbox's stored password (BadInput on an smtp-role database).
    fn set_mailbox_password(
        &mut self,
        mailbox: &LocalPart,
        domain: &Domain,
        password: Option<&str>,
    ) -> Result<()>;

    /// Enable or disable a domain (`ldomain.active` or `co_domain.active`).
    fn set_domain_active(&mut self, domain: &Domain, active: bool) -> Result<()>;

    /// Change a domain's primary and backup (failover / failback).
    fn set_route(&mut self, domain: &Domain, primary: &str, backup: Option<&str>) -> Result<()>;

    /// Remove a mailbox row (the Maildir is not touched). NotFound when missing.
    fn remove_mailbox(&mut self, mailbox: &LocalPart, domain: &Domain) -> Result<()>;
}

/// Open a directory for reading and writing (`sqlite:PATH` or PostgreSQL).
pub fn open_writer(url: &str, timeout: Duration) -> Result<Box<dyn DirectoryWriter>> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        Ok(Box::new(super::sqlite::SqliteDirectory::open(
            path, timeout,
        )?))
    } else {
        Ok(Box::new(super::postgres::PgDirectory::connect(
            url, timeout,
        )?))
    }
}

fn node(name: &str) -> Result<String> {
    let n = parse_node_name(name, Strictness::Admin)?;
    if n.len() > SEED_NAME_MAX {
        return Err(Error::bad_input(format!(
            "node name {n} is longer than {SEED_NAME_MAX} characters (maps.storage1 is \
             varchar({SEED_NAME_MAX}))"
        )));
    }
    Ok(n)
}

fn fit(what: &str, value: &str) -> Result<()> {
    if value.len() > SEED_NAME_MAX {
        return Err(Error::bad_input(format!(
            "{what} {value} is longer than {SEED_NAME_MAX} characters (the seed's column is \
             varchar({SEED_NAME_MAX}))"
        )));
    }
    Ok(())
}

/// Run `f` in a transaction.
fn in_tx<T>(db: &mut dyn Sql, f: impl FnOnce(&mut dyn Sql) -> Result<T>) -> Result<T> {
    db.batch("BEGIN")?;
    match f(db) {
        Ok(v) => {
            db.batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            db.rollback();
            Err(e)
        }
    }
}

fn count(db: &mut dyn Sql, q: &str, params: &[Param<'_>]) -> Result<i64> {
    let rows = db.query(q, params)?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.int())
        .unwrap_or(0))
}

fn exists_co(db: &mut dyn Sql, domain: &Domain) -> Result<bool> {
    Ok(count(
        db,
        "SELECT count(*) FROM co_domain WHERE lower(domain) = $1",
        &[Param::Text(domain.as_str())],
    )? > 0)
}

fn exists_ldomain(db: &mut dyn Sql, domain: &Domain) -> Result<bool> {
    Ok(count(
        db,
        "SELECT count(*) FROM maps INNER JOIN ldomain ON (maps.ldomain_id = ldomain.id) \
         INNER JOIN mdomain ON (maps.mdomain_id = mdomain.id) \
         WHERE lower(ldomain.domain || '.' || mdomain.domain) = $1",
        &[Param::Text(domain.as_str())],
    )? > 0)
}

const LDOMAIN_OF: &str = "SELECT maps.ldomain_id FROM maps \
     INNER JOIN ldomain ON (maps.ldomain_id = ldomain.id) \
     INNER JOIN mdomain ON (maps.mdomain_id = mdomain.id) \
     WHERE lower(ldomain.domain || '.' || mdomain.domain) = ";

pub(crate) fn add_domain(
    db: &mut dyn Sql,
    domain: &Domain,
    source: DomainSource,
    primary: &str,
    backup: Option<&str>,
    active: bool,
) -> Result<()> {
    let primary = node(primary)?;
    let backup = match backup {
        Some(b) => node(b)?,
        None => String::new(),
    };
    in_tx(db, |db| {
        if exists_ldomain(db, domain)? || exists_co(db, domain)? {
            return Err(Error::bad_input(format!("domain {domain} exists already")));
        }
        match source {
            DomainSource::CoDomain => {
                db.execute(
                    "INSERT INTO co_domain (domain, active) VALUES ($1, $2)",
                    &[Param::Text(domain.as_str()), Param::Bool(active)],
                )?;
                db.execute(
                    "INSERT INTO co_maps (domain_id, storage1, storage2) \
                     SELECT id, $2, $3 FROM co_domain WHERE domain = $1",
                    &[
                        Param::Text(domain.as_str()),
                        Param::Text(&primary),
                        Param::Text(&backup),
                    ],
                )?;
            }
            DomainSource::Ldomain => {
                let Some((label, mdomain)) = domain.split_first() else {
                    return Err(Error::bad_input(format!(
                        "{domain} is not a third-level domain (label.mdomain): add it as a \
                         co_domain"
                    )));
                };
                fit("ldomain label", label)?;
                fit("mdomain", mdomain)?;
                // The seed keeps ldomain.domain unique: a label names one domain only.
                let taken = db.query(
                    "SELECT ldomain.domain || '.' || mdomain.domain FROM maps \
                     INNER JOIN ldomain ON (maps.ldomain_id = ldomain.id) \
                     INNER JOIN mdomain ON (maps.mdomain_id = mdomain.id) \
                     WHERE lower(ldomain.domain) = $1",
                    &[Param::Text(label)],
                )?;
                if let Some(other) = taken.first().and_then(|r| r.first()).and_then(|v| v.text()) {
                    return Err(Error::bad_input(format!(
                        "cannot add {domain}: the label {label} is already used by {other} \
                         (the seed's schema keeps ldomain.domain unique)"
                    )));
                }
                db.execute(
                    "INSERT INTO mdomain (domain, active) SELECT CAST($1 AS TEXT), TRUE \
                     WHERE NOT EXISTS (SELECT 1 FROM mdomain WHERE lower(domain) = $1)",
                    &[Param::Text(mdomain)],
                )?;
                // An ldomain row without maps (left over) is reused.
                let n = db.execute(
                    "UPDATE ldomain SET active = $2 WHERE lower(domain) = $1",
                    &[Param::Text(label), Param::Bool(active)],
                )?;
                if n == 0 {
                    db.execute(
                        "INSERT INTO ldomain (domain, active) VALUES ($1, $2)",
                        &[Param::Text(label), Param::Bool(active)],
                    )?;
                }
                let n = db.execute(
                    "INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2) \
                     SELECT ldomain.id, mdomain.id, $3, $4 FROM ldomain, mdomain \
                     WHERE lower(ldomain.domain) = $1 AND lower(mdomain.domain) = $2",
                    &[
                        Param::Text(label),
                        Param::Text(mdomain),
                        Param::Text(&primary),
                        Param::Text(&backup),
                    ],
                )?;
                if n != 1 {
                    return Err(Error::internal(format!(
                        "adding {domain}: expected one maps row, made {n}"
                    )));
                }
                let mactive = count(
                    db,
                    "SELECT count(*) FROM mdomain WHERE lower(domain) = $1 AND active",
                    &[Param::Text(mdomain)],
                )?;
                if active && mactive == 0 {
                    log::warn!(
                        "{domain} added, but its mdomain {mdomain} is disabled: the domain is \
                         not active"
                    );
                }
            }
        }
        Ok(())
    })
}

fn check_mailbox(mailbox: &LocalPart) -> Result<()> {
    if mailbox
        .as_str()
        .contains(crate::names::SUBADDRESS_SEPARATOR)
    {
        return Err(Error::bad_input(format!(
            "invalid mailbox name {mailbox}: '+' separates subaddresses"
        )));
    }
    if mailbox.is_legacy_dir() {
        return Err(Error::bad_input(
            "the mailbox name 'dir' is reserved (the seed's legacy per-domain pseudo-mailbox)",
        ));
    }
    fit("mailbox name", mailbox.as_str())
}

pub(crate) fn add_mailbox(
    db: &mut dyn Sql,
    mailbox: &LocalPart,
    domain: &Domain,
    password: Option<&str>,
    active: bool,
) -> Result<()> {
    check_mailbox(mailbox)?;
    if let Some(p) = password {
        if p.len() > 255 || p.contains(['\0', '\n', '\r']) {
            return Err(Error::bad_input(
                "the stored password (hash) is too long or holds control characters",
            ));
        }
    }
    let with_password = db.has_password()?;
    in_tx(db, |db| {
        if !exists_ldomain(db, domain)? {
            if exists_co(db, domain)? {
                return Err(Error::bad_input(format!(
                    "{domain} is a co_domain: its recipients are not mailboxes in this schema \
                     (mail.ldomain_id references ldomain)"
                )));
            }
            return Err(Error::not_found(format!("no such domain: {domain}")));
        }
        if sql::mailbox(db, mailbox, domain)?.is_some() {
            return Err(Error::bad_input(format!(
                "mailbox {mailbox}@{domain} exists already"
            )));
        }
        let pw = match password {
            Some(p) => Param::Text(p),
            None => Param::NullText,
        };
        let n = if with_password {
            db.execute(
                "INSERT INTO mail (mailbox, password, ldomain_id, mdomain_id, active) \
                 SELECT $1, $2, maps.ldomain_id, maps.mdomain_id, CAST($3 AS BOOLEAN) FROM maps \
                 INNER JOIN ldomain ON (maps.ldomain_id = ldomain.id) \
                 INNER JOIN mdomain ON (maps.mdomain_id = mdomain.id) \
                 WHERE lower(ldomain.domain || '.' || mdomain.domain) = $4",
                &[
                    Param::Text(mailbox.as_str()),
                    pw,
                    Param::Bool(active),
                    Param::Text(domain.as_str()),
                ],
            )?
        } else {
            db.execute(
                "INSERT INTO mail (mailbox, ldomain_id, mdomain_id, active) \
                 SELECT $1, maps.ldomain_id, maps.mdomain_id, CAST($2 AS BOOLEAN) FROM maps \
                 INNER JOIN ldomain ON (maps.ldomain_id = ldomain.id) \
                 INNER JOIN mdomain ON (maps.mdomain_id = mdomain.id) \
                 WHERE lower(ldomain.domain || '.' || mdomain.domain) = $3",
                &[
                    Param::Text(mailbox.as_str()),
                    Param::Bool(active),
                    Param::Text(domain.as_str()),
                ],
            )?
        };
        if n != 1 {
            return Err(Error::internal(format!(
                "adding {mailbox}@{domain}: expected one mail row, made {n}"
            )));
        }
        Ok(())
    })
}

const MAIL_ID_OF: &str = "SELECT mail.id FROM mail \
     INNER JOIN ldomain ON (mail.ldomain_id = ldomain.id) \
     INNER JOIN mdomain ON (mail.mdomain_id = mdomain.id) \
     WHERE lower(mail.mailbox) = $2 AND lower(ldomain.domain || '.' || mdomain.domain) = $3";

fn one_mail_row(n: u64, mailbox: &LocalPart, domain: &Domain) -> Result<()> {
    if n == 0 {
        Err(Error::not_found(format!(
            "no such mailbox: {mailbox}@{domain}"
        )))
    } else {
        Ok(())
    }
}

pub(crate) fn set_mailbox_active(
    db: &mut dyn Sql,
    mailbox: &LocalPart,
    domain: &Domain,
    active: bool,
) -> Result<()> {
    if mailbox.is_legacy_dir() {
        return Err(Error::not_found(format!(
            "no such mailbox: {mailbox}@{domain}"
        )));
    }
    let n = db.execute(
        &format!("UPDATE mail SET active = $1 WHERE id IN ({MAIL_ID_OF})"),
        &[
            Param::Bool(active),
            Param::Text(mailbox.as_str()),
            Param::Text(domain.as_str()),
        ],
    )?;
    one_mail_row(n, mailbox, domain)
}

pub(crate) fn set_mailbox_password(
    db: &mut dyn Sql,
    mailbox: &LocalPart,
    domain: &Domain,
    password: Option<&str>,
) -> Result<()> {
    if mailbox.is_legacy_dir() {
        return Err(Error::not_found(format!(
            "no such mailbox: {mailbox}@{domain}"
        )));
    }
    if !db.has_password()? {
        return Err(Error::bad_input(
            "this database has no mail.password column (an smtp-role database)",
        ));
    }
    if let Some(p) = password {
        if p.len() > 255 || p.contains(['\0', '\n', '\r']) {
            return Err(Error::bad_input(
                "the stored password (hash) is too long or holds control characters",
            ));
        }
    }
    let pw = match password {
        Some(p) => Param::Text(p),
        None => Param::NullText,
    };
    let n = db.execute(
        &format!("UPDATE mail SET password = $1 WHERE id IN ({MAIL_ID_OF})"),
        &[
            pw,
            Param::Text(mailbox.as_str()),
            Param::Text(domain.as_str()),
        ],
    )?;
    one_mail_row(n, mailbox, domain)
}

pub(crate) fn remove_mailbox(db: &mut dyn Sql, mailbox: &LocalPart, domain: &Domain) -> Result<()> {
    if mailbox.is_legacy_dir() {
        return Err(Error::not_found(format!(
            "no such mailbox: {mailbox}@{domain}"
        )));
    }
    // $1 is unused by MAIL_ID_OF's numbering; keep the numbering by selecting it.
    let n = db.execute(
        &format!(
            "DELETE FROM mail WHERE id IN ({}) ",
            MAIL_ID_OF.replace("$2", "$1").replace("$3", "$2")
        ),
        &[Param::Text(mailbox.as_str()), Param::Text(domain.as_str())],
    )?;
    one_mail_row(n, mailbox, domain)
}

fn source_of(db: &mut dyn Sql, domain: &Domain) -> Result<DomainSource> {
    match sql::route(db, domain)? {
        Some(r) => Ok(r.source),
        None => Err(Error::not_found(format!("no such domain: {domain}"))),
    }
}

pub(crate) fn set_domain_active(db: &mut dyn Sql, domain: &Domain, active: bool) -> Result<()> {
    in_tx(db, |db| {
        let n = match source_of(db, domain)? {
            DomainSource::Ldomain => db.execute(
                &format!("UPDATE ldomain SET active = $1 WHERE id IN ({LDOMAIN_OF}$2)"),
                &[Param::Bool(active), Param::Text(domain.as_str())],
            )?,
            DomainSource::CoDomain => db.execute(
                "UPDATE co_domain SET active = $1 WHERE lower(domain) = $2",
                &[Param::Bool(active), Param::Text(domain.as_str())],
            )?,
        };
        if n == 0 {
            return Err(Error::not_found(format!("no such domain: {domain}")));
        }
        Ok(())
    })
}

pub(crate) fn set_route(
    db: &mut dyn Sql,
    domain: &Domain,
    primary: &str,
    backup: Option<&str>,
) -> Result<()> {
    let primary = node(primary)?;
    let backup = match backup {
        Some(b) => node(b)?,
        None => String::new(),
    };
    in_tx(db, |db| {
        let params = [
            Param::Text(&primary),
            Param::Text(&backup),
            Param::Text(domain.as_str()),
        ];
        let n = match source_of(db, domain)? {
            DomainSource::Ldomain => db.execute(
                &format!(
                    "UPDATE maps SET storage1 = $1, storage2 = $2 \
                     WHERE ldomain_id IN ({LDOMAIN_OF}$3)"
                ),
                &params,
            )?,
            DomainSource::CoDomain => db.execute(
                "UPDATE co_maps SET storage1 = $1, storage2 = $2 WHERE domain_id IN \
                 (SELECT id FROM co_domain WHERE lower(domain) = $3)",
                &params,
            )?,
        };
        if n == 0 {
            return Err(Error::not_found(format!("no such domain: {domain}")));
        }
        Ok(())
    })
}

macro_rules! impl_writer {
    ($t:ty) => {
        impl DirectoryWriter for $t {
            fn add_domain(
                &mut self,
                domain: &Domain,
                source: DomainSource,
                primary: &str,
                backup: Option<&str>,
                active: bool,
            ) -> Result<()> {
                add_domain(self, domain, source, primary, backup, active)
            }
            fn add_mailbox(
                &mut self,
                mailbox: &LocalPart,
                domain: &Domain,
                password: Option<&str>,
                active: bool,
            ) -> Result<()> {
                add_mailbox(self, mailbox, domain, password, active)
            }
            fn set_mailbox_active(
                &mut self,
                mailbox: &LocalPart,
                domain: &Domain,
                active: bool,
            ) -> Result<()> {
                set_mailbox_active(self, mailbox, domain, active)
            }
            fn set_mailbox_password(
                &mut self,
                mailbox: &LocalPart,
                domain: &Domain,
                password: Option<&str>,
            ) -> Result<()> {
                set_mailbox_password(self, mailbox, domain, password)
            }
            fn set_domain_active(&mut self, domain: &Domain, active: bool) -> Result<()> {
                set_domain_active(self, domain, active)
            }
            fn set_route(
                &mut self,
                domain: &Domain,
                primary: &str,
                backup: Option<&str>,
            ) -> Result<()> {
                set_route(self, domain, primary, backup)
            }
            fn remove_mailbox(&mut self, mailbox: &LocalPart, domain: &Domain) -> Result<()> {
                remove_mailbox(self, mailbox, domain)
            }
        }
    };
}

impl_writer!(super::sqlite::SqliteDirectory);
impl_writer!(super::postgres::PgDirectory);
