//! The recorder: the proxy hands it frames through a bounded queue (so a slow disk slows the
//! session instead of growing memory); one writer task per session batches them into blocks and
//! writes a block when it reaches [`BLOCK_TARGET`] bytes or when the flush interval passes,
//! whichever is first. That interval is the durability bound stated in the config.

#![forbid(unsafe_code)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::mpsc;

use bastion_core::{
    integrity,
    record::{
        block,
        frame::{Frame, Kind},
    },
    session::{NewCommand, SessionMeta, SessionState},
};

use bastion_store::Store;

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
}

impl Recorder {
    /// Records one event now. Waits (never drops) when the writer is behind.
    pub async fn record(&self, kind: Kind, channel: u32, data: Bytes) {
        let frame = Frame {
            kind,
            channel,
            t_micros: self.start.elapsed().as_micros() as u64,
            data,
        };
        if self.tx.send(frame).await.is_err() {
            // The writer only stops after a store error it has already reported.
            tracing::error!("recorder is gone; event not recorded");
        }
    }
}

/// Starts recording the session described by `meta` (already stored as live).
/// `audit_key` seals the record when it closes.
pub fn spawn(
    store: Arc<Store>,
    audit_key: Arc<ssh_key::PrivateKey>,
    meta: SessionMeta,
    flush_interval: Duration,
) -> (Recorder, tokio::task::JoinHandle<SessionMeta>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let recorder = Recorder {
        tx,
        start: Instant::now(),
    };
    let task = tokio::spawn(write_loop(store, audit_key, meta, rx, flush_interval));
    (recorder, task)
}

async fn write_loop(
    store: Arc<Store>,
    audit_key: Arc<ssh_key::PrivateKey>,
    mut meta: SessionMeta,
    mut rx: mpsc::Receiver<Frame>,
    flush_interval: Duration,
) -> SessionMeta {
    let mut buf = Vec::with_capacity(BLOCK_TARGET);
    let mut commands = Commands::default();
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
                    if buf.len() >= BLOCK_TARGET {
                        write_block(&store, &mut meta, &mut buf, &mut commands).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !buf.is_empty() {
                    write_block(&store, &mut meta, &mut buf, &mut commands).await;
                }
            }
        }
    }
    write_block(&store, &mut meta, &mut buf, &mut commands).await;
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

/// The commands recorded since the last block, and how many the session stored before them.
#[derive(Default)]
struct Commands {
    pending: Vec<NewCommand>,
    stored: u32,
}

/// Compresses and stores `buf` as the session's next block (with updated metadata and the
/// commands it holds), then clears it.
async fn write_block(
    store: &Arc<Store>,
    meta: &mut SessionMeta,
    buf: &mut Vec<u8>,
    commands: &mut Commands,
) {
    if buf.is_empty() {
        return;
    }
    let raw = std::mem::replace(buf, Vec::with_capacity(BLOCK_TARGET));
    let pending = std::mem::take(&mut commands.pending);
    let first_seq = commands.stored;
    commands.stored += pending.len() as u32;
    let store = store.clone();
    let mut next = meta.clone();
    next.blocks += 1;
    let result = tokio::task::spawn_blocking(move || -> Result<SessionMeta, String> {
        let mut next = next;
        let stored = block::compress(&raw).map_err(|e| e.to_string())?;
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
            .put_block(&next, n, &stored, &chain, first_seq, &pending)
            .map_err(|e| e.to_string())?;
        Ok(next)
    })
    .await;
    match result {
        Ok(Ok(next)) => *meta = next,
        Ok(Err(e)) => {
            tracing::error!(session = meta.id, error = %e, "recording block lost: store write failed")
        }
        Err(e) => {
            tracing::error!(session = meta.id, error = %e, "recording block lost: writer task failed")
        }
    }
}
