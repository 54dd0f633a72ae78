//! Access judged again while it is used. A session or relay flow is allowed when it starts;
//! after that, every policy change and every known end (a grant's expiry, its window closing)
//! judges it again: within `policy.end_warning_secs` of a known end the session is warned on
//! every channel, and once its access no longer holds it is ended with the reason.
//!
//! Policy changes reach every live session and flow as a broadcast [`Change`]. A grant removed
//! with `--keep-sessions` is announced ([`Change::Keep`]) *before* the policy without it is put
//! in force, so a session judging at that moment already keeps it.

use std::{sync::Arc, time::Duration};

use bastion_core::policy::{Grant, Policy, standing::Holds};
use tokio::sync::broadcast;

/// Judged again at least this often, so a changed wall clock is followed too.
const RECHECK: Duration = Duration::from_secs(60);

/// What live sessions hear about the policy.
#[derive(Debug, Clone)]
pub enum Change {
    /// A grant is about to be removed, but the sessions and flows live now keep it.
    Keep(Arc<Grant>),
    /// The policy in force changed.
    Changed,
}

/// Changes for every live session; lagging behind only means judging again.
pub fn channel() -> broadcast::Sender<Change> {
    broadcast::channel(256).0
}

/// What to do after judging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    /// Tell the user: access ends at `at` (Unix seconds) under `grant`.
    Warn {
        at: u64,
        grant: String,
    },
    /// Access no longer holds: end it, for this reason.
    End(String),
}

/// One live session's or flow's watch over its access.
pub struct Watch {
    changes: broadcast::Receiver<Change>,
    /// Grants removed with `--keep-sessions` while this was live.
    kept: Vec<Arc<Grant>>,
    /// The end already warned about.
    warned: Option<u64>,
    next: tokio::time::Instant,
    warning: Duration,
}

impl Watch {
    pub fn new(changes: &broadcast::Sender<Change>, warning: Duration) -> Watch {
        Watch {
            changes: changes.subscribe(),
            kept: Vec::new(),
            warned: None,
            // Judged once at the start: a grant may be about to end.
            next: tokio::time::Instant::now(),
            warning,
        }
    }

    /// Resolves when access must be judged again: a policy change or the next known end.
    pub async fn due(&mut self) {
        tokio::select! {
            change = self.changes.recv() => self.heard(change),
            () = tokio::time::sleep_until(self.next) => {}
        }
    }

    fn heard(&mut self, change: Result<Change, broadcast::error::RecvError>) {
        match change {
            Ok(Change::Keep(g)) => self.kept.push(g),
            Ok(Change::Changed) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            // The daemon is stopping; nothing more will change.
            Err(broadcast::error::RecvError::Closed) => self.next = far_future(),
        }
    }

    /// Judges access at `now` (Unix seconds) with `standing` over `policy` (plus the grants
    /// kept for this session), and schedules the next judgement.
    pub fn judge(
        &mut self,
        policy: &Arc<Policy>,
        now: u64,
        standing: impl FnOnce(&Policy) -> Result<Holds, String>,
    ) -> Verdict {
        while let Ok(change) = self.changes.try_recv() {
            self.heard(Ok(change));
        }
        let holds = if self.kept.is_empty() {
            standing(policy)
        } else {
            let mut with_kept = (**policy).clone();
            for g in &self.kept {
                with_kept
                    .grants
                    .entry(g.id.clone())
                    .or_insert_with(|| (**g).clone());
            }
            standing(&with_kept)
        };
        let holds = match holds {
            Ok(h) => h,
            Err(reason) => return Verdict::End(reason),
        };
        let Some(at) = holds.until else {
            self.next = tokio::time::Instant::now() + RECHECK;
            return Verdict::Holds;
        };
        let warn_from = at.saturating_sub(self.warning.as_secs());
        let verdict = if now >= warn_from && self.warned != Some(at) {
            self.warned = Some(at);
            Verdict::Warn {
                at,
                grant: holds.grant,
            }
        } else {
            Verdict::Holds
        };
        let wake = if self.warned == Some(at) {
            at
        } else {
            warn_from
        };
        let wait = Duration::from_secs(wake.saturating_sub(now)).min(RECHECK);
        self.next = tokio::time::Instant::now() + wait;
        verdict
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The warning line: when access ends and why (`at` is Unix seconds).
pub fn warning_text(at: u64, now: u64, grant: &str) -> String {
    let left = at.saturating_sub(now);
    format!(
        "access ends at {} UTC (in {}m{:02}s): grant {grant} ends then; save your work",
        utc(at),
        left / 60,
        left % 60
    )
}

/// `YYYY-MM-DD HH:MM:SS` for Unix seconds (proleptic Gregorian, UTC).
pub fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(until: Option<u64>) -> impl FnOnce(&Policy) -> Result<Holds, String> {
        move |_| {
            Ok(Holds {
                until,
                grant: "g".into(),
            })
        }
    }

    #[tokio::test]
    async fn warns_once_per_end_then_ends() {
        let tx = channel();
        let mut w = Watch::new(&tx, Duration::from_secs(300));
        let p = Arc::new(Policy::default());
        assert_eq!(w.judge(&p, 1000, holds(Some(2000))), Verdict::Holds);
        let warn = Verdict::Warn {
            at: 2000,
            grant: "g".into(),
        };
        assert_eq!(w.judge(&p, 1700, holds(Some(2000))), warn);
        assert_eq!(w.judge(&p, 1800, holds(Some(2000))), Verdict::Holds, "once");
        // Extended: a new end is warned about again when it comes near.
        assert_eq!(w.judge(&p, 1900, holds(Some(9000))), Verdict::Holds);
        assert_eq!(w.judge(&p, 1900, holds(None)), Verdict::Holds);
        assert_eq!(
            w.judge(&p, 2000, |_| Err("expired".into())),
            Verdict::End("expired".into())
        );
    }

    #[tokio::test]
    async fn a_kept_grant_is_judged_as_if_still_there() {
        let tx = channel();
        let mut w = Watch::new(&tx, Duration::from_secs(300));
        let g: Grant = serde_json::from_value(serde_json::json!({
            "id": "kept", "subject": {"user": "alice"}, "object": {"target": "web1"},
            "logins": ["root"], "rights": ["shell"]
        }))
        .unwrap();
        tx.send(Change::Keep(Arc::new(g))).unwrap();
        tx.send(Change::Changed).unwrap();
        let p = Arc::new(Policy::default());
        let verdict = w.judge(&p, 0, |p| match p.grants.contains_key("kept") {
            true => Ok(Holds {
                until: None,
                grant: "kept".into(),
            }),
            false => Err("gone".into()),
        });
        assert_eq!(verdict, Verdict::Holds);
    }

    #[test]
    fn utc_text() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_737_600 + 3661), "2026-11-27 01:01:01");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
    }
}
