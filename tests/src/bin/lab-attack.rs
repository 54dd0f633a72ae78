//! lab-attack: the ways past a protected link that a process on the appliance might try, one
//! per mode, each reporting how it went like lab-connect does (exit 0: sent or connected;
//! 2: refused with EPERM; 1: any other failure, timeouts included). And the other end:
//! `listen`, run on a protected host, reports everything that reaches it.
//!
//! Modes:
//! - `broadcast IFACE PORT`: a UDP datagram to 255.255.255.255 out of IFACE (SO_BINDTODEVICE);
//! - `multicast IFACE PORT`: a UDP datagram to 224.0.0.1 (all hosts) out of IFACE;
//! - `link-local ADDR IFACE PORT`: TCP to an IPv6 link-local address with IFACE as its scope;
//! - `packet IFACE PORT [--qdisc-bypass]`: a hand-built Ethernet frame (broadcast MAC, IPv4,
//!   UDP to 255.255.255.255:PORT) on a packet socket, optionally with PACKET_QDISC_BYPASS,
//!   which sends straight to the driver and skips tcx egress;
//! - `xdp`: an AF_XDP socket registering its UMEM (the first step of any XDP transmit);
//! - `slow-close PORT SECS`: a TCP service that greets with `lab-slow`, and when the client
//!   closes, waits a second before closing too (so the client's side of the connection has
//!   become a TIME_WAIT socket by the time the FIN arrives, and the kernel answers for it);
//! - `sweep ADDR FIRST COUNT`: one UDP datagram to each of COUNT ports of ADDR from FIRST on
//!   (a flood of distinct flows from one source, as a scan would cause);
//! - `listen SECS PORT...`: UDP and TCP on [::]:PORT (IPv4 too) for each PORT, printing one line
//!   per datagram or connection received (`udp PORT from ADDR` / `tcp PORT from ADDR`), for SECS
//!   seconds.

use std::{
    ffi::CString,
    io::Read,
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const SOL_PACKET: libc::c_int = 263;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const SOL_XDP: libc::c_int = 283;
const XDP_UMEM_REG: libc::c_int = 4;
const AF_XDP: libc::c_int = 44;
const PAYLOAD: &[u8] = b"lab-attack";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match a.as_slice() {
        ["broadcast", iface, port] => port_of(port).and_then(|p| udp_out(iface, [255; 4], p)),
        ["multicast", iface, port] => port_of(port).and_then(|p| udp_out(iface, [224, 0, 0, 1], p)),
        ["link-local", addr, iface, port] => port_of(port).and_then(|p| link_local(addr, iface, p)),
        ["packet", iface, port] => port_of(port).and_then(|p| packet(iface, p, false)),
        ["packet", iface, port, "--qdisc-bypass"] => {
            port_of(port).and_then(|p| packet(iface, p, true))
        }
        ["xdp"] => xdp(),
        ["sweep", addr, first, count] => match (addr.parse(), first.parse(), count.parse()) {
            (Ok(addr), Ok(first), Ok(count)) => sweep(addr, first, count),
            _ => return usage("sweep ADDR FIRST COUNT"),
        },
        ["slow-close", port, secs] => {
            return match (port.parse(), secs.parse()) {
                (Ok(port), Ok(secs)) => slow_close(port, secs),
                _ => usage("slow-close PORT SECS"),
            };
        }
        ["listen", secs, ports @ ..] => {
            let ports: Result<Vec<u16>, _> = ports.iter().map(|p| p.parse()).collect();
            return match (secs.parse(), ports) {
                (Ok(secs), Ok(ports)) if !ports.is_empty() => listen(&ports, secs),
                _ => usage("listen SECS PORT..."),
            };
        }
        _ => return usage("unknown mode"),
    };
    bastion_lab::sys::probe_exit(result)
}

fn usage(why: &str) -> ExitCode {
    eprintln!("lab-attack: {why}");
    eprintln!(
        "usage: lab-attack broadcast|multicast IFACE PORT | link-local ADDR IFACE PORT | \
         packet IFACE PORT [--qdisc-bypass] | xdp | slow-close PORT SECS | sweep ADDR FIRST COUNT | \
         listen SECS PORT..."
    );
    ExitCode::from(64)
}

/// One datagram to each of `count` ports from `first` (bounded: at most 65535).
fn sweep(addr: std::net::IpAddr, first: u16, count: u16) -> std::io::Result<String> {
    let socket = UdpSocket::bind(SocketAddr::new(
        match addr {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            std::net::IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        },
        0,
    ))?;
    for i in 0..count {
        socket.send_to(PAYLOAD, SocketAddr::new(addr, first.wrapping_add(i)))?;
    }
    Ok(format!("sent {count} datagrams"))
}

fn port_of(s: &str) -> std::io::Result<u16> {
    s.parse()
        .map_err(|_| std::io::Error::other(format!("bad port {s}")))
}

