//! [`Lab`]: one complete lab, torn down on drop (also after a panic), described by [`LabInfo`].

use std::{
    path::PathBuf,
    process::{Child, Command},
};

use anyhow::Context;
use serde::Serialize;

use crate::{
    bastiond::{self, Bastiond, BastiondPaths},
    cleanup::{self, OwnerState},
    names::{
        ADMIN_ADDR, ADMIN_SUBNET, BASTION_ADMIN_ADDR, BASTION_ADMIN_IF, BASTION_PROTECTED_ADDR,
        BASTION_PROTECTED_IF, HOSTS, LabName, PROTECTED_SUBNET,
    },
    sshd::{self, HostInfo},
    sys, topology,
};

/// Everything a tool outside the test suite needs to drive the lab (`cargo xtask lab up --json`).
#[derive(Debug, Clone, Serialize)]
pub struct LabInfo {
    pub name: String,
    pub run_dir: PathBuf,
    pub admin: AdminInfo,
    pub bastion: BastionInfo,
    pub hosts: Vec<HostInfo>,
    pub protected_subnet: String,
    pub cgroups: CgroupInfo,
    pub bpffs_dir: PathBuf,
    /// The admin's SSH key, authorized for root on every protected host.
    pub admin_key: PathBuf,
    pub admin_key_pub: PathBuf,
    pub authorized_keys: PathBuf,
    pub bastiond: BastiondPaths,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminInfo {
    pub netns: String,
    pub addr: String,
    pub subnet: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BastionInfo {
    pub netns: String,
    pub admin_addr: String,
    pub protected_addr: String,
    pub admin_interface: String,
    pub protected_interface: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupInfo {
    pub lab: PathBuf,
    pub hosts: PathBuf,
    /// bastiond's `enforce.cgroup_root`.
    pub enforced: PathBuf,
    pub bastiond: PathBuf,
    pub clients: PathBuf,
}

pub struct Lab {
    name: LabName,
    info: LabInfo,
    sshds: Vec<Child>,
    keep: bool,
}

impl Lab {
    /// Builds a lab that is torn down when dropped. Stale labs of dead owners are swept first.
    pub fn up() -> anyhow::Result<Lab> {
        Self::build(false)
    }

    /// The standard session scenario ([`Lab::enroll_alice`]) ready to use: a lab, bastiond
    /// started in it, and alice enrolled.
    pub fn with_alice() -> anyhow::Result<(Lab, Bastiond)> {
        let lab = Lab::up()?;
        let b = lab.start_bastiond()?;
        lab.enroll_alice(&b).context("enrolling alice")?;
        Ok((lab, b))
    }

    /// Builds a lab that outlives this process (`cargo xtask lab up`); `cargo xtask lab down`
    /// removes it.
    pub fn up_kept() -> anyhow::Result<Lab> {
        Self::build(true)
    }

    fn build(keep: bool) -> anyhow::Result<Lab> {
        let lock = cleanup::lock()?;
        cleanup::sweep_stale_locked().context("sweeping stale labs")?;
        let name = LabName::fresh();
        cleanup::register(&name);
        let run_dir = name.run_dir();
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        OwnerState::mine(keep).write(&name)?;
        // Owned and named: from here on no sweep takes it for an orphan.
        drop(lock);
        let info = LabInfo {
            name: name.to_string(),
            run_dir: run_dir.clone(),
            admin: AdminInfo {
                netns: name.netns("admin"),
                addr: ADMIN_ADDR.into(),
                subnet: ADMIN_SUBNET.into(),
            },
            bastion: BastionInfo {
                netns: name.netns("bastion"),
                admin_addr: BASTION_ADMIN_ADDR.into(),
                protected_addr: BASTION_PROTECTED_ADDR.into(),
                admin_interface: BASTION_ADMIN_IF.into(),
                protected_interface: BASTION_PROTECTED_IF.into(),
            },
            hosts: Vec::new(),
            protected_subnet: PROTECTED_SUBNET.into(),
            cgroups: CgroupInfo {
                lab: name.cgroup(),
                hosts: name.hosts_cgroup(),
                enforced: name.enforced_cgroup(),
                bastiond: name.bastiond_cgroup(),
                clients: name.clients_cgroup(),
            },
            bpffs_dir: name.bpffs_dir(),
            admin_key: run_dir.join("admin_ed25519"),
            admin_key_pub: run_dir.join("admin_ed25519.pub"),
            authorized_keys: run_dir.join("authorized_keys"),
            bastiond: BastiondPaths::for_lab(&name),
        };
        // From here on, an error drops `lab`, which tears down whatever was made.
        let mut lab = Lab {
            name,
            info,
            sshds: Vec::new(),
            keep: false,
        };
        lab.populate()?;
        lab.keep = keep;
        Ok(lab)
    }

    fn populate(&mut self) -> anyhow::Result<()> {
        let name = self.name.clone();
        for cg in [
            name.hosts_cgroup(),
            name.enforced_cgroup(),
            name.bastiond_cgroup(),
            name.clients_cgroup(),
        ] {
            std::fs::create_dir_all(&cg)
                .with_context(|| format!("creating cgroup {}", cg.display()))?;
        }
        topology::create(&name)?;
        sshd::keygen(&self.info.admin_key, &format!("admin@{name}"))?;
        std::fs::copy(&self.info.admin_key_pub, &self.info.authorized_keys)?;
        for (host, addr) in HOSTS {
            let (info, child) = sshd::start(&name, host, addr, &self.info.authorized_keys)?;
            self.sshds.push(child);
            self.info.hosts.push(info);
        }
        bastiond::write_config(&name, &self.info.bastiond)?;
        std::fs::write(
            self.info.run_dir.join("lab.json"),
            serde_json::to_vec_pretty(&self.info)?,
        )?;
        Ok(())
    }

    pub fn name(&self) -> &LabName {
        &self.name
    }

    pub fn info(&self) -> &LabInfo {
        &self.info
    }

    /// A command that runs in namespace `role` ("admin", "bastion", "web1", ...) inside the
    /// lab's clients cgroup, i.e. held to enforcement like any process that is not bastiond.
    pub fn command(
        &self,
        role: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        self.command_in(role, program, &self.name.clients_cgroup())
    }

    /// A command in namespace `role` that is *not* held to enforcement (the lab's hosts cgroup):
    /// other machines (the admin workstation) and the direct-path baseline of benchmarks. Tests
    /// of enforcement on the bastion host use [`Lab::command`].
    pub fn command_unenforced(
        &self,
        role: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        self.command_in(role, program, &self.name.hosts_cgroup())
    }

    fn command_in(
        &self,
        role: &str,
        program: impl AsRef<std::ffi::OsStr>,
        cgroup: &std::path::Path,
    ) -> anyhow::Result<Command> {
        sys::command_in(program, Some(&self.name.netns(role)), cgroup)
            .with_context(|| format!("preparing a command in {role}"))
    }

    /// Starts a plain OpenSSH sshd on the bastion host (198.51.100.1:22): the unaudited jump
    /// host that benchmarks compare bastion with. It runs outside enforcement, like any blind
    /// tunnel would; nothing but benchmarks uses it.
    pub fn start_jump_host(&mut self) -> anyhow::Result<HostInfo> {
        let (info, child) = sshd::start_in(
            &self.name,
            "jump",
            "bastion",
            BASTION_ADMIN_ADDR,
            &self.info.authorized_keys,
        )?;
        self.sshds.push(child);
        Ok(info)
    }

    /// Starts bastiond with the lab's config and waits until it answers.
    pub fn start_bastiond(&self) -> anyhow::Result<Bastiond> {
        Bastiond::start(&self.name, &self.info.bastiond)
    }

    /// The standard session scenario: the hosts trust bastiond's user CA, `alice` signs in with
    /// the lab's admin key, web1 is registered with its pinned host key, and alice may use
    /// shell, exec and sftp on web1 as root.
    pub fn enroll_alice(&self, b: &Bastiond) -> anyhow::Result<()> {
        self.trust_user_ca(&b.ctl_ok(&["ca", "show", "--user-ca"])?)?;
        let key = self.info.admin_key_pub.to_string_lossy().into_owned();
        b.ctl_ok(&["user", "add", "alice", "--key", &key])?;
        self.register_host(b, 0)?;
        grant(b, "alice-web1", "alice", "web1", "root", "shell,exec,sftp")
    }

    /// Registers protected host `i` (web1, web2, ...) under its name with its real host key pinned.
    pub fn register_host(&self, b: &Bastiond, i: usize) -> anyhow::Result<()> {
        let host = &self.info.hosts[i];
        let key = host.host_key_pub.to_string_lossy().into_owned();
        b.ctl_ok(&["target", "add", &host.name, &host.addr, "--host-key", &key])?;
        Ok(())
    }

    /// Makes every protected host trust `ca` (an OpenSSH public key line) for user certificates.
    pub fn trust_user_ca(&self, ca: &str) -> anyhow::Result<()> {
        for h in &self.info.hosts {
            std::fs::write(&h.trusted_user_ca_keys, format!("{}\n", ca.trim()))?;
        }
        Ok(())
    }

    /// `ssh` from the admin namespace through bastiond's explicit listener, as `dest`
    /// (`login@target`), with the lab's admin key and the given extra arguments.
    pub fn ssh_via_bastion(&self, dest: &str, extra: &[&str]) -> anyhow::Result<Command> {
        self.ssh_via_bastion_as(&self.info.admin_key, dest, extra)
    }

    /// Like [`Lab::ssh_via_bastion`], offering only the key (and certificate) at `identity`.
    pub fn ssh_via_bastion_as(
        &self,
        identity: &std::path::Path,
        dest: &str,
        extra: &[&str],
    ) -> anyhow::Result<Command> {
        let mut cmd = self.command("admin", "ssh")?;
        // ssh keeps the first value of an option, so `extra` overrides the defaults below.
        cmd.args(extra)
            .args(self.ssh_options_for(identity))
            .args([
                "-p",
                &crate::bastiond::SSH_PORT.to_string(),
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("{dest}@{}", BASTION_ADMIN_ADDR));
        Ok(cmd)
    }

    /// The ssh options `ssh_via_bastion` uses, as one `-e` string for rsync or as `-o` args.
    pub fn ssh_options(&self) -> Vec<String> {
        self.ssh_options_for(&self.info.admin_key)
    }

    /// The same options, offering only the key at `identity` (and its `-cert.pub`, if any).
    pub fn ssh_options_for(&self, identity: &std::path::Path) -> Vec<String> {
        vec![
            "-i".into(),
            identity.display().to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// An OpenSSH client config for the admin workstation, as an admin would set it up for
    /// transparent mode: strict host-key checking with bastiond's host CA as the one
    /// `@cert-authority` line (from `bastionctl ca show --known-hosts`) and bastiond's explicit
    /// listener key (for `-J`). `-F` reaches the ssh that ProxyJump spawns, unlike `-o`.
    pub fn transparent_client_config(&self, b: &Bastiond) -> anyhow::Result<std::path::PathBuf> {
        let dir = self.info.run_dir.join("admin-client");
        std::fs::create_dir_all(&dir)?;
        let host_key =
            std::fs::read_to_string(self.info.bastiond.keys_dir.join("host_ed25519.pub"))?;
        let known_hosts = dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!(
                "{}\n[{BASTION_ADMIN_ADDR}]:{} {}",
                b.ctl_ok(&["ca", "show", "--known-hosts"])?.trim(),
                crate::bastiond::SSH_PORT,
                host_key.trim()
            ) + "\n",
        )?;
        let config = dir.join("ssh_config");
        std::fs::write(
            &config,
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  \
                 StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
                 ConnectTimeout 10\n  LogLevel ERROR\n",
                self.info.admin_key.display(),
                known_hosts.display()
            ),
        )?;
        Ok(config)
    }

    /// `program` (ssh, scp, sftp) on the admin workstation with `config` (see
    /// [`Lab::transparent_client_config`]). The admin is another machine: not enforced.
    pub fn admin_client(&self, program: &str, config: &std::path::Path) -> anyhow::Result<Command> {
        let mut cmd = self.command_unenforced("admin", program)?;
        cmd.arg("-F").arg(config);
        Ok(cmd)
    }

    /// Runs `lab-connect` from the bastion namespace in the clients cgroup.
    pub fn try_connect(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.command("bastion", sys::bin("lab-connect")?)?
            .args(args)
            .output()
            .context("running lab-connect")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for child in &mut self.sshds {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = cleanup::teardown(&self.name) {
            eprintln!("lab {}: teardown incomplete: {e:#}", self.name);
        }
    }
}

/// `bastionctl grant add ID --user USER --target TARGET --login LOGIN --rights RIGHTS`.
pub fn grant(
    b: &Bastiond,
    id: &str,
    user: &str,
    target: &str,
    login: &str,
    rights: &str,
) -> anyhow::Result<()> {
    grant_with(b, id, user, target, login, rights, &[])
}

/// [`grant`] with more options (`--require-mfa`, `--window ...`).
pub fn grant_with(
    b: &Bastiond,
    id: &str,
    user: &str,
    target: &str,
    login: &str,
    rights: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    let mut args = vec![
        "grant", "add", id, "--user", user, "--target", target, "--login", login, "--rights",
        rights,
    ];
    args.extend_from_slice(extra);
    b.ctl_ok(&args)?;
    Ok(())
}
