//! The control API's handlers: one request in, one [`Response`] out, errors as [`ApiError`].
//!
//! Everything that touches the store, the policy or the kernel runs on tokio's blocking pool, at
//! most [`CONTROL_WORKERS`] requests at a time: a heavy request (verifying every session, an
//! output search, a long flow scan) never occupies the async workers that forward sessions, and a
//! burst of requests cannot take the whole pool either. Only the two requests that wait on the
//! network (probe, host-key fetch) stay async.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bastion_core::{
    audit::{Actor, AuditEvent, AuditKind},
    keys::Secret,
    policy::{self, Entity, EntityKind, Policy},
    protocol::{
        AccountInfo, ApiError, ExportFormat, ProbeResult, Request, Response, Status, StoreStatus,
    },
    record::export,
};
use bastion_proxy::{live::LiveError, upstream::UpstreamError};
use bastion_store::{StoreError, StoredAccount};
use tokio::io::AsyncBufReadExt;

use super::{
    Daemon, MAX_AUDIT_LIST, MAX_BANNER, MAX_FLOW_SCAN, PROBE_TIMEOUT, WATCH_BLOCKS, lock,
    protected, relay_ports, search,
};
use crate::control::server::{Handler, Peer};

/// Control requests served at once on the blocking pool; more wait their turn.
pub(super) const CONTROL_WORKERS: usize = 4;

impl Handler for Daemon {
    async fn handle(self: Arc<Self>, peer: Peer, request: Request) -> Response {
        let result = match request {
            Request::Probe { addr } => probe(addr, self.proxy.upstream_mark)
                .await
                .map(Response::Probe),
            Request::FetchHostKey { addr } => self.fetch_host_key(addr).await,
            Request::ArchiveStatus => match &self.archive {
                Some(a) => super::archive::status(&self.store, &a.stats, &a.remote, &a.appliance)
                    .await
                    .map(Response::ArchiveStatus)
                    .map_err(ApiError::internal),
                None => Err(ApiError::Invalid(
                    "archiving is off: bastiond's config has no [archive] section".into(),
                )),
            },
            request => self.blocking(peer, request).await,
        };
        result.unwrap_or_else(|error| Response::Error { error })
    }
}

