//! lab-connect: tries one connect() (TCP), sendto() (UDP) or ICMP echo (raw socket) and reports
//! how it went, so tests can tell "refused by enforcement" (EPERM, exit 2) from "nobody
//! listening" (exit 3), "no answer" (exit 1) and success (0).
//!
//! With `--hold SECS`, keeps the TCP connection open without sending anything and reports whether
//! the peer closed it first ("closed by peer") or the time ran out ("still open").
//! With `--mark N`, the socket carries SO_MARK N (a root process can set any mark: it must not
//! buy a way past enforcement). `--from ADDR` binds the source address; `--send TEXT` sends TEXT
//! after connecting, half-closes, and prints everything the peer sends until it closes.
//! `--serve PORT` is the other end: a TCP service that greets with `lab-echo` and echoes, for
//! 60 seconds.
//!
//! Usage: lab-connect [--timeout SECS] [--mark N] [--from ADDR] [--send TEXT]
//!                    [--udp | --icmp | --hold SECS] ADDRESS PORT
//!        lab-connect --serve PORT

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(PartialEq)]
enum Mode {
    Tcp,
    Udp,
    Icmp,
    Hold(u64),
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut timeout = Duration::from_secs(5);
    let mut mark = None;
    let mut mode = Mode::Tcp;
    let mut from: Option<IpAddr> = None;
    let mut send: Option<String> = None;
    loop {
        let number = |args: &[String]| args.get(1).and_then(|s| s.parse::<u64>().ok());
        match args.first().map(String::as_str) {
            Some("--timeout") => match number(&args) {
                Some(secs) => timeout = Duration::from_secs(secs),
                None => return usage("--timeout needs a number of seconds"),
            },
            Some("--mark") => match number(&args).and_then(|m| u32::try_from(m).ok()) {
                Some(m) => mark = Some(m),
                None => return usage("--mark needs a number"),
            },
            Some("--serve") => match number(&args).and_then(|p| u16::try_from(p).ok()) {
                Some(port) => return serve(port),
                None => return usage("--serve needs a port"),
            },
            Some("--from") => match args.get(1).and_then(|a| a.parse().ok()) {
                Some(a) => from = Some(a),
                None => return usage("--from needs an address"),
            },
            Some("--send") => match args.get(1) {
                Some(text) => send = Some(text.clone()),
                None => return usage("--send needs text"),
            },
            Some("--hold") => match number(&args) {
                Some(secs) => mode = Mode::Hold(secs),
                None => return usage("--hold needs a number of seconds"),
            },
            Some("--udp") => {
                mode = Mode::Udp;
                args.remove(0);
                continue;
            }
            Some("--icmp") => {
                mode = Mode::Icmp;
                args.remove(0);
                continue;
            }
            _ => break,
        }
        args.drain(..2);
    }
    let [addr, port] = &args[..] else {
        return usage("ADDRESS PORT expected");
    };
    let (Ok(ip), Ok(port)) = (addr.parse::<IpAddr>(), port.parse::<u16>()) else {
        return usage(&format!("bad address or port: {addr} {port}"));
    };
    let target = SocketAddr::new(ip, port);
    if let Mode::Hold(secs) = mode {
        return hold_open(target, secs);
    }
    let result = match mode {
        Mode::Udp => udp(target, mark),
        Mode::Icmp => icmp(ip, mark, timeout),
        _ => tcp(target, mark, from, send.as_deref(), timeout),
    };
    bastion_lab::sys::probe_exit(result)
}

fn usage(why: &str) -> ExitCode {
    eprintln!("lab-connect: {why}");
    eprintln!(
        "usage: lab-connect [--timeout SECS] [--mark N] [--udp | --icmp | --hold SECS] ADDRESS PORT"
    );
    ExitCode::from(64)
}

fn socket(
    ip: IpAddr,
    ty: Type,
    proto: Option<Protocol>,
    mark: Option<u32>,
) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), ty, proto)?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    Ok(s)
}

fn tcp(
    target: SocketAddr,
    mark: Option<u32>,
    from: Option<IpAddr>,
    send: Option<&str>,
    timeout: Duration,
) -> std::io::Result<String> {
    let s = socket(target.ip(), Type::STREAM, None, mark)?;
    if let Some(from) = from {
        s.bind(&SocketAddr::new(from, 0).into())?;
    }
    s.connect_timeout(&target.into(), timeout)?;
    let mut s: TcpStream = s.into();
    if let Some(text) = send {
        use std::io::Write;
        s.write_all(text.as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)?;
        s.set_read_timeout(Some(timeout))?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        return Ok(format!("connected {}", String::from_utf8_lossy(&all)));
    }
    // Read the peer's banner, if it sends one, to show the connection is real.
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    Ok(format!(
        "connected {}",
        String::from_utf8_lossy(&buf[..n]).trim()
    ))
}

fn udp(target: SocketAddr, mark: Option<u32>) -> std::io::Result<String> {
    let s = socket(target.ip(), Type::DGRAM, None, mark)?;
    s.send_to(b"lab", &target.into())?;
    Ok("sent".into())
}

/// One ICMP echo request on a raw socket (the sock_addr hooks do not see raw sockets; the
/// egress program does), then waits for the reply.
fn icmp(ip: IpAddr, mark: Option<u32>, timeout: Duration) -> std::io::Result<String> {
    let IpAddr::V4(_) = ip else {
        return Err(std::io::Error::other("--icmp is IPv4 only"));
    };
    let s = socket(ip, Type::RAW, Some(Protocol::ICMPV4), mark)?;
    // type 8 (echo request), code 0, checksum, id, sequence 1.
    let mut packet = [8u8, 0, 0, 0, 0x1a, 0xb5, 0, 1];
    let sum = bastion_lab::sys::inet_checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    s.send_to(&packet, &SockAddr::from(SocketAddr::new(ip, 0)))?;
    s.set_read_timeout(Some(timeout))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
    while std::time::Instant::now() < deadline {
        let (n, from) = s.recv_from(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => std::io::Error::from(std::io::ErrorKind::TimedOut),
            _ => e,
        })?;
        // SAFETY: recv_from initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let from = from.as_socket().map(|a| a.ip());
        // The IPv4 header (20 bytes without options) precedes the ICMP echo reply (type 0).
        if from == Some(ip) && bytes.get(20) == Some(&0) {
            return Ok("echo reply".into());
        }
    }
    Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// Greets each connection with `lab-echo\n` and echoes what it receives until the client
/// half-closes; stops accepting after 60 seconds.
fn serve(port: u16) -> ExitCode {
    use std::io::Write;
    let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab-connect: cannot listen on {port}: {e}");
            return ExitCode::from(1);
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let _ = listener.set_nonblocking(true);
    while std::time::Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, _)) => {
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = s.write_all(b"lab-echo\n");
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    ExitCode::SUCCESS
}

/// Connects, sends nothing, and waits up to `secs` for the peer to close.
fn hold_open(target: SocketAddr, secs: u64) -> ExitCode {
    let mut s = match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            println!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(secs)));
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                println!("closed by peer");
                return ExitCode::SUCCESS;
            }
            // The server's banner and anything else it says: keep waiting.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                println!("still open after {secs}s");
                return ExitCode::from(4);
            }
            Err(_) => {
                println!("closed by peer");
                return ExitCode::SUCCESS;
            }
        }
    }
}
