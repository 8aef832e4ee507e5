//! PostgreSQL backend: the seed's schema, unchanged.
//!
//! Uses `tokio-postgres` inside a private current-thread tokio runtime owned by each
//! [`PgDirectory`], so that connecting and every statement can be bounded with
//! `tokio::time::timeout` (the sync `postgres` crate has no client-side timeout). A server
//! that is down (connection refused) or hung (accepts, never answers) yields
//! [`ErrorKind::Temporary`] within the bound; the connection is then dropped and made
//! again on the next call.
//!
//! Because of that private runtime, a `PgDirectory` must not be used from *inside* an
//! async task (tokio refuses to block inside a runtime): call it from a plain thread or
//! `tokio::task::spawn_blocking`.
//!
//! Connection strings: `postgres[ql]://user:pw@host:port/db?sslmode=...` or libpq
//! `key=value` pairs (`host=/path` is a unix socket directory). TLS (OpenSSL) follows
//! libpq's `sslmode`: `disable`, `allow`/`prefer` (TLS if the server offers it, not
//! verified), `require` (TLS, not verified — verified against `sslrootcert` like
//! `verify-ca` when one is given), `verify-ca` (certificate chain verified),
//! `verify-full` (chain and host name verified). `sslrootcert=PATH` names the CA file
//! (default: the system trust store); `sslcert`/`sslkey` a client certificate.
//! Like libpq, a connection over unix sockets only (`host=/path`) never asks for TLS under
//! `prefer`/`allow` (no SSLRequest round trip, no OpenSSL context to build).
//!
//! Cost of a one-shot process (`mailmap rcpt-route` forked by Exim's `${run}`): a read runs
//! as `query_typed` (Parse, Bind, Execute in one round trip, no separate prepare) the first
//! time a statement is seen on a connection, and is prepared and cached only when it comes
//! again (long-lived processes such as `mailmap serve`); `mail.password` is read without a
//! catalog probe (see [`Sql::password_expr`]).

use super::pgtls::{MakeTls, TlsFiles, Verify};
use super::sql::{Dialect, Param, Sql, Val};
use crate::config::Role;
use crate::error::{Error, ErrorKind, Result};

use std::collections::{HashMap, HashSet};
use std::mem::ManuallyDrop;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Statement};

/// libpq's sslmode, including the verifying modes tokio-postgres does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A parsed connection string.
#[derive(Clone)]
pub struct ConnInfo {
    config: Config,
    tls_mode: TlsMode,
    root_cert: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    describe: String,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.write_str(&self.describe)
    }
}