impl Daemon {
    async fn blocking(self: Arc<Self>, peer: Peer, request: Request) -> Result<Response, ApiError> {
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            self.handle_blocking(peer, request)
        })
        .await
        .map_err(ApiError::internal)?
    }

    fn handle_blocking(&self, peer: Peer, request: Request) -> Result<Response, ApiError> {
        match request {
            Request::Status => self.status().map(Response::Status),
            Request::PolicyAdd { entity } => self.add(peer, entity).map(Response::Changed),
            Request::PolicyRemove {
                kind,
                name,
                keep_sessions,
            } => self
                .remove(peer, kind, &name, keep_sessions)
                .map(Response::Changed),
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
                .ok_or_else(|| {
                    ApiError::NotFound(format!("{} `{name}` does not exist", kind.as_str()))
                }),
            Request::SessionList { filter } => self
                .store
                .sessions()
                .map(|all| Response::Sessions {
                    sessions: all.into_iter().filter(|s| filter.matches(s)).collect(),
                })
                .map_err(ApiError::internal),
            Request::SessionShow { id } => self.show(id),
            Request::Search { query, output } => {
                search::search(&self.store, query, output).map_err(ApiError::internal)
            }
            Request::SessionExport { id, format } => self.export(id, format),
            Request::SessionFiles { id } => super::files::list(&self.store, id),
            Request::SessionFileData { id, index, from } => {
                super::files::data(&self.store, id, index, from)
            }
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
            Request::MfaEnroll { user } => self.mfa_enroll(peer, &user),
            Request::MfaRemove { user } => self.mfa_remove(peer, &user).map(Response::Changed),
            Request::TicketList { all } => {
                let now = bastion_core::clock::now_secs();
                let tickets = bastion_proxy::tickets::all(&self.proxy, now)
                    .map_err(ApiError::Internal)?
                    .into_iter()
                    .filter(|t| all || t.state == bastion_core::ticket::State::Pending)
                    .collect();
                Ok(Response::Tickets { tickets })
            }
            Request::TicketShow { id } => {
                let now = bastion_core::clock::now_secs();
                bastion_proxy::tickets::all(&self.proxy, now)
                    .map_err(ApiError::Internal)?
                    .into_iter()
                    .find(|t| t.id == id)
                    .map(|t| Response::Tickets { tickets: vec![t] })
                    .ok_or_else(|| ApiError::NotFound(format!("no request #{id}")))
            }
            Request::TicketDecide {
                id,
                approve,
                reason,
            } => {
                use bastion_proxy::tickets::{self, Decision};
                let now = bastion_core::clock::now_secs();
                let who = format!("uid {}", peer.uid);
                let decision = if approve {
                    Decision::Approve
                } else {
                    Decision::Deny
                };
                tickets::decide(
                    &self.proxy,
                    id,
                    &bastion_core::ticket::Decider::Admin(&who),
                    decision,
                    reason,
                    admin(peer),
                    now,
                )
                .map(|t| Response::Tickets { tickets: vec![t] })
                .map_err(|e| match e {
                    e if e.starts_with("internal: ") => ApiError::Internal(e),
                    e if e.starts_with("no request #") => ApiError::NotFound(e),
                    e => ApiError::Conflict(e),
                })
            }
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
                .map_err(ApiError::internal),
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
                .map_err(|e| match e {
                    LiveError::NotLive(_) => ApiError::NotFound(e.to_string()),
                    LiveError::Ending(_) => ApiError::Conflict(e.to_string()),
                })
                .and_then(|()| {
                    self.store
                        .append_audit(
                            admin(peer),
                            AuditKind::SessionKilled {
                                session: id,
                                reason,
                            },
                        )
                        .map_err(ApiError::internal)
                })
                .map(Response::Changed),
            Request::SessionWatch { id, from } => self.watch(id, from),
            Request::StoreStats => self.store_stats().map(Response::StoreStats),
            Request::Verify { session } => {
                self.verify(session)
                    .map(|(sessions, audit, findings)| Response::Verify {
                        sessions,
                        audit,
                        findings,
                    })
            }
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
                .map_err(ApiError::internal),
            Request::AuditSince { after, limit } => self
                .store
                .audit_after(after, limit.min(MAX_AUDIT_LIST))
                .map(|events| Response::Audit { events })
                .map_err(ApiError::internal),
            Request::AuditList { limit } => self
                .store
                .audit_events(limit.min(MAX_AUDIT_LIST))
                .map(|events| Response::Audit { events })
                .map_err(ApiError::internal),
            Request::Probe { .. } | Request::FetchHostKey { .. } | Request::ArchiveStatus => Err(
                ApiError::Internal("a network request reached the blocking pool".into()),
            ),
        }
    }
}

impl Daemon {
    fn status(&self) -> Result<Status, ApiError> {
        Ok(Status {
            version: crate::VERSION.to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            store: StoreStatus {
                path: self.store.path().to_owned(),
                schema_version: self.store.schema_version().map_err(ApiError::internal)?,
                size_bytes: self.store.size_on_disk().map_err(ApiError::internal)?,
            },
            enforcement: lock(&self.enforcer).status().map_err(ApiError::internal)?,
        })
    }

    /// A fresh TOTP secret for `user`, sealed to them; the URI is returned once and never
    /// stored in clear.
    fn mfa_enroll(&self, peer: Peer, user: &str) -> Result<Response, ApiError> {
        use bastion_core::totp;
        if !self.policy.snapshot().users.contains_key(user) {
            return Err(ApiError::NotFound(format!("user `{user}` does not exist")));
        }
        if self.store.totp(user).map_err(ApiError::internal)?.is_some() {
            return Err(ApiError::Invalid(format!(
                "user `{user}` already has a second factor; `bastionctl user mfa remove {user}` first"
            )));
        }
        let mut secret = zeroize::Zeroizing::new([0u8; totp::SECRET_LEN]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret[..])
            .map_err(|_| ApiError::internal("no randomness for a TOTP secret"))?;
        let sealed = self
            .proxy
            .keys
            .seal(
                &bastion_core::keys::totp_context(user),
                totp::sealable(&secret[..]).as_bytes(),
            )
            .map_err(ApiError::internal)?;
        let stored = bastion_store::StoredTotp {
            user: user.to_owned(),
            sealed,
            last_step: 0,
        };
        let event = self
            .store
            .put_totp(&stored, admin(peer))
            .map_err(ApiError::internal)?;
        Ok(Response::MfaEnrolled {
            uri: totp::uri("bastion", user, &secret[..]),
            event,
        })
    }

