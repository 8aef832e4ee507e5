//! `mailmap serve`: answers [`super::protocol`] requests on a unix socket (or a loopback TCP
//! port) from a cache in front of the directory.
//!
//! - Fresh cached answers (positive / negative TTL) are served without the database.
//! - On a miss the database is asked; while it is down (connect or query failure), found
//!   answers younger than `stale_max` are served from the cache, everything else is
//!   TEMPFAIL — a cached *not found* is never trusted during an outage.
//! - After a failure the database is not retried for `retry_interval` (answers stay fast).
//! - Each change of the database state is logged once.
//! - SIGHUP re-reads the configuration, flushes the cache and reconnects; SIGTERM / SIGINT
//!   stop accepting, remove the socket and return.
//! - Bounded: request length, simultaneous clients, time per connection.

use super::cache::{Cache, Policy};
pub use super::protocol::Response;
use super::protocol::{parse_request, Request};
use super::{MapConfig, Query, Resolver};
use crate::config::Config;
use crate::directory::Directory;
use crate::error::{Error, ErrorKind, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Loads the configuration again on SIGHUP.
pub type Loader = Box<dyn Fn() -> Result<Config> + Send + Sync>;

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Endpoint {
    /// From `--socket` / `--listen`, else `[map] socket` / `[map] listen`, else the default
    /// socket path.
    pub fn choose(
        socket: Option<PathBuf>,
        listen: Option<String>,
        map: &MapConfig,
    ) -> Result<Self> {
        if let Some(l) = listen.or_else(|| {
            if socket.is_none() {
                map.listen.clone()
            } else {
                None
            }
        }) {
            let addr: SocketAddr = l.parse().map_err(|_| {
                Error::bad_input(format!(
                    "--listen {l:?}: expected IP:PORT such as 127.0.0.1:7025"
                ))
            })?;
            if !addr.ip().is_loopback() {
                return Err(Error::bad_input(format!(
                    "--listen {addr}: only loopback addresses (the protocol has no authentication)"
                )));
            }
            return Ok(Endpoint::Tcp(addr));
        }
        Ok(Endpoint::Unix(
            socket
                .or_else(|| map.socket.clone())
                .unwrap_or_else(|| PathBuf::from(super::DEFAULT_SOCKET)),
        ))
    }
}

struct Settings {
    config: Config,
    map: MapConfig,
    resolver: Resolver,
}

impl Settings {
    fn new(config: Config) -> Result<Settings> {
        let map: MapConfig = config.section("map")?;
        map.socket_mode()?;
        let resolver = Resolver::from_config(&config, &map)?;
        Ok(Settings {
            config,
            map,
            resolver,
        })
    }

    fn policy(&self) -> Policy {
        Policy {
            positive_ttl: self.map.positive_ttl(),
            negative_ttl: self.map.negative_ttl(),
            stale_max: self.map.stale_max(),
            max_entries: self.map.max_entries.max(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbHealth {
    Unknown,
    Up,
    Down,
}

struct Db {
    conn: Option<Box<dyn Directory>>,
}

struct Shared {
    settings: RwLock<Arc<Settings>>,
    cache: Mutex<Cache>,
    db: Mutex<Db>,
    health: Mutex<(DbHealth, Option<Instant>)>,
    /// Last successful database round trip.
    last_contact: Mutex<Option<Instant>>,
    clients: AtomicUsize,
    stop: AtomicBool,
    loader: Loader,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave these structures inconsistent in a way that matters.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(s) => Arc::clone(&s),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn set_health(&self, up: bool, retry_after: Option<Instant>, why: &str) {
        let mut h = lock(&self.health);
        let new = if up { DbHealth::Up } else { DbHealth::Down };
        if h.0 != new {
            match new {
                DbHealth::Up => log::info!("directory reachable again, answering from it"),
                _ => log::warn!(
                    "directory unreachable ({why}); answering from the cache (found answers up to \
                     the staleness bound), TEMPFAIL otherwise"
                ),
            }
        }
        *h = (new, retry_after);
    }

    fn is_down(&self) -> bool {
        lock(&self.health).0 == DbHealth::Down
    }

    /// Probe the directory when nothing asked it for `interval`, so that an outage is
    /// noticed (and cached "not found" answers distrusted) even while answers come from
    /// the cache.
    fn probe_if_idle(&self, interval: Duration) {
        let idle = lock(&self.last_contact).map_or(true, |t| t.elapsed() >= interval);
        if !idle || self.down_now(Instant::now()) {
            return;
        }
        let settings = self.settings();
        let probe = Query::Route {
            domain: "mailmap-health-probe.invalid".to_string(),
        };
        let result = {
            let mut db = lock(&self.db);
            self.query_db(&mut db, &settings, &probe)
        };
        match result {
            Ok(_) => self.set_health(true, None, ""),
            Err(e) if e.is_temporary() => {
                let retry = Instant::now() + settings.map.retry_interval();
                self.set_health(false, Some(retry), e.message());
            }
            Err(e) => log::error!("health probe: {e}"),
        }
    }

    fn down_now(&self, now: Instant) -> bool {
        let h = lock(&self.health);
        h.0 == DbHealth::Down && h.1.is_some_and(|t| now < t)
    }

    /// Answer one query.
    fn answer(&self, query: &Query) -> Response {
        let now = Instant::now();
        if let Some(a) = lock(&self.cache).fresh(query, now) {
            // A cached "not found" is not trusted while the directory is known to be down.
            if a.is_some() || !self.is_down() {
                return to_response(a);
            }
        }
        if self.down_now(now) {
            return self.outage(query, "directory unreachable");
        }
        let settings = self.settings();
        let result = {
            let mut db = lock(&self.db);
            // Another thread may have answered while we waited.
            if let Some(a) = lock(&self.cache).fresh(query, Instant::now()) {
                if a.is_some() || !self.is_down() {
                    return to_response(a);
                }
            }
            self.query_db(&mut db, &settings, query)
        };
        match result {
            Ok(a) => {
                self.set_health(true, None, "");
                lock(&self.cache).insert(query.clone(), a.clone(), Instant::now());
                to_response(a)
            }
            Err(e) if e.is_temporary() => {
                let retry = Instant::now() + settings.map.retry_interval();
                self.set_health(false, Some(retry), e.message());
                self.outage(query, "directory unreachable")
            }
            Err(e) => {
                log::error!("{}: {e}", query.verb());
                Response::TempFail(format!("{}", e.kind()))
            }
        }
    }

    fn query_db(&self, db: &mut Db, s: &Settings, query: &Query) -> Result<Option<String>> {
        // One directory object for the daemon's life (until SIGHUP): it reads the first
        // reachable configured directory and reconnects by itself after a failure.
        if db.conn.is_none() {
            db.conn = Some(s.config.open_directory()?);
        }
        let Some(dir) = db.conn.as_mut() else {
            return Err(Error::internal("no directory"));
        };
        let result = s.resolver.resolve(dir.as_mut(), query);
        if result.is_ok() {
            *lock(&self.last_contact) = Some(Instant::now());
        }
        result
    }

    fn outage(&self, query: &Query, why: &str) -> Response {
        match lock(&self.cache).last_good(query, Instant::now()) {
            Some(a) => Response::Ok(a),
            None => Response::TempFail(why.to_string()),
        }
    }

    fn reload(&self) {
        match (self.loader)().and_then(Settings::new) {
            Ok(s) => {
                let mut cache = lock(&self.cache);
                cache.set_policy(s.policy());
                cache.clear();
                drop(cache);
                lock(&self.db).conn = None;
                *lock(&self.health) = (DbHealth::Unknown, None);
                match self.settings.write() {
                    Ok(mut w) => *w = Arc::new(s),
                    Err(p) => *p.into_inner() = Arc::new(s),
                }
                log::info!("configuration reloaded, cache flushed");
            }
            Err(e) => {
                // Keep serving with the old configuration, but forget old answers.
                lock(&self.cache).clear();
                log::error!("reload failed, keeping the previous configuration: {e}");
            }
        }
    }

    fn stats(&self) -> Response {
        let n = lock(&self.cache).len();
        let h = match lock(&self.health).0 {
            DbHealth::Unknown => "unknown",
            DbHealth::Up => "up",
            DbHealth::Down => "down",
        };
        Response::Ok(format!("entries={n} db={h}"))
    }
}

fn to_response(a: Option<String>) -> Response {
    match a {
        Some(v) => Response::Ok(v),
        None => Response::NotFound,
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(buf),
            Conn::Tcp(s) => s.write_all(buf),
        }
    }
    fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// A running server (for tests and the binary): [`Server::run`] blocks until SIGTERM or
/// [`Server::stop_handle`] is used.
pub struct Server {
    shared: Arc<Shared>,
    listener: Listener,
}

/// Stops a running server from another thread.
#[derive(Clone)]
pub struct StopHandle {
    shared: Arc<Shared>,
    wake: Endpoint,
}

impl StopHandle {
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        wake(&self.wake);
    }
    /// Same as SIGHUP.
    pub fn reload(&self) {
        self.shared.reload();
    }
}

fn wake(e: &Endpoint) {
    match e {
        Endpoint::Unix(p) => drop(UnixStream::connect(p)),
        Endpoint::Tcp(a) => drop(TcpStream::connect_timeout(a, Duration::from_secs(1))),
    }
}

impl Server {
    /// Bind the endpoint. `loader` re-reads the configuration on SIGHUP.
    pub fn bind(config: Config, endpoint: &Endpoint, loader: Loader) -> Result<Server> {
        let settings = Settings::new(config)?;
        let listener = match endpoint {
            Endpoint::Unix(path) => {
                prepare_socket_path(path)?;
                let l = UnixListener::bind(path)
                    .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
                let mode = settings.map.socket_mode()?;
                if let Some(group) = &settings.map.socket_group {
                    let gid = group_id(group)?;
                    std::os::unix::fs::chown(path, None, Some(gid))
                        .map_err(|e| Error::io(format!("chgrp {group} {}", path.display()), e))?;
                }
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
                Listener::Unix(l, path.clone())
            }
            Endpoint::Tcp(addr) => Listener::Tcp(
                TcpListener::bind(addr).map_err(|e| Error::io(format!("binding {addr}"), e))?,
            ),
        };
        let policy = settings.policy();
        let shared = Arc::new(Shared {
            settings: RwLock::new(Arc::new(settings)),
            cache: Mutex::new(Cache::new(policy)),
            db: Mutex::new(Db { conn: None }),
            health: Mutex::new((DbHealth::Unknown, None)),
            last_contact: Mutex::new(None),
            clients: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            loader,
        });
        Ok(Server { shared, listener })
    }

    /// The bound endpoint (the actual port when binding port 0).
    pub fn endpoint(&self) -> Endpoint {
        match &self.listener {
            Listener::Unix(_, p) => Endpoint::Unix(p.clone()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => Endpoint::Tcp(a),
                Err(_) => Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            },
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: Arc::clone(&self.shared),
            wake: self.endpoint(),
        }
    }

    /// Handle SIGHUP (reload) and SIGTERM / SIGINT (stop) for this server.
    pub fn install_signal_handlers(&self) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
            .map_err(|e| Error::io("installing signal handlers", e))?;
        let handle = self.stop_handle();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig == SIGHUP {
                        log::info!("SIGHUP: reloading");
                        handle.reload();
                    } else {
                        log::info!("signal {sig}: stopping");
                        handle.stop();
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("starting the signal thread", e))?;
        Ok(())
    }

    /// Accept connections until stopped; then remove the socket.
    pub fn run(self) -> Result<()> {
        log::info!("serving on {}", describe(&self.endpoint()));
        let prober = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                let tick = Duration::from_millis(200);
                while !prober.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(tick);
                    let interval = prober.settings().map.health_interval();
                    prober.probe_if_idle(interval);
                }
            })
            .map_err(|e| Error::io("starting the probe thread", e))?;
        loop {
            // Wait for a connection at most a second at a time, so that a stop request is
            // noticed even when the wake-up connection cannot be made (socket file removed).
            if !self.readable(Duration::from_secs(1)) {
                if self.shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            let conn = match &self.listener {
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| Conn::Tcp(s)),
            };
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            let settings = self.shared.settings();
            let timeout = settings.map.client_timeout();
            let max_request = settings.map.max_request.clamp(64, 65536);
            let max_clients = settings.map.max_clients.max(1);
            if self.shared.clients.fetch_add(1, Ordering::SeqCst) >= max_clients {
                self.shared.clients.fetch_sub(1, Ordering::SeqCst);
                let mut conn = conn;
                let _ = conn.set_timeouts(Duration::from_millis(200));
                let _ = conn.write_all(Response::TempFail("busy".into()).to_line().as_bytes());
                conn.shutdown();
                continue;
            }
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("client".into())
                .spawn(move || {
                    handle(&shared, conn, timeout, max_request);
                    shared.clients.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.shared.clients.fetch_sub(1, Ordering::SeqCst);
                log::warn!("cannot start a client thread: {e}");
            }
        }
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
        log::info!("stopped");
        Ok(())
    }
}

impl Server {
    /// poll(2) the listening socket: true when a connection is waiting (or on an error,
    /// so that accept reports it).
    fn readable(&self, timeout: Duration) -> bool {
        use std::os::unix::io::AsRawFd;
        let fd = match &self.listener {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            // EINTR (a signal: the caller re-checks the stop flag); anything else: do not spin.
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                std::thread::sleep(Duration::from_millis(50));
            }
            return false;
        }
        n > 0
    }
}

