//! Flows as audited: one event per flow (or burst of identical ones) to a protected prefix, decoded
//! from the hooks' `FlowEvent`s, folded per window, and filtered for listings. Pure: the kernel
//! side (ring buffer, lost counter, the reader task) is `enforce::flows`.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use bastion_common::{FLOW_ALLOWED, FlowEvent, Hook, PACKET_QDISC_BYPASS, SOL_PACKET, SOL_XDP};
use serde::{Deserialize, Serialize};

const MAX_PER_WINDOW: usize = 1024;

/// One flow (or a burst of identical ones) as audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// When the first of them was seen (µs since the epoch).
    pub first_micros: u64,
    pub hook: String,
    pub allowed: bool,
    /// tcp, udp, icmp, icmpv6, or the protocol number.
    pub proto: String,
    pub src: Option<IpAddr>,
    pub sport: u16,
    pub dst: Option<IpAddr>,
    pub dport: u16,
    /// cgroup id (0 for a forwarded packet).
    pub cgroup: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// How many identical attempts this event stands for.
    pub count: u64,
    /// For a connection through bastiond's TCP relay: what was decided and carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<Relayed>,
}

/// A raw TCP connection through the relay, as audited when it ends (or is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relayed {
    pub grant: Option<String>,
    /// The grant's subject (`user:alice`, `group:ops`).
    pub subject: Option<String>,
    /// Why it was refused or failed.
    pub reason: Option<String>,
    /// Client to target, and target to client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// The recorded payload, when the grant captures it.
    pub session: Option<u64>,
}

impl Flow {
    /// `wall_minus_mono_ns`: the realtime clock minus the monotonic clock, to date kernel times.
    pub fn from_event(e: &FlowEvent, wall_minus_mono_ns: i128) -> Flow {
        let addr = |a: [u8; 16]| match e.family {
            4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(a))),
            _ => None,
        };
        let src = addr(e.saddr).filter(|a| !a.is_unspecified());
        let comm_len = e.comm.iter().position(|b| *b == 0).unwrap_or(e.comm.len());
        let wall_ns = i128::from(e.ktime_ns) + wall_minus_mono_ns;
        Flow {
            first_micros: u64::try_from(wall_ns / 1000).unwrap_or(0),
            hook: Hook::from_u8(e.hook).map_or("unknown", Hook::name).into(),
            allowed: e.verdict == FLOW_ALLOWED,
            proto: proto(e),
            src,
            sport: e.sport,
            dst: addr(e.daddr),
            dport: e.dport,
            cgroup: e.cgroup,
            pid: (e.pid_tgid != 0).then_some((e.pid_tgid >> 32) as u32),
            comm: (comm_len > 0).then(|| String::from_utf8_lossy(&e.comm[..comm_len]).into_owned()),
            count: 1,
            relay: None,
        }
    }

    /// Identical attempts share a key; the source port is left out (each retry picks another).
    fn key(&self) -> FlowKey {
        (
            self.hook.clone(),
            self.allowed,
            self.proto.clone(),
            self.src,
            self.dst,
            self.dport,
            self.cgroup,
            self.pid,
        )
    }
}

