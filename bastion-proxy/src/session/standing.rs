//! The actor's side of judging access while it is used ([`crate::access`]): warn before a known
//! end, end the session once its access no longer holds.

use super::*;

impl SessionActor {
    /// Judges the routed session's access again (a policy change or a known end came): warns
    /// on every channel when its end is near, ends the session once it no longer holds.
    pub(super) async fn judge_access(&mut self) -> ControlFlow<()> {
        let Phase::Routed { identity, route } = &mut self.phase else {
            return ControlFlow::Continue(());
        };
        let (ctx, now) = (&self.ctx, now_secs());
        let who = (identity.user.as_str(), &route.target, route.login.as_str());
        let gave = identity.second_factor;
        let verdict = route.access.judge(&ctx.policy(), now, |p| {
            policy::standing::session_standing(p, who, &route.needs, now, |g| {
                second_factor::given_for(ctx, p, &g.id, gave)
            })
        });
        let session = route.session;
        match verdict {
            access::Verdict::Holds => ControlFlow::Continue(()),
            access::Verdict::Warn { at, grant } => {
                let text = access::warning_text(at, now, &grant);
                let _ = route
                    .recorder
                    .record(Kind::Notice, 0, format!("bastion: {text}").into())
                    .await;
                self.tell_every_channel(&format!("bastion: {text}")).await;
                self.audit(AuditKind::AccessEnding {
                    session,
                    ends_at: at,
                    grant,
                })
                .await;
                ControlFlow::Continue(())
            }
            access::Verdict::End(reason) => {
                self.audit(AuditKind::AccessEnded {
                    session,
                    reason: reason.clone(),
                })
                .await;
                self.kill(&format!("access ended: {reason}")).await;
                ControlFlow::Break(())
            }
        }
    }
}

/// Resolves when a routed session's access must be judged again; never otherwise.
pub(super) async fn access_due(watch: Option<&mut access::Watch>) {
    match watch {
        Some(w) => w.due().await,
        None => std::future::pending().await,
    }
}
