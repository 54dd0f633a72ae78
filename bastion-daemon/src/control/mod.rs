//! The control API: bastiond serves newline-delimited JSON on a Unix socket (mode 0600); the
//! caller's uid, read with SO_PEERCRED, decides whether it may use it. bastionctl is the client.
//!
//! - [`protocol`]: the request/response types (versioned; both sides share them);
//! - [`server`]: binding the socket safely and serving connections until shutdown;
//! - [`client`]: the blocking client bastionctl uses, with one-line errors for a stopped daemon.

pub mod client;
pub mod protocol;
pub mod server;