/// What a flow event carried: an IP protocol, or for events without addresses the frame's
/// ethertype (egress) or the refused socket option (setsockopt).
fn proto(e: &FlowEvent) -> String {
    if e.hook == Hook::Setsockopt as u8 {
        return match (i32::from(e.sport), i32::from(e.dport)) {
            (SOL_PACKET, PACKET_QDISC_BYPASS) => "packet_qdisc_bypass".into(),
            (SOL_XDP, _) => "af_xdp".into(),
            (level, name) => format!("sockopt {level}/{name}"),
        };
    }
    if e.family == 0 {
        return match e.dport {
            0x8100 | 0x88a8 => "vlan".into(),
            ethertype => format!("ethertype 0x{ethertype:04x}"),
        };
    }
    match e.proto {
        1 => "icmp".into(),
        2 => "igmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Which flows a listing shows. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    pub allowed: Option<bool>,
    pub hook: Option<String>,
    pub proto: Option<String>,
    /// Destination address (an IPv4-mapped IPv6 destination matches its IPv4 address).
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
    /// Flows first seen at or after this instant (µs since the epoch).
    pub since_micros: Option<u64>,
}

impl FlowFilter {
    pub fn matches(&self, f: &Flow) -> bool {
        self.allowed.is_none_or(|a| a == f.allowed)
            && self.hook.as_ref().is_none_or(|h| *h == f.hook)
            && self.proto.as_ref().is_none_or(|p| *p == f.proto)
            && self
                .dst
                .is_none_or(|d| Some(d.to_canonical()) == f.dst.map(|a| a.to_canonical()))
            && self.dport.is_none_or(|p| p == f.dport)
            && self.since_micros.is_none_or(|t| f.first_micros >= t)
    }
}

/// hook, allowed, proto, src, dst, dport, cgroup, pid.
type FlowKey = (
    String,
    bool,
    String,
    Option<IpAddr>,
    Option<IpAddr>,
    u16,
    u64,
    Option<u32>,
);

/// One window's flows, repeats folded. Pure bookkeeping.
#[derive(Default)]
pub struct Window {
    flows: Vec<Flow>,
    index: HashMap<FlowKey, usize>,
    /// Distinct flows beyond `MAX_PER_WINDOW`, only counted.
    pub suppressed: u64,
}

impl Window {
    pub fn add(&mut self, flow: Flow) {
        let key = flow.key();
        if let Some(&i) = self.index.get(&key) {
            self.flows[i].count += 1;
        } else if self.flows.len() < MAX_PER_WINDOW {
            self.index.insert(key, self.flows.len());
            self.flows.push(flow);
        } else {
            self.suppressed += 1;
        }
    }

    pub fn take(&mut self) -> (Vec<Flow>, u64) {
        self.index.clear();
        (
            std::mem::take(&mut self.flows),
            std::mem::take(&mut self.suppressed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(hook: Hook, verdict: u8, proto: u8, dport: u16, sport: u16) -> FlowEvent {
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[203, 0, 113, 10]);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        FlowEvent {
            ktime_ns: 5_000_000_000,
            cgroup: 42,
            pid_tgid: (1234u64 << 32) | 1235,
            comm,
            saddr: [0; 16],
            daddr,
            sport,
            dport,
            family: 4,
            proto,
            hook: hook as u8,
            verdict,
        }
    }

    #[test]
    fn events_decode_into_flows() {
        let f = Flow::from_event(
            &event(Hook::Connect4, 0, 6, 80, 0),
            1_000_000_000_000_000_000,
        );
        assert_eq!(f.hook, "connect4");
        assert!(!f.allowed);
        assert_eq!(f.proto, "tcp");
        assert_eq!(f.dst, Some("203.0.113.10".parse().unwrap()));
        assert_eq!(f.src, None, "unbound source is not shown as 0.0.0.0");
        assert_eq!(
            (f.dport, f.pid, f.comm.as_deref()),
            (80, Some(1234), Some("curl"))
        );
        assert_eq!(f.first_micros, 1_000_000_005_000_000);
        let mut forwarded = event(Hook::Egress, 0, 1, 0, 0);
        forwarded.pid_tgid = 0;
        forwarded.comm = [0; 16];
        let f = Flow::from_event(&forwarded, 0);
        assert_eq!((f.proto.as_str(), f.pid, f.comm), ("icmp", None, None));
    }

    #[test]
    fn events_without_addresses_name_what_was_refused() {
        let mut frame = event(Hook::Egress, 0, 0, 0x88cc, 0);
        frame.family = 0;
        let f = Flow::from_event(&frame, 0);
        assert_eq!((f.proto.as_str(), f.dst), ("ethertype 0x88cc", None));
        frame.dport = 0x8100;
        assert_eq!(Flow::from_event(&frame, 0).proto, "vlan");
        let mut opt = event(Hook::Setsockopt, 0, 0, PACKET_QDISC_BYPASS as u16, 0);
        opt.family = 0;
        opt.sport = SOL_PACKET as u16;
        let f = Flow::from_event(&opt, 0);
        assert_eq!(
            (f.hook.as_str(), f.proto.as_str(), f.pid),
            ("setsockopt", "packet_qdisc_bypass", Some(1234))
        );
        opt.sport = SOL_XDP as u16;
        opt.dport = 4;
        assert_eq!(Flow::from_event(&opt, 0).proto, "af_xdp");
    }

    #[test]
    fn repeats_fold_and_floods_are_counted_not_stored() {
        let mut w = Window::default();
        for sport in 0..5 {
            w.add(Flow::from_event(
                &event(Hook::Connect4, 0, 6, 80, 40000 + sport),
                0,
            ));
        }
        w.add(Flow::from_event(&event(Hook::Connect4, 1, 6, 80, 1), 0));
        let (flows, suppressed) = w.take();
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].count, 5);
        assert_eq!(suppressed, 0);
        for port in 0..(MAX_PER_WINDOW as u16 + 10) {
            w.add(Flow::from_event(&event(Hook::Egress, 0, 17, port, 0), 0));
        }
        let (flows, suppressed) = w.take();
        assert_eq!((flows.len(), suppressed), (MAX_PER_WINDOW, 10));
        assert_eq!(w.take().0.len(), 0, "a window starts empty");
    }

    #[test]
    fn filters_match_every_field_set() {
        let f = Flow::from_event(&event(Hook::Connect4, 0, 6, 80, 0), 0);
        let all = FlowFilter::default();
        assert!(all.matches(&f));
        let denied_tcp80 = FlowFilter {
            allowed: Some(false),
            proto: Some("tcp".into()),
            dport: Some(80),
            dst: Some("203.0.113.10".parse().unwrap()),
            ..Default::default()
        };
        assert!(denied_tcp80.matches(&f));
        let mut mapped = event(Hook::Connect6, 0, 6, 80, 0);
        mapped.family = 6;
        mapped.daddr = "::ffff:203.0.113.10".parse::<Ipv6Addr>().unwrap().octets();
        assert!(denied_tcp80.matches(&Flow::from_event(&mapped, 0)));
        for other in [
            FlowFilter {
                allowed: Some(true),
                ..Default::default()
            },
            FlowFilter {
                hook: Some("egress".into()),
                ..Default::default()
            },
            FlowFilter {
                dport: Some(22),
                ..Default::default()
            },
            FlowFilter {
                since_micros: Some(f.first_micros + 1),
                ..Default::default()
            },
        ] {
            assert!(!other.matches(&f), "{other:?}");
        }
    }
}
