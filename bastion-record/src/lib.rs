//! The recorder: the proxy hands it frames through a bounded queue (so a slow disk slows the
//! session instead of growing memory); one writer task per session batches them into blocks and
//! writes a block when it reaches [`BLOCK_TARGET`] bytes or when the flush interval passes,
//! whichever is first. That interval is the durability bound stated in the config.
//!
//! Recording fails closed: a block that cannot be stored (a write error, or the store's
//! filesystem below its free-space floor, checked before every block) stops the writer. The
//! session's record is marked [`SessionState::Failed`] where it stopped, the failure is an
//! audit event, every later [`Recorder::record`] fails, and [`Recorder::failed`] wakes the
//! session so it ends at once: nothing more is carried off the record.

#![forbid(unsafe_code)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use bastion_core::{
    audit::{Actor, AuditKind},
    integrity,
    record::{
        block,
        frame::{Frame, Kind},
    },
    session::{NewCommand, SessionMeta, SessionState},
};

use bastion_store::{SegmentWriter, Store};

/// Raw bytes collected before a block is compressed and written.
const BLOCK_TARGET: usize = 256 * 1024;
/// Frames queued between the proxy and the writer. A data frame is at most one SSH packet
/// (32 KiB), so this bounds a session's queued recording at 4 MiB per session; beyond it the
/// session waits for the disk.
const QUEUE: usize = 128;

/// Handle the proxy records through. Cloneable; the session's record closes when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Frame>,
    start: Instant,
    failed: watch::Receiver<Option<String>>,
}

/// The session's recording has failed: what it was about to carry must not be carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingFailed(pub String);

impl std::fmt::Display for RecordingFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "recording failed: {}", self.0)
    }
}

impl std::error::Error for RecordingFailed {}

impl Recorder {
    /// Records one event now. Waits (never drops) when the writer is behind; fails once the
    /// recording has failed, and then the event must not be forwarded.
    pub async fn record(
        &self,
        kind: Kind,
        channel: u32,
        data: Bytes,
    ) -> Result<(), RecordingFailed> {
        let failed = self.failed.borrow().clone();
        if let Some(why) = failed {
            return Err(RecordingFailed(why));
        }
        let frame = Frame {
            kind,
            channel,
            t_micros: self.start.elapsed().as_micros() as u64,
            data,
        };
        self.tx.send(frame).await.map_err(|_| {
            // The writer only stops early after a failure it has published.
            RecordingFailed(
                self.failed
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "the recorder stopped".into()),
            )
        })
    }

    /// Resolves with the reason once the recording has failed; never while it works.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.clone();
        let why = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .map(|why| why.clone().unwrap_or_default());
        match why {
            Some(why) => why,
            // The writer finished normally: there is nothing to wait for.
            None => std::future::pending().await,
        }
    }
}

/// How a session's recording is written.
#[derive(Clone)]
pub struct Settings {
    /// `audit_key` seals the record when it closes.
    pub audit_key: Arc<ssh_key::PrivateKey>,
    /// A block is written at the latest this long after its first frame.
    pub flush_interval: Duration,
    /// Free bytes the store's filesystem keeps: below it, no block is written and the session
    /// ends (what is recorded already keeps its room).
    pub floor_bytes: u64,
    /// Stored bytes the session may take (`store.session_quota_mb`): the block that would pass
    /// it is not stored and the session ends.
    pub quota_bytes: Option<u64>,
}

/// Starts recording the session described by `meta` (already stored as live).
pub fn spawn(
    store: Arc<Store>,
    settings: Settings,
    meta: SessionMeta,
) -> (Recorder, tokio::task::JoinHandle<SessionMeta>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (failed_tx, failed) = watch::channel(None);
    let recorder = Recorder {
        tx,
        start: Instant::now(),
        failed,
    };
    let task = tokio::spawn(write_loop(store, settings, meta, rx, failed_tx));
    (recorder, task)
}

