//! `cargo xtask fresh-check`: proves that the README's two commands do all the set-up on a fresh
//! machine of this kind. A minimal Debian bookworm root gets only what such a machine has before
//! setup ran (the stable toolchain under rustup, copied from this machine; git; gcc), a clean
//! clone of the committed repository, and the kernel interfaces the lab needs; then
//! `cargo xtask demo` and `cargo xtask test --no-image` run inside it, each timed.
//!
//! Everything is mounted inside a private mount namespace (`unshare -m`), so no mount outlives a
//! command; afterwards the check fails on anything left behind (network namespaces, pins,
//! cgroups, processes) and removes the root. Not part of CI: it downloads and builds everything
//! from scratch (about half an hour on 2 cores).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};

use crate::util::{require_root, step, workspace};

/// What a fresh machine of this kind has besides rustup's stable toolchain: no LLVM, no
/// netfilter libraries, no OpenSSH server, no iproute2 (all of that is setup's to install).
const BASE_PACKAGES: &[&str] = &["ca-certificates", "git", "gcc", "libc6-dev"];
/// Certificate authorities this machine adds to Debian's.
const LOCAL_CAS: &str = "/usr/local/share/ca-certificates";
/// The machine's environment that says where those are (cargo, rustup and git read it).
const CA_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];
/// The lab's cgroup v2 mount, as on this machine.
const CGROUP2: &str = "sys/fs/cgroup/unified";

#[derive(clap::Args)]
pub struct FreshCheckArgs {
    /// Keep the root (and its target directory) afterwards, for a look inside.
    #[arg(long)]
    keep: bool,
    /// Where to build the root (default: /var/tmp/bastion-fresh-<pid>); must not exist.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: FreshCheckArgs) -> anyhow::Result<()> {
    require_root("cargo xtask fresh-check")?;
    let t0 = Instant::now();
    let dir = args
        .dir
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/bastion-fresh-{}", std::process::id())));
    if dir.exists() {
        bail!("{} already exists; give another --dir", dir.display());
    }
    if !crate::image::on_path("mmdebstrap") {
        crate::setup::apt_install(&["mmdebstrap"], &[])?;
    }
    let before = Leftovers::now(&dir)?;
    let cgroup = Path::new("/")
        .join(CGROUP2)
        .join(format!("bastion-fresh-{}", std::process::id()));
    std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    let result = check(&dir, &cgroup);
    // Empty once its last process is gone; a cgroup left below it is reported by the command.
    let cgroup_left = std::fs::remove_dir(&cgroup)
        .err()
        .map(|e| format!("cgroup {} ({e})", cgroup.display()));
    let after = Leftovers::now(&dir)?;
    let mut left = after.since(&before);
    left.extend(cgroup_left);
    let mounted = mounts_under(&dir)?;
    if !args.keep && mounted.is_empty() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let times = result?;
    if !mounted.is_empty() {
        bail!(
            "mounts left under {}: {}",
            dir.display(),
            mounted.join(", ")
        );
    }
    if !left.is_empty() {
        bail!("left behind on this machine: {}", left.join(", "));
    }
    println!(
        "==> fresh-check passed in {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    for (what, secs) in times {
        println!("    {what}: {secs:.0}s");
    }
    Ok(())
}

/// Builds the root, then runs the two commands; returns each one's wall time.
fn check(dir: &Path, cgroup: &Path) -> anyhow::Result<Vec<(String, f64)>> {
    let root = dir.join("root");
    let mut times = Vec::new();
    let t = Instant::now();
    base_root(&root)?;
    stable_toolchain(&root)?;
    let clone = Path::new("/root/bastion");
    step(
        "clean clone of the committed repository",
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(workspace())
            .arg(root.join(clone.strip_prefix("/")?)),
    )?;
    times.push(("fresh root".to_owned(), t.elapsed().as_secs_f64()));
    // Both run even when the first fails: each is a promise of its own.
    let mut failed = Vec::new();
    for command in [&["demo"][..], &["test", "--no-image"]] {
        let what = format!("cargo xtask {}", command.join(" "));
        let t = Instant::now();
        let run = inside(&root, cgroup, clone, command);
        let secs = t.elapsed().as_secs_f64();
        eprintln!("    {what}: {secs:.0}s");
        if let Err(e) = run {
            failed.push(format!("{what} ({secs:.0}s): {e:#}"));
        }
        times.push((what, secs));
    }
    if !failed.is_empty() {
        bail!("failed on a fresh machine: {}", failed.join("; "));
    }
    Ok(times)
}

