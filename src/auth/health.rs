//! Backend health checks (IMAP/POP3/SMTP greetings), shared with `mailctl node list`.
//!
//! A service counts as up only when it sends its greeting (`* OK`, `+OK`, `220`) within a
//! short timeout: a bare TCP connect is not enough, because the kernel of a hung
//! (SIGSTOPped, overloaded) server still completes the handshake.
//!
//! [`check_greeting`] does one check; [`HealthChecker`] keeps a cache of results refreshed by a
//! background thread, checking every target it has been asked about, and logs once per
//! change of state.

use crate::auth::locks::{lock, read, write};
use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The mail protocols nginx proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Imap,
    Pop3,
    Smtp,
}

impl Protocol {
    /// Parse nginx's `Auth-Protocol` value.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "imap" => Some(Protocol::Imap),
            "pop3" => Some(Protocol::Pop3),
            "smtp" => Some(Protocol::Smtp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Smtp => "smtp",
        }
    }

    /// Does `line` (the first line a server sent) greet us as a ready server?
    pub fn greeting_ok(self, line: &[u8]) -> bool {
        match self {
            // `* PREAUTH` would also be a live server, but never one nginx should log in to.
            Protocol::Imap => line.starts_with(b"* OK"),
            Protocol::Pop3 => line.starts_with(b"+OK"),
            Protocol::Smtp => line.starts_with(b"220 ") || line.starts_with(b"220-"),
        }
    }
}

/// Longest greeting line read.
const MAX_GREETING: usize = 1024;

