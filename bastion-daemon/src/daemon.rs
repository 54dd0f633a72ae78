//! `run(config, shutdown)`: bastiond's whole life, which tests and the binary both drive.
//!
//! Start-up is fail-fast and ordered by consequence: the store first (nothing may happen that
//! cannot be recorded), then enforcement (the floor must hold before anything is served), then the
//! control socket. On shutdown the socket is removed and the store flushed; enforcement stays
//! pinned on purpose.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::io::AsyncBufReadExt;

use crate::{
    config::Config,
    control::{
        protocol::{ProbeResult, Request, Response, Status, StoreStatus},
        server::{self, Admins, ControlError, Handler},
    },
    enforce::{EnforceError, Enforcer},
    store::{Store, StoreError},
};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BANNER: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("enforcement: {0}")]
    Enforce(#[from] EnforceError),
    #[error(transparent)]
    Control(#[from] ControlError),
}

struct Daemon {
    started: Instant,
    store: Store,
    enforcer: Enforcer,
}

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let store = Store::open(&config.store.path)?;
    let enforcer = Enforcer::start(&config.enforce)?;
    let listener = server::bind(&config.control.socket)?;
    tracing::info!(socket = %config.control.socket.display(), store = %store.path().display(), "bastiond ready");
    let daemon = Arc::new(Daemon {
        started: Instant::now(),
        store,
        enforcer,
    });
    server::run(
        listener,
        daemon.clone(),
        Admins::new(&config.control.admin_uids),
        shutdown,
    )
    .await;
    let _ = std::fs::remove_file(&config.control.socket);
    daemon.store.flush()?;
    tracing::info!("bastiond stopped; enforcement stays pinned");
    Ok(())
}

impl Handler for Daemon {
    async fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Status => self.status().map(Response::Status),
            Request::Probe { addr } => probe(addr).await.map(Response::Probe),
        };
        result.unwrap_or_else(|message| Response::Error { message })
    }
}

impl Daemon {
    fn status(&self) -> Result<Status, String> {
        Ok(Status {
            version: crate::VERSION.to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            store: StoreStatus {
                path: self.store.path().to_owned(),
                schema_version: self.store.schema_version().map_err(|e| e.to_string())?,
                size_bytes: self.store.size_on_disk().map_err(|e| e.to_string())?,
            },
            enforcement: self.enforcer.status().map_err(|e| e.to_string())?,
        })
    }
}

/// Connects from bastiond itself and reads the peer's first line.
async fn probe(addr: SocketAddr) -> Result<ProbeResult, String> {
    let t0 = Instant::now();
    let stream = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("target {addr}: connect timed out after {PROBE_TIMEOUT:?}"))?
        .map_err(|e| format!("target {addr}: connect failed: {e}"))?;
    let connect_micros = t0.elapsed().as_micros() as u64;
    let mut line = Vec::new();
    let mut reader =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_BANNER as u64));
    tokio::time::timeout(PROBE_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| format!("target {addr}: no banner within {PROBE_TIMEOUT:?}"))?
        .map_err(|e| format!("target {addr}: reading banner: {e}"))?;
    Ok(ProbeResult {
        addr,
        banner: String::from_utf8_lossy(&line).trim_end().to_owned(),
        connect_micros,
    })
}
