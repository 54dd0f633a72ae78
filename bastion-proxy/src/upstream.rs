//! The target side: a russh client that connects with bastiond's mark, verifies the target's
//! pinned host key, and signs in with a certificate minted for this session only.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use russh::{
    client::{self, AuthResult},
    keys::{HashAlg, PublicKey, PublicKeyOrCertificate},
};

use crate::keys::{self, ApplianceKeys};

/// Why the target side failed. `Display` is shown to the client, so it says "target".
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("target {addr}: cannot connect: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("target {addr}: no answer within {secs}s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error(
        "target {target} has no pinned host key; register it with `bastionctl target add ... --host-key`"
    )]
    NotEnrolled { target: String },
    #[error(
        "target {target} presented host key {presented}, which is not the pinned key: refusing (possible interception)"
    )]
    HostKeyMismatch { target: String, presented: String },
    #[error("target {addr}: SSH failed: {source}")]
    Ssh {
        addr: SocketAddr,
        source: russh::Error,
    },
    #[error(
        "target {target} refused bastion's credentials for login `{login}` (does it trust the bastion user CA in TrustedUserCAKeys, or hold the stored account key?)"
    )]
    AuthRefused { target: String, login: String },
    #[error("internal: {0}")]
    Internal(String),
}

/// An agent channel the target opened (the target-side half of `ssh -A`); whoever receives it
/// accepts or rejects it.
pub struct AgentChannel {
    pub channel: russh::Channel<client::Msg>,
    pub reply: client::ChannelOpenHandle,
}

/// The target-side client handler: checks the target's host key against the pinned ones and
/// remembers what it saw; hands agent channels the target opens to `agent`.
pub struct PinnedHostKey {
    pinned: Vec<String>,
    seen: Arc<Mutex<Option<PublicKey>>>,
    agent: tokio::sync::mpsc::Sender<AgentChannel>,
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // Host certificates are not trusted yet; judge the key inside.
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let ok = bastion_core::keys::is_pinned(&key, &self.pinned);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key);
        }
        Ok(ok)
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // Dropping `reply` (if nobody listens) rejects the channel.
        let _ = self.agent.send(AgentChannel { channel, reply }).await;
        Ok(())
    }
}

pub struct Upstream {
    pub handle: client::Handle<PinnedHostKey>,
}

pub struct Dial<'a> {
    pub target: &'a str,
    pub addr: SocketAddr,
    pub pinned: &'a [String],
    pub login: &'a str,
    /// Names the bastion user and session in the certificate (shows in the target's logs).
    pub key_id: &'a str,
    pub mark: u32,
    pub timeout: Duration,
    /// Where agent channels opened by the target go.
    pub agent: tokio::sync::mpsc::Sender<AgentChannel>,
    /// A stored key for this login, tried when the target refuses the certificate.
    pub fallback: Option<russh::keys::PrivateKey>,
}

pub async fn connect(
    config: Arc<client::Config>,
    keys: &ApplianceKeys,
    dial: Dial<'_>,
) -> Result<Upstream, UpstreamError> {
    if dial.pinned.is_empty() {
        return Err(UpstreamError::NotEnrolled {
            target: dial.target.to_owned(),
        });
    }
    let addr = dial.addr;
    let secs = dial.timeout.as_secs();
    let stream = tokio::time::timeout(dial.timeout, connect_marked(addr, dial.mark))
        .await
        .map_err(|_| UpstreamError::Timeout { addr, secs })?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let seen = Arc::new(Mutex::new(None));
    let checker = PinnedHostKey {
        pinned: dial.pinned.to_vec(),
        seen: seen.clone(),
        agent: dial.agent,
    };
    let mut handle = match tokio::time::timeout(
        dial.timeout,
        client::connect_stream(config, stream, checker),
    )
    .await
    {
        Err(_) => return Err(UpstreamError::Timeout { addr, secs }),
        Ok(Ok(h)) => h,
        Ok(Err(source)) => {
            let presented = seen.lock().ok().and_then(|s| s.clone());
            return Err(match (source, presented) {
                (russh::Error::UnknownKey, Some(key)) => UpstreamError::HostKeyMismatch {
                    target: dial.target.to_owned(),
                    presented: key.fingerprint(HashAlg::Sha256).to_string(),
                },
                (source, _) => UpstreamError::Ssh { addr, source },
            });
        }
    };
    let (key, cert) = keys
        .session_credential(dial.login, dial.key_id, keys::MAX_CERT_VALIDITY)
        .map_err(|e| UpstreamError::Internal(e.to_string()))?;
    let result = tokio::time::timeout(
        dial.timeout,
        handle.authenticate_openssh_cert(dial.login, Arc::new(key), cert),
    )
    .await
    .map_err(|_| UpstreamError::Timeout { addr, secs })?
    .map_err(|source| UpstreamError::Ssh { addr, source })?;
    if matches!(result, AuthResult::Success) {
        return Ok(Upstream { handle });
    }
    let refused = || UpstreamError::AuthRefused {
        target: dial.target.to_owned(),
        login: dial.login.to_owned(),
    };
    let Some(key) = dial.fallback else {
        return Err(refused());
    };
    let hash = if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten()
    } else {
        None
    };
    let result = tokio::time::timeout(
        dial.timeout,
        handle.authenticate_publickey(
            dial.login,
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), hash),
        ),
    )
    .await
    .map_err(|_| UpstreamError::Timeout { addr, secs })?
    .map_err(|source| UpstreamError::Ssh { addr, source })?;
    match result {
        AuthResult::Success => {
            tracing::info!(
                target = dial.target,
                login = dial.login,
                "signed in with the stored account key"
            );
            Ok(Upstream { handle })
        }
        AuthResult::Failure { .. } => Err(refused()),
    }
}

/// Fetches the host key `addr` presents, without signing in: for enrolment, where an admin
/// confirms it before it is pinned. Returns the key as an OpenSSH public key line.
pub async fn fetch_host_key(
    config: Arc<client::Config>,
    addr: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> Result<String, UpstreamError> {
    let secs = timeout.as_secs();
    let stream = tokio::time::timeout(timeout, connect_marked(addr, mark))
        .await
        .map_err(|_| UpstreamError::Timeout { addr, secs })?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let seen = Arc::new(Mutex::new(None));
    let (agent, _) = tokio::sync::mpsc::channel(1);
    // Nothing is pinned, so the handshake stops right after the key is seen.
    let checker = PinnedHostKey {
        pinned: Vec::new(),
        seen: seen.clone(),
        agent,
    };
    let _ = tokio::time::timeout(timeout, client::connect_stream(config, stream, checker)).await;
    let key = seen.lock().ok().and_then(|s| s.clone());
    let key = key.ok_or(UpstreamError::Timeout { addr, secs })?;
    key.to_openssh()
        .map_err(|e| UpstreamError::Internal(e.to_string()))
}

/// A TCP connection carrying bastiond's mark. Every socket bastiond opens toward a protected host
/// goes through here: the appliance's static nftables floor lets only this mark out of a
/// protected interface while bastiond's eBPF programs are not attached (they judge by bastiond's
/// cgroup, not the mark). Also for policy routing and firewalls on the way.
pub async fn connect_marked(addr: SocketAddr, mark: u32) -> std::io::Result<tokio::net::TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_mark(mark)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}
