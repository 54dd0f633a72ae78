//! The policy routing TPROXY needs: packets carrying the steering mark are looked up in a table
//! of bastiond's own whose only route is "everything is local", so the kernel delivers them to
//! the transparent listener instead of forwarding them. Spoken as rtnetlink messages (two
//! message types; a crate for them would be larger than this file).
//!
//! `fwmark MARK lookup TABLE` (rule) and `local default dev lo table TABLE` (route), for IPv4 and
//! IPv6. Adding what exists already is fine (a crashed bastiond left it); so is removing what
//! is gone.

use std::{io, mem::size_of};

use libc::{AF_INET, AF_INET6, NETLINK_ROUTE, c_int};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
/// "Any scope" when deleting.
const RT_SCOPE_NOWHERE: u8 = 255;

#[derive(Debug, thiserror::Error)]
#[error("policy routing ({what}): {source}")]
pub struct RouteError {
    what: String,
    source: io::Error,
}

/// The routing that sends marked packets to local sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalDelivery {
    pub mark: u32,
    pub table: u32,
    /// Rule priority (lower is earlier); before the main table's 32766.
    pub priority: u32,
}

impl LocalDelivery {
    pub fn install(&self) -> Result<(), RouteError> {
        let lo = loopback()?;
        for family in [AF_INET, AF_INET6] {
            self.request(RTM_NEWRULE, family, lo)?;
            self.request(RTM_NEWROUTE, family, lo)?;
        }
        Ok(())
    }

    pub fn remove(&self) -> Result<(), RouteError> {
        let lo = loopback()?;
        for family in [AF_INET, AF_INET6] {
            self.request(RTM_DELRULE, family, lo)?;
            self.request(RTM_DELROUTE, family, lo)?;
        }
        Ok(())
    }

    fn request(&self, kind: u16, family: c_int, lo: u32) -> Result<(), RouteError> {
        let (create, rule) = match kind {
            RTM_NEWRULE => (true, true),
            RTM_DELRULE => (false, true),
            RTM_NEWROUTE => (true, false),
            _ => (false, false),
        };
        let mut body = Vec::with_capacity(64);
        if rule {
            // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
            body.extend_from_slice(&[family as u8, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL]);
            body.extend_from_slice(&0u32.to_ne_bytes());
            attr(&mut body, FRA_PRIORITY, self.priority);
            attr(&mut body, FRA_FWMARK, self.mark);
            attr(&mut body, FRA_FWMASK, u32::MAX);
            attr(&mut body, FRA_TABLE, self.table);
        } else {
            // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
            let scope = if create {
                RT_SCOPE_HOST
            } else {
                RT_SCOPE_NOWHERE
            };
            body.extend_from_slice(&[family as u8, 0, 0, 0, 0, RTPROT_STATIC, scope, RTN_LOCAL]);
            body.extend_from_slice(&0u32.to_ne_bytes());
            attr(&mut body, RTA_TABLE, self.table);
            attr(&mut body, RTA_OIF, lo);
        }
        let mut flags = NLM_F_REQUEST | NLM_F_ACK;
        if create {
            flags |= NLM_F_CREATE | NLM_F_EXCL;
        }
        let what = format!(
            "{} {} fwmark {:#x} table {}",
            if create { "add" } else { "remove" },
            if rule { "rule" } else { "local route" },
            self.mark,
            self.table
        );
        let err = |source| RouteError {
            what: what.clone(),
            source,
        };
        match transact(kind, flags, &body) {
            Ok(()) => Ok(()),
            // Left by a bastiond that did not stop cleanly, or already gone.
            Err(e) if create && e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) if !create && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
                Ok(())
            }
            // IPv6 disabled on this host: there is nothing to route.
            Err(e) if family == AF_INET6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }
}

fn loopback() -> Result<u32, RouteError> {
    // SAFETY: a NUL-terminated literal.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if index == 0 {
        return Err(RouteError {
            what: "find interface lo".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(index)
}

fn attr(buf: &mut Vec<u8>, kind: u16, value: u32) {
    buf.extend_from_slice(&8u16.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&value.to_ne_bytes());
}

/// Sends one request and waits for its acknowledgement.
fn transact(kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let len = 16 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
    msg.extend_from_slice(body);
    // SAFETY: msg is a valid buffer of msg.len() bytes; the kernel is the default destination.
    if unsafe { libc::send(raw, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 1024];
    // SAFETY: reply is a writable buffer of its length.
    let n = unsafe { libc::recv(raw, reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n < 16 + size_of::<i32>() || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected rtnetlink reply",
        ));
    }
    let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    match code {
        0 => Ok(()),
        c => Err(io::Error::from_raw_os_error(-c)),
    }
}
