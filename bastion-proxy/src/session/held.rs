//! The actor's side of command review: an exec request (or a shell line's Enter) that a review
//! rule matched is held as a ticket ([`crate::review`]) until it is decided.

use super::*;

/// An exec request held for review, decided.
pub(super) struct Released {
    pub(super) channel: ChannelId,
    pub(super) request: Request,
    pub(super) outcome: Result<(), String>,
}

impl SessionActor {
    /// Holds an exec request a review rule matched: files its ticket, tells the user, and waits
    /// (in a task of its own) for the decision, which comes back as [`Released`].
    pub(super) async fn hold_exec(
        &mut self,
        channel: ChannelId,
        request: Request,
        rule: policy::commands::CommandRule,
    ) {
        let Request::Exec { command } = &request else {
            return;
        };
        let command = String::from_utf8_lossy(command).into_owned();
        match self.file_review(channel, &command, &rule).await {
            Ok(id) => {
                self.held_tickets.push(id);
                let (ctx, tx) = (self.ctx.clone(), self.released_tx.clone());
                tokio::spawn(async move {
                    let outcome = review::decision(ctx, id).await;
                    let _ = tx
                        .send(Released {
                            channel,
                            request,
                            outcome,
                        })
                        .await;
                });
            }
            Err(why) => {
                self.released(Released {
                    channel,
                    request,
                    outcome: Err(why),
                })
                .await
            }
        }
    }

    /// Files the review ticket for `command` on `channel` and tells the user it waits.
    pub(super) async fn file_review(
        &self,
        channel: ChannelId,
        command: &str,
        rule: &policy::commands::CommandRule,
    ) -> Result<u64, String> {
        let Phase::Routed { identity, route } = &self.phase else {
            return Err("not routed".into());
        };
        let held = review::Held {
            session: route.session,
            user: &identity.user,
            target: &route.target,
            login: &route.login,
            command,
            rule,
        };
        let (id, text) = review::hold(&self.ctx, held).await?;
        let text = format!("bastion: {text}");
        let _ = route
            .recorder
            .record(Kind::Notice, u32::from(channel), text.clone().into())
            .await;
        if let Some(h) = &self.client_handle {
            let _ = h
                .extended_data(channel, 1, format!("{text}\r\n").into_bytes())
                .await;
        }
        Ok(id)
    }

    /// A held exec request was decided: it goes to the target now, or is refused with why.
    pub(super) async fn released(&mut self, released: Released) {
        let Released {
            channel,
            request,
            outcome,
        } = released;
        match outcome {
            Ok(()) => match self.channels.get(&channel) {
                Some(entry) => {
                    let (reply, _) = tokio::sync::oneshot::channel();
                    let _ = entry
                        .ctl
                        .send(channel::Ctl::Request { request, reply })
                        .await;
                }
                None => tracing::debug!("held command approved after its channel closed"),
            },
            Err(why) => {
                self.refuse(u32::from(channel), request_name(&request), why.clone())
                    .await;
                self.end_exec(channel, &why).await;
                // Its pump, holding input, stops with its control queue.
                self.channels.remove(&channel);
            }
        }
    }

    /// A channel's shell holds a line a review rule matched: audited, filed, the user told; the
    /// pump gets the decision when it comes.
    pub(super) async fn hold_line(&mut self, hold: shell::Hold) {
        let shell::Hold { hit, decided } = hold;
        if !matches!(self.phase, Phase::Routed { .. }) {
            let _ = decided.send(Err("not routed".into()));
            return;
        }
        // Audited like every rule hit (a review rule never ends the session).
        let _ = self.rule_hit(hit.clone()).await;
        // russh makes channel ids only from the wire: find the open one this number names.
        let Some(channel) = self
            .channels
            .keys()
            .copied()
            .find(|c| u32::from(*c) == hit.channel)
        else {
            let _ = decided.send(Err("the channel closed".into()));
            return;
        };
        match self.file_review(channel, &hit.line, &hit.rule).await {
            Ok(id) => {
                self.held_tickets.push(id);
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let _ = decided.send(review::decision(ctx, id).await);
                });
            }
            Err(why) => drop(decided.send(Err(why))),
        }
    }
}
