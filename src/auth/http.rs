//! The auth daemon's HTTP/1.0 server (`mailauth serve`): nginx `auth_http` (`GET /auth`),
//! the JSON API for Dovecot's Lua passdb/userdb (`POST /passdb`, `POST /userdb`,
//! `GET /users`), and Prometheus counters (`GET /metrics`).
//!
//! It runs on the proxy host and reads whichever directory answers; it routes each user to
//! the primary storage of their domain, or to the backup when the primary's service does
//! not greet ([`crate::auth::health`]); it throttles failures ([`crate::auth::throttle`]).

pub mod config;
pub mod nginx;
pub mod pool;
pub mod server;
pub mod ttl_cache;
pub mod verify;

use crate::auth::api;
use crate::auth::authenticator::Authenticator;
use crate::auth::health::{HealthChecker, Protocol, Target};
use crate::auth::locks::{read, write};
use crate::auth::throttle::{HashGate, Throttle};
use crate::config::{Config, PortsConfig};
use crate::directory::{DomainRecord, MailboxRecord};
use crate::error::{Error, Result};
use config::AuthSection;
use pool::DirectoryPool;
use server::{Header, Listen, Request, Response};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use ttl_cache::TtlCache;

/// Default listen address (the seed's port, on loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8185";

/// Arguments of `mailauth serve`. Besides `--listen`, the daemon listens on `[auth] socket`
/// when it is set (where `mailauth checkpassword` looks for it).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Listen on ADDR: IP:PORT or unix:/path (repeatable) [default: [auth.http] listen,
    /// else 127.0.0.1:8185]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Where to log: auto (stderr on a terminal, else syslog), stderr or syslog
    #[arg(long, value_name = "TARGET", default_value = "auto")]
    pub log: String,
}

impl ServeArgs {
    /// The `--log` choice.
    pub fn log_target(&self) -> crate::logging::LogTarget {
        match self.log.as_str() {
            "stderr" => crate::logging::LogTarget::Stderr,
            "syslog" => crate::logging::LogTarget::Syslog,
            _ => crate::logging::LogTarget::Auto,
        }
    }
}

/// Run the daemon (never returns unless it cannot start).
pub fn serve(config: &Config, args: &ServeArgs) -> Result<()> {
    let service = Service::start(config)?;
    let mut listen = args.listen.clone();
    if listen.is_empty() {
        listen = service.settings.http.listen.clone();
    }
    if listen.is_empty() {
        listen.push(DEFAULT_LISTEN.to_string());
    }
    let mut listens: Vec<Listen> = listen
        .iter()
        .map(|l| Listen::parse(l))
        .collect::<Result<_>>()?;
    // `mailauth checkpassword` asks the daemon at `[auth] socket`: listen there too.
    if let Some(socket) = service.auth.settings().socket.clone() {
        let l = Listen::Unix(socket);
        if !listens.contains(&l) {
            listens.push(l);
        }
    }
    let http = &service.settings.http;
    let bound = server::bind(&listens, http.socket_mode()?, http.queue.clamp(1, 65535))?;
    // Tell whoever started us where we listen (port 0 resolved): tests and scripts read it.
    let mut shown: Vec<String> = bound.tcp_addrs().iter().map(|a| a.to_string()).collect();
    shown.extend(
        listens
            .iter()
            .filter(|l| matches!(l, Listen::Unix(_)))
            .map(|l| l.to_string()),
    );
    for a in &shown {
        println!("listening on {a}");
        log::info!("listening on {a}");
    }
    let limits = server::Limits {
        max_head: http.max_head.clamp(1024, 1 << 20),
        max_headers: http.max_headers.clamp(8, 1000),
        max_body: http.max_body.clamp(1024, 16 << 20),
        timeout: http.timeout(),
    };
    let workers = http.workers.clamp(1, 1024);
    let svc = Arc::clone(&service);
    let handler: Arc<server::Handler> =
        Arc::new(move |req: &Request, peer: &server::Peer<'_>| svc.handle(req, peer));
    server::run(bound, workers, limits, handler)
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 7],
    outcomes: [AtomicU64; 6],
    backup_routes: AtomicU64,
    user_cache_hits: AtomicU64,
    cache_refreshes: AtomicU64,
    bad_secret: AtomicU64,
}

const PATHS: [&str; 7] = [
    "/auth", "/passdb", "/userdb", "/users", "/metrics", "other", "invalid",
];

/// Node name → address cache.
struct Resolver {
    overrides: HashMap<String, IpAddr>,
    ttl: Duration,
    /// Read by every request: a read-write lock, so that requests never wait for each other.
    cache: RwLock<HashMap<String, (IpAddr, Instant)>>,
}

