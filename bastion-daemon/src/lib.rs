//! bastion: the daemon (`bastiond`) and admin CLI (`bastionctl`) of a transparent SSH auditing appliance.
//!
//! Layout (see ARCHITECTURE.md for the bird's-eye view):
//! - [`audit`]: the typed audit event stream (product output, not logs);
//! - [`config`]: the typed TOML configuration and its one-line, file:line-naming errors;
//! - [`cidr`]: protected-prefix parsing and the bytes the eBPF tries are keyed by;
//! - [`session`]: session metadata, filters and command types (pure; `store` persists them);
//! - [`store`]: the sled database, its schema version and migrations;
//! - [`enforce`]: loading, filling, attaching and pinning the eBPF enforcement programs;
//! - [`flow`]: flows to protected prefixes as audited (decoded, folded per window, filtered);
//! - [`keys`]: the appliance host key and user CA, and per-session upstream certificates;
//! - [`limits`]: process limits raised at start (open files);
//! - [`policy`]: the access model and its pure evaluation;
//! - [`proxy`]: the SSH proxy (listener, handler, session actor, channel pumps, upstream);
//! - [`record`]: session recording (frames, zstd blocks, the writer task, exports);
//! - [`control`]: the Unix-socket control API (server side in bastiond, client side in bastionctl);
//! - [`daemon`]: `run(config, shutdown)`, which wires the parts together.

pub mod audit;
pub mod cidr;
pub mod config;
pub mod control;
pub mod daemon;
pub mod enforce;
pub mod flow;
pub mod keys;
pub mod limits;
pub mod policy;
pub mod proxy;
pub mod record;
pub mod session;
pub mod store;

/// The version every component reports (`bastionctl status`, `bastiond --version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
