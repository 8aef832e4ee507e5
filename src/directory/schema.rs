//! DDL for `mailctl schema init` and the checks of `mailctl schema check`.
//!
//! The tables are the seed's (`mail`, `ldomain`, `mdomain`, `maps`) plus `co_domain` /
//! `co_maps`, with the seed's column names and types (on SQLite: the same names, SQLite's
//! type affinities). `init` adds indexes on the lookup columns and is idempotent.

use crate::config::Role;
use crate::error::Result;
use std::fmt;
use std::time::Duration;

/// PostgreSQL DDL: the seed's tables (verbatim column types), `IF NOT EXISTS`.
/// `{password}` is replaced by the password column (storage role) or nothing (smtp role).
const PG_DDL: &str = r#"CREATE TABLE IF NOT EXISTS mail (
"id" BIGSERIAL PRIMARY KEY,
"mailbox" CHARACTER VARYING(32) not null,
{password}"ldomain_id" int NOT NULL,
"mdomain_id" int NOT NULL,
active BOOLEAN DEFAULT TRUE NOT NULL,
CONSTRAINT "mail_ldomain_id_check" CHECK (("ldomain_id" > 0))
);
CREATE TABLE IF NOT EXISTS "ldomain" (
"id" BIGSERIAL PRIMARY KEY,
"domain" CHARACTER VARYING(32) NOT NULL,
"active" BOOLEAN DEFAULT TRUE NOT NULL,
CONSTRAINT ldomain_k UNIQUE (domain)
);
CREATE TABLE IF NOT EXISTS "mdomain" (
"id" BIGSERIAL PRIMARY KEY,
"domain" CHARACTER VARYING(32) NOT NULL,
"active" BOOLEAN DEFAULT TRUE NOT NULL,
CONSTRAINT mdomain_k UNIQUE (domain)
);
CREATE TABLE IF NOT EXISTS "maps" (
"id" SERIAL PRIMARY KEY,
"ldomain_id" int NOT NULL,
"mdomain_id" int NOT NULL,
"storage1" CHARACTER VARYING(32) NOT NULL,
"storage2" CHARACTER VARYING(32) NOT NULL,
CONSTRAINT maps_ldomain_k UNIQUE (ldomain_id)
);
CREATE TABLE IF NOT EXISTS "co_domain" (
"id" BIGSERIAL PRIMARY KEY,
"domain" CHARACTER VARYING(255) NOT NULL,
"active" BOOLEAN DEFAULT TRUE NOT NULL,
CONSTRAINT co_domain_k UNIQUE (domain)
);
CREATE TABLE IF NOT EXISTS "co_maps" (
"id" SERIAL PRIMARY KEY,
"domain_id" int NOT NULL,
"storage1" CHARACTER VARYING(32) NOT NULL,
"storage2" CHARACTER VARYING(32) NOT NULL,
CONSTRAINT co_maps_domain_k UNIQUE (domain_id)
);
CREATE INDEX IF NOT EXISTS mail_ldomain_mailbox_i ON mail (ldomain_id, lower(mailbox));
CREATE INDEX IF NOT EXISTS mail_lower_mailbox_i ON mail (lower(mailbox));
CREATE INDEX IF NOT EXISTS maps_storage1_i ON maps (storage1);
CREATE INDEX IF NOT EXISTS co_maps_storage1_i ON co_maps (storage1);
CREATE INDEX IF NOT EXISTS co_domain_lower_domain_i ON co_domain (lower(domain));
"#;

const PG_PASSWORD_COLUMN: &str = "\"password\" CHARACTER VARYING(128),\n";

/// SQLite DDL: the same tables and column names.
const SQLITE_DDL: &str = r#"CREATE TABLE IF NOT EXISTS mail (
id INTEGER PRIMARY KEY,
mailbox VARCHAR(32) NOT NULL,
{password}ldomain_id INTEGER NOT NULL,
mdomain_id INTEGER NOT NULL,
active BOOLEAN NOT NULL DEFAULT TRUE,
CONSTRAINT mail_ldomain_id_check CHECK (ldomain_id > 0)
);
CREATE TABLE IF NOT EXISTS ldomain (
id INTEGER PRIMARY KEY,
domain VARCHAR(32) NOT NULL,
active BOOLEAN NOT NULL DEFAULT TRUE,
CONSTRAINT ldomain_k UNIQUE (domain)
);
CREATE TABLE IF NOT EXISTS mdomain (
id INTEGER PRIMARY KEY,
domain VARCHAR(32) NOT NULL,
active BOOLEAN NOT NULL DEFAULT TRUE,
CONSTRAINT mdomain_k UNIQUE (domain)
);
CREATE TABLE IF NOT EXISTS maps (
id INTEGER PRIMARY KEY,
ldomain_id INTEGER NOT NULL,
mdomain_id INTEGER NOT NULL,
storage1 VARCHAR(32) NOT NULL,
storage2 VARCHAR(32) NOT NULL,
CONSTRAINT maps_ldomain_k UNIQUE (ldomain_id)
);
CREATE TABLE IF NOT EXISTS co_domain (
id INTEGER PRIMARY KEY,
domain VARCHAR(255) NOT NULL,
active BOOLEAN NOT NULL DEFAULT TRUE,
CONSTRAINT co_domain_k UNIQUE (domain)
);
CREATE TABLE IF NOT EXISTS co_maps (
id INTEGER PRIMARY KEY,
domain_id INTEGER NOT NULL,
storage1 VARCHAR(32) NOT NULL,
storage2 VARCHAR(32) NOT NULL,
CONSTRAINT co_maps_domain_k UNIQUE (domain_id)
);
CREATE INDEX IF NOT EXISTS mail_ldomain_mailbox_i ON mail (ldomain_id, lower(mailbox));
CREATE INDEX IF NOT EXISTS mail_lower_mailbox_i ON mail (lower(mailbox));
CREATE INDEX IF NOT EXISTS maps_storage1_i ON maps (storage1);
CREATE INDEX IF NOT EXISTS co_maps_storage1_i ON co_maps (storage1);
CREATE INDEX IF NOT EXISTS co_domain_lower_domain_i ON co_domain (lower(domain));
"#;

