//! Small helpers shared by the xtask commands.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Prints a step header, runs `cmd` with inherited output, and fails naming the step.
pub fn step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let t0 = Instant::now();
    let status = cmd
        .current_dir(workspace())
        .status()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    eprintln!("    {what}: ok in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (network namespaces, cgroups, eBPF); run it as root");
    }
    Ok(())
}

/// Builds bastiond, bastionctl and lab-connect (the binaries the lab runs).
pub fn build_bins() -> anyhow::Result<()> {
    step(
        "build binaries",
        cargo().args(["build", "--locked", "--workspace", "--bins"]),
    )
}
