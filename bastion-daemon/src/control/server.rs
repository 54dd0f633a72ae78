//! Serving the control socket.

use std::{
    future::Future,
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use bastion_core::protocol::{
    ApiError, Envelope, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Request, Response,
};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {}: another bastiond is already serving it", path.display())]
    InUse { path: PathBuf },
    #[error("control socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
}

/// Answers requests. bastiond implements it; tests may drive `run` with their own.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        peer: Peer,
        request: Request,
    ) -> impl Future<Output = Response> + Send;
}

/// The caller, as the kernel reports it (SO_PEERCRED): audit events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// Who may use the API: root and the configured admin uids.
#[derive(Debug, Clone)]
pub struct Admins {
    uids: Vec<u32>,
}

impl Admins {
    pub fn new(extra_uids: &[u32]) -> Self {
        let mut uids = vec![0];
        uids.extend_from_slice(extra_uids);
        Admins { uids }
    }

    pub fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }
}

/// Binds `path` with mode 0600 and no window in which it is reachable with looser permissions:
/// the socket is made under a temporary name, chmod'ed, then renamed into place. A stale socket
/// (nobody answering) is replaced; a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ControlError::InUse {
            path: path.to_owned(),
        });
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(bind_err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    std::fs::rename(&tmp, path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    UnixListener::from_std(listener).map_err(bind_err)
}

/// Serves connections until `shutdown` resolves. Each connection is handled on its own task, so a
/// slow or hostile client delays nobody else.
pub async fn run<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    admins: Admins,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handler = handler.clone();
                    let admins = admins.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_one(stream, handler, &admins).await {
                            tracing::debug!(error = %e, "control connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    // Back off so a persistent error (e.g. fd exhaustion) does not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn serve_one<H: Handler>(
    mut stream: UnixStream,
    handler: Arc<H>,
    admins: &Admins,
) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    // The request is read (bounded in size and time) before any answer, a refusal included: a
    // client still writing when the server closes would see EPIPE instead of the reason.
    let line = tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut stream)).await;
    let response = if !admins.allows(cred.uid()) {
        // A non-admin's bytes are read only to be discarded, never parsed.
        tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "control API refused to a non-admin uid");
        Response::Error {
            error: ApiError::Forbidden(format!(
                "uid {} is not allowed to use the bastiond control API",
                cred.uid()
            )),
        }
    } else {
        match line.map(|l| l.and_then(|l| parse_request(&l))) {
            Err(_) => Response::Error {
                error: ApiError::Invalid("timed out waiting for the request".into()),
            },
            Ok(Err(message)) => Response::Error {
                error: ApiError::Invalid(message),
            },
            Ok(Ok(request)) => {
                let peer = Peer {
                    uid: cred.uid(),
                    pid: cred.pid(),
                };
                handler.handle(peer, request).await
            }
        }
    };
    let mut line = encode(response).or_else(|e| {
        tracing::error!(error = %e, "cannot encode a control response");
        encode(Response::Error {
            error: ApiError::Internal(format!("cannot encode the response: {e}")),
        })
    })?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}

fn encode(response: Response) -> io::Result<Vec<u8>> {
    serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body: response,
    })
    .map_err(io::Error::other)
}

/// One request line, at most `MAX_REQUEST_BYTES` long.
async fn read_line(stream: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST_BYTES as u64 + 1);
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading request: {e}"))?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    Ok(line)
}

fn parse_request(line: &[u8]) -> Result<Request, String> {
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported (bastiond speaks {PROTOCOL_VERSION}); use the bastionctl of the same release",
            envelope.v
        ));
    }
    serde_json::from_value(envelope.body).map_err(|e| format!("unknown or malformed request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_listed_uids_only() {
        let a = Admins::new(&[1000]);
        assert!(a.allows(0));
        assert!(a.allows(1000));
        assert!(!a.allows(65534));
    }
}
