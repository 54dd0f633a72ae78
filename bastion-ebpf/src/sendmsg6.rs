//! cgroup/sendmsg6: IPv6 sendto()/sendmsg() with a destination, IPv4-mapped destinations included.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use bastion_common::Hook;

use crate::{
    decide,
    sock_verdict::{self, Destination},
};

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let (user_ip6, user_port) = unsafe { ((*ctx.sock_addr).user_ip6, (*ctx.sock_addr).user_port) };
    let addr = decide::ip6_bytes(user_ip6);
    sock_verdict::for_destination(
        &ctx,
        decide::protected_v6(addr),
        Destination {
            hook: Hook::Sendmsg6,
            family: 6,
            addr,
            port: sock_verdict::port(user_port),
        },
    )
}
