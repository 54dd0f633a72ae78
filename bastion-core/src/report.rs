//! The compliance report (`bastionctl report`): who reached what and when, outside which hours,
//! what was refused, which rules fired and commands ran, which files moved, and what the
//! records' integrity is. Pure: built from what the control API lists (sessions, audit events,
//! indexed commands and files, integrity verdicts), so every format (HTML, JSON, CSV) shows the
//! same numbers, and they are table-tested here.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{
    audit::{AuditEvent, AuditKind},
    integrity::{SessionIntegrity, Status},
    policy::window::Window,
    session::{CommandHit, CommandSource, SessionFilter, SessionMeta},
};

/// Rows kept in the "top" lists.
pub const TOP: usize = 20;

/// What the report covers and what it is built from.
pub struct Inputs<'a> {
    /// µs since the epoch; sessions that started in `[since, until)`, events in it.
    pub since_micros: u64,
    pub until_micros: u64,
    pub user: Option<&'a str>,
    pub target: Option<&'a str>,
    /// Working hours; a session that starts outside them is after-hours.
    pub work_hours: Window,
    pub work_hours_text: String,
    /// The recurring windows of the grants that have one (by grant id).
    pub grant_windows: HashMap<String, Window>,
    pub sessions: Vec<SessionMeta>,
    pub events: Vec<AuditEvent>,
    /// Indexed commands and files (shell lines, execs, refused lines, `File` entries).
    pub commands: Vec<CommandHit>,
    pub integrity: Vec<SessionIntegrity>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub name: String,
    pub sessions: u64,
    pub duration_secs: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Count {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flagged {
    pub session: u64,
    pub user: String,
    pub target: String,
    pub grant: String,
    pub started_micros: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Transfers {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileMoved {
    pub session: u64,
    pub direction: String,
    pub size: u64,
    pub sha256: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeniedFlow {
    pub src: String,
    pub dst: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub since_micros: u64,
    pub until_micros: u64,
    pub user: Option<String>,
    pub target: Option<String>,
    pub work_hours: String,
    pub totals: Usage,
    pub per_day: Vec<Usage>,
    pub per_user: Vec<Usage>,
    pub per_target: Vec<Usage>,
    pub sign_ins_accepted: u64,
    pub sign_ins_refused: u64,
    /// Refusals of sign-ins, sessions and requests, by reason.
    pub refusals: Vec<Count>,
    pub after_hours: Vec<Flagged>,
    pub outside_grant_window: Vec<Flagged>,
    pub denied_flows: Vec<DeniedFlow>,
    /// `action rule` → hits.
    pub command_rule_hits: Vec<Count>,
    pub top_commands: Vec<Count>,
    pub uploads: Transfers,
    pub downloads: Transfers,
    pub files: Vec<FileMoved>,
    pub mfa_accepted: u64,
    pub mfa_refused: u64,
    pub requests_approved: u64,
    pub requests_denied: u64,
    pub requests_expired: u64,
    /// Integrity verdict (sealed, unsealed, incomplete, legacy, tampered) → sessions.
    pub integrity: BTreeMap<String, u64>,
}

pub fn build(i: &Inputs) -> Report {
    let in_range = |t: u64| t >= i.since_micros && t < i.until_micros;
    // The same filter `session list` applies (a target by name or address).
    let filter = SessionFilter {
        user: i.user.map(str::to_owned),
        target: i.target.map(str::to_owned),
        since_micros: Some(i.since_micros),
        until_micros: Some(i.until_micros),
        ..SessionFilter::default()
    };
    let sessions: Vec<&SessionMeta> = i.sessions.iter().filter(|s| filter.matches(s)).collect();
    let ids: std::collections::HashSet<u64> = sessions.iter().map(|s| s.id).collect();
    // Flows name addresses: with a target filter, those of its sessions (or the one given).
    let target_ips: Option<std::collections::HashSet<std::net::IpAddr>> = i.target.map(|t| {
        sessions
            .iter()
            .map(|s| s.target_addr.ip())
            .chain(t.parse().ok())
            .collect()
    });
    let mut r = Report {
        since_micros: i.since_micros,
        until_micros: i.until_micros,
        user: i.user.map(str::to_owned),
        target: i.target.map(str::to_owned),
        work_hours: i.work_hours_text.clone(),
        ..Report::default()
    };
    usage(&mut r, &sessions, i);
    for e in i.events.iter().filter(|e| in_range(e.time_micros)) {
        event(&mut r, e, i, &ids, target_ips.as_ref());
    }
    let mut top: HashMap<&str, u64> = HashMap::new();
    for c in i.commands.iter().filter(|c| ids.contains(&c.session)) {
        match c.source {
            CommandSource::Shell | CommandSource::Exec => *top.entry(&c.line).or_default() += 1,
            CommandSource::File => file(&mut r, c),
            CommandSource::Refused | CommandSource::Output => {}
        }
    }
    r.refusals
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    r.command_rule_hits
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    r.denied_flows
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.src.cmp(&b.src)));
    r.top_commands = ranked(top.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    r.top_commands.truncate(TOP);
    r.files.sort_by_key(|f| (f.session, f.path.clone()));
    for v in i.integrity.iter().filter(|v| ids.contains(&v.session)) {
        let status = match v.status {
            Status::Sealed => "sealed",
            Status::Unsealed => "unsealed",
            Status::Incomplete => "incomplete",
            Status::Legacy => "legacy",
            Status::Tampered => "tampered",
        };
        *r.integrity.entry(status.into()).or_default() += 1;
    }
    r
}

fn usage(r: &mut Report, sessions: &[&SessionMeta], i: &Inputs) {
    let mut days: BTreeMap<String, Usage> = BTreeMap::new();
    let mut users: HashMap<String, Usage> = HashMap::new();
    let mut targets: HashMap<String, Usage> = HashMap::new();
    for s in sessions {
        let secs = s
            .ended_micros
            .unwrap_or(s.started_micros)
            .saturating_sub(s.started_micros)
            / 1_000_000;
        let bytes = s.bytes_in + s.bytes_out;
        let day = crate::clock::rfc3339_micros(s.started_micros)[..10].to_owned();
        add(days.entry(day.clone()).or_default(), &day, secs, bytes);
        add(
            users.entry(s.user.clone()).or_default(),
            &s.user,
            secs,
            bytes,
        );
        add(
            targets.entry(s.target.clone()).or_default(),
            &s.target,
            secs,
            bytes,
        );
        add(&mut r.totals, "all", secs, bytes);
        let start = s.started_micros / 1_000_000;
        if !i.work_hours.contains(start) {
            r.after_hours.push(flagged(s));
        }
        if let Some(w) = i.grant_windows.get(&s.grant) {
            let end = s.ended_micros.map_or(start, |e| (e / 1_000_000).max(start));
            // Outside at its start, or still on when that occurrence of the window closed.
            if w.closes_after(start)
                .is_some_and(|closes| end > closes || closes == start)
            {
                r.outside_grant_window.push(flagged(s));
            }
        }
    }
    r.per_day = days.into_values().collect();
    r.per_user = by_sessions(users);
    r.per_target = by_sessions(targets);
}

fn add(u: &mut Usage, name: &str, secs: u64, bytes: u64) {
    u.name = name.to_owned();
    u.sessions += 1;
    u.duration_secs += secs;
    u.bytes += bytes;
}

fn by_sessions(m: HashMap<String, Usage>) -> Vec<Usage> {
    let mut v: Vec<Usage> = m.into_values().collect();
    v.sort_by(|a, b| b.sessions.cmp(&a.sessions).then(a.name.cmp(&b.name)));
    v
}

fn flagged(s: &SessionMeta) -> Flagged {
    Flagged {
        session: s.id,
        user: s.user.clone(),
        target: s.target.clone(),
        grant: s.grant.clone(),
        started_micros: s.started_micros,
    }
}

fn ranked(m: HashMap<String, u64>) -> Vec<Count> {
    let mut v: Vec<Count> = m
        .into_iter()
        .map(|(name, count)| Count { name, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    v
}

fn event(
    r: &mut Report,
    e: &AuditEvent,
    i: &Inputs,
    ids: &std::collections::HashSet<u64>,
    target_ips: Option<&std::collections::HashSet<std::net::IpAddr>>,
) {
    let user_ok = |u: Option<&str>| i.user.is_none_or(|want| u == Some(want));
    // Refusals before a session exists have no target to filter by; a target filter keeps
    // only what happened in its sessions.
    let unscoped_ok = i.target.is_none();
    let refusal =
        |r: &mut Report, reason: String| match r.refusals.iter_mut().find(|c| c.name == reason) {
            Some(c) => c.count += 1,
            None => r.refusals.push(Count {
                name: reason,
                count: 1,
            }),
        };
    match &e.kind {
        AuditKind::Login {
            user,
            accepted,
            reason,
            ..
        } if unscoped_ok && user_ok(user.as_deref()) => {
            if *accepted {
                r.sign_ins_accepted += 1;
            } else {
                r.sign_ins_refused += 1;
                let why = reason.clone().unwrap_or_else(|| match user {
                    Some(_) => "key not accepted".into(),
                    None => "unknown key".into(),
                });
                refusal(r, format!("sign-in: {why}"));
            }
        }
        AuditKind::SecondFactor {
            user,
            outcome,
            reason,
            ..
        } if unscoped_ok && user_ok(Some(user)) => match outcome.as_str() {
            "accepted" => r.mfa_accepted += 1,
            "refused" => {
                r.mfa_refused += 1;
                refusal(
                    r,
                    format!("second factor: {}", reason.as_deref().unwrap_or("refused")),
                );
            }
            _ => {}
        },
        AuditKind::SessionRefused { user, reason, .. } if unscoped_ok && user_ok(Some(user)) => {
            refusal(r, format!("session: {reason}"))
        }
        AuditKind::RequestRefused {
            session,
            request,
            reason,
            ..
        } if ids.contains(session) => refusal(r, format!("{request}: {reason}")),
        AuditKind::CommandRule {
            session,
            rule,
            action,
            ..
        } if ids.contains(session) => {
            let name = format!("{action} {rule}");
            match r.command_rule_hits.iter_mut().find(|c| c.name == name) {
                Some(c) => c.count += 1,
                None => r.command_rule_hits.push(Count { name, count: 1 }),
            }
        }
        AuditKind::Flow(f)
            if !f.allowed
                && i.user.is_none()
                && target_ips.is_none_or(|t| f.dst.is_some_and(|d| t.contains(&d))) =>
        {
            let ip = |a: Option<std::net::IpAddr>| a.map_or("-".into(), |a| a.to_string());
            let (src, dst) = (ip(f.src), format!("{}:{}", ip(f.dst), f.dport));
            match r
                .denied_flows
                .iter_mut()
                .find(|d| d.src == src && d.dst == dst)
            {
                Some(d) => d.count += f.count.max(1),
                None => r.denied_flows.push(DeniedFlow {
                    src,
                    dst,
                    count: f.count.max(1),
                }),
            }
        }
        AuditKind::RequestApproved {
            grant: Some(_),
            requester,
            ..
        } if unscoped_ok && user_ok(Some(requester)) => r.requests_approved += 1,
        AuditKind::RequestDenied { requester, .. } if unscoped_ok && user_ok(Some(requester)) => {
            r.requests_denied += 1
        }
        AuditKind::RequestExpired { requester, .. } if unscoped_ok && user_ok(Some(requester)) => {
            r.requests_expired += 1
        }
        _ => {}
    }
}

/// A `File` entry of the command index: `SHA256 direction size path`.
fn file(r: &mut Report, c: &CommandHit) {
    let mut parts = c.line.splitn(4, ' ');
    let (Some(sha), Some(direction), Some(size), Some(path)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let size: u64 = size.parse().unwrap_or(0);
    let t = if direction == "upload" {
        &mut r.uploads
    } else {
        &mut r.downloads
    };
    t.count += 1;
    t.bytes += size;
    r.files.push(FileMoved {
        session: c.session,
        direction: direction.to_owned(),
        size,
        sha256: sha.to_owned(),
        path: path.to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{audit::Actor, session::SessionState};

    const DAY: u64 = 86_400 * 1_000_000;
    /// 2026-11-30 (a Monday) 00:00 UTC, µs.
    const MONDAY: u64 = 1_795_996_800 * 1_000_000;
    const HOUR: u64 = 3_600 * 1_000_000;

    fn session(id: u64, user: &str, target: &str, start: u64, secs: u64) -> SessionMeta {
        SessionMeta {
            user: user.into(),
            target: target.into(),
            grant: format!("g-{user}"),
            started_micros: start,
            ended_micros: Some(start + secs * 1_000_000),
            state: SessionState::Closed,
            bytes_in: 10,
            bytes_out: 90,
            ..SessionMeta::starting(id, "198.51.100.9:22".parse().expect("addr"))
        }
    }

    fn event(seq: u64, t: u64, kind: AuditKind) -> AuditEvent {
        AuditEvent {
            seq,
            time_micros: t,
            actor: Actor::Daemon,
            kind,
            chain: None,
        }
    }

    fn hit(session: u64, source: CommandSource, line: &str) -> CommandHit {
        CommandHit {
            session,
            at_micros: 0,
            offset_micros: 0,
            channel: 0,
            user: String::new(),
            login: String::new(),
            target: String::new(),
            source,
            doubts: vec![],
            line: line.into(),
        }
    }

    #[test]
    fn counts_follow_the_range_the_filters_and_the_hours() {
        let hours: Window = "mon-fri 08:00-18:00".parse().expect("window");
        let inputs = Inputs {
            since_micros: MONDAY,
            until_micros: MONDAY + 7 * DAY,
            user: None,
            target: None,
            work_hours: hours,
            work_hours_text: "mon-fri 08:00-18:00".into(),
            grant_windows: [(
                "g-bob".to_owned(),
                "mon-fri 09:00-10:00".parse().expect("w"),
            )]
            .into(),
            sessions: vec![
                session(1, "alice", "web", MONDAY + 9 * HOUR, 60),
                session(2, "alice", "db", MONDAY + 22 * HOUR, 30),
                session(3, "bob", "web", MONDAY + DAY + 9 * HOUR + HOUR / 2, 3600),
                // Before the range.
                session(4, "bob", "web", MONDAY - HOUR, 5),
            ],
            events: vec![
                event(
                    1,
                    MONDAY + HOUR,
                    AuditKind::Login {
                        client: "c".into(),
                        username: "x".into(),
                        fingerprint: "f".into(),
                        user: None,
                        accepted: false,
                        reason: None,
                    },
                ),
                event(
                    2,
                    MONDAY + 2 * HOUR,
                    AuditKind::SessionRefused {
                        client: "c".into(),
                        user: "bob".into(),
                        username: "root@db".into(),
                        reason: "no grant".into(),
                    },
                ),
                event(
                    3,
                    MONDAY - HOUR,
                    AuditKind::SessionRefused {
                        client: "c".into(),
                        user: "bob".into(),
                        username: "root@db".into(),
                        reason: "no grant".into(),
                    },
                ),
            ],
            commands: vec![
                hit(1, CommandSource::Shell, "uptime"),
                hit(3, CommandSource::Exec, "uptime"),
                hit(2, CommandSource::Shell, "id"),
                hit(4, CommandSource::Shell, "outside"),
                hit(1, CommandSource::File, "ab upload 7 /tmp/a b"),
                hit(3, CommandSource::File, "cd download 5 /etc/hosts"),
            ],
            integrity: vec![
                SessionIntegrity {
                    session: 1,
                    status: Status::Sealed,
                    detail: String::new(),
                },
                SessionIntegrity {
                    session: 2,
                    status: Status::Tampered,
                    detail: String::new(),
                },
            ],
        };
        let r = build(&inputs);
        assert_eq!(
            (r.totals.sessions, r.totals.duration_secs, r.totals.bytes),
            (3, 3690, 300)
        );
        assert_eq!(r.per_day.len(), 2);
        assert_eq!(
            (r.per_day[0].name.as_str(), r.per_day[0].sessions),
            ("2026-11-30", 2)
        );
        assert_eq!(r.per_user[0].name, "alice");
        assert_eq!(
            r.per_target[0],
            Usage {
                name: "web".into(),
                sessions: 2,
                duration_secs: 3660,
                bytes: 200
            }
        );
        assert_eq!(
            r.after_hours.iter().map(|f| f.session).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(
            r.outside_grant_window
                .iter()
                .map(|f| f.session)
                .collect::<Vec<_>>(),
            [3]
        );
        assert_eq!((r.sign_ins_accepted, r.sign_ins_refused), (0, 1));
        assert_eq!(r.refusals.len(), 2);
        assert_eq!(
            r.top_commands[0],
            Count {
                name: "uptime".into(),
                count: 2
            }
        );
        assert_eq!(r.top_commands.len(), 2);
        assert_eq!(
            (r.uploads.count, r.uploads.bytes, r.downloads.bytes),
            (1, 7, 5)
        );
        assert_eq!(r.files[0].path, "/tmp/a b");
        assert_eq!(r.integrity.get("sealed"), Some(&1));
        assert_eq!(r.integrity.get("tampered"), Some(&1));
        // A user filter narrows sessions, and the events that name a user.
        let r = build(&Inputs {
            user: Some("bob"),
            ..inputs
        });
        assert_eq!(r.totals.sessions, 1);
        assert_eq!((r.sign_ins_refused, r.refusals.len()), (0, 1));
    }
}
