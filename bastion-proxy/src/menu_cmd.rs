//! The self-service menu's commands, typed at its prompt or given as the SSH command
//! (`ssh -p 2222 alice@bastion request web1 --login root --for 1h --reason INC-4211`): what the
//! user may reach now, their requests, asking for access, and deciding others' requests.
//! Parsing is pure; [`run`] blocks on the store (call it from the blocking pool).

use bastion_core::{
    policy::{self, GrantObject, Policy, Right, Rights, evaluate::grant_valid_at},
    ticket::{self, Decider, Ticket},
};
use serde::Serialize;

use super::{
    ProxyContext,
    tickets::{self, Decision, NewAccess},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Targets {
        json: bool,
    },
    Requests {
        json: bool,
    },
    Request(Asked),
    Decide {
        id: u64,
        approve: bool,
        reason: Option<String>,
    },
    /// Connect to a listed target: by its number, its name, or `login@name`.
    Connect(String),
    Help,
    Quit,
}

/// `request TARGET|SUBNET --login L --for D --reason WHY [--rights a,b]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub object: String,
    pub login: String,
    pub duration_secs: u64,
    pub reason: String,
    pub rights: Vec<Right>,
}

pub const HELP: &str = "\
commands:
  targets [--json]          what you may reach now (and why not)
  requests [--json]         your access requests, and those you may decide
  request TARGET --login LOGIN --for DURATION --reason WHY [--rights shell,exec,sftp]
  approve ID [--reason WHY] / deny ID [--reason WHY]
  NUMBER, NAME, LOGIN@NAME or LOGIN@ADDRESS connect (at the prompt)
  quit";

/// Splits a command line into words: spaces separate, quotes ('...' or \"...\") group.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.get_or_insert_default();
            }
            (None, c) if c.is_whitespace() => out.extend(cur.take()),
            (None, c) => cur.get_or_insert_default().push(c),
        }
    }
    if quote.is_some() {
        return Err("unclosed quote".into());
    }
    out.extend(cur);
    Ok(out)
}

pub fn parse(line: &str) -> Result<Command, String> {
    let words = words(line)?;
    let Some((verb, rest)) = words.split_first() else {
        return Ok(Command::Help);
    };
    let options: &[&str] = match verb.as_str() {
        "targets" | "t" | "list" | "requests" | "r" => &["--json"],
        "approve" | "deny" => &["--reason"],
        "request" => &["--login", "--for", "--reason", "--rights"],
        _ => &[],
    };
    if let Some(bad) = rest
        .iter()
        .find(|w| w.starts_with("--") && !options.contains(&w.as_str()))
    {
        return Err(format!("{verb}: unknown option `{bad}` (type help)"));
    }
    let json = rest.iter().any(|w| w == "--json");
    // `--flag value...`: a flag's value runs to the next flag (so a reason needs no quotes).
    let flag = |name: &str| -> Option<String> {
        let at = rest.iter().position(|w| w == name)?;
        let value: Vec<&str> = rest[at + 1..]
            .iter()
            .take_while(|w| !w.starts_with("--"))
            .map(String::as_str)
            .collect();
        Some(value.join(" "))
    };
    let id = || -> Result<u64, String> {
        rest.first()
            .and_then(|w| w.trim_start_matches('#').parse().ok())
            .ok_or_else(|| format!("{verb} ID: which request (a number)?"))
    };
    Ok(match verb.as_str() {
        "targets" | "t" | "list" => Command::Targets { json },
        "requests" | "r" => Command::Requests { json },
        "approve" | "deny" => Command::Decide {
            id: id()?,
            approve: verb == "approve",
            reason: flag("--reason").filter(|r| !r.is_empty()),
        },
        "request" => {
            let object = rest
                .first()
                .filter(|w| !w.starts_with("--"))
                .ok_or("request TARGET: which target or subnet?")?
                .clone();
            let login = flag("--login")
                .filter(|l| !l.is_empty())
                .ok_or("request: --login LOGIN is required")?;
            let duration = flag("--for").ok_or("request: --for DURATION (e.g. 1h) is required")?;
            let duration_secs = ticket::parse_duration(&duration)
                .ok_or_else(|| format!("--for {duration}: not a duration (e.g. 30m, 1h)"))?;
            let reason = flag("--reason")
                .filter(|r| !r.is_empty())
                .ok_or("request: --reason WHY is required")?;
            let rights = match flag("--rights") {
                None => vec![Right::Shell, Right::Exec, Right::Sftp],
                Some(list) => list
                    .split(',')
                    .map(|r| Right::parse(r.trim()).ok_or_else(|| format!("unknown right `{r}`")))
                    .collect::<Result<_, _>>()?,
            };
            Command::Request(Asked {
                object,
                login,
                duration_secs,
                reason,
                rights,
            })
        }
        "help" | "?" => Command::Help,
        "quit" | "exit" | "q" => Command::Quit,
        other if rest.is_empty() => Command::Connect(other.to_owned()),
        other => return Err(format!("unknown command `{other}` (type help)")),
    })
}

