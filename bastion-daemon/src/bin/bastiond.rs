//! bastiond: the bastion daemon.

use std::{os::fd::AsRawFd, path::PathBuf, process::ExitCode};

use anyhow::Context;
use bastion_core::config::{Config, DEFAULT_CONFIG};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bastiond", version, about = "bastion auditing daemon")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Enter this network namespace (a name under /run/netns, or a path) before starting.
    /// Unlike `ip netns exec`, this keeps the host's /sys (bpffs, cgroupfs) visible.
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration file and exit: prints nothing and exits 0 when it is valid.
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    bastion::allocator::bound_heaps();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => {
            Config::load(&file).map(drop).map_err(anyhow::Error::from)
        }
        None => start(cli.config, cli.netns),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, most specific cause last: `bastiond: enforcement: ...: reason`.
            eprintln!("bastiond: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn start(config_path: PathBuf, netns: Option<String>) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    // Namespace and cgroup moves must happen while the process is still single-threaded.
    if let Some(ns) = netns {
        enter_netns(&ns)?;
    }
    if let Some(dir) = &config.enforce.daemon_cgroup {
        bastion::enforce::enter_cgroup(dir)?;
    }
    tracing_subscriber::fmt()
        // Colours only for a terminal: on a console or in a journal they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BASTION_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = bastion::limits::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(bastion::allocator::BLOCKING_IDLE)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        bastion::daemon::run(config, shutdown_signal()).await?;
        Ok(())
    })
}

fn enter_netns(ns: &str) -> anyhow::Result<()> {
    let path = if ns.contains('/') {
        PathBuf::from(ns)
    } else {
        PathBuf::from("/run/netns").join(ns)
    };
    let file = std::fs::File::open(&path)
        .with_context(|| format!("network namespace {}", path.display()))?;
    // SAFETY: setns on an fd we own; the process is single-threaded here.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {}", path.display()));
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop bastiond with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
