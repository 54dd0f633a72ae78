//! The archiver: one task that ships finished sessions and the audit stream to the archive
//! (`[archive]`), and the figures `bastionctl archive status` shows.
//!
//! Never lose, never pretend: a session leaves the queue (`bastion_store` `archive` tree) only
//! once its object has been read back whole and found to be the bytes sent (size, SHA-256) and
//! judged by its chain and seal; only then is the `session_archived` event written and may
//! retention delete the local copy. A failed attempt waits (1 s doubling up to
//! `archive.retry_max_secs`) and the others go on, so one bad record never blocks the queue.
//! A multipart upload's id is stored before its first part, so an upload cut by a stop or a
//! crash is aborted at the next start and the record sent again whole.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bastion_archive::{Remote, RemoteError, remote::StreamReader};
use bastion_core::{
    archive::{chunks, object},
    audit::{Actor, AuditKind, now_micros},
    config::ArchiveConfig,
    protocol::ArchiveStatus,
    session::CommandQuery,
};
use bastion_store::{Archived, Multipart, Pending, Store, StoreError};
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

/// Parts of one multipart upload sent at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Audit events in one chunk at most.
const CHUNK_EVENTS: usize = 10_000;
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("read back: {0}")]
    Mismatch(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// What `archive status` shows besides the queue itself.
#[derive(Debug, Default)]
pub struct Stats {
    pub last_error: Option<(u64, String)>,
    pub last_success_micros: Option<u64>,
    pub archived_sessions: u64,
    pub archived_bytes: u64,
    /// Bytes per second of the last session archived (upload and read-back).
    pub last_rate: u64,
}

pub struct Archiver {
    pub store: Arc<Store>,
    pub remote: Remote,
    pub appliance: String,
    pub audit_key: Arc<ssh_key::PrivateKey>,
    pub config: ArchiveConfig,
    /// The free-space floor of the store (`store.min_free_mb`, bytes).
    pub floor: u64,
    pub stats: Arc<Mutex<Stats>>,
    /// Told when a session is archived, so retention can delete it without waiting an hour.
    pub retention_now: Arc<Notify>,
}

/// The appliance id: `archive.appliance_id`, or the host name.
pub fn appliance_id(config: &ArchiveConfig) -> Result<String, String> {
    let id = match &config.appliance_id {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .map_err(|e| format!("archive: no appliance_id and no host name: {e}"))?,
    };
    bastion_core::archive::check_appliance_id(&id)
        .map_err(|e| format!("archive: appliance id {e}; set archive.appliance_id"))?;
    Ok(id)
}

/// Paces uploads to `archive.max_rate_mb_s`.
struct Throttle {
    per_sec: u64,
    next: Instant,
}

impl Throttle {
    async fn take(&mut self, bytes: usize) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next.into()).await;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.per_sec as f64);
        self.next = self.next.max(now) + cost;
    }
}

