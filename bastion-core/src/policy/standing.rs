//! Whether access a live session or relay flow is using still holds, and until when. Sessions
//! are judged once when they start; this is how they are judged again while they run: at every
//! policy change and at every known end (a grant's expiry, its window closing). Pure.

use super::evaluate::{
    ResolvedTarget, TcpRequest, evaluate_any, evaluate_tcp, grant_valid_at, object_matches,
    subject_matches,
};
use super::model::{Grant, Policy, Right};

/// Access that holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holds {
    /// When it ends unless the policy changes (Unix seconds); `None`: no known end.
    pub until: Option<u64>,
    /// The grant lasting longest, named in the warning.
    pub grant: String,
}

/// The end of `g`'s validity from `now` on, when it has one: its expiry or the close of its
/// window, whichever comes first.
pub fn grant_end(g: &Grant, now: u64) -> Option<u64> {
    let window = g.window.and_then(|w| w.closes_after(now));
    match (g.not_after, window) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A session of `user` as `login` on `target`: every entry of `needs` (rights, any one of
/// which suffices: what each of its channels uses) must still be granted by a grant that
/// `usable` accepts. `Err` is the reason it no longer holds.
pub fn session_standing(
    policy: &Policy,
    who: (&str, &ResolvedTarget, &str),
    needs: &[&[Right]],
    now: u64,
    usable: impl Fn(&Grant) -> Result<(), String>,
) -> Result<Holds, String> {
    let (user, target, login) = who;
    let mut holds = Holds {
        until: None,
        grant: String::new(),
    };
    for (i, rights) in needs.iter().enumerate() {
        let valid = policy
            .users
            .contains_key(user)
            .then(|| {
                policy.grants.values().filter(|g| {
                    subject_matches(policy, &g.subject, user)
                        && object_matches(&g.object, target)
                        && g.logins.iter().any(|l| l == login)
                        && rights.iter().any(|r| g.rights.contains(*r))
                        && grant_valid_at(g, now).is_ok()
                })
            })
            .into_iter()
            .flatten();
        let need = longest(valid, now, &usable).map_err(|unusable| {
            unusable.unwrap_or_else(|| {
                match evaluate_any(policy, user, target, login, rights, now) {
                    Err(d) => d.to_string(),
                    Ok(g) => format!("grant {g} no longer applies"),
                }
            })
        })?;
        if i == 0 || ends_before(need.until, holds.until) {
            holds = need;
        }
    }
    Ok(holds)
}

/// A relayed TCP flow: some grant must still relay `req`.
pub fn tcp_standing(
    policy: &Policy,
    req: &TcpRequest<'_>,
    usable: impl Fn(&Grant) -> Result<(), String>,
) -> Result<Holds, String> {
    let valid = policy.grants.values().filter(|g| {
        g.rights.contains(Right::Tcp)
            && object_matches(&g.object, req.target)
            && g.tcp_ports.contains(&req.port)
            && g.sources.iter().any(|c| c.contains(req.source))
            && grant_valid_at(g, req.now).is_ok()
    });
    longest(valid, req.now, &usable).map_err(|unusable| {
        unusable.unwrap_or_else(|| match evaluate_tcp(policy, req) {
            Err(d) => d.to_string(),
            Ok(g) => format!("grant {} no longer applies", g.id),
        })
    })
}

/// The usable grant among `valid` that lasts longest; `Err(Some(why))` when some were valid
/// but none usable, `Err(None)` when none were valid.
fn longest<'p>(
    valid: impl Iterator<Item = &'p Grant>,
    now: u64,
    usable: &impl Fn(&Grant) -> Result<(), String>,
) -> Result<Holds, Option<String>> {
    let mut best: Option<Holds> = None;
    let mut unusable = None;
    for g in valid {
        if let Err(why) = usable(g) {
            unusable.get_or_insert(why);
            continue;
        }
        let until = grant_end(g, now);
        if best.as_ref().is_none_or(|b| ends_before(b.until, until)) {
            best = Some(Holds {
                until,
                grant: g.id.clone(),
            });
        }
    }
    best.ok_or(unusable)
}

/// `a` ends strictly before `b` (`None` never ends).
fn ends_before(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{GrantObject, GrantSubject, Rights, Target, User};

    const FRI: u64 = 1_795_737_600; // Friday 2026-11-27 00:00 UTC
    const NOW: u64 = FRI + 10 * 3600;

    fn grant(id: &str, rights: &[Right]) -> Grant {
        Grant {
            id: id.into(),
            subject: GrantSubject::User("alice".into()),
            object: GrantObject::Target("web1".into()),
            logins: vec!["root".into()],
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
        }
    }

    fn policy(grants: Vec<Grant>) -> Policy {
        let mut p = Policy::default();
        p.users.insert(
            "alice".into(),
            User {
                name: "alice".into(),
                keys: vec![],
                trusted_cas: vec![],
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
        for g in grants {
            p.grants.insert(g.id.clone(), g);
        }
        p
    }

    fn web1() -> ResolvedTarget {
        ResolvedTarget {
            name: Some("web1".into()),
            addr: "203.0.113.10".parse().unwrap(),
            port: 22,
        }
    }

    fn judge(p: &Policy, needs: &[&[Right]]) -> Result<Holds, String> {
        session_standing(p, ("alice", &web1(), "root"), needs, NOW, |_| Ok(()))
    }

    const SESSION: &[Right] = &[Right::Shell, Right::Exec, Right::Sftp];

    #[test]
    fn ends_are_the_longest_grant_of_each_need_and_the_soonest_need() {
        let mut short = grant("short", &[Right::Shell]);
        short.not_after = Some(NOW + 60);
        let mut long = grant("long", &[Right::Shell, Right::Forward]);
        long.window = Some("fri 08:00-18:00".parse().unwrap());
        let mut fwd = grant("fwd", &[Right::Forward]);
        fwd.not_after = Some(NOW + 120);
        let p = policy(vec![short.clone(), long, fwd]);
        let got = judge(&p, &[SESSION]).unwrap();
        assert_eq!(
            (got.until, got.grant.as_str()),
            (Some(FRI + 18 * 3600), "long")
        );
        // Both shell and forward in use: the forward lasts to the window too.
        let got = judge(&p, &[SESSION, &[Right::Forward]]).unwrap();
        assert_eq!(got.until, Some(FRI + 18 * 3600));
        // Only `short` grants shell: it decides.
        let p = policy(vec![short, grant("forever", &[Right::Sftp])]);
        let got = judge(&p, &[&[Right::Shell]]).unwrap();
        assert_eq!((got.until, got.grant.as_str()), (Some(NOW + 60), "short"));
        assert_eq!(
            judge(&p, &[SESSION]).unwrap().until,
            None,
            "sftp never ends"
        );
    }

    #[test]
    fn reasons_when_it_no_longer_holds() {
        let mut expired = grant("g", &[Right::Shell]);
        expired.not_after = Some(NOW);
        let mut closed = grant("w", &[Right::Shell]);
        closed.window = Some("sat 08:00-18:00".parse().unwrap());
        let cases: Vec<(Policy, &[&[Right]], &str)> = vec![
            (policy(vec![]), &[SESSION], "no grant lets alice reach web1"),
            (policy(vec![expired]), &[SESSION], "grant g expired"),
            (policy(vec![closed]), &[SESSION], "applies only during sat"),
            (
                policy(vec![grant("n", &[Right::Exec])]),
                &[&[Right::Shell]],
                "shell is not granted",
            ),
            (
                {
                    let mut p = policy(vec![grant("g", &[Right::Shell])]);
                    p.users.clear();
                    p
                },
                &[SESSION],
                "unknown bastion user",
            ),
        ];
        for (p, needs, want) in cases {
            let got = judge(&p, needs).unwrap_err();
            assert!(got.contains(want), "{want}: {got}");
        }
        let p = policy(vec![grant("mfa", &[Right::Shell])]);
        let got = session_standing(&p, ("alice", &web1(), "root"), &[SESSION], NOW, |g| {
            Err(format!("{} needs the code", g.id))
        });
        assert_eq!(got.unwrap_err(), "mfa needs the code");
    }

    #[test]
    fn relay_flows() {
        let mut g = grant("tcp", &[Right::Tcp]);
        g.tcp_ports = vec![5432];
        g.sources = vec!["198.51.100.0/24".parse().unwrap()];
        g.not_after = Some(NOW + 5);
        let p = policy(vec![g]);
        let target = web1();
        let req = |source: &str, port| TcpRequest {
            source: source.parse().unwrap(),
            target: &target,
            port,
            now: NOW,
        };
        let ok = tcp_standing(&p, &req("198.51.100.7", 5432), |_| Ok(())).unwrap();
        assert_eq!(ok.until, Some(NOW + 5));
        assert!(tcp_standing(&p, &req("198.51.100.7", 80), |_| Ok(())).is_err());
        let later = TcpRequest {
            now: NOW + 5,
            ..req("198.51.100.7", 5432)
        };
        let why = tcp_standing(&p, &later, |_| Ok(())).unwrap_err();
        assert!(why.contains("expired"), "{why}");
    }
}
