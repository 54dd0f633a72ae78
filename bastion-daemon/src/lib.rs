//! bastion: the daemon side of the appliance, wiring the crates below it together. Values and
//! pure functions live in `bastion-core`; the store, the recorder and the SSH proxy are the
//! crates `bastion-store`, `bastion-record` and `bastion-proxy` (see ARCHITECTURE.md).
//!
//! - [`enforce`]: loading, filling, attaching and pinning the eBPF enforcement programs;
//! - [`limits`]: process limits raised at start (open files);
//! - [`allocator`]: freed memory returned to the kernel every few seconds;
//! - [`control`]: the Unix-socket control API, bastiond's side;
//! - [`notify`]: telling systemd bastiond is ready (`Type=notify`);
//! - [`sockinfo`]: the unacknowledged bytes of a TCP socket (for the syslog forwarder);
//! - [`daemon`]: `run(config, shutdown)`, which wires the parts together.
//!
//! `unsafe` is fenced: only `enforce` (the bpf(2), netlink and ring-buffer calls aya and nftnl
//! leave to us), `allocator` (`malloc_trim`), `sockinfo` (one ioctl) and the binary's `setns` use it; the other modules
//! forbid it.

pub mod allocator;
pub mod control;
pub mod daemon;
pub mod enforce;
pub mod limits;
pub mod notify;
pub mod sockinfo;

pub use bastion_core::VERSION;
