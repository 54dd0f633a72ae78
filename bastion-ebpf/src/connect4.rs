//! cgroup/connect4: IPv4 connect() (TCP, and UDP/ICMP sockets being connected).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{decide, sock_verdict};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let user_ip4 = unsafe { (*ctx.sock_addr).user_ip4 };
    // user_ip4 holds the address in network byte order; its in-memory bytes are the address bytes.
    sock_verdict::for_destination(decide::protected_v4(user_ip4.to_ne_bytes()))
}
