//! One session's blocks on their way to the store: frames collect into a block of
//! [`BLOCK_TARGET`] bytes; a full block is compressed, chained and appended to the session's
//! segment at once; appended blocks are committed (segment synced, then counted by the
//! session's metadata in sled, with their commands) at every flush tick, at close, and whenever
//! [`COMMIT_BYTES`] are waiting. One `fdatasync` per commit instead of per block is what lets a
//! bulk transfer record at disk speed, and the flush interval still bounds what a crash can
//! take.
//!
//! Invariant: `committed` is exactly what the store holds for the session. A failure at any
//! step leaves it there (appended blocks nobody refers to are cut at the next open), so the
//! record says exactly where it stopped.

use std::sync::Arc;

use bastion_core::{
    integrity,
    record::{
        block,
        frame::{Frame, Kind},
    },
    session::{NewCommand, SessionMeta},
};
use bastion_store::{SegmentWriter, Store};

use crate::disk_thread;

/// Raw bytes collected before a block is compressed and written.
pub(crate) const BLOCK_TARGET: usize = 256 * 1024;
/// Appended (compressed) bytes after which a commit does not wait for the next tick: bounds
/// what waits unsynced in the page cache per session.
const COMMIT_BYTES: u64 = 16 << 20;

/// What a block must stay within to be stored.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    /// Free bytes the store's filesystem keeps.
    pub floor_bytes: u64,
    /// Stored bytes the session may take.
    pub quota_bytes: Option<u64>,
}

/// The part that does disk IO, moved whole to the session's disk thread for each step.
struct Disk {
    store: Arc<Store>,
    segment: SegmentWriter,
    /// Created with the first block (its error is then that block's).
    compressor: Option<block::Compressor>,
    /// The last block as stored, its allocation reused for the next: in steady state a
    /// block costs no large allocation (which would spread over the disk threads'
    /// heaps and keep RSS climbing with the volume recorded).
    stored: Vec<u8>,
    limits: Limits,
    /// The session as appended: blocks, chain and stored bytes past `committed`.
    head: SessionMeta,
    /// Blocks and bytes appended since the last commit.
    appended: u32,
    appended_bytes: u64,
    /// Commands in appended blocks, and how many the session committed before them.
    uncommitted: Vec<NewCommand>,
    commands_stored: u32,
}

pub(crate) struct BlockWriter {
    disk: Option<Disk>,
    committed: SessionMeta,
    buf: Vec<u8>,
    /// Commands of the frames in `buf`.
    loose: Vec<NewCommand>,
    bytes_in: u64,
    bytes_out: u64,
}

impl BlockWriter {
    pub(crate) fn new(store: Arc<Store>, limits: Limits, meta: SessionMeta) -> BlockWriter {
        BlockWriter {
            disk: Some(Disk {
                segment: store.segment_writer(meta.id),
                compressor: None,
                stored: Vec::new(),
                store,
                limits,
                head: meta.clone(),
                appended: 0,
                appended_bytes: 0,
                uncommitted: Vec::new(),
                commands_stored: 0,
            }),
            bytes_in: meta.bytes_in,
            bytes_out: meta.bytes_out,
            committed: meta,
            buf: Vec::with_capacity(BLOCK_TARGET),
            loose: Vec::new(),
        }
    }

    /// What the store holds for the session.
    pub(crate) fn committed(&self) -> &SessionMeta {
        &self.committed
    }

    /// Takes one frame into the block being collected; true when the block is full.
    pub(crate) fn push(&mut self, frame: &Frame) -> bool {
        match frame.kind {
            Kind::Input => self.bytes_in += frame.data.len() as u64,
            Kind::Output | Kind::Stderr => self.bytes_out += frame.data.len() as u64,
            Kind::Exec | Kind::Command | Kind::File => {
                self.loose.extend(NewCommand::from_frame(frame))
            }
            _ => {}
        }
        frame.encode(&mut self.buf);
        self.buf.len() >= BLOCK_TARGET
    }

