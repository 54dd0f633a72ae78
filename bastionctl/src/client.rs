//! The blocking control client bastionctl uses.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use bastion_core::protocol::{ApiError, Envelope, PROTOCOL_VERSION, Request, Response};

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
    Api(ApiError),
    #[error(
        "bastiond speaks control protocol v{theirs}, this bastionctl v{PROTOCOL_VERSION}: use the bastionctl installed with that bastiond"
    )]
    Version { theirs: u32 },
    #[error("bastiond did not answer on {} within {}s (busy or hung; `bastionctl status` and its log tell which)", path.display(), timeout.as_secs())]
    Timeout { path: PathBuf, timeout: Duration },
}

/// Sends one request and returns bastiond's answer (its error responses become `Api`).
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
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
    let answer = exchange(stream, &line).map_err(|source| match source.kind() {
        // A read or write timeout on a socket reads as EAGAIN.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            path: socket.into(),
            timeout,
        },
        _ => io_err(source),
    })?;
    // The version first: a newer or older bastiond's answer may not parse as ours at all.
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_str(&answer).map_err(|e| ClientError::Malformed(e.to_string()))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(ClientError::Version { theirs: envelope.v });
    }
    match serde_json::from_value(envelope.body)
        .map_err(|e| ClientError::Malformed(e.to_string()))?
    {
        Response::Error { error } => Err(ClientError::Api(error)),
        other => Ok(other),
    }
}

/// Writes `request` and reads the one-line answer. bastiond may answer (a refusal) and close
/// before the request is written: the answer is then still waiting in the socket, and it is what
/// the user must read, not the EPIPE of the write.
fn exchange(mut stream: UnixStream, request: &[u8]) -> io::Result<String> {
    let written = stream.write_all(request);
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    match (written, read) {
        (_, Ok(n)) if n > 0 => Ok(answer),
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(_)) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "bastiond closed the connection without answering",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_sent_before_the_request_is_read_even_when_the_write_fails() {
        let (client, mut server) = UnixStream::pair().expect("socketpair");
        server
            .write_all(b"{\"v\":1,\"body\":\"refused\"}\n")
            .expect("server writes");
        drop(server);
        // The server is gone: the write fails with EPIPE, the answer is still there.
        let answer = exchange(client, &vec![b'x'; 1 << 20]).expect("the answer");
        assert_eq!(answer, "{\"v\":1,\"body\":\"refused\"}\n");
    }

    #[test]
    fn a_silent_bastiond_is_a_timeout_not_eagain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        // Accepts (the kernel does, from the backlog) and never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let err = call(&path, &Request::Status, Duration::from_millis(200)).expect_err("silence");
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("did not answer"), "{err}");
    }

    #[test]
    fn no_answer_is_an_error() {
        let (client, server) = UnixStream::pair().expect("socketpair");
        drop(server);
        let err = exchange(client, b"{}\n").expect_err("nothing to read");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);

        let (client, server) = UnixStream::pair().expect("socketpair");
        let server = std::thread::spawn(move || {
            let mut request = String::new();
            BufReader::new(server)
                .read_line(&mut request)
                .map(|_| request)
        });
        let err = exchange(client, b"{}\n").expect_err("closed without answering");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(server.join().expect("server thread").expect("read"), "{}\n");
    }
}
