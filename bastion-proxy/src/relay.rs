//! The TCP relay: raw TCP to protected `target:port`s that a grant with the `tcp` right allows,
//! intercepted like SSH (TPROXY: the original destination is the accepted socket's local
//! address). Raw TCP carries no identity, so the grant names the admin addresses it applies to.
//! Every connection, refused or carried, is audited as a flow (hook `relay`) with the admin's
//! address, bytes each way and duration; a grant with `capture` also records the payload, as a
//! session whose frames are the two byte streams.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Instant};

use bastion_core::{
    audit::{Actor, AuditKind},
    flow::{Flow, Relayed},
    policy::{self, GrantSubject, TcpRequest},
    record::Kind,
    session::SessionMeta,
};
use bastion_record::Recorder;
use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{ProxyContext, upstream};

/// Bytes read at once in each direction.
const CHUNK: usize = 64 * 1024;

pub async fn run(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    shutdown: impl Future<Output = ()>,
) {
    super::listener::accept_each(listener, shutdown, move |client, peer| {
        let ctx = ctx.clone();
        async move {
            match client.local_addr() {
                Ok(dest) => relay(ctx, client, peer, dest).await,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "relayed connection without a destination")
                }
            }
        }
    })
    .await
}

/// What was decided for one connection.
struct Allowed {
    grant: String,
    subject: String,
    capture: bool,
    target: policy::ResolvedTarget,
}

async fn relay(ctx: Arc<ProxyContext>, client: TcpStream, peer: SocketAddr, dest: SocketAddr) {
    let started = Instant::now();
    let mut flow = Flow {
        first_micros: bastion_core::audit::now_micros(),
        hook: "relay".into(),
        allowed: false,
        proto: "tcp".into(),
        src: Some(peer.ip()),
        sport: peer.port(),
        dst: Some(dest.ip()),
        dport: dest.port(),
        cgroup: 0,
        pid: None,
        comm: None,
        count: 1,
        relay: Some(Relayed::default()),
    };
    let allowed = match decide(&ctx, peer, dest) {
        Ok(a) => a,
        Err(reason) => {
            tracing::info!(client = %peer, %dest, %reason, "TCP relay refused");
            set(&mut flow, |r| r.reason = Some(reason));
            // Dropping the client closes it: nothing reached the target.
            return audit(&ctx, flow).await;
        }
    };
    set(&mut flow, |r| {
        r.grant = Some(allowed.grant.clone());
        r.subject = Some(allowed.subject.clone());
    });
    let upstream = match tokio::time::timeout(
        ctx.connect_timeout,
        upstream::connect_marked(dest, ctx.upstream_mark),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(&ctx, flow, format!("target {dest}: {e}")).await,
        Err(_) => return failed(&ctx, flow, format!("target {dest}: connect timed out")).await,
    };
    let capture = if allowed.capture {
        match start_capture(&ctx, &allowed, peer, dest).await {
            Ok(c) => Some(c),
            // Nothing is carried that the grant says must be recorded.
            Err(e) => return failed(&ctx, flow, e).await,
        }
    } else {
        None
    };
    flow.allowed = true;
    let _ = client.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let rec = capture.as_ref().map(|(r, _)| r);
    let (mut up, mut down) = (0, 0);
    let ended = tokio::select! {
        _ = async {
            tokio::join!(
                pump(cr, uw, rec, Kind::Input, &mut up),
                pump(ur, cw, rec, Kind::Output, &mut down)
            )
        } => None,
        reason = access_ends(&ctx, peer, dest, &allowed.target) => Some(reason),
    };
    if let Some(reason) = ended {
        // Both sockets were dropped with the pumps: the flow is closed.
        tracing::info!(client = %peer, %dest, %reason, "TCP relay ended: access no longer holds");
        if let Some((recorder, _)) = &capture {
            let note = Bytes::from(format!("bastion: access ended: {reason}"));
            let _ = recorder.record(Kind::Notice, 0, note).await;
        }
        // The flow's audit event carries why it ended.
        set(&mut flow, |r| r.reason = Some(format!("ended: {reason}")));
    }
    set(&mut flow, |r| {
        r.bytes_up = up;
        r.bytes_down = down;
        r.duration_ms = started.elapsed().as_millis() as u64;
    });
    if let Some((recorder, writer)) = capture {
        let totals = serde_json::json!({ "bytes_in": up, "bytes_out": down }).to_string();
        // After a recording failure there is no record to close: the writer has marked it.
        let _ = recorder.record(Kind::Close, 0, Bytes::from(totals)).await;
        drop(recorder);
        match writer.await {
            Ok(meta) => set(&mut flow, |r| r.session = Some(meta.id)),
            Err(e) => tracing::error!(error = %e, "relay recorder task failed"),
        }
    }
    tracing::info!(client = %peer, %dest, up, down, "TCP relay closed");
    audit(&ctx, flow).await;
}

