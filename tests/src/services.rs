//! Services beside the appliance, each a machine of its own (a namespace) on the admin side:
//! the archive's object store (Garage, three nodes, replication factor 3), a syslog receiver
//! (Debian's rsyslog) and an auditor's workstation. They hang off a bridge in the bastion
//! namespace, reached by a more specific route than the admin link's:
//!
//! ```text
//!  bastion ns: svc0 (bridge) 198.51.100.2/32, route 198.51.100.48/28 dev svc0
//!     ├── s3a 198.51.100.50   s3b .51   s3c .52   (Garage: S3 :3900, RPC :3901)
//!     ├── syslog 198.51.100.55 (rsyslog, TCP :6514)
//!     └── auditor 198.51.100.60 (bastionctl archive ..., no bastiond)
//! ```
//! Made on demand ([`create`]), removed with the lab (their roles are in `LabName::roles`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    Lab,
    names::{LabName, SERVICES, SERVICES_BRIDGE, SERVICES_ROUTE, SERVICES_ROUTER_ADDR},
    sys::ip,
};

/// Where `cargo xtask setup` installs Garage (a test server, never linked into bastion).
pub const GARAGE: &str = "/opt/bastion-lab/garage/bin/garage";
pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
pub const BUCKET: &str = "bastion-archive";
pub const SYSLOG_PORT: u16 = 6514;

/// The address of service `role`.
pub fn addr(role: &str) -> &'static str {
    SERVICES
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, a)| *a)
        .unwrap_or("0.0.0.0")
}

