//! `cargo xtask setup`: makes a fresh machine of this kind able to build and test bastion.
//! Every step checks first and only acts when something is missing, so a second run takes seconds.
//!
//! Order matters: the pinned eBPF toolchain comes first because its LLVM major decides which
//! LLVM packages to install and which LLVM bpf-linker is built against.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::toolchain::{self, Pin};

/// Debian packages besides LLVM: netfilter libraries for nftnl, LLVM's own link dependencies for
/// bpf-linker, the lab's tools (iproute2, OpenSSH server and client), and what features use
/// (nftables, rsync).
const APT_PACKAGES: &[&str] = &[
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
    // ssh-audit (from PyPI) runs in a virtual environment of Debian's Python; oathtool computes
    // the lab's TOTP codes independently of bastiond.
    "python3-venv",
    "oathtool",
    // The lab's syslog receiver for the audit stream (RFC 5424 over TCP).
    "rsyslog",
    // Headless browser the tests open the HTML report and replay pages in.
    "chromium",
    // Building Garage: its bundled libsodium runs autotools' configure (which calls `file`)
    // and make.
    "file",
    "make",
];
/// The lab's Python tools, pinned, in a virtual environment of their own: ssh-audit (the
/// scanner run against bastiond's listeners) and paramiko (a client that sends what OpenSSH never
/// would). The lab library names the same path (`bastion_lab::tools`).
const LAB_VENV: &str = "/opt/bastion-lab/venv";
const LAB_PYTHON_PACKAGES: &[(&str, &str)] = &[("ssh-audit", "3.9.0"), ("paramiko", "3.5.1")];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Garage, the lab's S3-compatible object store for the archive tests: a test server built from
/// crates.io into a tools folder of its own (AGPL-3.0; never linked into bastion). The lab library
/// names the same path (`bastion_lab::services::GARAGE`).
const GARAGE_ROOT: &str = "/opt/bastion-lab/garage";
const GARAGE_VERSION: &str = "2.5.0";

pub fn run() -> anyhow::Result<()> {
    eprintln!("==> setup");
    let pin = Pin::read(&crate::util::workspace()).map_err(anyhow::Error::msg)?;
    let llvm = ebpf_toolchain(&pin)?;
    apt(llvm)?;
    default_components()?;
    bpf_linker(llvm)?;
    lab_python()?;
    garage()?;
    eprintln!("    setup: done");
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn installed(pkg: &str) -> bool {
    toolchain::stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt(llvm: u32) -> anyhow::Result<()> {
    // LLVM's development files for bpf-linker, of the eBPF toolchain's LLVM major.
    let llvm_packages = [format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev")];
    let wanted: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .chain(llvm_packages.iter().map(String::as_str))
        .collect();
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("    apt: all {} packages present", wanted.len());
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

/// Installs the pinned eBPF toolchain with rust-src and returns its LLVM major.
fn ebpf_toolchain(pin: &Pin) -> anyhow::Result<u32> {
    let channel = &pin.channel;
    toolchain::stdout_of(Command::new("rustup").arg("--version"))
        .context("rustup is required (it provides the pinned nightly that builds eBPF)")?;
    drop_stale_adoption(pin)?;
    if pin.llvm_major().is_none() {
        if adopt_local_nightly(pin)? {
            eprintln!("    rustup: the installed nightly is {channel}; using it under that name");
        } else {
            eprintln!(
                "    rustup: installing {channel} (pinned in {})",
                toolchain::PIN_FILE
            );
            let ok = Command::new("rustup")
                .args(["toolchain", "install", channel, "--profile", "minimal"])
                .args(["--component", "rust-src"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("cannot install {channel} with rustup; the eBPF build needs it");
            }
        }
    }
    if !pin.has_rust_src() {
        eprintln!("    rustup: adding rust-src to {channel} (eBPF builds core from source)");
        if !quiet(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            channel,
        ])) {
            bail!("cannot add rust-src to {channel}");
        }
    }
    let llvm = pin
        .llvm_major()
        .with_context(|| format!("{channel} is installed but `rustc -vV` names no LLVM version"))?;
    eprintln!("    rustup: {channel} with rust-src present (LLVM {llvm})");
    Ok(llvm)
}

/// Machines of this kind come with a `nightly` toolchain of the pinned date but not under the
/// pinned name: rustup keys toolchains by name and would download the same build again. Such a
/// toolchain is given the pinned name by a symlink in rustup's toolchains directory. Returns
/// whether it did so.
fn adopt_local_nightly(pin: &Pin) -> anyhow::Result<bool> {
    let Some(sysroot) = toolchain::stdout_of(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
    ) else {
        return Ok(false);
    };
    let sysroot = Path::new(sysroot.trim());
    if manifest_date(sysroot).as_deref() != pin.date() {
        return Ok(false);
    }
    let (Some(dir), Some(toolchains)) = (
        sysroot.file_name().and_then(|n| n.to_str()),
        sysroot.parent(),
    ) else {
        return Ok(false);
    };
    let Some(host) = dir.strip_prefix("nightly-") else {
        return Ok(false);
    };
    let link = toolchains.join(format!("{}-{host}", pin.channel));
    std::os::unix::fs::symlink(dir, &link)
        .with_context(|| format!("linking {} to {dir}", link.display()))?;
    Ok(true)
}

/// An adopted `nightly` that has since been updated (or removed) no longer is the pinned build:
/// the link goes, so the pinned toolchain is installed properly.
fn drop_stale_adoption(pin: &Pin) -> anyhow::Result<()> {
    let Some(home) = rustup_home() else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(home.join("toolchains")) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_pin = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&format!("{}-", pin.channel)));
        if is_pin && path.is_symlink() && manifest_date(&path).as_deref() != pin.date() {
            eprintln!(
                "    rustup: {} no longer points at the pinned build; removing the link",
                path.display()
            );
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn rustup_home() -> Option<std::path::PathBuf> {
    std::env::var_os("RUSTUP_HOME")
        .map(Into::into)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".rustup")))
}

