//! One finished session as one archived object, written and read as a stream so that a
//! recording of any size is archived, verified, replayed and exported in bounded memory:
//!
//! ```text
//! "BSTARC01"                        magic (format version 1)
//! u32 BE length, JSON Header        appliance, audit key, session metadata (with its seal),
//!                                   the session's command index
//! per block: u32 BE n, u32 BE len, u8 chained, [32] chain value (if chained), len bytes
//! u32 BE 0xFFFF_FFFF                end (a truncated object has none)
//! ```
//! Blocks are the store's own (zstd batches of frames) with the chain value kept after each,
//! so the object verifies exactly as the store does: the chain from the blocks, the seal over
//! the metadata, with the audit key given by the auditor, never the one the header names.

use std::io::Read;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::{
    integrity::{self, Hash, SessionIntegrity, StoredBlock, Walk},
    session::{CommandHit, SessionMeta},
};

pub const MAGIC: &[u8; 8] = b"BSTARC01";
const END: u32 = u32::MAX;
/// The largest header or block a reader accepts: far above what the store writes (a block is
/// a few hundred KiB), and low enough that a hostile object cannot make a reader allocate
/// without bound.
const MAX_PART: u32 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// The appliance that recorded it (as in the object's key).
    pub appliance: String,
    /// OpenSSH public key line of the audit key that claims to have sealed it.
    pub audit_key: String,
    pub session: SessionMeta,
    /// The session's command index, for `search` across archives without reading blocks.
    #[serde(default)]
    pub commands: Vec<CommandHit>,
}

