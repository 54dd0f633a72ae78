//! The explicit listener: accepts TCP connections and runs one russh server session and one
//! session actor for each, until shutdown.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use russh::Disconnect;

use tokio::{net::TcpListener, sync::mpsc};

use super::{ProxyContext, handler::ClientHandler, session::SessionActor};

/// Events buffered between a connection's russh handler and its actor.
const EVENT_QUEUE: usize = 64;

pub async fn run(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
                        let signed_in = Arc::new(AtomicBool::new(false));
                        let actor = tokio::spawn(SessionActor::new(ctx.clone(), peer, rx, signed_in.clone()).run());
                        let config = ctx.server_config.clone();
                        let grace = ctx.login_grace;
                        // The client must send its banner, and later sign in, within the grace
                        // time: a stalled or hostile client holds nothing for long.
                        match tokio::time::timeout(grace, russh::server::run_stream(config, stream, ClientHandler::new(tx))).await {
                            Ok(Ok(running)) => {
                                let handle = running.handle();
                                let watchdog = tokio::spawn(async move {
                                    tokio::time::sleep(grace).await;
                                    if !signed_in.load(Ordering::SeqCst) {
                                        tracing::info!(%peer, "closing a connection that did not sign in within {grace:?}");
                                        let _ = handle
                                            .disconnect(Disconnect::ByApplication, "login grace time exceeded".into(), String::new())
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
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
