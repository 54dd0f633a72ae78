//! `login@target`, the SSH user name of explicit mode (`ssh -p 2222 root@web1@bastion`: OpenSSH
//! splits user and host at the *last* `@`, so bastion receives `root@web1`).

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
}