impl Archiver {
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut throttle = Throttle {
            per_sec: self.config.max_rate_mb_s.saturating_mul(1 << 20),
            next: Instant::now(),
        };
        let audit_every = Duration::from_secs(self.config.audit_interval_secs);
        let mut audit_due = Instant::now();
        let mut alerted = false;
        if let Err(e) = self.restart().await {
            self.failed(None, &e);
        }
        loop {
            let work = async {
                self.sessions(&mut throttle).await;
                if Instant::now() >= audit_due {
                    match self.audit_chunk(&mut throttle).await {
                        Ok(more) if more => {}
                        Ok(_) => audit_due = Instant::now() + audit_every,
                        Err(e) => {
                            self.failed(None, &e);
                            audit_due = Instant::now() + audit_every.min(TICK * 5);
                        }
                    }
                }
                alerted = self.backlog(alerted).await;
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = work => {}
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ArchiveError> {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| ArchiveError::Internal(e.to_string()))?
            .map_err(ArchiveError::Store)
    }

    fn failed(&self, session: Option<u64>, e: &ArchiveError) {
        tracing::warn!(session, error = %e, "archive attempt failed; will retry");
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.last_error = Some((now_micros(), e.to_string()));
    }

    /// At start: every finished session not archived is queued (uploads a stop or crash cut
    /// short are aborted when their record is tried again, see [`Archiver::session`]).
    async fn restart(&self) -> Result<(), ArchiveError> {
        let queued = self.blocking(|s| s.queue_unarchived()).await?;
        if queued > 0 {
            tracing::info!(queued, "finished sessions queued for the archive");
        }
        Ok(())
    }

    /// Every queued session that is due, oldest first, one at a time.
    async fn sessions(&self, throttle: &mut Throttle) {
        let pending = match self.blocking(|s| s.archive_pending()).await {
            Ok(p) => p,
            Err(e) => return self.failed(None, &e),
        };
        // Failures in a row: past a few the archive is down for everyone, and the round ends
        // (each record keeps its own backoff) rather than wait out every record's timeout.
        let mut failing = 0;
        for (id, mut p) in pending {
            if p.next_try_micros > now_micros() {
                continue;
            }
            if failing >= 3 {
                break;
            }
            let started = Instant::now();
            match self.session(id, &mut p, throttle).await {
                Ok(Some(done)) => {
                    let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                    s.last_success_micros = Some(now_micros());
                    s.archived_sessions += 1;
                    s.archived_bytes += done.bytes;
                    let secs = started.elapsed().as_secs_f64().max(1e-6);
                    s.last_rate = (done.bytes as f64 / secs) as u64;
                    drop(s);
                    failing = 0;
                    self.retention_now.notify_one();
                }
                Ok(None) => {}
                Err(e) => {
                    failing += 1;
                    self.failed(Some(id), &e);
                    p.attempts = p.attempts.saturating_add(1);
                    let wait = Duration::from_secs(1u64 << p.attempts.min(20))
                        .min(Duration::from_secs(self.config.retry_max_secs));
                    p.next_try_micros = now_micros() + wait.as_micros() as u64;
                    p.last_error = e.to_string();
                    if let Err(e) = self.blocking(move |s| s.archive_update(id, &p)).await {
                        self.failed(Some(id), &e);
                    }
                }
            }
        }
    }

    /// Archives session `id`: sent, read back, judged, audited, then out of the queue.
    /// `None`: the session is gone (deleted by hand); its entry is dropped.
    async fn session(
        &self,
        id: u64,
        p: &mut Pending,
        throttle: &mut Throttle,
    ) -> Result<Option<Archived>, ArchiveError> {
        let Some(meta) = self.blocking(move |s| s.session(id)).await? else {
            tracing::warn!(session = id, "queued for the archive but no longer stored");
            self.blocking(move |s| s.archive_forget(id)).await?;
            return Ok(None);
        };
        // An upload begun earlier and cut short (a stop, a crash, a failed part): aborted
        // before the record is sent again whole, so the bucket keeps no orphan parts.
        if let Some(m) = p.multipart.take() {
            self.remote
                .abort(&m.object, &m.upload_id)
                .await
                .inspect_err(|_| {
                    p.multipart = Some(m.clone());
                })?;
            let saved = p.clone();
            self.blocking(move |s| s.archive_update(id, &saved)).await?;
            tracing::info!(session = id, object = %m.object, "interrupted upload aborted");
        }
        let object = self
            .remote
            .location
            .session_key(&self.appliance, id, meta.started_micros);
        let (sent, sha256) = self.upload(id, meta, &object, p, throttle).await?;
        let stream = self.remote.open(&object).await?;
        let handle = tokio::runtime::Handle::current();
        let public = self.audit_key.public_key().clone();
        let check = tokio::task::spawn_blocking(move || {
            object::check_with(StreamReader::new(handle, stream), &public, false)
        })
        .await
        .map_err(|e| ArchiveError::Internal(e.to_string()))?
        .map_err(|e| ArchiveError::Mismatch(format!("{object}: {e}")))?;
        if check.bytes != sent || check.sha256 != sha256 || check.session.id != id {
            return Err(ArchiveError::Mismatch(format!(
                "{object}: {} bytes with SHA-256 {} read back, {sent} bytes with SHA-256 {sha256} sent",
                check.bytes, check.sha256
            )));
        }
        let status = serde_json::to_value(check.integrity.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let done = Archived {
            v: 1,
            object: object.clone(),
            bytes: sent,
            sha256: sha256.clone(),
            at_micros: now_micros(),
        };
        let recorded = done.clone();
        // The event first: retention may delete the local copy once `done` is stored, and by
        // then the stream must already say where the record went.
        self.blocking(move |s| {
            s.append_audit(
                Actor::Daemon,
                AuditKind::SessionArchived {
                    session: id,
                    object,
                    bytes: sent,
                    sha256,
                    status,
                },
            )?;
            s.archive_done(id, &recorded)
        })
        .await?;
        tracing::info!(session = id, bytes = done.bytes, "session archived");
        Ok(Some(done))
    }

    /// Sends the session's object: one put when it fits in a part, else a multipart upload
    /// whose id is stored first. Returns its size and SHA-256.
    async fn upload(
        &self,
        id: u64,
        meta: bastion_core::session::SessionMeta,
        object: &str,
        p: &mut Pending,
        throttle: &mut Throttle,
    ) -> Result<(u64, String), ArchiveError> {
        let part = (self.config.part_mb as usize) << 20;
        let (tx, mut rx) = mpsc::channel::<Bytes>(2);
        let header = object::Header {
            appliance: self.appliance.clone(),
            audit_key: self
                .audit_key
                .public_key()
                .to_openssh()
                .map_err(|e| ArchiveError::Internal(e.to_string()))?,
            session: meta,
            commands: Vec::new(),
        };
        let store = self.store.clone();
        let producer = tokio::task::spawn_blocking(move || produce(&store, header, part, tx));
        let first = rx.recv().await;
        let second = rx.recv().await;
        let result = match (first, second) {
            (Some(only), None) => {
                throttle.take(only.len()).await;
                self.remote
                    .put(object, only)
                    .await
                    .map_err(ArchiveError::from)
            }
            (Some(a), Some(b)) => {
                self.multipart(id, object, p, [a, b], &mut rx, throttle)
                    .await
            }
            (None, _) => Err(ArchiveError::Internal(
                "the record produced no bytes".into(),
            )),
        };
        // The producer ends once the channel is dropped, whatever happened here; a failed
        // upload is the error to report (the producer's is only that it was cut off).
        drop(rx);
        let produced = producer
            .await
            .map_err(|e| ArchiveError::Internal(e.to_string()))?;
        result?;
        produced
    }

    async fn multipart(
        &self,
        id: u64,
        object: &str,
        p: &mut Pending,
        first: [Bytes; 2],
        rx: &mut mpsc::Receiver<Bytes>,
        throttle: &mut Throttle,
    ) -> Result<(), ArchiveError> {
        let upload = self.remote.begin_multipart(object).await?;
        p.multipart = Some(Multipart {
            object: object.to_owned(),
            upload_id: upload.clone(),
        });
        let saved = p.clone();
        self.blocking(move |s| s.archive_update(id, &saved)).await?;
        // Parts go up PARTS_IN_FLIGHT at a time, each on a task of its own so it goes on
        // while the next is produced and throttled: one part's round trip (the store writing
        // and replicating it) no longer leaves the link idle. Completed in order, as numbered.
        let mut parts = Vec::new();
        let mut in_flight = std::collections::VecDeque::new();
        let mut first = first.into_iter();
        let mut more = true;
        let result = loop {
            while more && in_flight.len() < PARTS_IN_FLIGHT {
                let chunk = match first.next() {
                    Some(c) => Some(c),
                    None => rx.recv().await,
                };
                let Some(chunk) = chunk else {
                    more = false;
                    break;
                };
                throttle.take(chunk.len()).await;
                let (remote, key, id) = (self.remote.clone(), object.to_owned(), upload.clone());
                let index = parts.len() + in_flight.len();
                in_flight.push_back(tokio::spawn(async move {
                    remote.put_part(&key, &id, index, chunk).await
                }));
            }
            let Some(next) = in_flight.pop_front() else {
                break Ok(());
            };
            match next.await {
                Ok(Ok(part)) => parts.push(part),
                Ok(Err(e)) => break Err(ArchiveError::from(e)),
                Err(e) => break Err(ArchiveError::Internal(format!("part upload: {e}"))),
            }
        };
        // A failure leaves no part going on behind it (the upload is aborted before a resend).
        for task in in_flight {
            task.abort();
        }
        result?;
        self.remote.complete(object, &upload, parts).await?;
        p.multipart = None;
        Ok(())
    }

    /// Archives the audit stream after what the archive has, up to its last anchor (or a full
    /// chunk). True if more is waiting.
    async fn audit_chunk(&self, throttle: &mut Throttle) -> Result<bool, ArchiveError> {
        let events = self
            .blocking(|s| {
                let from = s.audit_archived()?.through_seq;
                s.audit_after(from, CHUNK_EVENTS)
            })
            .await?;
        let full = events.len() == CHUNK_EVENTS;
        let end = if full {
            events.len()
        } else {
            match events
                .iter()
                .rposition(|e| matches!(e.kind, AuditKind::Anchor { .. }))
            {
                Some(i) => i + 1,
                None => return Ok(false),
            }
        };
        let events = &events[..end];
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(false);
        };
        let (first, last) = (first.seq, last.seq);
        let key = self.remote.location.audit_key(&self.appliance, first, last);
        let bytes =
            Bytes::from(chunks::encode(events).map_err(|e| ArchiveError::Internal(e.to_string()))?);
        throttle.take(bytes.len()).await;
        self.remote.put(&key, bytes.clone()).await?;
        let back = self.remote.get(&key).await?;
        if back != bytes {
            return Err(ArchiveError::Mismatch(format!(
                "{key}: {} bytes read back differ from the {} sent",
                back.len(),
                bytes.len()
            )));
        }
        self.blocking(move |s| s.set_audit_archived(last)).await?;
        tracing::debug!(first, last, "audit events archived");
        Ok(full)
    }

    /// Raises the backlog ALERT once when free space runs short while records wait on a
    /// failing archive (a backlog that is merely being uploaded is no alarm), and says when it
    /// is over. Returns whether the alert stands.
    async fn backlog(&self, alerted: bool) -> bool {
        let alert_at = self
            .config
            .alert_free_mb
            .map_or(self.floor.saturating_mul(4), |mb| {
                mb.saturating_mul(1 << 20)
            });
        let free = bastion_store::free_bytes(self.store.path()).unwrap_or(u64::MAX);
        let status = match self.status().await {
            Ok(s) => s,
            Err(e) => {
                self.failed(None, &e);
                return alerted;
            }
        };
        // Over once nothing waits or a tenth more than the alert level is free: a store
        // hovering at the level does not raise and clear the alert on every tick.
        let short = status.retrying > 0 && free < alert_at;
        let clear = status.pending == 0 || free >= alert_at + alert_at / 10;
        let kind = match (alerted, short) {
            (false, true) => AuditKind::ArchiveBacklog {
                pending: status.pending,
                pending_bytes: status.pending_bytes,
                oldest_micros: status.oldest_queued_micros.unwrap_or(0),
                free_mb: free >> 20,
                alert_mb: alert_at >> 20,
                last_error: status.last_error.unwrap_or_default(),
            },
            (true, _) if clear => AuditKind::ArchiveRecovered {
                pending: status.pending,
                free_mb: free >> 20,
            },
            _ => return alerted,
        };
        tracing::warn!(?kind, "archive backlog");
        if let Err(e) = self
            .blocking(move |s| s.append_audit(Actor::Daemon, kind).map(drop))
            .await
        {
            self.failed(None, &e);
            return alerted;
        }
        !alerted
    }

    /// The queue and the figures, for `archive status`.
    pub async fn status(&self) -> Result<ArchiveStatus, ArchiveError> {
        status(&self.store, &self.stats, &self.remote, &self.appliance).await
    }
}

/// `archive status`: the queue from the store, the rest from the archiver's figures.
pub async fn status(
    store: &Arc<Store>,
    stats: &Mutex<Stats>,
    remote: &Remote,
    appliance: &str,
) -> Result<ArchiveStatus, ArchiveError> {
    let s = store.clone();
    let (pending, audit_through, audit_last) = tokio::task::spawn_blocking(move || {
        let pending = s
            .archive_pending()?
            .into_iter()
            .map(|(id, p)| Ok((s.session(id)?.map_or(0, |m| m.stored_bytes), p)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok::<_, StoreError>((pending, s.audit_archived()?.through_seq, s.audit_count()?))
    })
    .await
    .map_err(|e| ArchiveError::Internal(e.to_string()))??;
    let st = stats.lock().unwrap_or_else(|p| p.into_inner());
    Ok(ArchiveStatus {
        url: remote.location.to_string(),
        appliance: appliance.to_owned(),
        pending: pending.len() as u64,
        pending_bytes: pending.iter().map(|(b, _)| b).sum(),
        oldest_queued_micros: pending.iter().map(|(_, p)| p.queued_micros).min(),
        retrying: pending.iter().filter(|(_, p)| p.attempts > 0).count() as u64,
        last_error: st.last_error.as_ref().map(|(_, e)| e.clone()),
        last_error_micros: st.last_error.as_ref().map(|(t, _)| *t),
        last_success_micros: st.last_success_micros,
        archived_sessions: st.archived_sessions,
        archived_bytes: st.archived_bytes,
        last_rate_bytes_per_sec: st.last_rate,
        audit_archived_through: audit_through,
        audit_events: audit_last,
    })
}

/// Writes the object's bytes for `header`'s session to `tx` in chunks of about `part` bytes,
/// reading one block at a time; returns the object's size and SHA-256 (hex).
fn produce(
    store: &Store,
    mut header: object::Header,
    part: usize,
    tx: mpsc::Sender<Bytes>,
) -> Result<(u64, String), ArchiveError> {
    header.commands = store.search_commands(&CommandQuery {
        session: Some(header.session.id),
        limit: usize::MAX,
        ..CommandQuery::default()
    })?;
    let meta = header.session.clone();
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    let mut buf =
        object::encode_header(&header).map_err(|e| ArchiveError::Internal(e.to_string()))?;
    let mut closed = false;
    let send = |buf: &mut Vec<u8>, hash: &mut ring::digest::Context, len: &mut u64| {
        hash.update(buf);
        *len += buf.len() as u64;
        let chunk = Bytes::from(std::mem::replace(buf, Vec::with_capacity(part + (1 << 20))));
        tx.blocking_send(chunk).is_ok()
    };
    store.for_each_block(&meta, |b| {
        object::encode_block(&b, &mut buf);
        if buf.len() >= part && !send(&mut buf, &mut hash, &mut len) {
            closed = true;
            return false;
        }
        true
    })?;
    if closed {
        return Err(ArchiveError::Internal("upload stopped".into()));
    }
    buf.extend_from_slice(&object::encode_end());
    send(&mut buf, &mut hash, &mut len);
    Ok((len, bastion_core::integrity::hex(&hash_of(hash))))
}

fn hash_of(c: ring::digest::Context) -> [u8; 32] {
    let mut h = [0u8; 32];
    h.copy_from_slice(c.finish().as_ref());
    h
}
