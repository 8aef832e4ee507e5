//! Failure throttling per (user, client IP) and per client IP, and bounded concurrency of
//! password hashing.
//!
//! Rules (limits from `[auth.throttle]`):
//! * Failures are remembered for a sliding `window`. What counts toward a block is the number
//!   of **distinct wrong passwords**: a phone retrying the same stale password over and over
//!   counts once, so neither its user nor the branch office behind the same NAT address is
//!   locked out by it. Only a keyed 64-bit hash of a wrong password is kept, never the password.
//! * Per (user, client IP): after `pair_limit` distinct wrong passwords the pair is refused
//!   without checking the password until the failures age out of the window. The same user
//!   logging in from another address is a different pair: an attacker guessing a password
//!   does not lock out its owner.
//! * Per client IP (IPv6: its /64): after `ip_limit` distinct (user, password) failures every
//!   login from that address is refused without a check (password spraying).
//! * Each failure answers a growing `Auth-Wait` (`wait_initial` doubling up to `wait_max`
//!   seconds, by the number of failures of the pair, repeats included), and none after
//!   `wait_attempts` attempts of one connection (nginx keeps memory per attempt).
//! * Password hashing runs under a semaphore ([`HashGate`], `hash_concurrency` slots): argon2
//!   takes tens of MB and bcrypt/SHA-crypt real CPU each.
//! * The tables are sharded by client address ([`Shards`]; a pair lives in its address's
//!   shard), so a thread stalled in one shard holds up no login from other addresses.