    fn mfa_remove(&self, peer: Peer, user: &str) -> Result<AuditEvent, ApiError> {
        if self.store.totp(user).map_err(ApiError::internal)?.is_none() {
            return Err(ApiError::NotFound(format!(
                "user `{user}` has no second factor"
            )));
        }
        self.store
            .remove_totp(user, admin(peer))
            .map_err(ApiError::internal)
    }

    /// Seals and stores a private key for `login` on the registered `target`.
    fn account_add(
        &self,
        peer: Peer,
        target: &str,
        login: &str,
        private_key: &Secret,
    ) -> Result<AuditEvent, ApiError> {
        if !self.policy.snapshot().targets.contains_key(target) {
            return Err(ApiError::NotFound(format!(
                "target `{target}` does not exist"
            )));
        }
        if login.is_empty()
            || login.len() > 64
            || login
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '@')
        {
            return Err(ApiError::Invalid(format!("invalid login `{login}`")));
        }
        let key = russh::keys::PrivateKey::from_openssh(private_key.expose().trim())
            .map_err(|e| ApiError::Invalid(format!("not an OpenSSH private key: {e}")))?;
        if key.is_encrypted() {
            return Err(ApiError::Invalid("the private key is passphrase-protected; store an unencrypted copy (bastion seals it)".into()));
        }
        let public = key.public_key();
        let sealed = self
            .proxy
            .keys
            .seal(
                &bastion_core::keys::account_context(target, login),
                private_key.expose().trim().as_bytes(),
            )
            .map_err(ApiError::internal)?;
        let account = StoredAccount {
            target: target.to_owned(),
            login: login.to_owned(),
            public_key: public.to_openssh().map_err(ApiError::internal)?,
            fingerprint: public.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
            sealed,
        };
        self.store
            .put_account(&account, admin(peer))
            .map_err(ApiError::internal)
    }

    fn account_remove(
        &self,
        peer: Peer,
        target: &str,
        login: &str,
    ) -> Result<AuditEvent, ApiError> {
        if self
            .store
            .account(target, login)
            .map_err(ApiError::internal)?
            .is_none()
        {
            return Err(ApiError::NotFound(format!(
                "no stored key for {login}@{target}"
            )));
        }
        self.store
            .remove_account(target, login, admin(peer))
            .map_err(ApiError::internal)
    }

    async fn fetch_host_key(&self, addr: SocketAddr) -> Result<Response, ApiError> {
        let key = bastion_proxy::upstream::fetch_host_key(
            self.proxy.client_config.clone(),
            addr,
            self.proxy.upstream_mark,
            self.proxy.connect_timeout,
        )
        .await
        .map_err(|e| match e {
            UpstreamError::Internal(m) => ApiError::Internal(m),
            e => ApiError::Target(e.to_string()),
        })?;
        let fingerprint = russh::keys::PublicKey::from_openssh(&key)
            .map(|k| k.fingerprint(russh::keys::HashAlg::Sha256).to_string())
            .map_err(|e| ApiError::Target(format!("target {addr}: unreadable host key: {e}")))?;
        Ok(Response::HostKey {
            addr,
            key,
            fingerprint,
        })
    }

    fn session(&self, id: u64) -> Result<bastion_core::session::SessionMeta, ApiError> {
        self.store
            .session(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::NotFound(format!("session {id} does not exist")))
    }

    fn show(&self, id: u64) -> Result<Response, ApiError> {
        let session = self.session(id)?;
        let frames = self.store.session_frames(id).map_err(ApiError::internal)?;
        Ok(Response::Session {
            session,
            activity: export::activity(&frames),
        })
    }

    fn export(&self, id: u64, format: ExportFormat) -> Result<Response, ApiError> {
        let meta = self.session(id)?;
        let frames = self.store.session_frames(id).map_err(ApiError::internal)?;
        let content = match format {
            ExportFormat::Asciicast => export::asciicast(&meta, &frames),
            ExportFormat::Json => export::json(&meta, &frames).to_string(),
            ExportFormat::Sealed => {
                let blocks = self
                    .store
                    .session_blocks(&meta)
                    .map_err(ApiError::internal)?;
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
                .map_err(ApiError::internal)?
            }
        };
        Ok(Response::Export { format, content })
    }

    fn add(&self, peer: Peer, entity: Entity) -> Result<AuditEvent, ApiError> {
        let changing = self.policy.begin_change();
        let policy = self.policy.snapshot();
        let entity = policy::check_add(&policy, entity)?;
        if entity.kind() == EntityKind::Subnet && lock(&self.enforcer).interfaces().is_empty() {
            // Forwarded traffic to it would meet no egress program (the config check's rule).
            return Err(ApiError::Invalid(
                "no protected interface: list the interfaces toward the protected subnets in                  enforce.protected_interfaces before protecting a subnet"
                    .into(),
            ));
        }
        let mut next = (*policy).clone();
        next.insert(entity.clone());
        // A new protected prefix reaches the kernel before it is recorded: if storing fails, the
        // kernel is stricter than the record, never looser. (A relay port steered early only
        // meets a relay that finds no grant.)
        self.apply_enforcement(entity.kind(), &next)?;
        let event = self
            .store
            .put_entity(&entity, admin(peer))
            .map_err(ApiError::internal)?;
        self.proxy.put_in_force(&changing, next);
        tracing::info!(uid = peer.uid, kind = entity.kind().as_str(), name = %entity.key(), "policy added");
        Ok(event)
    }

    fn remove(
        &self,
        peer: Peer,
        kind: EntityKind,
        name: &str,
        keep_sessions: bool,
    ) -> Result<AuditEvent, ApiError> {
        let changing = self.policy.begin_change();
        let policy = self.policy.snapshot();
        let kept = match (keep_sessions, kind) {
            (false, _) => None,
            (true, EntityKind::Grant) => policy.grants.get(name).cloned(),
            (true, _) => {
                return Err(ApiError::Invalid(
                    "--keep-sessions applies to removing a grant".into(),
                ));
            }
        };
        if kind == EntityKind::Target {
            let logins: Vec<String> = (self.store.accounts().map_err(ApiError::internal)?)
                .into_iter()
                .filter(|a| a.target == name)
                .map(|a| a.login)
                .collect();
            if !logins.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "target `{name}` has stored account keys ({}); remove them first with `bastionctl account remove`",
                    logins.join(", ")
                )));
            }
        }
        // A later user of the same name must not inherit the secret.
        if kind == EntityKind::User && self.store.totp(name).map_err(ApiError::internal)?.is_some()
        {
            return Err(ApiError::Conflict(format!(
                "user `{name}` has a second factor; remove it first with `bastionctl user mfa remove {name}`"
            )));
        }
        policy::check_remove(&policy, kind, name)?;
        let mut next = (*policy).clone();
        next.remove(kind, name);
        // Removal is recorded before the kernel loosens, for the same reason.
        let event = self
            .store
            .remove_entity(kind, name, admin(peer))
            .map_err(ApiError::internal)?;
        self.apply_enforcement(kind, &next)?;
        // Live sessions hear of a kept grant before the policy without it is in force.
        if let Some(grant) = kept {
            let _ = self
                .proxy
                .policy_changes
                .send(bastion_proxy::access::Change::Keep(Arc::new(grant)));
        }
        self.proxy.put_in_force(&changing, next);
        tracing::info!(uid = peer.uid, kind = kind.as_str(), name, "policy removed");
        Ok(event)
    }

    /// Terminal output of session `id` from block `from` on (what the user sees), for a live
    /// read-only view: what the recorder has flushed, at most `record.flush_interval_ms` behind.
    /// Each poll reads only blocks it has not read, at most [`WATCH_BLOCKS`] of them.
    fn watch(&self, id: u64, from: u32) -> Result<Response, ApiError> {
        let meta = self.session(id)?;
        let (frames, next) = self
            .store
            .session_frames_from(id, from, WATCH_BLOCKS)
            .map_err(ApiError::internal)?;
        let output = frames
            .iter()
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
            next,
            live: meta.state == bastion_core::session::SessionState::Live,
        })
    }

    fn store_stats(&self) -> Result<bastion_core::protocol::StoreStats, ApiError> {
        let e = |e: StoreError| ApiError::internal(e);
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

    /// Judges one session (or all), walks the audit stream, and (all sessions) holds each
    /// against the other: a session the stream names that the store lacks was deleted, a
    /// stored one the stream never saw start had its audit events deleted.
    fn verify(
        &self,
        only: Option<u64>,
    ) -> Result<
        (
            Vec<bastion_core::integrity::SessionIntegrity>,
            bastion_core::integrity::AuditIntegrity,
            Vec<bastion_core::integrity::Finding>,
        ),
        ApiError,
    > {
        let metas = match only {
            Some(id) => vec![self.session(id)?],
            None => self.store.sessions().map_err(ApiError::internal)?,
        };
        let since = self.store.integrity_since().map_err(ApiError::internal)?;
        let audit_key = self.proxy.keys.audit_key.public_key();
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas.iter().rev() {
            // One block at a time: a recording of any size verifies in bounded memory.
            let mut walk = bastion_core::integrity::Walk::new(meta.id, meta.blocks);
            self.store
                .for_each_block(meta, |b| {
                    walk.feed(&b);
                    true
                })
                .map_err(ApiError::internal)?;
            // Only when the chain breaks: the frames before the broken block, read again.
            let frames_before = |n: u32| {
                let mut frames = 0;
                let _ = self.store.for_each_block(meta, |b| {
                    if b.n >= n {
                        return false;
                    }
                    frames +=
                        bastion_core::record::block::decompress(&b.bytes).map_or(0, |f| f.len());
                    true
                });
                frames
            };
            out.push(bastion_core::integrity::judge_walk(
                meta,
                &walk,
                since.session_may_be_legacy(meta.id),
                frames_before,
                |msg, seal| bastion_core::integrity::seal_valid(audit_key, msg, seal),
            ));
        }
        let mut ledger = bastion_core::integrity::SessionLedger::default();
        let audit = self
            .store
            .verify_audit_with(|e| ledger.observe(e))
            .map_err(ApiError::internal)?;
        let mut findings = Vec::new();
        if only.is_none() {
            let stored: std::collections::BTreeSet<u64> = metas.iter().map(|m| m.id).collect();
            findings.extend(ledger.deleted(&stored));
        }
        // Past a break the stream was not read to the end: every later start would look missing.
        if only.is_none() && audit.broken.is_none() {
            let judged: Vec<_> = metas
                .iter()
                .rev()
                .cloned()
                .zip(out.iter().map(|v| v.status))
                .collect();
            findings.extend(ledger.unaudited(&judged));
        }
        Ok((out, audit, findings))
    }

    /// Brings the kernel in line with a changed policy: protected prefixes (subnets) and the
    /// ports steered to the TCP relay (grants).
    fn apply_enforcement(&self, kind: EntityKind, policy: &Policy) -> Result<(), ApiError> {
        let mut enforcer = lock(&self.enforcer);
        match kind {
            EntityKind::Subnet => enforcer.set_protected(&protected(&self.config_subnets, policy)),
            EntityKind::Grant => enforcer.set_relay_ports(&relay_ports(policy)),
            _ => Ok(()),
        }
        .map_err(|e| ApiError::Internal(format!("updating enforcement: {e}")))?;
        if kind == EntityKind::Subnet {
            drop(enforcer);
            super::links::check_routes(self);
        }
        Ok(())
    }
}

