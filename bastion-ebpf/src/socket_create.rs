//! lsm_cgroup/socket_create: packet sockets (AF_PACKET, and AF_INET/SOCK_PACKET, which the kernel
//! turns into one before this hook) and AF_XDP sockets are refused (EPERM) to every cgroup below
//! the attach point but bastiond's and the configured allow-list. Both can put frames on a link
//! without passing tcx egress (PACKET_QDISC_BYPASS, XDP transmit), so the egress program cannot
//! be the only guard against them. Sockets the kernel creates for itself are not judged.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::lsm_cgroup,
    programs::LsmContext,
};
use bastion_common::{AF_PACKET, AF_XDP, Hook, verdict};

use crate::{decide, maps::PACKET_CGROUPS};

#[lsm_cgroup(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    // LSM_HOOK(int, 0, socket_create, int family, int type, int protocol, int kern)
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    if kern != 0 || (family != i32::from(AF_PACKET) && family != i32::from(AF_XDP)) {
        return verdict::ALLOW;
    }
    // SAFETY: plain helper calls with no arguments.
    let (cgroup, pid_tgid) = unsafe { (bpf_get_current_cgroup_id(), bpf_get_current_pid_tgid()) };
    // SAFETY: the value is only tested for presence.
    if decide::is_allowed(cgroup) || unsafe { PACKET_CGROUPS.get(cgroup) }.is_some() {
        return verdict::ALLOW;
    }
    let ty: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let mut event = decide::flow(Hook::SocketCreate, false, 0, [0; 16], ty as u16);
    event.proto = family as u8;
    event.sport = protocol as u16;
    event.cgroup = cgroup;
    event.pid_tgid = pid_tgid;
    event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    decide::count_denied();
    decide::report(&ctx, &event);
    verdict::DENY
}
