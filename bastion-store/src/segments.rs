//! Recorded blocks' bytes live outside sled, in append-only segment files under
//! `<store>/segments/`: one series per session, `<session:016x>-<seq:08x>.seg`. sled keeps a
//! [`BlockRef`] per block (segment, offset, length) next to the block's chain value, so memory
//! follows the number of blocks, never their bytes, and retention deletes files, not pages.
//!
//! A segment starts with [`MAGIC`]; each block is a [`HEADER`]-byte header (session, block
//! number, length, CRC-32 of the bytes, chain value after the block) and the stored block.
//! Invariants:
//! - A block's bytes are on disk (`fdatasync`) before sled references them, so a reference never
//!   points at bytes a crash can take back. Blocks are appended as they fill and synced in
//!   groups, once per commit (at most every `record.flush_interval_ms`): one `fdatasync` per
//!   group, not per block, is what lets a bulk transfer record at disk speed.
//! - A read checks the header against the reference and the CRC against the bytes: a reference
//!   to a cut, overwritten or foreign record is an error naming it, never misread.
//! - Only a live session's last segment can end in a torn record (the crash came mid-append);
//!   [`cut_after`] cuts it back to the last referenced block when the store reopens.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// Every segment file starts with these bytes (the format's version is the last two).
pub const MAGIC: &[u8; 8] = b"BSTSEG01";
/// Bytes before each block: session (8), block number (4), length (4), CRC-32 (4), chain (32).
pub const HEADER: u64 = 52;
/// A session's segment is closed and the next one started past this size, so retention and
/// copies deal in bounded files.
pub const SEGMENT_MAX: u64 = 256 << 20;
/// The version byte that starts a stored [`BlockRef`].
const REF_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("segment {}: block {n} at offset {offset}: {what}", path.display())]
    Corrupt {
        path: PathBuf,
        n: u32,
        offset: u64,
        what: String,
    },
    #[error("block reference of {0} bytes has an unknown format")]
    Ref(usize),
}

/// Where one block's bytes are: segment number within its session, offset of its header, and
/// the stored block's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub seq: u32,
    pub offset: u64,
    pub len: u32,
}

impl BlockRef {
    /// The value stored in sled: a version byte, then seq, offset and length big endian.
    pub fn encode(&self) -> [u8; 17] {
        let mut v = [0u8; 17];
        v[0] = REF_V1;
        v[1..5].copy_from_slice(&self.seq.to_be_bytes());
        v[5..13].copy_from_slice(&self.offset.to_be_bytes());
        v[13..17].copy_from_slice(&self.len.to_be_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Result<BlockRef, SegmentError> {
        let bad = || SegmentError::Ref(v.len());
        if v.len() != 17 || v[0] != REF_V1 {
            return Err(bad());
        }
        Ok(BlockRef {
            seq: u32::from_be_bytes(v[1..5].try_into().map_err(|_| bad())?),
            offset: u64::from_be_bytes(v[5..13].try_into().map_err(|_| bad())?),
            len: u32::from_be_bytes(v[13..17].try_into().map_err(|_| bad())?),
        })
    }

    /// The end of this block's record in its segment.
    fn end(&self) -> u64 {
        self.offset + HEADER + u64::from(self.len)
    }
}

pub fn dir(store: &Path) -> PathBuf {
    store.join("segments")
}

fn path(dir: &Path, session: u64, seq: u32) -> PathBuf {
    dir.join(format!("{session:016x}-{seq:08x}.seg"))
}

/// The (session, seq) a segment file name stands for.
fn parse_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_suffix(".seg")?;
    let (s, q) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(s, 16).ok()?,
        u32::from_str_radix(q, 16).ok()?,
    ))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes a new directory entry durable: a synced file is no use if its name is lost.
fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Appends one session's blocks. Owned by that session's recorder; a session never appends
/// after its recorder stops (a restarted bastiond starts new sessions), so no two writers share
/// a file.
pub struct SegmentWriter {
    dir: PathBuf,
    session: u64,
    seq: u32,
    file: Option<File>,
    len: u64,
    /// Whether an existing file of this session may be started over (a migration that was
    /// interrupted); otherwise finding one is an error, never an overwrite.
    overwrite: bool,
}

impl SegmentWriter {
    pub(crate) fn new(dir: PathBuf, session: u64) -> SegmentWriter {
        SegmentWriter {
            dir,
            session,
            seq: 0,
            file: None,
            len: 0,
            overwrite: false,
        }
    }

    /// A writer that starts over any segment of `session` it finds: for a migration step
    /// that re-runs after an interruption (nothing refers to what it wrote before).
    pub(crate) fn rewrite(dir: PathBuf, session: u64) -> SegmentWriter {
        SegmentWriter {
            overwrite: true,
            ..SegmentWriter::new(dir, session)
        }
    }

