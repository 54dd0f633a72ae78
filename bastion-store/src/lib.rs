//! The embedded store: one sled database directory with named trees and a schema version.
//!
//! Invariant: the `meta` tree's `schema_version` says which layout every other tree uses. Opening
//! a store runs the migrations from its version up to [`SCHEMA_VERSION`] in order, each one
//! committing its new version number, so an appliance upgrades in place and an interrupted upgrade
//! resumes where it stopped. A store newer than this binary is refused rather than misread.

#![forbid(unsafe_code)]

mod accounts;
mod archive_queue;
mod audit_upkeep;
mod commands;
mod mfa;
mod migrate;
mod policy;
mod segments;
mod sessions;
mod since;
mod tickets;
mod to_segments;

pub use accounts::StoredAccount;
pub use archive_queue::{AuditProgress, Done as Archived, Multipart, Pending};
pub use audit_upkeep::DEFAULT_FLOOD_LIMITS;
pub use commands::CommandIndex;
pub use mfa::StoredTotp;
pub use segments::{SegmentError, SegmentWriter};

use std::path::{Path, PathBuf};

pub use migrate::SCHEMA_VERSION;

const META_TREE: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}: is another bastiond using it? cannot lock it: {source}", path.display())]
    Locked { path: PathBuf, source: sled::Error },
    #[error("store {}: cannot open: {source}", path.display())]
    Open { path: PathBuf, source: sled::Error },
    #[error("store {}: schema version {found} is newer than this bastiond understands ({SCHEMA_VERSION}); upgrade bastiond", path.display())]
    TooNew { path: PathBuf, found: u32 },
    #[error("store {}: schema version record is corrupt ({len} bytes)", path.display())]
    CorruptVersion { path: PathBuf, len: usize },
    #[error("store {}: migration to schema version {to} failed: {source}", path.display())]
    Migration {
        path: PathBuf,
        to: u32,
        source: migrate::StepError,
    },
    #[error("store {}: {source}", path.display())]
    Io { path: PathBuf, source: sled::Error },
    #[error("store task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// Memory sled may keep for pages it has read or written.
const SLED_CACHE_BYTES: u64 = 32 << 20;

/// An open store.
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    /// Where recorded blocks' bytes are (`segments.rs`).
    segments: PathBuf,
    /// The next audit sequence number and the chain head. Held for the whole write of an
    /// event, so numbers are contiguous (a gap means a record was removed) and chained in order.
    audit_tail: std::sync::Mutex<AuditTail>,
    /// The in-memory copy of the `commands` tree, for search.
    commands: std::sync::RwLock<CommandIndex>,
    /// The flood budget for events unauthenticated sources cause (`audit_upkeep.rs`).
    flood: std::sync::Mutex<bastion_core::audit_flood::FloodGate>,
    /// Held while a ticket is read, decided and written back (`tickets.rs`), so two approvers
    /// deciding at once are counted one after the other.
    tickets: std::sync::Mutex<()>,
    /// Finished sessions wait for the archive, and only archived ones expire
    /// (`archive_queue.rs`).
    archiving: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct AuditTail {
    pub next: u64,
    pub head: [u8; 32],
}

/// Free bytes (for unprivileged use) on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = open_db(path)?;
        let mut store = Store {
            db,
            path: path.to_owned(),
            segments: segments::dir(path),
            audit_tail: std::sync::Mutex::new(AuditTail {
                next: 1,
                head: bastion_core::integrity::audit_genesis(),
            }),
            commands: Default::default(),
            flood: std::sync::Mutex::new(bastion_core::audit_flood::FloodGate::new(
                DEFAULT_FLOOD_LIMITS,
            )),
            tickets: std::sync::Mutex::new(()),
            archiving: std::sync::atomic::AtomicBool::new(false),
        };
        store.migrate()?;
        store.audit_tail = std::sync::Mutex::new(store.load_audit_tail()?);
        store.commands = std::sync::RwLock::new(store.load_commands()?);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the store is at (after `open`, always [`SCHEMA_VERSION`]).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let meta = self.tree(META_TREE)?;
        let raw = meta.get(SCHEMA_KEY).map_err(|source| self.io(source))?;
        match raw {
            None => Ok(0),
            Some(bytes) => {
                let arr: [u8; 4] =
                    bytes
                        .as_ref()
                        .try_into()
                        .map_err(|_| StoreError::CorruptVersion {
                            path: self.path.clone(),
                            len: bytes.len(),
                        })?;
                Ok(u32::from_be_bytes(arr))
            }
        }
    }

    /// Bytes the store occupies on disk: the database and the segment files.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let db = self.db.size_on_disk().map_err(|source| self.io(source))?;
        Ok(db + segments::size_on_disk(&self.segments)?)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(|source| self.io(source))
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|source| self.io(source))
    }

    fn io(&self, source: sled::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
            });
        }
        let meta = self.tree(META_TREE)?;
        for to in found + 1..=SCHEMA_VERSION {
            let step = |source| StoreError::Migration {
                path: self.path.clone(),
                to,
                source,
            };
            migrate::step(&self.db, &self.segments, to).map_err(step)?;
            meta.insert(SCHEMA_KEY, &to.to_be_bytes())
                .map_err(|e| step(e.into()))?;
            self.db.flush().map_err(|e| step(e.into()))?;
            tracing::info!(schema_version = to, store = %self.path.display(), "store migrated");
        }
        Ok(())
    }
}

/// Opens the sled database. A store closed a moment ago in this process can still be locked
/// while sled's background writes finish with it: a lock is retried for up to a second before
/// it is reported as another bastiond's.
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
    let t0 = std::time::Instant::now();
    loop {
        // sled keeps up to its cache capacity of pages in memory (1 GiB by default): bounded
        // here, so bastiond's memory does not follow the number of blocks recorded.
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open();
        let source = match opened {
            Ok(db) => return Ok(db),
            Err(source) => source,
        };
        let locked = matches!(&source, sled::Error::Io(e)
            if e.kind() == std::io::ErrorKind::WouldBlock || is_lock_error(e));
        if !locked {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source,
            });
        }
        if t0.elapsed() >= LOCK_WAIT {
            return Err(StoreError::Locked {
                path: path.to_owned(),
                source,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn is_lock_error(e: &std::io::Error) -> bool {
    // sled reports a held file lock as a plain io::Error whose text mentions the lock.
    e.to_string().to_ascii_lowercase().contains("lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_store_is_at_current_version_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            assert!(s.size_on_disk().unwrap() > 0);
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let db = sled::open(&path).unwrap();
            let meta = db.open_tree(META_TREE).unwrap();
            meta.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let e = Store::open(&path).err().expect("must refuse");
        assert!(e.to_string().contains("newer than this bastiond"), "{e}");
    }

    #[test]
    fn v1_store_upgrades_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            // What a schema-1 bastiond left: only the meta tree.
            let db = sled::open(&path).unwrap();
            db.open_tree(META_TREE)
                .unwrap()
                .insert(SCHEMA_KEY, &1u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let names: Vec<String> =
            s.db.tree_names()
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect();
        for want in ["audit", "policy_users", "policy_grants"] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        assert!(s.load_policy().unwrap().users.is_empty());
    }

    #[test]
    fn second_open_reports_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let _first = Store::open(&path).unwrap();
        let e = Store::open(&path).err().expect("second open must fail");
        assert!(e.to_string().contains("another bastiond"), "{e}");
    }
}
