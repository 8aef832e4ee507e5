//! A small map whose entries expire: the service's caches of domain routes and of mailbox
//! records. Bounded: when full, expired entries are dropped, and if that is not enough,
//! everything (a cache miss costs one directory query, never a wrong answer). Each entry
//! lives between 3/4 of the TTL and the TTL, at random, so that entries made together (a
//! restart, a burst of logins) do not all expire, and ask the directory, together.
//! [`TtlCache::get_or_due`] also tells the one caller that finds an entry past 3/4 of its life
//! that it is due for a refresh, so that entries in use are renewed in the background
//! before they expire (never kept beyond their life: a refresh is a new entry).
//! The map is sharded ([`Shards`]): a reader stalled in one shard holds up no other.

use crate::auth::locks::{Shards, SHARDS};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    ttl: Duration,
    /// Entries per shard at most.
    max: usize,
    map: Shards<HashMap<K, Entry<V>>>,
}

struct Entry<V> {
    value: V,
    expires: Instant,
    /// From then on, the next reader is told to refresh the entry (then None).
    refresh_at: Option<Instant>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// Entries live `ttl` (zero: the cache keeps nothing), at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> TtlCache<K, V> {
        TtlCache {
            ttl,
            max: (max / SHARDS).max(1),
            map: Shards::new(HashMap::new),
        }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.read(key, false).map(|(v, _)| v)
    }

    /// The value, and whether this caller is the one to refresh it (the entry is past 3/4 of
    /// its life; each entry says so once).
    pub fn get_or_due<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(V, bool)>
    where
        K: Borrow<Q>,
    {
        self.read(key, true)
    }

    /// A live entry's value, and whether it is due for a refresh (claimed, when `claim`).
    fn read<Q: Hash + Eq + ?Sized>(&self, key: &Q, claim: bool) -> Option<(V, bool)>
    where
        K: Borrow<Q>,
    {
        if self.ttl.is_zero() {
            return None;
        }
        let mut map = self.map.lock(key);
        let e = map.get_mut(key)?;
        let now = Instant::now();
        if now >= e.expires {
            return None;
        }
        let due = claim && e.refresh_at.is_some_and(|t| now >= t);
        if due {
            e.refresh_at = None;
        }
        Some((e.value.clone(), due))
    }

    pub fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock(&key);
        let now = Instant::now();
        if map.len() >= self.max && !map.contains_key(&key) {
            map.retain(|_, e| now < e.expires);
            if map.len() >= self.max {
                map.clear();
            }
        }
        let life = self.ttl.mul_f64(0.75 + rand::random::<f64>() / 4.0);
        let entry = Entry {
            value,
            expires: now + life,
            refresh_at: Some(now + life.mul_f64(0.75)),
        };
        map.insert(key, entry);
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.map.lock(key).remove(key);
    }

    pub fn clear(&self) {
        self.map.each(|m| m.clear());
    }

    pub fn len(&self) -> usize {
        let mut n = 0;
        self.map.each(|m| n += m.len());
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c = TtlCache::new(Duration::from_millis(80), 2 * SHARDS);
        for i in 0..10 * SHARDS {
            c.put(i, i);
            assert_eq!(c.get(&i), Some(i)); // a full shard starts over
            assert!(c.len() <= 2 * SHARDS);
        }
        let c = TtlCache::new(Duration::from_millis(80), 2);
        c.put("c", 3);
        std::thread::sleep(Duration::from_millis(90));
        assert_eq!(c.get(&"c"), None);
        c.remove(&"c");
        assert!(c.is_empty());
        // Past 3/4 of its life an entry is due for a refresh, once (well before it expires);
        // a new put renews it.
        let c = TtlCache::new(Duration::from_millis(400), 10);
        c.put("d", 4);
        assert_eq!(c.get_or_due(&"d"), Some((4, false)));
        let due = loop {
            std::thread::sleep(Duration::from_millis(5));
            match c.get_or_due(&"d") {
                Some((4, true)) => break true,
                Some((4, false)) => continue,
                _ => break false,
            }
        };
        assert!(due, "expired before it was due");
        assert_eq!(c.get_or_due(&"d"), Some((4, false)));
        c.put("d", 5);
        assert_eq!(c.get_or_due(&"d"), Some((5, false)));
        let off = TtlCache::new(Duration::ZERO, 10);
        off.put("a", 1);
        assert_eq!(off.get(&"a"), None);
    }
}