const OUR_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Split libpq `key = value` pairs (values optionally single-quoted with `\` escapes).
fn split_keyvalue(s: &str) -> Result<Vec<(String, String)>> {
    let bad = |why: &str| Error::config(format!("malformed PostgreSQL connection string: {why}"));
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(bad("expected `key=value`"));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => return Err(bad("unterminated quoted value")),
                    Some('\\') => match it.next() {
                        Some(c) => value.push(c),
                        None => return Err(bad("unterminated quoted value")),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    it.next();
                    if let Some(c) = it.next() {
                        value.push(c);
                    }
                    continue;
                }
                value.push(c);
                it.next();
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

fn quote_value(v: &str) -> String {
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

impl ConnInfo {
    /// Parse a URL or key=value connection string. Errors never echo the string (it may
    /// hold a password).
    pub fn parse(url: &str) -> Result<ConnInfo> {
        let mut ours: Vec<(String, String)> = Vec::new();
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            match url.split_once('?') {
                None => url.to_string(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for piece in query.split('&').filter(|p| !p.is_empty()) {
                        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
                        let k = percent_decode(k);
                        if OUR_KEYS.contains(&k.as_str()) {
                            ours.push((k, percent_decode(v)));
                        } else {
                            kept.push(piece);
                        }
                    }
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        } else {
            let pairs = split_keyvalue(url)?;
            let mut kept = Vec::new();
            for (k, v) in pairs {
                if OUR_KEYS.contains(&k.as_str()) {
                    ours.push((k, v));
                } else {
                    kept.push(format!("{k}={}", quote_value(&v)));
                }
            }
            kept.join(" ")
        };
        let mut config: Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            Error::config(format!("malformed PostgreSQL connection string: {e}"))
        })?;
        let mut info = ConnInfo {
            config: Config::new(),
            tls_mode: TlsMode::Prefer,
            root_cert: None,
            client_cert: None,
            client_key: None,
            describe: String::new(),
        };
        for (k, v) in ours {
            match k.as_str() {
                "sslmode" => {
                    info.tls_mode =
                        match v.as_str() {
                            "disable" => TlsMode::Disable,
                            "allow" | "prefer" => TlsMode::Prefer,
                            "require" => TlsMode::Require,
                            "verify-ca" => TlsMode::VerifyCa,
                            "verify-full" => TlsMode::VerifyFull,
                            _ => return Err(Error::config(
                                "malformed PostgreSQL connection string: sslmode must be one of \
                                 disable, allow, prefer, require, verify-ca, verify-full",
                            )),
                        }
                }
                "sslrootcert" => info.root_cert = Some(v),
                "sslcert" => info.client_cert = Some(v),
                "sslkey" => info.client_key = Some(v),
                _ => {}
            }
        }
        if info.tls_mode == TlsMode::Require && info.root_cert.is_some() {
            // libpq: require with a root certificate behaves like verify-ca.
            info.tls_mode = TlsMode::VerifyCa;
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(Error::config(
                "PostgreSQL connection string without a host (give host=/path/to/socket/dir \
                 or host=name)",
            ));
        }
        if config.get_user().is_none() {
            let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
            match user {
                Some(u) => {
                    config.user(&u);
                }
                None => {
                    return Err(Error::config(
                        "PostgreSQL connection string without a user (add user=NAME)",
                    ))
                }
            }
        }
        // libpq never asks for TLS over a unix socket; with `prefer` neither do we (asking
        // costs a round trip, and the OpenSSL context costs milliseconds of CPU).
        let unix_only = config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, Host::Unix(_)));
        config.ssl_mode(match info.tls_mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer if unix_only => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        info.describe = describe_config(&config);
        info.config = config;
        Ok(info)
    }

    /// `postgres host=... port=... dbname=... user=...` (never the password).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn tls_mode(&self) -> TlsMode {
        self.tls_mode
    }

    /// The driver configuration and the TLS connector, for mailctl's transactional
    /// handle (`txn.rs`), which keeps one session per transaction.
    pub(crate) fn connector(&self) -> Result<(Config, MakeTls)> {
        Ok((self.config.clone(), self.tls_connector()?))
    }

    fn tls_connector(&self) -> Result<MakeTls> {
        let verify = match self.tls_mode {
            TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => Verify::None,
            TlsMode::VerifyCa => Verify::Chain,
            TlsMode::VerifyFull => Verify::Full,
        };
        let files = TlsFiles {
            root_cert: self.root_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        };
        if verify != Verify::None {
            if let Some(ca) = &files.root_cert {
                if !std::path::Path::new(ca).is_file() {
                    return Err(Error::config(format!(
                        "{}: sslrootcert {ca}: no such file",
                        self.describe
                    )));
                }
            }
        }
        MakeTls::new(verify, &files).map_err(|e| {
            Error::config(format!(
                "{}: cannot set up TLS ({}): {}",
                self.describe, e.what, e.error
            ))
        })
    }
}

fn describe_config(c: &Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = c.get_ports().iter().map(|p| p.to_string()).collect();
    let mut s = format!("postgres host={}", hosts.join(","));
    if !ports.is_empty() {
        s.push_str(&format!(" port={}", ports.join(",")));
    }
    if let Some(db) = c.get_dbname() {
        s.push_str(&format!(" dbname={db}"));
    }
    if let Some(u) = c.get_user() {
        s.push_str(&format!(" user={u}"));
    }
    s
}

/// A PostgreSQL directory. Connects lazily (on the first call) and reconnects after a
/// failure; every wait is bounded by the timeout given to [`PgDirectory::connect`].
pub struct PgDirectory {
    info: ConnInfo,
    /// None when TLS is never attempted (sslmode=disable, or prefer over unix sockets).
    tls: Option<MakeTls>,
    timeout: Duration,
    /// Dropped with `shutdown_background` (see `Drop`), so that dropping a directory inside
    /// an async context does not panic.
    rt: ManuallyDrop<tokio::runtime::Runtime>,
    client: Option<Client>,
    conn_task: Option<tokio::task::JoinHandle<()>>,
    has_password: Option<bool>,
    /// Prepared statements of this connection, by SQL text (a few constants).
    stmts: HashMap<String, Statement>,
    /// Queries run once on this connection unprepared (`query_typed`); prepared the next time.
    seen: HashSet<String>,
}

impl Drop for PgDirectory {
    fn drop(&mut self) {
        self.disconnect();
        // SAFETY: `rt` is never used again: this is the destructor.
        let rt = unsafe { ManuallyDrop::take(&mut self.rt) };
        rt.shutdown_background();
    }
}

/// What a failed call means.
fn classify(e: &tokio_postgres::Error) -> (ErrorKind, bool) {
    // (kind, connection still usable)
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let kind = if code.starts_with("28")
            || code == "3D000"
            || code == "42501"
            || code == "42P01"
            || code == "42703"
        {
            ErrorKind::Config
        } else if code.starts_with("22") || code.starts_with("23") {
            ErrorKind::BadInput
        } else {
            ErrorKind::Temporary
        };
        let usable = !(code.starts_with("57P") || code.starts_with("08") || code.starts_with("28"));
        return (kind, usable && !e.is_closed());
    }
    let text = e.to_string();
    let kind = if text.contains("password missing")
        || text.contains("certificate")
        || text.contains("does not support TLS")
        || text.contains("invalid configuration")
    {
        ErrorKind::Config
    } else {
        ErrorKind::Temporary
    };
    (kind, false)
}

impl PgDirectory {
    /// Prepare a directory for `url`; nothing is connected yet (see the module doc).
    /// Errors here are configuration errors (a malformed string, an unreadable CA file).
    pub fn connect(url: &str, timeout: Duration) -> Result<Self> {
        let info = ConnInfo::parse(url)?;
        let tls = if info.config.get_ssl_mode() == SslMode::Disable {
            None
        } else {
            Some(info.tls_connector()?)
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the PostgreSQL client runtime", e))?;
        let timeout = if timeout.is_zero() {
            super::DEFAULT_TIMEOUT
        } else {
            timeout
        };
        let mut info = info;
        info.config.connect_timeout(timeout);
        Ok(PgDirectory {
            info,
            tls,
            timeout,
            rt: ManuallyDrop::new(rt),
            client: None,
            conn_task: None,
            has_password: None,
            stmts: HashMap::new(),
            seen: HashSet::new(),
        })
    }

    /// The bound on each wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Run a future on the private runtime. Inside another runtime's context (where tokio
    /// forbids blocking) it runs on a short-lived helper thread instead of panicking.
    fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.rt.block_on(fut);
        }
        let rt: &tokio::runtime::Runtime = &self.rt;
        std::thread::scope(|scope| match scope.spawn(move || rt.block_on(fut)).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    /// Run `fut` on the private runtime, giving up at `deadline`.
    fn bounded<F>(
        &self,
        deadline: Instant,
        fut: F,
    ) -> std::result::Result<F::Output, tokio::time::error::Elapsed>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        // The timer is made inside the runtime (it needs its time driver).
        self.block_on(async move { tokio::time::timeout_at(deadline, fut).await })
    }

    fn disconnect(&mut self) {
        self.client = None;
        self.has_password = None;
        self.stmts.clear();
        self.seen.clear();
        if let Some(task) = self.conn_task.take() {
            task.abort();
        }
    }

    fn timed_out(&mut self, what: &str) -> Error {
        self.disconnect();
        Error::temporary(format!(
            "{}: no answer within {:.1}s ({what}); the database is down or hung",
            self.info.describe,
            self.timeout.as_secs_f64()
        ))
    }

    fn fail(&mut self, what: &str, e: tokio_postgres::Error) -> Error {
        let (kind, usable) = classify(&e);
        self.stmts.clear();
        if !usable {
            self.disconnect();
        }
        let mut msg = format!("{}: {what}: {e}", self.info.describe);
        if let Some(db) = e.as_db_error() {
            if let Some(d) = db.detail() {
                msg.push_str(&format!(" ({d})"));
            }
            let code = db.code().code();
            if code == "42P01" || code == "42703" {
                msg.push_str(" (check the schema with `mailctl schema check`)");
            }
        }
        Error::with_source(kind, msg, e)
    }

    /// Connect if not connected, within `deadline`.
    fn ensure(&mut self, deadline: Instant) -> Result<()> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.disconnect();
        let config = self.info.config.clone();
        let res = match self.tls.clone() {
            // The connection future differs by TLS type: spawn it here, hand back the client.
            Some(tls) => self.bounded(deadline, async move {
                let (client, connection) = config.connect(tls).await?;
                let task = tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        log::debug!("postgres connection closed: {e}");
                    }
                });
                Ok::<_, tokio_postgres::Error>((client, task))
            }),
            None => self.bounded(deadline, async move {
                let (client, connection) = config.connect(NoTls).await?;
                let task = tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        log::debug!("postgres connection closed: {e}");
                    }
                });
                Ok::<_, tokio_postgres::Error>((client, task))
            }),
        };
        match res {
            Err(_) => Err(self.timed_out("connecting")),
            Ok(Err(e)) => Err(self.fail("cannot connect", e)),
            Ok(Ok((client, task))) => {
                self.client = Some(client);
                self.conn_task = Some(task);
                Ok(())
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }
}

fn to_sql_params<'a>(params: &'a [Param<'a>]) -> Vec<Box<dyn ToSql + Sync + Send + 'a>> {
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send + 'a> {
            match p {
                Param::Text(s) => Box::new(*s),
                Param::Bool(b) => Box::new(*b),
                Param::NullText => Box::new(None::<&str>),
            }
        })
        .collect()
}

fn row_vals(row: &tokio_postgres::Row) -> Vec<Val> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)
                .ok()
                .flatten()
                .map_or(Val::Null, Val::Bool)
        } else if *t == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)
                .ok()
                .flatten()
                .map_or(Val::Null, |v| Val::Int(v.into()))
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)
                .ok()
                .flatten()
                .map_or(Val::Null, |v| Val::Int(v.into()))
        } else if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)
                .ok()
                .flatten()
                .map_or(Val::Null, Val::Int)
        } else {
            row.try_get::<_, Option<String>>(i)
                .ok()
                .flatten()
                .map_or(Val::Null, Val::Text)
        };
        out.push(v);
    }
    out
}

impl PgDirectory {
    /// The prepared statement for `sql` (prepared once per connection).
    fn statement(&mut self, sql: &str, deadline: Instant) -> Result<Statement> {
        self.ensure(deadline)?;
        if let Some(st) = self.stmts.get(sql) {
            return Ok(st.clone());
        }
        let Some(client) = self.client.as_ref() else {
            return Err(self.not_connected());
        };
        let res = self.bounded(deadline, client.prepare(sql));
        match res {
            Err(_) => Err(self.timed_out("preparing a query")),
            Ok(Err(e)) => Err(self.fail("query failed", e)),
            Ok(Ok(st)) => {
                self.stmts.insert(sql.to_string(), st.clone());
                Ok(st)
            }
        }
    }

    fn not_connected(&self) -> Error {
        Error::temporary(format!("{}: not connected", self.info.describe))
    }
}

fn typed_params<'a>(params: &'a [Param<'a>]) -> Vec<(Box<dyn ToSql + Sync + Send + 'a>, Type)> {
    params
        .iter()
        .map(|p| -> (Box<dyn ToSql + Sync + Send + 'a>, Type) {
            match p {
                Param::Text(s) => (Box::new(*s), Type::TEXT),
                Param::Bool(b) => (Box::new(*b), Type::BOOL),
                Param::NullText => (Box::new(None::<&str>), Type::TEXT),
            }
        })
        .collect()
}

/// One query of a pipeline: the prepared statement when there is one, else `query_typed`.
async fn run_one(
    client: &Client,
    sql: &str,
    st: Option<Statement>,
    params: &[(Box<dyn ToSql + Sync + Send + '_>, Type)],
) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    match st {
        Some(st) => {
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|(b, _)| b.as_ref() as &(dyn ToSql + Sync))
                .collect();
            client.query(&st, &refs).await
        }
        None => {
            let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                .iter()
                .map(|(b, t)| (b.as_ref() as &(dyn ToSql + Sync), t.clone()))
                .collect();
            client.query_typed(sql, &typed).await
        }
    }
}

impl PgDirectory {
    /// The prepared statement for `sql` if it was seen before on this connection (prepared
    /// now if need be), None for a first use (run with `query_typed`).
    fn statement_if_seen(&mut self, sql: &str, deadline: Instant) -> Result<Option<Statement>> {
        if self.stmts.contains_key(sql) || self.seen.contains(sql) {
            self.statement(sql, deadline).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Sql for PgDirectory {
    fn describe(&self) -> String {
        self.info.describe.clone()
    }
    fn query_pair(
        &mut self,
        a: (&str, &[Param<'_>]),
        b: (&str, &[Param<'_>]),
    ) -> Result<(Vec<Vec<Val>>, Vec<Vec<Val>>)> {
        let deadline = self.deadline();
        self.ensure(deadline)?;
        let sa = self.statement_if_seen(a.0, deadline)?;
        let sb = self.statement_if_seen(b.0, deadline)?;
        let first = (sa.is_none(), sb.is_none());
        let Some(client) = self.client.as_ref() else {
            return Err(self.not_connected());
        };
        let (pa, pb) = (typed_params(a.1), typed_params(b.1));
        // Both futures send their messages when first polled, before either waits for an
        // answer: the connection writes them together and the server answers both.
        let res = self.bounded(deadline, async {
            tokio::join!(run_one(client, a.0, sa, &pa), run_one(client, b.0, sb, &pb))
        });
        match res {
            Err(_) => Err(self.timed_out("query")),
            Ok((Err(e), _)) | Ok((_, Err(e))) => Err(self.fail("query failed", e)),
            Ok((Ok(ra), Ok(rb))) => {
                if first.0 {
                    self.seen.insert(a.0.to_string());
                }
                if first.1 {
                    self.seen.insert(b.0.to_string());
                }
                Ok((
                    ra.iter().map(row_vals).collect(),
                    rb.iter().map(row_vals).collect(),
                ))
            }
        }
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Val>>> {
        let deadline = self.deadline();
        self.ensure(deadline)?;
        // First use on this connection: Parse + Bind + Execute in one round trip
        // (`query_typed`); prepared (one more round trip, once) when it comes again.
        let st = self.statement_if_seen(sql, deadline)?;
        let first = st.is_none();
        let Some(client) = self.client.as_ref() else {
            return Err(self.not_connected());
        };
        let typed = typed_params(params);
        let res = self.bounded(deadline, run_one(client, sql, st, &typed));
        match res {
            Err(_) => Err(self.timed_out("query")),
            Ok(Err(e)) => Err(self.fail("query failed", e)),
            Ok(Ok(rows)) => {
                if first {
                    self.seen.insert(sql.to_string());
                }
                Ok(rows.iter().map(row_vals).collect())
            }
        }
    }

    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let deadline = self.deadline();
        let st = self.statement(sql, deadline)?;
        let Some(client) = self.client.as_ref() else {
            return Err(self.not_connected());
        };
        let boxed = to_sql_params(params);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let res = self.bounded(deadline, client.execute(&st, &refs));
        match res {
            Err(_) => Err(self.timed_out("statement")),
            Ok(Err(e)) => Err(self.fail("statement failed", e)),
            Ok(Ok(n)) => Ok(n),
        }
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        let deadline = self.deadline();
        self.ensure(deadline)?;
        let Some(client) = self.client.as_ref() else {
            return Err(Error::temporary(format!(
                "{}: not connected",
                self.info.describe
            )));
        };
        let res = self
            .rt
            .block_on(async { tokio::time::timeout_at(deadline, client.batch_execute(sql)).await });
        match res {
            Err(_) => Err(self.timed_out("statements")),
            Ok(Err(e)) => Err(self.fail("statements failed", e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    fn rollback(&mut self) {
        if self.client.is_some() {
            let _ = self.batch("ROLLBACK");
        }
    }

    fn columns_sql(&self) -> &'static str {
        "SELECT column_name::text, \
                data_type::text || coalesce('(' || character_maximum_length::text || ')', '') \
         FROM information_schema.columns \
         WHERE table_name::text = $1 \
           AND table_schema::name = ANY (current_schemas(false)) \
         ORDER BY ordinal_position"
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn password_expr(&mut self) -> Result<&'static str> {
        // A whole-row reference: no error (and NULL) when the column does not exist, so no
        // catalog probe; evaluated only for the row returned.
        Ok("to_jsonb(mail) ->> 'password'")
    }

    fn has_password(&mut self) -> Result<bool> {
        if let Some(h) = self.has_password {
            return Ok(h);
        }
        // The catalog directly (information_schema.columns is a slow view); `mail` is
        // resolved through the search_path like the queries' own `mail`.
        let rows = self.query(
            "SELECT count(*) FROM pg_catalog.pg_attribute \
             WHERE attrelid = to_regclass('mail') AND attname = 'password' \
               AND NOT attisdropped AND attnum > 0",
            &[],
        )?;
        let h = rows
            .first()
            .and_then(|r| r.first())
            .and_then(Val::int)
            .unwrap_or(0)
            > 0;
        // Cached for this connection (a reconnect looks again).
        self.has_password = Some(h);
        Ok(h)
    }
}

/// `schema init` on PostgreSQL (idempotent: `CREATE ... IF NOT EXISTS`).
pub(crate) fn init_schema(url: &str, ddl: &str, timeout: Duration) -> Result<()> {
    let mut db = PgDirectory::connect(url, timeout)?;
    db.batch(&format!("BEGIN;\n{ddl}\nCOMMIT;"))
        .inspect_err(|_| db.rollback())
}

/// `schema check` on PostgreSQL.
pub(crate) fn check_schema(
    url: &str,
    role: Role,
    timeout: Duration,
) -> Result<super::schema::CheckReport> {
    let mut db = PgDirectory::connect(url, timeout)?;
    super::schema::compare(role, |t| db.columns(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let i = ConnInfo::parse("host=/run/postgresql dbname=mail user=mail").unwrap();
        assert_eq!(
            i.describe(),
            "postgres host=/run/postgresql dbname=mail user=mail"
        );
        let i = ConnInfo::parse(
            "host=db.example port=5433 user=mail password='se cr\\'et' dbname=mail \
             sslmode=verify-full sslrootcert=/etc/ssl/ca.pem",
        )
        .unwrap();
        assert_eq!(i.tls_mode(), TlsMode::VerifyFull);
        assert!(!i.describe().contains("se cr"));
        assert_eq!(i.config.get_password(), Some(&b"se cr'et"[..]));
        let i = ConnInfo::parse(
            "postgresql://mail:pw@127.0.0.1:5432/mail?sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(i.tls_mode(), TlsMode::VerifyCa);
        assert_eq!(i.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(
            i.describe(),
            "postgres host=127.0.0.1 port=5432 dbname=mail user=mail"
        );
        let i = ConnInfo::parse("postgresql://mail@h/mail?sslmode=require&sslrootcert=/x").unwrap();
        assert_eq!(i.tls_mode(), TlsMode::VerifyCa);
        let e = ConnInfo::parse("host=h user=u password=topsecret sslmode=bogus").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(!e.to_string().contains("topsecret"));
        let e = ConnInfo::parse("host=h user=u password='topsecret").unwrap_err();
        assert!(!e.to_string().contains("topsecret"));
        assert!(ConnInfo::parse("dbname=mail user=mail").is_err());
        // Hostile strings never panic.
        for s in [
            "",
            "=",
            "==",
            "a=b=c",
            "host='",
            "host=\\",
            "host='\\",
            "postgresql://",
            "postgresql://%",
            "postgresql://h/db?%",
            "postgresql://h/db?sslmode=%zz&sslrootcert=%e2%82",
            "postgresql://h/db?&&=&",
            "host=дом user=я",
            "host=h user=u\0",
            "\0=\0",
        ] {
            let _ = ConnInfo::parse(s);
        }
        assert_eq!(percent_decode("%2Fa%2f%zz%"), "/a/%zz%");
    }
}
