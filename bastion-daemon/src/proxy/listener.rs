//! The explicit listener: accepts TCP connections and runs one russh server session and one
//! session actor for each, until shutdown.

use std::{future::Future, sync::Arc, time::Duration};

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
                        let actor = tokio::spawn(SessionActor::new(ctx.clone(), peer, rx).run());
                        let config = ctx.server_config.clone();
                        match russh::server::run_stream(config, stream, ClientHandler::new(tx)).await {
                            Ok(running) => {
                                if let Err(e) = running.await {
                                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                                }
                            }
                            Err(e) => tracing::debug!(%peer, error = %e, "SSH handshake with client failed"),
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
