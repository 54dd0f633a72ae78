//! Host identity when bastiond answers *as* a target (transparent interception and ProxyJump):
//! bastiond's host key, certified by the appliance host CA for that target's address and name.
//! A client that trusts the CA with one `@cert-authority` line connects without a prompt; a
//! client that does not is shown OpenSSH's unknown-host prompt for bastiond's plain key, never
//! a silent accept.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bastion_core::{
    cidr::Cidr,
    policy::{ResolvedTarget, Target},
};
use ssh_key::Certificate;

use crate::keys::{ApplianceKeys, KeyError};

/// How long a host certificate is valid; it is re-signed well before it expires.
const VALIDITY: Duration = Duration::from_secs(3600);
const RENEW_AFTER: Duration = Duration::from_secs(1800);
/// Entries kept before the cache is cleared (one per target address and name seen).
const CACHE_MAX: usize = 4096;

/// Host certificates per target, signed on first use and cached.
pub struct HostCerts {
    keys: Arc<ApplianceKeys>,
    cache: Mutex<HashMap<Vec<String>, (Certificate, Instant)>>,
}

impl HostCerts {
    pub fn new(keys: Arc<ApplianceKeys>) -> Self {
        HostCerts {
            keys,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The certificate for `target`: principals are its address and, if registered, its name.
    pub fn for_target(&self, target: &ResolvedTarget) -> Result<Certificate, KeyError> {
        let principals = principals(target);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cert, signed)) = cache.get(&principals)
            && signed.elapsed() < RENEW_AFTER
        {
            return Ok(cert.clone());
        }
        let cert = self.keys.host_certificate(&principals, VALIDITY)?;
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(principals, (cert.clone(), Instant::now()));
        Ok(cert)
    }
}

pub fn principals(target: &ResolvedTarget) -> Vec<String> {
    let mut p = vec![target.addr.to_string()];
    p.extend(target.name.clone());
    p
}

/// The `@cert-authority` known_hosts line for `ca_public`: every protected prefix as wildcard
/// patterns (known_hosts has no CIDR syntax), plus every registered target's name and address.
pub fn known_hosts_line(ca_public: &str, prefixes: &[Cidr], targets: &[&Target]) -> String {
    let mut patterns: Vec<String> = prefixes.iter().flat_map(prefix_patterns).collect();
    for t in targets {
        patterns.push(t.name.clone());
        patterns.push(t.addr.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    patterns.retain(|p| seen.insert(p.clone()));
    if patterns.is_empty() {
        // Never a catch-all: trust for no host until there is something to protect.
        return format!(
            "# no protected subnets or targets yet: add them (bastionctl subnet add), then run `bastionctl ca show` again
@cert-authority <protected-hosts> {ca_public}"
        );
    }
    format!("@cert-authority {} {ca_public}", patterns.join(","))
}

/// Known_hosts patterns matching exactly the IPv4 addresses of `prefix` (`203.0.113.*` for a
/// /24; a /23 gives two, never more than 128). An IPv6 prefix is left to the registered
/// targets: OpenSSH matches the address text, and IPv6 text has no stable wildcard form.
fn prefix_patterns(prefix: &Cidr) -> Vec<String> {
    let IpAddr::V4(addr) = prefix.addr() else {
        return Vec::new();
    };
    let len = u32::from(prefix.prefix_len());
    let whole = len.div_ceil(8) * 8; // bits fixed in each pattern, whole octets
    let base = u32::from(addr) & mask(len);
    let count = 1u32 << (whole - len);
    (0..count)
        .map(|i| {
            let a = (base | i.checked_shl(32 - whole).unwrap_or(0)).to_be_bytes();
            let fixed = (whole / 8) as usize;
            let mut parts: Vec<String> = a[..fixed].iter().map(u8::to_string).collect();
            if fixed < 4 {
                parts.push("*".into());
            }
            parts.join(".")
        })
        .collect()
}

fn mask(len: u32) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(c: &str) -> Vec<String> {
        prefix_patterns(&c.parse().unwrap())
    }

    #[test]
    fn prefixes_become_exact_wildcard_patterns() {
        assert_eq!(patterns("203.0.113.0/24"), ["203.0.113.*"]);
        assert_eq!(patterns("10.0.0.0/8"), ["10.*"]);
        assert_eq!(patterns("10.2.0.0/23"), ["10.2.0.*", "10.2.1.*"]);
        assert_eq!(patterns("10.2.3.4/32"), ["10.2.3.4"]);
        assert_eq!(patterns("10.2.3.4/31"), ["10.2.3.4", "10.2.3.5"]);
        assert_eq!(patterns("0.0.0.0/0"), ["*"]);
        // /17 needs 128 third-octet patterns; /12 would need 16 second-octet ones.
        assert_eq!(patterns("10.0.128.0/17").len(), 128);
        assert_eq!(patterns("172.16.0.0/12").len(), 16);
        assert_eq!(patterns("172.16.0.0/12")[15], "172.31.*");
        assert!(patterns("2001:db8::/32").is_empty());
    }

    #[test]
    fn line_lists_prefixes_then_targets_once() {
        let t = Target {
            name: "web1".into(),
            addr: "203.0.113.10".parse().unwrap(),
            port: 22,
            host_keys: vec![],
        };
        let line = known_hosts_line(
            "ssh-ed25519 AAAA",
            &["203.0.113.0/24".parse().unwrap()],
            &[&t],
        );
        assert_eq!(
            line,
            "@cert-authority 203.0.113.*,web1,203.0.113.10 ssh-ed25519 AAAA"
        );
        let empty = known_hosts_line("ssh-ed25519 AAAA", &[], &[]);
        assert!(!empty.contains("@cert-authority *"), "{empty}");
        assert!(empty.starts_with('#'), "{empty}");
    }
}
