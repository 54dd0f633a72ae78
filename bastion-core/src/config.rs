//! bastiond's configuration: a typed TOML file. Unknown keys are errors (a misspelt security
//! setting must never be silently ignored), and every error names the file, line and key.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::cidr::Cidr;

pub const DEFAULT_CONFIG: &str = "/etc/bastion/bastiond.toml";
pub const DEFAULT_SOCKET: &str = "/run/bastion/control.sock";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub store: StoreConfig,
    pub enforce: EnforceConfig,
    #[serde(default)]
    pub ssh: SshConfig,
    #[serde(default)]
    pub record: RecordConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Transparent interception; off when the section is absent.
    pub intercept: Option<InterceptConfig>,
    /// Archiving to S3-compatible object storage; off when the section is absent.
    pub archive: Option<ArchiveConfig>,
    /// The audit stream to a syslog receiver over TCP; off when the section is absent.
    pub syslog: Option<SyslogConfig>,
}

/// Where and how sealed records and the audit stream are archived.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub url: String,
    /// The S3 endpoint (`http://host:port` or `https://...`); absent: AWS's for the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// A TOML file with `access_key_id` and `secret_access_key`, mode 0600 (or stricter).
    pub credentials_file: PathBuf,
    /// Names this appliance in object keys (many appliances share one bucket). Absent: the
    /// host name.
    #[serde(default)]
    pub appliance_id: Option<String>,
    /// The upload rate bound, MiB/s (reading back to verify counts too).
    #[serde(default = "default_archive_rate")]
    pub max_rate_mb_s: u64,
    /// Multipart part size in MiB (records larger than one part are uploaded in parts).
    #[serde(default = "default_part_mb")]
    pub part_mb: u64,
    /// The longest wait between retries of one record, seconds (backoff doubles up to it).
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
    /// Seconds between archiving the audit stream (up to its last anchor).
    #[serde(default = "default_audit_every")]
    pub audit_interval_secs: u64,
    /// Free space (MiB) on the store's filesystem below which records still waiting for the
    /// archive raise an audit ALERT. Absent: four times `store.min_free_mb`.
    #[serde(default)]
    pub alert_free_mb: Option<u64>,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_archive_rate() -> u64 {
    200
}
fn default_part_mb() -> u64 {
    16
}
fn default_retry_max() -> u64 {
    300
}
fn default_audit_every() -> u64 {
    60
}

/// The audit stream sent to a syslog receiver (RFC 5424 over TCP, octet counting). Every
/// event goes out once the receiver has taken the ones before it; after a reconnect bastiond
/// resends from the first event the receiver's TCP had not acknowledged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `HOST:PORT` of the receiver.
    pub tcp: String,
    /// The HOSTNAME field. Absent: the host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The longest wait between reconnection attempts, seconds.
    #[serde(default = "default_syslog_retry")]
    pub retry_max_secs: u64,
}

fn default_syslog_retry() -> u64 {
    10
}

/// Transparent mode: TCP to protected prefixes arriving on `interfaces` is steered (nftables
/// TPROXY in bastiond's own table) to bastiond: SSH ports to the transparent SSH listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptConfig {
    /// Admin-side interfaces whose traffic is intercepted.
    pub interfaces: Vec<String>,
    /// Destination ports carried as audited SSH sessions.
    #[serde(default = "default_ssh_ports")]
    pub ssh_ports: Vec<u16>,
    /// Local port of the transparent SSH listener (bound with IP_TRANSPARENT on every address).
    #[serde(default = "default_intercept_port")]
    pub listen_port: u16,
    /// Local port of the TCP relay (raw TCP that a grant with the `tcp` right allows).
    #[serde(default = "default_relay_port")]
    pub relay_port: u16,
    /// Firewall mark of steered packets and the routing table that delivers them locally.
    #[serde(default = "default_intercept_mark")]
    pub mark: u32,
    #[serde(default = "default_route_table")]
    pub route_table: u32,
    /// bastiond's nftables table (family inet). Replaced whole; no other table is touched.
    #[serde(default = "default_nft_table")]
    pub nft_table: String,
}

