//! Session records: metadata in `sessions` (JSON, keyed by id); per block, a reference to its
//! bytes in the session's segment files in `record_refs` and the chain value after it in
//! `record_chain` (both keyed by id and block number, big endian, so a prefix scan reads a
//! session's blocks in order). Schema 5 and earlier kept the bytes themselves in
//! `record_blocks`; step 6 moves them out.

use std::path::Path;

use sled::Transactional;

use bastion_core::{
    integrity::StoredBlock,
    record::{Frame, block},
    session::{NewCommand, SessionMeta, SessionState},
};

use super::{
    Store, StoreError,
    segments::{self, BlockRef, SegmentReader, SegmentWriter},
};

/// A block appended to its session's segment, not yet committed.
#[derive(Debug, Clone, Copy)]
pub struct AppendedBlock {
    pub n: u32,
    pub at: BlockRef,
    /// The chain value after the block.
    pub chain: [u8; 32],
}

pub(super) const SESSIONS_TREE: &str = "sessions";
/// Schema ≤ 5: the blocks' bytes (emptied by step 6).
pub(super) const LEGACY_BLOCKS_TREE: &str = "record_blocks";
/// Where each block's bytes are ([`BlockRef`]).
pub(super) const REFS_TREE: &str = "record_refs";
/// The chain value after each block (same keys as `record_refs`).
pub(super) const CHAIN_TREE: &str = "record_chain";

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

impl Store {
    /// A fresh session id (unique across restarts).
    pub fn new_session_id(&self) -> Result<u64, StoreError> {
        self.db
            .generate_id()
            .map(|id| id + 1)
            .map_err(|e| self.io(e))
    }

    pub fn put_session(&self, meta: &SessionMeta) -> Result<(), StoreError> {
        let v = serde_json::to_vec(meta)
            .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
        self.tree(SESSIONS_TREE)?
            .insert(meta.id.to_be_bytes(), v)
            .map_err(|e| self.io(e))?;
        self.flush()
    }

    /// The writer for session `id`'s segment files (one per session, held by its recorder).
    pub fn segment_writer(&self, id: u64) -> SegmentWriter {
        SegmentWriter::new(self.segments.clone(), id)
    }

    /// Stores block `n` of `meta`'s session at once: [`SegmentWriter::append`] then
    /// [`Store::commit_blocks`] of that one block.
    #[allow(clippy::too_many_arguments)]
    pub fn put_block(
        &self,
        segment: &mut SegmentWriter,
        meta: &SessionMeta,
        n: u32,
        stored: &[u8],
        chain: &[u8; 32],
        first_seq: u32,
        commands: &[NewCommand],
    ) -> Result<(), StoreError> {
        let at = segment.append(n, stored, chain)?;
        self.commit_blocks(
            segment,
            meta,
            &[AppendedBlock {
                n,
                at,
                chain: *chain,
            }],
            first_seq,
            commands,
        )
    }

    /// Makes the blocks appended to `segment` since the last commit part of the record: the
    /// segment is synced (`fdatasync`) first, then each block's reference and chain value are
    /// stored, then the commands they recorded (numbered from `first_seq`), and last the
    /// metadata that counts them, which is the commit point; all made durable. Until then no
    /// reader sees them; a crash before the metadata leaves references past what it counts,
    /// removed with the segment tail when the store reopens ([`Store::mark_interrupted`]).
    ///
    /// Plain inserts in that order, not a sled transaction: sled 0.34 runs transactions (and
    /// batches) under a process-wide write lock that every other operation then queues behind,
    /// and with many sessions committing while the control API lists sessions it has hung
    /// bastiond (the 20-round crash test caught it). Nothing here needs one: the order alone
    /// keeps every state a crash can leave readable and repairable.
    pub fn commit_blocks(
        &self,
        segment: &mut SegmentWriter,
        meta: &SessionMeta,
        blocks: &[AppendedBlock],
        first_seq: u32,
        commands: &[NewCommand],
    ) -> Result<(), StoreError> {
        segment.sync()?;
        let refs = self.tree(REFS_TREE)?;
        let chains = self.tree(CHAIN_TREE)?;
        let v = serde_json::to_vec(meta)
            .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
        for b in blocks {
            refs.insert(block_key(meta.id, b.n), &b.at.encode()[..])
                .map_err(|e| self.io(e))?;
            chains
                .insert(block_key(meta.id, b.n), &b.chain[..])
                .map_err(|e| self.io(e))?;
        }
        super::commands::insert(
            &self.tree(super::commands::COMMANDS_TREE)?,
            meta,
            first_seq,
            commands,
        )
        .map_err(|e| self.io(e))?;
        self.tree(SESSIONS_TREE)?
            .insert(meta.id.to_be_bytes(), v)
            .map_err(|e| self.io(e))?;
        self.flush()?;
        self.index_commands(meta, first_seq, commands);
        Ok(())
    }