fn admin(peer: Peer) -> Actor {
    Actor::Admin {
        uid: peer.uid,
        pid: peer.pid,
    }
}

/// Connects from bastiond itself and reads the peer's first line. With bastiond's upstream mark,
/// like every socket toward a protected host: the image's nftables floor lets nothing else out.
async fn probe(addr: SocketAddr, mark: u32) -> Result<ProbeResult, ApiError> {
    let t0 = Instant::now();
    let stream = tokio::time::timeout(
        PROBE_TIMEOUT,
        bastion_proxy::upstream::connect_marked(addr, mark),
    )
    .await
    .map_err(|_| {
        ApiError::Target(format!(
            "target {addr}: connect timed out after {PROBE_TIMEOUT:?}"
        ))
    })?
    .map_err(|e| ApiError::Target(format!("target {addr}: connect failed: {e}")))?;
    let connect_micros = t0.elapsed().as_micros() as u64;
    let mut line = Vec::new();
    let mut reader =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_BANNER as u64));
    tokio::time::timeout(PROBE_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| {
            ApiError::Target(format!("target {addr}: no banner within {PROBE_TIMEOUT:?}"))
        })?
        .map_err(|e| ApiError::Target(format!("target {addr}: reading banner: {e}")))?;
    Ok(ProbeResult {
        addr,
        banner: String::from_utf8_lossy(&line).trim_end().to_owned(),
        connect_micros,
    })
}
