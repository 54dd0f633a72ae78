//! The per-source connection-rate throttle, applied before a connection gets its server banner
//! (so before any key exchange): each source (`ssh.*_per_source`, an IPv4 address or an IPv6
//! /64) may open `burst` connections at once and then `rate` per second. A faster source's
//! connections wait for their turn; past `burst` waiting, they are closed at once. Pure
//! bookkeeping over instants the caller passes in (the generic cell rate algorithm: one
//! "theoretical arrival time" per source).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bastion_core::cidr::Cidr;

/// Sources tracked at most. When full, sources back at their full burst are forgotten (at most
/// once a second: forgetting them changes nothing); a source still being slowed is never
/// forgotten, so a flood from many addresses cannot reset one it is hiding behind. Sources that
/// still find no room share one schedule: slowed together, not locked out.
const MAX_TRACKED: usize = 65_536;

/// The fastest rate taken from the config: a faster one would make the interval zero.
const MAX_RATE: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it now.
    Now,
    /// Serve it after this long.
    After(Duration),
    /// Close it: the source already has a full queue waiting.
    Refuse,
}

#[derive(Debug)]
pub struct Throttle {
    /// Time between two connections at the steady rate.
    interval: Duration,
    /// How far ahead of now a source's schedule may run: the burst.
    tolerance: Duration,
    /// Per source: when its schedule would next be empty.
    sources: HashMap<Cidr, Instant>,
    last_prune: Option<Instant>,
}

impl Throttle {
    /// `None` when `rate` is 0 (no throttle).
    pub fn new(rate: u32, burst: u32) -> Option<Throttle> {
        (rate > 0).then(|| {
            let interval = Duration::from_secs(1) / rate.min(MAX_RATE);
            Throttle {
                interval,
                tolerance: interval.saturating_mul(burst.max(1)),
                sources: HashMap::new(),
                last_prune: None,
            }
        })
    }

    /// A connection from `source` arrives at `now`; reserves its turn unless refused.
    pub fn admit(&mut self, source: Cidr, now: Instant) -> Admission {
        let mut source = source;
        if self.sources.len() >= MAX_TRACKED && !self.sources.contains_key(&source) {
            if self
                .last_prune
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.last_prune = Some(now);
                self.sources.retain(|_, tat| *tat > now);
            }
            if self.sources.len() >= MAX_TRACKED {
                source = Cidr::source(source.addr(), 0, 0);
            }
        }
        let tat = self.sources.get(&source).copied().unwrap_or(now).max(now);
        // `tat - now` is the work already scheduled for this source: the burst is served at
        // once, then one connection per interval, and past a second burst's worth it is refused.
        let ahead = tat - now;
        if ahead >= self.tolerance.saturating_mul(2) {
            return Admission::Refuse;
        }
        self.sources.insert(source, tat + self.interval);
        match (ahead + self.interval).checked_sub(self.tolerance) {
            None => Admission::Now,
            Some(wait) if wait.is_zero() => Admission::Now,
            Some(wait) => Admission::After(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Cidr {
        Cidr::source(s.parse().unwrap(), 32, 64)
    }

    #[test]
    fn a_burst_then_the_rate_then_refusal() {
        let mut t = Throttle::new(5, 10).unwrap();
        let t0 = Instant::now();
        let a = src("198.51.100.10");
        for i in 0..10 {
            assert_eq!(t.admit(a, t0), Admission::Now, "burst {i}");
        }
        // The next ten wait 200 ms more each; the one after is refused.
        for i in 1..=10u32 {
            assert_eq!(
                t.admit(a, t0),
                Admission::After(Duration::from_millis(200) * i),
                "queued {i}"
            );
        }
        assert_eq!(t.admit(a, t0), Admission::Refuse);
        // Another source is not slowed by it.
        assert_eq!(t.admit(src("198.51.100.11"), t0), Admission::Now);
        // Four seconds later the source is back to its full burst.
        let later = t0 + Duration::from_secs(5);
        for _ in 0..10 {
            assert_eq!(t.admit(a, later), Admission::Now);
        }
    }

    #[test]
    fn a_steady_rate_is_never_slowed_and_ipv6_counts_per_64() {
        let mut t = Throttle::new(5, 10).unwrap();
        let t0 = Instant::now();
        for i in 0..100u32 {
            let now = t0 + Duration::from_millis(200) * i;
            assert_eq!(t.admit(src("198.51.100.10"), now), Admission::Now);
        }
        for i in 0..10 {
            assert_eq!(t.admit(src(&format!("2001:db8::{i}")), t0), Admission::Now);
        }
        assert_ne!(t.admit(src("2001:db8::ffff"), t0), Admission::Now);
        assert_eq!(Throttle::new(0, 10).map(|_| ()), None);
    }

    /// What ssh-audit's rate test sees: three connections at a time, each closed at its banner,
    /// for 1.5 s. It reports a source served more than 20 banners per second.
    #[test]
    fn a_scanner_sees_fewer_than_20_banners_per_second() {
        let mut t = Throttle::new(5, 10).unwrap();
        let t0 = Instant::now();
        let (mut served, mut clock) = (0u32, t0);
        let mut open: Vec<Instant> = Vec::new();
        while clock < t0 + Duration::from_millis(1500) {
            while open.len() < 3 {
                match t.admit(src("198.51.100.10"), clock) {
                    Admission::Now => open.push(clock),
                    Admission::After(d) => open.push(clock + d),
                    Admission::Refuse => break,
                }
            }
            if open.is_empty() {
                clock += Duration::from_millis(10);
                continue;
            }
            open.sort();
            let next = open.remove(0);
            clock = clock.max(next) + Duration::from_millis(1);
            served += 1;
        }
        let rate = f64::from(served) / 1.5;
        assert!(rate < 20.0, "{served} banners in 1.5 s");
    }
}
