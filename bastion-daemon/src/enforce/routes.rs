//! Which interfaces carry traffic to each protected prefix, read from the kernel's routing
//! tables (`/proc/net/route`: the main IPv4 table; `/proc/net/ipv6_route`). A protected prefix
//! (or part of one) routed through an interface that is not protected has no egress program
//! on its way out: bastiond warns in its status and audits it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bastion_core::{cidr::Cidr, protocol::UnprotectedRoute};

/// One route: destination prefix and outgoing interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: Cidr,
    pub iface: String,
}

/// IPv6 routes flagged this way discard traffic (`RTF_REJECT`): no interface carries it.
const RTF_REJECT: u32 = 0x0200;

/// The routes of both families, as the kernel reports them now. A table that cannot be read
/// (IPv6 disabled) contributes nothing.
pub fn read() -> Vec<Route> {
    let mut routes = parse_ipv4(&std::fs::read_to_string("/proc/net/route").unwrap_or_default());
    routes.extend(parse_ipv6(
        &std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default(),
    ));
    routes
}

/// `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, addresses
/// as the hex of a network-order u32 read in host (little-endian) order.
pub fn parse_ipv4(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let word = |i: usize| u32::from_str_radix(f.get(i)?, 16).ok();
            let (dest, mask) = (word(1)?, word(7)?);
            let prefix = Cidr::new(
                IpAddr::V4(Ipv4Addr::from(dest.to_le_bytes())),
                mask.count_ones() as u8,
            )
            .ok()?;
            Some(Route {
                prefix,
                iface: f.first()?.to_string(),
            })
        })
        .collect()
}

/// `/proc/net/ipv6_route`: `dest plen src splen nexthop metric refcnt use flags iface`, hex.
pub fn parse_ipv6(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
            if flags & RTF_REJECT != 0 {
                return None;
            }
            let dest = u128::from_str_radix(f.first()?, 16).ok()?;
            let len = u8::from_str_radix(f.get(1)?, 16).ok()?;
            let prefix = Cidr::new(IpAddr::V6(Ipv6Addr::from(dest)), len).ok()?;
            Some(Route {
                prefix,
                iface: f.get(9)?.to_string(),
            })
        })
        .collect()
}

/// For each protected prefix, the interfaces outside `interfaces` that carry some of its
/// traffic: the most specific route covering it, and every more specific route inside it.
/// Loopback is not a way out (local delivery, bastiond's own steering table).
pub fn unprotected(
    protected: &[Cidr],
    routes: &[Route],
    interfaces: &[String],
) -> Vec<UnprotectedRoute> {
    let mut found = Vec::new();
    for p in protected {
        let covering = routes
            .iter()
            .filter(|r| r.prefix.prefix_len() <= p.prefix_len() && r.prefix.contains(p.addr()))
            .max_by_key(|r| r.prefix.prefix_len());
        let inside = routes
            .iter()
            .filter(|r| r.prefix.prefix_len() > p.prefix_len() && p.contains(r.prefix.addr()));
        for r in covering.into_iter().chain(inside) {
            let leak = UnprotectedRoute {
                prefix: *p,
                route: r.prefix,
                iface: r.iface.clone(),
            };
            if r.iface != "lo" && !interfaces.contains(&r.iface) && !found.contains(&leak) {
                found.push(leak);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const V4: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        adm0\t00000000\t016433C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        adm0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        prot0\t007100CB\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn route(prefix: &str, iface: &str) -> Route {
        Route {
            prefix: c(prefix),
            iface: iface.into(),
        }
    }

    #[test]
    fn proc_tables_parse() {
        assert_eq!(
            parse_ipv4(V4),
            [
                route("0.0.0.0/0", "adm0"),
                route("198.51.100.0/24", "adm0"),
                route("203.0.113.0/24", "prot0"),
            ]
        );
        let v6 = "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     prot0\n\
                  20010db8000000010000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00200200     lo\n";
        assert_eq!(parse_ipv6(v6), [route("2001:db8::/64", "prot0")]);
    }

    #[test]
    fn leaks_are_the_routes_outside_the_protected_interfaces() {
        let prot = ["prot0".to_owned()];
        let routes = parse_ipv4(V4);
        let leak = |p: &str, r: &str, i: &str| UnprotectedRoute {
            prefix: c(p),
            route: c(r),
            iface: i.into(),
        };
        // Routed where it should be.
        assert_eq!(unprotected(&[c("203.0.113.0/24")], &routes, &prot), []);
        // A narrower protected prefix follows its covering route.
        assert_eq!(unprotected(&[c("203.0.113.64/26")], &routes, &prot), []);
        // No specific route: the default route carries it, out of the admin side.
        assert_eq!(
            unprotected(&[c("192.0.2.0/24")], &routes, &prot),
            [leak("192.0.2.0/24", "0.0.0.0/0", "adm0")]
        );
        // Part of a protected prefix split off through another interface.
        let mut split = routes.clone();
        split.push(route("203.0.113.128/25", "adm0"));
        split.push(route("203.0.113.1/32", "lo"));
        assert_eq!(
            unprotected(&[c("203.0.113.0/24")], &split, &prot),
            [leak("203.0.113.0/24", "203.0.113.128/25", "adm0")]
        );
        // No protected interface at all: everything leaks.
        assert_eq!(unprotected(&[c("203.0.113.0/24")], &routes, &[]).len(), 1);
    }
}
