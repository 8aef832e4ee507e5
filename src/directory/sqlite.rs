//! SQLite backend (rusqlite, bundled): the embedded default, `sqlite:PATH`.
//!
//! The same tables and column names as the seed's PostgreSQL schema (see
//! [`super::schema`]). Opening for lookups never creates a missing file (that is a
//! configuration error pointing at `mailctl schema init`). Waits for a lock are bounded by
//! SQLite's busy timeout (= the directory bound); a database still busy or locked after it
//! is a temporary error.

use super::sql::{Param, Sql, Val};
use crate::config::Role;
use crate::error::{Error, ErrorKind, Result};

use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

pub struct SqliteDirectory {
    path: String,
    conn: Connection,
    has_password: Option<bool>,
}

fn map_err(path: &str, e: rusqlite::Error) -> Error {
    use rusqlite::ffi::ErrorCode;
    let kind = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => ErrorKind::Temporary,
            ErrorCode::CannotOpen | ErrorCode::NotADatabase | ErrorCode::PermissionDenied => {
                ErrorKind::Config
            }
            ErrorCode::ReadOnly => ErrorKind::Config,
            ErrorCode::ConstraintViolation | ErrorCode::TooBig => ErrorKind::BadInput,
            ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::OutOfMemory
            | ErrorCode::OperationInterrupted => ErrorKind::Temporary,
            _ => ErrorKind::Internal,
        },
        _ => ErrorKind::Internal,
    };
    let msg = e.to_string();
    let hint = if msg.contains("no such table") || msg.contains("no such column") {
        " (check the schema with `mailctl schema check`)"
    } else if kind == ErrorKind::Temporary {
        " (database busy or locked; try again later)"
    } else {
        ""
    };
    let kind = if hint.starts_with(" (check") {
        ErrorKind::Config
    } else {
        kind
    };
    Error::with_source(kind, format!("sqlite:{path}: {msg}{hint}"), e)
}

fn to_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

fn bind(params: &[Param<'_>]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(s) => rusqlite::types::Value::Text((*s).to_string()),
            Param::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
            Param::NullText => rusqlite::types::Value::Null,
        })
        .collect()
}

fn open_conn(path: &str, flags: OpenFlags, timeout: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| map_err(path, e))?;
    conn.busy_timeout(timeout).map_err(|e| map_err(path, e))?;
    Ok(conn)
}

impl SqliteDirectory {
    /// Open an existing SQLite directory. A missing file is a configuration error.
    pub fn open(path: &str, timeout: Duration) -> Result<Self> {
        if path.is_empty() {
            return Err(Error::config(
                "sqlite: directory URL without a path (use sqlite:/path/to/mail.sqlite)",
            ));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(Error::config(format!("sqlite:{path}: not a regular file"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::config(format!(
                    "sqlite:{path}: no such database file (create it with \
                     `mailctl schema init --db sqlite:{path}`)"
                )))
            }
            Err(e) => {
                return Err(Error::config(format!("sqlite:{path}: cannot access: {e}")));
            }
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = open_conn(path, flags, timeout)?;
        Ok(SqliteDirectory {
            path: path.to_string(),
            conn,
            has_password: None,
        })
    }

    fn row_vals(row: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Vec<Val>> {
        use rusqlite::types::ValueRef;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(match row.get_ref(i)? {
                ValueRef::Null => Val::Null,
                ValueRef::Integer(v) => Val::Int(v),
                ValueRef::Real(v) => Val::Int(v as i64),
                ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Val::Text(String::from_utf8_lossy(b).into_owned()),
            });
        }
        Ok(out)
    }
}

impl Sql for SqliteDirectory {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path)
    }
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Val>>> {
        let path = self.path.clone();
        let run = || -> rusqlite::Result<Vec<Vec<Val>>> {
            let mut stmt = self.conn.prepare_cached(&to_sqlite(sql))?;
            let n = stmt.column_count();
            let rows = stmt.query_map(rusqlite::params_from_iter(bind(params)), |r| {
                Self::row_vals(r, n)
            })?;
            rows.collect()
        };
        run().map_err(|e| map_err(&path, e))
    }

    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let mut stmt = self
            .conn
            .prepare_cached(&to_sqlite(sql))
            .map_err(|e| map_err(&self.path, e))?;
        let n = stmt
            .execute(rusqlite::params_from_iter(bind(params)))
            .map_err(|e| map_err(&self.path, e))?;
        Ok(n as u64)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.conn
            .execute_batch(sql)
            .map_err(|e| map_err(&self.path, e))
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn columns_sql(&self) -> &'static str {
        "SELECT name, type FROM pragma_table_info($1)"
    }

    fn has_password(&mut self) -> Result<bool> {
        if let Some(h) = self.has_password {
            return Ok(h);
        }
        let h = self
            .columns("mail")?
            .is_some_and(|c| c.iter().any(|(n, _)| n.eq_ignore_ascii_case("password")));
        self.has_password = Some(h);
        Ok(h)
    }
}

/// `schema init` on SQLite: create the file if needed and run the DDL (idempotent).
pub(crate) fn init_schema(path: &str, ddl: &str, timeout: Duration) -> Result<()> {
    if path.is_empty() {
        return Err(Error::config(
            "sqlite: directory URL without a path (use sqlite:/path/to/mail.sqlite)",
        ));
    }
    if let Some(parent) = Path::new(path).parent() {
        if !parent.as_os_str().is_empty() && !parent.is_dir() {
            return Err(Error::config(format!(
                "sqlite:{path}: directory {} does not exist",
                parent.display()
            )));
        }
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = open_conn(path, flags, timeout)?;
    conn.execute_batch(&format!("BEGIN IMMEDIATE;\n{ddl}\nCOMMIT;"))
        .map_err(|e| map_err(path, e))
}

/// `schema check` on SQLite.
pub(crate) fn check_schema(
    path: &str,
    role: Role,
    timeout: Duration,
) -> Result<super::schema::CheckReport> {
    let mut db = SqliteDirectory::open(path, timeout)?;
    super::schema::compare(role, |t| db.columns(t))
}
