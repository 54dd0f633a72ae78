//! Commands held for review (a grant's `review` command rule): an exec request, or a shell
//! line's Enter, waits as a ticket until an approver approves it (`bastionctl request approve`,
//! or an approver's `approve` over SSH) or it is refused: denied, or not approved within
//! `policy.review_timeout_secs`. The user is told it waits and why.

use std::time::Duration;

use bastion_core::{
    policy::{GrantObject, ResolvedTarget, commands::CommandRule},
    ticket::{Asked, State},
};

use super::{ProxyContext, tickets};

/// How often a held command looks at its ticket besides being woken by a decision.
const POLL: Duration = Duration::from_millis(500);

/// What is held, and for whom.
pub struct Held<'a> {
    pub session: u64,
    pub user: &'a str,
    pub target: &'a ResolvedTarget,
    pub login: &'a str,
    pub command: &'a str,
    pub rule: &'a CommandRule,
}

/// Files the ticket for a held command: its number and the line telling the user.
pub async fn hold(
    ctx: &std::sync::Arc<ProxyContext>,
    held: Held<'_>,
) -> Result<(u64, String), String> {
    let policy = ctx.policy();
    // The target's (or its subnet's) approvers decide; without any, an administrator does.
    let object = match &held.target.name {
        Some(name) => GrantObject::Target(name.clone()),
        None => GrantObject::Subnet(bastion_core::cidr::Cidr::source(held.target.addr, 32, 128)),
    };
    let (group, needed) = policy
        .approvers_for(&object)
        .map(|a| (a.group.clone(), a.approvals))
        .unwrap_or_default();
    let asked = Asked::Command {
        session: held.session,
        target: held.target.to_string(),
        login: held.login.to_owned(),
        command: held.command.chars().take(1024).collect(),
        rule: held.rule.pattern.clone(),
    };
    let reason = format!("command rule `{}`", held.rule.pattern);
    let (ctx2, user) = (ctx.clone(), held.user.to_owned());
    let now = bastion_core::clock::now_secs();
    let ticket = tokio::task::spawn_blocking(move || {
        tickets::file(&ctx2, user, asked, reason, group, needed.max(1), now)
    })
    .await
    .map_err(|e| format!("internal: {e}"))??;
    let who = if ticket.approvers.is_empty() {
        "an administrator (bastionctl request approve)".to_owned()
    } else {
        format!(
            "{} of {} or an administrator",
            ticket.approvals_needed, ticket.approvers
        )
    };
    let text = format!(
        "`{}` waits for approval by {who}: request #{} (rule `{}`), for up to {}",
        held.command,
        ticket.id,
        held.rule.pattern,
        bastion_core::ticket::duration_text(ctx.policy_config.review_timeout_secs)
    );
    Ok((ticket.id, text))
}

/// Waits for the decision on ticket `id`: Ok once approved, else why not (denied, expired).
/// Bounded by the ticket's own deadline.
pub async fn decision(ctx: std::sync::Arc<ProxyContext>, id: u64) -> Result<(), String> {
    loop {
        let notified = ctx.tickets_changed.notified();
        let c = ctx.clone();
        let now = bastion_core::clock::now_secs();
        // Marks it expired when its deadline has passed.
        let ticket = tokio::task::spawn_blocking(move || {
            tickets::expire(&c, id, now)?;
            c.store.ticket(id).map_err(|e| format!("internal: {e}"))
        })
        .await
        .map_err(|e| format!("internal: {e}"))??
        .ok_or_else(|| format!("internal: request #{id} vanished"))?;
        match ticket.state {
            State::Approved { .. } => return Ok(()),
            State::Denied { by, reason, .. } => {
                return Err(format!(
                    "request #{id} denied by {by}{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
            }
            State::Expired { .. } => {
                return Err(format!("request #{id} was not approved in time"));
            }
            State::Pending => {
                let _ = tokio::time::timeout(POLL, notified).await;
            }
        }
    }
}