fn default_ssh_ports() -> Vec<u16> {
    vec![22]
}
fn default_intercept_port() -> u16 {
    2201
}
fn default_relay_port() -> u16 {
    2202
}
fn default_intercept_mark() -> u32 {
    0xb457_0001
}
fn default_route_table() -> u32 {
    2901
}
fn default_nft_table() -> String {
    "bastion".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The explicit listener: `ssh -p 2222 login@target@bastion`.
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// Where the appliance host key and user CA live (created with mode 0700/0600).
    #[serde(default = "default_keys_dir")]
    pub keys_dir: PathBuf,
    /// SO_MARK set on every upstream connection.
    #[serde(default = "default_mark")]
    pub upstream_mark: u32,
    /// Seconds to wait for a target to accept a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds a client has to sign in before its connection is closed.
    #[serde(default = "default_login_grace")]
    pub login_grace_secs: u64,
    /// Failed sign-ins (refused keys and certificates, wrong second-factor codes) from one source
    /// (an IPv4 address, an IPv6 /64) within `failure_window_secs` that trigger a refusal of
    /// that source for `failure_penalty_secs`.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_failure_window")]
    pub failure_window_secs: u64,
    #[serde(default = "default_failure_penalty")]
    pub failure_penalty_secs: u64,
    /// Failed connections for one SSH user name (`login@target`) from one source network (an
    /// IPv4 /24, an IPv6 /64) within the window that refuse that name from that network for the
    /// penalty: a spread guess at one name is slowed, and nobody elsewhere can lock the name out
    /// for its owner. 0 disables.
    #[serde(default = "default_max_failures_per_user")]
    pub max_failures_per_user: u32,
    /// What the listeners offer: `modern` (what a scanner finds clean) or `compatible` (adds
    /// algorithms old clients need).
    #[serde(default)]
    pub algorithms: Algorithms,
    /// New connections one source (an IPv4 address, an IPv6 /64) may open per second, past a
    /// burst of `connection_burst_per_source`, before key exchange: a faster source waits for its
    /// server banner (at most the login grace), which is what keeps a DHEat-style flood of key
    /// exchanges from costing the appliance CPU. 0 disables.
    #[serde(default = "default_connections_per_source")]
    pub connections_per_source_per_sec: u32,
    #[serde(default = "default_connection_burst")]
    pub connection_burst_per_source: u32,
    /// Environment variables a client may pass to the target (`env` requests; a trailing `*`
    /// is a prefix). Every one asked for is recorded; others are refused and audited.
    #[serde(default = "default_accept_env")]
    pub accept_env: Vec<String>,
    /// What values they may have: `locale` (`en_US.UTF-8`, `C`) or `any` printable value.
    #[serde(default)]
    pub env_values: EnvValues,
    /// Every sign-in needs the second factor (TOTP), whatever the grant says.
    #[serde(default)]
    pub require_mfa: bool,
}

/// `ssh.env_values`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvValues {
    #[default]
    Locale,
    Any,
}

/// The algorithm sets of `ssh.algorithms` (what each holds: `bastion_proxy::algorithms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithms {
    #[default]
    Modern,
    Compatible,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Recorded events are durable in the store at most this long after they happen.
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
    /// Capture the contents of files moved over SFTP and scp in every session, not only under
    /// grants with `capture_files`.
    #[serde(default)]
    pub capture_files: bool,
    /// Largest file whose content is captured (MiB); larger ones keep hash and size only.
    #[serde(default = "default_max_file_capture_mb")]
    pub max_file_capture_mb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Seconds between anchors: the audit key's signature over the audit chain's head, written
    /// into the stream (and so into every export) this often, and after every session's end.
    /// A store cut or rolled back later than an exported anchor no longer matches it.
    #[serde(default = "default_anchor_interval")]
    pub anchor_interval_secs: u64,
}

/// How policy acts on access in use and on access requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Seconds before a known end of access (a grant's expiry, its window closing) at which
    /// live sessions using it are warned on every channel.
    #[serde(default = "default_end_warning")]
    pub end_warning_secs: u64,
    /// Seconds an access request waits for its decision before it expires.
    #[serde(default = "default_request_ttl")]
    pub request_ttl_secs: u64,
    /// The longest access one request can ask for, in seconds.
    #[serde(default = "default_max_request")]
    pub max_request_secs: u64,
    /// Seconds a command held for review waits for approval before it is refused.
    #[serde(default = "default_review_timeout")]
    pub review_timeout_secs: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            end_warning_secs: default_end_warning(),
            request_ttl_secs: default_request_ttl(),
            max_request_secs: default_max_request(),
            review_timeout_secs: default_review_timeout(),
        }
    }
}

