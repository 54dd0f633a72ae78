//! The audit stream's budget for what unauthenticated sources cause (refused flows, refused
//! relay connections, failed sign-ins): anyone on the admin network can cause those at line
//! rate, and each would otherwise be one stored event. Per source address and minute, the
//! first [`FloodLimits::per_source_per_minute`] are stored one by one; across all sources,
//! [`FloodLimits::bytes_per_hour`] of them. What is held back is counted and stored as one
//! [`AuditKind::AuditSuppressed`] event per minute: never silently dropped.
//!
//! Pure: the caller passes the time and stores what [`FloodGate::close_minute`] returns.
//! Memory is bounded by [`MAX_TRACKED_SOURCES`]: sources beyond it (a spoofed sweep) share one
//! bucket, and the hourly budget holds whatever their number.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::audit::AuditKind;

/// Sources counted one by one within a minute; later ones share a bucket.
pub const MAX_TRACKED_SOURCES: usize = 16_384;
/// Sources named in a summary (the most suppressed first); the rest are summed.
pub const SUMMARY_SOURCES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    pub per_source_per_minute: u32,
    pub bytes_per_hour: u64,
}

/// Suppressed events of one source in a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedSource {
    pub source: String,
    pub count: u64,
}

/// Where an event's source stands in the current minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bucket {
    Source(IpAddr),
    /// Every source past [`MAX_TRACKED_SOURCES`].
    Untracked,
}

#[derive(Debug)]
pub struct FloodGate {
    limits: FloodLimits,
    /// The minute (secs since the epoch / 60) being counted.
    minute: u64,
    stored: HashMap<Bucket, u32>,
    suppressed: HashMap<Bucket, u64>,
    /// Suppressed this minute because the hourly budget was spent.
    over_budget: u64,
    hour: u64,
    hour_bytes: u64,
}

impl FloodGate {
    pub fn new(limits: FloodLimits) -> FloodGate {
        FloodGate {
            limits,
            minute: 0,
            stored: HashMap::new(),
            suppressed: HashMap::new(),
            over_budget: 0,
            hour: 0,
            hour_bytes: 0,
        }
    }

    /// Whether an event of `bytes` from `source` at `now_secs` is stored one by one. Call
    /// [`FloodGate::close_minute`] first: a new minute starts with fresh counts.
    pub fn admit(&mut self, source: IpAddr, bytes: u64, now_secs: u64) -> bool {
        let hour = now_secs / 3600;
        if hour != self.hour {
            self.hour = hour;
            self.hour_bytes = 0;
        }
        let bucket = if self.stored.len() < MAX_TRACKED_SOURCES
            || self.stored.contains_key(&Bucket::Source(source))
        {
            Bucket::Source(source)
        } else {
            Bucket::Untracked
        };
        let count = self.stored.entry(bucket).or_insert(0);
        if *count >= self.limits.per_source_per_minute {
            *self.suppressed.entry(bucket).or_insert(0) += 1;
            return false;
        }
        if self.hour_bytes.saturating_add(bytes) > self.limits.bytes_per_hour {
            self.over_budget += 1;
            return false;
        }
        *count += 1;
        self.hour_bytes += bytes;
        true
    }

    /// Starts the minute of `now_secs` if it is a new one; returns the summary of the minute
    /// that closed, when anything was suppressed in it.
    pub fn close_minute(&mut self, now_secs: u64) -> Option<AuditKind> {
        let minute = now_secs / 60;
        if minute == self.minute {
            return None;
        }
        let closed = std::mem::replace(&mut self.minute, minute);
        self.stored.clear();
        let over_budget = std::mem::take(&mut self.over_budget);
        let suppressed = std::mem::take(&mut self.suppressed);
        let by_source: u64 = suppressed.values().sum();
        if by_source + over_budget == 0 {
            return None;
        }
        let mut named: Vec<(Bucket, u64)> = suppressed.into_iter().collect();
        // Most suppressed first; ties in address order, so a summary is reproducible.
        named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| label(a.0).cmp(&label(b.0))));
        let other: u64 = named.iter().skip(SUMMARY_SOURCES).map(|(_, n)| n).sum();
        named.truncate(SUMMARY_SOURCES);
        Some(AuditKind::AuditSuppressed {
            minute_secs: closed * 60,
            total: by_source + over_budget,
            sources: named
                .into_iter()
                .map(|(b, count)| SuppressedSource {
                    source: label(b),
                    count,
                })
                .collect(),
            other_sources: other,
            over_budget,
        })
    }
}

fn label(b: Bucket) -> String {
    match b {
        Bucket::Source(ip) => ip.to_string(),
        Bucket::Untracked => "other sources (past the tracked limit)".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, last])
    }

    fn summary(k: AuditKind) -> (u64, u64, Vec<(String, u64)>, u64, u64) {
        match k {
            AuditKind::AuditSuppressed {
                minute_secs,
                total,
                sources,
                other_sources,
                over_budget,
            } => (
                minute_secs,
                total,
                sources.into_iter().map(|s| (s.source, s.count)).collect(),
                other_sources,
                over_budget,
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_source_gets_its_cap_per_minute_and_the_rest_is_counted_once() {
        let mut g = FloodGate::new(FloodLimits {
            per_source_per_minute: 3,
            bytes_per_hour: u64::MAX,
        });
        let t = 6_000; // minute 100
        assert_eq!(g.close_minute(t), None);
        let a: Vec<bool> = (0..10).map(|_| g.admit(ip(1), 100, t)).collect();
        assert_eq!(a.iter().filter(|x| **x).count(), 3);
        // Another source is not held back by the first.
        assert!(g.admit(ip(2), 100, t + 5));
        assert_eq!(g.close_minute(t + 59), None, "same minute");
        let s = summary(g.close_minute(t + 60).unwrap());
        assert_eq!(s, (t, 7, vec![("198.51.100.1".into(), 7)], 0, 0));
        // A fresh minute: the source is admitted again, and a quiet minute has no summary.
        assert!(g.admit(ip(1), 100, t + 61));
        assert_eq!(g.close_minute(t + 120), None);
    }

    #[test]
    fn the_hourly_budget_holds_across_sources_and_many_sources_stay_bounded() {
        let mut g = FloodGate::new(FloodLimits {
            per_source_per_minute: 1_000,
            bytes_per_hour: 1_000,
        });
        let t = 7_200;
        g.close_minute(t);
        let stored = (0..=255u8).filter(|i| g.admit(ip(*i), 100, t)).count();
        assert_eq!(stored, 10);
        let s = summary(g.close_minute(t + 60).unwrap());
        assert_eq!((s.1, s.4), (246, 246));
        // A new hour: the budget is back.
        g.close_minute(t + 3600);
        assert!(g.admit(ip(1), 100, t + 3600));

        let mut g = FloodGate::new(FloodLimits {
            per_source_per_minute: 1,
            bytes_per_hour: u64::MAX,
        });
        g.close_minute(0);
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 100) {
            let src = IpAddr::from((0x2001_0db8u128 << 96 | u128::from(i)).to_be_bytes());
            g.admit(src, 1, 1);
            g.admit(src, 1, 1);
        }
        assert!(g.stored.len() <= MAX_TRACKED_SOURCES + 1);
        let s = summary(g.close_minute(60).unwrap());
        assert_eq!(s.2.len(), SUMMARY_SOURCES);
        // Every suppressed event is counted: per tracked source one, and the shared bucket
        // admitted one of its 200.
        assert_eq!(s.1, MAX_TRACKED_SOURCES as u64 + 199);
    }
}
