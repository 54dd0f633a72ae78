//! Running tools and spawning processes inside a lab namespace and cgroup.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, bail};

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("running {program} (is it installed? `cargo xtask setup` installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip -n NS args...`
pub fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full).map(drop)
}

/// A command that will start inside cgroup `cgroup` and, if given, network namespace `netns` (a
/// name under /run/netns). Unlike `ip netns exec`, the host's /sys stays mounted (bpffs,
/// cgroupfs), and the process is the direct child, so its pid is the one to stop.
pub fn command_in(
    program: impl AsRef<std::ffi::OsStr>,
    netns: Option<&str>,
    cgroup: &Path,
) -> io::Result<Command> {
    let ns = netns
        .map(|n| File::open(Path::new("/run/netns").join(n)))
        .transpose()?;
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe calls (setns, write) between fork and exec; the files are
    // moved into the closure and stay open until exec.
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process itself.
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(ns) = &ns
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Makes `cmd` see `home` at /root, in a mount namespace of its own: each lab host is a machine
/// of its own, not a login into this machine's root account. Without it, every shell on a lab
/// host ran this machine's /root/.bashrc (on machines of this kind, pyenv's init and a prompt hook
/// that spawns processes at every prompt: under load, a shell took over a minute to show its
/// first prompt).
pub fn with_root_home(cmd: &mut Command, home: &Path) -> io::Result<()> {
    let home = std::ffi::CString::new(home.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the home path"))?;
    // SAFETY: only async-signal-safe calls (unshare, mount) between fork and exec, on C strings
    // made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let root = c"/root";
            let slash = c"/";
            if libc::unshare(libc::CLONE_NEWNS) != 0
                // Nothing mounted here may reach this machine's namespace.
                || libc::mount(
                    std::ptr::null(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    home.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes [`bin_dir`] return `dir` for the rest of the process (e.g. release binaries for benches).
pub fn use_bin_dir(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// The directory holding bastiond, bastionctl and lab-connect: set by [`use_bin_dir`], or
/// `BASTION_BIN_DIR`, or the cargo profile directory this executable was built into
/// (target/debug for tests and xtask alike).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = BIN_DIR.get() {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("BASTION_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, with a clear message when it has not been built.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo build --workspace --bins`; `cargo xtask test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// Is `pid` a live process (not a zombie)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Mounts a tmpfs of `size_mb` MiB at `dir` (a small filesystem for disk-full tests; the lab's
/// teardown unmounts whatever is mounted below its run directory).
pub fn mount_small_fs(dir: &Path, size_mb: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_mb}m,mode=0700"),
            "bastion-lab",
            &dir.display().to_string(),
        ],
    )
    .map(drop)
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// The Internet checksum (RFC 1071) of `data`, for the probe tools' hand-built headers.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// How a probe tool (lab-connect, lab-attack) reports one attempt: its outcome on stdout, and
/// an exit code tests can tell apart: 0 done, 2 refused with EPERM (enforcement), 3 refused by
/// the peer (ECONNREFUSED), 1 anything else (timeouts included).
pub fn probe_exit(result: std::io::Result<String>) -> std::process::ExitCode {
    use std::process::ExitCode;
    match result {
        Ok(what) => {
            println!("{what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            match e.raw_os_error() {
                Some(libc::EPERM) => ExitCode::from(2),
                Some(libc::ECONNREFUSED) => ExitCode::from(3),
                _ => ExitCode::from(1),
            }
        }
    }
}
