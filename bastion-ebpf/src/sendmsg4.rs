//! cgroup/sendmsg4: IPv4 sendto()/sendmsg() with a destination (unconnected UDP).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use bastion_common::Hook;

use crate::{
    decide,
    sock_verdict::{self, Destination},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let (user_ip4, user_port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    // user_ip4 holds the address in network byte order; its in-memory bytes are the address bytes.
    let addr = user_ip4.to_ne_bytes();
    sock_verdict::for_destination(
        &ctx,
        decide::protected_v4(addr),
        Destination {
            hook: Hook::Sendmsg4,
            family: 4,
            addr: decide::v4_in_16(addr),
            port: sock_verdict::port(user_port),
        },
    )
}
