//! lab-connect: tries one connect() (TCP) or sendto() (UDP) and reports how it went, so tests can
//! tell "refused by enforcement" (EPERM, exit 2) from "nobody listening" (exit 3) and success (0).
//!
//! With `--hold SECS`, keeps the TCP connection open without sending anything and reports whether
//! the peer closed it first ("closed by peer") or the time ran out ("still open").
//!
//! Usage: lab-connect [--timeout SECS] [--udp | --hold SECS] ADDRESS PORT

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut timeout = Duration::from_secs(5);
    if args.first().map(String::as_str) == Some("--timeout") {
        match args.get(1).and_then(|s| s.parse::<u64>().ok()) {
            Some(secs) => timeout = Duration::from_secs(secs),
            None => {
                eprintln!("lab-connect: --timeout needs a number of seconds");
                return ExitCode::from(64);
            }
        }
        args.drain(..2);
    }
    let (udp, hold, rest) = match args.first().map(String::as_str) {
        Some("--udp") => (true, None, &args[1..]),
        Some("--hold") => match args.get(1).and_then(|s| s.parse::<u64>().ok()) {
            Some(secs) => (false, Some(secs), &args[2..]),
            None => {
                eprintln!("lab-connect: --hold needs a number of seconds");
                return ExitCode::from(64);
            }
        },
        _ => (false, None, &args[..]),
    };
    let [addr, port] = rest else {
        eprintln!("usage: lab-connect [--udp] ADDRESS PORT");
        return ExitCode::from(64);
    };
    let (Ok(ip), Ok(port)) = (addr.parse::<IpAddr>(), port.parse::<u16>()) else {
        eprintln!("lab-connect: bad address or port: {addr} {port}");
        return ExitCode::from(64);
    };
    let target = SocketAddr::new(ip, port);
    if let Some(secs) = hold {
        return hold_open(SocketAddr::new(ip, port), secs);
    }
    let result = if udp {
        let bind: SocketAddr = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("literal");
        UdpSocket::bind(bind)
            .and_then(|s| s.send_to(b"lab", target))
            .map(|_| "sent".to_owned())
    } else {
        TcpStream::connect_timeout(&target, timeout).map(|mut s| {
            // Read the peer's banner, if it sends one, to show the connection is real.
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            format!("connected {}", String::from_utf8_lossy(&buf[..n]).trim())
        })
    };
    match result {
        Ok(what) => {
            println!("{what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            match e.raw_os_error() {
                Some(libc::EPERM) => ExitCode::from(2),
                Some(libc::ECONNREFUSED) => ExitCode::from(3),
                _ => ExitCode::from(1),
            }
        }
    }
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
