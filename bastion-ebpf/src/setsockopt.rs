//! cgroup/setsockopt: the socket options that let a frame onto a link past tcx egress are
//! refused (EPERM) to every cgroup below the attach point but bastiond's and the configured
//! allow-list:
//! - `PACKET_QDISC_BYPASS` on a packet socket (its frames go straight to the driver,
//!   `dev_direct_xmit`, skipping tcx). Without it a packet socket's frames pass tcx egress,
//!   where the default-deny program drops them like any other socket's;
//! - every `SOL_XDP` option: an AF_XDP socket cannot transmit without registering its UMEM and
//!   rings, which are socket options.
//!
//! A cgroup LSM hook refusing the sockets themselves would be the wider net, but LSM programs
//! need the `bpf` LSM and BPF trampolines, which not every kernel bastion meets has enabled;
//! this hook needs neither.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::cgroup_sockopt,
    programs::SockoptContext,
};
use bastion_common::{Hook, PACKET_QDISC_BYPASS, SOL_PACKET, SOL_XDP, verdict};

use crate::{decide, maps::PACKET_CGROUPS};

#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the kernel hands every sockopt program a valid bpf_sockopt.
    let (level, optname) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    let bypass = (level == SOL_PACKET && optname == PACKET_QDISC_BYPASS) || level == SOL_XDP;
    if !bypass {
        return verdict::ALLOW;
    }
    // SAFETY: plain helper calls with no arguments.
    let (cgroup, pid_tgid) = unsafe { (bpf_get_current_cgroup_id(), bpf_get_current_pid_tgid()) };
    // SAFETY: the value is only tested for presence.
    if decide::is_bastiond(cgroup, pid_tgid) || unsafe { PACKET_CGROUPS.get(cgroup) }.is_some() {
        return verdict::ALLOW;
    }
    let mut event = decide::flow(Hook::Setsockopt, false, 0, [0; 16], optname as u16);
    event.sport = level as u16;
    event.cgroup = cgroup;
    event.pid_tgid = pid_tgid;
    event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    decide::count_denied();
    decide::report(&ctx, &event);
    verdict::DENY
}