    /// Appends block `n` (not yet synced: [`SegmentWriter::sync`] before anything refers to
    /// it); returns where it is. On failure the segment is cut back to where it was, as far as
    /// the disk still allows.
    pub fn append(
        &mut self,
        n: u32,
        stored: &[u8],
        chain: &[u8; 32],
    ) -> Result<BlockRef, SegmentError> {
        let record = HEADER + stored.len() as u64;
        if self.file.is_none() || self.len + record > SEGMENT_MAX && self.len > MAGIC.len() as u64 {
            self.start_segment()?;
        }
        let p = path(&self.dir, self.session, self.seq);
        let Some(file) = self.file.as_mut() else {
            return Err(io(&p)(std::io::Error::other("no open segment")));
        };
        let len = u32::try_from(stored.len()).map_err(|_| SegmentError::Corrupt {
            path: p.clone(),
            n,
            offset: self.len,
            what: "block larger than 4 GiB".into(),
        })?;
        let mut header = [0u8; HEADER as usize];
        header[0..8].copy_from_slice(&self.session.to_be_bytes());
        header[8..12].copy_from_slice(&n.to_be_bytes());
        header[12..16].copy_from_slice(&len.to_be_bytes());
        header[16..20].copy_from_slice(&crc32fast::hash(stored).to_be_bytes());
        header[20..52].copy_from_slice(chain);
        let at = self.len;
        let written = file
            .write_all(&header)
            .and_then(|()| file.write_all(stored));
        if let Err(e) = written {
            // Best effort: a later reader goes by references anyway.
            let _ = file.set_len(at);
            return Err(io(&p)(e));
        }
        self.len += record;
        Ok(BlockRef {
            seq: self.seq,
            offset: at,
            len,
        })
    }

    /// Makes everything appended so far durable (`fdatasync`; a segment that was closed for
    /// the next one was synced when it was closed).
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        let p = path(&self.dir, self.session, self.seq);
        match &self.file {
            Some(f) => f.sync_data().map_err(io(&p)),
            None => Ok(()),
        }
    }

    fn start_segment(&mut self) -> Result<(), SegmentError> {
        if self.file.is_some() {
            // What is in the closing segment must be as durable as what follows it.
            self.sync()?;
            self.seq += 1;
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let p = path(&self.dir, self.session, self.seq);
        // Session ids are never reused, so a file already there belongs to someone else's
        // records: refused, unless this writer is re-running a migration.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(!self.overwrite)
            .create(true)
            .truncate(self.overwrite)
            .open(&p)
            .map_err(io(&p))?;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_data())
            .map_err(io(&p))?;
        sync_dir(&self.dir)?;
        self.file = Some(file);
        self.len = MAGIC.len() as u64;
        Ok(())
    }
}

/// Reads one session's blocks by reference, keeping the segment it is in open.
pub struct SegmentReader {
    dir: PathBuf,
    session: u64,
    open: Option<(u32, File)>,
}

impl SegmentReader {
    pub fn new(dir: PathBuf, session: u64) -> SegmentReader {
        SegmentReader {
            dir,
            session,
            open: None,
        }
    }

    /// Block `n`'s stored bytes, checked against its header.
    pub fn read(&mut self, n: u32, r: BlockRef) -> Result<Vec<u8>, SegmentError> {
        let p = path(&self.dir, self.session, r.seq);
        if self.open.as_ref().map(|(seq, _)| *seq) != Some(r.seq) {
            self.open = Some((r.seq, File::open(&p).map_err(io(&p))?));
        }
        let Some((_, file)) = self.open.as_ref() else {
            return Err(io(&p)(std::io::Error::other("no open segment")));
        };
        let corrupt = |what: String| SegmentError::Corrupt {
            path: p.clone(),
            n,
            offset: r.offset,
            what,
        };
        let mut header = [0u8; HEADER as usize];
        let mut bytes = vec![0u8; r.len as usize];
        file.read_exact_at(&mut header, r.offset)
            .and_then(|()| file.read_exact_at(&mut bytes, r.offset + HEADER))
            .map_err(|e| corrupt(format!("cannot read {} bytes: {e}", r.len)))?;
        let field = |a: usize, b: usize| &header[a..b];
        if field(0, 8) != self.session.to_be_bytes()
            || field(8, 12) != n.to_be_bytes()
            || field(12, 16) != r.len.to_be_bytes()
        {
            return Err(corrupt(
                "the record there is not this block (its header differs)".into(),
            ));
        }
        if field(16, 20) != crc32fast::hash(&bytes).to_be_bytes() {
            return Err(corrupt("its bytes do not match their checksum".into()));
        }
        Ok(bytes)
    }
}

