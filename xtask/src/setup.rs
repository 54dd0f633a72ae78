//! `cargo xtask setup`: makes a fresh machine of this kind able to build and test bastion.
//! Every step checks first and only acts when something is missing, so a second run takes seconds.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Debian packages: LLVM 22 for bpf-linker, netfilter libraries for nftnl, the lab's tools
/// (iproute2, OpenSSH server and client), and what later features use (nftables, rsync).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    "libnftnl-dev",
    "libmnl-dev",
    "pkg-config",
    "nftables",
    "iproute2",
    "openssh-server",
    "openssh-client",
    "rsync",
    // sysctl, for the lab's router namespace.
    "procps",
    // The bench reads the kernel's per-program run time of the eBPF hooks.
    "bpftool",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run() -> anyhow::Result<()> {
    eprintln!("==> setup");
    apt()?;
    rust_components()?;
    bpf_linker()?;
    eprintln!("    setup: done");
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("    apt: all {} packages present", APT_PACKAGES.len());
        return Ok(());
    }
    apt_install(&missing, &[])
}

/// `apt-get update` then `apt-get install` of `packages` (with `extra` options).
pub fn apt_install(packages: &[&str], extra: &[&str]) -> anyhow::Result<()> {
    eprintln!("    apt: installing {}", packages.join(" "));
    let status = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("running apt-get (setup needs Debian's apt and root)")?;
    if !status.success() {
        bail!(
            "apt-get update failed; packages still missing: {}",
            packages.join(" ")
        );
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(extra)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install failed; missing: {}", packages.join(" "));
    }
    Ok(())
}

fn rust_components() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (it provides the nightly toolchain that builds eBPF)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("    rustup: installing the nightly toolchain (builds the eBPF programs)");
        let ok = Command::new("rustup")
            .args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("cannot install the nightly toolchain with rustup; the eBPF build needs it");
        }
    }
    let have = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if have.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    rustup: nightly with rust-src present");
    } else {
        eprintln!("    rustup: adding rust-src to nightly (eBPF builds core from source)");
        let ok = Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("cannot add rust-src to the nightly toolchain");
        }
    }
    for (tool, component) in [("clippy", "clippy"), ("fmt", "rustfmt")] {
        if !quiet(crate::util::cargo().args([tool, "--version"])) {
            eprintln!("    rustup: adding {component}");
            if !quiet(Command::new("rustup").args(["component", "add", component])) {
                bail!("cannot add the {component} component to the default toolchain");
            }
        }
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        eprintln!("    bpf-linker: present ({})", v.trim());
        return Ok(());
    }
    eprintln!("    bpf-linker: building {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let status = crate::util::cargo()
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("building bpf-linker failed (it needs llvm-22-dev and libpolly-22-dev)");
    }
    if !quiet(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but is not on PATH; add ~/.cargo/bin to PATH");
    }
    Ok(())
}
