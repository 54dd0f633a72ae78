//! The sock_addr hooks' verdict: a protected destination is refused (EPERM) unless the calling
//! task runs in an allowed cgroup. Every decision on a protected destination is reported as a
//! flow, with the caller's pid and command.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    programs::SockAddrContext,
};
use bastion_common::{Hook, verdict};

use crate::decide;

/// A destination as a sock_addr hook sees it: address (network order, IPv4 in the first four
/// bytes) and port (host order).
pub struct Destination {
    pub hook: Hook,
    pub family: u8,
    pub addr: [u8; 16],
    pub port: u16,
}

#[inline(always)]
pub fn for_destination(ctx: &SockAddrContext, protected: bool, dest: Destination) -> i32 {
    if !protected {
        return verdict::ALLOW;
    }
    // SAFETY: plain helper calls; the context pointer is the kernel's bpf_sock_addr.
    let (cgroup, pid_tgid, proto) = unsafe {
        (
            bpf_get_current_cgroup_id(),
            bpf_get_current_pid_tgid(),
            (*ctx.sock_addr).protocol,
        )
    };
    let ok = decide::allowed(cgroup, pid_tgid);
    let mut event = decide::flow(dest.hook, ok, dest.family, dest.addr, dest.port);
    event.cgroup = cgroup;
    event.pid_tgid = pid_tgid;
    event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    event.proto = proto as u8;
    decide::report(ctx, &event);
    if ok {
        verdict::ALLOW
    } else {
        aya_log_ebpf::info!(
            ctx,
            "{} denied: port {} by pid {} (cgroup {})",
            dest.hook.name(),
            dest.port,
            (pid_tgid >> 32) as u32,
            cgroup
        );
        verdict::DENY
    }
}

/// The port of a `user_port` field: network order in the low 16 bits.
#[inline(always)]
pub fn port(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}
