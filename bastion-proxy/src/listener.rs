//! The listeners: accept TCP connections and run one russh server session and one session actor
//! for each, until shutdown. The explicit listener serves `login@target` user names with
//! bastiond's own host key; the transparent listener receives intercepted connections (TPROXY),
//! whose local address is the original destination, and answers as that target with a host
//! certificate for it. `serve` is also what runs an SSH session inside a ProxyJump channel.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use russh::Disconnect;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::{
    ProxyContext, handler::ClientHandler, session::SessionActor, throttle::Admission,
    username::Arrival,
};

/// Events buffered between a connection's russh handler and its actor.
const EVENT_QUEUE: usize = 64;
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Explicit,
    Transparent,
}

pub async fn run(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    mode: Mode,
    shutdown: impl Future<Output = ()>,
) {
    accept_each(listener, shutdown, move |stream, peer| {
        let ctx = ctx.clone();
        async move {
            match ctx.admit(peer.ip()) {
                Admission::Now => {}
                Admission::After(wait) => tokio::time::sleep(wait).await,
                Admission::Refuse => {
                    tracing::debug!(%peer, "connection closed: its source opens connections faster than ssh.connections_per_source_per_sec");
                    return;
                }
            }
            let _ = stream.set_nodelay(true);
            let (arrival, config) = match (mode, stream.local_addr()) {
                (Mode::Explicit, _) => (Arrival::Explicit, ctx.server_config.clone()),
                (Mode::Transparent, Ok(dest)) => match ctx.answer_as(&dest.ip().to_string()) {
                    Ok(config) => (Arrival::Transparent { dest }, config),
                    Err(why) => {
                        tracing::warn!(%peer, %dest, %why, "intercepted connection dropped");
                        return;
                    }
                },
                (Mode::Transparent, Err(e)) => {
                    tracing::warn!(%peer, error = %e, "intercepted connection without a destination");
                    return;
                }
            };
            serve(ctx, stream, peer, arrival, config).await;
        }
    })
    .await
}

/// Accepts until `shutdown`, handling each connection on its own task, so a slow or hostile
/// client delays nobody else. A failed accept (out of descriptors) is retried after a pause.
pub async fn accept_each<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(handle(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Runs one client connection to its end: the russh server session, the login grace
/// watchdog, and the session actor, which finishes the record after the client is gone.
pub async fn serve<S>(
    ctx: Arc<ProxyContext>,
    stream: S,
    peer: SocketAddr,
    arrival: Arrival,
    config: Arc<russh::server::Config>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let signed_in = Arc::new(AtomicBool::new(false));
    let actor =
        tokio::spawn(SessionActor::new(ctx.clone(), peer, arrival, rx, signed_in.clone()).run());
    let grace = ctx.login_grace;
    // The client must send its banner, and later sign in, within the grace time: a stalled or
    // hostile client holds nothing for long.
    match tokio::time::timeout(
        grace,
        russh::server::run_stream(config, stream, ClientHandler::new(tx)),
    )
    .await
    {
        Ok(Ok(running)) => {
            let handle = running.handle();
            let watchdog = tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if !signed_in.load(Ordering::SeqCst) {
                    tracing::info!(%peer, "closing a connection that did not sign in within {grace:?}");
                    let _ = handle
                        .disconnect(
                            Disconnect::ByApplication,
                            "login grace time exceeded".into(),
                            String::new(),
                        )
                        .await;
                }
            });
            if let Err(e) = running.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            watchdog.abort();
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "SSH handshake with client failed"),
        Err(_) => tracing::info!(%peer, "client sent no SSH banner within {grace:?}"),
    }
    // The handler (and its event sender) is gone; the actor finishes its record.
    let _ = actor.await;
}

/// A listener for intercepted connections: `IP_TRANSPARENT` lets it accept connections
/// addressed to any (non-local) destination that TPROXY assigns to it.
pub fn bind_transparent(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_ip_transparent_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}
