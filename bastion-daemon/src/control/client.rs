//! The blocking control client bastionctl uses.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{Envelope, PROTOCOL_VERSION, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bastiond is not running: no control socket at {}", path.display())]
    NotRunning { path: PathBuf },
    #[error("bastiond is not running: nothing answers on {} (stale socket)", path.display())]
    Stale { path: PathBuf },
    #[error("permission denied on {}: run bastionctl as root or an admin uid", path.display())]
    Denied { path: PathBuf },
    #[error("talking to bastiond on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("bastiond sent a malformed response: {0}")]
    Malformed(String),
    #[error("bastiond: {0}")]
    Refused(String),
}

/// Sends one request and returns bastiond's answer (its error responses become `Refused`).
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ClientError::NotRunning {
            path: socket.into(),
        },
        io::ErrorKind::ConnectionRefused => ClientError::Stale {
            path: socket.into(),
        },
        io::ErrorKind::PermissionDenied => ClientError::Denied {
            path: socket.into(),
        },
        _ => ClientError::Io {
            path: socket.into(),
            source,
        },
    })?;
    let io_err = |source| ClientError::Io {
        path: socket.into(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body: request,
    })
    .map_err(|e| ClientError::Malformed(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_err)?;
    let envelope: Envelope<Response> =
        serde_json::from_str(&answer).map_err(|e| ClientError::Malformed(e.to_string()))?;
    match envelope.body {
        Response::Error { message } => Err(ClientError::Refused(message)),
        other => Ok(other),
    }
}