    /// Every session, newest first.
    pub fn sessions(&self) -> Result<Vec<SessionMeta>, StoreError> {
        let mut v = self
            .tree(SESSIONS_TREE)?
            .iter()
            .values()
            .map(|r| {
                let bytes = r.map_err(|e| self.io(e))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))
            })
            .collect::<Result<Vec<SessionMeta>, StoreError>>()?;
        v.reverse();
        Ok(v)
    }

    pub fn session(&self, id: u64) -> Result<Option<SessionMeta>, StoreError> {
        self.tree(SESSIONS_TREE)?
            .get(id.to_be_bytes())
            .map_err(|e| self.io(e))?
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))
            })
            .transpose()
    }

    /// Every frame of session `id`, in order.
    pub fn session_frames(&self, id: u64) -> Result<Vec<Frame>, StoreError> {
        Ok(self.session_frames_from(id, 0, u32::MAX)?.0)
    }

    /// The frames of session `id`'s blocks from block `first` on, at most `max_blocks` of them,
    /// and the number of the block after the last one read (where to continue). Blocks are
    /// written whole and never change, so a reader that keeps that number reads each once.
    pub fn session_frames_from(
        &self,
        id: u64,
        first: u32,
        max_blocks: u32,
    ) -> Result<(Vec<Frame>, u32), StoreError> {
        let mut frames = Vec::new();
        let mut next = first;
        let mut reader = SegmentReader::new(self.segments.clone(), id);
        let range = block_key(id, first)..=block_key(id, u32::MAX);
        for item in self.tree(REFS_TREE)?.range(range).take(max_blocks as usize) {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let n = block_number(&k);
            let stored = reader.read(n, BlockRef::decode(&v)?)?;
            frames
                .extend(block::decompress(&stored).map_err(|e| {
                    self.io(sled::Error::Unsupported(format!("session {id}: {e}")))
                })?);
            next = n.saturating_add(1);
        }
        Ok((frames, next))
    }

    /// Session `id`'s blocks as stored (number, bytes, chain value kept after it), in order.
    /// A block whose bytes cannot be read back is given as empty: its chain then breaks there,
    /// and `verify` names the block.
    pub fn session_blocks(&self, id: u64) -> Result<Vec<StoredBlock>, StoreError> {
        let mut out = Vec::new();
        self.for_each_block(id, |b| {
            out.push(b);
            true
        })?;
        Ok(out)
    }

    /// Hands session `id`'s blocks to `f` one at a time, in order, while it returns true (as
    /// [`Store::session_blocks`] gives them, holding one at a time).
    pub fn for_each_block(
        &self,
        id: u64,
        mut f: impl FnMut(StoredBlock) -> bool,
    ) -> Result<(), StoreError> {
        let chains = self.tree(CHAIN_TREE)?;
        let mut reader = SegmentReader::new(self.segments.clone(), id);
        for item in self.tree(REFS_TREE)?.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let n = block_number(&k);
            let kept = chains
                .get(&k)
                .map_err(|e| self.io(e))?
                .and_then(|c| <[u8; 32]>::try_from(c.as_ref()).ok());
            let bytes = BlockRef::decode(&v)
                .and_then(|r| reader.read(n, r))
                .unwrap_or_else(|e| {
                    tracing::warn!(session = id, block = n, error = %e, "recorded block unreadable");
                    Vec::new()
                });
            if !f(StoredBlock {
                n,
                bytes,
                chain: kept,
            }) {
                break;
            }
        }
        Ok(())
    }

    /// Deletes the finished sessions that ended (or, interrupted, started) before `cutoff`
    /// (µs since the epoch); returns their ids. Metadata goes first, segment files last: a
    /// crash part-way leaves unreferenced blocks (swept at the next open), never a session with
    /// blocks missing.
    pub fn expire_sessions(&self, cutoff: u64) -> Result<Vec<u64>, StoreError> {
        let (blocks, chains) = (self.tree(REFS_TREE)?, self.tree(CHAIN_TREE)?);
        let commands = self.tree(super::commands::COMMANDS_TREE)?;
        let sessions = self.tree(SESSIONS_TREE)?;
        let mut gone = Vec::new();
        for s in self.sessions()? {
            let ended = match s.state {
                SessionState::Live => continue,
                SessionState::Closed | SessionState::Failed => {
                    s.ended_micros.unwrap_or(s.started_micros)
                }
                SessionState::Interrupted => s.started_micros,
            };
            if ended >= cutoff {
                continue;
            }
            sessions
                .remove(s.id.to_be_bytes())
                .map_err(|e| self.io(e))?;
            for tree in [&blocks, &chains, &commands] {
                for key in tree.scan_prefix(s.id.to_be_bytes()).keys() {
                    tree.remove(key.map_err(|e| self.io(e))?)
                        .map_err(|e| self.io(e))?;
                }
            }
            gone.push(s.id);
        }
        if !gone.is_empty() {
            self.flush()?;
            self.unindex_sessions(&gone);
            for id in &gone {
                segments::remove_session(&self.segments, *id)?;
            }
        }
        Ok(gone)
    }

    /// After a bastiond that died: marks the sessions it left live as interrupted (returning
    /// their ids), cuts their segments back to the last referenced block (a crash mid-append
    /// leaves a torn record) and removes segment files no session refers to (a crash
    /// mid-retention).
    pub fn mark_interrupted(&self) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        let sessions = self.sessions()?;
        for mut s in sessions.iter().cloned() {
            if s.state == SessionState::Live {
                self.drop_uncommitted(&s)?;
                segments::cut_after(&self.segments, s.id, self.last_ref(s.id)?)?;
                s.state = SessionState::Interrupted;
                self.put_session(&s)?;
                ids.push(s.id);
            }
        }
        let known: std::collections::BTreeSet<u64> = sessions.iter().map(|s| s.id).collect();
        for orphan in segments::sessions_on_disk(&self.segments)?.difference(&known) {
            tracing::warn!(
                session = orphan,
                "removing segment files no session refers to"
            );
            segments::remove_session(&self.segments, *orphan)?;
        }
        Ok(ids)
    }

    /// Removes the references and chain values of blocks past what `meta` counts: a commit
    /// a crash interrupted before its metadata (the commit point) was stored.
    fn drop_uncommitted(&self, meta: &SessionMeta) -> Result<(), StoreError> {
        for name in [REFS_TREE, CHAIN_TREE] {
            let tree = self.tree(name)?;
            let past = block_key(meta.id, meta.blocks)..=block_key(meta.id, u32::MAX);
            for key in tree.range(past).keys() {
                let key = key.map_err(|e| self.io(e))?;
                tracing::warn!(
                    session = meta.id,
                    block = block_number(&key),
                    "removing a block a crash left uncommitted"
                );
                tree.remove(key).map_err(|e| self.io(e))?;
            }
        }
        Ok(())
    }

    /// The reference of session `id`'s last stored block.
    fn last_ref(&self, id: u64) -> Result<Option<BlockRef>, StoreError> {
        let last = self
            .tree(REFS_TREE)?
            .scan_prefix(id.to_be_bytes())
            .next_back()
            .transpose()
            .map_err(|e| self.io(e))?;
        Ok(last.map(|(_, v)| BlockRef::decode(&v)).transpose()?)
    }
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
            // chain is a copy for repair, `record_chain` stays the one verify reads.
            let chain = chains
                .get(&k)?
                .and_then(|c| <[u8; 32]>::try_from(c.as_ref()).ok())
                .unwrap_or([0; 32]);
            moved.push((k, writer.append(n, &bytes, &chain)?));
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

