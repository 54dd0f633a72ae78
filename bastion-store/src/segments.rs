//! Recorded blocks' bytes live outside sled, in append-only segment files under
//! `<store>/segments/`: one series per session, `<session:016x>-<seq:08x>.seg`. The files are
//! their own block index: a segment starts with [`MAGIC`] and each block follows the last as a
//! [`HEADER`]-byte header (session, block number, length, CRC-32 of the bytes, chain value after
//! the block) and the stored block, so a reader finds block n+1 where block n ends. sled keeps
//! one [`SegmentStart`] per segment (which block it starts with), and the session's metadata
//! counts the blocks that are part of the record. Nothing in sled grows per block: sled keeps
//! its entries in memory (~250 bytes each, whatever its cache size), so a reference per block
//! made bastiond's memory follow the volume recorded (schema 8 removed them).
//!
//! Invariants:
//! - A block's bytes are on disk (`fdatasync`) before the metadata counts it, so the record
//!   never names bytes a crash can take back. Blocks are appended as they fill and synced in
//!   groups, once per commit (at most every `record.flush_interval_ms`): one `fdatasync` per
//!   group, not per block, is what lets a bulk transfer record at disk speed.
//! - Readers go no further than the metadata counts ([`BlockCursor`]'s end): what lies past it
//!   was never committed and is nobody's record.
//! - Every read checks the header against the block expected there and the CRC against the
//!   bytes: a cut, overwritten or foreign record is an error naming it, never misread.
//! - Only a live session's last segment can end in a torn record (the crash came mid-append);
//!   [`cut_after`] cuts it back to the last committed block when the store reopens.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use bastion_core::integrity::StoredBlock;

/// Every segment file starts with these bytes (the format's version is the last two).
pub const MAGIC: &[u8; 8] = b"BSTSEG01";
/// Bytes before each block: session (8), block number (4), length (4), CRC-32 (4), chain (32).
pub const HEADER: u64 = 52;
/// A session's segment is closed and the next one started past this size, so retention and
/// copies deal in bounded files.
pub const SEGMENT_MAX: u64 = 256 << 20;
/// The version byte that starts a stored [`SegmentStart`].
const START_V1: u8 = 1;

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
    #[error("session {session}: block {n}: {what}")]
    Missing { session: u64, n: u32, what: String },
    #[error("segment start of {0} bytes has an unknown format")]
    Start(usize),
}

/// Where one of a session's segments begins: its number and the first block in it. The value
/// sled keeps per segment, keyed by (session, seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStart {
    pub seq: u32,
    pub first: u32,
}

impl SegmentStart {
    /// The key: session then seq, big endian, so a prefix scan lists a session's segments in
    /// order.
    pub fn key(&self, session: u64) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&session.to_be_bytes());
        k[8..].copy_from_slice(&self.seq.to_be_bytes());
        k
    }

    /// The value: a version byte, then the first block's number big endian.
    pub fn value(&self) -> [u8; 5] {
        let mut v = [START_V1; 5];
        v[1..].copy_from_slice(&self.first.to_be_bytes());
        v
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<SegmentStart, SegmentError> {
        let seq = key.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok());
        let first = value.get(1..5).and_then(|b| <[u8; 4]>::try_from(b).ok());
        match (seq, first, value.first()) {
            (Some(seq), Some(first), Some(&START_V1)) if value.len() == 5 => Ok(SegmentStart {
                seq: u32::from_be_bytes(seq),
                first: u32::from_be_bytes(first),
            }),
            _ => Err(SegmentError::Start(value.len())),
        }
    }
}

pub fn dir(store: &Path) -> PathBuf {
    store.join("segments")
}

