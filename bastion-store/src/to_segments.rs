//! The steps that moved recorded blocks out of sled: step 6 (schema 5 → 6) moved their bytes
//! into segment files, leaving a reference and chain value per block in sled; step 8 (7 → 8)
//! moved those out too, since sled's memory follows its entries: the chain values into the
//! segments' headers, the references replaced by one start per segment (`segments.rs`).
//! Released steps are never edited; what they wrote is described here, not used elsewhere.

use std::{collections::BTreeSet, fs::File, os::unix::fs::FileExt, path::Path};

use sled::Transactional;

use super::{
    migrate::StepError,
    segments::{self, HEADER, SegmentStart, SegmentWriter},
    sessions::{CHAIN_TREE, LEGACY_BLOCKS_TREE, REFS_TREE, SEGMENTS_TREE},
};

/// The version byte that starts a schema 6–7 block reference.
const REF_V1: u8 = 1;

/// Schemas 6 and 7: where one block's bytes were (segment, offset of its header, length),
/// stored as a version byte then the three big endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LegacyRef {
    seq: u32,
    offset: u64,
    len: u32,
}

impl LegacyRef {
    fn encode(&self) -> [u8; 17] {
        let mut v = [0u8; 17];
        v[0] = REF_V1;
        v[1..5].copy_from_slice(&self.seq.to_be_bytes());
        v[5..13].copy_from_slice(&self.offset.to_be_bytes());
        v[13..17].copy_from_slice(&self.len.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<LegacyRef> {
        if v.len() != 17 || v[0] != REF_V1 {
            return None;
        }
        Some(LegacyRef {
            seq: u32::from_be_bytes(v[1..5].try_into().ok()?),
            offset: u64::from_be_bytes(v[5..13].try_into().ok()?),
            len: u32::from_be_bytes(v[13..17].try_into().ok()?),
        })
    }
}

#[cfg(test)]
fn block_key(id: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The block number in a [`block_key`].
fn block_number(key: &[u8]) -> u32 {
    key.get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(u32::MAX, u32::from_be_bytes)
}

/// Schema step 6: moves each session's blocks from `record_blocks` into a segment file, then
/// swaps the bytes for references in one transaction per session. A step interrupted part-way
/// resumes: a session whose blocks are still in `record_blocks` has its segment written anew.
pub(super) fn move_blocks_to_segments(
    db: &sled::Db,
    dir: &Path,
) -> Result<(), super::migrate::StepError> {
    let legacy = db.open_tree(LEGACY_BLOCKS_TREE)?;
    let refs = db.open_tree(REFS_TREE)?;
    let chains = db.open_tree(CHAIN_TREE)?;
    let ids: std::collections::BTreeSet<u64> = legacy
        .iter()
        .keys()
        .map(|k| k.map(|k| id_of(&k)))
        .collect::<Result<_, _>>()?;
    for id in ids {
        let mut writer = SegmentWriter::rewrite(dir.to_owned(), id);
        let mut moved = Vec::new();
        for item in legacy.scan_prefix(id.to_be_bytes()) {
            let (k, bytes) = item?;
            let n = block_number(&k);
            // A legacy block without a chain value gets zeros in its header: the header's
            // chain was a copy for repair then; step 8 fills it from `record_chain`.
            let chain = chains
                .get(&k)?
                .and_then(|c| <[u8; 32]>::try_from(c.as_ref()).ok())
                .unwrap_or([0; 32]);
            let (seq, offset) = writer.append(n, &bytes, &chain)?;
            let at = LegacyRef {
                seq,
                offset,
                len: bytes.len() as u32,
            };
            moved.push((k, at));
        }
        writer.sync()?;
        (&legacy, &refs)
            .transaction(|(l, r)| {
                for (k, at) in &moved {
                    r.insert(k, &at.encode()[..])?;
                    l.remove(k)?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => e,
                sled::transaction::TransactionError::Abort(()) => {
                    sled::Error::Unsupported("aborted".into())
                }
            })?;
        db.flush()?;
    }
    Ok(())
}

/// The session id in a [`block_key`].
fn id_of(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Schema step 8: per session, records where each segment starts (from the references), makes
/// each block's header carry the chain value `record_chain` holds (step 6 wrote zeros where it
/// had none yet), and only then drops the session's references and chain values, last block
/// first. Interrupted, it resumes: the references left are always a session's first blocks,
/// and starts and headers are written idempotently.
pub(super) fn drop_block_refs(db: &sled::Db, dir: &Path) -> Result<(), StepError> {
    let refs = db.open_tree(REFS_TREE)?;
    let chains = db.open_tree(CHAIN_TREE)?;
    let starts = db.open_tree(SEGMENTS_TREE)?;
    let ids: BTreeSet<u64> = refs
        .iter()
        .keys()
        .map(|k| k.map(|k| id_of(&k)))
        .collect::<Result<_, _>>()?;
    for id in ids {
        let mut keys = Vec::new();
        let mut open: Option<(u32, File)> = None;
        let mut expected = 0;
        for item in refs.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item?;
            let n = block_number(&k);
            let Some(r) = LegacyRef::decode(&v) else {
                tracing::warn!(
                    session = id,
                    block = n,
                    "unreadable block reference dropped"
                );
                keys.push(k);
                continue;
            };
            if open.as_ref().map(|(seq, _)| *seq) != Some(r.seq) {
                let start = SegmentStart {
                    seq: r.seq,
                    first: n,
                };
                starts.insert(start.key(id), &start.value()[..])?;
                let p = segments::path(dir, id, r.seq);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .map_err(|source| segments::SegmentError::Io { path: p, source })?;
                open = Some((r.seq, file));
                expected = segments::MAGIC.len() as u64;
            }
            if r.offset != expected {
                // Not where a walk of the segment finds it: `verify` will name the block.
                tracing::warn!(
                    session = id,
                    block = n,
                    "block is not where its segment's previous one ends"
                );
            }
            expected = r.offset + HEADER + u64::from(r.len);
            let chain = chains
                .get(&k)?
                .and_then(|c| <[u8; 32]>::try_from(c.as_ref()).ok())
                .unwrap_or([0; 32]);
            if let Some((seq, file)) = &open {
                put_chain(dir, id, *seq, file, n, r.offset, &chain)?;
            }
            keys.push(k);
        }
        if let Some((seq, file)) = &open {
            file.sync_data()
                .map_err(|source| segments::SegmentError::Io {
                    path: segments::path(dir, id, *seq),
                    source,
                })?;
        }
        db.flush()?;
        for k in keys.iter().rev() {
            refs.remove(k)?;
            chains.remove(k)?;
        }
        db.flush()?;
    }
    // Chain values of blocks that had no reference (none are written so) go too.
    chains.clear()?;
    db.flush()?;
    Ok(())
}

/// Writes `chain` into the header of block `n` at `offset` where it differs; a header that is
/// not block `n`'s is left alone (`verify` will name the block).
#[allow(clippy::too_many_arguments)]
fn put_chain(
    dir: &Path,
    id: u64,
    seq: u32,
    file: &File,
    n: u32,
    offset: u64,
    chain: &[u8; 32],
) -> Result<(), StepError> {
    let io = |source| segments::SegmentError::Io {
        path: segments::path(dir, id, seq),
        source,
    };
    let mut header = [0u8; HEADER as usize];
    if file.read_exact_at(&mut header, offset).is_err()
        || header[..8] != id.to_be_bytes()
        || header[8..12] != n.to_be_bytes()
    {
        tracing::warn!(
            session = id,
            block = n,
            "block header not found where its reference points"
        );
        return Ok(());
    }
    if &header[20..52] != chain {
        file.write_all_at(chain, offset + 20).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bastion_core::{
        integrity,
        record::{Frame, Kind, block},
        session::{SessionMeta, SessionState},
    };

    use super::*;
    use crate::{META_TREE, SCHEMA_KEY, Store, sessions::SESSIONS_TREE};

    fn text_block(text: &str) -> Vec<u8> {
        let mut raw = Vec::new();
        Frame {
            kind: Kind::Output,
            channel: 0,
            t_micros: 0,
            data: bytes::Bytes::copy_from_slice(text.as_bytes()),
        }
        .encode(&mut raw);
        block::compress(&raw).unwrap()
    }

    fn text(store: &Store, id: u64) -> String {
        store
            .session_frames(id)
            .unwrap()
            .iter()
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .collect()
    }

    /// An old store at `schema` with session `meta` in it.
    fn old_store(path: &Path, schema: u32, meta: &SessionMeta) -> sled::Db {
        let db = sled::open(path).unwrap();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_KEY, &schema.to_be_bytes())
            .unwrap();
        db.open_tree(SESSIONS_TREE)
            .unwrap()
            .insert(meta.id.to_be_bytes(), serde_json::to_vec(meta).unwrap())
            .unwrap();
        db
    }

    #[test]
    fn a_schema_5_store_moves_its_blocks_to_segments_and_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let mut meta = SessionMeta::starting(5, "203.0.113.10:22".parse().unwrap());
        let mut c = integrity::genesis(5);
        let stored: Vec<Vec<u8>> = ["old ", "recording"]
            .iter()
            .map(|t| text_block(t))
            .collect();
        for (n, b) in stored.iter().enumerate() {
            c = integrity::next(&c, n as u32, b);
        }
        meta.blocks = 2;
        meta.chain = Some(integrity::hex(&c));
        meta.state = SessionState::Closed;
        {
            // What a schema-5 bastiond left: the bytes in `record_blocks`.
            let db = old_store(&path, 5, &meta);
            let (blocks, chains) = (
                db.open_tree(LEGACY_BLOCKS_TREE).unwrap(),
                db.open_tree(CHAIN_TREE).unwrap(),
            );
            let mut c = integrity::genesis(5);
            for (n, b) in stored.iter().enumerate() {
                c = integrity::next(&c, n as u32, b);
                blocks.insert(block_key(5, n as u32), b.clone()).unwrap();
                chains.insert(block_key(5, n as u32), &c[..]).unwrap();
            }
            db.flush().unwrap();
        }
        // An earlier run of step 6 was interrupted after writing a segment it never referred
        // to: the step starts that session over.
        let seg_dir = segments::dir(&path);
        std::fs::create_dir_all(&seg_dir).unwrap();
        std::fs::write(seg_dir.join("0000000000000005-00000000.seg"), b"half").unwrap();

        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), crate::SCHEMA_VERSION);
        for tree in [LEGACY_BLOCKS_TREE, REFS_TREE, CHAIN_TREE] {
            assert_eq!(store.tree(tree).unwrap().len(), 0, "{tree} is emptied");
        }
        assert_eq!(text(&store, 5), "old recording");
        let blocks = store.session_blocks(&meta).unwrap();
        assert_eq!(integrity::check(5, &blocks, 2, &c), Ok(()));
        assert!(store.size_on_disk().unwrap() > segments::MAGIC.len() as u64);
    }

    /// One block's record in a segment, as schemas 6 to 8 write it.
    fn record(id: u64, n: u32, stored: &[u8], chain: &[u8; 32]) -> Vec<u8> {
        let mut r = id.to_be_bytes().to_vec();
        r.extend_from_slice(&n.to_be_bytes());
        r.extend_from_slice(&(stored.len() as u32).to_be_bytes());
        r.extend_from_slice(&crc32fast::hash(stored).to_be_bytes());
        r.extend_from_slice(chain);
        r.extend_from_slice(stored);
        r
    }

    #[test]
    fn a_schema_7_store_keeps_its_chains_in_the_segments_and_drops_its_references() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let seg_dir = segments::dir(&path);
        std::fs::create_dir_all(&seg_dir).unwrap();
        let id = 9u64;
        let texts = ["first ", "second ", "third"];
        let mut meta = SessionMeta::starting(id, "203.0.113.10:22".parse().unwrap());
        meta.blocks = texts.len() as u32;
        meta.state = SessionState::Closed;
        {
            let db = old_store(&path, 7, &meta);
            let (refs, chains) = (
                db.open_tree(REFS_TREE).unwrap(),
                db.open_tree(CHAIN_TREE).unwrap(),
            );
            // Blocks 0 and 1 in segment 0 with zeros for chains (as step 6 wrote them), block
            // 2 in segment 1 with its chain, its reference already dropped by a run of step 8
            // that was interrupted (which recorded segment 1's start first).
            let mut c = integrity::genesis(id);
            let mut files = [segments::MAGIC.to_vec(), segments::MAGIC.to_vec()];
            for (n, t) in texts.iter().enumerate() {
                let (n, stored) = (n as u32, text_block(t));
                c = integrity::next(&c, n, &stored);
                let seq = u32::from(n == 2);
                let file = &mut files[seq as usize];
                let at = LegacyRef {
                    seq,
                    offset: file.len() as u64,
                    len: stored.len() as u32,
                };
                file.extend(record(id, n, &stored, if n == 2 { &c } else { &[0; 32] }));
                if n < 2 {
                    refs.insert(block_key(id, n), &at.encode()[..]).unwrap();
                    chains.insert(block_key(id, n), &c[..]).unwrap();
                }
            }
            let start = SegmentStart { seq: 1, first: 2 };
            db.open_tree(SEGMENTS_TREE)
                .unwrap()
                .insert(start.key(id), &start.value()[..])
                .unwrap();
            for (seq, bytes) in files.iter().enumerate() {
                std::fs::write(segments::path(&seg_dir, id, seq as u32), bytes).unwrap();
            }
            meta.chain = Some(integrity::hex(&c));
            db.open_tree(SESSIONS_TREE)
                .unwrap()
                .insert(id.to_be_bytes(), serde_json::to_vec(&meta).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), crate::SCHEMA_VERSION);
        assert_eq!(store.tree(REFS_TREE).unwrap().len(), 0);
        assert_eq!(store.tree(CHAIN_TREE).unwrap().len(), 0);
        assert_eq!(store.tree(SEGMENTS_TREE).unwrap().len(), 2);
        assert_eq!(text(&store, id), "first second third");
        let head = integrity::parse_hex(meta.chain.as_deref().unwrap()).unwrap();
        let blocks = store.session_blocks(&meta).unwrap();
        assert!(blocks.iter().all(|b| b.chain.is_some()), "chains moved");
        assert_eq!(integrity::check(id, &blocks, 3, &head), Ok(()));
    }
}
