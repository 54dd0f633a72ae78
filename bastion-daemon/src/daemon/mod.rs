//! `run(config, shutdown)`: bastiond's whole life, which tests and the binary both drive.
//!
//! Start-up is fail-fast and ordered by consequence: the store first (nothing may happen that
//! cannot be recorded), then enforcement (the floor must hold before anything is served), then the
//! control socket. On shutdown the socket is removed and the store flushed; enforcement stays
//! pinned on purpose.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bastion_core::{
    audit::{Actor, AuditEvent, AuditKind},
    cidr::Cidr,
    config::Config,
    keys::Secret,
    policy::{self, Entity, EntityKind, Policy},
    protocol::{AccountInfo, ExportFormat},
    protocol::{ProbeResult, Request, Response, Status, StoreStatus},
    record::export,
};
use tokio::io::AsyncBufReadExt;

use crate::{
    control::server::{self, Admins, ControlError, Handler, Peer},
    enforce::{EnforceError, Enforcer},
};
use bastion_proxy::{ProxyContext, keys::ApplianceKeys};
use bastion_store::{Store, StoreError, StoredAccount};

mod flow_audit;
mod intercept;
mod search;

use intercept::{intercept, relay_ports};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BANNER: usize = 255;
const MAX_AUDIT_LIST: usize = 10_000;
/// Audit events a flow listing looks through (newest first).
const MAX_FLOW_SCAN: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("enforcement: {0}")]
    Enforce(#[from] EnforceError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Keys(#[from] bastion_proxy::keys::KeyError),
    #[error("SSH listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Daemon {
    started: Instant,
    proxy: Arc<ProxyContext>,
    store: Arc<Store>,
    /// Protected prefixes from the config file; the store's are added to them.
    config_subnets: Vec<Cidr>,
    /// The policy as stored. Changes take this lock for check-store-apply, so they serialise.
    policy: Arc<policy::Live>,
    enforcer: Mutex<Enforcer>,
    /// Flow events the kernel lost to a full ring buffer, in all (from the pinned counter).
    flows_lost: Arc<std::sync::atomic::AtomicU64>,
}

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let store = Arc::new(Store::open(&config.store.path)?);
    let interrupted = store.mark_interrupted()?;
    if !interrupted.is_empty() {
        tracing::warn!(sessions = ?interrupted, "sessions interrupted by the previous bastiond's stop");
        store.append_audit(
            Actor::Daemon,
            AuditKind::SessionsInterrupted {
                sessions: interrupted,
            },
        )?;
    }
    let keys = Arc::new(ApplianceKeys::load_or_generate(&config.ssh.keys_dir)?);
    let policy = store.load_policy()?;
    let config_subnets = config.enforce.protected_subnets.clone();
    let mut enforcer = Enforcer::start(&config.enforce, &protected(&config_subnets, &policy))?;
    let intercept_listeners = match &config.intercept {
        Some(i) => Some(intercept(&mut enforcer, i, relay_ports(&policy))?),
        None => None,
    };
    let listener = server::bind(&config.control.socket)?;
    let ssh_listener = tokio::net::TcpListener::bind(config.ssh.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.ssh.listen,
            source,
        })?;
    store.append_audit(
        Actor::Daemon,
        AuditKind::DaemonStarted {
            version: crate::VERSION.to_owned(),
            pid: std::process::id(),
        },
    )?;
    tracing::info!(socket = %config.control.socket.display(), store = %store.path().display(), "bastiond ready");
    let policy = Arc::new(policy::Live::new(policy));
    let limits = |max_failures: u32| bastion_proxy::ratelimit::Limits {
        max_failures: max_failures.max(1),
        window: Duration::from_secs(config.ssh.failure_window_secs),
        penalty: Duration::from_secs(config.ssh.failure_penalty_secs),
    };
    let proxy = Arc::new(ProxyContext {
        store: store.clone(),
        policy: policy.clone(),
        config_subnets: config_subnets.clone(),
        keys: keys.clone(),
        server_config: Arc::new(bastion_proxy::server_config(&keys, Vec::new())),
        host_certs: bastion_proxy::hostcert::HostCerts::new(keys.clone()),
        live: bastion_proxy::live::Registry::default(),
        store_floor: config.store.min_free_mb.saturating_mul(1 << 20),
        below_floor: std::sync::atomic::AtomicBool::new(false),
        client_config: Arc::new(bastion_proxy::client_config()),
        upstream_mark: config.ssh.upstream_mark,
        connect_timeout: Duration::from_secs(config.ssh.connect_timeout_secs),
        flush_interval: Duration::from_millis(config.record.flush_interval_ms),
        login_grace: Duration::from_secs(config.ssh.login_grace_secs),
        limiter: Mutex::new(bastion_proxy::ratelimit::Limiter::new(limits(
            config.ssh.max_failures,
        ))),
        user_limiter: (config.ssh.max_failures_per_user > 0).then(|| {
            Mutex::new(bastion_proxy::ratelimit::Limiter::new(limits(
                config.ssh.max_failures_per_user,
            )))
        }),
    });
    let daemon = Arc::new(Daemon {
        started: Instant::now(),
        proxy: proxy.clone(),
        store,
        config_subnets,
        policy,
        enforcer: Mutex::new(enforcer),
        flows_lost: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    });
    // One shutdown signal, observed by both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut background = Vec::new();
    let ssh = tokio::spawn(bastion_proxy::listener::run(
        ssh_listener,
        proxy.clone(),
        bastion_proxy::listener::Mode::Explicit,
        stopped(&stop_rx),
    ));
    tracing::info!(listen = %config.ssh.listen, "SSH proxy listening");
    let mut transparent = Vec::new();
    if let Some(listeners) = intercept_listeners {
        for listener in listeners.ssh {
            transparent.push(tokio::spawn(bastion_proxy::listener::run(
                listener,
                proxy.clone(),
                bastion_proxy::listener::Mode::Transparent,
                stopped(&stop_rx),
            )));
        }
        for listener in listeners.relay {
            transparent.push(tokio::spawn(bastion_proxy::relay::run(
                listener,
                proxy.clone(),
                stopped(&stop_rx),
            )));
        }
    }
    if let Some(days) = config.store.retention_days {
        background.push(tokio::spawn(retention(
            daemon.store.clone(),
            days,
            stopped(&stop_rx),
        )));
    }
    let readers = lock(&daemon.enforcer).take_readers();
    if let Some((flows, kernel_log)) = readers {
        background.push(tokio::spawn(flow_audit::audit_flows(
            flows,
            daemon.store.clone(),
            daemon.flows_lost.clone(),
            stopped(&stop_rx),
        )));
        if let Some(log) = kernel_log {
            background.push(tokio::spawn(log.run(stopped(&stop_rx))));
        }
    }
    let admins = Admins::new(&config.control.admin_uids);
    server::run(listener, daemon.clone(), admins, async {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    let _ = ssh.await;
    for t in transparent.into_iter().chain(background) {
        let _ = t.await;
    }
    if let Err(e) = lock(&daemon.enforcer).stop_steering() {
        tracing::warn!(error = %e, "could not remove the interception table");
    }
    let _ = std::fs::remove_file(&config.control.socket);
    daemon.store.flush()?;
    tracing::info!("bastiond stopped; enforcement stays pinned");
    Ok(())
}

/// Enforces `store.retention_days`: at start, then hourly, finished sessions older than the
/// retention are deleted, and each deletion is an audit event.
async fn retention(store: Arc<Store>, days: f64, shutdown: impl Future<Output = ()>) {
    const EVERY: Duration = Duration::from_secs(3600);
    tokio::pin!(shutdown);
    loop {
        let keep = Duration::from_secs_f64(days * 86_400.0).as_micros() as u64;
        let cutoff = bastion_core::audit::now_micros().saturating_sub(keep);
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let gone = s.expire_sessions(cutoff)?;
            if !gone.is_empty() {
                s.append_audit(
                    Actor::Daemon,
                    AuditKind::SessionsExpired {
                        sessions: gone.clone(),
                        retention_secs: keep / 1_000_000,
                    },
                )?;
            }
            Ok::<_, StoreError>(gone)
        })
        .await;
        match result {
            Ok(Ok(gone)) if !gone.is_empty() => {
                tracing::info!(sessions = ?gone, "recordings past retention deleted")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "retention: cannot delete expired sessions"),
            Err(e) => tracing::error!(error = %e, "retention task failed"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Resolves once the shutdown signal is raised.
fn stopped(rx: &tokio::sync::watch::Receiver<bool>) -> impl Future<Output = ()> + use<> {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Config prefixes plus stored ones, without duplicates.
fn protected(config: &[Cidr], policy: &Policy) -> Vec<Cidr> {
    let mut all: Vec<Cidr> = config.iter().chain(&policy.subnets).copied().collect();
    all.sort();
    all.dedup();
    all
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data here (every writer stores first and
    // applies after), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handler for Daemon {
    async fn handle(&self, peer: Peer, request: Request) -> Response {
        let result = match request {
            Request::Status => self.status().map(Response::Status),
            Request::Probe { addr } => probe(addr).await.map(Response::Probe),
            Request::PolicyAdd { entity } => self.add(peer, entity).map(Response::Changed),
            Request::PolicyRemove { kind, name } => {
                self.remove(peer, kind, &name).map(Response::Changed)
            }
            Request::PolicyList { kind } => Ok(Response::Entities {
                entities: self.policy.snapshot().entities(kind),
            }),
            Request::PolicyShow { kind, name } => self
                .policy
                .snapshot()
                .entities(kind)
                .into_iter()
                .find(|e| e.key() == name)
                .map(|e| Response::Entities { entities: vec![e] })
                .ok_or_else(|| format!("{} `{name}` does not exist", kind.as_str())),
            Request::SessionList { filter } => self
                .store
                .sessions()
                .map(|all| Response::Sessions {
                    sessions: all.into_iter().filter(|s| filter.matches(s)).collect(),
                })
                .map_err(|e| e.to_string()),
            Request::SessionShow { id } => self.show(id),
            Request::Search { query, output } => search::search(&self.store, query, output),
            Request::SessionExport { id, format } => self.export(id, format),
            Request::FetchHostKey { addr } => self.fetch_host_key(addr).await,
            Request::AccountAdd {
                target,
                login,
                private_key,
            } => self
                .account_add(peer, &target, &login, &private_key)
                .map(Response::Changed),
            Request::AccountRemove { target, login } => self
                .account_remove(peer, &target, &login)
                .map(Response::Changed),
            Request::AccountList => self
                .store
                .accounts()
                .map(|all| Response::Accounts {
                    accounts: all
                        .into_iter()
                        .map(|a| AccountInfo {
                            target: a.target,
                            login: a.login,
                            public_key: a.public_key,
                            fingerprint: a.fingerprint,
                        })
                        .collect(),
                })
                .map_err(|e| e.to_string()),
            Request::CaShow => {
                let policy = self.policy.snapshot();
                let prefixes = protected(&self.config_subnets, &policy);
                let targets: Vec<_> = policy.targets.values().collect();
                Ok(Response::Ca {
                    user_ca: self.proxy.keys.user_ca_public(),
                    host_ca: self.proxy.keys.host_ca_public(),
                    audit_key: self
                        .proxy
                        .keys
                        .audit_key
                        .public_key()
                        .to_openssh()
                        .unwrap_or_default(),
                    known_hosts: bastion_proxy::hostcert::known_hosts_line(
                        &self.proxy.keys.host_ca_public(),
                        &prefixes,
                        &targets,
                    ),
                })
            }
            Request::SessionKill { id, reason } => self
                .proxy
                .live
                .send(
                    id,
                    bastion_proxy::live::Control::Kill {
                        reason: reason.clone(),
                    },
                )
                .and_then(|()| {
                    self.store
                        .append_audit(
                            admin(peer),
                            AuditKind::SessionKilled {
                                session: id,
                                reason,
                            },
                        )
                        .map_err(|e| e.to_string())
                })
                .map(Response::Changed),
            Request::SessionWatch { id, from } => self.watch(id, from),
            Request::StoreStats => self.store_stats().map(Response::StoreStats),
            Request::Verify { session } => self
                .verify(session)
                .map(|(sessions, audit)| Response::Verify { sessions, audit }),
            Request::FlowList { filter, limit } => self
                .store
                .audit_find(
                    limit.min(MAX_AUDIT_LIST),
                    MAX_FLOW_SCAN,
                    |e| matches!(&e.kind, AuditKind::Flow(f) if filter.matches(f)),
                )
                .map(|events| Response::Flows {
                    events,
                    lost_total: self.flows_lost.load(std::sync::atomic::Ordering::Relaxed),
                })
                .map_err(|e| e.to_string()),
            Request::AuditSince { after, limit } => self
                .store
                .audit_after(after, limit.min(MAX_AUDIT_LIST))
                .map(|events| Response::Audit { events })
                .map_err(|e| e.to_string()),
            Request::AuditList { limit } => self
                .store
                .audit_events(limit.min(MAX_AUDIT_LIST))
                .map(|events| Response::Audit { events })
                .map_err(|e| e.to_string()),
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
            enforcement: lock(&self.enforcer).status().map_err(|e| e.to_string())?,
        })
    }

    /// Seals and stores a private key for `login` on the registered `target`.
    fn account_add(
        &self,
        peer: Peer,
        target: &str,
        login: &str,
        private_key: &Secret,
    ) -> Result<AuditEvent, String> {
        if !self.policy.snapshot().targets.contains_key(target) {
            return Err(format!("target `{target}` does not exist"));
        }
        if login.is_empty()
            || login.len() > 64
            || login
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '@')
        {
            return Err(format!("invalid login `{login}`"));
        }
        let key = russh::keys::PrivateKey::from_openssh(private_key.expose().trim())
            .map_err(|e| format!("not an OpenSSH private key: {e}"))?;
        if key.is_encrypted() {
            return Err("the private key is passphrase-protected; store an unencrypted copy (bastion seals it)".into());
        }
        let public = key.public_key();
        let sealed = self
            .proxy
            .keys
            .seal(
                &bastion_core::keys::account_context(target, login),
                private_key.expose().trim().as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        let account = StoredAccount {
            target: target.to_owned(),
            login: login.to_owned(),
            public_key: public.to_openssh().map_err(|e| e.to_string())?,
            fingerprint: public.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
            sealed,
        };
        self.store
            .put_account(&account, admin(peer))
            .map_err(|e| e.to_string())
    }

    fn account_remove(&self, peer: Peer, target: &str, login: &str) -> Result<AuditEvent, String> {
        if self
            .store
            .account(target, login)
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Err(format!("no stored key for {login}@{target}"));
        }
        self.store
            .remove_account(target, login, admin(peer))
            .map_err(|e| e.to_string())
    }

    async fn fetch_host_key(&self, addr: SocketAddr) -> Result<Response, String> {
        let key = bastion_proxy::upstream::fetch_host_key(
            self.proxy.client_config.clone(),
            addr,
            self.proxy.upstream_mark,
            self.proxy.connect_timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        let fingerprint = russh::keys::PublicKey::from_openssh(&key)
            .map(|k| k.fingerprint(russh::keys::HashAlg::Sha256).to_string())
            .map_err(|e| e.to_string())?;
        Ok(Response::HostKey {
            addr,
            key,
            fingerprint,
        })
    }

    fn session(&self, id: u64) -> Result<bastion_core::session::SessionMeta, String> {
        self.store
            .session(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("session {id} does not exist"))
    }

    fn show(&self, id: u64) -> Result<Response, String> {
        let session = self.session(id)?;
        let frames = self.store.session_frames(id).map_err(|e| e.to_string())?;
        Ok(Response::Session {
            session,
            activity: export::activity(&frames),
        })
    }

    fn export(&self, id: u64, format: ExportFormat) -> Result<Response, String> {
        let meta = self.session(id)?;
        let frames = self.store.session_frames(id).map_err(|e| e.to_string())?;
        let content = match format {
            ExportFormat::Asciicast => export::asciicast(&meta, &frames),
            ExportFormat::Json => export::json(&meta, &frames).to_string(),
            ExportFormat::Sealed => {
                let blocks = self.store.session_blocks(id).map_err(|e| e.to_string())?;
                let audit_key = self
                    .proxy
                    .keys
                    .audit_key
                    .public_key()
                    .to_openssh()
                    .unwrap_or_default();
                serde_json::to_string_pretty(&bastion_core::record::sealed::build(
                    meta, &blocks, audit_key,
                ))
                .map_err(|e| e.to_string())?
            }
        };
        Ok(Response::Export { format, content })
    }

    fn add(&self, peer: Peer, entity: Entity) -> Result<AuditEvent, String> {
        let _changing = self.policy.begin_change();
        let policy = self.policy.snapshot();
        let entity = policy::check_add(&policy, entity).map_err(|e| e.to_string())?;
        let mut next = (*policy).clone();
        next.insert(entity.clone());
        // A new protected prefix reaches the kernel before it is recorded: if storing fails, the
        // kernel is stricter than the record, never looser. (A relay port steered early only
        // meets a relay that finds no grant.)
        self.apply_enforcement(entity.kind(), &next)?;
        let event = self
            .store
            .put_entity(&entity, admin(peer))
            .map_err(|e| e.to_string())?;
        self.policy.replace(next);
        tracing::info!(uid = peer.uid, kind = entity.kind().as_str(), name = %entity.key(), "policy added");
        Ok(event)
    }

    fn remove(&self, peer: Peer, kind: EntityKind, name: &str) -> Result<AuditEvent, String> {
        let _changing = self.policy.begin_change();
        let policy = self.policy.snapshot();
        if kind == EntityKind::Target {
            let logins: Vec<String> = (self.store.accounts().map_err(|e| e.to_string())?)
                .into_iter()
                .filter(|a| a.target == name)
                .map(|a| a.login)
                .collect();
            if !logins.is_empty() {
                return Err(format!(
                    "target `{name}` has stored account keys ({}); remove them first with `bastionctl account remove`",
                    logins.join(", ")
                ));
            }
        }
        policy::check_remove(&policy, kind, name).map_err(|e| e.to_string())?;
        let mut next = (*policy).clone();
        next.remove(kind, name);
        // Removal is recorded before the kernel loosens, for the same reason.
        let event = self
            .store
            .remove_entity(kind, name, admin(peer))
            .map_err(|e| e.to_string())?;
        self.apply_enforcement(kind, &next)?;
        self.policy.replace(next);
        tracing::info!(uid = peer.uid, kind = kind.as_str(), name, "policy removed");
        Ok(event)
    }

    /// Terminal output of session `id` from frame `from` on (what the user sees), for a live
    /// read-only view: what the recorder has flushed, at most `record.flush_interval_ms` behind.
    fn watch(&self, id: u64, from: usize) -> Result<Response, String> {
        let meta = self.session(id)?;
        let frames = self.store.session_frames(id).map_err(|e| e.to_string())?;
        let output = frames
            .iter()
            .skip(from)
            .filter(|f| {
                matches!(
                    f.kind,
                    bastion_core::record::Kind::Output | bastion_core::record::Kind::Stderr
                )
            })
            .flat_map(|f| f.data.iter().copied())
            .collect();
        Ok(Response::Watch {
            output,
            next: frames.len().max(from),
            live: meta.state == bastion_core::session::SessionState::Live,
        })
    }

    fn store_stats(&self) -> Result<bastion_core::protocol::StoreStats, String> {
        let e = |e: StoreError| e.to_string();
        let sessions = self.store.sessions().map_err(e)?;
        Ok(bastion_core::protocol::StoreStats {
            path: self.store.path().display().to_string(),
            size_bytes: self.store.size_on_disk().map_err(e)?,
            sessions: sessions.len() as u64,
            carried_bytes: sessions.iter().map(|s| s.bytes_in + s.bytes_out).sum(),
            recorded_bytes: sessions.iter().map(|s| s.stored_bytes).sum(),
            oldest_micros: sessions.iter().map(|s| s.started_micros).min(),
            newest_micros: sessions.iter().map(|s| s.started_micros).max(),
            audit_events: self.store.audit_count().map_err(e)?,
        })
    }

    fn verify(
        &self,
        only: Option<u64>,
    ) -> Result<
        (
            Vec<bastion_core::integrity::SessionIntegrity>,
            bastion_core::integrity::AuditIntegrity,
        ),
        String,
    > {
        let metas = match only {
            Some(id) => vec![self.session(id)?],
            None => self.store.sessions().map_err(|e| e.to_string())?,
        };
        let audit_key = self.proxy.keys.audit_key.public_key();
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas.iter().rev() {
            let blocks = self
                .store
                .session_blocks(meta.id)
                .map_err(|e| e.to_string())?;
            out.push(bastion_core::integrity::judge(
                meta,
                &blocks,
                |msg, seal| bastion_core::integrity::seal_valid(audit_key, msg, seal),
            ));
        }
        let audit = self.store.verify_audit().map_err(|e| e.to_string())?;
        Ok((out, audit))
    }

    /// Brings the kernel in line with a changed policy: protected prefixes (subnets) and the
    /// ports steered to the TCP relay (grants).
    fn apply_enforcement(&self, kind: EntityKind, policy: &Policy) -> Result<(), String> {
        let mut enforcer = lock(&self.enforcer);
        match kind {
            EntityKind::Subnet => enforcer.set_protected(&protected(&self.config_subnets, policy)),
            EntityKind::Grant => enforcer.set_relay_ports(&relay_ports(policy)),
            _ => Ok(()),
        }
        .map_err(|e| format!("updating enforcement: {e}"))
    }
}

fn admin(peer: Peer) -> Actor {
    Actor::Admin {
        uid: peer.uid,
        pid: peer.pid,
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