impl Resolver {
    fn resolve(&self, node: &str) -> std::result::Result<IpAddr, String> {
        if let Some(ip) = self.overrides.get(node) {
            return Ok(*ip);
        }
        if let Ok(ip) = node.parse::<IpAddr>() {
            return Ok(ip);
        }
        let now = Instant::now();
        if let Some((ip, at)) = read(&self.cache).get(node) {
            if now.duration_since(*at) < self.ttl {
                return Ok(*ip);
            }
        }
        let found = (node, 0u16)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve node {node}: {e}"))?
            .map(|a| a.ip())
            .min_by_key(|ip| ip.is_ipv6()) // prefer IPv4, as the seed's nslookup did
            .ok_or_else(|| format!("node {node} has no address"));
        match found {
            Ok(ip) => {
                write(&self.cache).insert(node.to_string(), (ip, now));
                Ok(ip)
            }
            Err(e) => {
                // A stale address beats none while DNS is down.
                if let Some((ip, _)) = read(&self.cache).get(node) {
                    return Ok(*ip);
                }
                Err(e)
            }
        }
    }
}

const ROUTE_CACHE_MAX: usize = 50_000;
const USER_CACHE_MAX: usize = 100_000;
/// Cache entries waiting for a refresh at most (more are left to expire).
const REFRESH_QUEUE: usize = 1024;
/// Cache entries refreshed together at most (one directory statement for the mailboxes).
const REFRESH_BATCH: usize = 256;
/// How often the refresher looks for entries to refresh.
const REFRESH_POLL: Duration = Duration::from_millis(100);

/// A cache entry in use and past 3/4 of its life, to be read again from the directory by the
/// refresher thread (off the requests' path).
enum Refresh {
    /// A mailbox record of the login cache (key: the address).
    User(crate::names::Address),
    Route(crate::names::Domain),
}

/// Everything a request needs, shared by the worker threads.
pub struct Service {
    pub settings: AuthSection,
    /// The authenticator behind the JSON API (shared with `mailauth checkpassword`).
    auth: Authenticator,
    /// A stored value in the default scheme, checked for unknown users (equal timing).
    decoy: String,
    ports: PortsConfig,
    pool: Arc<DirectoryPool>,
    /// `[auth.http] db_lease`: how old an answered ping may be for a cached login.
    db_lease: Duration,
    refresh: std::sync::mpsc::SyncSender<Refresh>,
    throttle: Throttle,
    gate: HashGate,
    health: HealthChecker,
    resolver: Resolver,
    /// Domain routes (saves a query per login; `route_ttl`).
    routes: TtlCache<crate::names::Domain, DomainRecord>,
    /// Mailbox records of recent successful logins (`user_ttl`; see [`Service::cached_login`]).
    users: TtlCache<String, MailboxRecord>,
    metrics: Metrics,
}