#[cfg(test)]
mod tests {
    use bastion_core::record::Kind;

    use super::*;

    fn frame(text: &str) -> Frame {
        Frame {
            kind: Kind::Output,
            channel: 0,
            t_micros: 0,
            data: bytes::Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[test]
    fn a_watcher_reads_each_block_once_from_where_it_left_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let mut meta = SessionMeta::starting(7, "203.0.113.10:22".parse().unwrap());
        // Another session's blocks sort right after this one's: they must not leak in.
        let mut other = SessionMeta::starting(8, "203.0.113.10:22".parse().unwrap());
        for (m, texts) in [(&mut meta, ["a", "b", "c"]), (&mut other, ["x", "y", "z"])] {
            let mut w = store.segment_writer(m.id);
            for (n, text) in texts.iter().enumerate() {
                let mut raw = Vec::new();
                frame(text).encode(&mut raw);
                m.blocks = n as u32 + 1;
                let stored = block::compress(&raw).unwrap();
                store
                    .put_block(&mut w, m, n as u32, &stored, &[0; 32], 0, &[])
                    .unwrap();
            }
        }
        let text = |frames: Vec<Frame>| -> String {
            frames
                .iter()
                .map(|f| String::from_utf8_lossy(&f.data).into_owned())
                .collect()
        };
        let (frames, next) = store.session_frames_from(7, 0, 2).unwrap();
        assert_eq!((text(frames), next), ("ab".to_owned(), 2));
        let (frames, next) = store.session_frames_from(7, next, 2).unwrap();
        assert_eq!((text(frames), next), ("c".to_owned(), 3));
        let (frames, next) = store.session_frames_from(7, next, 2).unwrap();
        assert_eq!(
            (text(frames), next),
            (String::new(), 3),
            "nothing new: same place"
        );
        assert_eq!(text(store.session_frames(8).unwrap()), "xyz");
    }

    fn text_block(text: &str) -> Vec<u8> {
        let mut raw = Vec::new();
        frame(text).encode(&mut raw);
        block::compress(&raw).unwrap()
    }

    #[test]
    fn a_schema_5_store_moves_its_blocks_to_segments_and_still_verifies() {
        use bastion_core::integrity;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let mut meta = SessionMeta::starting(5, "203.0.113.10:22".parse().unwrap());
        {
            // What a schema-5 bastiond left: the bytes in `record_blocks`.
            let db = sled::open(&path).unwrap();
            db.open_tree(super::super::META_TREE)
                .unwrap()
                .insert(super::super::SCHEMA_KEY, &5u32.to_be_bytes())
                .unwrap();
            let (blocks, chains) = (
                db.open_tree(LEGACY_BLOCKS_TREE).unwrap(),
                db.open_tree(CHAIN_TREE).unwrap(),
            );
            let mut c = integrity::genesis(5);
            for (n, text) in ["old ", "recording"].iter().enumerate() {
                let stored = text_block(text);
                c = integrity::next(&c, n as u32, &stored);
                blocks.insert(block_key(5, n as u32), stored).unwrap();
                chains.insert(block_key(5, n as u32), &c[..]).unwrap();
            }
            meta.blocks = 2;
            meta.chain = Some(integrity::hex(&c));
            meta.state = SessionState::Closed;
            db.open_tree(SESSIONS_TREE)
                .unwrap()
                .insert(5u64.to_be_bytes(), serde_json::to_vec(&meta).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        // An earlier run of step 6 was interrupted after writing a segment it never referred
        // to: the step starts that session over.
        let seg_dir = segments::dir(&path);
        std::fs::create_dir_all(&seg_dir).unwrap();
        std::fs::write(seg_dir.join("0000000000000005-00000000.seg"), b"half").unwrap();

        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), crate::SCHEMA_VERSION);
        assert_eq!(store.tree(LEGACY_BLOCKS_TREE).unwrap().len(), 0);
        let text: String = store
            .session_frames(5)
            .unwrap()
            .iter()
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .collect();
        assert_eq!(text, "old recording");
        let head = integrity::parse_hex(meta.chain.as_deref().unwrap()).unwrap();
        let blocks = store.session_blocks(5).unwrap();
        assert_eq!(integrity::check(5, &blocks, 2, &head), Ok(()));
        assert!(store.size_on_disk().unwrap() > segments::MAGIC.len() as u64);
    }

    #[test]
    fn reopening_after_a_crash_cuts_torn_tails_and_sweeps_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let seg_dir = segments::dir(&path);
        let (live, torn_len) = {
            let store = Store::open(&path).unwrap();
            let mut live = SessionMeta::starting(11, "203.0.113.10:22".parse().unwrap());
            store.put_session(&live).unwrap();
            let mut w = store.segment_writer(11);
            live.blocks = 1;
            store
                .put_block(&mut w, &live, 0, &text_block("kept"), &[0; 32], 0, &[])
                .unwrap();
            let file = seg_dir.join("000000000000000b-00000000.seg");
            let len = std::fs::metadata(&file).unwrap().len();
            // A commit a crash cut short: block 1 appended and referenced, the metadata (the
            // commit point) never updated.
            let at = w.append(1, &text_block("lost"), &[1; 32]).unwrap();
            w.sync().unwrap();
            store
                .tree(REFS_TREE)
                .unwrap()
                .insert(block_key(11, 1), &at.encode()[..])
                .unwrap();
            store.flush().unwrap();
            // A crash mid-append, and files of a session retention removed (not theirs).
            let mut torn = std::fs::read(&file).unwrap();
            torn.extend_from_slice(&[7; 40]);
            std::fs::write(&file, torn).unwrap();
            std::fs::write(seg_dir.join("0000000000000063-00000000.seg"), b"x").unwrap();
            (live, len)
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.mark_interrupted().unwrap(), vec![live.id]);
        let file = seg_dir.join("000000000000000b-00000000.seg");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), torn_len);
        assert_eq!(
            segments::sessions_on_disk(&seg_dir).unwrap(),
            [11].into_iter().collect()
        );
        let frames = store.session_frames(11).unwrap();
        assert_eq!(frames.len(), 1, "the uncommitted block is gone");
        assert_eq!(frames[0].data, "kept");
    }
}
