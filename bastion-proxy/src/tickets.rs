//! Access requests, driven from both ends: users ask and approvers decide over SSH (the menu),
//! administrators decide with bastionctl (the control API). The rules are
//! [`bastion_core::ticket`]'s; this module checks a request against the policy, stores tickets
//! with their audit events, and turns the last approval into a grant that ends by itself.
//! Everything here blocks on the store: call it from the blocking pool.

use bastion_core::{
    audit::{Actor, AuditKind},
    policy::{self, Entity, GrantObject, Right, Rights},
    ticket::{self, Asked, Decider, State, Ticket},
};

use super::ProxyContext;

/// What a user asks for.
#[derive(Debug, Clone)]
pub struct NewAccess {
    pub requester: String,
    pub object: GrantObject,
    pub login: String,
    pub rights: Rights,
    pub duration_secs: u64,
    pub reason: String,
}

/// Rights a request may ask for: raw TCP is granted to addresses, not people.
const REQUESTABLE: [Right; 5] = [
    Right::Shell,
    Right::Exec,
    Right::Sftp,
    Right::Forward,
    Right::Agent,
];

/// Files a request (pending until approvers decide, or `policy.request_ttl_secs`).
pub fn request_access(ctx: &ProxyContext, new: NewAccess, now: u64) -> Result<Ticket, String> {
    let policy = ctx.policy();
    let name = new.object.to_string();
    match &new.object {
        GrantObject::Target(t) if !policy.targets.contains_key(t) => {
            return Err(format!("unknown target `{t}`"));
        }
        GrantObject::Subnet(c)
            if !policy
                .subnets
                .iter()
                .chain(&ctx.config_subnets)
                .any(|p| p.covers(c)) =>
        {
            return Err(format!("{c} is not within a protected subnet"));
        }
        _ => {}
    }
    // A subnet's approvers never decide for a registered target inside it that has its own.
    if let GrantObject::Subnet(c) = &new.object
        && let Some(t) = policy
            .targets
            .values()
            .find(|t| c.contains(t.addr) && policy.approvers.contains_key(&t.name))
    {
        return Err(format!(
            "{} ({}) is in {c} and has approvers of its own: request {} itself",
            t.name, t.addr, t.name
        ));
    }
    let approvers = policy.approvers_for(&new.object).ok_or_else(|| {
        format!(
            "nobody approves requests for {name}: an administrator sets approvers with `bastionctl target set {name} --approvers GROUP`"
        )
    })?;
    if !super::username::valid_login(&new.login) {
        return Err(format!("login `{}` is not a login name", new.login));
    }
    if let Some(r) = new.rights.iter().find(|r| !REQUESTABLE.contains(r)) {
        return Err(format!("{} cannot be requested", r.as_str()));
    }
    if new.rights.iter().next().is_none() {
        return Err("no right asked for".into());
    }
    let max = approvers
        .max_secs
        .unwrap_or(ctx.policy_config.max_request_secs)
        .min(ctx.policy_config.max_request_secs);
    if new.duration_secs == 0 || new.duration_secs > max {
        return Err(format!(
            "--for {} is longer than requests for {name} may ask ({})",
            ticket::duration_text(new.duration_secs),
            ticket::duration_text(max)
        ));
    }
    let reason = new.reason.trim();
    if reason.is_empty() || reason.len() > 512 || reason.chars().any(char::is_control) {
        return Err("a reason is required (one line, up to 512 characters)".into());
    }
    let (group, needed) = (approvers.group.clone(), approvers.approvals);
    let asked = Asked::Access {
        object: new.object,
        login: new.login,
        rights: new.rights,
        duration_secs: new.duration_secs,
    };
    file(
        ctx,
        new.requester,
        asked,
        reason.to_owned(),
        group,
        needed,
        now,
    )
}

