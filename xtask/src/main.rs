//! `cargo xtask`: the project's own automation.
//!
//! - `setup`: installs what a fresh machine lacks (Debian packages, the pinned eBPF nightly with
//!   rust-src, bpf-linker against its LLVM), idempotently;
//! - `test`: every check CI runs (fmt, clippy, unit and end-to-end tests), after setup;
//! - `demo`: the lab, bastiond, and enforcement shown end to end;
//! - `bench`: bastion against the direct path, ratios from one run;
//! - `fresh-check`: the two commands above on a clean root with stable Rust only (not in CI);
//! - `lab up|down|status`: the network-namespace lab by hand.

mod bench;
mod bench_archive;
mod bench_scale;
mod bench_volume;
mod demo;
mod ebpf_cost;
mod fresh_check;
mod image;
mod lab;
mod setup;
mod test;
#[path = "../../bastion-ebpf/toolchain.rs"]
mod toolchain;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build and test bastion (idempotent).
    Setup,
    /// Run every check: fmt, clippy (userspace and eBPF), unit and end-to-end tests.
    Test {
        /// Skip building and boot-testing the appliance image (it takes a few minutes).
        #[arg(long)]
        no_image: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Show bastion at work in the lab, then tear it down.
    Demo {
        /// Leave the lab and bastiond running afterwards and print how to use them.
        #[arg(long)]
        keep: bool,
    },
    /// Measure bastion against the direct path (throughput, echo latency, memory).
    Bench(bench::BenchArgs),
    /// Build the appliance disk image (raw and qcow2); `--test` boots it under QEMU.
    Image(image::ImageArgs),
    /// Prove the README's two commands on a fresh machine: a clean Debian root with stable Rust
    /// only, `cargo xtask demo` and `cargo xtask test --no-image` inside it, each timed.
    FreshCheck(fresh_check::FreshCheckArgs),
    /// Manage the network-namespace lab.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test { args, no_image } => test::run(&args, !no_image),
        Command::Demo { keep } => demo::run(keep),
        Command::Lab { command } => lab::run(command),
        Command::Bench(args) => bench::run(args),
        Command::Image(args) => image::run(args),
        Command::FreshCheck(args) => fresh_check::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
