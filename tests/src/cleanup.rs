//! Teardown by name, teardown on Ctrl-C, and the sweep of labs whose owner died.
//!
//! Everything a lab starts runs inside the lab's cgroup, so `cgroup.kill` stops exactly the
//! processes the lab started, and nothing else, even when the owner crashed.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, Once},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    names::{BPFFS, CGROUP_MOUNT, LabName, PREFIX, RUN_ROOT},
    sys, topology,
};

const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Written to `<run_dir>/state.json`: who owns the lab, and whether it outlives its owner.
#[derive(Debug, Serialize, Deserialize)]
pub struct OwnerState {
    pub owner_pid: u32,
    /// Start time (clock ticks since boot) of the owner, so a recycled pid is not mistaken for it.
    pub owner_start: u64,
    /// Left up on purpose (`cargo xtask lab up`, `demo --keep`): only `lab down` removes it.
    pub keep: bool,
}

pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the command: state is field 3 overall; starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl OwnerState {
    pub fn mine(keep: bool) -> OwnerState {
        let pid = std::process::id();
        OwnerState {
            owner_pid: pid,
            owner_start: start_time(pid).unwrap_or(0),
            keep,
        }
    }

    pub fn owner_alive(&self) -> bool {
        sys::alive(self.owner_pid) && start_time(self.owner_pid) == Some(self.owner_start)
    }

    pub fn path(name: &LabName) -> PathBuf {
        name.run_dir().join("state.json")
    }

    pub fn write(&self, name: &LabName) -> anyhow::Result<()> {
        std::fs::write(Self::path(name), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    pub fn read(name: &LabName) -> Option<OwnerState> {
        serde_json::from_slice(&std::fs::read(Self::path(name)).ok()?).ok()
    }
}

/// Removes everything a lab made: its processes, pins, cgroups, namespaces and files. Every step
/// runs even if an earlier one failed; the first error is returned.
pub fn teardown(name: &LabName) -> anyhow::Result<()> {
    let steps: [(&str, &dyn Fn() -> anyhow::Result<()>); 5] = [
        ("stopping lab processes", &|| kill_cgroup(&name.cgroup())),
        ("unmounting lab filesystems", &|| {
            unmount_below(&name.run_dir())
        }),
        ("removing bpffs pins", &|| remove_tree(&name.bpffs_dir())),
        ("removing cgroups", &|| remove_cgroups(&name.cgroup())),
        ("removing namespaces", &|| topology::destroy(name)),
    ];
    let mut first = None;
    for (what, step) in steps {
        if let Err(e) = step() {
            first.get_or_insert(e.context(format!("{name}: {what}")));
        }
    }
    if let Err(e) = remove_tree(&name.run_dir()) {
        first.get_or_insert(e);
    }
    unregister(name);
    first.map_or(Ok(()), Err)
}

fn unmount_below(dir: &Path) -> anyhow::Result<()> {
    for m in crate::sys::mounts_below(dir) {
        crate::sys::run("umount", &["-l", &m.display().to_string()])?;
    }
    Ok(())
}

fn kill_cgroup(cg: &Path) -> anyhow::Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    std::fs::write(cg.join("cgroup.kill"), "1")
        .with_context(|| format!("{}/cgroup.kill", cg.display()))?;
    let t0 = Instant::now();
    while populated(cg) {
        if t0.elapsed() > KILL_TIMEOUT {
            anyhow::bail!(
                "processes in {} survived cgroup.kill for {KILL_TIMEOUT:?}",
                cg.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn populated(cg: &Path) -> bool {
    std::fs::read_to_string(cg.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// rmdir every cgroup below and including `cg`, deepest first.
fn remove_cgroups(cg: &Path) -> anyhow::Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(cg)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroups(&entry.path())?;
        }
    }
    std::fs::remove_dir(cg).with_context(|| format!("rmdir {}", cg.display()))
}

fn remove_tree(p: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// Every lab name that has any trace on this machine: run dirs, namespaces, cgroups, pins.
pub fn all_labs() -> anyhow::Result<Vec<LabName>> {
    let mut names: Vec<LabName> = Vec::new();
    let mut add = |s: &str| {
        if let Some(n) = s.get(..PREFIX.len() + 8).and_then(LabName::parse)
            && !names.contains(&n)
        {
            names.push(n);
        }
    };
    for dir in [RUN_ROOT, CGROUP_MOUNT, BPFFS] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                add(&e.file_name().to_string_lossy());
            }
        }
    }
    for ns in topology::list_netns()? {
        add(&ns);
    }
    Ok(names)
}

/// Held while labs are swept and while a new lab claims its name (until its owner state is
/// written): two sweepers (parallel tests, or a test beside `cargo xtask lab`) would otherwise
/// tear down the same stale lab at once and trip over each other's half-done steps, and a sweep
/// could take a lab that another process is just creating for an orphan.
pub struct SweepLock {
    _file: std::fs::File,
}

/// Waits for the sweep lock (an flock on a file in the lab's run root, released on drop).
pub fn lock() -> anyhow::Result<SweepLock> {
    std::fs::create_dir_all(RUN_ROOT).with_context(|| format!("creating {RUN_ROOT}"))?;
    let path = Path::new(RUN_ROOT).join(".sweep.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(SweepLock { _file: file })
}

/// Tears down labs left by owners that died without cleaning up (never kept ones, never live ones).
pub fn sweep_stale() -> anyhow::Result<Vec<LabName>> {
    let _lock = lock()?;
    sweep_stale_locked()
}

/// [`sweep_stale`] for a caller that holds the [`lock`].
pub fn sweep_stale_locked() -> anyhow::Result<Vec<LabName>> {
    let mut swept = Vec::new();
    for name in all_labs()? {
        match OwnerState::read(&name) {
            Some(state) if state.keep || state.owner_alive() => continue,
            // No state file yet: a lab being created right now by a live process in this process
            // is registered; anything else without state is an orphan.
            None if registered(&name) => continue,
            _ => {}
        }
        teardown(&name)?;
        swept.push(name);
    }
    Ok(swept)
}

static LIVE: Mutex<Vec<LabName>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

/// Remembers a lab of this process so Ctrl-C tears it down.
pub fn register(name: &LabName) {
    HANDLER.call_once(|| {
        // A caller (e.g. xtask) may have its own handler; it then calls `teardown_registered`.
        let _ = ctrlc::set_handler(|| {
            teardown_registered();
            std::process::exit(130);
        });
    });
    if let Ok(mut live) = LIVE.lock() {
        live.push(name.clone());
    }
}

fn registered(name: &LabName) -> bool {
    LIVE.lock().map(|l| l.contains(name)).unwrap_or(false)
}

fn unregister(name: &LabName) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|n| n != name);
    }
}

/// Tears down every lab this process registered (the Ctrl-C path).
pub fn teardown_registered() {
    let names = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for name in names {
        if let Err(e) = teardown(&name) {
            eprintln!("lab teardown {name}: {e:#}");
        }
    }
}
