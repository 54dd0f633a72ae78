//! bastion-core: everything about bastion that is a value or a pure function. No tokio, sled,
//! aya or sockets: the daemon's IO parts, bastionctl and the offline verifier all build on it,
//! and nothing here can reach back into them.
//!
//! Layout (see ARCHITECTURE.md for the bird's-eye view):
//! - [`archive`]: the archive's key layout and object formats (sessions, audit chunks);
//! - [`audit`]: the typed audit event stream (product output, not logs);
//! - [`audit_flood`]: the budget for events unauthenticated sources cause;
//! - [`config`]: the typed TOML configuration and its one-line, file:line-naming errors;
//! - [`clock`]: now, and Unix seconds as UTC dates;
//! - [`cidr`]: protected-prefix parsing and the bytes the eBPF tries are keyed by;
//! - [`flow`]: flows to protected prefixes as audited (decoded, folded per window, filtered);
//! - [`integrity`]: the one owner of hash chains, seals and the canonical bytes they cover;
//! - [`keys`]: secrets that never print, sealed secrets, OpenSSH public-key helpers;
//! - [`policy`]: the access model and its evaluation;
//! - [`protocol`]: the control API's wire types (versioned apart from the stored formats);
//! - [`record`]: the record formats (frames, zstd blocks, commands, SFTP, text, exports, sealed files);
//! - [`report`]: the compliance report's numbers, from sessions, events, commands, files;
//! - [`session`]: session metadata, filters and command types;
//! - [`syslog`]: audit events as RFC 5424 messages, octet-counted;
//! - [`ticket`]: access requests and held commands, and the rules for deciding them.

#![forbid(unsafe_code)]

pub mod archive;
pub mod audit;
pub mod audit_flood;
pub mod cidr;
pub mod clock;
pub mod config;
pub mod flow;
pub mod host;
pub mod integrity;
pub mod keys;
pub mod policy;
pub mod protocol;
pub mod record;
pub mod report;
pub mod session;
pub mod syslog;
pub mod ticket;
pub mod totp;

/// The version every component reports (`bastionctl status`, `bastiond --version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
