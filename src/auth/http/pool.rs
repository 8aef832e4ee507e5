//! Connections to the directories, kept open between requests and shared by the request
//! threads. Every configured storage-role directory can answer an authentication (each
//! storage holds a full copy); they are tried in order, putting last for a while one that just
//! failed, so that losing a node does not stop logins.
//!
//! Each directory has at most `max_size` connections, opened on demand **one at a time**:
//! a request that finds no idle connection while another one is being opened (or the
//! limit is reached) waits for the next connection to come back instead of opening its
//! own. Opening a PostgreSQL connection costs milliseconds of CPU (a backend process,
//! its catalog caches, the statements prepared and planned again), so a burst that found
//! the pool empty used to open one connection per waiting request at once; on a small
//! machine that stalled every request for tens of milliseconds (see BENCHMARKS.md). A
//! bounded pool also bounds how many queries run at once on the database.

use crate::auth::locks::lock;
use crate::config::{Config, Role};
use crate::directory::{self, Directory};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// After a temporary failure, try a directory last for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// [`DirectoryPool::keep_answering`] pings only while someone asked this recently.
const DEMAND_FOR: Duration = Duration::from_secs(10);

/// Connections of one directory.
#[derive(Default)]
struct Slots {
    idle: Vec<Box<dyn Directory>>,
    /// Connections that exist (idle, in use, or being opened).
    live: usize,
    /// A connection is being opened (its first use is in progress).
    opening: bool,
    /// Bumped when opening a connection fails: waiters give up on this directory.
    failures: u64,
}

struct Source {
    name: String,
    url: String,
    slots: Mutex<Slots>,
    /// Signalled when a connection comes back or an opening ends.
    changed: Condvar,
    suspect_until: Mutex<Option<Instant>>,
    opened: AtomicU64,
}

/// The pings behind [`DirectoryPool::answers_now`]: one at a time, numbered in the order
/// they start.
#[derive(Default)]
struct Pings {
    started: u64,
    in_flight: bool,
    /// The last ping that ended, and whether a directory answered it.
    done: u64,
    answered: bool,
    /// When a query or a ping last found no directory answering: a ping sent before then
    /// cannot renew the lease.
    failed: Option<Instant>,
}

/// An `Option<Instant>` readable without a lock (nanoseconds since a fixed start).
struct Stamp {
    epoch: Instant,
    /// 0: none; else 1 + nanoseconds since `epoch`.
    nanos: AtomicU64,
}

impl Stamp {
    fn new(epoch: Instant) -> Stamp {
        Stamp {
            epoch,
            nanos: AtomicU64::new(0),
        }
    }
    fn set(&self, t: Option<Instant>) {
        let n = t.map_or(0, |t| {
            1 + u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(0)
        });
        self.nanos.store(n, Ordering::SeqCst);
    }
    fn get(&self) -> Option<Instant> {
        match self.nanos.load(Ordering::SeqCst) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }
}

/// A pool of directory connections.
pub struct DirectoryPool {
    sources: Vec<Source>,
    pings: Mutex<Pings>,
    /// When the newest answered ping was sent; None after a ping or a query that no
    /// directory answered. Written under the `pings` lock, read without it by
    /// [`DirectoryPool::answered_within`].
    lease_from: Stamp,
    /// When [`DirectoryPool::answered_within`] was last called (to the second).
    asked: Stamp,
    ping_done: Condvar,
    /// Calls of [`DirectoryPool::answered_within`] that found no fresh answer and waited.
    lease_misses: AtomicU64,
    timeout: Duration,
    max_size: usize,
}

/// Wait on `cv` until it is signalled or `deadline` passes (None: passed before the wait).
fn wait_until<'a, T>(
    cv: &Condvar,
    guard: std::sync::MutexGuard<'a, T>,
    deadline: Instant,
) -> Option<std::sync::MutexGuard<'a, T>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    Some(match cv.wait_timeout(guard, left) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    })
}

/// A slot taken from a source (the connection itself is handed out next to it). Dropped
/// without [`Lease::give_back`] or [`Lease::discard`] (a panic in the caller), the slot is
/// freed and the connection, dropped by the caller, is closed.
struct Lease<'a> {
    source: &'a Source,
    /// Newly made: its first use opens it, and it holds the source's `opening` flag.
    fresh: bool,
    settled: bool,
}

