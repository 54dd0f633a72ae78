//! What the kernel knows about a TCP socket that std does not expose: how many bytes written
//! to it the peer has not acknowledged yet (`SIOCOUTQ`). The syslog forwarder counts a message
//! delivered only once the receiver's TCP has acknowledged it.

use std::os::fd::AsRawFd;

/// Bytes in `socket`'s send queue not yet acknowledged by the peer.
pub fn unacked(socket: &impl AsRawFd) -> std::io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which outlives the call;
    // the descriptor is borrowed from a live socket.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::try_from(n).unwrap_or(0))
}