fn describe(e: &Endpoint) -> String {
    match e {
        Endpoint::Unix(p) => p.display().to_string(),
        Endpoint::Tcp(a) => a.to_string(),
    }
}

/// A group name or number.
fn group_id(group: &str) -> Result<u32> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| Error::config(format!("[map] socket_group {group:?}: invalid name")))?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into grp/buf (sizes given) and sets result to &grp or null.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(Error::config(format!(
            "[map] socket_group {group:?}: no such group"
        )));
    }
    Ok(grp.gr_gid)
}

/// Refuse to steal the socket of a running server; remove a stale one.
fn prepare_socket_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("checking {}", path.display()), e)),
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::new(
                    ErrorKind::Temporary,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("removing stale {}", path.display()), e))
        }
        Ok(_) => Err(Error::config(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ))),
    }
}

fn handle(shared: &Shared, mut conn: Conn, timeout: Duration, max_request: usize) {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    let mut complete = true;
    let mut discarded = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_timeouts(left).is_err() {
            return conn.shutdown();
        }
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if complete {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > max_request {
                        // Too long for any valid request: drop it, but read on (bounded)
                        // so that the client gets its answer instead of a broken pipe.
                        complete = false;
                        buf.clear();
                    }
                } else {
                    discarded += n;
                    if discarded > 65536 {
                        break;
                    }
                }
                if chunk[..n].contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return conn.shutdown(), // timeout or reset: no answer
        }
    }
    let response = match parse_request(&buf, complete) {
        Request::Query(q) => shared.answer(&q),
        Request::Ping => Response::Ok("pong".into()),
        Request::Stats => shared.stats(),
        Request::Invalid => Response::NotFound,
        Request::Unknown => Response::Error("unknown request".into()),
    };
    let _ = conn.write_all(response.to_line().as_bytes());
    conn.shutdown();
}

/// A client for the protocol (the `mailmap ask` command, tests, the benchmark).
pub fn ask(endpoint: &Endpoint, request: &str, timeout: Duration) -> Result<Response> {
    let mut conn = match endpoint {
        Endpoint::Unix(p) => Conn::Unix(
            UnixStream::connect(p)
                .map_err(|e| Error::io(format!("connecting to {}", p.display()), e))?,
        ),
        Endpoint::Tcp(a) => Conn::Tcp(
            TcpStream::connect_timeout(a, timeout)
                .map_err(|e| Error::io(format!("connecting to {a}"), e))?,
        ),
    };
    conn.set_timeouts(timeout)
        .map_err(|e| Error::io("setting timeouts", e))?;
    conn.write_all(request.as_bytes())
        .map_err(|e| Error::io("sending the request", e))?;
    match &conn {
        Conn::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
    }
    .map_err(|e| Error::io("shutdown", e))?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&chunk[..n]);
                if out.len() > 65536 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading the answer", e)),
        }
    }
    let text = String::from_utf8_lossy(&out);
    Response::parse(&text).ok_or_else(|| Error::temporary(format!("bad answer {:?}", text)))
}
