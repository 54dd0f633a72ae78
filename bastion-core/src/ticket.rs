//! Access requests (tickets): a user asks for access to a target or subnet for a while, with a
//! reason; approvers (a group set per target or subnet) decide. Approval by enough distinct
//! approvers creates a grant that ends by itself. A held command (a `review` command rule)
//! is a ticket too, decided the same way. The rules are here and pure; the store keeps
//! tickets and the proxy and control API drive them.

use serde::{Deserialize, Serialize};

use crate::policy::{
    Grant, GrantObject, GrantSubject, Policy, Right, Rights,
    commands::{CommandRule, RuleAction},
};

/// What a ticket asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Asked {
    /// Access: a grant for `duration_secs` from approval.
    Access {
        object: GrantObject,
        login: String,
        rights: Rights,
        duration_secs: u64,
    },
    /// One command a live session holds until it is approved (a `review` rule).
    Command {
        session: u64,
        target: String,
        login: String,
        command: String,
        rule: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved {
        at: u64,
        /// The grant approval created (access tickets).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<String>,
    },
    Denied {
        by: String,
        at: u64,
        reason: Option<String>,
    },
    Expired {
        at: u64,
    },
}

impl State {
    pub fn label(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved { .. } => "approved",
            State::Denied { .. } => "denied",
            State::Expired { .. } => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: u64,
    pub requester: String,
    pub asked: Asked,
    pub reason: String,
    /// Unix seconds.
    pub created: u64,
    /// Undecided by then, it expires.
    pub decide_by: u64,
    /// The group whose members decide, and how many distinct ones must approve.
    pub approvers: String,
    pub approvals_needed: u8,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    pub state: State,
    /// The requester has been told of the decision (at their next shell or in the menu).
    #[serde(default)]
    pub told: bool,
}

/// Why a decision is refused. `Display` is what the person deciding is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("request {0} is {1}, not pending")]
    Decided(u64, &'static str),
    #[error("request {0} expired undecided")]
    Expired(u64),
    #[error("{0} asked for request {1}: a requester never approves their own request")]
    OwnRequest(String, u64),
    #[error("{0} already approved request {1}: the next approval must come from someone else")]
    AlreadyApproved(String, u64),
    #[error("{0} is not among the approvers of request {1} (group {2})")]
    NotApprover(String, u64, String),
    #[error("request {0} cannot be granted: {1}")]
    Grant(u64, String),
}

/// Who decides: a bastion user (over SSH, a member of the ticket's approver group) or an
/// administrator on the appliance (bastionctl, always an approver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider<'a> {
    User(&'a str),
    Admin(&'a str),
}

impl Decider<'_> {
    pub fn name(&self) -> String {
        match self {
            Decider::User(u) => (*u).to_owned(),
            Decider::Admin(a) => format!("admin:{a}"),
        }
    }
}

impl Ticket {
    /// Marks a pending ticket past its deadline expired; true if it changed.
    pub fn expire_if_due(&mut self, now: u64) -> bool {
        if self.state == State::Pending && now >= self.decide_by {
            self.state = State::Expired { at: now };
            return true;
        }
        false
    }

    fn check_decider(&self, policy: &Policy, who: &Decider<'_>) -> Result<(), TicketError> {
        if let State::Expired { .. } = self.state {
            return Err(TicketError::Expired(self.id));
        }
        if self.state != State::Pending {
            return Err(TicketError::Decided(self.id, self.state.label()));
        }
        if let Decider::User(u) = who {
            if *u == self.requester {
                return Err(TicketError::OwnRequest(u.to_string(), self.id));
            }
            if !policy.is_member(&self.approvers, u) {
                return Err(TicketError::NotApprover(
                    u.to_string(),
                    self.id,
                    self.approvers.clone(),
                ));
            }
        }
        Ok(())
    }

    /// Adds `who`'s approval at `now`; true when it was the last one needed (the ticket is
    /// then approved; for access, the caller stores [`Ticket::grant`] and names it).
    pub fn approve(
        &mut self,
        policy: &Policy,
        who: &Decider<'_>,
        reason: Option<String>,
        now: u64,
    ) -> Result<bool, TicketError> {
        self.expire_if_due(now);
        self.check_decider(policy, who)?;
        let name = who.name();
        if self.approvals.iter().any(|a| a.by == name) {
            return Err(TicketError::AlreadyApproved(name, self.id));
        }
        self.approvals.push(Approval {
            by: name,
            at: now,
            reason,
        });
        let done = self.approvals.len() >= usize::from(self.approvals_needed.max(1));
        if done {
            self.state = State::Approved {
                at: now,
                grant: matches!(self.asked, Asked::Access { .. }).then(|| self.grant_id()),
            };
        }
        Ok(done)
    }

    pub fn deny(
        &mut self,
        policy: &Policy,
        who: &Decider<'_>,
        reason: Option<String>,
        now: u64,
    ) -> Result<(), TicketError> {
        self.expire_if_due(now);
        self.check_decider(policy, who)?;
        self.state = State::Denied {
            by: who.name(),
            at: now,
            reason,
        };
        Ok(())
    }

