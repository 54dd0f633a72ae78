//! The access decision. Pure: same policy, request and instant, same answer.

use std::{fmt, net::IpAddr};

use super::model::{Grant, GrantObject, GrantSubject, Policy, Right};
use super::window::Window;
use crate::cidr::Cidr;

/// Where a session wants to go, after name resolution against the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// The registered target's name; `None` for a bare address inside a protected subnet.
    pub name: Option<String>,
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for ResolvedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => f.write_str(n),
            None => write!(f, "{}", self.addr),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    pub user: &'a str,
    pub target: &'a ResolvedTarget,
    pub login: &'a str,
    pub right: Right,
    /// Unix seconds.
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { grant: String },
    Deny(Denied),
}

/// Why access is refused. `Display` is the one line the client is shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("unknown bastion user `{0}`")]
    UnknownUser(String),
    #[error(
        "unknown target `{0}`: not a registered target name or an address in a protected subnet"
    )]
    UnknownTarget(String),
    #[error("{0} is not in a protected subnet; bastion only carries sessions to protected hosts")]
    NotProtected(IpAddr),
    #[error("no grant lets {user} reach {target}")]
    NoGrant { user: String, target: String },
    #[error("login `{login}` on {target} is not granted to {user}")]
    LoginNotGranted {
        user: String,
        login: String,
        target: String,
    },
    #[error("{right} is not granted to {user} on {target}")]
    RightNotGranted {
        user: String,
        right: &'static str,
        target: String,
    },
    #[error("grant {grant} is not valid yet (from {from} Unix time)")]
    NotYetValid { grant: String, from: u64 },
    #[error("grant {grant} expired (at {at} Unix time)")]
    Expired { grant: String, at: u64 },
    #[error("grant {grant} applies only during {window} UTC")]
    OutsideWindow { grant: String, window: Window },
    #[error("no grant relays TCP to {target} port {port}")]
    TcpNotGranted { target: String, port: u16 },
    #[error("TCP to {target} port {port} is not granted from {from}")]
    TcpSourceNotGranted {
        from: IpAddr,
        target: String,
        port: u16,
    },
}

impl Denied {
    /// How close the request came to being allowed. When several rights are tried, the closest
    /// refusal is the one worth showing ("grant expired" beats "shell is not granted").
    pub fn closeness(&self) -> u8 {
        match self {
            Denied::UnknownUser(_) | Denied::UnknownTarget(_) | Denied::NotProtected(_) => 0,
            Denied::NoGrant { .. } | Denied::TcpNotGranted { .. } => 1,
            Denied::TcpSourceNotGranted { .. } => 2,
            Denied::LoginNotGranted { .. } => 2,
            Denied::RightNotGranted { .. } => 3,
            Denied::NotYetValid { .. } | Denied::Expired { .. } | Denied::OutsideWindow { .. } => 4,
        }
    }
}

/// Resolves the `target` part of `login@target`: a registered name, or an address that is a
/// registered target or lies inside a protected subnet (`extra_subnets` are those from config).
pub fn resolve_target(
    policy: &Policy,
    text: &str,
    extra_subnets: &[Cidr],
) -> Result<ResolvedTarget, Denied> {
    if let Some(t) = policy.targets.get(text) {
        return Ok(ResolvedTarget {
            name: Some(t.name.clone()),
            addr: t.addr,
            port: t.port,
        });
    }
    let addr: IpAddr = text
        .parse()
        .map_err(|_| Denied::UnknownTarget(text.to_owned()))?;
    if let Some(t) = policy.targets.values().find(|t| t.addr == addr) {
        return Ok(ResolvedTarget {
            name: Some(t.name.clone()),
            addr,
            port: t.port,
        });
    }
    if policy
        .subnets
        .iter()
        .chain(extra_subnets)
        .any(|c| c.contains(addr))
    {
        return Ok(ResolvedTarget {
            name: None,
            addr,
            port: 22,
        });
    }
    Err(Denied::NotProtected(addr))
}