/// Stores a new pending ticket with its `AccessRequested` event.
pub fn file(
    ctx: &ProxyContext,
    requester: String,
    asked: Asked,
    reason: String,
    approvers: String,
    approvals_needed: u8,
    now: u64,
) -> Result<Ticket, String> {
    let ttl = match asked {
        Asked::Access { .. } => ctx.policy_config.request_ttl_secs,
        Asked::Command { .. } => ctx.policy_config.review_timeout_secs,
    };
    ctx.store
        .create_ticket(
            |id| Ticket {
                id,
                requester,
                asked,
                reason,
                created: now,
                decide_by: now + ttl,
                approvers,
                approvals_needed,
                approvals: vec![],
                state: State::Pending,
                told: false,
            },
            |t| AuditKind::AccessRequested {
                request: t.id,
                requester: t.requester.clone(),
                what: t.summary(),
                reason: t.reason.clone(),
                approvers: t.approvers.clone(),
            },
            Actor::Daemon,
        )
        .map(|(t, _)| t)
        .map_err(|e| format!("internal: {e}"))
}

/// What a decider does with a ticket.
pub enum Decision {
    Approve,
    Deny,
}

/// Approves or denies ticket `id` as `who`. The last approval an access ticket needs creates
/// its grant (named after it, ending by itself), audited with both people named.
pub fn decide(
    ctx: &ProxyContext,
    id: u64,
    who: &Decider<'_>,
    decision: Decision,
    reason: Option<String>,
    actor: Actor,
    now: u64,
) -> Result<Ticket, String> {
    if let Some(r) = &reason
        && (r.len() > 512 || r.chars().any(char::is_control))
    {
        return Err("a reason is one line of up to 512 characters".into());
    }
    expire(ctx, id, now)?;
    let policy = ctx.policy();
    let mut granted = None;
    let updated = ctx
        .store
        .update_ticket(id, actor.clone(), |t| {
            let event = match decision {
                Decision::Approve => {
                    if t.approve(&policy, who, reason.clone(), now)?
                        && let Some(grant) = t.grant(now, &policy)
                    {
                        // Checked before the approval is stored: an approval never stands
                        // without its grant.
                        let entity = policy::check_add(&policy, Entity::Grant(grant))
                            .map_err(|e| ticket::TicketError::Grant(t.id, e.to_string()))?;
                        granted = Some(entity);
                    }
                    AuditKind::RequestApproved {
                        request: t.id,
                        requester: t.requester.clone(),
                        approver: who.name(),
                        approvals: t.approvals.len() as u8,
                        needed: t.approvals_needed,
                        grant: match &t.state {
                            State::Approved { grant, .. } => grant.clone(),
                            _ => None,
                        },
                        reason: reason.clone(),
                    }
                }
                Decision::Deny => {
                    t.deny(&policy, who, reason.clone(), now)?;
                    AuditKind::RequestDenied {
                        request: t.id,
                        requester: t.requester.clone(),
                        by: who.name(),
                        reason: reason.clone(),
                    }
                }
            };
            Ok::<_, ticket::TicketError>(Some(event))
        })
        .map_err(|e| format!("internal: {e}"))?
        .ok_or_else(|| format!("no request #{id}"))?
        .map_err(|e| e.to_string())?;
    if let Some(entity) = granted {
        add_grant(ctx, entity, actor)?;
    }
    ctx.tickets_changed.notify_waiters();
    Ok(updated)
}

/// Stores and puts in force a grant an approval created (checked again under the change lock).
fn add_grant(ctx: &ProxyContext, entity: Entity, actor: Actor) -> Result<(), String> {
    let changing = ctx.policy.begin_change();
    let current = ctx.policy();
    let entity = policy::check_add(&current, entity).map_err(|e| e.to_string())?;
    ctx.store
        .put_entity(&entity, actor)
        .map_err(|e| format!("internal: {e}"))?;
    let mut next = (*current).clone();
    next.insert(entity);
    ctx.put_in_force(&changing, next);
    Ok(())
}