fn default_end_warning() -> u64 {
    300
}
fn default_request_ttl() -> u64 {
    3600
}
fn default_max_request() -> u64 {
    8 * 3600
}
fn default_review_timeout() -> u64 {
    300
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            anchor_interval_secs: default_anchor_interval(),
        }
    }
}

fn default_anchor_interval() -> u64 {
    60
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 2222))
}
fn default_keys_dir() -> PathBuf {
    "/var/lib/bastion/keys".into()
}
fn default_mark() -> u32 {
    0xb57
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_login_grace() -> u64 {
    30
}
fn default_max_failures() -> u32 {
    20
}
fn default_max_failures_per_user() -> u32 {
    100
}
fn default_accept_env() -> Vec<String> {
    vec!["LANG".into(), "LC_*".into()]
}
fn default_connections_per_source() -> u32 {
    5
}
fn default_connection_burst() -> u32 {
    10
}
fn default_failure_window() -> u64 {
    60
}
fn default_failure_penalty() -> u64 {
    60
}
fn default_flush_ms() -> u64 {
    200
}
fn default_max_file_capture_mb() -> u64 {
    64
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            keys_dir: default_keys_dir(),
            upstream_mark: default_mark(),
            connect_timeout_secs: default_connect_timeout(),
            login_grace_secs: default_login_grace(),
            max_failures: default_max_failures(),
            failure_window_secs: default_failure_window(),
            failure_penalty_secs: default_failure_penalty(),
            max_failures_per_user: default_max_failures_per_user(),
            algorithms: Algorithms::default(),
            connections_per_source_per_sec: default_connections_per_source(),
            connection_burst_per_source: default_connection_burst(),
            accept_env: default_accept_env(),
            env_values: EnvValues::default(),
            require_mfa: false,
        }
    }
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: default_flush_ms(),
            capture_files: false,
            max_file_capture_mb: default_max_file_capture_mb(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The Unix socket bastionctl talks to. Created with mode 0600.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Uids besides root (0) allowed to use the control API.
    #[serde(default)]
    pub admin_uids: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The sled database directory.
    #[serde(default = "default_store")]
    pub path: PathBuf,
    /// Free space (MiB) on the store's filesystem below which new sessions are refused (with a
    /// message and an audit alert) so that recordings in progress can still be written.
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// Sessions that ended longer ago than this many days are deleted (each deletion audited).
    /// Absent: recordings are kept until removed by hand.
    #[serde(default)]
    pub retention_days: Option<f64>,
    /// Stored bytes (MiB, compressed blocks) one session may take: the block that would pass it
    /// is not stored and the session is ended (its record INCOMPLETE). Absent: no quota.
    #[serde(default)]
    pub session_quota_mb: Option<u64>,
    /// Audit events are deleted this many days after they were written (each deletion is
    /// itself audited, and the chain continues from the head kept for it). Absent: kept.
    #[serde(default)]
    pub audit_retention_days: Option<f64>,
    /// Events one unauthenticated source address (refused flows and relay connections, failed
    /// sign-ins) may add to the audit stream per minute; the rest are counted in one
    /// `audit_suppressed` event per minute.
    #[serde(default = "default_per_source_per_minute")]
    pub unauthenticated_audit_per_source_per_minute: u32,
    /// What all unauthenticated sources together may add to the audit stream per hour (MiB);
    /// past it their events are counted, not stored one by one.
    #[serde(default = "default_unauthenticated_mb_per_hour")]
    pub unauthenticated_audit_mb_per_hour: u64,
}

fn default_min_free_mb() -> u64 {
    256
}

fn default_per_source_per_minute() -> u32 {
    60
}