impl Service {
    /// The service, with its background threads (directory pings for `db_lease`, cache
    /// refreshes), which end when the last reference to it is dropped.
    pub fn start(config: &Config) -> Result<Arc<Service>> {
        let settings: AuthSection = config.section("auth")?;
        let mut overrides = HashMap::new();
        for (name, ip) in &settings.nodes {
            let parsed = ip.parse::<IpAddr>().map_err(|_| {
                Error::config(format!(
                    "[auth.nodes] {name}: {} is not an IP address",
                    crate::names::printable(ip)
                ))
            })?;
            overrides.insert(name.to_ascii_lowercase(), parsed);
        }
        let pool = Arc::new(DirectoryPool::new(
            config,
            settings.http.db_connections.clamp(1, 1024),
        )?);
        let db_lease = settings.http.db_lease();
        DirectoryPool::keep_answering(&pool, db_lease)?;
        let (refresh, refresh_queue) = std::sync::mpsc::sync_channel(REFRESH_QUEUE);
        let auth = Authenticator::new(config.clone())?;
        let decoy = crate::auth::scheme::generate(b"decoy password", auth.default_scheme())
            .unwrap_or_default();
        let service = Arc::new(Service {
            auth,
            decoy,
            ports: config.ports.clone(),
            pool,
            db_lease,
            refresh,
            throttle: Throttle::new(settings.throttle.clone()),
            gate: HashGate::new(
                settings.throttle.hash_concurrency,
                settings.throttle.hash_wait,
            ),
            health: HealthChecker::start(settings.health.clone()),
            resolver: Resolver {
                overrides,
                ttl: settings.http.resolve_ttl(),
                cache: RwLock::new(HashMap::new()),
            },
            routes: TtlCache::new(settings.http.route_ttl(), ROUTE_CACHE_MAX),
            users: TtlCache::new(settings.http.user_ttl(), USER_CACHE_MAX),
            metrics: Metrics::default(),
            settings,
        });
        let weak = Arc::downgrade(&service);
        std::thread::Builder::new()
            .name("cache-refresh".into())
            .spawn(move || loop {
                // It polls instead of sleeping in the queue: a receiver blocked there makes
                // each sender take the queue's wake-up lock, and a request thread preempted
                // while holding it would stall the others. Ends with the service.
                let mut jobs = Vec::new();
                let ended = loop {
                    match refresh_queue.try_recv() {
                        Ok(job) => {
                            jobs.push(job);
                            if jobs.len() == REFRESH_BATCH {
                                break false;
                            }
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => break false,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => break true,
                    }
                };
                if !jobs.is_empty() {
                    match weak.upgrade() {
                        Some(svc) => svc.refresh(jobs),
                        None => return,
                    }
                } else if ended || weak.strong_count() == 0 {
                    return;
                } else {
                    std::thread::sleep(REFRESH_POLL);
                }
            })
            .map_err(|e| Error::temporary(format!("cannot start the cache refresher: {e}")))?;
        Ok(service)
    }

    /// Read cache entries again from the directory: a mailbox still active replaces its
    /// entry (with a new life), one gone or disabled is dropped (its next login asks the
    /// directory); a route likewise. The mailboxes are asked in one call
    /// ([`crate::directory::Directory::mailboxes_of`]: one statement on PostgreSQL). A
    /// failure leaves the entries to expire.
    fn refresh(&self, jobs: Vec<Refresh>) {
        let count = jobs.len() as u64;
        let mut users: Vec<crate::names::Address> = Vec::new();
        let mut routes: Vec<crate::names::Domain> = Vec::new();
        for job in jobs {
            match job {
                Refresh::User(a) if !users.contains(&a) => users.push(a),
                Refresh::Route(d) if !routes.contains(&d) => routes.push(d),
                _ => {}
            }
        }
        let keys: Vec<(crate::names::LocalPart, crate::names::Domain)> = users
            .iter()
            .map(|a| (a.local.clone(), a.domain.clone()))
            .collect();
        let result = if keys.is_empty() {
            Ok(())
        } else {
            self.pool.with(|dir| dir.mailboxes_of(&keys)).map(|found| {
                for (address, found) in users.iter().zip(found) {
                    let key = address.to_string();
                    match found {
                        Some(m) if m.is_active() => self.users.put(key, m),
                        _ => self.users.remove(&key),
                    }
                }
            })
        };
        if let Err(e) = result {
            log::debug!("cache refresh: {e}");
        }
        for domain in routes {
            let result = self
                .pool
                .with(|dir| dir.route(&domain))
                .map(|found| match found {
                    Some(r) => self.routes.put(domain, r),
                    None => self.routes.remove(&domain),
                });
            if let Err(e) = result {
                log::debug!("cache refresh: {e}");
            }
        }
        // Counted once done (a test waits for it, then expects the entries updated).
        self.metrics
            .cache_refreshes
            .fetch_add(count, Ordering::Relaxed);
    }

    /// A domain's route: from the cache, else from `dir` (and cached).
    fn route(
        &self,
        dir: &mut dyn crate::directory::Directory,
        domain: &crate::names::Domain,
    ) -> Result<Option<DomainRecord>> {
        if let Some(r) = self.routes.get(domain) {
            return Ok(Some(r));
        }
        let r = dir.route(domain)?;
        if let Some(record) = &r {
            self.routes.put(record.domain.clone(), record.clone());
        }
        Ok(r)
    }

    /// The mailbox record of `address` (`mailbox@domain`, validated) from a recent
    /// successful login, with its domain's route, when both are cached. The caller checks
    /// that the directory answers before trusting it, and asks the directory again when the
    /// password does not match: a changed password works at once, and every failure is
    /// decided on the directory's current record.
    /// Entries past 3/4 of their life are queued for a refresh.
    fn cached_login(
        &self,
        address: &crate::names::Address,
        key: &str,
    ) -> Option<(MailboxRecord, DomainRecord)> {
        let (mailbox, user_due) = self.users.get_or_due(key)?;
        let (route, route_due) = self.routes.get_or_due(&address.domain)?;
        self.metrics.user_cache_hits.fetch_add(1, Ordering::Relaxed);
        // A full queue leaves the entry to expire (then the login asks the directory).
        if user_due {
            let _ = self.refresh.try_send(Refresh::User(address.clone()));
        }
        if route_due {
            let _ = self
                .refresh
                .try_send(Refresh::Route(address.domain.clone()));
        }
        Some((mailbox, route))
    }

    fn remember_login(&self, address: &str, mailbox: &MailboxRecord) {
        self.users.put(address.to_string(), mailbox.clone());
    }

    fn forget_login(&self, address: &str) {
        self.users.remove(address);
    }

    fn port(&self, proto: Protocol) -> u16 {
        match proto {
            Protocol::Imap => self.ports.imap,
            Protocol::Pop3 => self.ports.pop3,
            Protocol::Smtp => self.ports.smtp,
        }
    }

    /// The node to send a user of `route` to: the primary when its service greets, else
    /// the backup when it does; else a reason for a temporary failure.
    fn choose_node(
        &self,
        route: &DomainRecord,
        proto: Protocol,
    ) -> std::result::Result<(String, IpAddr, u16), String> {
        let port = self.port(proto);
        let mut reasons = Vec::new();
        let candidates = std::iter::once(&route.primary).chain(route.backup.iter());
        for (i, node) in candidates.enumerate() {
            let ip = match self.resolver.resolve(node) {
                Ok(ip) => ip,
                Err(e) => {
                    reasons.push(e);
                    continue;
                }
            };
            let target = Target {
                node: node.clone(),
                addr: SocketAddr::new(ip, port),
                proto,
            };
            if self.health.is_up(&target) {
                if i > 0 {
                    self.metrics.backup_routes.fetch_add(1, Ordering::Relaxed);
                }
                return Ok((node.clone(), ip, port));
            }
            reasons.push(format!("{node} {} is down", proto.as_str()));
        }
        Err(reasons.join("; "))
    }

    fn secret_ok(&self, req: &Request) -> bool {
        let Some(secret) = self.settings.http.secret.as_deref() else {
            return true;
        };
        match req.header(&self.settings.http.secret_header) {
            Header::One(v) => bool::from(v.ct_eq(secret.as_bytes())),
            _ => false,
        }
    }

    /// Route one request.
    pub fn handle(&self, req: &Request, peer: &dyn std::fmt::Display) -> Response {
        let idx = PATHS.iter().position(|p| *p == req.path).unwrap_or(5);
        self.metrics.requests[idx].fetch_add(1, Ordering::Relaxed);
        if req.path == "/metrics" && req.method == "GET" {
            return Response::new(200).text(self.render_metrics());
        }
        if !self.secret_ok(req) {
            self.metrics.bad_secret.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "request from {peer} without the right {}",
                self.settings.http.secret_header
            );
            return Response::new(403).header(
                "Auth-Status",
                "Temporary authentication failure, try again later",
            );
        }
        match req.path.as_str() {
            "/auth" => {
                let start = Instant::now();
                let (response, l) = nginx::handle(self, req);
                self.metrics.outcomes[nginx::Outcome::ALL
                    .iter()
                    .position(|o| *o == l.outcome)
                    .unwrap_or(5)]
                .fetch_add(1, Ordering::Relaxed);
                if self.settings.http.log_requests {
                    let line = format!(
                        "auth user={} client={} proto={} method={} attempt={} result={} node={} ms={:.1}{}",
                        crate::names::printable(&l.user),
                        if l.client.is_empty() { "-" } else { &l.client },
                        l.proto,
                        crate::names::printable(&l.method),
                        l.attempt,
                        l.outcome.as_str(),
                        l.node,
                        start.elapsed().as_secs_f64() * 1000.0,
                        if l.why.is_empty() { String::new() } else { format!(" why={}", crate::names::printable(&l.why)) },
                    );
                    let level = if l.outcome == nginx::Outcome::TempFail {
                        log::Level::Warn
                    } else {
                        log::Level::Info
                    };
                    return response.log_after(level, line);
                }
                response
            }
            "/passdb" | "/userdb" | "/users" => self.api(req, peer),
            _ => Response::new(404)
                .header("Auth-Status", "Invalid request")
                .text("not found\n"),
        }
    }

