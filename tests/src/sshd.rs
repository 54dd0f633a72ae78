//! A real OpenSSH sshd per protected host: its own host key, root login by key only, the lab's
//! admin key authorized, and a TrustedUserCAKeys file the audited-session work fills in later.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{names::LabName, sys};

const SSHD: &str = "/usr/sbin/sshd";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub name: String,
    pub netns: String,
    pub addr: String,
    pub ssh_port: u16,
    pub host_key_pub: PathBuf,
    pub sshd_config: PathBuf,
    pub sshd_log: PathBuf,
    pub trusted_user_ca_keys: PathBuf,
}

/// Generates an ed25519 key pair at `path` (and `path`.pub) unless it exists.
pub fn keygen(path: &Path, comment: &str) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let p = path.to_str().context("non-UTF-8 key path")?;
    sys::run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", p],
    )
    .map(drop)
}

/// Writes the host's sshd config and keys, starts sshd in the host's namespace and the lab's
/// hosts cgroup, and waits until it listens.
pub fn start(
    name: &LabName,
    host: &str,
    addr: &str,
    authorized_keys: &Path,
) -> anyhow::Result<(HostInfo, Child)> {
    start_in(name, host, host, addr, authorized_keys)
}

/// Starts an sshd labelled `host` in the namespace of `role` (e.g. a plain jump host in the
/// bastion namespace, for benchmarks).
pub fn start_in(
    name: &LabName,
    host: &str,
    role: &str,
    addr: &str,
    authorized_keys: &Path,
) -> anyhow::Result<(HostInfo, Child)> {
    let dir = name.run_dir().join(host);
    std::fs::create_dir_all(&dir)?;
    // sshd's privilege-separation directory; the package normally creates it at boot.
    std::fs::create_dir_all("/run/sshd")?;
    let key = dir.join("ssh_host_ed25519_key");
    keygen(&key, &format!("{host}@{name}"))?;
    let ca_keys = dir.join("trusted_user_ca_keys");
    if !ca_keys.exists() {
        std::fs::write(&ca_keys, "")?;
    }
    let config = dir.join("sshd_config");
    let log = dir.join("sshd.log");
    std::fs::write(
        &config,
        format!(
            "ListenAddress {addr}:22\n\
             HostKey {key}\n\
             PidFile none\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             AuthorizedKeysFile {auth}\n\
             TrustedUserCAKeys {ca}\n\
             StrictModes no\n\
             AllowTcpForwarding yes\n\
             AllowAgentForwarding yes\n\
             AcceptEnv LANG LC_*\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n\
             MaxStartups 200\n\
             LogLevel VERBOSE\n",
            key = key.display(),
            auth = authorized_keys.display(),
            ca = ca_keys.display(),
        ),
    )?;
    let netns = name.netns(role);
    let logfile = std::fs::File::create(&log)?;
    let home = dir.join("root-home");
    std::fs::create_dir_all(&home)?;
    let mut cmd = sys::command_in(SSHD, Some(&netns), &name.hosts_cgroup())
        .with_context(|| format!("preparing sshd for {host}"))?;
    sys::with_root_home(&mut cmd, &home)?;
    let child = cmd
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logfile)
        .spawn()
        .with_context(|| format!("starting {SSHD} for {host} (is openssh-server installed?)"))?;
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Server listening on") {
            break;
        }
        if t0.elapsed() > READY_TIMEOUT {
            bail!(
                "sshd for {host} did not start within {READY_TIMEOUT:?}: {}",
                text.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let info = HostInfo {
        name: host.to_owned(),
        netns,
        addr: addr.to_owned(),
        ssh_port: 22,
        host_key_pub: key.with_extension("pub"),
        sshd_config: config,
        sshd_log: log,
        trusted_user_ca_keys: ca_keys,
    };
    Ok((info, child))
}