fn decide(ctx: &ProxyContext, peer: SocketAddr, dest: SocketAddr) -> Result<Allowed, String> {
    let policy = ctx.policy();
    let target = policy::resolve_target(&policy, &dest.ip().to_string(), &ctx.config_subnets)
        .map_err(|e| e.to_string())?;
    let grant = policy::evaluate_tcp(
        &policy,
        &TcpRequest {
            source: peer.ip(),
            target: &target,
            port: dest.port(),
            now: bastion_core::clock::now_secs(),
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Allowed {
        grant: grant.id.clone(),
        subject: match &grant.subject {
            GrantSubject::User(u) => format!("user:{u}"),
            GrantSubject::Group(g) => format!("group:{g}"),
        },
        capture: grant.capture,
        target,
    })
}

/// Resolves with the reason once the relayed flow's access no longer holds (judged again at
/// each policy change and known end, like a session's); never while it does.
async fn access_ends(
    ctx: &ProxyContext,
    peer: SocketAddr,
    dest: SocketAddr,
    target: &policy::ResolvedTarget,
) -> String {
    let mut watch = ctx.access_watch();
    loop {
        let now = bastion_core::clock::now_secs();
        let req = TcpRequest {
            source: peer.ip(),
            target,
            port: dest.port(),
            now,
        };
        let verdict = watch.judge(&ctx.policy(), now, |p| {
            policy::standing::tcp_standing(p, &req, |_| Ok(()))
        });
        // Raw TCP has no channel to warn on; the flow simply ends.
        if let super::access::Verdict::End(reason) = verdict {
            return reason;
        }
        watch.due().await;
    }
}

/// Copies one direction until EOF or error, recording first when capturing, then shuts the
/// other side's write half so a half-close reaches the peer. Counts the bytes carried in
/// `total` (read even when the flow is cut short).
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    recorder: Option<&Recorder>,
    kind: Kind,
    total: &mut u64,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Recorded before forwarded: what cannot be recorded is not carried.
        if let Some(r) = recorder
            && r.record(kind, 0, Bytes::copy_from_slice(&buf[..n]))
                .await
                .is_err()
        {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        *total += n as u64;
    }
    let _ = to.shutdown().await;
}

async fn start_capture(
    ctx: &ProxyContext,
    allowed: &Allowed,
    peer: SocketAddr,
    dest: SocketAddr,
) -> Result<(Recorder, tokio::task::JoinHandle<SessionMeta>), String> {
    let store = ctx.store.clone();
    let id = tokio::task::spawn_blocking(move || store.new_session_id())
        .await
        .map_err(|e| format!("internal: {e}"))?
        .map_err(|e| format!("internal: {e}"))?;
    let meta = SessionMeta {
        user: allowed.subject.clone(),
        login: format!("tcp/{}", dest.port()),
        target: allowed.target.to_string(),
        client_addr: Some(peer),
        grant: allowed.grant.clone(),
        arrival: "tcp".into(),
        ..SessionMeta::starting(id, dest)
    };
    let (recorder, writer) = ctx.start_recording(meta).await?;
    recorder
        .record(Kind::Open, 0, Bytes::from(format!("tcp {dest}")))
        .await
        .map_err(|e| format!("internal: {e}"))?;
    Ok((recorder, writer))
}

fn set(flow: &mut Flow, f: impl FnOnce(&mut Relayed)) {
    f(flow.relay.get_or_insert_with(Relayed::default));
}

async fn failed(ctx: &ProxyContext, mut flow: Flow, reason: String) {
    tracing::warn!(%reason, "TCP relay failed");
    set(&mut flow, |r| r.reason = Some(reason));
    audit(ctx, flow).await;
}

async fn audit(ctx: &ProxyContext, flow: Flow) {
    let store = ctx.store.clone();
    let written = tokio::task::spawn_blocking(move || {
        store.append_audits(Actor::Daemon, vec![AuditKind::Flow(flow)])
    })
    .await;
    if !matches!(written, Ok(Ok(_))) {
        tracing::error!("cannot store a relay flow event");
    }
}