pub(crate) fn path(dir: &Path, session: u64, seq: u32) -> PathBuf {
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
    /// Segments started since the last [`SegmentWriter::take_started`]: the commit that
    /// counts their first blocks records them.
    started: Vec<SegmentStart>,
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
            started: Vec::new(),
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

    /// Appends block `n`, which must follow the last one appended (not yet synced:
    /// [`SegmentWriter::sync`] before the record counts it); returns where its header is
    /// (segment, offset). On failure the segment is cut back to where it was, as far as the
    /// disk still allows.
    pub fn append(
        &mut self,
        n: u32,
        stored: &[u8],
        chain: &[u8; 32],
    ) -> Result<(u32, u64), SegmentError> {
        let record = HEADER + stored.len() as u64;
        if self.file.is_none() || self.len + record > SEGMENT_MAX && self.len > MAGIC.len() as u64 {
            self.start_segment(n)?;
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
            // Best effort: readers stop where the record's metadata says anyway.
            let _ = file.set_len(at);
            return Err(io(&p)(e));
        }
        self.len += record;
        Ok((self.seq, at))
    }

    /// The segments started since the last call (for the commit to record).
    pub fn take_started(&mut self) -> Vec<SegmentStart> {
        std::mem::take(&mut self.started)
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

    /// Starts the next segment with block `first`.
    fn start_segment(&mut self, first: u32) -> Result<(), SegmentError> {
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
        self.started.push(SegmentStart {
            seq: self.seq,
            first,
        });
        Ok(())
    }
}

/// A block's header as found in its segment.
struct Header {
    len: u32,
    crc: [u8; 4],
    chain: [u8; 32],
}

/// Walks one session's committed blocks in order: from a segment's start, header by header,
/// and on to the next segment where one ends. Stops at `end`, the blocks the session's
/// metadata counts.
pub struct BlockCursor {
    dir: PathBuf,
    session: u64,
    starts: Vec<SegmentStart>,
    end: u32,
    /// Index into `starts` of the open segment, the file and its length.
    open: Option<(usize, File, u64)>,
    /// Where the next header is in the open segment, and the block expected there.
    offset: u64,
    n: u32,
}

impl BlockCursor {
    /// A cursor at block 0 of `session`, whose segments begin as `starts` says (in order).
    pub fn new(dir: PathBuf, session: u64, starts: Vec<SegmentStart>, end: u32) -> BlockCursor {
        BlockCursor {
            dir,
            session,
            starts,
            end,
            open: None,
            offset: 0,
            n: 0,
        }
    }

    /// Moves to block `n`: to the segment that holds it, then past the blocks before it there
    /// (headers only).
    pub fn seek(&mut self, n: u32) -> Result<(), SegmentError> {
        let Some(i) = self.starts.iter().rposition(|s| s.first <= n) else {
            return Err(self.missing(n, "no segment holds it"));
        };
        self.open_segment(i)?;
        while self.n < n.min(self.end) {
            self.skip()?;
        }
        Ok(())
    }

    /// The next block, or `None` past the end; its chain value is the one its header carries
    /// (`None` when that is all zeros: a block recorded before integrity existed). A block
    /// whose bytes fail their checksum is an error and the cursor moves past it; one whose
    /// header is not what is expected there ends the walk (nothing after it can be found).
    pub fn next_block(&mut self) -> Option<Result<StoredBlock, SegmentError>> {
        if self.n >= self.end {
            return None;
        }
        let n = self.n;
        let (at, header) = match self.advance() {
            Ok(found) => found,
            Err(e) => {
                self.end = n;
                return Some(Err(e));
            }
        };
        let mut bytes = vec![0u8; header.len as usize];
        let Some((_, file, _)) = self.open.as_ref() else {
            return Some(Err(self.missing(n, "no open segment")));
        };
        if let Err(e) = file.read_exact_at(&mut bytes, at + HEADER) {
            return Some(Err(self.corrupt(
                n,
                at,
                format!("cannot read its bytes: {e}"),
            )));
        }
        if crc32fast::hash(&bytes).to_be_bytes() != header.crc {
            return Some(Err(self.corrupt(
                n,
                at,
                "its bytes do not match their checksum".into(),
            )));
        }
        Some(Ok(StoredBlock {
            n,
            bytes,
            chain: (header.chain != [0; 32]).then_some(header.chain),
        }))
    }

    /// Moves past the next block without reading its bytes.
    pub fn skip(&mut self) -> Result<(), SegmentError> {
        self.advance().map(drop)
    }

    /// Reads the next block's header and moves past the block; returns where the header is.
    fn advance(&mut self) -> Result<(u64, Header), SegmentError> {
        let header = self.header()?;
        let at = self.offset;
        self.offset += HEADER + u64::from(header.len);
        self.n += 1;
        Ok((at, header))
    }

    /// Where the blocks walked so far end: the open segment and the offset past the last one.
    pub fn position(&self) -> Option<(u32, u64)> {
        let (i, _, _) = self.open.as_ref()?;
        Some((self.starts[*i].seq, self.offset))
    }

    /// The header of block `self.n`, checked against what is expected there; moves on to the
    /// next segment first when the open one has no more.
    fn header(&mut self) -> Result<Header, SegmentError> {
        let n = self.n;
        if n >= self.end {
            return Err(self.missing(n, "past the end of the record"));
        }
        loop {
            let Some((i, _, len)) = &self.open else {
                self.open_segment(0)?;
                continue;
            };
            let (i, len) = (*i, *len);
            if self.offset < len {
                break;
            }
            match self.starts.get(i + 1) {
                Some(next) if next.first == n => self.open_segment(i + 1)?,
                Some(next) => {
                    let what = format!("the next segment starts at block {}", next.first);
                    return Err(self.missing(n, &what));
                }
                None => return Err(self.missing(n, "the segments end before it")),
            }
        }
        let Some((_, file, len)) = self.open.as_ref() else {
            return Err(self.missing(n, "no open segment"));
        };
        let mut raw = [0u8; HEADER as usize];
        let at = self.offset;
        if let Err(e) = file.read_exact_at(&mut raw, at) {
            return Err(self.corrupt(n, at, format!("cannot read its header: {e}")));
        }
        let field = |a: usize, b: usize| &raw[a..b];
        let block_len = u32::from_be_bytes([raw[12], raw[13], raw[14], raw[15]]);
        if field(0, 8) != self.session.to_be_bytes() || field(8, 12) != n.to_be_bytes() {
            return Err(self.corrupt(
                n,
                at,
                "the record there is not this block (its header differs)".into(),
            ));
        }
        if at + HEADER + u64::from(block_len) > *len {
            return Err(self.corrupt(n, at, "the segment ends inside it (torn)".into()));
        }
        let mut chain = [0u8; 32];
        chain.copy_from_slice(field(20, 52));
        Ok(Header {
            len: block_len,
            crc: [raw[16], raw[17], raw[18], raw[19]],
            chain,
        })
    }

    /// Opens segment `starts[i]` at its first block, checking its magic.
    fn open_segment(&mut self, i: usize) -> Result<(), SegmentError> {
        let Some(start) = self.starts.get(i).copied() else {
            return Err(self.missing(self.n, "the session has no segments"));
        };
        let p = path(&self.dir, self.session, start.seq);
        let file = File::open(&p).map_err(io(&p))?;
        let len = file.metadata().map_err(io(&p))?.len();
        let mut magic = [0u8; MAGIC.len()];
        if file.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
            return Err(SegmentError::Corrupt {
                path: p,
                n: start.first,
                offset: 0,
                what: "not a segment file (its magic differs)".into(),
            });
        }
        self.open = Some((i, file, len));
        self.offset = MAGIC.len() as u64;
        self.n = start.first;
        Ok(())
    }

    fn corrupt(&self, n: u32, offset: u64, what: String) -> SegmentError {
        let seq = self
            .open
            .as_ref()
            .map_or(0, |(i, _, _)| self.starts[*i].seq);
        SegmentError::Corrupt {
            path: path(&self.dir, self.session, seq),
            n,
            offset,
            what,
        }
    }

    fn missing(&self, n: u32, what: &str) -> SegmentError {
        SegmentError::Missing {
            session: self.session,
            n,
            what: what.to_owned(),
        }
    }
}

