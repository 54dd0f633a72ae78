//! Failed sign-in limiting (per source address, per user name): after `max_failures` within
//! `window`, a key is refused outright for `penalty`. Pure bookkeeping over instants the caller
//! passes in.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// Sources tracked at most; beyond it, expired entries are pruned first, then the oldest.
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
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(limits: Limits) -> Self {
        Limiter {
            limits,
            sources: HashMap::new(),
        }
    }

    /// `Err(remaining)` while `ip` is being refused.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.sources.get(key).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failure; returns true if this failure started a penalty.
    pub fn failure(&mut self, key: K, now: Instant) -> bool {
        if self.sources.len() >= MAX_TRACKED && !self.sources.contains_key(&key) {
            self.prune(now);
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
        if self.sources.len() >= MAX_TRACKED {
            // Still full of live entries: forget one arbitrary source rather than grow.
            if let Some(k) = self.sources.keys().next().cloned() {
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
}
