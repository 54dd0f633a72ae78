//! lab-bench: the micro-measurements behind `cargo xtask bench`'s eBPF cost figures, run inside
//! a lab namespace and cgroup so the hooks under test see them like any other process.
//!
//! - `lab-bench sink PORT`: accepts TCP connections and discards what they send (300 s at most).
//! - `lab-bench connect N ADDR PORT`: N × (socket, connect, close), timing connect() alone;
//!   prints `{"p50_ns": .., "p99_ns": ..}`. `ADDR PORT` = `127.0.0.1 0` uses its own listener.
//! - `lab-bench send MIB ADDR PORT`: one connection carrying MIB MiB; prints `{"mb_s": ..}`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

const SINK_SECS: u64 = 300;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["sink", port] => port.parse().map_err(err).and_then(sink),
        ["connect", n, addr, port] => parse(addr, port).and_then(|a| {
            let n = n.parse().map_err(err)?;
            connect(n, a)
        }),
        ["send", mib, addr, port] => parse(addr, port).and_then(|a| {
            let mib = mib.parse().map_err(err)?;
            send(mib, a)
        }),
        _ => Err("usage: lab-bench sink PORT | connect N ADDR PORT | send MIB ADDR PORT".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn parse(addr: &str, port: &str) -> Result<SocketAddr, String> {
    Ok(SocketAddr::new(
        addr.parse().map_err(err)?,
        port.parse().map_err(err)?,
    ))
}

fn sink(port: u16) -> Result<(), String> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(err)?;
    // Bounded life: whoever started the sink may forget it.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(SINK_SECS));
        std::process::exit(0);
    });
    for mut s in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let mut buf = vec![0u8; 1 << 16];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
    Ok(())
}

fn connect(n: usize, mut addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        let listener = TcpListener::bind(addr).map_err(err)?;
        addr = listener.local_addr().map_err(err)?;
        // Accepts as fast as connections come, so no SYN waits for a full backlog.
        std::thread::spawn(move || listener.incoming().for_each(drop));
    }
    // Also waits for a sink that is still starting.
    drop(connect_retry(addr)?);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(err)?;
        samples.push(t0.elapsed().as_nanos() as u64);
        // Reset rather than close: no TIME_WAIT left to slow later connects down.
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!("{{\"p50_ns\": {}, \"p99_ns\": {}}}", at(0.5), at(0.99));
    Ok(())
}

fn send(mib: u64, addr: SocketAddr) -> Result<(), String> {
    let mut s = connect_retry(addr)?;
    let chunk = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    for _ in 0..mib {
        s.write_all(&chunk).map_err(err)?;
    }
    s.shutdown(std::net::Shutdown::Write).map_err(err)?;
    // Wait for the sink to finish reading: its close ends the transfer.
    let mut rest = [0u8; 16];
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.read(&mut rest);
    let secs = t0.elapsed().as_secs_f64();
    println!("{{\"mb_s\": {:.1}}}", (mib << 20) as f64 / secs / 1e6);
    Ok(())
}

/// Connects, retrying for up to 5 s while nobody listens yet.
fn connect_retry(addr: SocketAddr) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
}
