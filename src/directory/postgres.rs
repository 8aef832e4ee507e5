//! PostgreSQL backend: the seed's schema, unchanged.
use super::{Directory, DomainRecord, MailboxRecord};
use crate::error::{Error, Result};
use crate::names::{Domain, LocalPart};
use std::collections::BTreeSet;
use std::time::Duration;

pub struct PgDirectory {
    _path: String,
}

impl PgDirectory {
    pub fn connect(path: &str, _timeout: Duration) -> Result<Self> {
        Ok(PgDirectory {
            _path: path.to_string(),
        })
    }
}

impl Directory for PgDirectory {
    fn describe(&self) -> String {
        format!("postgres:{}", self._path)
    }
    fn is_local_domain(&mut self, _domain: &Domain, _node: &str) -> Result<bool> {
        Err(Error::internal("not implemented yet"))
    }
    fn route(&mut self, _domain: &Domain) -> Result<Option<DomainRecord>> {
        Err(Error::internal("not implemented yet"))
    }
    fn mailbox(&mut self, _m: &LocalPart, _d: &Domain) -> Result<Option<MailboxRecord>> {
        Err(Error::internal("not implemented yet"))
    }
    fn domains(&mut self, _primary: Option<&str>) -> Result<Vec<DomainRecord>> {
        Err(Error::internal("not implemented yet"))
    }
    fn mailboxes(&mut self) -> Result<Vec<MailboxRecord>> {
        Err(Error::internal("not implemented yet"))
    }
    fn node_names(&mut self) -> Result<BTreeSet<String>> {
        Err(Error::internal("not implemented yet"))
    }
}

pub(crate) fn init_schema(_url: &str, _ddl: &str, _timeout: Duration) -> Result<()> {
    Err(Error::internal("not implemented yet"))
}

pub(crate) fn check_schema(
    _url: &str,
    _role: crate::config::Role,
    _timeout: Duration,
) -> Result<super::schema::CheckReport> {
    Err(Error::internal("not implemented yet"))
}
