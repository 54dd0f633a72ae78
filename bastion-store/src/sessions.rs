//! Session records: metadata in `sessions` (JSON, keyed by id), recorded blocks in
//! `record_blocks` (keyed by id and block number, both big endian, so a prefix scan reads a
//! session's blocks in order).

use sled::Transactional;

use bastion_core::{
    integrity::StoredBlock,
    record::{Frame, block},
    session::{NewCommand, SessionMeta, SessionState},
};

use super::{Store, StoreError};

pub(super) const SESSIONS_TREE: &str = "sessions";
pub(super) const BLOCKS_TREE: &str = "record_blocks";
/// The chain value after each block (same keys as `record_blocks`).
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

    /// Stores block `n` of `meta`'s session, the chain value after it, the metadata that
    /// counts it and the commands it recorded (numbered from `first_seq`), in one transaction,
    /// and makes them durable.
    pub fn put_block(
        &self,
        meta: &SessionMeta,
        n: u32,
        stored: &[u8],
        chain: &[u8; 32],
        first_seq: u32,
        commands: &[NewCommand],
    ) -> Result<(), StoreError> {
        let sessions = self.tree(SESSIONS_TREE)?;
        let blocks = self.tree(BLOCKS_TREE)?;
        let chains = self.tree(CHAIN_TREE)?;
        let index = self.tree(super::commands::COMMANDS_TREE)?;
        let v = serde_json::to_vec(meta)
            .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
        (&sessions, &blocks, &chains, &index)
            .transaction(|(s, b, c, i)| {
                b.insert(&block_key(meta.id, n), stored)?;
                c.insert(&block_key(meta.id, n), &chain[..])?;
                s.insert(&meta.id.to_be_bytes(), v.as_slice())?;
                super::commands::insert(i, meta, first_seq, commands)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => self.io(e),
                sled::transaction::TransactionError::Abort(()) => {
                    self.io(sled::Error::Unsupported("aborted".into()))
                }
            })?;
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
        let range = block_key(id, first)..=block_key(id, u32::MAX);
        for item in self
            .tree(BLOCKS_TREE)?
            .range(range)
            .take(max_blocks as usize)
        {
            let (k, v) = item.map_err(|e| self.io(e))?;
            frames
                .extend(block::decompress(&v).map_err(|e| {
                    self.io(sled::Error::Unsupported(format!("session {id}: {e}")))
                })?);
            next = block_number(&k).saturating_add(1);
        }
        Ok((frames, next))
    }

    /// Session `id`'s blocks as stored (number, bytes, chain value kept after it), in order.
    pub fn session_blocks(&self, id: u64) -> Result<Vec<StoredBlock>, StoreError> {
        let chains = self.tree(CHAIN_TREE)?;
        let mut out = Vec::new();
        for item in self.tree(BLOCKS_TREE)?.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let n = block_number(&k);
            let kept = chains
                .get(&k)
                .map_err(|e| self.io(e))?
                .and_then(|c| <[u8; 32]>::try_from(c.as_ref()).ok());
            out.push(StoredBlock {
                n,
                bytes: v.to_vec(),
                chain: kept,
            });
        }
        Ok(out)
    }

    /// Deletes the finished sessions that ended (or, interrupted, started) before `cutoff`
    /// (µs since the epoch); returns their ids. Metadata goes first: a crash part-way leaves
    /// unreferenced blocks, never a session with blocks missing.
    pub fn expire_sessions(&self, cutoff: u64) -> Result<Vec<u64>, StoreError> {
        let (blocks, chains) = (self.tree(BLOCKS_TREE)?, self.tree(CHAIN_TREE)?);
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
        }
        Ok(gone)
    }

    /// Marks sessions left live by a bastiond that died as interrupted; returns their ids.
    pub fn mark_interrupted(&self) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        for mut s in self.sessions()? {
            if s.state == SessionState::Live {
                s.state = SessionState::Interrupted;
                self.put_session(&s)?;
                ids.push(s.id);
            }
        }
        Ok(ids)
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
            for (n, text) in texts.iter().enumerate() {
                let mut raw = Vec::new();
                frame(text).encode(&mut raw);
                m.blocks = n as u32 + 1;
                let stored = block::compress(&raw).unwrap();
                store
                    .put_block(m, n as u32, &stored, &[0; 32], 0, &[])
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
}