/// Creates the services' namespaces and links (once per lab).
pub fn create(name: &LabName) -> anyhow::Result<()> {
    let bastion = name.netns("bastion");
    ip(
        &bastion,
        &["link", "add", SERVICES_BRIDGE, "type", "bridge"],
    )?;
    ip(
        &bastion,
        &[
            "addr",
            "add",
            &format!("{SERVICES_ROUTER_ADDR}/32"),
            "dev",
            SERVICES_BRIDGE,
        ],
    )?;
    ip(&bastion, &["link", "set", SERVICES_BRIDGE, "up"])?;
    ip(
        &bastion,
        &[
            "route",
            "add",
            SERVICES_ROUTE,
            "dev",
            SERVICES_BRIDGE,
            "src",
            SERVICES_ROUTER_ADDR,
        ],
    )?;
    for (role, a) in SERVICES {
        let ns = name.netns(role);
        crate::sys::run("ip", &["netns", "add", &ns])?;
        ip(&ns, &["link", "set", "lo", "up"])?;
        let port = format!("v-{role}");
        ip(
            &ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &bastion,
            ],
        )?;
        ip(&ns, &["addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        ip(&bastion, &["link", "set", &port, "master", SERVICES_BRIDGE])?;
        ip(&bastion, &["link", "set", &port, "up"])?;
    }
    Ok(())
}

/// A command in service namespace `role`, outside enforcement (another machine).
fn command(lab: &Lab, role: &str, program: &str) -> anyhow::Result<Command> {
    lab.command_unenforced(role, program)
}

fn output(mut cmd: Command) -> anyhow::Result<String> {
    let out: Output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Node {
    role: &'static str,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A three-node Garage cluster with replication factor 3, one bucket, and a key that may read
/// and write it. Its processes die with the lab (and with this value).
pub struct Garage {
    nodes: Vec<Node>,
    /// `ID@ADDR:PORT` of each node, once the cluster is formed.
    ids: Vec<String>,
    pub endpoint: String,
    /// TOML credentials (mode 0600) as bastiond's `archive.credentials_file` reads them.
    pub credentials: PathBuf,
}

impl Garage {
    pub fn start(lab: &Lab) -> anyhow::Result<Garage> {
        if !Path::new(GARAGE).exists() {
            bail!("{GARAGE} is missing: `cargo xtask setup` installs it");
        }
        let dir = lab.info().run_dir.join("garage");
        let secret: String = (0..32)
            .map(|i| {
                format!(
                    "{:02x}",
                    (std::process::id() as u8)
                        .wrapping_mul(31)
                        .wrapping_add(i * 7)
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for role in ["s3a", "s3b", "s3c"] {
            let d = dir.join(role);
            std::fs::create_dir_all(&d)?;
            let a = addr(role);
            let config = d.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\n\
                     compression_level = \"none\"\nblock_size = 8388608\n\
                     replication_factor = 3\nrpc_bind_addr = \"{a}:3901\"\nrpc_public_addr = \"{a}:3901\"\n\
                     rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"{a}:3900\"\n\
                     root_domain = \".s3.garage.localhost\"\n\n[admin]\napi_bind_addr = \"{a}:3903\"\n",
                    d = d.display()
                ),
            )?;
            nodes.push(Node {
                role,
                log: d.join("garage.log"),
                config,
                child: None,
            });
        }
        let mut g = Garage {
            nodes,
            ids: Vec::new(),
            endpoint: format!("http://{}:3900", addr("s3a")),
            credentials: dir.join("credentials.toml"),
        };
        for i in 0..3 {
            g.start_node(lab, i)?;
        }
        g.form(lab)?;
        Ok(g)
    }

    fn cli(&self, lab: &Lab, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let n = &self.nodes[i];
        let mut cmd = command(lab, n.role, GARAGE)?;
        cmd.arg("-c").arg(&n.config).args(args);
        output(cmd)
    }

    /// Retries a CLI call until it works (a node answers RPC a moment after it starts).
    fn cli_until(&self, lab: &Lab, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let t0 = Instant::now();
        loop {
            match self.cli(lab, i, args) {
                Ok(out) => return Ok(out),
                Err(e) if t0.elapsed() > crate::wait::LIMIT => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Connects the nodes, gives each a role, and makes the bucket and its key.
    fn form(&mut self, lab: &Lab) -> anyhow::Result<()> {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                self.cli_until(lab, i, &["node", "id", "-q"])?
                    .trim()
                    .to_owned(),
            );
        }
        self.ids = ids.clone();
        self.connect(lab)?;
        for id in &ids {
            let short = id.split('@').next().unwrap_or(id);
            self.cli_until(
                lab,
                0,
                &["layout", "assign", "-z", "dc1", "-c", "1G", short],
            )?;
        }
        self.cli_until(lab, 0, &["layout", "apply", "--version", "1"])?;
        self.cli_until(lab, 0, &["bucket", "create", BUCKET])?;
        let key = self.cli_until(lab, 0, &["key", "create", "bastion"])?;
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
                .with_context(|| format!("no `{name}` in garage's key output: {key}"))
        };
        let (id, secret) = (field("Key ID:")?, field("Secret key:")?);
        self.cli_until(
            lab,
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "bastion",
            ],
        )?;
        std::fs::write(
            &self.credentials,
            format!("access_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.credentials, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    pub fn start_node(&mut self, lab: &Lab, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let mut cmd = command(lab, n.role, GARAGE)?;
        cmd.arg("-c")
            .arg(&n.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        n.child = Some(cmd.spawn().context("starting garage")?);
        Ok(())
    }

    /// Puts every thread of every node in the idle scheduling class (`SCHED_IDLE`: it runs only
    /// on a core nothing else wants). In the lab the store shares this machine's cores with the
    /// appliance; a real one runs on machines of its own, and the bench uses this to keep the
    /// store's work from being counted as the appliance's.
    pub fn idle_priority(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            if let Some(child) = &n.child {
                let mut cmd = Command::new("chrt");
                cmd.args(["--all-tasks", "--idle", "--pid", "0"])
                    .arg(child.id().to_string());
                output(cmd)?;
            }
        }
        Ok(())
    }

    /// Kills node `i` (SIGKILL, as a crash or a pulled plug would).
    pub fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Node 0 connects to the others (after a restart of all of them, nodes wait a long
    /// backoff before they retry their peers by themselves).
    fn connect(&self, lab: &Lab) -> anyhow::Result<()> {
        for id in &self.ids[1..] {
            self.cli_until(lab, 0, &["node", "connect", id])?;
        }
        Ok(())
    }

    /// Reconnects the nodes after restarts and waits until the bucket answers with quorum.
    pub fn wait_up(&self, lab: &Lab) -> anyhow::Result<()> {
        self.connect(lab)?;
        self.cli_until(lab, 0, &["bucket", "info", BUCKET])
            .map(drop)
    }

    /// The `[archive]` section for a bastiond writing to this cluster as `appliance`.
    pub fn archive_config(&self, appliance: &str) -> String {
        format!(
            "[archive]\nurl = \"s3://{BUCKET}/lab\"\nendpoint = \"{}\"\nregion = \"garage\"\n\
             credentials_file = \"{}\"\nappliance_id = \"{appliance}\"\nretry_max_secs = 2\n\
             audit_interval_secs = 1\n",
            self.endpoint,
            self.credentials.display()
        )
    }

    /// The `--url/--endpoint/--region/--credentials` options of `bastionctl archive`.
    pub fn bucket_args(&self) -> Vec<String> {
        vec![
            "--url".into(),
            format!("s3://{BUCKET}/lab"),
            "--endpoint".into(),
            self.endpoint.clone(),
            "--region".into(),
            "garage".into(),
            "--credentials".into(),
            self.credentials.display().to_string(),
        ]
    }

    /// Runs the garage CLI on node 0 (tests that tamper with the bucket's content use S3
    /// through bastionctl's own client instead).
    pub fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        self.cli(lab, 0, &["status"])
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill_node(i);
        }
    }
}

/// Debian's rsyslogd receiving RFC 5424 over TCP (octet counting) and writing each message,
/// as received, one per line.
pub struct Rsyslog {
    dir: PathBuf,
    child: Option<Child>,
    pub received: PathBuf,
}

impl Rsyslog {
    pub fn start(lab: &Lab) -> anyhow::Result<Rsyslog> {
        let dir = lab.info().run_dir.join("rsyslog");
        std::fs::create_dir_all(dir.join("work"))?;
        let received = dir.join("received.log");
        std::fs::write(
            dir.join("rsyslog.conf"),
            format!(
                "global(workDirectory=\"{d}/work\")\nmodule(load=\"imtcp\")\n\
                 input(type=\"imtcp\" port=\"{SYSLOG_PORT}\" address=\"{a}\")\n\
                 template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
                 *.* action(type=\"omfile\" file=\"{r}\" template=\"raw\")\n",
                d = dir.display(),
                a = addr("syslog"),
                r = received.display()
            ),
        )?;
        let mut r = Rsyslog {
            dir,
            child: None,
            received,
        };
        r.spawn(lab)?;
        Ok(r)
    }

    fn spawn(&mut self, lab: &Lab) -> anyhow::Result<()> {
        let mut cmd = command(lab, "syslog", RSYSLOGD)?;
        cmd.arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().context("starting rsyslogd")?);
        Ok(())
    }

    /// Stops it as an admin would (SIGTERM: it writes what it has taken and exits).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while c.try_wait()?.is_none() {
                if t0.elapsed() > crate::wait::LIMIT {
                    c.kill()?;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn restart(&mut self, lab: &Lab) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn(lab)
    }

    /// The sequence numbers of the audit events received so far, in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        std::fs::read_to_string(&self.received)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let rest = l.split("seq=\"").nth(1)?;
                rest.split('"').next()?.parse().ok()
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
