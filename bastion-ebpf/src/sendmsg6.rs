//! cgroup/sendmsg6: IPv6 sendto()/sendmsg() with a destination, IPv4-mapped destinations included.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{decide, sock_verdict};

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let user_ip6 = unsafe { (*ctx.sock_addr).user_ip6 };
    sock_verdict::for_destination(decide::protected_v6(decide::ip6_bytes(user_ip6)))
}