/// Decides whether `req` is allowed. The most specific reason wins when it is not: a wrong login
/// says so rather than "no grant", so users can fix their command.
pub fn evaluate(policy: &Policy, req: &AccessRequest<'_>) -> Decision {
    if !policy.users.contains_key(req.user) {
        return Decision::Deny(Denied::UnknownUser(req.user.to_owned()));
    }
    let target = req.target.to_string();
    let matching: Vec<_> = policy
        .grants
        .values()
        .filter(|g| subject_matches(policy, &g.subject, req.user))
        .filter(|g| object_matches(&g.object, req.target))
        .collect();
    if matching.is_empty() {
        return deny(Denied::NoGrant {
            user: req.user.to_owned(),
            target,
        });
    }
    let with_login: Vec<_> = matching
        .into_iter()
        .filter(|g| g.logins.iter().any(|l| l == req.login))
        .collect();
    if with_login.is_empty() {
        return deny(Denied::LoginNotGranted {
            user: req.user.to_owned(),
            login: req.login.to_owned(),
            target,
        });
    }
    let with_right: Vec<_> = with_login
        .into_iter()
        .filter(|g| g.rights.contains(req.right))
        .collect();
    if with_right.is_empty() {
        return deny(Denied::RightNotGranted {
            user: req.user.to_owned(),
            right: req.right.as_str(),
            target,
        });
    }
    match first_valid(with_right, req.now) {
        Ok(g) => Decision::Allow {
            grant: g.id.clone(),
        },
        Err(reason) => deny(reason.unwrap_or(Denied::NoGrant {
            user: req.user.to_owned(),
            target,
        })),
    }
}

/// The first grant allowing any of `rights`, or the closest refusal among them ("grant expired"
/// beats "shell is not granted").
pub fn evaluate_any(
    policy: &Policy,
    user: &str,
    target: &ResolvedTarget,
    login: &str,
    rights: &[Right],
    now: u64,
) -> Result<String, Denied> {
    let mut closest: Option<Denied> = None;
    for &right in rights {
        let req = AccessRequest {
            user,
            target,
            login,
            right,
            now,
        };
        match evaluate(policy, &req) {
            Decision::Allow { grant } => return Ok(grant),
            Decision::Deny(d) => {
                if closest
                    .as_ref()
                    .is_none_or(|c| d.closeness() > c.closeness())
                {
                    closest = Some(d);
                }
            }
        }
    }
    Err(closest.unwrap_or(Denied::NoGrant {
        user: user.to_owned(),
        target: target.to_string(),
    }))
}

/// A raw TCP connection the relay received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRequest<'a> {
    /// The admin's address (raw TCP carries no other identity).
    pub source: IpAddr,
    pub target: &'a ResolvedTarget,
    pub port: u16,
    /// Unix seconds.
    pub now: u64,
}

/// The grant that relays `req`, or the most specific reason none does.
pub fn evaluate_tcp<'p>(policy: &'p Policy, req: &TcpRequest<'_>) -> Result<&'p Grant, Denied> {
    let target = req.target.to_string();
    let to_port: Vec<&Grant> = policy
        .grants
        .values()
        .filter(|g| g.rights.contains(Right::Tcp))
        .filter(|g| object_matches(&g.object, req.target))
        .filter(|g| g.tcp_ports.contains(&req.port))
        .collect();
    if to_port.is_empty() {
        return Err(Denied::TcpNotGranted {
            target,
            port: req.port,
        });
    }
    let from_source: Vec<&Grant> = to_port
        .into_iter()
        .filter(|g| g.sources.iter().any(|c| c.contains(req.source)))
        .collect();
    if from_source.is_empty() {
        return Err(Denied::TcpSourceNotGranted {
            from: req.source,
            target,
            port: req.port,
        });
    }
    first_valid(from_source, req.now).map_err(|reason| {
        reason.unwrap_or(Denied::TcpNotGranted {
            target,
            port: req.port,
        })
    })
}