/// The `date` of rustup's channel manifest in a toolchain directory.
fn manifest_date(toolchain_dir: &Path) -> Option<String> {
    let text =
        std::fs::read_to_string(toolchain_dir.join("lib/rustlib/multirust-channel-manifest.toml"))
            .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("date = "))
        .map(|d| d.trim().trim_matches('"').to_owned())
}

/// clippy and rustfmt for the default (stable) toolchain, which builds everything but eBPF.
fn default_components() -> anyhow::Result<()> {
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

/// bpf-linker built against `llvm`, the eBPF toolchain's LLVM major (a different major fails
/// the link with LLVM's "Invalid record"): rebuilt when the installed one differs.
fn bpf_linker(llvm: u32) -> anyhow::Result<()> {
    match toolchain::bpf_linker_llvm_major() {
        Some(have) if have == llvm => {
            eprintln!("    bpf-linker: present (LLVM {have})");
            return Ok(());
        }
        Some(have) => eprintln!(
            "    bpf-linker: built against LLVM {have}, the eBPF toolchain has LLVM {llvm}: rebuilding"
        ),
        None => eprintln!(
            "    bpf-linker: building {BPF_LINKER_VERSION} against LLVM {llvm} (about a minute)"
        ),
    }
    // llvm-sys finds LLVM through llvm-config, and the link needs libLLVM from the same place.
    let path = format!(
        "/usr/lib/llvm-{llvm}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let status = crate::util::cargo()
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm}"),
        ])
        .env("PATH", path)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("building bpf-linker failed (it needs llvm-{llvm}-dev and libpolly-{llvm}-dev)");
    }
    match toolchain::bpf_linker_llvm_major() {
        Some(have) if have == llvm => Ok(()),
        Some(have) => bail!("bpf-linker was rebuilt but reports LLVM {have}, not {llvm}"),
        None => bail!("bpf-linker was installed but is not on PATH; add ~/.cargo/bin to PATH"),
    }
}

/// Garage at [`GARAGE_VERSION`] in [`GARAGE_ROOT`], built once (about ten minutes on two cores).
fn garage() -> anyhow::Result<()> {
    let bin = Path::new(GARAGE_ROOT).join("bin/garage");
    let have = toolchain::stdout_of(Command::new(&bin).arg("--version"));
    if have.as_deref().is_some_and(|v| v.contains(GARAGE_VERSION)) {
        eprintln!("    garage: present ({})", bin.display());
        return Ok(());
    }
    eprintln!("    garage: building {GARAGE_VERSION} into {GARAGE_ROOT} (about ten minutes, once)");
    let status = crate::util::cargo()
        .args([
            "install",
            "garage",
            "--locked",
            "--force",
            "--version",
            GARAGE_VERSION,
        ])
        .args(["--root", GARAGE_ROOT])
        // Its own target directory: the workspace's build stays as it is.
        .env("CARGO_TARGET_DIR", "/var/tmp/bastion-garage-build")
        .status()
        .context("running cargo install garage")?;
    if !status.success() {
        bail!("building garage {GARAGE_VERSION} failed (crates.io must be reachable)");
    }
    let _ = std::fs::remove_dir_all("/var/tmp/bastion-garage-build");
    Ok(())
}

/// The lab's Python packages from PyPI, pinned, in a virtual environment of Debian's own Python
/// (whatever other Python is first on PATH).
fn lab_python() -> anyhow::Result<()> {
    let venv = Path::new(LAB_VENV);
    let pip = venv.join("bin/pip");
    let missing: Vec<String> = LAB_PYTHON_PACKAGES
        .iter()
        .filter(|(name, version)| {
            !toolchain::stdout_of(Command::new(&pip).args(["show", name]))
                .is_some_and(|s| s.lines().any(|l| l == format!("Version: {version}")))
        })
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if missing.is_empty() {
        eprintln!("    lab python: present ({LAB_VENV})");
        return Ok(());
    }
    eprintln!(
        "    lab python: installing {} into {LAB_VENV}",
        missing.join(" ")
    );
    if !pip.exists() {
        let status = Command::new("/usr/bin/python3")
            .args(["-m", "venv", LAB_VENV])
            .status()
            .context("running /usr/bin/python3 -m venv")?;
        if !status.success() {
            bail!("cannot create the virtual environment {LAB_VENV} (python3-venv)");
        }
    }
    let status = Command::new(&pip)
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(&missing)
        .status()
        .context("running pip install")?;
    if !status.success() {
        bail!(
            "pip could not install {} (PyPI must be reachable)",
            missing.join(" ")
        );
    }
    Ok(())
}