fn default_unauthenticated_mb_per_hour() -> u64 {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforceConfig {
    /// bpffs directory holding bastion's pinned maps and links (must be on a bpf filesystem).
    #[serde(default = "default_bpffs")]
    pub bpffs_dir: PathBuf,
    /// The cgroup v2 directory the connect/sendmsg hooks attach to: every process below it is held
    /// to the protected-prefix rules. On the appliance this is the root cgroup.
    pub cgroup_root: PathBuf,
    /// The cgroup bastiond moves itself into at start (created if missing). It must lie strictly
    /// below `cgroup_root`. When absent, bastiond stays in the cgroup it was started in.
    pub daemon_cgroup: Option<PathBuf>,
    /// Prefixes nothing but bastiond may reach.
    #[serde(default)]
    pub protected_subnets: Vec<Cidr>,
    /// Interfaces toward the protected subnets (in bastiond's network namespace). A tcx egress
    /// program on each drops packets to protected prefixes that do not come from bastiond's
    /// sockets: forwarded traffic included.
    #[serde(default)]
    pub protected_interfaces: Vec<String>,
    /// cgroups (below `cgroup_root`) allowed, besides bastiond's, the socket options that put
    /// frames on a link past the egress program: a packet socket's PACKET_QDISC_BYPASS and
    /// AF_XDP's (e.g. a DHCP client on the admin side that asks for qdisc bypass). Everyone
    /// else is refused them (EPERM).
    #[serde(default)]
    pub packet_socket_cgroups: Vec<PathBuf>,
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_store() -> PathBuf {
    "/var/lib/bastion/store".into()
}
fn default_bpffs() -> PathBuf {
    "/sys/fs/bpf/bastion".into()
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            admin_uids: Vec::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store(),
            min_free_mb: default_min_free_mb(),
            retention_days: None,
            session_quota_mb: None,
            audit_retention_days: None,
            unauthenticated_audit_per_source_per_minute: default_per_source_per_minute(),
            unauthenticated_audit_mb_per_hour: default_unauthenticated_mb_per_hour(),
        }
    }
}

/// A configuration error, rendered on one line as `FILE:LINE:COLUMN: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0)]
    Parse(Located),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// A parse error pinned to a place in the file.
