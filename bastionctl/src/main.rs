//! bastionctl: the admin CLI. Human-readable output by default, `--json` for scripts.
//!
//! - `cli`: the command line, turned into one control-API request;
//! - `render`: the human-readable tables;
//! - `play`: terminal replay of a recorded session;
//! - `archive`: the archive read straight from the bucket (no bastiond);
//! - `report`, `report_html`: the compliance report (JSON, CSV, HTML with SVG charts);
//! - `replay`: a session as one self-contained HTML page with the vendored asciinema player;
//! - `files`: captured files written out and checked against their SHA-256.

#![forbid(unsafe_code)]

mod anchors;
mod archive;
mod cli;
mod client;
mod export;
mod files;
mod play;
mod render;
mod replay;
mod report;
mod report_html;

use std::{process::ExitCode, time::Duration};

use bastion_core::protocol::{Request, Response};
use clap::Parser as _;

const TIMEOUT: Duration = Duration::from_secs(15);

/// Has bastiond fetch `addr`'s host key, shows it, and returns it once the admin confirms.
fn fetch_and_confirm(
    socket: &std::path::Path,
    addr: std::net::SocketAddr,
    yes: bool,
) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let response = client::call(socket, &Request::FetchHostKey { addr }, TIMEOUT)
        .map_err(|e| e.to_string())?;
    let Response::HostKey {
        key, fingerprint, ..
    } = response
    else {
        return Err("bastiond sent an unexpected answer to a host key fetch".into());
    };
    eprintln!(
        "{addr} presents {} {fingerprint}",
        key.split_whitespace().next().unwrap_or("?")
    );
    if yes {
        return Ok(key);
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            "host key not confirmed: compare the fingerprint above, then pass --yes".into(),
        );
    }
    eprint!("Pin this host key? Check the fingerprint out of band first. [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(key)
    } else {
        Err("host key not confirmed; nothing was added".into())
    }
}

