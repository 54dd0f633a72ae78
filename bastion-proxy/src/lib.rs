//! The SSH proxy: terminate the admin's SSH connection, decide, re-originate to the target, and
//! record everything in between. A keystroke crosses this folder in one direction:
//!
//! `listener` (accept) → `handler` (russh callbacks → [`events::Event`]) → `session` (the one
//! actor per connection: identity, policy, upstream, audit) → `channel` (per-channel pumps, one
//! task per direction, recording as they forward) → `upstream` (russh client to the target).
//!
//! Nothing imports back from the upstream side to the handler side. [`keys`] holds the
//! appliance's own key material (host key, host and user CAs, audit and seal keys).

#![forbid(unsafe_code)]

pub mod access;
pub mod algorithms;
pub mod capture;
pub mod channel;
pub mod env;
pub mod events;
pub mod forward;
pub mod handler;
pub mod hostcert;
pub mod identity;
pub mod keys;
pub mod listener;
pub mod live;
pub mod menu;
pub mod menu_cmd;
pub mod ratelimit;
pub mod relay;
pub mod review;
pub mod rights;
pub mod second_factor;
pub mod session;
pub mod shell;
pub mod throttle;
pub mod tickets;
pub mod upstream;
pub mod username;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bastion_core::{
    cidr::Cidr,
    policy::{self, Policy},
};
use bastion_store::Store;

use crate::keys::ApplianceKeys;

/// What every session needs, shared read-mostly across connections.
pub struct ProxyContext {
    pub store: Arc<Store>,
    /// The policy in force (the daemon swaps it on change; sessions read snapshots).
    pub policy: Arc<policy::Live>,
    /// Protected prefixes from the config (the store's are in `policy`).
    pub config_subnets: Vec<Cidr>,
    pub keys: Arc<ApplianceKeys>,
    /// The explicit listener's server config (bastiond's own host key, no certificate).
    pub server_config: Arc<russh::server::Config>,
    pub host_certs: hostcert::HostCerts,
    /// Sessions in progress, for `session kill`.
    pub live: live::Registry,
    /// Free bytes on the store's filesystem below which new sessions are refused.
    pub store_floor: u64,
    /// Stored bytes one session may take (`store.session_quota_mb`).
    pub session_quota: Option<u64>,
    /// Whether the floor was reached at the last check (audited when it changes).
    pub below_floor: std::sync::atomic::AtomicBool,
    pub client_config: Arc<russh::client::Config>,
    pub upstream_mark: u32,
    pub connect_timeout: Duration,
    pub flush_interval: Duration,
    /// A connection that has not signed in by then is closed.
    pub login_grace: Duration,
    /// Failed sign-ins per source (an IPv4 address, an IPv6 /64).
    pub limiter: Mutex<ratelimit::Limiter<Cidr>>,
    /// Failed sign-ins per SSH user name (`login@target`) from one source network (/24, /64);
    /// `None` when disabled.
    pub user_limiter: Option<Mutex<ratelimit::Limiter<(String, Cidr)>>>,
    /// New connections per source before their banner (`None`:
    /// `ssh.connections_per_source_per_sec = 0`).
    pub throttle: Option<Mutex<throttle::Throttle>>,
    /// Every sign-in needs the second factor (`ssh.require_mfa`); otherwise grants say.
    pub require_mfa: bool,
    /// Which `env` requests reach the target.
    pub env: env::EnvGate,
    /// What the listeners offer (`ssh.algorithms`).
    pub algorithms: bastion_core::config::Algorithms,
    /// Policy changes, heard by every live session and relay flow ([`access`]).
    pub policy_changes: tokio::sync::broadcast::Sender<access::Change>,
    /// How policy acts on live access and on requests (`[policy]`).
    pub policy_config: bastion_core::config::PolicyConfig,
    /// Woken at every decision on a ticket (held commands wait on it).
    pub tickets_changed: tokio::sync::Notify,
    /// Asks for an audit anchor now (the daemon's anchor task signs the chain head): notified
    /// once a session's end is on the stream, so the anchor covers it.
    pub anchor_now: Arc<tokio::sync::Notify>,
    /// Every session captures moved files (`record.capture_files`); otherwise grants say.
    pub capture_files: bool,
    /// Where captured files are staged, and the largest captured.
    pub capture: Arc<capture::Settings>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProxyContext {
    /// `Err(remaining)` while sign-ins from `ip`, or as `username`, are refused after failures.
    pub fn limited(&self, ip: std::net::IpAddr, username: &str) -> Result<(), Duration> {
        let now = std::time::Instant::now();
        lock(&self.limiter).check(&Cidr::source(ip, 32, 64), now)?;
        match &self.user_limiter {
            Some(l) => lock(l).check(&(username.to_owned(), Cidr::source(ip, 24, 64)), now),
            None => Ok(()),
        }
    }

    /// Whether a new connection from `ip` is served now, after a wait, or closed.
    pub fn admit(&self, ip: std::net::IpAddr) -> throttle::Admission {
        match &self.throttle {
            Some(t) => lock(t).admit(Cidr::source(ip, 32, 64), std::time::Instant::now()),
            None => throttle::Admission::Now,
        }
    }

    /// Charges a connection that never signed in; true if it started a penalty.
    pub fn failed_login(&self, ip: std::net::IpAddr, username: &str) -> bool {
        let now = std::time::Instant::now();
        let by_ip = lock(&self.limiter).failure(Cidr::source(ip, 32, 64), now);
        let by_user = match &self.user_limiter {
            Some(l) => lock(l).failure((username.to_owned(), Cidr::source(ip, 24, 64)), now),
            None => false,
        };
        by_ip || by_user
    }

    /// The server config for answering as `target` (an address or name): bastiond's host key
    /// with a host certificate for that target. Refused when it is not a protected target.
    pub fn answer_as(&self, target: &str) -> Result<Arc<russh::server::Config>, String> {
        let resolved =
            bastion_core::policy::resolve_target(&self.policy(), target, &self.config_subnets)
                .map_err(|e| e.to_string())?;
        let cert = self
            .host_certs
            .for_target(&resolved)
            .map_err(|e| format!("internal: {e}"))?;
        Ok(Arc::new(server_config(
            &self.keys,
            vec![cert],
            self.algorithms,
        )))
    }

    /// Stores `meta` as a live session, then starts its recorder: nothing is carried that is
    /// not on record.
    pub async fn start_recording(
        &self,
        meta: bastion_core::session::SessionMeta,
    ) -> Result<
        (
            bastion_record::Recorder,
            tokio::task::JoinHandle<bastion_core::session::SessionMeta>,
        ),
        String,
    > {
        self.check_floor().await?;
        let store = self.store.clone();
        let m = meta.clone();
        tokio::task::spawn_blocking(move || store.put_session(&m))
            .await
            .map_err(|e| format!("internal: {e}"))?
            .map_err(|e| format!("internal: cannot record the session: {e}"))?;
        Ok(bastion_record::spawn(
            self.store.clone(),
            bastion_record::Settings {
                audit_key: self.keys.audit_key.clone(),
                flush_interval: self.flush_interval,
                floor_bytes: self.store_floor,
                quota_bytes: self.session_quota,
            },
            meta,
        ))
    }

    /// Refuses a new recording when the store's filesystem is below the configured floor:
    /// what is recorded already keeps its room. Reaching the floor is an audit alert.
    async fn check_floor(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let free = bastion_store::free_bytes(self.store.path())
            .map_err(|e| format!("internal: cannot tell the store's free space: {e}"))?;
        let below = free < self.store_floor;
        if below != self.below_floor.swap(below, Ordering::SeqCst) && below {
            let (free_mb, floor_mb) = (free >> 20, self.store_floor >> 20);
            tracing::error!(
                free_mb,
                floor_mb,
                "audit store at its floor: new sessions refused"
            );
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                store.append_audit(
                    bastion_core::audit::Actor::Daemon,
                    bastion_core::audit::AuditKind::StoreFloorReached { free_mb, floor_mb },
                )
            })
            .await;
        }
        if below {
            return Err(format!(
                "the audit store is nearly full ({} MiB free, floor {} MiB): new sessions are refused until space is freed",
                free >> 20,
                self.store_floor >> 20
            ));
        }
        Ok(())
    }

    /// Puts `next` in force (the caller holds the change lock) and has every live session and
    /// relay flow judge its access again.
    pub fn put_in_force(&self, changing: &policy::live::Changing<'_>, next: Policy) {
        self.policy.replace(changing, next);
        // No receiver (nothing live) is not an error.
        let _ = self.policy_changes.send(access::Change::Changed);
    }

    /// A live session's or relay flow's watch over its access, from now on.
    pub fn access_watch(&self) -> access::Watch {
        access::Watch::new(
            &self.policy_changes,
            Duration::from_secs(self.policy_config.end_warning_secs),
        )
    }

    /// The policy in force now: a pointer copy of the current snapshot.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.snapshot()
    }
}

