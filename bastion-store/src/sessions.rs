//! Session records: metadata in `sessions` (JSON, keyed by id), whose block count is the
//! record's commit point; where each of the session's segment files starts in
//! `record_segments` (keyed by id and segment number, big endian, so a prefix scan lists them in
//! order; see `segments.rs`). Schema 5 and earlier kept the bytes themselves in
//! `record_blocks` (step 6 moved them to segments); schemas 6 and 7 kept a reference and a
//! chain value per block in `record_refs` and `record_chain` (step 8 moved the chain values
//! into the segments' headers and dropped both).

use bastion_core::{
    integrity::StoredBlock,
    record::{Frame, block},
    session::{NewCommand, SessionMeta, SessionState},
};

use super::{
    Store, StoreError,
    segments::{self, BlockCursor, SegmentStart, SegmentWriter},
};

pub(super) const SESSIONS_TREE: &str = "sessions";
/// Where each of a session's segments starts ([`SegmentStart`]).
pub(super) const SEGMENTS_TREE: &str = "record_segments";
/// Schema ≤ 5: the blocks' bytes (emptied by step 6).
pub(super) const LEGACY_BLOCKS_TREE: &str = "record_blocks";
/// Schemas 6 and 7: where each block's bytes were (emptied by step 8).
pub(super) const REFS_TREE: &str = "record_refs";
/// Schemas ≤ 7: the chain value after each block (same keys as `record_refs`; emptied by
/// step 8, which copies them into the segments' headers).
pub(super) const CHAIN_TREE: &str = "record_chain";

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
        self.queue_if_finished(meta)?;
        self.flush()
    }

    /// The writer for session `id`'s segment files (one per session, held by its recorder).
    pub fn segment_writer(&self, id: u64) -> SegmentWriter {
        SegmentWriter::new(self.segments.clone(), id)
    }

    /// Stores block `n` of `meta`'s session at once: [`SegmentWriter::append`] then
    /// [`Store::commit_blocks`].
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
        segment.append(n, stored, chain)?;
        self.commit_blocks(segment, meta, first_seq, commands)
    }

    /// Makes the blocks appended to `segment` since the last commit part of the record: the
    /// segment is synced (`fdatasync`) first, then the segments started since are recorded,
    /// then the commands the blocks carried (numbered from `first_seq`), and last the metadata
    /// that counts the blocks, which is the commit point; all made durable. Until then no
    /// reader sees them; a crash before the metadata leaves segment data (and perhaps segment
    /// starts) past what it counts, removed when the store reopens
    /// ([`Store::mark_interrupted`]).
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
        first_seq: u32,
        commands: &[NewCommand],
    ) -> Result<(), StoreError> {
        segment.sync()?;
        let v = serde_json::to_vec(meta)
            .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
        let starts = self.tree(SEGMENTS_TREE)?;
        for s in segment.take_started() {
            starts
                .insert(s.key(meta.id), &s.value()[..])
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

    /// Where session `id`'s segments start, in order.
    fn segment_starts(&self, id: u64) -> Result<Vec<SegmentStart>, StoreError> {
        self.tree(SEGMENTS_TREE)?
            .scan_prefix(id.to_be_bytes())
            .map(|item| {
                let (k, v) = item.map_err(|e| self.io(e))?;
                Ok(SegmentStart::decode(&k, &v)?)
            })
            .collect()
    }

    /// A cursor over the blocks `meta` counts.
    fn cursor(&self, meta: &SessionMeta) -> Result<BlockCursor, StoreError> {
        Ok(BlockCursor::new(
            self.segments.clone(),
            meta.id,
            self.segment_starts(meta.id)?,
            meta.blocks,
        ))
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
        let Some(meta) = self.session(id)? else {
            return Ok((frames, first));
        };
        if first >= meta.blocks {
            return Ok((frames, first));
        }
        let mut cursor = self.cursor(&meta)?;
        cursor.seek(first)?;
        let mut next = first;
        for _ in 0..max_blocks {
            let Some(b) = cursor.next_block() else {
                break;
            };
            let b = b?;
            frames
                .extend(block::decompress(&b.bytes).map_err(|e| {
                    self.io(sled::Error::Unsupported(format!("session {id}: {e}")))
                })?);
            next = b.n.saturating_add(1);
        }
        Ok((frames, next))
    }

    /// The blocks `meta` counts as stored (number, bytes, chain value kept after it), in
    /// order. A block whose bytes cannot be read back is given as empty: its chain then breaks
    /// there, and `verify` names the block.
    pub fn session_blocks(&self, meta: &SessionMeta) -> Result<Vec<StoredBlock>, StoreError> {
        let mut out = Vec::new();
        self.for_each_block(meta, |b| {
            out.push(b);
            true
        })?;
        Ok(out)
    }

    /// Hands the blocks `meta` counts to `f` one at a time, in order, while it returns true
    /// (as [`Store::session_blocks`] gives them, holding one at a time).
    pub fn for_each_block(
        &self,
        meta: &SessionMeta,
        mut f: impl FnMut(StoredBlock) -> bool,
    ) -> Result<(), StoreError> {
        let mut cursor = self.cursor(meta)?;
        for n in 0..meta.blocks {
            let Some(read) = cursor.next_block() else {
                break;
            };
            let block = read.unwrap_or_else(|e| {
                tracing::warn!(session = meta.id, block = n, error = %e, "recorded block unreadable");
                StoredBlock {
                    n,
                    bytes: Vec::new(),
                    chain: None,
                }
            });
            if !f(block) {
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
        let starts = self.tree(SEGMENTS_TREE)?;
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
            if ended >= cutoff || !self.may_expire(s.id)? {
                continue;
            }
            sessions
                .remove(s.id.to_be_bytes())
                .map_err(|e| self.io(e))?;
            for tree in [&starts, &commands] {
                for key in tree.scan_prefix(s.id.to_be_bytes()).keys() {
                    tree.remove(key.map_err(|e| self.io(e))?)
                        .map_err(|e| self.io(e))?;
                }
            }
            self.archive_forget(s.id)?;
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
    /// their ids), cuts their segments back to the last committed block (a crash mid-append
    /// leaves a torn record, a crash mid-commit data the metadata does not count) and removes
    /// segment files no session refers to (a crash mid-retention).
    pub fn mark_interrupted(&self) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        let sessions = self.sessions()?;
        for mut s in sessions.iter().cloned() {
            if s.state == SessionState::Live {
                self.cut_uncommitted(&s)?;
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

    /// Removes what a crash left past what `meta` counts (the commit point): the starts of
    /// segments that begin after its last block, and the segments' bytes after that block.
    /// A record that cannot be walked to its end is left as it is, for `verify` to name.
    fn cut_uncommitted(&self, meta: &SessionMeta) -> Result<(), StoreError> {
        let tree = self.tree(SEGMENTS_TREE)?;
        for s in self.segment_starts(meta.id)? {
            if s.first >= meta.blocks {
                tracing::warn!(
                    session = meta.id,
                    segment = s.seq,
                    "removing a segment a crash left uncommitted"
                );
                tree.remove(s.key(meta.id)).map_err(|e| self.io(e))?;
            }
        }
        // Past the committed blocks of the last segment that holds any: the end to cut at.
        let mut cursor = self.cursor(meta)?;
        if meta.blocks > 0
            && let Err(e) = cursor.seek(meta.blocks)
        {
            tracing::warn!(session = meta.id, error = %e, "record unreadable; nothing cut");
            return Ok(());
        }
        segments::cut_after(&self.segments, meta.id, cursor.position())?;
        Ok(())
    }
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
            // A commit a crash cut short: block 1 appended and synced, the next segment
            // started and recorded, the metadata (the commit point) never updated.
            w.append(1, &text_block("lost"), &[1; 32]).unwrap();
            w.sync().unwrap();
            let next = SegmentStart { seq: 1, first: 2 };
            store
                .tree(SEGMENTS_TREE)
                .unwrap()
                .insert(next.key(11), &next.value()[..])
                .unwrap();
            std::fs::write(
                seg_dir.join("000000000000000b-00000001.seg"),
                segments::MAGIC,
            )
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
        assert_eq!(
            store.segment_starts(11).unwrap(),
            vec![SegmentStart { seq: 0, first: 0 }],
            "the uncommitted segment is gone"
        );
        assert!(!seg_dir.join("000000000000000b-00000001.seg").exists());
        let frames = store.session_frames(11).unwrap();
        assert_eq!(frames.len(), 1, "the uncommitted block is gone");
        assert_eq!(frames[0].data, "kept");
    }
}