async fn write_loop(
    store: Arc<Store>,
    settings: Settings,
    mut meta: SessionMeta,
    mut rx: mpsc::Receiver<Frame>,
    failed: watch::Sender<Option<String>>,
) -> SessionMeta {
    let Settings {
        audit_key,
        flush_interval,
        floor_bytes,
        quota_bytes,
    } = settings;
    let limits = Limits {
        floor_bytes,
        quota_bytes,
    };
    let mut buf = Vec::with_capacity(BLOCK_TARGET);
    let mut commands = Commands::default();
    let mut segment = Some(store.segment_writer(meta.id));
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => {
                    match frame.kind {
                        Kind::Input => meta.bytes_in += frame.data.len() as u64,
                        Kind::Output | Kind::Stderr => meta.bytes_out += frame.data.len() as u64,
                        Kind::Exec | Kind::Command => commands.pending.extend(NewCommand::from_frame(&frame)),
                        _ => {}
                    }
                    frame.encode(&mut buf);
                    if buf.len() >= BLOCK_TARGET
                        && let Err(why) = write_block(&store, &mut segment, limits, &mut meta, &mut buf, &mut commands).await
                    {
                        return fail(&store, meta, why, &failed).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if let Err(why) = write_block(&store, &mut segment, limits, &mut meta, &mut buf, &mut commands).await {
                    return fail(&store, meta, why, &failed).await;
                }
            }
        }
    }
    if let Err(why) = write_block(
        &store,
        &mut segment,
        limits,
        &mut meta,
        &mut buf,
        &mut commands,
    )
    .await
    {
        return fail(&store, meta, why, &failed).await;
    }
    meta.state = SessionState::Closed;
    meta.ended_micros = Some(bastion_core::audit::now_micros());
    // Sealed over what it says and where its chain ends: later edits of either show.
    match integrity::seal(&audit_key, &meta) {
        Ok(seal) => meta.seal = Some(seal),
        Err(e) => tracing::error!(session = meta.id, error = %e, "cannot seal the session"),
    }
    let s = store.clone();
    let m = meta.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || s.put_session(&m))
        .await
        .unwrap_or_else(|e| Err(bastion_store::StoreError::Task(e.to_string())))
    {
        tracing::error!(session = meta.id, error = %e, "cannot mark session closed");
    }
    meta
}

/// Stops the recording at its last stored block: tells the session (which ends at once), then
/// marks the record failed and audits why, as far as the store still takes writes (the
/// metadata keeps pointing at the last good block either way; a store that takes nothing more
/// leaves the session live, and the next bastiond marks it interrupted).
async fn fail(
    store: &Arc<Store>,
    mut meta: SessionMeta,
    why: String,
    failed: &watch::Sender<Option<String>>,
) -> SessionMeta {
    tracing::error!(session = meta.id, stored_blocks = meta.blocks, error = %why, "recording failed: ending the session");
    failed.send_replace(Some(why.clone()));
    meta.state = SessionState::Failed;
    meta.ended_micros = Some(bastion_core::audit::now_micros());
    let s = store.clone();
    let m = meta.clone();
    let written = tokio::task::spawn_blocking(move || {
        s.put_session(&m)?;
        s.append_audit(
            Actor::Daemon,
            AuditKind::RecordingFailed {
                session: m.id,
                stored_blocks: m.blocks,
                reason: why,
            },
        )
    })
    .await;
    if !matches!(written, Ok(Ok(_))) {
        tracing::error!(
            session = meta.id,
            "cannot mark the failed recording in the store"
        );
    }
    meta
}

/// The commands recorded since the last block, and how many the session stored before them.
#[derive(Default)]
struct Commands {
    pending: Vec<NewCommand>,
    stored: u32,
}

/// What a block must stay within to be stored.
#[derive(Clone, Copy)]
struct Limits {
    floor_bytes: u64,
    quota_bytes: Option<u64>,
}

/// Compresses and stores `buf` as the session's next block (with updated metadata and the
/// commands it holds), then clears it. Fails, storing nothing, when the store's filesystem is
/// below its floor, the block would pass the session's quota, or the write fails.
async fn write_block(
    store: &Arc<Store>,
    segment: &mut Option<SegmentWriter>,
    limits: Limits,
    meta: &mut SessionMeta,
    buf: &mut Vec<u8>,
    commands: &mut Commands,
) -> Result<(), String> {
    if buf.is_empty() {
        return Ok(());
    }
    let raw = std::mem::replace(buf, Vec::with_capacity(BLOCK_TARGET));
    let pending = std::mem::take(&mut commands.pending);
    let first_seq = commands.stored;
    commands.stored += pending.len() as u32;
    let store = store.clone();
    let mut next = meta.clone();
    next.blocks += 1;
    // The writer goes to the blocking task and comes back with its result; one that does not
    // come back (the task panicked) leaves the session failed, as it must.
    let Some(mut writer) = segment.take() else {
        return Err(format!(
            "block {} not stored: the segment writer was lost",
            meta.blocks
        ));
    };
    let result = tokio::task::spawn_blocking(move || {
        let result = store_block(&store, &mut writer, limits, next, &raw, first_seq, &pending);
        (writer, result)
    })
    .await;
    match result {
        Ok((writer, Ok(next))) => {
            *segment = Some(writer);
            *meta = next;
            Ok(())
        }
        Ok((_, Err(e))) => Err(format!("block {} not stored: {e}", meta.blocks)),
        Err(e) => Err(format!(
            "block {} not stored: writer task failed: {e}",
            meta.blocks
        )),
    }
}