/// The SSH server settings every listener uses; `certificates` certify the host key.
pub fn server_config(
    keys: &ApplianceKeys,
    certificates: Vec<ssh_key::Certificate>,
    algorithms: bastion_core::config::Algorithms,
) -> russh::server::Config {
    russh::server::Config {
        keys: vec![keys.host_key.clone()],
        certificates,
        preferred: algorithms::server_preferred(algorithms),
        // Keys and certificates; keyboard-interactive only ever completes a sign-in as the
        // second factor after one of them.
        methods: russh::MethodSet::from(
            &[
                russh::MethodKind::PublicKey,
                russh::MethodKind::KeyboardInteractive,
            ][..],
        ),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        nodelay: true,
        ..Default::default()
    }
}

/// The SSH client settings of the upstream leg. With hardware AES (AES-NI and carry-less
/// multiply) AES-GCM costs a fraction of ChaCha20-Poly1305 per byte, so the leg bastiond
/// chooses prefers it; without, ChaCha20 stays first (constant time in software).
pub fn client_config() -> russh::client::Config {
    let mut preferred = russh::Preferred::default();
    if hardware_aes() {
        preferred.cipher = std::borrow::Cow::Borrowed(&[
            russh::cipher::AES_128_GCM,
            russh::cipher::AES_256_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
            russh::cipher::AES_128_CTR,
        ]);
    }
    russh::client::Config {
        nodelay: true,
        preferred,
        ..Default::default()
    }
}

fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}
