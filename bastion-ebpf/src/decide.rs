//! The rules every hook applies: is a destination protected, and is a cgroup allowed to reach
//! protected destinations (only bastiond's)? Everything else is none of our business here.

use aya_ebpf::{EbpfContext, maps::lpm_trie::Key};
use bastion_common::{FlowEvent, Hook, Stat, v4_mapped};

use crate::maps::{
    ALLOWED_CGROUPS, ALLOWED_TGIDS, FLOWS, FLOWS_LOST, PROTECTED_V4, PROTECTED_V6, STATS,
};

/// Is the IPv4 destination (address bytes in network order) protected?
#[inline(always)]
pub fn protected_v4(addr: [u8; 4]) -> bool {
    PROTECTED_V4.get(Key::new(32, addr)).is_some()
}

/// Is the IPv6 destination protected? An IPv4-mapped address reaches an IPv4 host, so it is
/// judged by the IPv4 set: otherwise `::ffff:a.b.c.d` is a bypass.
#[inline(always)]
pub fn protected_v6(addr: [u8; 16]) -> bool {
    match v4_mapped(&addr) {
        Some(mapped) => protected_v4(mapped),
        None => PROTECTED_V6.get(Key::new(128, addr)).is_some(),
    }
}

/// Is `cgroup` bastiond's (allowed to reach the protected side)?
#[inline(always)]
pub fn is_allowed(cgroup: u64) -> bool {
    // SAFETY: the value is only tested for presence, never read through the reference.
    unsafe { ALLOWED_CGROUPS.get(cgroup) }.is_some()
}

/// Is the calling task bastiond: bastiond's cgroup *and* bastiond's process? The cgroup
/// alone is not enough where the task is known: root can write any pid into bastiond's cgroup.
#[inline(always)]
pub fn is_bastiond(cgroup: u64, pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the value is only tested for presence, never read through the reference.
    is_allowed(cgroup) && unsafe { ALLOWED_TGIDS.get(tgid) }.is_some()
}

/// May the calling task reach protected destinations? Counts the answer.
#[inline(always)]
pub fn allowed(cgroup: u64, pid_tgid: u64) -> bool {
    let ok = is_bastiond(cgroup, pid_tgid);
    count(if ok { Stat::Allowed } else { Stat::Denied });
    ok
}

/// Counts a refusal decided without [`allowed`] (a dropped frame, a refused socket).
#[inline(always)]
pub fn count_denied() {
    count(Stat::Denied);
}

/// Hands a flow to userspace. A full ring buffer loses the event, but never silently: the loss
/// is counted (userspace audits the count) and logged.
#[inline(always)]
pub fn report<C: EbpfContext>(ctx: &C, event: &FlowEvent) {
    if FLOWS.output::<FlowEvent>(event, 0).is_err() {
        if let Some(lost) = FLOWS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, valid for this program run (as in `count`).
            unsafe { *lost += 1 };
        }
        aya_log_ebpf::warn!(ctx, "flow ring buffer full: a flow event was lost");
    }
}

/// An event for a flow to `daddr:dport` seen at `hook`, allowed or not.
#[inline(always)]
pub fn flow(hook: Hook, allowed: bool, family: u8, daddr: [u8; 16], dport: u16) -> FlowEvent {
    FlowEvent {
        // SAFETY: a plain helper call with no arguments.
        ktime_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        cgroup: 0,
        pid_tgid: 0,
        comm: [0; 16],
        saddr: [0; 16],
        daddr,
        sport: 0,
        dport,
        family,
        proto: 0,
        hook: hook as u8,
        verdict: if allowed {
            bastion_common::FLOW_ALLOWED
        } else {
            bastion_common::FLOW_DENIED
        },
    }
}

/// IPv4 address bytes in the first four of an event's sixteen.
#[inline(always)]
pub fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
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
