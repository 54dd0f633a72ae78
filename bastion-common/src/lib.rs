//! Types and constants shared by the eBPF programs (`bastion-ebpf`) and userspace (`bastion-daemon`).
//!
//! Everything here is `no_std`, and every struct crossing the kernel boundary is `#[repr(C)]` with
//! explicit padding, so both sides agree on the layout byte for byte.
#![cfg_attr(not(test), no_std)]

/// Names of the maps as they appear in the eBPF object and under the bpffs pin directory.
///
/// They are part of the pinned, on-disk state of an appliance: renaming one orphans the pin an
/// older bastiond left behind, so treat them like a stored format.
pub mod map_names {
    /// LPM trie of protected IPv4 prefixes (key data: address bytes in network order).
    pub const PROTECTED_V4: &str = "PROTECTED_V4";
    /// LPM trie of protected IPv6 prefixes (key data: address bytes in network order).
    pub const PROTECTED_V6: &str = "PROTECTED_V6";
    /// Hash of cgroup ids (inode numbers of cgroup v2 directories) allowed to reach protected prefixes.
    pub const ALLOWED_CGROUPS: &str = "ALLOWED_CGROUPS";
    /// Hash of process ids (tgids, as the kernel's init pid namespace numbers them) that are
    /// bastiond: a process that joins bastiond's cgroup is still refused at connect/sendmsg.
    pub const ALLOWED_TGIDS: &str = "ALLOWED_TGIDS";
    /// Per-CPU counters, indexed by [`super::Stat`].
    pub const STATS: &str = "STATS";
    /// Ring buffer of [`super::FlowEvent`]s: denied attempts and allowed flows to protected
    /// prefixes. Pinned, so attempts made while bastiond is down wait for the next one.
    pub const FLOWS: &str = "FLOWS";
    /// Per-CPU count of flow events lost because `FLOWS` was full (one slot).
    pub const FLOWS_LOST: &str = "FLOWS_LOST";
    /// Hash of cgroup ids that may use the tcx-bypassing socket options besides bastiond's (the
    /// config's `enforce.packet_socket_cgroups`, e.g. a DHCP client on the admin side).
    pub const PACKET_CGROUPS: &str = "PACKET_CGROUPS";
}

/// Bytes of the flow ring buffer (a power of two, a multiple of the page size).
pub const FLOW_RING_BYTES: u32 = 256 * 1024;

/// Where a flow was judged.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 1,
    Connect6 = 2,
    Sendmsg4 = 3,
    Sendmsg6 = 4,
    /// tcx egress on a protected-side interface: every frame that is not bastiond's (forwarded
    /// packets, other processes' sockets of any kind, broadcast, multicast, link-local).
    Egress = 5,
    /// A socket option refused (cgroup setsockopt hook) because it would put frames on a link
    /// past tcx egress: a packet socket's PACKET_QDISC_BYPASS, any AF_XDP option.
    Setsockopt = 6,
}

impl Hook {
    pub fn from_u8(v: u8) -> Option<Hook> {
        Some(match v {
            1 => Hook::Connect4,
            2 => Hook::Connect6,
            3 => Hook::Sendmsg4,
            4 => Hook::Sendmsg6,
            5 => Hook::Egress,
            6 => Hook::Setsockopt,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::Sendmsg4 => "sendmsg4",
            Hook::Sendmsg6 => "sendmsg6",
            Hook::Egress => "egress",
            Hook::Setsockopt => "setsockopt",
        }
    }
}

/// One flow to a protected destination, as a hook saw it. Addresses are in network byte order
/// (IPv4 in the first 4 bytes), ports in host order. 80 bytes, no implicit padding.
///
/// Two kinds of event carry no addresses (`family` 0): a frame of another protocol dropped at
/// egress (`dport` is its ethertype), and a refused socket option ([`Hook::Setsockopt`]:
/// `sport` is the level, `dport` the option name).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ktime_ns: u64,
    /// The caller's cgroup (sock_addr hooks) or the packet's socket's (egress; 0: forwarded).
    pub cgroup: u64,
    /// `tgid << 32 | tid` of the caller; 0 where no task is known (egress).
    pub pid_tgid: u64,
    pub comm: [u8; 16],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6 (0: no addresses, see above).
    pub family: u8,
    /// IPPROTO_* (TCP 6, UDP 17, ICMP 1, ICMPv6 58).
    pub proto: u8,
    /// A [`Hook`].
    pub hook: u8,
    /// [`FLOW_DENIED`] or [`FLOW_ALLOWED`].
    pub verdict: u8,
}

pub const FLOW_DENIED: u8 = 0;
pub const FLOW_ALLOWED: u8 = 1;

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 80);

/// Capacity of each protected-prefix trie.
pub const MAX_PROTECTED_PREFIXES: u32 = 4096;
/// Capacity of the allowed-cgroup set (bastiond's own cgroup, plus room for a restart into a new one).
pub const MAX_ALLOWED_CGROUPS: u32 = 16;
/// Capacity of the packet-socket allow-list.
pub const MAX_PACKET_CGROUPS: u32 = 64;

/// Socket options that let a socket transmit frames past tcx egress: a packet socket's qdisc
/// bypass (`SOL_PACKET`/`PACKET_QDISC_BYPASS`) and every AF_XDP option (`SOL_XDP`).
pub const SOL_PACKET: i32 = 263;
pub const PACKET_QDISC_BYPASS: i32 = 20;
pub const SOL_XDP: i32 = 283;

/// Value stored for every protected prefix. A value rather than a set so later issues can attach
/// per-subnet rule ids without changing the map's key layout.
pub const PROTECTED: u32 = 1;
/// Value stored for every allowed cgroup.
pub const ALLOWED: u32 = 1;

/// Indices into the per-CPU `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// connect()/sendmsg() to a protected prefix refused.
    Denied = 0,
    /// connect()/sendmsg() to a protected prefix allowed (bastiond's own cgroup).
    Allowed = 1,
}

impl Stat {
    pub const COUNT: u32 = 2;
    pub const ALL: [Stat; Self::COUNT as usize] = [Stat::Denied, Stat::Allowed];
}

/// Return values of cgroup sock_addr programs: 1 lets the call proceed, 0 makes it fail with EPERM.
pub mod verdict {
    pub const ALLOW: i32 = 1;
    pub const DENY: i32 = 0;
}

/// `::ffff:0:0/96`, the IPv4-mapped IPv6 prefix. connect6() to `::ffff:a.b.c.d` reaches the IPv4
/// host a.b.c.d, so the IPv6 hook must check such addresses against the IPv4 set.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// The IPv4 address embedded in an IPv4-mapped IPv6 address, if `addr` is one.
#[inline(always)]
pub fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let mut i = 0;
    while i < 12 {
        if addr[i] != V4_MAPPED_PREFIX[i] {
            return None;
        }
        i += 1;
    }
    Some([addr[12], addr[13], addr[14], addr[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_is_recognised_and_others_are_not() {
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 10];
        assert_eq!(v4_mapped(&mapped), Some([203, 0, 113, 10]));
        let compat = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 203, 0, 113, 10];
        assert_eq!(v4_mapped(&compat), None);
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        assert_eq!(v4_mapped(&v6), None);
    }
}