/// The first grant valid at `now`, else the reason the first one is not (None: no grants).
fn first_valid(grants: Vec<&Grant>, now: u64) -> Result<&Grant, Option<Denied>> {
    let mut first_reason = None;
    for g in grants {
        match grant_valid_at(g, now) {
            Ok(()) => return Ok(g),
            Err(reason) => drop(first_reason.get_or_insert(reason)),
        }
    }
    Err(first_reason)
}

/// Whether `g` applies at `now`: begun, not expired, inside its window.
pub fn grant_valid_at(g: &Grant, now: u64) -> Result<(), Denied> {
    match (g.not_before, g.not_after, g.window) {
        (Some(from), _, _) if now < from => Err(Denied::NotYetValid {
            grant: g.id.clone(),
            from,
        }),
        (_, Some(at), _) if now >= at => Err(Denied::Expired {
            grant: g.id.clone(),
            at,
        }),
        (_, _, Some(w)) if !w.contains(now) => Err(Denied::OutsideWindow {
            grant: g.id.clone(),
            window: w,
        }),
        _ => Ok(()),
    }
}

fn deny(d: Denied) -> Decision {
    Decision::Deny(d)
}

pub fn subject_matches(policy: &Policy, subject: &GrantSubject, user: &str) -> bool {
    match subject {
        GrantSubject::User(u) => u == user,
        GrantSubject::Group(g) => policy.is_member(g, user),
    }
}