#[derive(Debug)]
pub struct Located {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The `[table]` the error is in, when it is not the top level.
    pub table: Option<String>,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(table) = &self.table {
            write!(f, "in [{table}]: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as if read from `path` (the path only appears in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::Parse(locate(path, text, &e, &[])))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            // The key path serde was in when it failed: the table and key the error is about.
            let keys: Vec<String> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    _ => None,
                })
                .collect();
            ConfigError::Parse(locate(path, text, e.inner(), &keys))
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let absolute = [
            ("control.socket", &self.control.socket),
            ("store.path", &self.store.path),
            ("enforce.bpffs_dir", &self.enforce.bpffs_dir),
            ("enforce.cgroup_root", &self.enforce.cgroup_root),
            ("ssh.keys_dir", &self.ssh.keys_dir),
        ];
        for (key, p) in absolute.into_iter().chain(
            self.enforce
                .daemon_cgroup
                .as_ref()
                .map(|p| ("enforce.daemon_cgroup", p)),
        ) {
            if !p.is_absolute() {
                return Err(invalid(format!(
                    "{key} must be an absolute path, got `{}`",
                    p.display()
                )));
            }
        }
        if let Some(daemon) = &self.enforce.daemon_cgroup
            && !strictly_below(daemon, &self.enforce.cgroup_root)
        {
            return Err(invalid(format!(
                "enforce.daemon_cgroup `{}` must lie strictly below enforce.cgroup_root `{}`",
                daemon.display(),
                self.enforce.cgroup_root.display()
            )));
        }
        for (name, days) in [
            ("retention_days", self.store.retention_days),
            ("audit_retention_days", self.store.audit_retention_days),
        ] {
            if let Some(days) = days
                && !(days > 0.0 && days.is_finite())
            {
                return Err(invalid(format!(
                    "store.{name} must be a positive number of days, got {days}"
                )));
            }
        }
        if self.store.unauthenticated_audit_per_source_per_minute == 0 {
            return Err(invalid(
                "store.unauthenticated_audit_per_source_per_minute must be at least 1".into(),
            ));
        }
        if !(10..=60_000).contains(&self.record.flush_interval_ms) {
            return Err(invalid(format!(
                "record.flush_interval_ms must be between 10 and 60000, got {}",
                self.record.flush_interval_ms
            )));
        }
        if !(1..=86_400).contains(&self.audit.anchor_interval_secs) {
            return Err(invalid(format!(
                "audit.anchor_interval_secs must be between 1 and 86400, got {}",
                self.audit.anchor_interval_secs
            )));
        }
        let p = &self.policy;
        for (key, value, range) in [
            ("end_warning_secs", p.end_warning_secs, 0..=86_400),
            ("request_ttl_secs", p.request_ttl_secs, 1..=30 * 86_400),
            ("max_request_secs", p.max_request_secs, 1..=366 * 86_400),
            ("review_timeout_secs", p.review_timeout_secs, 1..=86_400),
        ] {
            if !range.contains(&value) {
                return Err(invalid(format!(
                    "policy.{key} must be between {} and {}, got {value}",
                    range.start(),
                    range.end()
                )));
            }
        }
        if let Some(a) = &self.archive {
            crate::archive::Location::parse(&a.url)
                .map_err(|e| invalid(format!("archive.url: {e}")))?;
            if !a.credentials_file.is_absolute() {
                return Err(invalid(format!(
                    "archive.credentials_file must be an absolute path, got `{}`",
                    a.credentials_file.display()
                )));
            }
            if let Some(id) = &a.appliance_id {
                crate::archive::check_appliance_id(id)
                    .map_err(|e| invalid(format!("archive.appliance_id: {e}")))?;
            }
            if let Some(e) = &a.endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err(invalid(format!(
                    "archive.endpoint must start with http:// or https://, got `{e}`"
                )));
            }
            for (key, value, range) in [
                ("max_rate_mb_s", a.max_rate_mb_s, 1..=100_000),
                ("part_mb", a.part_mb, 5..=1024),
                ("retry_max_secs", a.retry_max_secs, 1..=86_400),
                ("audit_interval_secs", a.audit_interval_secs, 1..=86_400),
            ] {
                if !range.contains(&value) {
                    return Err(invalid(format!(
                        "archive.{key} must be between {} and {}, got {value}",
                        range.start(),
                        range.end()
                    )));
                }
            }
        }
        if let Some(s) = &self.syslog {
            match s.tcp.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => {
                    return Err(invalid(format!(
                        "syslog.tcp must be HOST:PORT, got `{}`",
                        s.tcp
                    )));
                }
            }
            if !(1..=3600).contains(&s.retry_max_secs) {
                return Err(invalid(format!(
                    "syslog.retry_max_secs must be between 1 and 3600, got {}",
                    s.retry_max_secs
                )));
            }
        }
        if let Some(i) = &self.intercept {
            if i.interfaces.is_empty() || i.ssh_ports.is_empty() {
                return Err(invalid(
                    "intercept.interfaces and intercept.ssh_ports must not be empty".into(),
                ));
            }
            if i.mark == 0 || i.mark == self.ssh.upstream_mark {
                return Err(invalid(format!(
                    "intercept.mark must be non-zero and differ from ssh.upstream_mark ({:#x})",
                    self.ssh.upstream_mark
                )));
            }
            if let Some(name) = i
                .interfaces
                .iter()
                .find(|n| self.enforce.protected_interfaces.contains(n))
            {
                return Err(invalid(format!(
                    "intercept.interfaces lists `{name}`, a protected interface; list the admin side"
                )));
            }
            if i.listen_port == self.ssh.listen.port()
                || i.relay_port == self.ssh.listen.port()
                || i.relay_port == i.listen_port
            {
                return Err(invalid(format!(
                    "intercept.listen_port {}, intercept.relay_port {} and ssh.listen's port {} must differ",
                    i.listen_port,
                    i.relay_port,
                    self.ssh.listen.port()
                )));
            }
        }
        // Without an interface, forwarded traffic to the prefixes meets no egress program: the
        // cgroup hooks only judge the appliance's own processes.
        if !self.enforce.protected_subnets.is_empty()
            && self.enforce.protected_interfaces.is_empty()
        {
            return Err(invalid(
                "enforce.protected_subnets is set but enforce.protected_interfaces is empty: list the \
                 interfaces toward the protected subnets, or forwarded traffic to them is not judged"
                    .into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for cidr in &self.enforce.protected_subnets {
            if !seen.insert(cidr) {
                return Err(invalid(format!(
                    "enforce.protected_subnets lists {cidr} twice"
                )));
            }
        }
        Ok(())
    }
}

/// True if `path` is a descendant of `root` (and not `root` itself). bastiond's cgroup must be:
/// the hooks on `root` must see it to exempt it, and nothing else may share its exemption.
pub fn strictly_below(path: &Path, root: &Path) -> bool {
    path != root && path.starts_with(root)
}

/// Pins `error` to its line and column, with the `[table]` and key it is about (`keys`: the
/// path serde was deserializing, outermost first; empty for syntax errors).
fn locate(path: &Path, text: &str, error: &toml::de::Error, keys: &[String]) -> Located {
    let offset = error.span().map_or(0, |s| s.start).min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    // toml's messages can span lines; keep the error on one line.
    let mut message = error
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let (table, key) = match keys {
        [] => (None, None),
        [key] => (None, Some(key)),
        [tables @ .., key] => (Some(tables.join(".")), Some(key)),
    };
    // Value errors ("invalid type: integer `5`") do not say which key; the path does.
    if let Some(key) = key
        && !message.contains(key.as_str())
    {
        message = format!("key `{key}`: {message}");
    }
    Located {
        path: path.to_owned(),
        line,
        column,
        table,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[control]
socket = "/run/bastion/control.sock"

[enforce]
cgroup_root = "/sys/fs/cgroup/unified/lab"
daemon_cgroup = "/sys/fs/cgroup/unified/lab/bastiond"
protected_subnets = ["203.0.113.0/24"]
protected_interfaces = ["prot0"]
"#;

    fn err(text: &str) -> String {
        Config::parse(Path::new("/etc/bastion/bastiond.toml"), text)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(Path::new("x.toml"), GOOD).expect("valid");
        assert_eq!(c.store.path, Path::new("/var/lib/bastion/store"));
        assert_eq!(c.enforce.bpffs_dir, Path::new("/sys/fs/bpf/bastion"));
        assert_eq!(c.enforce.protected_subnets.len(), 1);
        assert_eq!(c.audit.anchor_interval_secs, 60);
    }

    #[test]
    fn the_anchor_interval_is_read_and_bounded() {
        let with = |v: &str| format!("{GOOD}\n[audit]\nanchor_interval_secs = {v}\n");
        let c = Config::parse(Path::new("x.toml"), &with("5")).expect("valid");
        assert_eq!(c.audit.anchor_interval_secs, 5);
        for bad in ["0", "86401"] {
            let e = err(&with(bad));
            assert!(e.contains("audit.anchor_interval_secs"), "{e}");
        }
        let e = err(&format!("{GOOD}\n[audit]\nanchor_interval = 5\n"));
        assert!(e.contains("anchor_interval"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_key_on_one_line() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[enforce]\ncgroup_root = \"/a\"\nprotected_subnet = []\n",
                &[
                    "/etc/bastion/bastiond.toml:3:1:",
                    "in [enforce]",
                    "protected_subnet",
                ],
            ),
            (
                "colour = 1\n[enforce]\ncgroup_root = \"/a\"\n",
                &[":1:1:", "colour"],
            ),
            (
                "[enforce]\ncgroup_root = \"/a\"\nprotected_subnets = [\"203.0.113.1/24\"]\n",
                &[":3:", "host bits set", "203.0.113.0/24"],
            ),
            ("[control]\nsocket = \"/s\"\n", &["missing field `enforce`"]),
            (
                "[enforce]\ncgroup_root = 5\n",
                &[":2:", "cgroup_root", "in [enforce]"],
            ),
            ("[enforce\n", &[":1:"]),
            (
                // An inline table: no `[enforce]` header above the line, the key path names it.
                "enforce = { cgroup_root = 5 }\n",
                &[":1:", "in [enforce]", "key `cgroup_root`"],
            ),
            (
                "[enforce]\ncgroup_root = \"/a\"\ndaemon_cgroup = \"/b\"\n",
                &["daemon_cgroup", "strictly below"],
            ),
            (
                "[enforce]\ncgroup_root = \"rel\"\n",
                &["enforce.cgroup_root must be an absolute path"],
            ),
            (
                "[enforce]\ncgroup_root = \"/a\"\nprotected_subnets = [\"203.0.113.0/24\", \"203.0.113.0/24\"]\nprotected_interfaces = [\"prot0\"]\n",
                &["twice"],
            ),
            (
                "[enforce]\ncgroup_root = \"/a\"\nprotected_subnets = [\"203.0.113.0/24\"]\n",
                &["enforce.protected_interfaces is empty"],
            ),
        ];
        for (text, wants) in cases {
            let e = err(text);
            assert!(!e.contains('\n'), "multi-line error: {e:?}");
            for w in *wants {
                assert!(e.contains(w), "error {e:?} lacks {w:?}");
            }
        }
    }
}
