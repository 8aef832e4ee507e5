//! Locks of the auth daemon's shared state: poison-tolerant helpers (a panicked request
//! must not take the service down; the handler catches panics) and [`Shards`].
//!
//! Shards: shared state split into independently locked parts by key.
//!
//! Every login touches the caches and the throttle tables. Behind one lock each, a thread
//! preempted while holding it (on a busy machine the scheduler does this a few times a
//! second) stops every other login for the length of its time slice: tens of
//! milliseconds, seen as bursts of slow answers. Split into shards, such a stall only
//! holds up the logins whose key falls into the same shard.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shards per structure: enough that one stalled shard holds up few logins, few enough
/// that the per-shard bounds stay meaningful.
pub const SHARDS: usize = 16;

pub struct Shards<T> {
    hasher: RandomState,
    shards: Box<[Mutex<T>]>,
}

impl<T> Shards<T> {
    /// [`SHARDS`] shards, each made by `make`.
    pub fn new(mut make: impl FnMut() -> T) -> Shards<T> {
        Shards {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(make())).collect(),
        }
    }

    /// The locked shard that holds `key`. Keys that are equal (and, through `Borrow`, their
    /// borrowed forms, which hash alike) always map to the same shard.
    pub fn lock<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, T> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        lock(&self.shards[i])
    }

    /// Each shard in turn, locked one at a time.
    pub fn each(&self, mut f: impl FnMut(&mut T)) {
        for shard in self.shards.iter() {
            f(&mut lock(shard));
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_share_a_shard_and_borrowed_forms_find_it() {
        let shards: Shards<Vec<String>> = Shards::new(Vec::new);
        for i in 0..100 {
            shards.lock(&format!("k{i}")).push(format!("k{i}"));
        }
        for i in 0..100 {
            let key = format!("k{i}");
            assert!(shards.lock(key.as_str()).contains(&key));
        }
        let mut total = 0;
        let mut used = 0;
        shards.each(|s| {
            total += s.len();
            used += usize::from(!s.is_empty());
        });
        assert_eq!(total, 100);
        assert!(used > 1, "keys spread over the shards");
    }
}
