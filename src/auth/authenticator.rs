//! The authenticator: passdb (verify a login) and userdb (describe a user) over the
//! directory. Used directly by `mailauth checkpassword` (direct mode), by the JSON API
//! ([`super::api`]) inside `mailauth serve`, and by the user iteration commands.
//!
//! It keeps directory connections open between requests (a small pool; a connection that
//! failed is dropped and reopened on the next request), reads the configured `storage`
//! directories in order (the first that answers wins) and never turns a database failure
//! into "unknown user": that is [`ErrorKind::Temporary`](crate::error::ErrorKind).

use super::scheme::{self, Scheme};
use crate::config::{Config, Role};
use crate::directory::{self, Directory, MailboxRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::names::{Address, Domain, LocalPart, Strictness};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The `[auth]` settings this module reads (other `[auth]` keys belong to the HTTP daemon
/// and are ignored here).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Scheme of stored passwords without a `{SCHEME}` prefix (Dovecot's
    /// `default_pass_scheme`). Default `MD5`: MD5-CRYPT or a bare MD5 digest, which is what
    /// the seed stored.
    pub default_scheme: String,
    /// Unix socket of `mailauth serve`. When set and present, `checkpassword` asks the daemon
    /// and falls back to a direct database connection when the socket is absent or refuses.
    pub socket: Option<PathBuf>,
    /// Bound on a whole request to the daemon, in seconds (default 3). A daemon that hangs
    /// longer is a temporary failure (never a fallback that could double the wait).
    pub socket_timeout: f64,
    /// Dovecot proxy mode: when a user's primary node is another node, passdb answers
    /// `proxy=y host=<primary's address> nopassword=y`.
    pub proxy_mode: bool,
    /// Node name → IP address, for proxy mode (`Auth-Server` style: an IP, not a name).
    /// A node missing here is resolved through the system resolver.
    pub nodes: BTreeMap<String, String>,
    /// Directory connections kept open by the daemon (default 4).
    pub pool_size: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            default_scheme: "MD5".to_string(),
            socket: None,
            socket_timeout: 3.0,
            proxy_mode: false,
            nodes: BTreeMap::new(),
            pool_size: 4,
        }
    }
}

impl AuthSettings {
    pub fn socket_timeout(&self) -> Duration {
        if self.socket_timeout.is_finite() && self.socket_timeout > 0.0 {
            Duration::from_secs_f64(self.socket_timeout.min(60.0))
        } else {
            Duration::from_secs(3)
        }
    }
}

/// Who is asking (for logs and proxy decisions). Never holds the password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthContext {
    /// imap, pop3, lmtp, doveadm, ...
    pub service: String,
    pub remote_ip: String,
    pub local_ip: String,
}

/// Where a proxied user goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyTarget {
    pub host: String,
    pub port: u16,
}

/// What Dovecot needs to know about a user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserInfo {
    /// Canonical login: `mailbox@domain`, lower case, subaddress removed.
    pub user: String,
    pub home: String,
    /// Dovecot `mail` location, `maildir:<home>/<maildir>`.
    pub mail: String,
    pub uid: u32,
    pub gid: u32,
    /// Set in proxy mode when the user lives on another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyTarget>,
}

/// Outcome of a passdb or userdb request that reached a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(UserInfo),
    /// Wrong password, or no usable stored password (with a reason for the log).
    PasswordMismatch(String),
    UserUnknown,
    /// Mailbox or domain disabled (password was right). Fails a login; userdb never says it.
    UserDisabled,
}

/// One pooled set of connections (one slot per configured directory).
struct Slot {
    conns: Vec<Option<Box<dyn Directory>>>,
}

/// See the module documentation.
pub struct Authenticator {
    config: Config,
    settings: AuthSettings,
    default_scheme: Scheme,
    node: String,
    /// Indices into `config.directories` of the directories we read (role storage).
    dirs: Vec<usize>,
    pool: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    timeout: Duration,
    /// The last stored password value read (any user): unknown users and users without a
    /// password are checked against it, so that they cost what a real user costs.
    last_stored: Mutex<Option<String>>,
    /// Before any real value was read: a value in the default scheme (made on first use).
    default_decoy: OnceLock<String>,
}

