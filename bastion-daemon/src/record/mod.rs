//! Session recording: every event of every channel, timed, framed, batched into zstd blocks and
//! written to the store off the forwarding path.
//!
//! - [`frame`]: the binary frame format (a stored format, versioned);
//! - [`block`]: batches of frames, compressed;
//! - [`recorder`]: the per-session writer task and the handle the proxy records through;
//! - [`commands`]: command lines of interactive shells, read off a terminal emulator;
//! - [`sftp`]: SFTP operations (files read and written, with sizes) followed in a channel's bytes;
//! - [`text`]: output as plain text lines, for search;
//! - [`export`]: asciicast v2 and JSON renderings of a recorded session.

pub mod base64;
pub mod block;
pub mod commands;
pub mod export;
pub mod frame;
pub mod integrity;
pub mod recorder;
pub mod sealed;
pub mod sftp;
pub mod text;

pub use frame::{Frame, Kind};
pub use recorder::Recorder;
