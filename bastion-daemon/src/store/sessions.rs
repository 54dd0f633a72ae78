//! Session records: metadata in `sessions` (JSON, keyed by id), recorded blocks in
//! `record_blocks` (keyed by id and block number, both big endian, so a prefix scan reads a
//! session's blocks in order).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::{Store, StoreError};
use crate::record::{Frame, block};

pub(super) const SESSIONS_TREE: &str = "sessions";
pub(super) const BLOCKS_TREE: &str = "record_blocks";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Live,
    Closed,
    /// bastiond stopped (crash, kill) while the session was live; everything flushed is kept.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub id: u64,
    pub user: String,
    pub login: String,
    pub target: String,
    pub target_addr: SocketAddr,
    pub client_addr: Option<SocketAddr>,
    pub grant: String,
    pub started_micros: u64,
    pub ended_micros: Option<u64>,
    pub state: SessionState,
    pub blocks: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

fn block_key(id: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
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

    /// Stores block `n` of `meta`'s session together with the metadata that counts it, and makes
    /// both durable.
    pub fn put_block(&self, meta: &SessionMeta, n: u32, stored: &[u8]) -> Result<(), StoreError> {
        let sessions = self.tree(SESSIONS_TREE)?;
        let blocks = self.tree(BLOCKS_TREE)?;
        let v = serde_json::to_vec(meta)
            .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
        (&sessions, &blocks)
            .transaction(|(s, b)| {
                b.insert(&block_key(meta.id, n), stored)?;
                s.insert(&meta.id.to_be_bytes(), v.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => self.io(e),
                sled::transaction::TransactionError::Abort(()) => {
                    self.io(sled::Error::Unsupported("aborted".into()))
                }
            })?;
        self.flush()
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
        let mut frames = Vec::new();
        for item in self.tree(BLOCKS_TREE)?.scan_prefix(id.to_be_bytes()) {
            let (_, v) = item.map_err(|e| self.io(e))?;
            frames
                .extend(block::decompress(&v).map_err(|e| {
                    self.io(sled::Error::Unsupported(format!("session {id}: {e}")))
                })?);
        }
        Ok(frames)
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