/// One line of `targets`: a grant the user holds on a target or subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reachable {
    pub target: String,
    pub logins: Vec<String>,
    pub rights: Vec<&'static str>,
    pub grant: String,
    /// Usable now; otherwise `why_not` says why.
    pub now: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    /// When access under this grant ends (Unix seconds), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// Everything `user` holds a grant for, in a stable order (the menu numbers it).
pub fn reachable(policy: &Policy, user: &str, now: u64) -> Vec<Reachable> {
    let mut rows: Vec<Reachable> = policy
        .grants
        .values()
        .filter(|g| policy::evaluate::subject_matches(policy, &g.subject, user))
        .filter(|g| g.rights.iter().any(|r| r != Right::Tcp))
        .map(|g| {
            let valid = grant_valid_at(g, now);
            Reachable {
                target: g.object.to_string(),
                logins: g.logins.clone(),
                rights: g.rights.iter().map(Right::as_str).collect(),
                grant: g.id.clone(),
                now: valid.is_ok(),
                until: valid
                    .is_ok()
                    .then(|| policy::standing::grant_end(g, now))
                    .flatten(),
                why_not: valid.err().map(|d| d.to_string()),
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.target, &a.grant).cmp(&(&b.target, &b.grant)));
    rows
}

pub fn targets_text(rows: &[Reachable]) -> String {
    if rows.is_empty() {
        return "You hold no grant yet: `request TARGET --login LOGIN --for 1h --reason WHY`.\n"
            .into();
    }
    let mut out = String::from("Targets you may use:\n");
    for (i, r) in rows.iter().enumerate() {
        let when = match (&r.why_not, r.until) {
            (Some(why), _) => format!("not now: {why}"),
            (None, Some(t)) => format!("until {} UTC", bastion_core::clock::utc_text(t)),
            (None, None) => "now".into(),
        };
        out.push_str(&format!(
            "  {:>2}) {:<16} as {:<12} {:<20} {when}\n",
            i + 1,
            r.target,
            r.logins.join(","),
            r.rights.join(",")
        ));
    }
    out
}

fn tickets_text(user: &str, tickets: &[Ticket]) -> String {
    if tickets.is_empty() {
        return "  (none)\n".into();
    }
    let mut out = String::new();
    for t in tickets {
        let yours = if t.requester == user {
            ""
        } else {
            " (you may decide)"
        };
        out.push_str(&format!("  {}{yours}\n", t.summary()));
    }
    out
}

/// What a command printed, its exit status, and a target to connect to.
#[derive(Debug, Default)]
pub struct Reply {
    pub text: String,
    pub status: u32,
    pub connect: Option<String>,
    pub quit: bool,
}

impl Reply {
    fn ok(text: String) -> Reply {
        Reply {
            text,
            ..Reply::default()
        }
    }

    fn failed(why: String) -> Reply {
        Reply {
            text: format!("bastion: {why}\n"),
            status: 1,
            ..Reply::default()
        }
    }
}

/// Runs `command` for signed-in `user` at `now`.
pub fn run(ctx: &ProxyContext, user: &str, command: Command, now: u64) -> Reply {
    let json = |v: serde_json::Result<String>| match v {
        Ok(text) => Reply::ok(text + "\n"),
        Err(e) => Reply::failed(format!("internal: {e}")),
    };
    match command {
        Command::Help => Reply::ok(format!("{HELP}\n")),
        Command::Quit => Reply {
            quit: true,
            ..Reply::default()
        },
        Command::Targets { json: true } => json(serde_json::to_string_pretty(&reachable(
            &ctx.policy(),
            user,
            now,
        ))),
        Command::Targets { json: false } => {
            Reply::ok(targets_text(&reachable(&ctx.policy(), user, now)))
        }
        Command::Requests { json: as_json } => match tickets::for_user(ctx, user, now) {
            Ok(t) if as_json => json(serde_json::to_string_pretty(&t)),
            Ok(t) => Reply::ok(tickets_text(user, &t)),
            Err(e) => Reply::failed(e),
        },
        Command::Request(a) => {
            // A subnet, an address (its /32 or /128), or a target's name.
            let object = match (a.object.parse(), a.object.parse::<std::net::IpAddr>()) {
                (Ok(cidr), _) if a.object.contains('/') => GrantObject::Subnet(cidr),
                (_, Ok(addr)) => {
                    GrantObject::Subnet(bastion_core::cidr::Cidr::source(addr, 32, 128))
                }
                _ => GrantObject::Target(a.object.clone()),
            };
            let new = NewAccess {
                requester: user.to_owned(),
                object,
                login: a.login,
                rights: Rights::new(a.rights),
                duration_secs: a.duration_secs,
                reason: a.reason,
            };
            match tickets::request_access(ctx, new, now) {
                Ok(t) => Reply::ok(format!(
                    "request #{} filed: {} approval(s) from {} needed, decide by {} UTC\n",
                    t.id,
                    t.approvals_needed,
                    t.approvers,
                    bastion_core::clock::utc_text(t.decide_by)
                )),
                Err(e) => Reply::failed(e),
            }
        }
        Command::Decide {
            id,
            approve,
            reason,
        } => {
            let decision = if approve {
                Decision::Approve
            } else {
                Decision::Deny
            };
            let actor = bastion_core::audit::Actor::Daemon;
            match tickets::decide(ctx, id, &Decider::User(user), decision, reason, actor, now) {
                Ok(t) => Reply::ok(format!("{}\n", t.summary())),
                Err(e) => Reply::failed(e),
            }
        }
        Command::Connect(which) => {
            let rows = reachable(&ctx.policy(), user, now);
            let (login, name) = match which.rsplit_once('@') {
                Some((l, n)) => (Some(l.to_owned()), n.to_owned()),
                None => (None, which.clone()),
            };
            let row = match name.parse::<usize>() {
                Ok(n) if n >= 1 => rows.get(n - 1),
                _ => rows.iter().find(|r| r.target == name),
            };
            // An address (in a subnet granted by prefix) is judged when it is routed.
            if let (None, Ok(addr), Some(login)) = (row, name.parse::<std::net::IpAddr>(), &login) {
                return Reply {
                    connect: Some(format!("{login}@{addr}")),
                    ..Reply::default()
                };
            }
            let Some(row) = row else {
                return Reply::failed(format!("`{which}` is not a listed target (type targets)"));
            };
            if row.target.contains('/') {
                return Reply::failed(format!(
                    "{} is a subnet: connect to an address in it, as LOGIN@ADDRESS",
                    row.target
                ));
            }
            let Some(login) = login.or_else(|| row.logins.first().cloned()) else {
                return Reply::failed(format!("no login on {}", row.target));
            };
            Reply {
                connect: Some(format!("{login}@{}", row.target)),
                ..Reply::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("targets --json"), Ok(Command::Targets { json: true }));
        assert_eq!(
            parse("request web1 --login root --for 1h --reason INC-4211 disk full"),
            Ok(Command::Request(Asked {
                object: "web1".into(),
                login: "root".into(),
                duration_secs: 3600,
                reason: "INC-4211 disk full".into(),
                rights: vec![Right::Shell, Right::Exec, Right::Sftp],
            }))
        );
        assert_eq!(
            parse("approve #7 --reason 'looks fine'"),
            Ok(Command::Decide {
                id: 7,
                approve: true,
                reason: Some("looks fine".into())
            })
        );
        assert_eq!(parse("2"), Ok(Command::Connect("2".into())));
        assert_eq!(parse("root@web1"), Ok(Command::Connect("root@web1".into())));
        for bad in [
            "request web1 --for 1h --reason x",
            "request web1 --login root --for soon --reason x",
            "request web1 --login root --for 1h",
            "approve",
            "frobnicate now",
            "request web1 --login root --for 1h --reason x --right exec",
            "targets --jsn",
            "request 'web1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