/// A minimal bookworm root with the base packages, from the mirrors this machine uses.
fn base_root(root: &Path) -> anyhow::Result<()> {
    let (main, security) = crate::image::mirrors();
    std::fs::create_dir_all(root.parent().unwrap_or(root))?;
    step(
        "minimal Debian root (mmdebstrap bookworm)",
        Command::new("mmdebstrap")
            .args([
                "--variant=minbase",
                "--mode=root",
                "--format=directory",
                "--quiet",
            ])
            .arg("--aptopt=APT::Install-Recommends \"false\"")
            .arg(format!("--include={}", BASE_PACKAGES.join(",")))
            // Name resolution and the CAs this machine trusts (its registries are reached
            // through them), as a fresh machine of this kind has them.
            .arg("--customize-hook=copy-in /etc/resolv.conf /etc")
            .arg(format!("--customize-hook=sync-in {LOCAL_CAS} {LOCAL_CAS}"))
            .arg("--customize-hook=chroot \"$1\" update-ca-certificates --fresh >/dev/null")
            .arg("bookworm")
            .arg(root)
            .arg(format!("deb {main} bookworm main"))
            .arg(format!("deb {main} bookworm-updates main"))
            .arg(format!("deb {security} bookworm-security main")),
    )
}

/// rustup and its stable toolchain, copied from this machine (nothing else: no nightly, no
/// rust-src, no bpf-linker, an empty cargo registry).
fn stable_toolchain(root: &Path) -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["run", "stable", "rustc", "--print", "sysroot"])
        .output()
        .context("running rustup")?;
    if !out.status.success() {
        bail!("this machine has no stable toolchain under rustup to copy");
    }
    let sysroot = std::fs::canonicalize(String::from_utf8_lossy(&out.stdout).trim())?;
    let name = sysroot
        .file_name()
        .and_then(|n| n.to_str())
        .context("the stable toolchain's directory name")?
        .to_owned();
    let home = root.join("root");
    let toolchains = home.join(".rustup/toolchains");
    let bin = home.join(".cargo/bin");
    std::fs::create_dir_all(&toolchains)?;
    std::fs::create_dir_all(&bin)?;
    step(
        "copy the stable toolchain",
        Command::new("cp")
            .arg("-a")
            .arg(&sysroot)
            .arg(toolchains.join(&name)),
    )?;
    std::fs::write(
        home.join(".rustup/settings.toml"),
        format!("version = \"12\"\ndefault_toolchain = \"{name}\"\nprofile = \"default\"\n"),
    )?;
    let rustup = which("rustup")?;
    std::fs::copy(&rustup, bin.join("rustup"))?;
    // rustup's proxies are rustup itself under the tool's name.
    for proxy in [
        "cargo",
        "rustc",
        "rustdoc",
        "cargo-clippy",
        "clippy-driver",
        "cargo-fmt",
        "rustfmt",
    ] {
        std::fs::hard_link(bin.join("rustup"), bin.join(proxy))?;
    }
    Ok(())
}

fn which(bin: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("{bin} is not on PATH"))
}