pub(super) fn object_matches(object: &GrantObject, target: &ResolvedTarget) -> bool {
    match object {
        GrantObject::Target(name) => target.name.as_deref() == Some(name.as_str()),
        GrantObject::Subnet(c) => c.contains(target.addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Group, Rights, Target, User};

    const NOW: u64 = 1_795_737_600 + 10 * 3600; // Friday 2026-11-27 10:00 UTC

    fn policy() -> Policy {
        let mut p = Policy::default();
        for u in ["alice", "bob", "carol"] {
            p.users.insert(
                u.into(),
                User {
                    name: u.into(),
                    keys: vec![],
                    trusted_cas: vec![],
                },
            );
        }
        p.groups.insert(
            "ops".into(),
            Group {
                name: "ops".into(),
                members: vec!["bob".into()],
            },
        );
        p.targets.insert(
            "web1".into(),
            Target {
                name: "web1".into(),
                addr: "203.0.113.10".parse().unwrap(),
                port: 22,
                host_keys: vec![],
            },
        );
        p.subnets.push("203.0.113.0/24".parse().unwrap());
        let grant = |id: &str, subject, object, logins: &[&str], rights: &[Right]| Grant {
            id: id.into(),
            subject,
            object,
            logins: logins.iter().map(|s| s.to_string()).collect(),
            rights: Rights::new(rights.iter().copied()),
            not_before: None,
            not_after: None,
            window: None,
            tcp_ports: vec![],
            sources: vec![],
            capture: false,
            capture_files: false,
            command_rules: vec![],
            require_mfa: false,
        };
        let mut g1 = grant(
            "g-alice-web1",
            GrantSubject::User("alice".into()),
            GrantObject::Target("web1".into()),
            &["root", "deploy"],
            &[Right::Shell, Right::Exec],
        );
        g1.not_after = Some(NOW + 3600);
        p.grants.insert(g1.id.clone(), g1);
        let mut g2 = grant(
            "g-ops-subnet",
            GrantSubject::Group("ops".into()),
            GrantObject::Subnet("203.0.113.0/24".parse().unwrap()),
            &["root"],
            &[Right::Shell, Right::Sftp, Right::Forward],
        );
        g2.window = Some("mon-fri 08:00-18:00".parse().unwrap());
        p.grants.insert(g2.id.clone(), g2);
        let mut g3 = grant(
            "g-carol-old",
            GrantSubject::User("carol".into()),
            GrantObject::Target("web1".into()),
            &["root"],
            &[Right::Shell],
        );
        g3.not_after = Some(NOW - 1);
        p.grants.insert(g3.id.clone(), g3);
        let mut g4 = grant(
            "g-carol-future",
            GrantSubject::User("carol".into()),
            GrantObject::Target("web1".into()),
            &["root"],
            &[Right::Exec],
        );
        g4.not_before = Some(NOW + 60);
        p.grants.insert(g4.id.clone(), g4);
        p
    }

    #[test]
    fn resolution() {
        let p = policy();
        type Case<'a> = (&'a str, Result<(Option<&'a str>, &'a str), &'a str>);
        let cases: &[Case] = &[
            ("web1", Ok((Some("web1"), "203.0.113.10"))),
            ("203.0.113.10", Ok((Some("web1"), "203.0.113.10"))),
            ("203.0.113.99", Ok((None, "203.0.113.99"))),
            ("198.51.100.5", Err("not in a protected subnet")),
            ("web9", Err("unknown target `web9`")),
        ];
        for (text, want) in cases {
            let got = resolve_target(&p, text, &[]);
            match (want, got) {
                (Ok((name, addr)), Ok(t)) => {
                    assert_eq!(t.name.as_deref(), *name, "{text}");
                    assert_eq!(t.addr.to_string(), *addr, "{text}");
                }
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{text}: {e}"),
                (w, g) => panic!("{text}: wanted {w:?}, got {g:?}"),
            }
        }
        // Subnets from config count too.
        let extra: Vec<Cidr> = vec!["198.51.100.0/24".parse().unwrap()];
        assert!(resolve_target(&p, "198.51.100.5", &extra).is_ok());
    }

    #[test]
    fn closer_refusals_rank_higher() {
        let expired = Denied::Expired {
            grant: "g".into(),
            at: 1,
        };
        let no_right = Denied::RightNotGranted {
            user: "a".into(),
            right: "shell",
            target: "t".into(),
        };
        let no_grant = Denied::NoGrant {
            user: "a".into(),
            target: "t".into(),
        };
        assert!(expired.closeness() > no_right.closeness());
        assert!(no_right.closeness() > no_grant.closeness());
    }

    #[test]
    fn decisions() {
        let p = policy();
        let web1 = resolve_target(&p, "web1", &[]).unwrap();
        let other = resolve_target(&p, "203.0.113.50", &[]).unwrap();
        let saturday = NOW + 24 * 3600;
        type Case<'a> = (
            &'a str,
            &'a ResolvedTarget,
            &'a str,
            Right,
            u64,
            Result<&'a str, &'a str>,
        );
        let cases: &[Case] = &[
            (
                "alice",
                &web1,
                "root",
                Right::Shell,
                NOW,
                Ok("g-alice-web1"),
            ),
            (
                "alice",
                &web1,
                "deploy",
                Right::Exec,
                NOW,
                Ok("g-alice-web1"),
            ),
            (
                "alice",
                &web1,
                "postgres",
                Right::Shell,
                NOW,
                Err("login `postgres` on web1 is not granted to alice"),
            ),
            (
                "alice",
                &web1,
                "root",
                Right::Sftp,
                NOW,
                Err("sftp is not granted to alice on web1"),
            ),
            (
                "alice",
                &web1,
                "root",
                Right::Shell,
                NOW + 3600,
                Err("grant g-alice-web1 expired"),
            ),
            (
                "alice",
                &other,
                "root",
                Right::Shell,
                NOW,
                Err("no grant lets alice reach 203.0.113.50"),
            ),
            // bob through group ops on the whole subnet, within office hours only.
            ("bob", &web1, "root", Right::Shell, NOW, Ok("g-ops-subnet")),
            (
                "bob",
                &other,
                "root",
                Right::Forward,
                NOW,
                Ok("g-ops-subnet"),
            ),
            (
                "bob",
                &other,
                "root",
                Right::Shell,
                saturday,
                Err("applies only during mon,tue,wed,thu,fri 08:00-18:00 UTC"),
            ),
            (
                "bob",
                &other,
                "root",
                Right::Agent,
                NOW,
                Err("agent is not granted to bob"),
            ),
            (
                "carol",
                &web1,
                "root",
                Right::Shell,
                NOW,
                Err("grant g-carol-old expired"),
            ),
            (
                "carol",
                &web1,
                "root",
                Right::Exec,
                NOW,
                Err("grant g-carol-future is not valid yet"),
            ),
            (
                "carol",
                &web1,
                "root",
                Right::Exec,
                NOW + 60,
                Ok("g-carol-future"),
            ),
            (
                "mallory",
                &web1,
                "root",
                Right::Shell,
                NOW,
                Err("unknown bastion user `mallory`"),
            ),
        ];
        for (user, target, login, right, now, want) in cases {
            let req = AccessRequest {
                user,
                target,
                login,
                right: *right,
                now: *now,
            };
            match (want, evaluate(&p, &req)) {
                (Ok(id), Decision::Allow { grant }) => assert_eq!(grant, *id, "{req:?}"),
                (Err(w), Decision::Deny(d)) => assert!(d.to_string().contains(w), "{req:?}: {d}"),
                (w, got) => panic!("{req:?}: wanted {w:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn tcp_relay_table() {
        let mut p = policy();
        let mut g = p.grants["g-alice-web1"].clone();
        g.id = "g-web1-http".into();
        g.rights = Rights::new([Right::Tcp]);
        g.logins = vec![];
        g.tcp_ports = vec![80, 443];
        g.sources = vec!["198.51.100.10/32".parse().unwrap()];
        g.not_after = Some(NOW + 60);
        p.grants.insert(g.id.clone(), g);
        let web1 = resolve_target(&p, "web1", &[]).unwrap();
        let web2 = resolve_target(&p, "203.0.113.11", &[]).unwrap();
        let admin: IpAddr = "198.51.100.10".parse().unwrap();
        let other: IpAddr = "198.51.100.11".parse().unwrap();
        type Case<'a> = (
            IpAddr,
            &'a ResolvedTarget,
            u16,
            u64,
            Result<&'a str, &'a str>,
        );
        let cases: &[Case] = &[
            (admin, &web1, 80, NOW, Ok("g-web1-http")),
            (admin, &web1, 443, NOW, Ok("g-web1-http")),
            (
                admin,
                &web1,
                22,
                NOW,
                Err("no grant relays TCP to web1 port 22"),
            ),
            (
                admin,
                &web2,
                80,
                NOW,
                Err("no grant relays TCP to 203.0.113.11 port 80"),
            ),
            (other, &web1, 80, NOW, Err("not granted from 198.51.100.11")),
            (admin, &web1, 80, NOW + 60, Err("grant g-web1-http expired")),
        ];
        for (source, target, port, now, want) in cases {
            let req = TcpRequest {
                source: *source,
                target,
                port: *port,
                now: *now,
            };
            match (want, evaluate_tcp(&p, &req)) {
                (Ok(id), Ok(g)) => assert_eq!(g.id, *id, "{req:?}"),
                (Err(w), Err(d)) => assert!(d.to_string().contains(w), "{req:?}: {d}"),
                (w, got) => panic!("{req:?}: wanted {w:?}, got {got:?}"),
            }
        }
        // SSH rights never open the relay.
        let ssh_only = TcpRequest {
            source: admin,
            target: &web1,
            port: 22,
            now: NOW,
        };
        p.grants.remove("g-web1-http");
        assert!(evaluate_tcp(&p, &ssh_only).is_err());
    }
}