/// After a crash: cuts session `session`'s segments back to the end of `last` (its last
/// referenced block) and removes later segments; with no block referenced, removes them all.
pub fn cut_after(dir: &Path, session: u64, last: Option<BlockRef>) -> Result<(), SegmentError> {
    for (seq, p) in session_files(dir, session)? {
        match last {
            Some(r) if seq == r.seq => {
                let f = OpenOptions::new().write(true).open(&p).map_err(io(&p))?;
                let len = f.metadata().map_err(io(&p))?.len();
                if len > r.end() {
                    tracing::warn!(segment = %p.display(), from = len, to = r.end(), "cut a torn segment tail");
                    f.set_len(r.end())
                        .and_then(|()| f.sync_all())
                        .map_err(io(&p))?;
                }
            }
            Some(r) if seq < r.seq => {}
            _ => std::fs::remove_file(&p).map_err(io(&p))?,
        }
    }
    Ok(())
}

/// Removes every segment of `session` (retention, or files a crash left behind).
pub fn remove_session(dir: &Path, session: u64) -> Result<(), SegmentError> {
    for (_, p) in session_files(dir, session)? {
        std::fs::remove_file(&p).map_err(io(&p))?;
    }
    Ok(())
}

/// The sessions that have segment files.
pub fn sessions_on_disk(dir: &Path) -> Result<std::collections::BTreeSet<u64>, SegmentError> {
    Ok(all_files(dir)?.into_iter().map(|(s, _, _)| s).collect())
}

/// Bytes all segments take.
pub fn size_on_disk(dir: &Path) -> Result<u64, SegmentError> {
    let mut total = 0;
    for (_, _, p) in all_files(dir)? {
        total += std::fs::metadata(&p).map_err(io(&p))?.len();
    }
    Ok(total)
}

fn session_files(dir: &Path, session: u64) -> Result<Vec<(u32, PathBuf)>, SegmentError> {
    Ok(all_files(dir)?
        .into_iter()
        .filter(|(s, _, _)| *s == session)
        .map(|(_, seq, p)| (seq, p))
        .collect())
}

fn all_files(dir: &Path) -> Result<Vec<(u64, u32, PathBuf)>, SegmentError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        if let Some((s, q)) = entry.file_name().to_str().and_then(parse_name) {
            out.push((s, q, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn blocks_read_back_and_a_bad_reference_or_torn_tail_is_never_misread() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        let mut w = SegmentWriter::new(dir.clone(), 9);
        let a = w.append(0, b"first block", &[1; 32]).unwrap();
        let b = w.append(1, b"second", &[2; 32]).unwrap();
        assert_eq!(a.offset, MAGIC.len() as u64);
        let mut r = SegmentReader::new(dir.clone(), 9);
        assert_eq!(r.read(0, a).unwrap(), b"first block");
        assert_eq!(r.read(1, b).unwrap(), b"second");
        // A reference that points at the wrong record, or another session's, fails.
        assert!(
            r.read(1, a)
                .unwrap_err()
                .to_string()
                .contains("not this block")
        );
        let mut other = SegmentReader::new(dir.clone(), 8);
        assert!(other.read(0, a).is_err());
        // A flipped byte is caught by the checksum.
        let p = path(&dir, 9, 0);
        let mut raw = std::fs::read(&p).unwrap();
        raw[(a.offset + HEADER) as usize] ^= 1;
        std::fs::write(&p, &raw).unwrap();
        let mut r = SegmentReader::new(dir.clone(), 9);
        assert!(r.read(0, a).unwrap_err().to_string().contains("checksum"));
        // A torn append after block 1: cut back to block 1's end.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[0xAB; 30]).unwrap();
        cut_after(&dir, 9, Some(b)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), b.end());
        assert_eq!(r.read(1, b).unwrap(), b"second");
        // A session with nothing referenced loses its files.
        cut_after(&dir, 9, None).unwrap();
        assert!(sessions_on_disk(&dir).unwrap().is_empty());
    }

    #[test]
    fn references_round_trip_and_unknown_formats_are_refused() {
        let r = BlockRef {
            seq: 3,
            offset: 1 << 40,
            len: 262_144,
        };
        assert_eq!(BlockRef::decode(&r.encode()).unwrap(), r);
        assert!(BlockRef::decode(&[2; 17]).is_err());
        assert!(BlockRef::decode(b"raw block bytes").is_err());
        assert_eq!(parse_name("00000000000000ff-00000002.seg"), Some((255, 2)));
        assert_eq!(parse_name("conf"), None);
    }
}