    /// The JSON API of [`crate::auth::api`]; password checks share the hashing semaphore.
    fn api(&self, req: &Request, peer: &dyn std::fmt::Display) -> Response {
        let method_ok = match req.path.as_str() {
            "/users" => req.method == "GET",
            _ => req.method == "POST",
        };
        if !method_ok {
            return Response::new(405)
                .json(r#"{"result":"internal_failure","reason":"method not allowed"}"#);
        }
        let answer = if req.path == "/passdb" {
            let Some(_permit) = self.gate.acquire() else {
                return Response::new(503).json(
                    r#"{"result":"internal_failure","reason":"password hashing overloaded"}"#,
                );
            };
            api::handle(&self.auth, &req.path, &req.body)
        } else {
            api::handle(&self.auth, &req.path, &req.body)
        };
        let mut r = Response::new(answer.status);
        r.content_type = answer.content_type;
        r.body = answer.body;
        if self.settings.http.log_requests {
            let line = format!("api path={} peer={peer} status={}", req.path, answer.status);
            return r.log_after(log::Level::Info, line);
        }
        r
    }

    fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let mut out = String::new();
        out.push_str("# HELP mailauth_http_requests_total HTTP requests by path.\n# TYPE mailauth_http_requests_total counter\n");
        for (i, p) in PATHS.iter().enumerate() {
            let _ = writeln!(
                out,
                "mailauth_http_requests_total{{path=\"{p}\"}} {}",
                m.requests[i].load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP mailauth_auth_total nginx auth_http answers by result.\n# TYPE mailauth_auth_total counter\n");
        for (i, o) in nginx::Outcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "mailauth_auth_total{{result=\"{}\"}} {}",
                o.as_str(),
                m.outcomes[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE mailauth_auth_backup_routes_total counter\nmailauth_auth_backup_routes_total {}", m.backup_routes.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# TYPE mailauth_user_cache_hits_total counter\nmailauth_user_cache_hits_total {}\n# TYPE mailauth_user_cache_entries gauge\nmailauth_user_cache_entries {}\n# TYPE mailauth_cache_refreshes_total counter\nmailauth_cache_refreshes_total {}",
            m.user_cache_hits.load(Ordering::Relaxed),
            self.users.len(),
            m.cache_refreshes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE mailauth_http_bad_secret_total counter\nmailauth_http_bad_secret_total {}",
            m.bad_secret.load(Ordering::Relaxed)
        );
        let (opened, live) = self.pool.counts();
        let _ = writeln!(out, "# HELP mailauth_directory_connections_opened_total Directory connections opened.\n# TYPE mailauth_directory_connections_opened_total counter\nmailauth_directory_connections_opened_total {opened}");
        let _ = writeln!(
            out,
            "# TYPE mailauth_directory_connections gauge\nmailauth_directory_connections {live}"
        );
        let _ = writeln!(out, "# HELP mailauth_directory_lease_misses_total Cached logins that waited for a directory ping (no answer within db_lease).\n# TYPE mailauth_directory_lease_misses_total counter\nmailauth_directory_lease_misses_total {}", self.pool.lease_misses());
        let _ = writeln!(out, "# HELP mailauth_log_records_dropped_total Log records dropped because the log (syslog, a file) was too slow to take them.\n# TYPE mailauth_log_records_dropped_total counter\nmailauth_log_records_dropped_total {}", crate::logging::dropped_records());
        let (pairs, ips) = self.throttle.sizes();
        let _ = writeln!(out, "# TYPE mailauth_throttle_entries gauge\nmailauth_throttle_entries{{kind=\"pair\"}} {pairs}\nmailauth_throttle_entries{{kind=\"ip\"}} {ips}");
        out.push_str("# HELP mailauth_backend_up Last health check of a storage service (1 = greeted).\n# TYPE mailauth_backend_up gauge\n");
        for (t, up, _) in self.health.snapshot() {
            let _ = writeln!(
                out,
                "mailauth_backend_up{{node=\"{}\",proto=\"{}\",addr=\"{}\"}} {}",
                t.node,
                t.proto.as_str(),
                t.addr,
                u8::from(up)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_overrides_literals_and_names() {
        let mut overrides = HashMap::new();
        overrides.insert("storage-01".to_string(), "10.0.0.1".parse().unwrap());
        let r = Resolver {
            overrides,
            ttl: Duration::from_secs(60),
            cache: RwLock::new(HashMap::new()),
        };
        assert_eq!(r.resolve("storage-01").unwrap().to_string(), "10.0.0.1");
        assert_eq!(r.resolve("192.0.2.7").unwrap().to_string(), "192.0.2.7");
        // A name through the system resolver (/etc/hosts), then from the cache.
        let ip = r.resolve("localhost").unwrap();
        assert!(ip.is_loopback(), "{ip}");
        assert!(read(&r.cache).contains_key("localhost"));
        assert!(r.resolve("no-such-node.invalid").is_err());
    }
}
