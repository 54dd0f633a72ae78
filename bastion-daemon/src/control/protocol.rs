//! Control API messages. One request and one response per connection, each a single JSON line.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::enforce::EnforceStatus;

/// Bumped on any incompatible change; a mismatch is answered with a clear error.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line the server reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Version, uptime, store and enforcement state.
    Status,
    /// bastiond connects to `addr` from its own cgroup and reports the first line the peer sends
    /// (the SSH banner of an sshd): proof that the audited path reaches a target.
    Probe { addr: SocketAddr },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Probe(ProbeResult),
    Error { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub store: StoreStatus,
    pub enforcement: EnforceStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStatus {
    pub path: PathBuf,
    pub schema_version: u32,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    pub addr: SocketAddr,
    /// The first line the peer sent, without its line ending.
    pub banner: String,
    pub connect_micros: u64,
}
