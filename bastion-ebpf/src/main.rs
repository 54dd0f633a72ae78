//! bastion's eBPF programs, one program per module.
//!
//! Layout:
//! - `maps`: the maps shared by all programs (protected prefixes, allowed cgroups, counters);
//! - `decide`: the rules every hook applies: "is this destination protected?" and "is this cgroup
//!   bastiond's?";
//! - `sock_verdict`: the cgroup sock_addr hooks' verdict (the caller's cgroup);
//! - `connect4`, `connect6`, `sendmsg4`, `sendmsg6`: thin cgroup sock_addr hooks that extract the
//!   destination and ask `sock_verdict`;
//! - `egress`: the tcx egress classifier on protected-side interfaces: default deny, every frame
//!   that is not bastiond's (by its socket's cgroup; forwarded packets have none) is dropped;
//! - `setsockopt`: refuses the socket options that send frames past tcx (packet sockets'
//!   qdisc bypass, AF_XDP).
//!
//! Built for `bpfel-unknown-none` by aya-build from bastion-daemon's build.rs. On the host the crate
//! compiles to a stub binary so `cargo clippy --workspace` checks it too.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod connect4;
mod connect6;
mod decide;
mod egress;
mod maps;
mod sendmsg4;
mod sendmsg6;
mod setsockopt;
mod sock_verdict;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves there is no reachable panic; this is never called.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds only exist so the workspace builds and lints as a whole.
}
