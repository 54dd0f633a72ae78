//! bastion-archive: the archive in S3-compatible object storage, from both ends.
//!
//! - [`remote`]: the S3 client (object_store): settings, credentials file, puts (single and
//!   multipart, with the upload id kept so an interrupted upload can be aborted), streaming
//!   reads, listing.
//! - [`verify`]: an appliance's archive checked with only its audit public key: every session
//!   object read whole and judged, the audit chunks walked, the two held against each other.
//! - [`search`]: commands across archived sessions of one or more appliances.
//!
//! bastiond uploads through it (`bastion-daemon/src/daemon/archive.rs`); bastionctl reads
//! through it on any machine with read credentials, with no bastiond and no store.

#![forbid(unsafe_code)]

pub mod credentials;
pub mod remote;
pub mod search;
pub mod verify;

pub use remote::{Remote, RemoteError, Settings};
