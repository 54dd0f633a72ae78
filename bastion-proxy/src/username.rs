//! Where a connection is going. In explicit mode the SSH user name says it: `login@target`
//! (`ssh -p 2222 root@web1@bastion`: OpenSSH splits user and host at the *last* `@`, so bastion
//! receives `root@web1`). Intercepted and ProxyJump connections already name their target, so
//! the user name is just the login.

use std::net::SocketAddr;

/// How a connection reached bastiond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// The explicit listener: the user name is `login@target`.
    Explicit,
    /// Intercepted (TPROXY): the original destination is the target.
    Transparent { dest: SocketAddr },
    /// An SSH session inside a `direct-tcpip` channel (ProxyJump, `ssh -W`), to `host:port`.
    Jump { host: String, port: u16 },
}

impl Arrival {
    /// The login and target for `username`, and the port when the connection fixed it.
    pub fn destination(&self, username: &str) -> Result<(Destination, Option<u16>), BadUsername> {
        let login = |target: String| {
            valid_login(username)
                .then(|| Destination {
                    login: username.to_owned(),
                    target,
                })
                .ok_or_else(|| BadUsername(username.chars().take(128).collect()))
        };
        match self {
            Arrival::Explicit => parse(username).map(|d| (d, None)),
            Arrival::Transparent { dest } => Ok((login(dest.ip().to_string())?, Some(dest.port()))),
            Arrival::Jump { host, port } => Ok((login(host.clone())?, Some(*port))),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Arrival::Explicit => "explicit",
            Arrival::Transparent { .. } => "transparent",
            Arrival::Jump { .. } => "jump",
        }
    }
}

/// A login name as a target's sshd could take it: 1 to 255 characters, no `@`, space or
/// control character.
pub fn valid_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= 255
        && !login
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '@')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub login: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user name `{0}` is not LOGIN@TARGET (e.g. ssh -p 2222 root@web1@bastion)")]
pub struct BadUsername(pub String);

pub fn parse(user: &str) -> Result<Destination, BadUsername> {
    let bad = || BadUsername(user.chars().take(128).collect());
    let (login, target) = user.rsplit_once('@').ok_or_else(bad)?;
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c.is_control() || c.is_whitespace())
    };
    if !ok(login) || !ok(target) || login.contains('@') {
        return Err(bad());
    }
    Ok(Destination {
        login: login.to_owned(),
        target: target.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = |l: &str, t: &str| {
            Ok(Destination {
                login: l.into(),
                target: t.into(),
            })
        };
        let cases: &[(&str, Result<Destination, ()>)] = &[
            ("root@web1", ok("root", "web1")),
            ("deploy@203.0.113.10", ok("deploy", "203.0.113.10")),
            ("root", Err(())),
            ("@web1", Err(())),
            ("root@", Err(())),
            ("a@b@c", Err(())),
            ("ro ot@web1", Err(())),
            ("root@web\n1", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).map_err(|_| ()), *want, "{input:?}");
        }
    }

    #[test]
    fn intercepted_and_jumped_connections_take_the_login_only() {
        let t = Arrival::Transparent {
            dest: "203.0.113.10:22".parse().unwrap(),
        };
        let (d, port) = t.destination("root").unwrap();
        assert_eq!(
            (d.login.as_str(), d.target.as_str(), port),
            ("root", "203.0.113.10", Some(22))
        );
        assert!(t.destination("root@web1").is_err(), "no target in the name");
        assert!(t.destination("").is_err());
        let j = Arrival::Jump {
            host: "web1".into(),
            port: 22,
        };
        assert_eq!(j.destination("deploy").unwrap().0.target, "web1");
        assert_eq!(Arrival::Explicit.destination("root@web1").unwrap().1, None);
    }
}