impl Lease<'_> {
    /// The connection works: back to the idle list.
    fn give_back(mut self, conn: Box<dyn Directory>) {
        self.settled = true;
        let mut slots = lock(&self.source.slots);
        slots.idle.push(conn);
        if self.fresh {
            // The opening is over: every waiter may look again (one may open the next).
            slots.opening = false;
            self.source.changed.notify_all();
        } else {
            self.source.changed.notify_one();
        }
    }

    /// The connection failed (the caller drops it): a pooled one takes the other idle ones
    /// with it (they likely died with the same server); a fresh one is a failed opening,
    /// which the requests waiting for this source give up on.
    fn discard(mut self) {
        self.settled = true;
        let mut slots = lock(&self.source.slots);
        slots.live = slots.live.saturating_sub(1);
        if self.fresh {
            slots.opening = false;
            slots.failures += 1;
        } else {
            let stale = slots.idle.len();
            slots.idle.clear();
            slots.live = slots.live.saturating_sub(stale);
        }
        self.source.changed.notify_all();
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let mut slots = lock(&self.source.slots);
            slots.live = slots.live.saturating_sub(1);
            if self.fresh {
                slots.opening = false;
            }
            self.source.changed.notify_all();
        }
    }
}

impl DirectoryPool {
    /// The storage-role directories of `config` (smtp-role copies hold no passwords), with
    /// at most `max_size` connections each.
    pub fn new(config: &Config, max_size: usize) -> Result<DirectoryPool> {
        let sources: Vec<Source> = config
            .directories
            .iter()
            .filter(|d| d.role == Role::Storage)
            .map(|d| Source {
                name: d.name.clone(),
                url: d.url.clone(),
                slots: Mutex::new(Slots::default()),
                changed: Condvar::new(),
                suspect_until: Mutex::new(None),
                opened: AtomicU64::new(0),
            })
            .collect();
        if sources.is_empty() {
            return Err(Error::config(
                "no storage-role [[directory]] configured (or give --db)",
            ));
        }
        Ok(DirectoryPool {
            sources,
            pings: Mutex::new(Pings::default()),
            lease_from: Stamp::new(Instant::now()),
            asked: Stamp::new(Instant::now()),
            ping_done: Condvar::new(),
            lease_misses: AtomicU64::new(0),
            timeout: config.db_timeout(),
            max_size: max_size.max(1),
        })
    }

    /// Connections opened so far and connections open now, summed over the directories
    /// (for /metrics).
    pub fn counts(&self) -> (u64, usize) {
        let opened = self
            .sources
            .iter()
            .map(|s| s.opened.load(Ordering::Relaxed))
            .sum();
        let live = self.sources.iter().map(|s| lock(&s.slots).live).sum();
        (opened, live)
    }

