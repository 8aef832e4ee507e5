//! The HTTP service's settings: keys of `[auth]` it reads, and its own sub-tables
//! `[auth.http]`, `[auth.throttle]`, `[auth.health]`; `[auth.nodes]` is shared with the
//! authenticator. Other keys of `[auth]` (`default_scheme`, `socket`, `proxy_mode`, ...)
//! belong to [`crate::auth::authenticator::AuthSettings`] and are ignored here.

use crate::auth::health::HealthConfig;
use crate::auth::throttle::ThrottleConfig;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[auth]` as the HTTP service sees it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct AuthSection {
    /// Let nginx proxy SMTP without authentication (`Auth-Method: none`), routed by the
    /// recipient's domain. Off by default: the proxy must never become an open relay.
    pub smtp_allow_none: bool,
    pub http: HttpConfig,
    pub throttle: ThrottleConfig,
    pub health: HealthConfig,
    /// Node name → IP address, overriding name resolution (`storage-01 = "10.0.0.1"`).
    pub nodes: BTreeMap<String, String>,
}

/// `[auth.http]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Addresses used when `--listen` is not given.
    pub listen: Vec<String>,
    /// Permissions of unix sockets we listen on, octal (nginx's workers must be able to
    /// connect: e.g. "0660" with a shared group, or "0666").
    pub socket_mode: String,
    /// Request threads.
    pub workers: usize,
    /// Connections to each directory at most, opened on demand one at a time (requests
    /// beyond wait for a free one, up to `db_timeout`).
    pub db_connections: usize,
    /// Connections waiting for a free thread (the listen queue of each socket; the system
    /// may cap it: `net.core.somaxconn` on Linux, `kern.ipc.soacceptqueue` on FreeBSD).
    pub queue: usize,
    /// Seconds for reading a request and answering it (directory waits are bounded by
    /// `db_timeout`).
    pub timeout: f64,
    /// Largest request head (request line + headers), bytes.
    pub max_head: usize,
    pub max_headers: usize,
    /// Largest request body (JSON API), bytes.
    pub max_body: usize,
    /// Shared secret nginx sends (`auth_http_header X-Auth-Key "..."`); when set, requests
    /// without it are refused.
    pub secret: Option<String>,
    /// The header carrying the secret.
    pub secret_header: String,
    /// Seconds a resolved node address is cached.
    pub resolve_ttl: f64,
    /// Seconds a domain's routing (primary, backup) is cached (0 = ask every time). A
    /// change of `maps` takes effect within this time.
    pub route_ttl: f64,
    /// Seconds the mailbox record of a successful login is kept, so that the next logins of
    /// that user within this time need no lookup query (0 = none). A cached record is used
    /// only while the directory answers (`db_lease`); a password that does not match the
    /// cached record is checked against the directory's current one. A mailbox disabled
    /// (or a password changed) takes effect within this time for logins with the old
    /// password. Records in use are read again in the background past 3/4 of their life.
    pub user_ttl: f64,
    /// Seconds: a cached login is granted only if the directory answered a trivial
    /// statement sent at most this long ago (a background thread sends one every quarter
    /// of it while logins come in). A directory that fails (an error) lets nobody in from
    /// the moment it is seen; one that hangs, from at most this long after. 0 = strict: a
    /// statement sent after each request arrived (one database round trip per login).
    pub db_lease: f64,
    /// One log line per request.
    pub log_requests: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Vec::new(),
            socket_mode: "0660".to_string(),
            workers: 32,
            db_connections: 4,
            queue: 1024,
            timeout: 10.0,
            max_head: 16 * 1024,
            max_headers: 64,
            max_body: 64 * 1024,
            secret: None,
            secret_header: "X-Auth-Key".to_string(),
            resolve_ttl: 60.0,
            route_ttl: 2.0,
            user_ttl: 5.0,
            db_lease: 0.1,
            log_requests: true,
        }
    }
}

impl HttpConfig {
    /// The unix socket mode, checked.
    pub fn socket_mode(&self) -> crate::error::Result<u32> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                crate::error::Error::config(format!(
                    "[auth.http] socket_mode {}: expected an octal mode such as \"0660\"",
                    crate::names::printable(&self.socket_mode)
                ))
            })
    }

    pub fn timeout(&self) -> Duration {
        if self.timeout.is_finite() && self.timeout > 0.0 {
            Duration::from_secs_f64(self.timeout.min(600.0))
        } else {
            Duration::from_secs(10)
        }
    }
    pub fn route_ttl(&self) -> Duration {
        if self.route_ttl.is_finite() && self.route_ttl >= 0.0 {
            Duration::from_secs_f64(self.route_ttl.min(3600.0))
        } else {
            Duration::from_secs(2)
        }
    }
    pub fn user_ttl(&self) -> Duration {
        if self.user_ttl.is_finite() && self.user_ttl >= 0.0 {
            Duration::from_secs_f64(self.user_ttl.min(3600.0))
        } else {
            Duration::from_secs(5)
        }
    }
    pub fn db_lease(&self) -> Duration {
        if self.db_lease.is_finite() && self.db_lease >= 0.0 {
            Duration::from_secs_f64(self.db_lease.min(10.0))
        } else {
            Duration::from_millis(100)
        }
    }
    pub fn resolve_ttl(&self) -> Duration {
        if self.resolve_ttl.is_finite() && self.resolve_ttl >= 0.0 {
            Duration::from_secs_f64(self.resolve_ttl.min(86400.0))
        } else {
            Duration::from_secs(60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn tolerant_parent_strict_children() {
        let text = r#"
[auth]
default_scheme = "SHA512-CRYPT"
socket = "/run/mailauth/sock"
proxy_mode = true
pool_size = 4
smtp_allow_none = true
[auth.http]
listen = ["127.0.0.1:8185", "unix:/run/mailauth/http.sock"]
secret = "s3"
[auth.throttle]
pair_limit = 7
[auth.health]
interval = 0.5
[auth.nodes]
"storage-01.domain.ru" = "10.0.0.1"
"#;
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let s: AuthSection = config.section("auth").unwrap();
        assert!(s.smtp_allow_none);
        assert_eq!(s.http.listen.len(), 2);
        assert_eq!(s.http.secret.as_deref(), Some("s3"));
        assert_eq!(s.http.socket_mode().unwrap(), 0o660);
        assert_eq!(s.throttle.pair_limit, 7);
        assert_eq!(s.health.interval, 0.5);
        assert_eq!(s.nodes["storage-01.domain.ru"], "10.0.0.1");

        let bad = "[auth.http]\nlisten_on = [\"x\"]\n";
        let config = Config::parse(bad, Path::new("t.toml")).unwrap();
        let err = config.section::<AuthSection>("auth").unwrap_err();
        assert!(err.message().contains("listen_on"), "{err}");
        let defaults = Config::default().section::<AuthSection>("auth").unwrap();
        assert!(!defaults.smtp_allow_none);
    }
}