    /// The grant an approved access ticket creates, named after it, valid from `now` for the
    /// duration asked. It is as strict as the strictest grant on the same target or subnet in
    /// `policy`: it needs the second factor if any of them does, and carries all their command
    /// rules (the strictest action first), so access on request never loosens a rule.
    pub fn grant(&self, now: u64, policy: &Policy) -> Option<Grant> {
        let Asked::Access {
            object,
            login,
            rights,
            duration_secs,
        } = &self.asked
        else {
            return None;
        };
        let alike: Vec<&Grant> = policy
            .grants
            .values()
            .filter(|g| g.object == *object)
            .collect();
        let mut command_rules: Vec<CommandRule> = alike
            .iter()
            .flat_map(|g| g.command_rules.iter().cloned())
            .collect();
        command_rules.sort_by_key(|r| strictness(r.action));
        command_rules.dedup();
        Some(Grant {
            id: self.grant_id(),
            subject: GrantSubject::User(self.requester.clone()),
            object: object.clone(),
            logins: vec![login.clone()],
            rights: rights.clone(),
            not_before: Some(now),
            not_after: Some(now + duration_secs),
            window: None,
            tcp_ports: vec![],
            sources: vec![],
            capture: false,
            // What the same target's grants capture, an approved request captures too.
            capture_files: alike.iter().any(|g| g.capture_files),
            command_rules,
            require_mfa: alike.iter().any(|g| g.require_mfa),
        })
    }

    pub fn grant_id(&self) -> String {
        format!("req-{}", self.id)
    }

    /// One line for lists and menus.
    pub fn summary(&self) -> String {
        let what = match &self.asked {
            Asked::Access {
                object,
                login,
                rights,
                duration_secs,
            } => format!(
                "{login}@{} ({}) for {}",
                object,
                rights
                    .iter()
                    .map(Right::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                duration_text(*duration_secs)
            ),
            Asked::Command {
                session,
                target,
                login,
                command,
                ..
            } => format!(
                "command `{}` as {login}@{target} in session {session}",
                command.escape_debug()
            ),
        };
        let approvals = format!("{}/{}", self.approvals.len(), self.approvals_needed);
        format!(
            "#{} {} by {}: {what}, reason \"{}\", approvals {approvals} ({})",
            self.id,
            self.state.label(),
            self.requester,
            self.reason.escape_debug(),
            self.approvers
        )
    }
}

/// First-match order for inherited rules: what stops a command comes before what lets it run.
fn strictness(action: RuleAction) -> u8 {
    match action {
        RuleAction::Terminate => 0,
        RuleAction::Deny => 1,
        RuleAction::Review => 2,
        RuleAction::Alert => 3,
    }
}

/// `90` → `1m30s`, `3600` → `1h`, `5400` → `1h30m`.
pub fn duration_text(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// `30s`, `15m`, `1h`, `1h30m`, `2d` → seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut units = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        total = total.checked_add(num.parse::<u64>().ok()?.checked_mul(unit)?)?;
        num.clear();
        units = true;
    }
    if !num.is_empty() {
        // A bare number is seconds; after a unit (`1h30`) it is ambiguous.
        if units {
            return None;
        }
        total = num.parse().ok()?;
    }
    (total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Group;

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.groups.insert(
            "leads".into(),
            Group {
                name: "leads".into(),
                members: vec!["bob".into(), "carol".into(), "alice".into()],
            },
        );
        p
    }

    fn ticket(needed: u8) -> Ticket {
        Ticket {
            id: 7,
            requester: "alice".into(),
            asked: Asked::Access {
                object: GrantObject::Target("web1".into()),
                login: "root".into(),
                rights: Rights::new([Right::Shell]),
                duration_secs: 3600,
            },
            reason: "INC-4211".into(),
            created: 1000,
            decide_by: 2000,
            approvers: "leads".into(),
            approvals_needed: needed,
            approvals: vec![],
            state: State::Pending,
            told: false,
        }
    }

    #[test]
    fn four_eyes() {
        let p = policy();
        let mut t = ticket(2);
        assert_eq!(
            t.approve(&p, &Decider::User("alice"), None, 1100),
            Err(TicketError::OwnRequest("alice".into(), 7))
        );
        assert_eq!(t.approve(&p, &Decider::User("bob"), None, 1100), Ok(false));
        assert_eq!(
            t.approve(&p, &Decider::User("bob"), None, 1101),
            Err(TicketError::AlreadyApproved("bob".into(), 7))
        );
        assert!(matches!(
            t.approve(&p, &Decider::User("mallory"), None, 1101),
            Err(TicketError::NotApprover(..))
        ));
        assert_eq!(t.approve(&p, &Decider::User("carol"), None, 1200), Ok(true));
        assert_eq!(
            t.state,
            State::Approved {
                at: 1200,
                grant: Some("req-7".into())
            }
        );
        let g = t.grant(1200, &p).unwrap();
        assert_eq!((g.not_before, g.not_after), (Some(1200), Some(4800)));
        assert_eq!(g.subject, GrantSubject::User("alice".into()));
        assert!(matches!(
            t.deny(&p, &Decider::Admin("uid 0"), None, 1300),
            Err(TicketError::Decided(7, "approved"))
        ));
    }

    #[test]
    fn expiry_and_admins() {
        let p = policy();
        let mut t = ticket(1);
        assert_eq!(
            t.approve(&p, &Decider::Admin("uid 0"), None, 2000),
            Err(TicketError::Expired(7))
        );
        assert_eq!(t.state, State::Expired { at: 2000 });
        let mut t = ticket(1);
        t.deny(&p, &Decider::Admin("uid 0"), Some("no".into()), 1500)
            .unwrap();
        assert_eq!(t.state.label(), "denied");
        let mut t = ticket(1);
        assert_eq!(
            t.approve(&p, &Decider::Admin("uid 0"), None, 1500),
            Ok(true)
        );
    }

    #[test]
    fn durations() {
        for (text, secs) in [
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2d", 172_800),
            ("90", 90),
        ] {
            assert_eq!(parse_duration(text), Some(secs), "{text}");
        }
        for bad in ["", "0", "1x", "h", "-1h", "1h30"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(duration_text(5400), "1h30m");
        assert_eq!(duration_text(90), "1m30s");
    }
}
