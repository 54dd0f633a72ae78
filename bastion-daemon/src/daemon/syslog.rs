//! The audit stream to a syslog receiver (`[syslog]`): RFC 5424 messages over TCP, framed by
//! octet counting, each carrying its sequence number (`[bastion@32473 seq="N"]`).
//!
//! Nothing is lost to a receiver outage: a message counts as delivered only once the
//! receiver's TCP has acknowledged it (`SIOCOUTQ`) and the connection has stayed up for
//! [`GRACE`] after it was sent (a receiver that stops with messages acknowledged but not yet
//! read drops them). After any disconnect, and after a bastiond restart (the cursor is stored),
//! sending resumes at the first message not delivered. A message may so arrive twice, never
//! not at all; the sequence number tells duplicates apart.

use std::{
    collections::VecDeque,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use bastion_core::{audit::AuditEvent, config::SyslogConfig, syslog};
use bastion_store::Store;
use tokio::{io::AsyncWriteExt, net::TcpStream};

const CURSOR: &str = "syslog";
const GRACE: Duration = Duration::from_secs(2);
const BATCH: usize = 500;
const IDLE: Duration = Duration::from_millis(200);

/// A message written and not yet known delivered.
struct InFlight {
    seq: u64,
    /// Bytes written on this connection up to and including it.
    end: u64,
    sent: Instant,
}

pub async fn run(store: Arc<Store>, config: SyslogConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let host = config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "-".into())
    });
    let retry_max = Duration::from_secs(config.retry_max_secs);
    let mut wait = Duration::from_millis(250);
    loop {
        let delivered = match cursor(&store).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "syslog: cannot read the delivery cursor");
                0
            }
        };
        let session = async {
            let stream =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&config.tcp))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            tracing::info!(receiver = %config.tcp, from_seq = delivered + 1, "syslog connected");
            forward(&store, stream, delivered, &host).await
        };
        let outcome = tokio::select! {
            _ = &mut shutdown => return,
            r = session => r,
        };
        match outcome {
            Ok(()) => wait = Duration::from_millis(250),
            Err(e) => {
                tracing::warn!(receiver = %config.tcp, error = %e, "syslog receiver unreachable; will resend what it has not acknowledged");
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(retry_max);
    }
}

async fn cursor(store: &Arc<Store>) -> Result<u64, bastion_store::StoreError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.forwarded(CURSOR))
        .await
        .unwrap_or(Ok(0))
}

/// Sends events after `delivered` on `stream` until it fails or the peer closes it.
async fn forward(
    store: &Arc<Store>,
    mut stream: TcpStream,
    mut delivered: u64,
    host: &str,
) -> std::io::Result<()> {
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut written = 0u64;
    let mut next = delivered;
    let mut stored = delivered;
    loop {
        let s = store.clone();
        let events: Vec<AuditEvent> =
            tokio::task::spawn_blocking(move || s.audit_after(next, BATCH))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
        let mut out = Vec::new();
        for e in &events {
            out.extend_from_slice(&syslog::octet_counted(&syslog::rfc5424(e, host)));
            in_flight.push_back(InFlight {
                seq: e.seq,
                end: written + out.len() as u64,
                sent: Instant::now(),
            });
            next = e.seq;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            written += out.len() as u64;
        }
        // What the receiver's TCP has acknowledged, and has had time to read.
        let acked = written - crate::sockinfo::unacked(&stream)?;
        while let Some(f) = in_flight.front() {
            if f.end > acked || f.sent.elapsed() < GRACE {
                break;
            }
            delivered = f.seq;
            in_flight.pop_front();
        }
        if delivered != stored {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.set_forwarded(CURSOR, delivered))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            stored = delivered;
        }
        if events.len() < BATCH {
            // Caught up: wait a little, and notice a receiver that went away meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(IDLE) => {}
                r = stream.readable() => {
                    r?;
                    let mut buf = [0u8; 512];
                    match stream.try_read(&mut buf) {
                        Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}
