//! Failed sign-in limiting: after `max_failures` within `window`, a key is refused outright for
//! `penalty`. Keyed per source (an IPv4 address, an IPv6 /64) and per (user name, source /24 or
//! /64), so nobody can lock a user name (`root`, transparent mode's) out for everyone by failing
//! as it from elsewhere. Pure bookkeeping over instants the caller passes in.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// Keys tracked at most. When full, expired entries are pruned first, then the key whose
/// counting started longest ago among those not blocked; a blocked key is never forgotten (that
/// would let a flood of other sources lift its penalty). When every entry is blocked, a new key
/// is not tracked until one expires.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_failures: u32,
    pub window: Duration,
    pub penalty: Duration,
}

#[derive(Debug, Default)]
struct Entry {
    window_start: Option<Instant>,
    failures: u32,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Limiter<K> {
    limits: Limits,
    sources: HashMap<K, Entry>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, MAX_TRACKED)
    }

    fn with_capacity(limits: Limits, capacity: usize) -> Self {
        Limiter {
            limits,
            sources: HashMap::new(),
            capacity,
        }
    }

    /// `Err(remaining)` while `key` is being refused.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.sources.get(key).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failure; returns true if this failure started a penalty.
    pub fn failure(&mut self, key: K, now: Instant) -> bool {
        if self.sources.len() >= self.capacity && !self.sources.contains_key(&key) {
            self.prune(now);
            if self.sources.len() >= self.capacity {
                return false;
            }
        }
        let limits = self.limits;
        let e = self.sources.entry(key).or_default();
        match e.window_start {
            Some(start) if now.duration_since(start) < limits.window => e.failures += 1,
            _ => {
                e.window_start = Some(now);
                e.failures = 1;
            }
        }
        if e.failures >= limits.max_failures && e.blocked_until.is_none_or(|u| u <= now) {
            e.blocked_until = Some(now + limits.penalty);
            e.failures = 0;
            e.window_start = None;
            return true;
        }
        false
    }

    fn prune(&mut self, now: Instant) {
        let limits = self.limits;
        self.sources.retain(|_, e| {
            e.blocked_until.is_some_and(|u| u > now)
                || e.window_start
                    .is_some_and(|s| now.duration_since(s) < limits.window)
        });
        if self.sources.len() >= self.capacity {
            // Still full of live entries: forget the oldest count that blocks nobody.
            let oldest = self
                .sources
                .iter()
                .filter(|(_, e)| e.blocked_until.is_none_or(|u| u <= now))
                .min_by_key(|(_, e)| e.window_start)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.sources.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_within_window_and_releases_after_penalty() {
        let limits = Limits {
            max_failures: 3,
            window: Duration::from_secs(10),
            penalty: Duration::from_secs(60),
        };
        let mut l = Limiter::new(limits);
        let a: std::net::IpAddr = "198.51.100.10".parse().unwrap();
        let b: std::net::IpAddr = "198.51.100.11".parse().unwrap();
        let t0 = Instant::now();
        assert!(!l.failure(a, t0));
        assert!(!l.failure(a, t0 + Duration::from_secs(1)));
        assert!(l.check(&a, t0).is_ok());
        assert!(
            l.failure(a, t0 + Duration::from_secs(2)),
            "third failure starts the penalty"
        );
        assert!(l.check(&a, t0 + Duration::from_secs(3)).is_err());
        assert!(
            l.check(&b, t0 + Duration::from_secs(3)).is_ok(),
            "other sources unaffected"
        );
        assert!(
            l.check(&a, t0 + Duration::from_secs(63)).is_ok(),
            "penalty over"
        );
        // Failures spread wider than the window never add up.
        let mut l = Limiter::new(limits);
        for i in 0..10 {
            assert!(!l.failure(a, t0 + Duration::from_secs(i * 6)));
        }
    }

    #[test]
    fn a_full_table_never_forgets_a_blocked_key() {
        let limits = Limits {
            max_failures: 2,
            window: Duration::from_secs(600),
            penalty: Duration::from_secs(600),
        };
        let mut l = Limiter::with_capacity(limits, 3);
        let t0 = Instant::now();
        l.failure(0u32, t0);
        assert!(l.failure(0, t0), "key 0 blocked");
        // Fill the table with counting keys, then flood it with new ones.
        for k in 1..100u32 {
            l.failure(k, t0 + Duration::from_secs(u64::from(k)));
        }
        assert!(l.check(&0, t0 + Duration::from_secs(200)).is_err());
        // Block every tracked key: a new one is then not tracked, and none is freed.
        let mut l = Limiter::with_capacity(limits, 2);
        for k in 0..2u32 {
            l.failure(k, t0);
            l.failure(k, t0);
        }
        assert!(!l.failure(7, t0) && !l.failure(7, t0));
        assert!(l.check(&0, t0).is_err() && l.check(&1, t0).is_err());
    }
}
