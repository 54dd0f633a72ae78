//! `bastionctl audit --format jsonl|syslog [--follow]`: the audit stream as a SIEM ingests it,
//! JSON lines or RFC 5424 syslog messages, to stdout, a file, or a syslog socket.

use std::{
    io::Write,
    net::UdpSocket,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::Duration,
};

use bastion_core::{
    audit::AuditEvent,
    protocol::{Request, Response},
};

use crate::client;

/// Events asked for at a time; a page shorter than this is the stream's end (for now).
pub const BATCH: usize = 1000;
const POLL: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Jsonl,
    Syslog,
}

pub struct Export {
    pub format: Format,
    pub after: u64,
    pub follow: bool,
    pub output: Option<PathBuf>,
    /// `unix:PATH` (e.g. unix:/dev/log) or `udp:HOST:PORT`.
    pub syslog: Option<String>,
}

enum Sink {
    Out(Box<dyn Write>),
    Unix(UnixDatagram, PathBuf),
    Udp(UdpSocket),
}

impl Sink {
    fn send(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::Out(w) => {
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
                w.flush()
            }
            Sink::Unix(s, path) => s.send_to(line.as_bytes(), &*path).map(drop),
            Sink::Udp(s) => s.send(line.as_bytes()).map(drop),
        }
    }
}

/// Exports events after `after` until caught up, or forever with `follow`.
pub fn run(socket: &Path, timeout: Duration, e: Export) -> Result<(), String> {
    let mut sink = match (&e.syslog, &e.output) {
        (Some(target), _) => open_syslog(target)?,
        (None, Some(path)) => Sink::Out(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|err| format!("{}: {err}", path.display()))?,
        )),
        (None, None) => Sink::Out(Box::new(std::io::stdout())),
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "-".into());
    let mut after = e.after;
    loop {
        let events = audit_page(socket, after, timeout)?;
        for ev in &events {
            let line = match e.format {
                Format::Jsonl => serde_json::to_string(ev).map_err(|err| err.to_string())?,
                Format::Syslog => rfc5424(ev, &host),
                Format::Text => crate::render::event_line(ev),
            };
            sink.send(&line)
                .map_err(|err| format!("writing the export: {err}"))?;
            after = ev.seq;
        }
        if events.len() < BATCH {
            if !e.follow {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Up to [`BATCH`] audit events after sequence number `after`, oldest first.
pub fn audit_page(socket: &Path, after: u64, timeout: Duration) -> Result<Vec<AuditEvent>, String> {
    match client::call(
        socket,
        &Request::AuditSince {
            after,
            limit: BATCH,
        },
        timeout,
    ) {
        Ok(Response::Audit { events }) => Ok(events),
        Ok(Response::Error { error }) => Err(error.to_string()),
        Ok(other) => Err(format!("unexpected answer to audit: {other:?}")),
        Err(err) => Err(err.to_string()),
    }
}

fn open_syslog(target: &str) -> Result<Sink, String> {
    if let Some(path) = target.strip_prefix("unix:") {
        let s = UnixDatagram::unbound().map_err(|e| e.to_string())?;
        return Ok(Sink::Unix(s, PathBuf::from(path)));
    }
    if let Some(addr) = target.strip_prefix("udp:") {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.connect(addr).map_err(|e| format!("syslog {addr}: {e}"))?;
        return Ok(Sink::Udp(s));
    }
    Err(format!(
        "--syslog {target}: expected unix:PATH or udp:HOST:PORT"
    ))
}

pub use bastion_core::syslog::rfc5424;