impl Authenticator {
    /// Build from a configuration. Reads `[auth]`; connects lazily.
    pub fn new(config: Config) -> Result<Authenticator> {
        let settings: AuthSettings = config.section("auth")?;
        let default_scheme = Scheme::from_name(&settings.default_scheme).ok_or_else(|| {
            Error::config(format!(
                "[auth] default_scheme: unknown password scheme {}",
                crate::names::printable(&settings.default_scheme)
            ))
        })?;
        let dirs: Vec<usize> = config
            .directories
            .iter()
            .enumerate()
            .filter(|(_, d)| d.role == Role::Storage)
            .map(|(i, _)| i)
            .collect();
        if dirs.is_empty() {
            return Err(Error::config(
                "no [[directory]] with role = \"storage\" is configured (mailauth needs the \
                 password column); add one or pass --db URL",
            ));
        }
        // Only proxy mode needs this node's name.
        let node = if settings.proxy_mode {
            config.node_name()?
        } else {
            config.node_name().unwrap_or_default()
        };
        let pool_size = settings.pool_size.clamp(1, 64);
        let pool = (0..pool_size)
            .map(|_| {
                Mutex::new(Slot {
                    conns: dirs.iter().map(|_| None).collect(),
                })
            })
            .collect();
        let timeout = config.db_timeout();
        Ok(Authenticator {
            config,
            settings,
            default_scheme,
            node,
            dirs,
            pool,
            next: AtomicUsize::new(0),
            timeout,
            last_stored: Mutex::new(None),
            default_decoy: OnceLock::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }
    pub fn default_scheme(&self) -> Scheme {
        self.default_scheme
    }

    /// Run `f` against the first directory that answers. A connection that fails with a
    /// temporary error is dropped; a cached one is retried once fresh (it may be stale after
    /// a database restart). When every directory fails, the last error is returned.
    fn with_directory<T>(&self, mut f: impl FnMut(&mut dyn Directory) -> Result<T>) -> Result<T> {
        let n = self.pool.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // Take a free slot if there is one, else wait for ours.
        let mut guard = None;
        for i in 0..n {
            if let Ok(g) = self.pool[(start + i) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut slot = match guard {
            Some(g) => g,
            None => self.pool[start]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        };
        let mut last = Error::temporary("no directory configured");
        for (k, &idx) in self.dirs.iter().enumerate() {
            let dcfg = &self.config.directories[idx];
            let mut attempts = 0;
            loop {
                attempts += 1;
                let cached = slot.conns[k].is_some();
                if !cached {
                    match directory::open(&dcfg.url, self.timeout) {
                        Ok(d) => slot.conns[k] = Some(d),
                        Err(e) => {
                            log::warn!("directory {}: {e}", dcfg.name);
                            if e.kind() == ErrorKind::Config {
                                return Err(e);
                            }
                            last = e;
                            break;
                        }
                    }
                }
                let Some(conn) = slot.conns[k].as_mut() else {
                    break;
                };
                match f(conn.as_mut()) {
                    Ok(v) => return Ok(v),
                    Err(e) if e.is_temporary() => {
                        log::warn!("directory {}: {e}", dcfg.name);
                        slot.conns[k] = None;
                        last = e;
                        if cached && attempts < 2 {
                            continue;
                        }
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(Error::new(
            ErrorKind::Temporary,
            format!("no directory answered: {}", last.message()),
        ))
    }

    /// Parse a login name: `mailbox@domain` (`mailbox+tag@domain` means `mailbox@domain`).
    /// Anything else is an unknown user.
    fn parse_user(user: &str) -> Option<(LocalPart, Domain)> {
        let addr = Address::parse(user, Strictness::Lookup).ok()?;
        let mailbox = LocalPart::parse_mailbox(addr.local.mailbox(), Strictness::Lookup).ok()?;
        Some((mailbox, addr.domain))
    }

    fn lookup(&self, user: &str) -> Result<Option<MailboxRecord>> {
        let Some((mailbox, domain)) = Self::parse_user(user) else {
            return Ok(None);
        };
        self.with_directory(|d| d.mailbox(&mailbox, &domain))
    }

    /// The userdb fields of a mailbox: home and Maildir from `[mail]` (core's path
    /// templates, checked to stay under the mail root), uid/gid from `[mail] uid/gid`.
    fn user_info(&self, rec: &MailboxRecord) -> Result<UserInfo> {
        let home = self.config.home(&rec.mailbox, &rec.domain)?;
        let maildir = self.config.maildir(&rec.mailbox, &rec.domain)?;
        let (Some(home), Some(maildir)) = (home.to_str(), maildir.to_str()) else {
            return Err(Error::config("[mail] home gives a path that is not UTF-8"));
        };
        Ok(UserInfo {
            user: rec.address(),
            home: home.to_string(),
            mail: format!("maildir:{maildir}"),
            uid: self.config.mail.uid,
            gid: self.config.mail.gid,
            proxy: None,
        })
    }

    /// Spend on a login that cannot succeed (unknown user, no stored password) what checking
    /// a real stored value costs, so that response times do not tell which names exist.
    fn decoy_check(&self, password: &[u8]) {
        let last = self
            .last_stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stored = last.unwrap_or_else(|| {
            self.default_decoy
                .get_or_init(|| {
                    // The seed's bare MD5 hex is what `MD5` mostly meets: cost like it.
                    let scheme = match self.default_scheme {
                        Scheme::Md5 => Scheme::PlainMd5,
                        s => s,
                    };
                    scheme::generate(b"decoy password", scheme).unwrap_or_default()
                })
                .clone()
        });
        let _ = scheme::verify(password, &stored, self.default_scheme);
    }

    /// Remember `stored` as the value [`Self::decoy_check`] uses.
    fn remember_stored(&self, stored: &str) {
        let mut last = self.last_stored.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(stored) {
            *last = Some(stored.to_string());
        }
    }

    /// Verify a login. `Err` only for temporary failures (database down or hung) and
    /// configuration errors; every final "no" is an [`Outcome`]. Unknown users and users
    /// without a stored password cost a password check too ([`Self::decoy_check`]).
    pub fn passdb(&self, user: &str, password: &[u8], ctx: &AuthContext) -> Result<Outcome> {
        let Some(rec) = self.lookup(user)? else {
            self.decoy_check(password);
            log::info!(
                "passdb: unknown user {} (service={} rip={})",
                crate::names::printable(user),
                ctx.service,
                ctx.remote_ip
            );
            return Ok(Outcome::UserUnknown);
        };
        let addr = rec.address();
        let Some(stored) = rec.password.as_deref() else {
            self.decoy_check(password);
            let why = "no password stored (smtp-role directory or NULL password)".to_string();
            log::warn!("passdb: {addr}: {why}");
            return Ok(Outcome::PasswordMismatch(why));
        };
        self.remember_stored(stored);
        match scheme::verify(password, stored, self.default_scheme) {
            Ok(true) => {}
            Ok(false) => {
                log::info!(
                    "passdb: {addr}: password mismatch (service={} rip={})",
                    ctx.service,
                    ctx.remote_ip
                );
                return Ok(Outcome::PasswordMismatch("password mismatch".to_string()));
            }
            Err(e) => {
                log::warn!("passdb: {addr}: {e}");
                return Ok(Outcome::PasswordMismatch(e.to_string()));
            }
        }
        if !rec.is_active() {
            log::info!(
                "passdb: {addr}: {} disabled",
                if rec.mailbox_active {
                    "domain"
                } else {
                    "mailbox"
                }
            );
            return Ok(Outcome::UserDisabled);
        }
        let mut info = self.user_info(&rec)?;
        if self.settings.proxy_mode {
            info.proxy = self.proxy_target(&rec.domain, &ctx.service)?;
        }
        Ok(Outcome::Ok(info))
    }

    /// Describe a user without a password (LMTP delivery, doveadm). A disabled mailbox or
    /// domain still answers, so that mail already accepted is delivered.
    pub fn userdb(&self, user: &str) -> Result<Outcome> {
        match self.lookup(user)? {
            Some(rec) => Ok(Outcome::Ok(self.user_info(&rec)?)),
            None => Ok(Outcome::UserUnknown),
        }
    }

    /// Every mailbox, as userdb entries, sorted by address (for iteration).
    pub fn users(&self) -> Result<Vec<UserInfo>> {
        let recs = self.with_directory(|d| d.mailboxes())?;
        recs.iter().map(|r| self.user_info(r)).collect()
    }

    fn proxy_target(&self, domain: &Domain, service: &str) -> Result<Option<ProxyTarget>> {
        let Some(route) = self.with_directory(|d| d.route(domain))? else {
            return Ok(None);
        };
        if route.primary.is_empty() || route.primary == self.node {
            return Ok(None);
        }
        let host = self.node_address(&route.primary)?;
        let port = match service {
            "pop3" => self.config.ports.pop3,
            "smtp" | "submission" => self.config.ports.smtp,
            _ => self.config.ports.imap,
        };
        Ok(Some(ProxyTarget { host, port }))
    }

    /// A node's IP address: `[auth.nodes]`, else the system resolver.
    pub fn node_address(&self, node: &str) -> Result<String> {
        if let Some(ip) = self.settings.nodes.get(node) {
            return Ok(ip.clone());
        }
        if node.parse::<std::net::IpAddr>().is_ok() {
            return Ok(node.to_string());
        }
        use std::net::ToSocketAddrs;
        match (node, 0u16).to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .map(|a| a.ip().to_string())
                .ok_or_else(|| Error::temporary(format!("node {node} has no address"))),
            Err(e) => Err(Error::temporary(format!(
                "cannot resolve node {node}: {e} (add it to [auth.nodes])"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        let (m, d) = Authenticator::parse_user("Ivanov+Tag@Branch.Domain.RU").unwrap();
        assert_eq!((m.as_str(), d.as_str()), ("ivanov", "branch.domain.ru"));
        for bad in [
            "ivanov", "a'b@x.ru", "%u@x.ru", "@x.ru", "a@b", "+x@a.ru", "",
        ] {
            assert!(Authenticator::parse_user(bad).is_none(), "{bad}");
        }
    }
}
