//! The answer cache of `mailmap serve`: positive and negative TTLs, and last known good
//! positive answers for database outages (bounded staleness). Negative answers are never
//! used during an outage: a mailbox created just before must not be rejected.

use super::Query;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Entry {
    /// None = not found.
    answer: Option<String>,
    at: Instant,
}

/// TTLs and bounds.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_max: Duration,
    pub max_entries: usize,
}

/// The cache proper. Not thread-safe by itself (the daemon wraps it in a mutex).
#[derive(Debug)]
pub struct Cache {
    map: HashMap<Query, Entry>,
    policy: Policy,
}

impl Cache {
    pub fn new(policy: Policy) -> Cache {
        Cache {
            map: HashMap::new(),
            policy,
        }
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drop everything (SIGHUP).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// A fresh answer (within its TTL): Some(answer) where answer None = not found.
    pub fn fresh(&self, query: &Query, now: Instant) -> Option<Option<String>> {
        let e = self.map.get(query)?;
        let ttl = if e.answer.is_some() {
            self.policy.positive_ttl
        } else {
            self.policy.negative_ttl
        };
        (now.saturating_duration_since(e.at) < ttl).then(|| e.answer.clone())
    }

    /// The last known good POSITIVE answer, if not older than the staleness bound.
    /// Used only while the database is unreachable.
    pub fn last_good(&self, query: &Query, now: Instant) -> Option<String> {
        let e = self.map.get(query)?;
        let answer = e.answer.as_ref()?;
        (now.saturating_duration_since(e.at) <= self.policy.stale_max).then(|| answer.clone())
    }

    /// Store an answer from the database.
    pub fn insert(&mut self, query: Query, answer: Option<String>, now: Instant) {
        if self.map.len() >= self.policy.max_entries && !self.map.contains_key(&query) {
            self.evict(now);
            if self.map.len() >= self.policy.max_entries {
                return; // still full of useful answers: keep them, skip this one
            }
        }
        self.map.insert(query, Entry { answer, at: now });
    }

    /// Make room: drop negative answers past their TTL and positive ones past the
    /// staleness bound; if that is not enough, drop all negative answers.
    fn evict(&mut self, now: Instant) {
        let p = self.policy;
        self.map.retain(|_, e| {
            let age = now.saturating_duration_since(e.at);
            match e.answer {
                Some(_) => age <= p.stale_max,
                None => age < p.negative_ttl,
            }
        });
        if self.map.len() >= p.max_entries {
            self.map.retain(|_, e| e.answer.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(d: &str) -> Query {
        Query::Route {
            domain: d.to_string(),
        }
    }

    fn policy() -> Policy {
        Policy {
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            stale_max: Duration::from_secs(3600),
            max_entries: 3,
        }
    }

    #[test]
    fn ttls_and_staleness() {
        let t0 = Instant::now();
        let mut c = Cache::new(policy());
        c.insert(q("a.b.ru"), Some("h1".into()), t0);
        c.insert(q("n.b.ru"), None, t0);
        let s = Duration::from_secs;
        assert_eq!(c.fresh(&q("a.b.ru"), t0 + s(59)), Some(Some("h1".into())));
        assert_eq!(c.fresh(&q("a.b.ru"), t0 + s(61)), None);
        assert_eq!(c.fresh(&q("n.b.ru"), t0 + s(9)), Some(None));
        assert_eq!(c.fresh(&q("n.b.ru"), t0 + s(11)), None);
        // outage: positive answers up to stale_max, negative never
        assert_eq!(c.last_good(&q("a.b.ru"), t0 + s(3600)), Some("h1".into()));
        assert_eq!(c.last_good(&q("a.b.ru"), t0 + s(3601)), None);
        assert_eq!(c.last_good(&q("n.b.ru"), t0 + s(1)), None);
        assert_eq!(c.last_good(&q("x.b.ru"), t0), None);
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(policy());
        c.insert(q("1.b.ru"), Some("h".into()), t0);
        c.insert(q("2.b.ru"), None, t0);
        c.insert(q("3.b.ru"), Some("h".into()), t0);
        // full: a new entry evicts the negative one
        c.insert(q("4.b.ru"), Some("h".into()), t0);
        assert_eq!(c.len(), 3);
        assert!(c.fresh(&q("2.b.ru"), t0).is_none());
        assert!(c.fresh(&q("4.b.ru"), t0).is_some());
        // full of positives: the new one is skipped, the old kept
        c.insert(q("5.b.ru"), Some("h".into()), t0);
        assert_eq!(c.len(), 3);
        assert!(c.fresh(&q("1.b.ru"), t0).is_some());
    }
}
