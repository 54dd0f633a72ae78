//! bastion: the IO side of the appliance — the daemon (`bastiond`) and the admin CLI
//! (`bastionctl`). Values and pure functions (policy, record formats, integrity, audit types,
//! config, the control protocol) live in `bastion-core`.
//!
//! Layout (see ARCHITECTURE.md for the bird's-eye view):
//! - [`store`]: the sled database, its schema version and migrations;
//! - [`enforce`]: loading, filling, attaching and pinning the eBPF enforcement programs;
//! - [`keys`]: the appliance's own keys (loaded or generated 0600), certificates it signs;
//! - [`limits`]: process limits raised at start (open files);
//! - [`proxy`]: the SSH proxy (listener, handler, session actor, channel pumps, upstream);
//! - [`record`]: the per-session recorder task (the formats it writes are in `bastion-core`);
//! - [`control`]: the Unix-socket control API (server side in bastiond, client side in bastionctl);
//! - [`daemon`]: `run(config, shutdown)`, which wires the parts together.

pub mod control;
pub mod daemon;
pub mod enforce;
pub mod keys;
pub mod limits;
pub mod proxy;
pub mod record;
pub mod store;

pub use bastion_core::VERSION;
