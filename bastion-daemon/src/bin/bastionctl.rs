//! bastionctl: the admin CLI. Human-readable output by default, `--json` for scripts.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use bastion::{
    config::DEFAULT_SOCKET,
    control::{
        client,
        protocol::{ProbeResult, Request, Response, Status},
    },
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bastionctl", version, about = "Manage a bastion appliance")]
struct Cli {
    /// bastiond's control socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET, env = "BASTION_SOCKET")]
    socket: PathBuf,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, uptime, store and enforcement state.
    Status,
    /// Have bastiond connect to ADDR (ip:port) and show the peer's banner.
    Probe { addr: SocketAddr },
}

const TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match &cli.command {
        Command::Status => Request::Status,
        Command::Probe { addr } => Request::Probe { addr: *addr },
    };
    match client::call(&cli.socket, &request, TIMEOUT) {
        Ok(response) => {
            print(&response, cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bastionctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(response: &Response, json: bool) {
    if json {
        match serde_json::to_string_pretty(response) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("bastionctl: cannot encode response: {e}"),
        }
        return;
    }
    match response {
        Response::Status(s) => print_status(s),
        Response::Probe(p) => print_probe(p),
        Response::Error { message } => eprintln!("bastionctl: bastiond: {message}"),
    }
}

fn print_status(s: &Status) {
    let e = &s.enforcement;
    println!(
        "bastiond {} (pid {}), up {}",
        s.version,
        s.pid,
        duration(s.uptime_secs)
    );
    println!(
        "{:<14}{} (schema v{}, {})",
        "store",
        s.store.path.display(),
        s.store.schema_version,
        bytes(s.store.size_bytes)
    );
    let hooks: Vec<String> = e
        .hooks
        .iter()
        .map(|h| {
            format!(
                "{} ({})",
                h.program,
                serde_json::to_value(h.link)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )
        })
        .collect();
    println!(
        "{:<14}enforcing on {}: {}",
        "enforcement",
        e.cgroup_root.display(),
        hooks.join(", ")
    );
    let subnets: Vec<String> = e
        .protected_subnets
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "{:<14}{}",
        "protected",
        if subnets.is_empty() {
            "(none)".to_owned()
        } else {
            subnets.join(", ")
        }
    );
    println!(
        "{:<14}{} (cgroup id {})",
        "exempt",
        e.daemon_cgroup.display(),
        e.daemon_cgroup_id
    );
    println!(
        "{:<14}{} refused, {} allowed (bastiond)",
        "connects", e.denied, e.allowed
    );
    println!("{:<14}{}", "pins", e.bpffs_dir.display());
}

fn print_probe(p: &ProbeResult) {
    println!(
        "{} reachable from bastiond in {} µs: {}",
        p.addr, p.connect_micros, p.banner
    );
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