/// Connect to `addr` and read the first line within `timeout` (connect and read share it).
/// Ok(()) when it is `proto`'s ready greeting; Err(reason) otherwise.
pub fn check_greeting(
    addr: SocketAddr,
    proto: Protocol,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no greeting within the timeout".into());
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("socket: {e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed before the greeting".into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line = &buf[..end];
                    return if proto.greeting_ok(line) {
                        Ok(())
                    } else {
                        Err(format!(
                            "unexpected greeting {}",
                            crate::names::printable(&String::from_utf8_lossy(
                                &line[..line.len().min(80)]
                            ))
                        ))
                    };
                }
                if buf.len() > MAX_GREETING {
                    return Err("greeting line too long".into());
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err("no greeting within the timeout".into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Settings of the checker (`[auth.health]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Check backends at all (false: every node counts as up).
    pub enabled: bool,
    /// Seconds between two checks of one target.
    pub interval: f64,
    /// Seconds to wait for the connection and the greeting.
    pub timeout: f64,
    /// Forget targets nobody asked about for this many seconds.
    pub forget_after: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            interval: 2.0,
            timeout: 1.0,
            forget_after: 600.0,
        }
    }
}

fn secs(v: f64, min: f64, max: f64, default: f64) -> Duration {
    if v.is_finite() && v > 0.0 {
        Duration::from_secs_f64(v.clamp(min, max))
    } else {
        Duration::from_secs_f64(default)
    }
}

impl HealthConfig {
    pub fn interval(&self) -> Duration {
        secs(self.interval, 0.05, 3600.0, 2.0)
    }
    pub fn timeout(&self) -> Duration {
        secs(self.timeout, 0.01, 60.0, 1.0)
    }
    pub fn forget_after(&self) -> Duration {
        secs(self.forget_after, 1.0, 86400.0, 600.0)
    }
}

/// One checked service: a node's address and a protocol's port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The node name (for logs).
    pub node: String,
    pub addr: SocketAddr,
    pub proto: Protocol,
}

#[derive(Debug)]
struct State {
    up: bool,
    checked: Instant,
    /// When a request last asked, in seconds since `Shared::epoch` (written under the read
    /// lock by every request, so an atomic).
    last_asked: AtomicU64,
    reason: String,
}

/// Read by every request ([`HealthChecker::is_up`]), written by the checks: a read-write
/// lock, so that requests never wait for each other.
struct Shared {
    config: HealthConfig,
    epoch: Instant,
    states: RwLock<HashMap<Target, State>>,
    /// The background thread sleeps on `wake` (with `sleep`) until the next check is due
    /// or a new target is asked about.
    sleep: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    fn secs(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_secs()
    }
}

/// A cache of backend health, refreshed by a background thread.
#[derive(Clone)]
pub struct HealthChecker {
    shared: Arc<Shared>,
}

impl HealthChecker {
    /// Create the checker and start its background thread.
    pub fn start(config: HealthConfig) -> HealthChecker {
        let shared = Arc::new(Shared {
            config,
            epoch: Instant::now(),
            states: RwLock::new(HashMap::new()),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        if shared.config.enabled {
            let weak = Arc::downgrade(&shared);
            let spawned = std::thread::Builder::new()
                .name("health".into())
                .spawn(move || background(weak));
            if let Err(e) = spawned {
                log::error!("health: cannot start the checker thread: {e}");
            }
        }
        HealthChecker { shared }
    }

    /// Is `target` up? The first question about a target checks it synchronously (bounded
    /// by the timeout); later ones answer from the cache, which the background thread keeps
    /// fresh.
    pub fn is_up(&self, target: &Target) -> bool {
        if !self.shared.config.enabled {
            return true;
        }
        let now = Instant::now();
        {
            let states = read(&self.shared.states);
            if let Some(state) = states.get(target) {
                state
                    .last_asked
                    .store(self.shared.secs(now), Ordering::Relaxed);
                return state.up;
            }
        }
        let result = check_greeting(target.addr, target.proto, self.shared.config.timeout());
        record(&self.shared, target, result, Instant::now());
        self.shared.wake.notify_all();
        read(&self.shared.states)
            .get(target)
            .map(|s| s.up)
            .unwrap_or(false)
    }

    /// The last known state of every target: (target, up, reason when down).
    pub fn snapshot(&self) -> Vec<(Target, bool, String)> {
        let states = read(&self.shared.states);
        let mut out: Vec<_> = states
            .iter()
            .map(|(t, s)| (t.clone(), s.up, s.reason.clone()))
            .collect();
        out.sort_by(|a, b| (&a.0.node, a.0.proto).cmp(&(&b.0.node, b.0.proto)));
        out
    }
}

/// Store a result; log when the state of a known target changes (or a new one is down).
fn record(shared: &Shared, target: &Target, result: std::result::Result<(), String>, now: Instant) {
    let up = result.is_ok();
    let reason = result.err().unwrap_or_default();
    let mut states = write(&shared.states);
    match states.get_mut(target) {
        Some(state) => {
            if state.up != up {
                if up {
                    log::warn!(
                        "health: {} {} ({}) is up again",
                        target.node,
                        target.proto.as_str(),
                        target.addr
                    );
                } else {
                    log::warn!(
                        "health: {} {} ({}) is down: {reason}",
                        target.node,
                        target.proto.as_str(),
                        target.addr
                    );
                }
            }
            state.up = up;
            state.checked = now;
            state.reason = reason;
        }
        None => {
            if !up {
                log::warn!(
                    "health: {} {} ({}) is down: {reason}",
                    target.node,
                    target.proto.as_str(),
                    target.addr
                );
            }
            states.insert(
                target.clone(),
                State {
                    up,
                    checked: now,
                    last_asked: AtomicU64::new(shared.secs(now)),
                    reason,
                },
            );
        }
    }
}

fn background(weak: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let interval = shared.config.interval();
        let now = Instant::now();
        let due: Vec<Target> = {
            let mut states = write(&shared.states);
            let forget = shared.config.forget_after().as_secs();
            let now_secs = shared.secs(now);
            states.retain(|_, s| {
                now_secs.saturating_sub(s.last_asked.load(Ordering::Relaxed)) < forget.max(1)
            });
            states
                .iter()
                .filter(|(_, s)| now.duration_since(s.checked) >= interval)
                .map(|(t, _)| t.clone())
                .collect()
        };
        if !due.is_empty() {
            let timeout = shared.config.timeout();
            // Check in parallel so that one hung node does not delay the others.
            std::thread::scope(|scope| {
                for target in &due {
                    let shared = &shared;
                    scope.spawn(move || {
                        let result = check_greeting(target.addr, target.proto, timeout);
                        record(shared, target, result, Instant::now());
                    });
                }
            });
        }
        // Sleep until the next check is due (or a new target arrives).
        let next = {
            let states = read(&shared.states);
            let now = Instant::now();
            states
                .values()
                .map(|s| (s.checked + interval).saturating_duration_since(now))
                .min()
                .unwrap_or(interval)
                .max(Duration::from_millis(10))
        };
        let guard = lock(&shared.sleep);
        let _ = shared.wake.wait_timeout(guard, next);
        drop(shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn server(greeting: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(greeting);
            }
        });
        addr
    }

    #[test]
    fn greetings() {
        let t = Duration::from_millis(500);
        assert!(check_greeting(server(b"* OK ready\r\n"), Protocol::Imap, t).is_ok());
        assert!(check_greeting(server(b"+OK ready\r\n"), Protocol::Pop3, t).is_ok());
        assert!(check_greeting(server(b"220 mx ESMTP\r\n"), Protocol::Smtp, t).is_ok());
        assert!(check_greeting(server(b"* BYE busy\r\n"), Protocol::Imap, t).is_err());
        assert!(check_greeting(server(b"421 busy\r\n"), Protocol::Smtp, t).is_err());
    }

    #[test]
    fn silent_server_is_down() {
        // Accepts (the kernel does) but never greets: like a SIGSTOPped server.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let start = Instant::now();
        let r = check_greeting(addr, Protocol::Imap, Duration::from_millis(200));
        assert!(r.is_err());
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(l);
    }

    #[test]
    fn checker_caches_and_refreshes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l); // nothing listens: refused
        let checker = HealthChecker::start(HealthConfig {
            interval: 0.1,
            timeout: 0.2,
            ..HealthConfig::default()
        });
        let target = Target {
            node: "n1".into(),
            addr,
            proto: Protocol::Pop3,
        };
        assert!(!checker.is_up(&target));
        // Now something greets there: within a few intervals the cache says up.
        let Ok(l) = TcpListener::bind(addr) else {
            return; // port taken meanwhile by someone else: nothing to check
        };
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(b"+OK hi\r\n");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !checker.is_up(&target) {
            assert!(Instant::now() < deadline, "never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
