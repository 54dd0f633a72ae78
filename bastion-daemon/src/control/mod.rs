//! The control API, bastiond's side: newline-delimited JSON on a Unix socket (mode 0600); the
//! caller's uid, read with SO_PEERCRED, decides whether it may use it. The wire types are
//! `bastion_core::protocol`; the client is the `bastionctl` crate.
//!
//! - [`server`]: binding the socket safely and serving connections until shutdown.

#![forbid(unsafe_code)]

pub mod server;