use crate::auth::locks::lock;
use crate::auth::locks::{Shards, SHARDS};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Settings (`[auth.throttle]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Sliding window, seconds.
    pub window: f64,
    /// Distinct wrong passwords per (user, client IP) before refusing without a check.
    pub pair_limit: usize,
    /// Distinct (user, wrong password) failures per client IP before refusing it.
    pub ip_limit: usize,
    /// First Auth-Wait, seconds (0 disables waits).
    pub wait_initial: u32,
    /// Largest Auth-Wait, seconds.
    pub wait_max: u32,
    /// No Auth-Wait (the connection is closed) after this many attempts of one connection.
    pub wait_attempts: u32,
    /// Bound on remembered pairs and addresses (each).
    pub max_entries: usize,
    /// Concurrent password hashings (0 = number of CPUs).
    pub hash_concurrency: usize,
    /// Longest wait for a hashing slot, seconds (then: temporary failure).
    pub hash_wait: f64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            window: 900.0,
            pair_limit: 5,
            ip_limit: 50,
            wait_initial: 1,
            wait_max: 16,
            wait_attempts: 10,
            max_entries: 100_000,
            hash_concurrency: 0,
            hash_wait: 5.0,
        }
    }
}

impl ThrottleConfig {
    fn window(&self) -> Duration {
        if self.window.is_finite() && self.window > 0.0 {
            Duration::from_secs_f64(self.window.min(86400.0 * 7.0))
        } else {
            Duration::from_secs(900)
        }
    }
}

/// Failure history of one key.
#[derive(Default)]
struct Entry {
    /// Distinct failure hashes and when each was last seen (bounded by limit + 1).
    distinct: HashMap<u64, Instant>,
    /// Times of recent failures, repeats included (bounded).
    recent: VecDeque<Instant>,
    last: Option<Instant>,
}

const MAX_RECENT: usize = 64;

impl Entry {
    fn prune(&mut self, now: Instant, window: Duration) {
        self.distinct.retain(|_, t| now.duration_since(*t) < window);
        while let Some(t) = self.recent.front() {
            if now.duration_since(*t) >= window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }
    fn add(&mut self, hash: u64, now: Instant, cap: usize) {
        if self.distinct.len() < cap || self.distinct.contains_key(&hash) {
            self.distinct.insert(hash, now);
        }
        self.recent.push_back(now);
        while self.recent.len() > MAX_RECENT {
            self.recent.pop_front();
        }
        self.last = Some(now);
    }
    fn is_empty(&self) -> bool {
        self.distinct.is_empty() && self.recent.is_empty()
    }
}

struct Tables {
    pairs: HashMap<(String, IpAddr), Entry>,
    ips: HashMap<IpAddr, Entry>,
}

/// Why a login is refused before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Too many distinct wrong passwords for this user from this address.
    Pair,
    /// Too many distinct failures from this address.
    Ip,
}

/// The failure throttle. Shared by all request threads.
pub struct Throttle {
    config: ThrottleConfig,
    window: Duration,
    keys: RandomState,
    tables: Shards<Tables>,
}

/// The key for per-address counting: IPv4 as is, IPv6 by its /64 (one customer's prefix).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let mut seg = v6.segments();
            for s in seg.iter_mut().skip(4) {
                *s = 0;
            }
            IpAddr::V6(seg.into())
        }
    }
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            window: config.window(),
            config,
            keys: RandomState::new(),
            tables: Shards::new(|| Tables {
                pairs: HashMap::new(),
                ips: HashMap::new(),
            }),
        }
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Is this login refused without checking the password?
    pub fn blocked(&self, user: &str, ip: IpAddr) -> Option<Block> {
        let now = Instant::now();
        let ipk = ip_key(ip);
        let mut t = self.tables.lock(&ipk);
        if self.config.pair_limit > 0 {
            if let Some(e) = t.pairs.get_mut(&(user.to_string(), ip)) {
                e.prune(now, self.window);
                if e.distinct.len() >= self.config.pair_limit {
                    return Some(Block::Pair);
                }
            }
        }
        if self.config.ip_limit > 0 {
            if let Some(e) = t.ips.get_mut(&ipk) {
                e.prune(now, self.window);
                if e.distinct.len() >= self.config.ip_limit {
                    return Some(Block::Ip);
                }
            }
        }
        None
    }

    /// Record a failed login (wrong password, unknown or disabled user). Returns the number
    /// of failures of this pair within the window, repeats included (for [`Self::wait`]).
    pub fn failure(&self, user: &str, ip: IpAddr, password: &[u8]) -> u32 {
        let now = Instant::now();
        let pw_hash = self.keys.hash_one(password);
        let user_pw_hash = self.keys.hash_one((user, password));
        let ipk = ip_key(ip);
        let mut t = self.tables.lock(&ipk);
        // The bound on each table, per shard.
        let max = (self.config.max_entries.max(16) / SHARDS).max(1);
        let window = self.window;
        let key = (user.to_string(), ip);
        if !t.pairs.contains_key(&key) && t.pairs.len() >= max {
            evict(&mut t.pairs, now, window, max);
        }
        let pair = t.pairs.entry(key).or_default();
        pair.prune(now, window);
        pair.add(pw_hash, now, self.config.pair_limit.max(1) + 1);
        let count = pair.recent.len() as u32;
        if !t.ips.contains_key(&ipk) && t.ips.len() >= max {
            evict(&mut t.ips, now, window, max);
        }
        let e = t.ips.entry(ipk).or_default();
        e.prune(now, window);
        e.add(user_pw_hash, now, self.config.ip_limit.max(1) + 1);
        count
    }

    /// A successful login clears the pair's history (not the address's).
    pub fn success(&self, user: &str, ip: IpAddr) {
        self.tables
            .lock(&ip_key(ip))
            .pairs
            .remove(&(user.to_string(), ip));
    }

    /// The Auth-Wait to send after `failures` failures, on the connection's `attempt`-th
    /// attempt; None = send none (nginx then closes the connection).
    pub fn wait(&self, failures: u32, attempt: u32) -> Option<u32> {
        if self.config.wait_initial == 0 || attempt > self.config.wait_attempts {
            return None;
        }
        let shift = failures.saturating_sub(1).min(20);
        let w = u64::from(self.config.wait_initial) << shift;
        Some(w.min(u64::from(
            self.config.wait_max.max(self.config.wait_initial),
        )) as u32)
    }

    /// Numbers of remembered pairs and addresses (for /metrics).
    pub fn sizes(&self) -> (usize, usize) {
        let (mut pairs, mut ips) = (0, 0);
        self.tables.each(|t| {
            pairs += t.pairs.len();
            ips += t.ips.len();
        });
        (pairs, ips)
    }
}

/// Make room in a full table: drop what has aged out, then (if still full) the oldest
/// eighth. Keeps memory bounded whatever an attacker sends.
fn evict<K: Clone + Eq + std::hash::Hash>(
    map: &mut HashMap<K, Entry>,
    now: Instant,
    window: Duration,
    max: usize,
) {
    map.retain(|_, e| {
        e.prune(now, window);
        !e.is_empty()
    });
    if map.len() < max {
        return;
    }
    let mut ages: Vec<(Instant, K)> = map
        .iter()
        .map(|(k, e)| (e.last.unwrap_or(now), k.clone()))
        .collect();
    ages.sort_by_key(|(t, _)| *t);
    for (_, k) in ages.into_iter().take(max / 8 + 1) {
        map.remove(&k);
    }
}

/// A counting semaphore bounding concurrent password hashing. Taking and giving back a
/// slot is one atomic operation while slots are free; only a caller that finds none waits
/// (on a condition variable, with a deadline).
pub struct HashGate {
    free: AtomicUsize,
    /// Callers waiting for a slot (a release wakes one only when there are).
    waiting: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    wait: Duration,
}

/// A held hashing slot; released on drop.
pub struct HashPermit<'a> {
    gate: &'a HashGate,
}

impl HashGate {
    /// `slots` = 0 means the number of CPUs.
    pub fn new(slots: usize, wait: f64) -> HashGate {
        let slots = if slots == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            slots
        };
        let wait = if wait.is_finite() && wait > 0.0 {
            Duration::from_secs_f64(wait.min(600.0))
        } else {
            Duration::from_secs(5)
        };
        HashGate {
            free: AtomicUsize::new(slots),
            waiting: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            wait,
        }
    }

    fn try_take(&self) -> bool {
        self.free
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Take a slot, waiting at most the configured time. None = overloaded (answer a
    /// temporary failure).
    pub fn acquire(&self) -> Option<HashPermit<'_>> {
        if self.try_take() {
            return Some(HashPermit { gate: self });
        }
        let deadline = Instant::now() + self.wait;
        let mut guard = lock(&self.lock);
        // Announce the wait before the last look, so that a release either sees the waiter
        // (and wakes it) or happens before that look (which then takes its slot).
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let taken = loop {
            if self.try_take() {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            guard = match self.cv.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        taken.then_some(HashPermit { gate: self })
    }
}

impl Drop for HashPermit<'_> {
    fn drop(&mut self) {
        self.gate.free.fetch_add(1, Ordering::SeqCst);
        if self.gate.waiting.load(Ordering::SeqCst) > 0 {
            // Under the lock: a waiter between its last look and its wait holds it.
            let _guard = lock(&self.gate.lock);
            self.gate.cv.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn distinct_wrong_passwords_block_the_pair_only() {
        let t = Throttle::new(ThrottleConfig {
            pair_limit: 3,
            ip_limit: 100,
            ..Default::default()
        });
        let attacker = ip("192.0.2.1");
        for pw in ["a", "b"] {
            assert_eq!(t.blocked("alice@x.test", attacker), None);
            t.failure("alice@x.test", attacker, pw.as_bytes());
        }
        assert_eq!(t.blocked("alice@x.test", attacker), None);
        t.failure("alice@x.test", attacker, b"c");
        assert_eq!(t.blocked("alice@x.test", attacker), Some(Block::Pair));
        // The owner from elsewhere, and another user from the attacker's address, are fine.
        assert_eq!(t.blocked("alice@x.test", ip("198.51.100.7")), None);
        assert_eq!(t.blocked("bob@x.test", attacker), None);
    }

    #[test]
    fn a_stale_password_repeated_counts_once() {
        let t = Throttle::new(ThrottleConfig {
            pair_limit: 3,
            ip_limit: 3,
            ..Default::default()
        });
        let nat = ip("203.0.113.9");
        for _ in 0..50 {
            t.failure("phone@x.test", nat, b"old-password");
        }
        assert_eq!(t.blocked("phone@x.test", nat), None);
        assert_eq!(t.blocked("colleague@x.test", nat), None);
    }

    #[test]
    fn spraying_blocks_the_address() {
        let t = Throttle::new(ThrottleConfig {
            pair_limit: 5,
            ip_limit: 4,
            ..Default::default()
        });
        let a = ip("2001:db8::1");
        for u in ["u1", "u2", "u3", "u4"] {
            t.failure(u, a, b"123456");
        }
        assert_eq!(t.blocked("u9", a), Some(Block::Ip));
        // same /64
        assert_eq!(t.blocked("u9", ip("2001:db8::ffff")), Some(Block::Ip));
        assert_eq!(t.blocked("u9", ip("2001:db8:1::1")), None);
    }

    #[test]
    fn success_clears_the_pair_and_waits_grow() {
        let t = Throttle::new(ThrottleConfig::default());
        let a = ip("192.0.2.3");
        assert_eq!(t.failure("u", a, b"x"), 1);
        assert_eq!(t.failure("u", a, b"x"), 2);
        assert_eq!(t.wait(1, 1), Some(1));
        assert_eq!(t.wait(3, 3), Some(4));
        assert_eq!(t.wait(30, 3), Some(16));
        assert_eq!(t.wait(3, 11), None);
        t.success("u", a);
        assert_eq!(t.failure("u", a, b"x"), 1);
    }

    #[test]
    fn tables_stay_bounded() {
        let t = Throttle::new(ThrottleConfig {
            max_entries: 100,
            ..Default::default()
        });
        for i in 0..1000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            t.failure(&format!("u{i}"), a, b"pw");
        }
        let (p, i) = t.sizes();
        assert!(p <= 100 && i <= 100, "{p} {i}");
    }

    #[test]
    fn gate_bounds_concurrency() {
        let g = HashGate::new(1, 0.05);
        let p = g.acquire();
        assert!(p.is_some());
        assert!(g.acquire().is_none());
        drop(p);
        assert!(g.acquire().is_some());
        // Many threads: never more than the slots at once, and every waiter is woken.
        let g = HashGate::new(2, 30.0);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let permit = g.acquire();
                        assert!(permit.is_some());
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::hint::spin_loop();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 2);
    }
}
