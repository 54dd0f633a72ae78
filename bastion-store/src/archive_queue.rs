//! What is left to archive, and what has been: the `archive` tree.
//!
//! ```text
//! p ‖ id (u64 BE) → Pending (JSON)   a finished session waiting for the archive
//! d ‖ id (u64 BE) → Done (JSON)      archived, read back and verified: retention may delete it
//! audit           → AuditProgress    the audit stream is archived up to `through_seq`
//! fwd:NAME        → u64 BE           the audit stream is delivered to forwarder NAME (syslog)
//!                                    up to this event
//! ```
//! A session enters the queue when it is stored finished (`put_session`) while archiving is
//! on, and at every start any finished session in neither list is queued again, so a crash
//! between the two writes loses nothing. Values carry `v` (their format version).

use bastion_core::session::SessionMeta;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, policy::corrupt};

pub(crate) const ARCHIVE_TREE: &str = "archive";
const AUDIT_KEY: &[u8] = b"audit";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub v: u32,
    /// When it was queued (µs since the epoch).
    pub queued_micros: u64,
    pub attempts: u32,
    /// Not tried again before this time (µs since the epoch); 0: at once.
    pub next_try_micros: u64,
    #[serde(default)]
    pub last_error: String,
    /// A multipart upload begun and not finished: aborted before the record is sent again.
    #[serde(default)]
    pub multipart: Option<Multipart>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Multipart {
    pub object: String,
    pub upload_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub v: u32,
    pub object: String,
    pub bytes: u64,
    pub sha256: String,
    pub at_micros: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProgress {
    pub v: u32,
    /// The last audit event archived (0: none).
    pub through_seq: u64,
}

fn key(tag: u8, id: u64) -> [u8; 9] {
    let mut k = [tag; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

impl Store {
    /// Turns queueing on: from now on every session stored finished waits for the archive,
    /// and retention deletes only archived ones.
    pub fn set_archiving(&self, on: bool) {
        self.archiving
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn archiving(&self) -> bool {
        self.archiving.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn archive_tree(&self) -> Result<sled::Tree, StoreError> {
        self.tree(ARCHIVE_TREE)
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, v: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(v).map_err(|e| self.io(corrupt(ARCHIVE_TREE, e)))
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| self.io(corrupt(ARCHIVE_TREE, e)))
    }

    /// Queues `meta`'s session if archiving is on, it is finished and not queued or archived.
    pub(crate) fn queue_if_finished(&self, meta: &SessionMeta) -> Result<(), StoreError> {
        if !self.archiving() || meta.state == bastion_core::session::SessionState::Live {
            return Ok(());
        }
        let tree = self.archive_tree()?;
        if tree
            .contains_key(key(b'd', meta.id))
            .map_err(|e| self.io(e))?
        {
            return Ok(());
        }
        let pending = self.encode(&Pending {
            v: 1,
            queued_micros: bastion_core::audit::now_micros(),
            ..Pending::default()
        })?;
        // Only if absent: a retry's state is never reset by a second write of the metadata.
        tree.compare_and_swap(key(b'p', meta.id), None as Option<&[u8]>, Some(pending))
            .map_err(|e| self.io(e))?
            .ok();
        Ok(())
    }

    /// Queues every finished session that is neither queued nor archived (at start: sessions
    /// from before archiving was turned on, or stored just before a crash). Returns how many.
    pub fn queue_unarchived(&self) -> Result<usize, StoreError> {
        let tree = self.archive_tree()?;
        let mut n = 0;
        for meta in self.sessions()? {
            if meta.state == bastion_core::session::SessionState::Live {
                continue;
            }
            let queued = tree
                .contains_key(key(b'p', meta.id))
                .map_err(|e| self.io(e))?
                || tree
                    .contains_key(key(b'd', meta.id))
                    .map_err(|e| self.io(e))?;
            if !queued {
                self.queue_if_finished(&meta)?;
                n += 1;
            }
        }
        if n > 0 {
            self.flush()?;
        }
        Ok(n)
    }

    /// Every session waiting, oldest id first.
    pub fn archive_pending(&self) -> Result<Vec<(u64, Pending)>, StoreError> {
        self.archive_tree()?
            .scan_prefix([b'p'])
            .map(|item| {
                let (k, v) = item.map_err(|e| self.io(e))?;
                let id = u64::from_be_bytes(k[1..9].try_into().unwrap_or([0; 8]));
                Ok((id, self.decode(&v)?))
            })
            .collect()
    }

    /// Writes back a waiting session's state (a failed attempt, a multipart begun).
    pub fn archive_update(&self, id: u64, p: &Pending) -> Result<(), StoreError> {
        self.archive_tree()?
            .insert(key(b'p', id), self.encode(p)?)
            .map_err(|e| self.io(e))?;
        self.flush()
    }

    /// Session `id` is archived and verified: out of the queue, into the archived list.
    pub fn archive_done(&self, id: u64, done: &Done) -> Result<(), StoreError> {
        let tree = self.archive_tree()?;
        tree.insert(key(b'd', id), self.encode(done)?)
            .map_err(|e| self.io(e))?;
        tree.remove(key(b'p', id)).map_err(|e| self.io(e))?;
        self.flush()
    }

    pub fn archived(&self, id: u64) -> Result<Option<Done>, StoreError> {
        match self
            .archive_tree()?
            .get(key(b'd', id))
            .map_err(|e| self.io(e))?
        {
            Some(v) => Ok(Some(self.decode(&v)?)),
            None => Ok(None),
        }
    }

    /// May retention delete session `id`? Always when archiving is off; when on, only once
    /// its archived copy has been verified.
    pub(crate) fn may_expire(&self, id: u64) -> Result<bool, StoreError> {
        if !self.archiving() {
            return Ok(true);
        }
        self.archive_tree()?
            .contains_key(key(b'd', id))
            .map_err(|e| self.io(e))
    }

    /// Forgets session `id`'s archive entries (it was deleted).
    pub fn archive_forget(&self, id: u64) -> Result<(), StoreError> {
        let tree = self.archive_tree()?;
        for tag in [b'p', b'd'] {
            tree.remove(key(tag, id)).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    pub fn audit_archived(&self) -> Result<AuditProgress, StoreError> {
        match self
            .archive_tree()?
            .get(AUDIT_KEY)
            .map_err(|e| self.io(e))?
        {
            Some(v) => self.decode(&v),
            None => Ok(AuditProgress::default()),
        }
    }

    /// The last audit event forwarder `name` knows was delivered (0: none).
    pub fn forwarded(&self, name: &str) -> Result<u64, StoreError> {
        let v = self
            .archive_tree()?
            .get(format!("fwd:{name}"))
            .map_err(|e| self.io(e))?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    pub fn set_forwarded(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        self.archive_tree()?
            .insert(format!("fwd:{name}"), &seq.to_be_bytes())
            .map_err(|e| self.io(e))?;
        self.flush()
    }

    pub fn set_audit_archived(&self, through_seq: u64) -> Result<(), StoreError> {
        let v = self.encode(&AuditProgress { v: 1, through_seq })?;
        self.archive_tree()?
            .insert(AUDIT_KEY, v)
            .map_err(|e| self.io(e))?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_core::session::SessionState;

    fn finished(store: &Store) -> SessionMeta {
        let id = store.new_session_id().unwrap();
        let mut m = SessionMeta::starting(id, "203.0.113.10:22".parse().unwrap());
        m.state = SessionState::Closed;
        m
    }

    #[test]
    fn finished_sessions_wait_until_archived_and_only_then_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let before = finished(&store);
        store.put_session(&before).unwrap();
        store.set_archiving(true);
        let live = SessionMeta::starting(store.new_session_id().unwrap(), before.target_addr);
        store.put_session(&live).unwrap();
        let after = finished(&store);
        store.put_session(&after).unwrap();
        let ids = |s: &Store| {
            s.archive_pending()
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&store), vec![after.id]);
        // At start: what was finished before archiving began is queued too, once.
        assert_eq!(store.queue_unarchived().unwrap(), 1);
        assert_eq!(store.queue_unarchived().unwrap(), 0);
        assert_eq!(ids(&store), vec![before.id, after.id]);
        // A retry's state survives the metadata being written again.
        let mut p = store.archive_pending().unwrap()[0].1.clone();
        p.attempts = 3;
        store.archive_update(before.id, &p).unwrap();
        store.put_session(&before).unwrap();
        assert_eq!(store.archive_pending().unwrap()[0].1.attempts, 3);
        // Retention keeps what is not archived.
        assert_eq!(store.expire_sessions(u64::MAX).unwrap(), Vec::<u64>::new());
        let done = Done {
            v: 1,
            object: "k".into(),
            bytes: 1,
            sha256: "00".into(),
            at_micros: 1,
        };
        store.archive_done(before.id, &done).unwrap();
        assert_eq!(ids(&store), vec![after.id]);
        assert_eq!(store.archived(before.id).unwrap(), Some(done));
        assert_eq!(store.expire_sessions(u64::MAX).unwrap(), vec![before.id]);
        assert_eq!(store.archived(before.id).unwrap(), None);
    }
}
