//! The per-session recorder: the handle the proxy records through and the writer task that
//! batches frames into zstd blocks and stores them off the forwarding path. The formats
//! themselves (frames, blocks, commands, exports) are in `bastion_core::record`.

pub mod recorder;

pub use recorder::Recorder;