    /// Appends what was collected as a block, and commits when `commit` is asked for or
    /// enough waits. Fails, changing nothing the store holds, when the store's filesystem is
    /// below its floor, a block would pass the session's quota, or a write fails.
    pub(crate) async fn write(&mut self, commit: bool) -> Result<(), String> {
        // The buffer goes along and comes back empty, keeping its capacity.
        let raw = std::mem::take(&mut self.buf);
        let loose = std::mem::take(&mut self.loose);
        let counts = (self.bytes_in, self.bytes_out);
        let blocks = self.committed.blocks;
        // The disk part goes to the disk thread and comes back with its result; one that
        // does not come back (the task panicked) leaves the session failed, as it must.
        let Some(mut disk) = self.disk.take() else {
            return Err(format!("block {blocks} not stored: the writer was lost"));
        };
        let done = disk_thread::run(self.committed.id, move || {
            let mut raw = raw;
            let result = disk.step(&raw, loose, counts, commit);
            raw.clear();
            (disk, raw, result)
        })
        .await;
        match done {
            Some((disk, raw, Ok(committed))) => {
                if let Some(c) = committed {
                    self.committed = c;
                }
                self.disk = Some(disk);
                self.buf = raw;
                Ok(())
            }
            Some((_, _, Err(e))) => Err(format!("block {} not stored: {e}", blocks)),
            None => Err(format!("block {blocks} not stored: the disk thread failed")),
        }
    }
}

impl Disk {
    /// Appends `raw` (if any) as the next block with its commands, then commits if asked or
    /// due; returns the new committed state when it committed.
    fn step(
        &mut self,
        raw: &[u8],
        commands: Vec<NewCommand>,
        (bytes_in, bytes_out): (u64, u64),
        commit: bool,
    ) -> Result<Option<SessionMeta>, String> {
        if !raw.is_empty() {
            self.head.bytes_in = bytes_in;
            self.head.bytes_out = bytes_out;
            self.append(raw)?;
            self.uncommitted.extend(commands);
        }
        if self.appended == 0 || !(commit || self.appended_bytes >= COMMIT_BYTES) {
            return Ok(None);
        }
        self.store
            .commit_blocks(
                &mut self.segment,
                &self.head,
                self.commands_stored,
                &self.uncommitted,
            )
            .map_err(|e| e.to_string())?;
        self.commands_stored += self.uncommitted.len() as u32;
        self.uncommitted.clear();
        self.appended = 0;
        self.appended_bytes = 0;
        Ok(Some(self.head.clone()))
    }

    /// Floor, compression, quota, chain, append.
    fn append(&mut self, raw: &[u8]) -> Result<(), String> {
        let free = bastion_store::free_bytes(self.store.path())
            .map_err(|e| format!("cannot tell the store's free space: {e}"))?;
        if free < self.limits.floor_bytes {
            return Err(format!(
                "the audit store is at its free-space floor ({} MiB free, floor {} MiB)",
                free >> 20,
                self.limits.floor_bytes >> 20
            ));
        }
        let compressor = match &mut self.compressor {
            Some(c) => c,
            None => self
                .compressor
                .insert(block::Compressor::new().map_err(|e| e.to_string())?),
        };
        compressor
            .compress_into(raw, &mut self.stored)
            .map_err(|e| e.to_string())?;
        let stored = &self.stored;
        let head = &mut self.head;
        if let Some(quota) = self.limits.quota_bytes
            && head.stored_bytes + stored.len() as u64 > quota
        {
            return Err(format!(
                "the session's recording quota is reached ({} MiB, store.session_quota_mb)",
                quota >> 20
            ));
        }
        let n = head.blocks;
        let prev = head
            .chain
            .as_deref()
            .and_then(integrity::parse_hex)
            .unwrap_or_else(|| integrity::genesis(head.id));
        let chain = integrity::next(&prev, n, stored);
        self.segment
            .append(n, stored, &chain)
            .map_err(|e| e.to_string())?;
        head.blocks += 1;
        head.stored_bytes += stored.len() as u64;
        head.chain = Some(integrity::hex(&chain));
        self.appended += 1;
        self.appended_bytes += stored.len() as u64;
        Ok(())
    }
}
