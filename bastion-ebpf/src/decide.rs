//! The single verdict shared by every hook: a destination inside a protected prefix is reachable
//! only from an allowed cgroup (bastiond's own). Everything else is none of our business here.

use aya_ebpf::{helpers::bpf_get_current_cgroup_id, maps::lpm_trie::Key};
use bastion_common::{Stat, v4_mapped, verdict};

use crate::maps::{ALLOWED_CGROUPS, PROTECTED_V4, PROTECTED_V6, STATS};

/// Verdict for an IPv4 destination (address bytes in network order).
#[inline(always)]
pub fn v4(addr: [u8; 4]) -> i32 {
    if PROTECTED_V4.get(Key::new(32, addr)).is_none() {
        return verdict::ALLOW;
    }
    caller_verdict()
}

/// Verdict for an IPv6 destination (address bytes in network order). An IPv4-mapped address
/// reaches an IPv4 host, so it is judged by the IPv4 set: otherwise `::ffff:a.b.c.d` is a bypass.
#[inline(always)]
pub fn v6(addr: [u8; 16]) -> i32 {
    if let Some(mapped) = v4_mapped(&addr) {
        return v4(mapped);
    }
    if PROTECTED_V6.get(Key::new(128, addr)).is_none() {
        return verdict::ALLOW;
    }
    caller_verdict()
}

#[inline(always)]
fn caller_verdict() -> i32 {
    // SAFETY: a plain helper call with no arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is only tested for presence, never read through the reference.
    if unsafe { ALLOWED_CGROUPS.get(cgroup) }.is_some() {
        count(Stat::Allowed);
        verdict::ALLOW
    } else {
        count(Stat::Denied);
        verdict::DENY
    }
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it concurrently; the pointer comes from the
        // map lookup and is valid for this program run.
        unsafe { *counter += 1 };
    }
}

/// The address bytes of a `user_ip6` field: four 32-bit words, each in network byte order, so
/// their in-memory bytes concatenated are the address.
#[inline(always)]
pub fn ip6_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    addr
}
