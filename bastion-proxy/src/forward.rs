//! Where a forward (`direct-tcpip`: `ssh -L`, `-W`, `-J`) really goes, decided before anything
//! is opened. The host is read as the target's resolver would read it (`bastion_core::host`),
//! names are resolved here, and the decision is made on the address; the target is then asked
//! to dial that address, never the name, so what it reaches is what was judged (a name that
//! resolves differently for the target, or later, changes nothing).

use std::{net::IpAddr, time::Duration};

use bastion_core::{
    cidr::Cidr,
    host::{self, Host},
    policy::{self, Policy},
};

/// How long a name may take to resolve before the forward is refused.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A protected target, as `resolve_target` reads it (a registered name or an address): only
    /// SSH to it is carried, as a session bastiond answers itself.
    Protected(String),
    /// Outside the protected prefixes: the target dials this address (the forward right).
    Outside(IpAddr),
}

/// Decides where a forward to `host` goes.
pub async fn destination(
    policy: &Policy,
    subnets: &[Cidr],
    host: &str,
) -> Result<Destination, String> {
    if policy.targets.contains_key(host) {
        return Ok(Destination::Protected(host.to_owned()));
    }
    let addrs = match host::parse(host).map_err(|e| e.to_string())? {
        Host::Addr(a) => vec![a],
        Host::Name(name) => resolve(&name).await?,
    };
    Ok(judge(policy, subnets, &addrs))
}

/// Protected if any address is: a name with one protected address is that address.
fn judge(policy: &Policy, subnets: &[Cidr], addrs: &[IpAddr]) -> Destination {
    for a in addrs {
        if policy::resolve_target(policy, &a.to_string(), subnets).is_ok() {
            return Destination::Protected(a.to_string());
        }
    }
    // `resolve` never returns an empty list.
    Destination::Outside(addrs.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0])))
}

async fn resolve(name: &str) -> Result<Vec<IpAddr>, String> {
    let refused = |why: String| {
        format!(
            "cannot resolve `{name}` ({why}): bastion judges a forward by the address it reaches"
        )
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| refused(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
        .map_err(|e| refused(e.to_string()))?;
    let addrs: Vec<IpAddr> = found.map(|s| s.ip().to_canonical()).collect();
    if addrs.is_empty() {
        return Err(refused("no address".into()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> (Policy, Vec<Cidr>) {
        (Policy::default(), vec!["203.0.113.0/24".parse().unwrap()])
    }

    #[tokio::test]
    async fn every_spelling_of_a_protected_address_is_protected() {
        let (p, subnets) = policy();
        for host in [
            "203.0.113.11",
            "3405803787",
            "::ffff:203.0.113.11",
            "203.0.113.11.",
        ] {
            assert_eq!(
                destination(&p, &subnets, host).await,
                Ok(Destination::Protected("203.0.113.11".into())),
                "{host}"
            );
        }
        assert_eq!(
            destination(&p, &subnets, "0x7f.1").await,
            Ok(Destination::Outside("127.0.0.1".parse().unwrap()))
        );
        assert!(destination(&p, &subnets, "203.0.113.11 x").await.is_err());
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        // (What a name resolves to depends on the machine, even `localhost` in a bare root: the
        // resolving itself is only checked to refuse what does not resolve.)
        let (p, subnets) = policy();
        let err = destination(&p, &subnets, "no-such-host.invalid")
            .await
            .unwrap_err();
        assert!(err.contains("cannot resolve"), "{err}");
        // One protected address among several makes the name protected.
        let addrs = [
            "198.51.100.200".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
        ];
        assert_eq!(
            judge(&p, &subnets, &addrs),
            Destination::Protected("203.0.113.10".into())
        );
    }
}