    /// Does a directory answer now, that is, answer a ping sent after this call began?
    /// Concurrent callers share pings: a caller that finds one in flight (sent before it
    /// came) waits for it to end, and the next one, sent by the first of the callers
    /// waiting, answers all of them. A busy service thus sends at most one ping at a time,
    /// however many requests ask, and never trusts an answer older than the request.
    pub fn answers_now(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout.saturating_mul(2);
        let mut pings = lock(&self.pings);
        // The first ping to start from now on is the one that counts for this caller.
        let wanted = pings.started + 1;
        loop {
            if pings.done >= wanted {
                return if pings.answered {
                    Ok(())
                } else {
                    Err(Error::temporary("no directory answered"))
                };
            }
            if !pings.in_flight {
                pings.started += 1;
                pings.in_flight = true;
                let this = pings.started;
                drop(pings);
                let sent = Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.with(|dir| dir.ping())
                }));
                pings = lock(&self.pings);
                pings.in_flight = false;
                pings.done = this;
                pings.answered = matches!(result, Ok(Ok(())));
                if !pings.answered {
                    self.lost(&mut pings);
                } else if pings.failed.map_or(true, |failed| sent > failed) {
                    self.lease_from.set(Some(sent));
                }
                self.ping_done.notify_all();
                continue;
            }
            pings = wait_until(&self.ping_done, pings, deadline)
                .ok_or_else(|| Error::temporary("no directory answered in time"))?;
        }
    }

    /// No directory answered: the lease on earlier answers ends now. `pings` is the
    /// locked state, so that lease updates keep the lock's order.
    fn lost(&self, pings: &mut Pings) {
        pings.failed = Some(Instant::now());
        self.lease_from.set(None);
    }

    /// Has a directory answered a ping sent at most `lease` ago? If not (or `lease` is
    /// zero), wait for one sent from now on, as [`DirectoryPool::answers_now`]. A ping or a
    /// query that no directory answered ends the lease at once; a directory that hangs
    /// lets callers through for at most `lease` after the last ping it answered was sent.
    /// [`DirectoryPool::keep_answering`] keeps the lease fresh, so that callers need not wait.
    pub fn answered_within(&self, lease: Duration) -> Result<()> {
        if !lease.is_zero() {
            // No lock on this path, taken by every cached login: a thread stalled while
            // holding one would hold up all of them.
            let now = Instant::now();
            if self.asked.get().map_or(true, |t| {
                now.saturating_duration_since(t) > Duration::from_secs(1)
            }) {
                self.asked.set(Some(now));
            }
            if self
                .lease_from
                .get()
                .is_some_and(|sent| now.saturating_duration_since(sent) <= lease)
            {
                return Ok(());
            }
            self.lease_misses.fetch_add(1, Ordering::Relaxed);
        }
        self.answers_now()
    }

    /// Calls of [`DirectoryPool::answered_within`] that had to wait for a ping (for /metrics).
    pub fn lease_misses(&self) -> u64 {
        self.lease_misses.load(Ordering::Relaxed)
    }

    /// Send a ping every `lease / 4` while [`DirectoryPool::answered_within`] was asked
    /// within the last 10 s (an idle service sends none), in a thread of its own that ends
    /// with the pool.
    pub fn keep_answering(pool: &Arc<DirectoryPool>, lease: Duration) -> Result<()> {
        if lease.is_zero() {
            return Ok(());
        }
        let every = (lease / 4).max(Duration::from_millis(1));
        let weak: Weak<DirectoryPool> = Arc::downgrade(pool);
        std::thread::Builder::new()
            .name("directory-ping".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(pool) = weak.upgrade() else {
                    return;
                };
                let due = {
                    let pings = lock(&pool.pings);
                    let now = Instant::now();
                    let wanted = pool
                        .asked
                        .get()
                        .is_some_and(|t| now.saturating_duration_since(t) < DEMAND_FOR);
                    let fresh = pool
                        .lease_from
                        .get()
                        .is_some_and(|t| now.saturating_duration_since(t) < every);
                    wanted && !fresh && !pings.in_flight
                };
                if due {
                    // A failure is recorded in the lease; the callers report it.
                    let _ = pool.answers_now();
                }
            })
            .map(drop)
            .map_err(|e| Error::temporary(format!("cannot start the directory ping thread: {e}")))
    }

    /// Take a connection of `source`: an idle one, else a new one when none is being opened
    /// and the limit allows, else wait (until `deadline`) for one to come back. Err when
    /// the wait times out or an opening fails meanwhile.
    fn take<'a>(
        &self,
        source: &'a Source,
        deadline: Instant,
    ) -> Result<(Lease<'a>, Box<dyn Directory>)> {
        let mut slots = lock(&source.slots);
        let failures = slots.failures;
        loop {
            if let Some(c) = slots.idle.pop() {
                let lease = Lease {
                    source,
                    fresh: false,
                    settled: false,
                };
                return Ok((lease, c));
            }
            if slots.failures != failures {
                return Err(Error::temporary(format!(
                    "directory {}: cannot connect",
                    source.name
                )));
            }
            if !slots.opening && slots.live < self.max_size {
                slots.opening = true;
                slots.live += 1;
                drop(slots);
                let lease = Lease {
                    source,
                    fresh: true,
                    settled: false,
                };
                return match directory::open(&source.url, self.timeout) {
                    Ok(c) => {
                        source.opened.fetch_add(1, Ordering::Relaxed);
                        Ok((lease, c))
                    }
                    Err(e) => {
                        lease.discard();
                        Err(e)
                    }
                };
            }
            slots = wait_until(&source.changed, slots, deadline).ok_or_else(|| {
                Error::temporary(format!(
                    "directory {}: no connection free within {:.1}s",
                    source.name,
                    self.timeout.as_secs_f64()
                ))
            })?;
        }
    }

    /// Run `f` on a connection to the first directory that answers. A temporary error moves
    /// on to the next directory; the last error is returned when none answers.
    pub fn with<T>(&self, mut f: impl FnMut(&mut dyn Directory) -> Result<T>) -> Result<T> {
        let now = Instant::now();
        let mut order: Vec<&Source> = self.sources.iter().collect();
        // Stable: healthy ones first, in configured order.
        order.sort_by_key(|s| lock(&s.suspect_until).is_some_and(|t| t > now));
        let mut last: Option<Error> = None;
        for source in order {
            let deadline = Instant::now() + self.timeout;
            // A pooled connection may have died with its server: on a temporary failure
            // retry once on a fresh connection before moving on.
            let mut fresh_tried = false;
            while !fresh_tried {
                let (lease, mut conn) = match self.take(source, deadline) {
                    Ok(taken) => taken,
                    Err(e) => {
                        log::warn!("directory {}: {e}", source.name);
                        if e.is_temporary() {
                            *lock(&source.suspect_until) = Some(Instant::now() + SUSPECT_FOR);
                        }
                        last = Some(e);
                        break;
                    }
                };
                fresh_tried = lease.fresh;
                match f(conn.as_mut()) {
                    Ok(v) => {
                        *lock(&source.suspect_until) = None;
                        lease.give_back(conn);
                        return Ok(v);
                    }
                    Err(e) if e.is_temporary() => {
                        // Drop the connection: it may be broken.
                        log::warn!("directory {}: {e}", source.name);
                        if lease.fresh {
                            *lock(&source.suspect_until) = Some(Instant::now() + SUSPECT_FOR);
                        }
                        drop(conn);
                        lease.discard();
                        last = Some(e);
                    }
                    Err(e) => {
                        lease.give_back(conn);
                        return Err(e);
                    }
                }
            }
        }
        self.lost(&mut lock(&self.pings));
        Err(last
            .map(|e| {
                if e.is_temporary() {
                    e
                } else {
                    Error::temporary(format!("no directory answered: {e}"))
                }
            })
            .unwrap_or_else(|| Error::temporary("no directory answered")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn pool(dir: &Path, max: usize) -> DirectoryPool {
        let db = dir.join("d.sqlite");
        std::fs::write(&db, b"").unwrap(); // an empty file is an empty SQLite database
        let text = format!(
            "[[directory]]\nname = \"a\"\nurl = \"sqlite:{}\"\n",
            db.display()
        );
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        DirectoryPool::new(&config, max).unwrap()
    }

    /// Run `f` on 8 threads at once.
    fn burst(f: impl Fn() + Sync) {
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(&f);
            }
        });
    }

    #[test]
    fn a_burst_opens_connections_one_at_a_time_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        burst(|| {
            pool.with(|_| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            })
            .unwrap()
        });
        let (opened, live) = pool.counts();
        assert!((1..=2).contains(&opened), "{opened}");
        assert_eq!(live as u64, opened);
    }

    #[test]
    fn callers_share_pings_and_a_dead_directory_fails_them() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        burst(|| pool.answers_now().unwrap());
        let (opened, _) = pool.counts();
        assert!((1..=2).contains(&opened), "{opened}");
        let text = "db_timeout = 1\n[[directory]]\nname = \"gone\"\n\
                    url = \"postgresql://mail@127.0.0.1:1/mail?connect_timeout=1\"\n";
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let gone = DirectoryPool::new(&config, 1).unwrap();
        assert!(gone.answers_now().unwrap_err().is_temporary());
    }

    #[test]
    fn a_lease_spares_pings_until_it_ends_or_nobody_answers() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(pool(dir.path(), 1));
        let started = || lock(&pool.pings).started;
        let long = Duration::from_secs(600);
        pool.answered_within(long).unwrap(); // nothing answered yet: a ping
        pool.answered_within(long).unwrap(); // within the lease: none
        assert_eq!(started(), 1);
        pool.answered_within(Duration::ZERO).unwrap(); // strict: always one
        assert_eq!(started(), 2);
        std::thread::sleep(Duration::from_millis(20));
        pool.answered_within(Duration::from_millis(10)).unwrap(); // lease over
        assert_eq!(started(), 3);
        // A query no directory answered ends the lease at once.
        let r: Result<()> = pool.with(|_| Err(Error::temporary("gone")));
        assert!(r.is_err());
        pool.answered_within(long).unwrap();
        assert_eq!(started(), 4);
        // The background pings keep a short lease fresh while callers ask.
        DirectoryPool::keep_answering(&pool, Duration::from_millis(40)).unwrap();
        pool.answered_within(Duration::from_millis(40)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(started() >= 6, "{}", started());
    }

    #[test]
    fn failures_and_panics_free_their_slots() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 1);
        pool.with(|_| Ok(())).unwrap();
        assert_eq!(pool.counts(), (1, 1));
        // A pooled connection fails: dropped, one fresh retry (fails too), none left.
        let r: Result<()> = pool.with(|_| Err(Error::temporary("gone")));
        assert!(r.unwrap_err().is_temporary());
        assert_eq!(pool.counts(), (2, 0));
        // A panic while opening must not leave the source "opening" forever.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.with(|_| -> Result<()> { panic!("handler bug") })
        }));
        assert!(r.is_err());
        assert_eq!(pool.counts(), (3, 0));
        pool.with(|_| Ok(())).unwrap();
        assert_eq!(pool.counts(), (4, 1));
    }
}
