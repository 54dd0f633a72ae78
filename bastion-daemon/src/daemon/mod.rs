//! `run(config, shutdown)`: bastiond's whole life, which tests and the binary both drive.
//!
//! Start-up is fail-fast and ordered by consequence: enforcement first (the floor must hold
//! even if nothing else can start), then the store (nothing may be served that cannot be
//! recorded), the keys, and the listeners. On shutdown the socket is removed and the store flushed; enforcement stays
//! pinned on purpose.

#![forbid(unsafe_code)]

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bastion_core::{
    audit::{Actor, AuditKind},
    audit_flood::FloodLimits,
    cidr::Cidr,
    config::Config,
    policy::{self, Policy},
};
use bastion_proxy::{ProxyContext, keys::ApplianceKeys};
use bastion_store::{Store, StoreError};

use crate::{
    control::server::{self, Admins, ControlError},
    enforce::{EnforceError, Enforcer},
};

mod anchor;
mod api;
mod archive;
mod background;
mod cgroup_watch;
mod files;
mod flow_audit;
mod intercept;
mod links;
mod search;
mod syslog;

use intercept::{intercept, relay_ports};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BANNER: usize = 255;
const MAX_AUDIT_LIST: usize = 10_000;
/// Blocks one `session watch` poll reads at most (a catching-up watcher continues at `next`).
const WATCH_BLOCKS: u32 = 64;
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
    #[error(transparent)]
    Archive(#[from] bastion_archive::RemoteError),
    #[error("{0}")]
    Config(String),
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
    /// Bounds the control requests served at once (see `api`).
    workers: Arc<tokio::sync::Semaphore>,
    /// Flow events the kernel lost to a full ring buffer, in all (from the pinned counter).
    flows_lost: Arc<std::sync::atomic::AtomicU64>,
    /// The archive, when `[archive]` is configured (for `archive status`).
    archive: Option<ArchiveHandle>,
}

