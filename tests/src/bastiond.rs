//! bastiond in the lab: its config, starting and stopping it, and calling bastionctl.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{
    names::{BASTION_ADMIN_IF, BASTION_PROTECTED_IF, LabName, PROTECTED_SUBNET},
    sys,
};

/// A hang guard for start and stop (a loaded machine can take many seconds), not a timing check.
const READY_TIMEOUT: Duration = crate::wait::LIMIT;
/// bastiond's explicit SSH listener in the lab (on every address of the bastion namespace).
pub const SSH_PORT: u16 = 2222;
/// The transparent listener intercepted SSH is steered to.
pub const INTERCEPT_PORT: u16 = 2201;

#[derive(Debug, Clone, Serialize)]
pub struct BastiondPaths {
    pub config: PathBuf,
    pub keys_dir: PathBuf,
    pub control_socket: PathBuf,
    pub store: PathBuf,
    pub log: PathBuf,
}

impl BastiondPaths {
    pub fn for_lab(name: &LabName) -> BastiondPaths {
        Self::in_dir(name, "bastiond")
    }

    /// Paths of another bastiond of the lab (a second appliance), under `dir` of its run dir.
    pub fn in_dir(name: &LabName, dir: &str) -> BastiondPaths {
        let dir = name.run_dir().join(dir);
        BastiondPaths {
            config: dir.join("bastiond.toml"),
            keys_dir: dir.join("keys"),
            control_socket: dir.join("control.sock"),
            store: dir.join("store"),
            log: dir.join("bastiond.log"),
        }
    }
}

/// Writes the lab's bastiond config: enforcement on the lab's `enforced` cgroup, pins under the
/// lab's bpffs directory, the protected subnet of the lab.
///
/// No limit in it may depend on how fast the machine is: a loaded machine (CI beside other jobs,
/// labs running in parallel) takes seconds to sign in, so the login grace and connect timeout
/// leave room for that, and failure windows and penalties outlast any test (a penalty that
/// expired while a flood was still running let the throttled name through). Nor is there a
/// connection-rate throttle: tests open dozens of connections at once from one source; the
/// throttle's own test (`ssh_surface`) removes the line and runs with the product's default.
pub fn write_config(name: &LabName, paths: &BastiondPaths) -> anyhow::Result<()> {
    if let Some(dir) = paths.config.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &paths.config,
        format!(
            "# bastiond config for lab {name}\n\
             [control]\nsocket = \"{socket}\"\n\n\
             [store]\npath = \"{store}\"\n\n\
             [enforce]\nbpffs_dir = \"{bpffs}\"\ncgroup_root = \"{root}\"\n\
             daemon_cgroup = \"{daemon}\"\nprotected_subnets = [\"{PROTECTED_SUBNET}\"]\nprotected_interfaces = [\"{BASTION_PROTECTED_IF}\"]\n\n\
             [ssh]\nlisten = \"0.0.0.0:{SSH_PORT}\"\nkeys_dir = \"{keys}\"\nconnect_timeout_secs = 10\nlogin_grace_secs = 15\nmax_failures_per_user = 50\nfailure_window_secs = 3600\nfailure_penalty_secs = 3600\n\
             connections_per_source_per_sec = 0\n\n\
             [record]\nflush_interval_ms = 100\n\n\
             [intercept]\ninterfaces = [\"{BASTION_ADMIN_IF}\"]\nlisten_port = {INTERCEPT_PORT}\n",
            socket = paths.control_socket.display(),
            store = paths.store.display(),
            bpffs = name.bpffs_dir().display(),
            root = name.enforced_cgroup().display(),
            daemon = name.bastiond_cgroup().display(),
            keys = paths.keys_dir.display(),
        ),
    )?;
    Ok(())
}

/// A bastiond started by the lab. Dropping it kills it (SIGKILL) and reaps it.
pub struct Bastiond {
    child: Option<Child>,
    pub paths: BastiondPaths,
}

impl Bastiond {
    /// Starts bastiond in the bastion namespace (entered by bastiond itself via `--netns`, which
    /// keeps /sys intact) inside the lab cgroup, and waits until its control socket answers.
    pub fn start(name: &LabName, paths: &BastiondPaths) -> anyhow::Result<Bastiond> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.log)?;
        // Start in the lab's `enforced` cgroup: bastiond moves itself into `daemon_cgroup`.
        let mut cmd = sys::command_in(sys::bin("bastiond")?, None, &name.enforced_cgroup())?;
        cmd.arg("--config")
            .arg(&paths.config)
            .arg("--netns")
            .arg(name.netns("bastion"))
            .env("BASTION_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("starting bastiond")?;
        let mut me = Bastiond {
            child: Some(child),
            paths: paths.clone(),
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "bastiond exited during start-up ({status}): {}",
                    self.log_tail()
                );
            }
            // Ready means *this* bastiond answers: another one may already serve the socket.
            let out = self.ctl(&["status", "--json"])?;
            if out.status.success() {
                let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                if status["pid"].as_u64() == self.pid().map(u64::from) {
                    return Ok(());
                }
            }
            if t0.elapsed() > READY_TIMEOUT {
                bail!(
                    "bastiond not ready within {READY_TIMEOUT:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A number field of bastiond's `/proc/PID/status` (`VmRSS:`, `VmHWM:`, `RssAnon:`,
    /// `Threads:`...), in its unit there (kB for sizes); 0 when bastiond is not running.
    pub fn status_field(&self, field: &str) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }

    /// bastiond's threads as (name, nice value), from `/proc/PID/task/*/stat`; empty when
    /// bastiond is not running.
    pub fn threads(&self) -> Vec<(String, i32)> {
        let Some(pid) = self.pid() else {
            return Vec::new();
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .filter_map(|stat| {
                // `TID (NAME) STATE ...`: the name may hold spaces and parentheses, and the
                // nice value is the 19th field, the 17th after the name.
                let (head, rest) = stat.rsplit_once(')')?;
                let name = head.split_once('(')?.1.to_owned();
                let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
                Some((name, nice))
            })
            .collect()
    }

    /// Runs `bastionctl --socket <lab socket> args...`.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        ctl(&self.paths, args)
    }

    /// Runs bastionctl and returns its stdout, failing with its stderr when it fails.
    pub fn ctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.ctl(args)?;
        if !out.status.success() {
            bail!(
                "bastionctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < READY_TIMEOUT {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        bail!("bastiond ignored SIGTERM for {READY_TIMEOUT:?}")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.paths.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Bastiond {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// Runs bastionctl against the lab's control socket.
pub fn ctl(paths: &BastiondPaths, args: &[&str]) -> anyhow::Result<Output> {
    ctl_command(paths, args)?
        .output()
        .context("running bastionctl")
}

/// A bastionctl command for `paths`' bastiond, to run in the background (e.g. `session watch`).
pub fn ctl_command(paths: &BastiondPaths, args: &[&str]) -> anyhow::Result<Command> {
    let mut cmd = Command::new(sys::bin("bastionctl")?);
    cmd.arg("--socket")
        .arg(&paths.control_socket)
        .args(args)
        .stdin(Stdio::null());
    Ok(cmd)
}