/// Runs `cargo xtask ARGS` in `clone` inside `root`, in mount and cgroup namespaces of its own
/// holding /proc, /sys, the cgroup2 (rooted at `cgroup`) and bpffs mounts, /dev and an empty /run
/// (for /run/netns), with a fresh machine's environment. Fails if the command fails or leaves
/// network namespaces, cgroups or pins.
fn inside(root: &Path, cgroup: &Path, clone: &Path, args: &[&str]) -> anyhow::Result<()> {
    let script = format!(
        r#"set -eu
R="$1"
# The root a mount point of its own: `ip -n` makes / a slave mount, which needs one.
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs tmpfs "$R/sys/fs/cgroup"
mkdir -p "$R/{CGROUP2}"
mount -t cgroup2 cgroup2 "$R/{CGROUP2}"
mount -t bpf bpf "$R/sys/fs/bpf"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
rc=0
chroot "$R" /usr/bin/env -i HOME=/root USER=root LANG=C.UTF-8 TERM=dumb RUSTUP_AUTO_INSTALL=0 {ca_env} \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    sh -c 'cd {clone} && exec cargo xtask {args}' </dev/null || rc=$?
ns=$(chroot "$R" ip netns list 2>/dev/null || true)
if [ -n "$ns" ]; then echo "fresh-check: network namespaces left: $ns" >&2; [ $rc -ne 0 ] || rc=90; fi
cgroups=$(find "$R/{CGROUP2}" -mindepth 1 -type d)
if [ -n "$cgroups" ]; then echo "fresh-check: cgroups left: $cgroups" >&2; [ $rc -ne 0 ] || rc=92; fi
# maps.debug and progs.debug are the kernel's own, in every new bpffs.
pins=$(find "$R/sys/fs/bpf" -mindepth 1 -maxdepth 2 ! -name maps.debug ! -name progs.debug)
if [ -n "$pins" ]; then echo "fresh-check: bpffs pins left: $pins" >&2; [ $rc -ne 0 ] || rc=91; fi
exit $rc
"#,
        clone = clone.display(),
        args = args.join(" "),
        ca_env = CA_ENV
            .iter()
            .filter_map(|k| Some(format!("{k}={}", std::env::var(k).ok()?)))
            .collect::<Vec<_>>()
            .join(" "),
    );
    // Into `cgroup` first, then a cgroup namespace rooted there: the root's labs see only their
    // own cgroups (no sweep of this machine's labs, and this machine's sweeps do not see theirs).
    let status = Command::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#,
            "fresh-check",
        ])
        .arg(cgroup)
        .args([
            "unshare",
            "--mount",
            "--cgroup",
            "--propagation",
            "private",
            "--",
        ])
        .args(["sh", "-c", &script, "fresh-check"])
        .arg(root)
        .status()
        .context("running unshare (util-linux)")?;
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(())
}

/// Mounts in this namespace at or below `dir`: there must be none (each command's mounts live
/// and die in its own namespace).
pub(crate) fn mounts_under(dir: &Path) -> anyhow::Result<Vec<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir.as_ref()))
        .map(str::to_owned)
        .collect())
}

/// What a run can leave on the machine outside the root: cgroups under the lab's cgroup2 mount,
/// network namespaces and bpffs pins of this mount namespace, and processes running in `dir`.
struct Leftovers(BTreeSet<String>);

impl Leftovers {
    fn now(dir: &Path) -> anyhow::Result<Leftovers> {
        let mut seen = BTreeSet::new();
        let cgroups = Path::new("/").join(CGROUP2);
        if let Ok(entries) = std::fs::read_dir(&cgroups) {
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                seen.insert(format!("cgroup {}", e.path().display()));
            }
        }
        for (dir, kind) in [("/run/netns", "netns"), ("/sys/fs/bpf", "pin")] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    seen.insert(format!("{kind} {}", e.path().display()));
                }
            }
        }
        for e in std::fs::read_dir("/proc")?.flatten() {
            let root = std::fs::read_link(e.path().join("root")).unwrap_or_default();
            if root.starts_with(dir) {
                seen.insert(format!(
                    "process {} in {}",
                    e.file_name().to_string_lossy(),
                    root.display()
                ));
            }
        }
        Ok(Leftovers(seen))
    }

    fn since(&self, before: &Leftovers) -> Vec<String> {
        self.0.difference(&before.0).cloned().collect()
    }
}