const SQLITE_PASSWORD_COLUMN: &str = "password VARCHAR(128),\n";

/// The PostgreSQL DDL `init` runs for `role`.
pub fn pg_ddl(role: Role) -> String {
    PG_DDL.replace(
        "{password}",
        if role == Role::Storage {
            PG_PASSWORD_COLUMN
        } else {
            ""
        },
    )
}

/// The SQLite DDL `init` runs for `role`.
pub fn sqlite_ddl(role: Role) -> String {
    SQLITE_DDL.replace(
        "{password}",
        if role == Role::Storage {
            SQLITE_PASSWORD_COLUMN
        } else {
            ""
        },
    )
}

/// The tables and columns the toolkit reads (and writes). `password` only for storage.
pub const REQUIRED: &[(&str, &[&str])] = &[
    (
        "mail",
        &["id", "mailbox", "ldomain_id", "mdomain_id", "active"],
    ),
    ("ldomain", &["id", "domain", "active"]),
    ("mdomain", &["id", "domain", "active"]),
    (
        "maps",
        &["id", "ldomain_id", "mdomain_id", "storage1", "storage2"],
    ),
    ("co_domain", &["id", "domain", "active"]),
    ("co_maps", &["domain_id", "storage1", "storage2"]),
];

/// What `schema check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Missing tables.
    pub missing_tables: Vec<String>,
    /// Missing columns as `table.column`.
    pub missing_columns: Vec<String>,
    /// Things that work but deserve attention.
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// True when everything the toolkit needs is there.
    pub fn is_ok(&self) -> bool {
        self.missing_tables.is_empty() && self.missing_columns.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.missing_tables {
            writeln!(f, "missing table: {t}")?;
        }
        for c in &self.missing_columns {
            writeln!(f, "missing column: {c}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if self.is_ok() {
            write!(f, "schema ok")
        } else {
            write!(
                f,
                "schema incomplete (run `mailctl schema init` to create what is missing)"
            )
        }
    }
}

/// Compare what a database has (table → (column, type)) against [`REQUIRED`].
/// `columns(table)` returns None when the table does not exist.
pub(crate) fn compare(
    role: Role,
    mut columns: impl FnMut(&str) -> Result<Option<Vec<(String, String)>>>,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    for (table, needed) in REQUIRED {
        let Some(have) = columns(table)? else {
            report.missing_tables.push(table.to_string());
            continue;
        };
        let has = |c: &str| have.iter().any(|(n, _)| n.eq_ignore_ascii_case(c));
        for c in needed.iter() {
            if !has(c) {
                report.missing_columns.push(format!("{table}.{c}"));
            }
        }
        if *table == "mail" {
            let pw = have
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("password"));
            match (role, pw) {
                (Role::Storage, None) => report.missing_columns.push("mail.password".into()),
                (Role::Storage, Some((_, ty))) => {
                    let t = ty.to_ascii_lowercase();
                    if t.contains("128") {
                        report.warnings.push(
                            "mail.password is varchar(128): long hashes (e.g. SHA512-CRYPT with \
                             a scheme prefix, ARGON2) may not fit; consider \
                             ALTER TABLE mail ALTER COLUMN password TYPE varchar(255)"
                                .into(),
                        );
                    }
                }
                (Role::Smtp, Some(_)) => report.warnings.push(
                    "mail.password exists on an smtp-role database (the seed's SMTP nodes have \
                     none); it is ignored"
                        .into(),
                ),
                (Role::Smtp, None) => {}
            }
        }
    }
    Ok(report)
}

/// Create the tables (and indexes) the toolkit needs; idempotent. Creates a missing
/// SQLite file.
pub fn init(url: &str, role: Role) -> Result<()> {
    init_with_timeout(url, role, super::DEFAULT_TIMEOUT)
}

/// [`init`] with an explicit bound on database waits.
pub fn init_with_timeout(url: &str, role: Role, timeout: Duration) -> Result<()> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        super::sqlite::init_schema(path, &sqlite_ddl(role), timeout)
    } else {
        super::postgres::init_schema(url, &pg_ddl(role), timeout)
    }
}

/// Say whether an existing database has what the toolkit needs for `role`.
pub fn check(url: &str, role: Role) -> Result<CheckReport> {
    check_with_timeout(url, role, super::DEFAULT_TIMEOUT)
}

/// [`check`] with an explicit bound on database waits.
pub fn check_with_timeout(url: &str, role: Role, timeout: Duration) -> Result<CheckReport> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        super::sqlite::check_schema(path, role, timeout)
    } else {
        super::postgres::check_schema(url, role, timeout)
    }
}
