//! Link and route changes as the kernel announces them (rtnetlink multicast groups), so
//! enforcement can follow a protected interface that is deleted and re-created, renamed back
//! or comes up, and notice a protected prefix routed through an interface that is not
//! protected. The messages are not parsed: any of them means "look again", and looking again
//! is idempotent and cheap (a few bpf(2) calls and two /proc reads).

use std::{io, os::fd::OwnedFd};

use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType, netlink::SocketAddrNetlink};
use tokio::io::{Interest, unix::AsyncFd};

/// rtnetlink multicast groups (`RTMGRP_*` of linux/rtnetlink.h).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

pub struct LinkEvents {
    socket: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    /// Subscribes to link and route changes in bastiond's network namespace.
    pub fn open() -> io::Result<LinkEvents> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            // None is NETLINK_ROUTE, the protocol's default.
            None,
        )?;
        rustix::net::bind(
            &fd,
            &SocketAddrNetlink::new(0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE),
        )?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open (and the same
        // descriptor) for as long as it is registered.
        let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(LinkEvents { socket })
    }

    /// Waits for the next change, then drains everything queued (one wake-up per burst).
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        let mut guard = self.socket.readable().await?;
        // Bounded: a burst larger than this is still a change, and the next call drains on.
        for _ in 0..256 {
            match rustix::net::recv(guard.get_inner(), &mut buf, RecvFlags::DONTWAIT) {
                Ok(_) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    guard.clear_ready();
                    break;
                }
                // The kernel dropped messages for us (ENOBUFS): still a change, look again.
                Err(rustix::io::Errno::NOBUFS) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
