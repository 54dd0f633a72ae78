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
    /// Per-CPU counters, indexed by [`super::Stat`].
    pub const STATS: &str = "STATS";
}

/// Capacity of each protected-prefix trie.
pub const MAX_PROTECTED_PREFIXES: u32 = 4096;
/// Capacity of the allowed-cgroup set (bastiond's own cgroup, plus room for a restart into a new one).
pub const MAX_ALLOWED_CGROUPS: u32 = 16;

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
