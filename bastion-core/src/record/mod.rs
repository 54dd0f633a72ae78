//! The record formats: every event of every channel, timed and framed, batched into zstd
//! blocks (the daemon's recorder writes them to the store off the forwarding path).
//!
//! - [`frame`]: the binary frame format (a stored format, versioned);
//! - [`block`]: batches of frames, compressed;
//! - [`commands`]: command lines of interactive shells, read off a terminal emulator;
//! - [`sftp`]: SFTP operations (files read and written, with sizes) followed in a channel's bytes;
//! - [`scp`]: files moved by the legacy scp protocol, followed in an exec channel's bytes;
//! - [`files`]: files that crossed a channel and their captured contents (`File`, `FileData`);
//! - [`text`]: output as plain text lines, for search;
//! - [`export`]: asciicast v2 and JSON renderings of a recorded session;
//! - [`sealed`]: the self-contained sealed file of one session (`bastionctl session export --sealed`);

pub mod block;
pub mod commands;
pub mod export;
pub mod files;
pub mod frame;
pub mod scp;
pub mod sealed;
pub mod sftp;
pub mod text;

pub use frame::{Frame, Kind};
