//! Telling systemd that bastiond is ready (the `sd_notify(3)` datagram protocol, without
//! libsystemd).
//!
//! On the appliance bastiond is a `Type=notify` service: systemd counts it started only when it
//! says `READY=1`, and bastiond says that only once its enforcement is attached and its
//! listeners are bound. Units ordered after bastiond (the console banner, the boot self-check,
//! anything before `network-pre.target`) therefore start on a bastiond that already holds the
//! protected side, not on one that has merely been exec'd. The protocol is one datagram of
//! newline-separated `KEY=value` lines to the socket named by `$NOTIFY_SOCKET`: a path, or an
//! abstract name written with a leading `@`. Without the variable (tests, a shell) there is no
//! service manager to tell, which is not an error.

#![forbid(unsafe_code)]

use std::{
    ffi::OsStr,
    os::{
        linux::net::SocketAddrExt,
        unix::{
            ffi::OsStrExt,
            net::{SocketAddr, UnixDatagram},
        },
    },
    path::Path,
};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{NOTIFY_SOCKET}={socket}: neither an absolute path nor an abstract name (@...)")]
    Address { socket: String },
    #[error("{NOTIFY_SOCKET}={socket}: {source}")]
    Io {
        socket: String,
        source: std::io::Error,
    },
    #[error("{NOTIFY_SOCKET}={socket}: only {sent} of {len} bytes sent")]
    Short {
        socket: String,
        sent: usize,
        len: usize,
    },
}

/// Sends `state` to the service manager named by `$NOTIFY_SOCKET`. Returns whether there was one
/// to tell (false when bastiond does not run under systemd).
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) if !socket.is_empty() => send(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` as one datagram to `socket` (a path, or `@name` for an abstract socket).
pub fn send(socket: &OsStr, state: &str) -> Result<(), NotifyError> {
    let name = || socket.to_string_lossy().into_owned();
    let io = |source| NotifyError::Io {
        socket: name(),
        source,
    };
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(Path::new(socket)),
        // Relative paths and other schemes (vsock:, used for VMs) are not for bastiond.
        _ => return Err(NotifyError::Address { socket: name() }),
    }
    .map_err(io)?;
    let sender = UnixDatagram::unbound().map_err(io)?;
    let sent = sender.send_to_addr(state.as_bytes(), &addr).map_err(io)?;
    if sent != state.len() {
        return Err(NotifyError::Short {
            socket: name(),
            sent,
            len: state.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsString, time::Duration};

    use super::*;

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_one_datagram_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=enforcing").unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=enforcing");
    }

    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        let name = format!("bastion-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(&OsString::from(format!("@{name}")), "READY=1").unwrap();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    fn a_missing_listener_is_an_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody");
        let err = send(path.as_os_str(), "READY=1").unwrap_err();
        assert!(matches!(err, NotifyError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nobody"), "{err}");
    }

    #[test]
    fn relative_paths_and_other_schemes_are_refused() {
        for socket in ["notify.sock", "vsock:2:1234", ""] {
            let err = send(OsStr::new(socket), "READY=1").unwrap_err();
            assert!(
                matches!(err, NotifyError::Address { .. }),
                "{socket}: {err:?}"
            );
        }
    }
}