/// The object's first bytes: magic and header.
pub fn encode_header(h: &Header) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(h)?;
    let mut out = Vec::with_capacity(12 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// One block as the object holds it, appended to `out`.
pub fn encode_block(b: &StoredBlock, out: &mut Vec<u8>) {
    out.extend_from_slice(&b.n.to_be_bytes());
    out.extend_from_slice(&(b.bytes.len() as u32).to_be_bytes());
    match &b.chain {
        Some(c) => {
            out.push(1);
            out.extend_from_slice(c);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&b.bytes);
}

/// The object's last bytes.
pub fn encode_end() -> [u8; 4] {
    END.to_be_bytes()
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("not an archived session (no BSTARC01 magic)")]
    Magic,
    #[error("truncated: the object ends inside its {0}")]
    Truncated(&'static str),
    #[error("{what} of {len} bytes is over the {MAX_PART}-byte limit")]
    TooLarge { what: &'static str, len: u32 },
    #[error("header: {0}")]
    Header(serde_json::Error),
    #[error("reading: {0}")]
    Io(std::io::Error),
}

/// Reads an archived session from the start: [`ObjectReader::header`] first, then
/// [`ObjectReader::next_block`] until `None`. Hashes every byte it reads (SHA-256 and length,
/// for comparison with what was uploaded).
pub struct ObjectReader<R> {
    inner: R,
    hash: Context,
    len: u64,
    ended: bool,
}

impl<R: Read> ObjectReader<R> {
    pub fn new(inner: R) -> Self {
        ObjectReader {
            inner,
            hash: Context::new(&SHA256),
            len: 0,
            ended: false,
        }
    }

    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), ObjectError> {
        let mut at = 0;
        while at < buf.len() {
            match self.inner.read(&mut buf[at..]) {
                Ok(0) => return Err(ObjectError::Truncated(what)),
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ObjectError::Io(e)),
            }
        }
        self.hash.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ObjectError> {
        let mut b = [0u8; 4];
        self.fill(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    fn part(&mut self, what: &'static str, len: u32) -> Result<Vec<u8>, ObjectError> {
        if len > MAX_PART {
            return Err(ObjectError::TooLarge { what, len });
        }
        let mut v = vec![0u8; len as usize];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    pub fn header(&mut self) -> Result<Header, ObjectError> {
        let mut magic = [0u8; 8];
        self.fill(&mut magic, "magic").map_err(|e| match e {
            ObjectError::Truncated(_) => ObjectError::Magic,
            e => e,
        })?;
        if &magic != MAGIC {
            return Err(ObjectError::Magic);
        }
        let len = self.u32("header length")?;
        let json = self.part("header", len)?;
        serde_json::from_slice(&json).map_err(ObjectError::Header)
    }

    /// The next block, or `None` at the end marker.
    pub fn next_block(&mut self) -> Result<Option<StoredBlock>, ObjectError> {
        if self.ended {
            return Ok(None);
        }
        let n = self.u32("block number")?;
        if n == END {
            self.ended = true;
            return Ok(None);
        }
        let len = self.u32("block length")?;
        let mut flag = [0u8; 1];
        self.fill(&mut flag, "block")?;
        let chain = if flag[0] == 1 {
            let mut c: Hash = [0; 32];
            self.fill(&mut c, "block chain value")?;
            Some(c)
        } else {
            None
        };
        let bytes = self.part("block", len)?;
        Ok(Some(StoredBlock { n, bytes, chain }))
    }

    /// Bytes read so far and their SHA-256 (hex): after the end marker, the whole object's.
    /// Anything after the end marker is read too, so that it changes the figures.
    pub fn finish(mut self) -> Result<(u64, String), ObjectError> {
        let mut rest = Vec::new();
        self.inner.read_to_end(&mut rest).map_err(ObjectError::Io)?;
        self.hash.update(&rest);
        self.len += rest.len() as u64;
        Ok((
            self.len,
            base16ct::lower::encode_string(self.hash.finish().as_ref()),
        ))
    }
}

/// What reading a whole archived object found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectCheck {
    pub appliance: String,
    pub session: SessionMeta,
    pub integrity: SessionIntegrity,
    pub bytes: u64,
    pub sha256: String,
}

/// Reads a whole object and judges it against `audit_key` (the appliance's, from the
/// auditor): chain, end marker and seal, holding one block at a time.
pub fn check(r: impl Read, audit_key: &ssh_key::PublicKey) -> Result<ObjectCheck, ObjectError> {
    check_with(r, audit_key, true)
}

/// [`check`]; `positions`: count each block's frames, so that a break is named by the frame
/// a replay finds it at (decompressing every block). The uploader's read-back, which only
/// needs the verdict, skips it.
pub fn check_with(
    r: impl Read,
    audit_key: &ssh_key::PublicKey,
    positions: bool,
) -> Result<ObjectCheck, ObjectError> {
    let mut reader = ObjectReader::new(r);
    let header = reader.header()?;
    let meta = header.session;
    let mut walk = Walk::new(meta.id, meta.blocks);
    // Frames per block, for naming a break's position (a count per block, not the blocks).
    let mut frames = Vec::new();
    let mut truncated = None;
    loop {
        match reader.next_block() {
            Ok(Some(b)) => {
                if positions {
                    frames.push(crate::record::block::decompress(&b.bytes).map_or(0, |f| f.len()));
                }
                walk.feed(&b);
            }
            Ok(None) => break,
            Err(ObjectError::Truncated(what)) => {
                truncated = Some(what);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let frames_before = |n: u32| frames.iter().take(n as usize).sum();
    let mut integrity = integrity::judge_walk(&meta, &walk, false, frames_before, |msg, seal| {
        integrity::seal_valid(audit_key, msg, seal)
    });
    if let Some(what) = truncated {
        integrity.status = integrity::Status::Tampered;
        integrity.detail = format!("object truncated inside its {what}");
    }
    let (bytes, sha256) = if truncated.is_some() {
        (reader.len, String::new())
    } else {
        reader.finish()?
    };
    Ok(ObjectCheck {
        appliance: header.appliance,
        session: meta,
        integrity,
        bytes,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::Status;

    fn session_object(key: &ssh_key::PrivateKey) -> (SessionMeta, Vec<u8>) {
        let blocks: Vec<StoredBlock> = {
            let mut chain = integrity::genesis(7);
            (0..3u32)
                .map(|n| {
                    let mut raw = Vec::new();
                    crate::record::frame::Frame {
                        t_micros: u64::from(n),
                        channel: 0,
                        kind: crate::record::frame::Kind::Output,
                        data: format!("block {n}").into_bytes().into(),
                    }
                    .encode(&mut raw);
                    let bytes = crate::record::block::compress(&raw).unwrap();
                    chain = integrity::next(&chain, n, &bytes);
                    StoredBlock {
                        n,
                        bytes,
                        chain: Some(chain),
                    }
                })
                .collect()
        };
        let mut meta = SessionMeta::starting(7, "203.0.113.10:22".parse().unwrap());
        meta.state = crate::session::SessionState::Closed;
        meta.ended_micros = Some(9);
        meta.blocks = 3;
        meta.chain = Some(integrity::hex(blocks[2].chain.as_ref().unwrap()));
        meta.seal = Some(integrity::seal(key, &meta).unwrap());
        let mut out = encode_header(&Header {
            appliance: "edge-1".into(),
            audit_key: key.public_key().to_openssh().unwrap(),
            session: meta.clone(),
            commands: Vec::new(),
        })
        .unwrap();
        for b in &blocks {
            encode_block(b, &mut out);
        }
        out.extend_from_slice(&encode_end());
        (meta, out)
    }

    fn key(seed: u8) -> ssh_key::PrivateKey {
        ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
    }

    #[test]
    fn an_intact_object_reads_sealed_with_its_hash() {
        let k = key(1);
        let (meta, bytes) = session_object(&k);
        let c = check(&bytes[..], k.public_key()).unwrap();
        assert_eq!(c.integrity.status, Status::Sealed, "{}", c.integrity.detail);
        assert_eq!(c.session.id, meta.id);
        assert_eq!(c.bytes, bytes.len() as u64);
        let want = base16ct::lower::encode_string(ring::digest::digest(&SHA256, &bytes).as_ref());
        assert_eq!(c.sha256, want);
    }

    #[test]
    fn tampering_truncation_and_a_foreign_key_are_caught() {
        let k = key(1);
        let (_, bytes) = session_object(&k);
        // A byte inside the last block's data.
        let mut flipped = bytes.clone();
        let at = flipped.len() - 6;
        flipped[at] ^= 1;
        let c = check(&flipped[..], k.public_key()).unwrap();
        assert_eq!(c.integrity.status, Status::Tampered);
        // Cut inside the last block.
        let c = check(&bytes[..bytes.len() - 8], k.public_key()).unwrap();
        assert_eq!(c.integrity.status, Status::Tampered);
        assert!(
            c.integrity.detail.contains("truncated"),
            "{}",
            c.integrity.detail
        );
        // Without the end marker only.
        let c = check(&bytes[..bytes.len() - 4], k.public_key()).unwrap();
        assert_eq!(c.integrity.status, Status::Tampered);
        // Another appliance's key.
        let c = check(&bytes[..], key(2).public_key()).unwrap();
        assert_eq!(c.integrity.status, Status::Tampered);
        assert!(matches!(
            check(&b"garbage"[..], k.public_key()),
            Err(ObjectError::Magic)
        ));
    }
}