/// After a crash: cuts session `session`'s segments back to `end` (segment seq, offset past
/// its last committed block) and removes later segments; with `None` (nothing committed),
/// removes them all.
pub fn cut_after(dir: &Path, session: u64, end: Option<(u32, u64)>) -> Result<(), SegmentError> {
    for (seq, p) in session_files(dir, session)? {
        match end {
            Some((last, at)) if seq == last => {
                let f = OpenOptions::new().write(true).open(&p).map_err(io(&p))?;
                let len = f.metadata().map_err(io(&p))?.len();
                if len > at {
                    tracing::warn!(segment = %p.display(), from = len, to = at, "cut a torn segment tail");
                    f.set_len(at).and_then(|()| f.sync_all()).map_err(io(&p))?;
                }
            }
            Some((last, _)) if seq < last => {}
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

    fn walk(
        dir: &Path,
        session: u64,
        starts: &[SegmentStart],
        end: u32,
    ) -> Vec<Result<Vec<u8>, String>> {
        let mut c = BlockCursor::new(dir.to_owned(), session, starts.to_vec(), end);
        std::iter::from_fn(|| c.next_block())
            .map(|r| r.map(|b| b.bytes).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn blocks_read_back_across_segments_and_the_walk_stops_at_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        let mut w = SegmentWriter::new(dir.clone(), 9);
        assert_eq!(w.append(0, b"first block", &[1; 32]).unwrap(), (0, 8));
        w.append(1, b"second", &[2; 32]).unwrap();
        // A third block in the next segment, as a roll at SEGMENT_MAX leaves it.
        w.start_segment(2).unwrap();
        w.append(2, b"third", &[0; 32]).unwrap();
        w.append(3, b"uncommitted", &[4; 32]).unwrap();
        let starts = w.take_started();
        assert_eq!(
            starts,
            [
                SegmentStart { seq: 0, first: 0 },
                SegmentStart { seq: 1, first: 2 }
            ]
        );
        assert!(w.take_started().is_empty());
        let ok = |b: &[u8]| Ok(b.to_vec());
        assert_eq!(
            walk(&dir, 9, &starts, 3),
            [ok(b"first block"), ok(b"second"), ok(b"third")],
            "nothing past the end is read"
        );
        let mut c = BlockCursor::new(dir.clone(), 9, starts.clone(), 4);
        c.seek(2).unwrap();
        let b = c.next_block().unwrap().unwrap();
        assert_eq!((b.n, b.chain), (2, None), "a zero chain is no chain");
        let b = c.next_block().unwrap().unwrap();
        assert_eq!(
            (b.n, b.bytes, b.chain),
            (3, b"uncommitted".to_vec(), Some([4; 32]))
        );
        assert!(c.next_block().is_none());
        // Another session's segment under this one's name holds no block of this one.
        std::fs::copy(path(&dir, 9, 0), path(&dir, 8, 0)).unwrap();
        assert!(
            walk(&dir, 8, &starts, 1)[0]
                .as_ref()
                .unwrap_err()
                .contains("not this block")
        );
        // A start that names the wrong first block is caught at the boundary.
        let wrong = [starts[0], SegmentStart { seq: 1, first: 3 }];
        assert!(
            walk(&dir, 9, &wrong, 3)[2]
                .as_ref()
                .unwrap_err()
                .contains("starts at block 3")
        );
    }

    #[test]
    fn a_flipped_byte_or_torn_tail_is_never_misread_and_is_cut_at_the_commit_point() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        let mut w = SegmentWriter::new(dir.clone(), 9);
        let (_, a) = w.append(0, b"first block", &[1; 32]).unwrap();
        w.append(1, b"second", &[2; 32]).unwrap();
        let starts = w.take_started();
        let p = path(&dir, 9, 0);
        let mut raw = std::fs::read(&p).unwrap();
        raw[(a + HEADER) as usize] ^= 1;
        std::fs::write(&p, &raw).unwrap();
        let read = walk(&dir, 9, &starts, 2);
        assert!(read[0].as_ref().unwrap_err().contains("checksum"));
        assert_eq!(
            read[1],
            Ok(b"second".to_vec()),
            "the walk goes on past bad bytes"
        );
        // A torn append after block 1 ends the walk there, and is cut back at the commit point.
        let committed_end = raw.len() as u64;
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[0xAB; 60]).unwrap();
        assert!(
            walk(&dir, 9, &starts, 3)[2]
                .as_ref()
                .unwrap_err()
                .contains("not this block")
        );
        let mut c = BlockCursor::new(dir.clone(), 9, starts.clone(), 2);
        c.skip().unwrap();
        c.skip().unwrap();
        assert_eq!(c.position(), Some((0, committed_end)));
        cut_after(&dir, 9, c.position()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), committed_end);
        // A session with nothing committed loses its files.
        cut_after(&dir, 9, None).unwrap();
        assert!(sessions_on_disk(&dir).unwrap().is_empty());
    }

    #[test]
    fn starts_round_trip_and_unknown_formats_are_refused() {
        let s = SegmentStart {
            seq: 3,
            first: 1 << 20,
        };
        assert_eq!(SegmentStart::decode(&s.key(7), &s.value()).unwrap(), s);
        assert!(SegmentStart::decode(&s.key(7), &[2, 0, 0, 0, 0]).is_err());
        assert!(SegmentStart::decode(&s.key(7), b"raw").is_err());
        assert_eq!(parse_name("00000000000000ff-00000002.seg"), Some((255, 2)));
        assert_eq!(parse_name("conf"), None);
    }
}
