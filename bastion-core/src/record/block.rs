//! Blocks: frames batched and zstd-compressed, the unit written to the store.
//! Stored value: `FRAME_VERSION u8 | zstd(frames...)`.

use super::frame::{FRAME_VERSION, Frame, FrameError, decode_all};

/// zstd level: fast enough to stay off the forwarding path's critical budget, and terminal
/// output compresses well even at low levels.
const ZSTD_LEVEL: i32 = 3;
/// Upper bound on a decompressed block (hostile or corrupt input cannot make us allocate more).
pub const MAX_BLOCK_RAW: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("empty block")]
    Empty,
    #[error("block format version {0} is not supported (this bastiond reads {FRAME_VERSION})")]
    Version(u8),
    #[error("block decompression failed: {0}")]
    Zstd(std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

pub fn compress(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    Compressor::new()?.compress(raw)
}

/// A compressor kept for many blocks (one per recorded session): zstd's tables are allocated
/// once, not per block, so recording churns no large allocations and the allocator's heaps do
/// not grow with the volume recorded. Same output as [`compress`].
pub struct Compressor(zstd::bulk::Compressor<'static>);

impl Compressor {
    pub fn new() -> std::io::Result<Compressor> {
        Ok(Compressor(zstd::bulk::Compressor::new(ZSTD_LEVEL)?))
    }

    pub fn compress(&mut self, raw: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.compress_into(raw, &mut out)?;
        Ok(out)
    }

    /// Compresses `raw` into `out` (cleared first), reusing its allocation.
    pub fn compress_into(&mut self, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()) + 1);
        out.push(FRAME_VERSION);
        // The body goes after the version byte.
        let mut cursor = std::io::Cursor::new(std::mem::take(out));
        cursor.set_position(1);
        let written = self.0.compress_to_buffer(raw, &mut cursor);
        *out = cursor.into_inner();
        written.map(drop)
    }
}

pub fn decompress(stored: &[u8]) -> Result<Vec<Frame>, BlockError> {
    let (&version, body) = stored.split_first().ok_or(BlockError::Empty)?;
    if version != FRAME_VERSION {
        return Err(BlockError::Version(version));
    }
    let raw = zstd::bulk::decompress(body, MAX_BLOCK_RAW).map_err(BlockError::Zstd)?;
    Ok(decode_all(&raw)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::frame::Kind;

    #[test]
    fn compresses_and_round_trips() {
        let mut raw = Vec::new();
        for i in 0..1000u64 {
            Frame {
                kind: Kind::Output,
                channel: 0,
                t_micros: i,
                data: bytes::Bytes::from_static(
                    b"drwxr-xr-x 2 root root 4096 Nov 27 10:00 etc\r\n",
                ),
            }
            .encode(&mut raw);
        }
        let stored = compress(&raw).unwrap();
        // A kept compressor gives the same bytes, block after block.
        let mut kept = Compressor::new().unwrap();
        assert_eq!(kept.compress(&raw).unwrap(), stored);
        let mut out = b"old contents".to_vec();
        kept.compress_into(&raw, &mut out).unwrap();
        assert_eq!(out, stored);
        assert!(
            stored.len() * 10 < raw.len(),
            "{} vs {}",
            stored.len(),
            raw.len()
        );
        assert_eq!(decompress(&stored).unwrap().len(), 1000);
        let mut wrong = stored.clone();
        wrong[0] = 9;
        assert!(matches!(decompress(&wrong), Err(BlockError::Version(9))));
        assert!(decompress(&stored[..stored.len() / 2]).is_err());
    }
}