/// The blocking part of [`write_block`]: floor, compression, quota, chain, store.
fn store_block(
    store: &Store,
    writer: &mut SegmentWriter,
    limits: Limits,
    next: SessionMeta,
    raw: &[u8],
    first_seq: u32,
    pending: &[NewCommand],
) -> Result<SessionMeta, String> {
    let free = bastion_store::free_bytes(store.path())
        .map_err(|e| format!("cannot tell the store's free space: {e}"))?;
    if free < limits.floor_bytes {
        return Err(format!(
            "the audit store is at its free-space floor ({} MiB free, floor {} MiB)",
            free >> 20,
            limits.floor_bytes >> 20
        ));
    }
    let mut next = next;
    let stored = block::compress(raw).map_err(|e| e.to_string())?;
    if let Some(quota) = limits.quota_bytes
        && next.stored_bytes + stored.len() as u64 > quota
    {
        return Err(format!(
            "the session's recording quota is reached ({} MiB, store.session_quota_mb)",
            quota >> 20
        ));
    }
    next.stored_bytes += stored.len() as u64;
    let n = next.blocks - 1;
    let prev = next
        .chain
        .as_deref()
        .and_then(integrity::parse_hex)
        .unwrap_or_else(|| integrity::genesis(next.id));
    let chain = integrity::next(&prev, n, &stored);
    next.chain = Some(integrity::hex(&chain));
    store
        .put_block(writer, &next, n, &stored, &chain, first_seq, pending)
        .map_err(|e| e.to_string())?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(floor_bytes: u64) -> Settings {
        Settings {
            audit_key: Arc::new(ssh_key::PrivateKey::from(
                ssh_key::private::Ed25519Keypair::from_seed(&[7; 32]),
            )),
            flush_interval: Duration::from_millis(20),
            floor_bytes,
            quota_bytes: None,
        }
    }

    fn session(store: &Store) -> SessionMeta {
        let meta = SessionMeta::starting(1, "203.0.113.10:22".parse().unwrap());
        store.put_session(&meta).unwrap();
        meta
    }

    #[tokio::test]
    async fn a_block_that_cannot_be_stored_fails_the_recording_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        // No filesystem has this much free: the first block meets the floor.
        let (rec, writer) = spawn(store.clone(), settings(u64::MAX), session(&store));
        rec.record(Kind::Output, 0, Bytes::from_static(b"first"))
            .await
            .unwrap();
        let why = tokio::time::timeout(Duration::from_secs(10), rec.failed())
            .await
            .unwrap();
        assert!(why.contains("free-space floor"), "{why}");
        // Nothing more is taken, and the record says where it stopped.
        let refused = rec
            .record(Kind::Output, 0, Bytes::from_static(b"more"))
            .await;
        assert_eq!(refused, Err(RecordingFailed(why.clone())));
        drop(rec);
        let meta = writer.await.unwrap();
        assert_eq!(
            (meta.state, meta.blocks, meta.seal),
            (SessionState::Failed, 0, None)
        );
        assert_eq!(
            store.session(1).unwrap().unwrap().state,
            SessionState::Failed
        );
        let audit = store.audit_events(10).unwrap();
        assert!(
            audit.iter().any(|e| matches!(
                &e.kind,
                AuditKind::RecordingFailed { session: 1, stored_blocks: 0, reason } if *reason == why
            )),
            "{audit:?}"
        );
    }

    #[tokio::test]
    async fn a_block_past_the_session_quota_fails_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        let settings = Settings {
            quota_bytes: Some(1),
            ..settings(0)
        };
        let (rec, writer) = spawn(store.clone(), settings, session(&store));
        rec.record(Kind::Output, 0, Bytes::from_static(b"over the quota"))
            .await
            .unwrap();
        let why = tokio::time::timeout(Duration::from_secs(10), rec.failed())
            .await
            .unwrap();
        assert!(why.contains("store.session_quota_mb"), "{why}");
        drop(rec);
        let meta = writer.await.unwrap();
        assert_eq!((meta.state, meta.blocks), (SessionState::Failed, 0));
    }

    #[tokio::test]
    async fn a_working_recording_never_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        let (rec, writer) = spawn(store.clone(), settings(0), session(&store));
        rec.record(Kind::Output, 0, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        // Past a few flushes, still nothing to report.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rec.failed())
                .await
                .is_err()
        );
        drop(rec);
        let meta = writer.await.unwrap();
        assert_eq!((meta.state, meta.blocks), (SessionState::Closed, 1));
        assert!(meta.seal.is_some());
    }
}
