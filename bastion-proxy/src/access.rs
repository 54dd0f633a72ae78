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
    /// Grants removed with `--keep-sessions` while this was live, and whether the policy has
    /// been seen without them (the removal in force).
    kept: Vec<(Arc<Grant>, bool)>,
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
            Ok(Change::Keep(g)) => self.kept.push((g, false)),
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
        // A kept grant whose name is in force again after its removal is that grant now: a
        // later removal without --keep-sessions ends what used it. (Until its removal is in
        // force, the announced grant is still in the policy, and stays kept.)
        self.kept.retain_mut(|(g, gone)| {
            let present = policy.grants.contains_key(&g.id);
            *gone |= !present;
            !(present && *gone)
        });
        let holds = if self.kept.is_empty() {
            standing(policy)
        } else {
            let mut with_kept = (**policy).clone();
            for (g, _) in &self.kept {
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
        bastion_core::clock::utc_text(at),
        left / 60,
        left % 60
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
    async fn a_kept_grant_lasts_until_its_name_is_in_force_again() {
        let tx = channel();
        let mut w = Watch::new(&tx, Duration::from_secs(300));
        let g: Grant = serde_json::from_value(serde_json::json!({
            "id": "kept", "subject": {"user": "alice"}, "object": {"target": "web1"},
            "logins": ["root"], "rights": ["shell"]
        }))
        .unwrap();
        let with = Arc::new({
            let mut p = Policy::default();
            p.grants.insert("kept".into(), g.clone());
            p
        });
        let without = Arc::new(Policy::default());
        let uses_kept = |p: &Policy| match p.grants.contains_key("kept") {
            true => Ok(Holds {
                until: None,
                grant: "kept".into(),
            }),
            false => Err("gone".into()),
        };
        // Announced before the removal is in force: judged then, it stays kept.
        tx.send(Change::Keep(Arc::new(g))).unwrap();
        assert_eq!(w.judge(&with, 0, uses_kept), Verdict::Holds);
        tx.send(Change::Changed).unwrap();
        assert_eq!(w.judge(&without, 1, uses_kept), Verdict::Holds, "kept");
        // Added again, then removed without --keep-sessions: that removal ends it.
        assert_eq!(w.judge(&with, 2, uses_kept), Verdict::Holds);
        assert_eq!(w.judge(&without, 3, uses_kept), Verdict::End("gone".into()));
    }
}