/// `verify --file`: checks a sealed session file without bastiond, against the audit key the
/// auditor brings: the key inside the file is whatever whoever wrote the file put there.
fn verify_file(file: &std::path::Path, key: Option<&std::path::Path>) -> ExitCode {
    let Some(key) = key else {
        eprintln!(
            "bastionctl: verify --file needs --key AUDIT_KEY_FILE (the appliance's audit key, from `bastionctl ca show --audit-key`): the key inside the file cannot vouch for it"
        );
        return ExitCode::from(2);
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    // An archived object (`archive fetch`) or a sealed file (`session export --format sealed`).
    let archived = std::fs::File::open(file).ok().and_then(|mut f| {
        use std::io::Read;
        let mut magic = [0u8; 8];
        f.read_exact(&mut magic).ok()?;
        (&magic == bastion_core::archive::object::MAGIC).then_some(())
    });
    let result = match archived {
        Some(()) => read(key).and_then(|key| {
            let public = ssh_key::PublicKey::from_openssh(key.trim())
                .map_err(|e| format!("audit key: {e}"))?;
            let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
            let c = bastion_core::archive::object::check(std::io::BufReader::new(f), &public)
                .map_err(|e| e.to_string())?;
            Ok((c.integrity, key.trim().to_owned()))
        }),
        None => read(file).and_then(|text| {
            let key = read(key)?;
            bastion_core::record::sealed::check(&text, &key)
        }),
    };
    match result {
        Ok((verdict, key_line)) => {
            let fingerprint = bastion_core::keys::fingerprint(&key_line);
            println!(
                "session {:<8} {:<9} {} (audit key {fingerprint})",
                verdict.session,
                format!("{:?}", verdict.status).to_uppercase(),
                verdict.detail
            );
            if verdict.status == bastion_core::integrity::Status::Sealed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bastionctl: verify {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// Polls the session's output and prints it as it grows, until the session has ended and
/// everything recorded is shown.
fn watch(socket: &std::path::Path, id: u64) -> ExitCode {
    use bastion_core::protocol::{Request, Response};
    use std::io::Write;
    let mut from = 0;
    loop {
        match client::call(socket, &Request::SessionWatch { id, from }, TIMEOUT) {
            Ok(Response::Watch { output, next, live }) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(&output);
                let _ = out.flush();
                if !live && next == from {
                    eprintln!("\r\nbastionctl: session {id} has ended");
                    return ExitCode::SUCCESS;
                }
                from = next;
            }
            Ok(other) => {
                eprintln!("bastionctl: unexpected answer: {other:?}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("bastionctl: {e}");
                return ExitCode::FAILURE;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Runs a command composed of several requests.
fn composite(socket: &std::path::Path, c: cli::Composite) -> ExitCode {
    let result = match c {
        cli::Composite::Report(args) => {
            report::run(socket, TIMEOUT, args).map_err(|e| format!("report: {e}"))
        }
        cli::Composite::Extract { id, dir } => files::extract(socket, TIMEOUT, id, &dir)
            .map(|n| eprintln!("{n} files written to {}", dir.display()))
            .map_err(|e| format!("session files {id}: {e}")),
        cli::Composite::Html { id } => replay_page(socket, id)
            .map(|page| print!("{page}"))
            .map_err(|e| format!("session export {id}: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bastionctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The replay page of a session: its asciicast, what happened in it, its seal.
fn replay_page(socket: &std::path::Path, id: u64) -> Result<String, String> {
    let call = |r: Request| client::call(socket, &r, TIMEOUT).map_err(|e| e.to_string());
    let unexpected = |what: &str| format!("bastiond sent an unexpected answer to {what}");
    let Response::Session { session, activity } = call(Request::SessionShow { id })? else {
        return Err(unexpected("session show"));
    };
    let Response::Export { content, .. } = call(Request::SessionExport {
        id,
        format: bastion_core::protocol::ExportFormat::Asciicast,
    })?
    else {
        return Err(unexpected("session export"));
    };
    let Response::Verify { sessions, .. } = call(Request::Verify { session: Some(id) })? else {
        return Err(unexpected("verify"));
    };
    Ok(replay::page(
        &session,
        &content,
        &activity,
        sessions.first(),
    ))
}

fn main() -> ExitCode {
    let mut cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors on one line, like every other bastionctl error; help and version as clap prints them.
        Err(e) if e.use_stderr() => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "bastionctl: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    cli.command = match cli.command.archive_offline() {
        Ok(cmd) => return archive::run(cmd, cli.json),
        Err(other) => *other,
    };
    if let Some((file, key)) = cli.command.offline_verify() {
        return verify_file(&file, key.as_deref());
    }
    if cli.command.stray_key() {
        eprintln!("bastionctl: verify --key goes with --file or --anchors (see --help)");
        return ExitCode::from(2);
    }
    let anchors = cli.command.anchors();
    if let Some(e) = cli.command.export() {
        return match export::run(&cli.socket, TIMEOUT, e) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("bastionctl: audit export: {err}");
                ExitCode::FAILURE
            }
        };
    }
    cli.command = match cli.command.composite() {
        Ok(c) => return composite(&cli.socket, c),
        Err(other) => *other,
    };
    let file_hash = cli.command.file_hash();
    if let Some(id) = cli.command.watched() {
        return watch(&cli.socket, id);
    }
    let playback = cli.command.playback();
    let ca_part = cli.command.ca_part();
    let fetched = match cli.command.host_key_to_fetch() {
        None => None,
        Some((addr, yes)) => match fetch_and_confirm(&cli.socket, addr, yes) {
            Ok(key) => Some(key),
            Err(e) => {
                eprintln!("bastionctl: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let request = match cli.command.into_request(fetched) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bastionctl: {e}");
            return ExitCode::from(2);
        }
    };
    match client::call(&cli.socket, &request, TIMEOUT) {
        Ok(mut response) => {
            if let (Some(h), Response::Search { hits, .. }) = (&file_hash, &mut response) {
                hits.retain(|hit| {
                    hit.source == bastion_core::session::CommandSource::File
                        && hit.line.starts_with(h.as_str())
                });
            }
            if let (Some((file, key)), bastion_core::protocol::Response::Verify { findings, .. }) =
                (&anchors, &mut response)
            {
                match anchors::check(&cli.socket, TIMEOUT, file, key.as_deref()) {
                    Ok((found, summary)) => {
                        // bastiond's own cross-check may have named a deleted session already.
                        for f in found {
                            if !findings.contains(&f) {
                                findings.push(f);
                            }
                        }
                        if !cli.json {
                            println!("{summary}");
                        }
                    }
                    Err(e) => {
                        eprintln!("bastionctl: verify --anchors {}: {e}", file.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            if let (
                Some((speed, no_wait, from)),
                bastion_core::protocol::Response::Export { content, .. },
            ) = (playback, &response)
            {
                return match play::play(content, speed, no_wait, from) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("bastionctl: replay: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            if cli.json {
                match serde_json::to_string_pretty(&response) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("bastionctl: cannot encode response: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else if let bastion_core::protocol::Response::Ca {
                user_ca,
                host_ca,
                known_hosts,
                audit_key,
            } = &response
            {
                render::ca(user_ca, host_ca, known_hosts, audit_key, ca_part);
            } else {
                render::response(&response);
            }
            if let bastion_core::protocol::Response::Verify {
                sessions,
                audit,
                findings,
            } = &response
                && (audit.broken.is_some()
                    || !findings.is_empty()
                    || sessions
                        .iter()
                        .any(|s| s.status == bastion_core::integrity::Status::Tampered))
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bastionctl: {e}");
            ExitCode::FAILURE
        }
    }
}
