//! `mailctl schema init|check|upgrade` across every configured directory (or `--db`).
//! The DDL and the table checks are the directory's ([`crate::directory::schema`]); this
//! adds what mailctl needs: whether `mail.password` holds the configured scheme's hashes,
//! and widening it.

use super::{password, CtlSettings};
use crate::config::{Config, Role};
use crate::directory::schema;
use crate::directory::txn::{AdminDb, WIDE_PASSWORD_LEN};
use crate::error::{Error, Result};

/// (name, url, role) of each directory to work on; `role` overrides the configured one.
pub fn targets(config: &Config, role: Option<Role>) -> Result<Vec<(String, String, Role)>> {
    if config.directories.is_empty() {
        return Err(Error::config(
            "no directory: give --db URL or [[directory]] entries in the configuration",
        ));
    }
    Ok(config
        .directories
        .iter()
        .map(|d| (d.name.clone(), d.url.clone(), role.unwrap_or(d.role)))
        .collect())
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Storage => "storage",
        Role::Smtp => "smtp",
    }
}

/// Create what is missing everywhere. Returns one line per directory.
pub fn init(config: &Config, role: Option<Role>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (name, url, role) in targets(config, role)? {
        schema::init_with_timeout(&url, role, config.db_timeout())
            .map_err(|e| e.context(format!("directory {name}")))?;
        out.push(format!("{name}: schema ok ({} role)", role_name(role)));
    }
    Ok(out)
}

/// Check every directory. Returns the lines to print and whether everything needed is
/// there (missing tables or columns → false). A password column too narrow for the
/// configured scheme is a warning naming the fix.
pub fn check(config: &Config, role: Option<Role>) -> Result<(Vec<String>, bool)> {
    let settings: CtlSettings = config.section("ctl")?;
    let scheme = password::normalize_scheme(&settings.password_scheme)?;
    let need = password::sample_len(scheme)?;
    let mut lines = Vec::new();
    let mut ok = true;
    for (name, url, role) in targets(config, role)? {
        let report = schema::check_with_timeout(&url, role, config.db_timeout())
            .map_err(|e| e.context(format!("directory {name}")))?;
        if !report.is_ok() {
            ok = false;
        }
        if report.is_ok() && role == Role::Storage {
            let mut db = AdminDb::open(&name, &url, role, config.db_timeout())?;
            if let Some(col) = db.password_column()? {
                match col.max_len {
                    Some(max) if max < need => lines.push(format!(
                        "{name}: warning: mail.password is varchar({max}) but {scheme} hashes \
                         are {need} characters: new passwords would be refused; run `mailctl \
                         schema upgrade` (varchar({WIDE_PASSWORD_LEN}))"
                    )),
                    Some(max) => lines.push(format!(
                        "{name}: mail.password is varchar({max}): holds {scheme} hashes \
                         ({need} characters)"
                    )),
                    None => {}
                }
            }
        }
        for line in report.to_string().lines() {
            lines.push(format!("{name}: {line}"));
        }
    }
    Ok((lines, ok))
}

/// Widen `mail.password` wherever it is narrower than varchar(255) (PostgreSQL storage
/// databases; SQLite has no limit, smtp-role databases no column).
pub fn upgrade(config: &Config) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (name, url, role) in targets(config, None)? {
        if role != Role::Storage {
            lines.push(format!("{name}: smtp role, no password column"));
            continue;
        }
        let mut db = AdminDb::open(&name, &url, role, config.db_timeout())?;
        if db.widen_password_column()? {
            lines.push(format!(
                "{name}: mail.password widened to varchar({WIDE_PASSWORD_LEN})"
            ));
        } else {
            lines.push(format!("{name}: nothing to do"));
        }
    }
    Ok(lines)
}
