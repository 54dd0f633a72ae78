//! lab-connect: tries one connect() (TCP) or sendto() (UDP) and reports how it went, so tests can
//! tell "refused by enforcement" (EPERM, exit 2) from "nobody listening" (exit 3) and success (0).
//!
//! Usage: lab-connect [--udp] ADDRESS PORT

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (udp, rest) = match args.first().map(String::as_str) {
        Some("--udp") => (true, &args[1..]),
        _ => (false, &args[..]),
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
    let result = if udp {
        let bind: SocketAddr = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("literal");
        UdpSocket::bind(bind)
            .and_then(|s| s.send_to(b"lab", target))
            .map(|_| "sent".to_owned())
    } else {
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).map(|mut s| {
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