/// Marks ticket `id` expired if it is undecided past its deadline (audited).
pub fn expire(ctx: &ProxyContext, id: u64, now: u64) -> Result<(), String> {
    ctx.store
        .update_ticket(id, Actor::Daemon, |t| {
            Ok::<_, ()>(t.expire_if_due(now).then(|| AuditKind::RequestExpired {
                request: t.id,
                requester: t.requester.clone(),
            }))
        })
        .map(|_| ())
        .map_err(|e| format!("internal: {e}"))
}

/// Withdraws ticket `id` if it is still undecided (its session ended): expired now (audited).
pub fn withdraw(ctx: &ProxyContext, id: u64, now: u64) -> Result<(), String> {
    ctx.store
        .update_ticket(id, Actor::Daemon, |t| {
            if t.state == State::Pending {
                t.decide_by = t.decide_by.min(now);
            }
            Ok::<_, ()>(t.expire_if_due(now).then(|| AuditKind::RequestExpired {
                request: t.id,
                requester: t.requester.clone(),
            }))
        })
        .map(|_| ())
        .map_err(|e| format!("internal: {e}"))
}

/// Marks undecided tickets past their deadline expired (audited).
pub fn expire_due(ctx: &ProxyContext, now: u64) -> Result<(), String> {
    let tickets = ctx.store.tickets().map_err(|e| format!("internal: {e}"))?;
    for t in tickets
        .iter()
        .filter(|t| t.state == State::Pending && now >= t.decide_by)
    {
        expire(ctx, t.id, now)?;
    }
    Ok(())
}

/// Every ticket (expired ones marked so), oldest first.
pub fn all(ctx: &ProxyContext, now: u64) -> Result<Vec<Ticket>, String> {
    expire_due(ctx, now)?;
    ctx.store.tickets().map_err(|e| format!("internal: {e}"))
}

/// What `user` sees: their own tickets, and the pending ones they may decide.
pub fn for_user(ctx: &ProxyContext, user: &str, now: u64) -> Result<Vec<Ticket>, String> {
    let policy = ctx.policy();
    let approves = |t: &Ticket| t.state == State::Pending && policy.is_member(&t.approvers, user);
    Ok(all(ctx, now)?
        .into_iter()
        .filter(|t| t.requester == user || approves(t))
        .collect())
}

/// Decisions on `user`'s tickets they have not been told of yet, as lines; told from now on.
pub fn news(ctx: &ProxyContext, user: &str, now: u64) -> Vec<String> {
    // Called at every shell's start: one read of the tickets, and only this user's overdue
    // ones are marked expired (not everyone's).
    let Ok(mut tickets) = ctx.store.tickets() else {
        return Vec::new();
    };
    for t in tickets.iter_mut().filter(|t| t.requester == user) {
        if t.state == State::Pending && now >= t.decide_by && expire(ctx, t.id, now).is_ok() {
            t.expire_if_due(now);
        }
    }
    let mut lines = Vec::new();
    for t in tickets
        .iter()
        .filter(|t| t.requester == user && !t.told && t.state != State::Pending)
    {
        let line = match &t.state {
            State::Approved { grant, .. } => format!(
                "your request #{} was approved by {}{}",
                t.id,
                t.approvals
                    .iter()
                    .map(|a| a.by.as_str())
                    .collect::<Vec<_>>()
                    .join(" and "),
                grant
                    .as_ref()
                    .and_then(|g| ctx.policy().grants.get(g).and_then(|g| g.not_after))
                    .map(|end| format!(": access until {} UTC", bastion_core::clock::utc_text(end)))
                    .unwrap_or_default()
            ),
            State::Denied { by, reason, .. } => format!(
                "your request #{} was denied by {by}{}",
                t.id,
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            State::Expired { .. } => format!("your request #{} expired undecided", t.id),
            State::Pending => continue,
        };
        if ctx.store.ticket_told(t.id).is_ok() {
            lines.push(line);
        }
    }
    lines
}