fn ifindex(iface: &str) -> std::io::Result<u32> {
    let c = CString::new(iface).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

fn udp_out(iface: &str, to: [u8; 4], port: u16) -> std::io::Result<String> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.set_broadcast(true)?;
    s.set_multicast_if_v4(&std::net::Ipv4Addr::UNSPECIFIED)?;
    let dest = SocketAddr::from((to, port));
    s.send_to(PAYLOAD, &dest.into())?;
    Ok(format!("sent to {dest} out of {iface}"))
}

fn link_local(addr: &str, iface: &str, port: u16) -> std::io::Result<String> {
    let ip: Ipv6Addr = addr
        .parse()
        .map_err(|_| std::io::Error::other(format!("bad IPv6 address {addr}")))?;
    let dest = SocketAddrV6::new(ip, port, 0, ifindex(iface)?);
    let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    s.connect_timeout(&SockAddr::from(dest), Duration::from_secs(3))?;
    Ok(format!("connected to {dest}"))
}

/// An Ethernet frame carrying IPv4/UDP from 0.0.0.0 to 255.255.255.255:`port`.
fn frame(port: u16) -> Vec<u8> {
    let udp_len = 8 + PAYLOAD.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&[0xff; 6]); // destination: broadcast
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source: locally administered
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[16..20].copy_from_slice(&[255; 4]);
    let sum = bastion_lab::sys::inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    f.extend_from_slice(PAYLOAD);
    f
}

fn packet(iface: &str, port: u16, qdisc_bypass: bool) -> std::io::Result<String> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let s = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(proto))),
    )?;
    if qdisc_bypass {
        let on: libc::c_int = 1;
        setsockopt(s.as_raw_fd(), SOL_PACKET, PACKET_QDISC_BYPASS, &on)?;
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = proto;
    ll.sll_ifindex = ifindex(iface)? as i32;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let f = frame(port);
    // SAFETY: the buffer and address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            f.as_ptr().cast(),
            f.len(),
            0,
            (&ll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(format!(
        "sent a {}-byte frame on {iface}{}",
        f.len(),
        if qdisc_bypass { " (qdisc bypass)" } else { "" }
    ))
}

fn xdp() -> std::io::Result<String> {
    // SAFETY: plain socket(2) call; the fd is owned by the Socket below.
    let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    let s = unsafe { <Socket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // struct xdp_umem_reg { u64 addr; u64 len; u32 chunk_size; u32 headroom; u32 flags; u32 tx_metadata_len; }
    // The UMEM must be page aligned.
    let layout =
        std::alloc::Layout::from_size_align(16 * 4096, 4096).map_err(std::io::Error::other)?;
    // SAFETY: a non-zero-sized layout; freed below.
    let area = unsafe { std::alloc::alloc_zeroed(layout) };
    if area.is_null() {
        return Err(std::io::Error::other("out of memory"));
    }
    let reg: [u64; 4] = [area as u64, layout.size() as u64, 4096, 0];
    let result = setsockopt(s.as_raw_fd(), SOL_XDP, XDP_UMEM_REG, &reg);
    drop(s);
    // SAFETY: allocated above with this layout; the socket that pinned it is closed.
    unsafe { std::alloc::dealloc(area, layout) };
    result?;
    Ok("AF_XDP UMEM registered".into())
}

fn setsockopt<T>(fd: i32, level: libc::c_int, name: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` is valid for its size for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn udp6_only(port: u16) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
    s.set_only_v6(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

fn listen(ports: &[u16], secs: u64) -> ExitCode {
    let mut sockets = Vec::new();
    for &port in ports {
        // IPv4 multicast is not delivered to dual-stack IPv6 sockets: one UDP socket per family.
        match (
            udp6_only(port),
            UdpSocket::bind(("0.0.0.0", port)),
            TcpListener::bind(("::", port)),
        ) {
            (Ok(u6), Ok(u4), Ok(t)) => {
                let _ = u4.set_nonblocking(true);
                let _ = t.set_nonblocking(true);
                sockets.push((port, u6, u4, t));
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                eprintln!("lab-attack: cannot listen on {port}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    println!("listening");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        for (port, u6, u4, tcp) in &sockets {
            for udp in [u6, u4] {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    println!(
                        "udp {port} from {from}: {}",
                        String::from_utf8_lossy(&buf[..n]).trim()
                    );
                }
            }
            if let Ok((mut s, from)) = tcp.accept() {
                println!("tcp {port} from {from}");
                let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
                let _ = s.read(&mut buf);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ExitCode::SUCCESS
}

fn slow_close(port: u16, secs: u64) -> ExitCode {
    use std::io::Write;
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab-attack: cannot listen on {port}: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = listener.set_nonblocking(true);
    println!("listening");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, from)) => {
                println!("tcp {port} from {from}");
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = s.write_all(b"lab-slow\n");
                    let mut buf = [0u8; 1024];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    std::thread::sleep(Duration::from_secs(1));
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    ExitCode::SUCCESS
}