struct ArchiveHandle {
    remote: bastion_archive::Remote,
    appliance: String,
    stats: Arc<Mutex<archive::Stats>>,
}

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    // Enforcement before anything that can fail on bad state (store, keys): a bastiond that
    // cannot start still leaves the protected side closed, and the pinned maps keep every
    // prefix an earlier bastiond protected until the store says which are still wanted.
    let config_subnets = config.enforce.protected_subnets.clone();
    let mut enforcer = Enforcer::start(&config.enforce, &config_subnets)?;
    let store = Arc::new(Store::open(&config.store.path)?);
    // Archiving, if configured, is checked (url, credentials, appliance id) before anything is
    // recorded, and on before the first session can end: every finished session is queued.
    let archive = match &config.archive {
        Some(a) => {
            let remote =
                bastion_archive::Remote::connect(&bastion_archive::Settings::from_config(a))?;
            let appliance = archive::appliance_id(a).map_err(DaemonError::Config)?;
            store.set_archiving(true);
            Some(ArchiveHandle {
                remote,
                appliance,
                stats: Default::default(),
            })
        }
        None => None,
    };
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
    let policy = store.load_policy()?;
    enforcer.set_protected(&protected(&config_subnets, &policy))?;
    let keys = Arc::new(ApplianceKeys::load_or_generate(&config.ssh.keys_dir)?);
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
    // Enforcement is attached and every listener is bound (connections queue until the accept
    // loops below run): systemd may now start what is ordered after bastiond.
    tell_systemd(&format!(
        "READY=1\nSTATUS=enforcing; SSH on {}, control on {}",
        config.ssh.listen,
        config.control.socket.display()
    ));
    let policy = Arc::new(policy::Live::new(policy));
    let anchor_now = Arc::new(tokio::sync::Notify::new());
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
        server_config: Arc::new(bastion_proxy::server_config(
            &keys,
            Vec::new(),
            config.ssh.algorithms,
        )),
        algorithms: config.ssh.algorithms,
        require_mfa: config.ssh.require_mfa,
        env: bastion_proxy::env::EnvGate::new(config.ssh.accept_env.clone(), config.ssh.env_values),
        throttle: bastion_proxy::throttle::Throttle::new(
            config.ssh.connections_per_source_per_sec,
            config.ssh.connection_burst_per_source,
        )
        .map(Mutex::new),
        host_certs: bastion_proxy::hostcert::HostCerts::new(keys.clone()),
        live: bastion_proxy::live::Registry::default(),
        store_floor: config.store.min_free_mb.saturating_mul(1 << 20),
        session_quota: config
            .store
            .session_quota_mb
            .map(|mb| mb.saturating_mul(1 << 20)),
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
        policy_changes: bastion_proxy::access::channel(),
        policy_config: config.policy.clone(),
        tickets_changed: tokio::sync::Notify::new(),
        anchor_now: anchor_now.clone(),
        capture_files: config.record.capture_files,
        capture: Arc::new(bastion_proxy::capture::Settings::new(
            store.path().to_path_buf(),
            config.record.max_file_capture_mb.saturating_mul(1 << 20),
        )),
    });
    let daemon = Arc::new(Daemon {
        started: Instant::now(),
        proxy: proxy.clone(),
        store,
        config_subnets,
        policy,
        enforcer: Mutex::new(enforcer),
        workers: Arc::new(tokio::sync::Semaphore::new(api::CONTROL_WORKERS)),
        flows_lost: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        archive,
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
    background.push(tokio::spawn(anchor::run(
        daemon.store.clone(),
        keys.audit_key.clone(),
        Duration::from_secs(config.audit.anchor_interval_secs),
        anchor_now,
        stopped(&stop_rx),
    )));
    let retention_now = Arc::new(tokio::sync::Notify::new());
    if let (Some(a), Some(cfg)) = (&daemon.archive, &config.archive) {
        let archiver = archive::Archiver {
            store: daemon.store.clone(),
            remote: a.remote.clone(),
            appliance: a.appliance.clone(),
            audit_key: keys.audit_key.clone(),
            config: cfg.clone(),
            floor: config.store.min_free_mb.saturating_mul(1 << 20),
            stats: a.stats.clone(),
            retention_now: retention_now.clone(),
        };
        tracing::info!(url = %a.remote.location, appliance = %a.appliance, "archiving");
        // Off the session runtime, at the lowest priority: live sessions go first.
        background.push(background::spawn(
            "archiver",
            archiver.run(stopped(&stop_rx)),
        ));
    }
    if let Some(s) = &config.syslog {
        background.push(tokio::spawn(syslog::run(
            daemon.store.clone(),
            s.clone(),
            stopped(&stop_rx),
        )));
    }
    if config.store.retention_days.is_some() || config.store.audit_retention_days.is_some() {
        background.push(tokio::spawn(retention(
            daemon.store.clone(),
            config.store.retention_days,
            config.store.audit_retention_days,
            retention_now,
            stopped(&stop_rx),
        )));
    }
    daemon.store.set_flood_limits(FloodLimits {
        per_source_per_minute: config.store.unauthenticated_audit_per_source_per_minute,
        bytes_per_hour: config
            .store
            .unauthenticated_audit_mb_per_hour
            .saturating_mul(1 << 20),
    });
    background.push(tokio::spawn(flood_summaries(
        daemon.store.clone(),
        stopped(&stop_rx),
    )));
    background.push(tokio::spawn(crate::allocator::trim_periodically(stopped(
        &stop_rx,
    ))));
    let intruders = {
        let status = lock(&daemon.enforcer).status()?;
        cgroup_watch::Intruders::new(status.daemon_cgroup, status.daemon_cgroup_id)
    };
    let readers = lock(&daemon.enforcer).take_readers();
    if let Some((flows, kernel_log)) = readers {
        background.push(tokio::spawn(flow_audit::audit_flows(
            flows,
            daemon.store.clone(),
            daemon.flows_lost.clone(),
            intruders.clone(),
            stopped(&stop_rx),
        )));
        if let Some(log) = kernel_log {
            background.push(tokio::spawn(log.run(stopped(&stop_rx))));
        }
    }
    background.push(tokio::spawn(cgroup_watch::watch(
        intruders.clone(),
        daemon.store.clone(),
        stopped(&stop_rx),
    )));
    // Interfaces missing at start and unprotected routes are audited like later changes.
    links::check_interfaces(&daemon);
    links::check_routes(&daemon);
    match crate::enforce::link_events::LinkEvents::open() {
        Ok(events) => background.push(tokio::spawn(links::follow(
            daemon.clone(),
            events,
            stopped(&stop_rx),
        ))),
        Err(e) => {
            tracing::error!(error = %e, "cannot follow link changes: a re-created protected interface needs a bastiond restart")
        }
    }
    let admins = Admins::new(&config.control.admin_uids);
    server::run(listener, daemon.clone(), admins, async {
        shutdown.await;
        tell_systemd("STOPPING=1\nSTATUS=stopping; enforcement stays pinned");
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

/// Enforces `store.retention_days` and `store.audit_retention_days`: at start, then hourly (or
/// at a quarter of a shorter retention) and whenever the archiver has archived a session (`archived`), finished sessions and audit
/// events older than their retention are deleted, and each deletion is an audit event. When
/// archiving, only what the archive has verified is deleted (the store's rule).
async fn retention(
    store: Arc<Store>,
    session_days: Option<f64>,
    audit_days: Option<f64>,
    archived: Arc<tokio::sync::Notify>,
    shutdown: impl Future<Output = ()>,
) {
    let keep = |days: f64| Duration::from_secs_f64(days * 86_400.0).as_micros() as u64;
    // Hourly, or a quarter of the shortest retention when that is shorter (a second at least).
    let shortest = [session_days, audit_days]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
    let every = Duration::from_secs_f64((shortest * 86_400.0 / 4.0).clamp(1.0, 3600.0));
    tokio::pin!(shutdown);
    loop {
        let now = bastion_core::audit::now_micros();
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut gone = Vec::new();
            if let Some(days) = session_days {
                gone = s.expire_sessions(now.saturating_sub(keep(days)))?;
                if !gone.is_empty() {
                    s.append_audit(
                        Actor::Daemon,
                        AuditKind::SessionsExpired {
                            sessions: gone.clone(),
                            retention_secs: keep(days) / 1_000_000,
                        },
                    )?;
                }
            }
            if let Some(days) = audit_days
                && let Some((through_seq, count)) =
                    s.expire_audit(now.saturating_sub(keep(days)))?
            {
                tracing::info!(through_seq, count, "audit events past retention deleted");
                s.append_audit(
                    Actor::Daemon,
                    AuditKind::AuditExpired {
                        through_seq,
                        count,
                        retention_secs: keep(days) / 1_000_000,
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
            Ok(Err(e)) => tracing::error!(error = %e, "retention: cannot delete expired records"),
            Err(e) => tracing::error!(error = %e, "retention task failed"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
            _ = archived.notified() => {}
        }
    }
}

/// Stores the flood budget's summary of each minute in which something was suppressed, even
/// when no later event would carry it in.
async fn flood_summaries(store: Arc<Store>, shutdown: impl Future<Output = ()>) {
    const EVERY: Duration = Duration::from_secs(10);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.close_flood_minute()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot store the audit flood summary"),
            Err(e) => tracing::error!(error = %e, "audit flood summary task failed"),
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

/// Tells systemd `state` when bastiond runs under it. A failure is logged, not fatal: bastiond
/// serves as well without it, and a service manager that never hears `READY=1` times the start
/// out and restarts bastiond, which is the right outcome for a lost notification too.
fn tell_systemd(state: &str) {
    if let Err(e) = crate::notify::notify(state) {
        tracing::error!(error = %e, "cannot notify systemd");
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
