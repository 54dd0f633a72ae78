//! The recorder: the proxy hands it frames through a bounded queue (so a slow disk slows the
//! session instead of growing memory); one writer task per session batches them into blocks
//! (`blocks.rs`): a full block is appended to the session's segment at once, and what was
//! appended is committed (synced, then referenced) when the flush interval passes or enough
//! waits. That interval is the durability bound stated in the config.
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
    record::frame::{Frame, Kind},
    session::{SessionMeta, SessionState},
};

use bastion_store::Store;

mod blocks;
pub mod disk_thread;

use blocks::{BlockWriter, Limits};

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
        self.failure().await
    }

    /// [`Recorder::failed`] as a future that holds no `Recorder`: waiting on it does not keep
    /// the record open (it closes when the last `Recorder` is dropped).
    pub fn failure(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.failed.clone();
        async move {
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
    meta: SessionMeta,
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
    let mut blocks = BlockWriter::new(store.clone(), limits, meta);
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let written = tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) if blocks.push(&frame) => blocks.write(false).await,
                Some(_) => Ok(()),
                None => break,
            },
            _ = tick.tick() => blocks.write(true).await,
        };
        if let Err(why) = written {
            return fail(&store, blocks.committed().clone(), why, &failed).await;
        }
    }
    if let Err(why) = blocks.write(true).await {
        return fail(&store, blocks.committed().clone(), why, &failed).await;
    }
    let mut meta = blocks.committed().clone();
    meta.state = SessionState::Closed;
    meta.ended_micros = Some(bastion_core::audit::now_micros());
    // Sealed over what it says and where its chain ends: later edits of either show.
    match integrity::seal(&audit_key, &meta) {
        Ok(seal) => meta.seal = Some(seal),
        Err(e) => tracing::error!(session = meta.id, error = %e, "cannot seal the session"),
    }
    let s = store.clone();
    let m = meta.clone();
    if let Err(e) = disk_thread::run(m.id, move || s.put_session(&m))
        .await
        .unwrap_or_else(|| {
            Err(bastion_store::StoreError::Task(
                "the disk thread failed".into(),
            ))
        })
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
    let written = disk_thread::run(m.id, move || {
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
    if !matches!(written, Some(Ok(_))) {
        tracing::error!(
            session = meta.id,
            "cannot mark the failed recording in the store"
        );
    }
    meta
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
