//! The command line. Each command becomes exactly one control-API request; files named on the
//! command line (keys) are read here, by the caller, never by the daemon.

use std::{net::SocketAddr, path::PathBuf};

use bastion_core::{
    cidr::Cidr,
    config::DEFAULT_SOCKET,
    keys::Secret,
    policy::{
        Approvers, Entity, EntityKind, Grant, GrantObject, GrantSubject, Group, Revocation, Right,
        Rights, Target, User,
        commands::{CommandRule, RuleAction},
        window::Window,
    },
    protocol::{ExportFormat, Request},
    session::{SessionFilter, SessionState},
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bastionctl", version, about = "Manage a bastion appliance")]
pub struct Cli {
    /// bastiond's control socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET, env = "BASTION_SOCKET")]
    pub socket: PathBuf,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Commands bastionctl composes from several requests.
pub enum Composite {
    Report(crate::report::Args),
    /// `session files ID --extract DIR`.
    Extract {
        id: u64,
        dir: PathBuf,
    },
    /// `session export ID --format html`.
    Html {
        id: u64,
    },
}

// Parsed once per process: the size of the largest variant (grant add) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Version, uptime, store and enforcement state.
    Status,
    /// Have bastiond connect to ADDR (ip:port) and show the peer's banner.
    Probe { addr: SocketAddr },
    /// Bastion users: people identified by their SSH keys.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Groups of users.
    Group {
        #[command(subcommand)]
        cmd: Noun<GroupAdd>,
    },
    /// Protected hosts registered by name.
    Target {
        #[command(subcommand)]
        cmd: TargetCmd,
    },
    /// Protected subnets (enforced by the kernel as soon as they are added).
    Subnet {
        #[command(subcommand)]
        cmd: SubnetCmd,
    },
    /// Access requests: list, show, approve or deny them (as an administrator).
    Request {
        #[command(subcommand)]
        cmd: RequestCmd,
    },
    /// Grants: who may reach what, as which login, with which rights, when.
    Grant {
        #[command(subcommand)]
        cmd: Noun<GrantAdd>,
    },
    /// Recorded sessions.
    Session {
        #[command(subcommand)]
        cmd: SessionCmd,
    },
    /// Stored keys for target accounts that cannot trust the user CA (sealed at rest).
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
    /// The appliance's certificate authorities.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// The audit event stream (policy changes, daemon starts, ...).
    Audit {
        /// How many of the newest events to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Export instead: every event after sequence number N (0: from the start), in
        /// `--format`, to stdout, `--output FILE` or `--syslog`.
        #[arg(long)]
        after: Option<u64>,
        /// Keep exporting new events as they happen (with --after).
        #[arg(long, requires = "after")]
        follow: bool,
        #[arg(long, value_enum, default_value = "text", requires = "after")]
        format: crate::export::Format,
        /// Append to this file.
        #[arg(long, requires = "after")]
        output: Option<std::path::PathBuf>,
        /// Send each event as one datagram: unix:PATH (e.g. unix:/dev/log) or udp:HOST:PORT.
        #[arg(long, requires = "after", conflicts_with = "output")]
        syslog: Option<String>,
    },
    /// The archive: `status` from bastiond; the rest straight from the bucket, on any machine
    /// with read credentials and the appliance's audit key (no bastiond needed).
    Archive {
        #[command(subcommand)]
        cmd: ArchiveCmd,
    },
    /// The store: sizes, compression, oldest and newest records.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Check that recordings and the audit stream are intact: every session's block chain and
    /// seal, the audit chain, and (all sessions) every session the audit stream names against
    /// the store. Exits 1 when anything was tampered with.
    Verify {
        /// One session (default: all).
        id: Option<u64>,
        /// All sessions (the default; for scripts that say so).
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Also hold the store to an export of its audit stream (`audit --after 0 --format
        /// jsonl|syslog --output FILE`, kept off the appliance): the anchors in it name a cut
        /// tail, a rolled-back store, deleted or altered events and deleted sessions.
        #[arg(long, conflicts_with_all = ["id", "file"])]
        anchors: Option<std::path::PathBuf>,
        /// Check a sealed session file offline (no bastiond needed; needs --key).
        #[arg(long, conflicts_with_all = ["id", "all"])]
        file: Option<std::path::PathBuf>,
        /// The appliance's audit public key (`bastionctl ca show --audit-key`): required with
        /// --file; with --anchors, instead of the key bastiond reports.
        #[arg(long)]
        key: Option<std::path::PathBuf>,
    },
    /// Find commands (shell lines and exec requests) or, with --output, terminal output text,
    /// newest first, with the session and offset to replay from (`session play ID --from T`).
    Search {
        /// Text to find (case-insensitive substring; empty: everything).
        #[arg(default_value = "")]
        text: String,
        #[arg(long)]
        user: Option<String>,
        /// Target name or address.
        #[arg(long)]
        target: Option<String>,
        /// The login on the target.
        #[arg(long)]
        login: Option<String>,
        #[arg(long)]
        session: Option<u64>,
        /// At or after: Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        /// Before (same formats).
        #[arg(long, value_parser = parse_time)]
        until: Option<u64>,
        /// Search what the sessions printed instead of the commands.
        #[arg(long)]
        output: bool,
        /// Sessions that moved a file with this SHA-256 (hex, or its first 8+ digits).
        #[arg(long, value_parser = parse_hash, conflicts_with = "output")]
        file_hash: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The compliance report: sessions per day, user and target; sign-ins and refusals;
    /// after-hours access and access outside grants' windows; denied flows; command rule hits
    /// and top commands; files moved; MFA and approvals; integrity. A progress line goes to
    /// stderr.
    Report(crate::report::Args),
    /// Flows to protected prefixes the enforcement hooks saw: denied attempts and allowed
    /// upstream connections, newest last, with the count of events the kernel lost.
    Flows {
        /// Only denied attempts.
        #[arg(long, conflicts_with = "allowed")]
        denied: bool,
        /// Only allowed flows.
        #[arg(long)]
        allowed: bool,
        /// connect4, connect6, sendmsg4, sendmsg6, setsockopt or egress.
        #[arg(long)]
        hook: Option<String>,
        /// tcp, udp, icmp, icmpv6.
        #[arg(long)]
        proto: Option<String>,
        /// Destination address.
        #[arg(long)]
        dst: Option<std::net::IpAddr>,
        /// Destination port.
        #[arg(long)]
        dport: Option<u16>,
        /// Seen at or after: Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
pub enum SessionCmd {
    /// List sessions, newest first.
    List {
        #[arg(long)]
        user: Option<String>,
        /// Target name or address.
        #[arg(long)]
        target: Option<String>,
        /// Started at or after: Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        /// Started before (same formats).
        #[arg(long, value_parser = parse_time)]
        until: Option<u64>,
        /// The login on the target.
        #[arg(long)]
        login: Option<String>,
        /// Only sessions in progress.
        #[arg(long, conflicts_with = "closed")]
        live: bool,
        /// Only finished sessions.
        #[arg(long)]
        closed: bool,
    },
    /// Show one session.
    Show { id: u64 },
    /// End a live session; the user sees the reason, and the kill is audited.
    Kill {
        id: u64,
        #[arg(long, default_value = "no reason given")]
        reason: String,
    },
    /// Watch a live session's terminal output, read-only, until it ends.
    Watch { id: u64 },
    /// Export a session: asciicast v2 (plays in asciinema) or JSON with every frame.
    Export {
        id: u64,
        #[arg(long, value_enum, default_value_t = Format::Asciicast)]
        format: Format,
    },
    /// The files the session moved over SFTP and scp: path, direction, size, SHA-256, and
    /// whether the content was captured.
    Files {
        id: u64,
        /// Write the captured files into this directory (`INDEX-NAME`), each checked against
        /// its SHA-256.
        #[arg(long)]
        extract: Option<PathBuf>,
    },
    /// Replay a session's terminal output with its original timing.
    Play {
        id: u64,
        /// Playback speed factor.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Print everything at once.
        #[arg(long)]
        no_wait: bool,
        /// Start at this offset into the session (seconds, or [HH:]MM:SS as `search` shows
        /// it): what came before is drawn at once, then playback is timed.
        #[arg(long, value_parser = parse_offset, default_value = "0")]
        from: f64,
    },
}

#[derive(Subcommand)]
pub enum ArchiveCmd {
    /// What waits for the archive, what went, the last error, the throughput (from bastiond).
    Status,
    /// The appliances in the bucket, or one appliance's objects.
    List {
        #[command(flatten)]
        at: crate::archive::Bucket,
        #[arg(long)]
        appliance: Option<String>,
    },
    /// Check an appliance's archive: every session object (chain, seal, the size and hash the
    /// audit stream recorded), the archived audit stream (gaps, chain, anchors), and the
    /// sessions the stream says were archived or ended. Exits 1 on any finding.
    Verify {
        #[command(flatten)]
        at: crate::archive::Bucket,
        #[arg(long)]
        appliance: String,
        /// The appliance's audit public key (`bastionctl ca show --audit-key`).
        #[arg(long)]
        key: PathBuf,
        /// Only sessions started at or after: Unix seconds, YYYY-MM-DD or
        /// YYYY-MM-DDTHH:MM:SSZ (UTC).
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        /// Only sessions started before (same formats).
        #[arg(long, value_parser = parse_time)]
        until: Option<u64>,
    },
    /// Download a session's object as archived (check it with `verify --file F --key K`).
    Fetch {
        #[command(flatten)]
        at: crate::archive::Bucket,
        #[arg(long)]
        appliance: String,
        id: u64,
        #[arg(long)]
        output: PathBuf,
    },
    /// Replay an archived session's terminal output with its original timing.
    Play {
        #[command(flatten)]
        at: crate::archive::Bucket,
        #[arg(long)]
        appliance: String,
        id: u64,
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[arg(long)]
        no_wait: bool,
    },
    /// Export an archived session: asciicast v2 or JSON with every frame.
    Export {
        #[command(flatten)]
        at: crate::archive::Bucket,
        #[arg(long)]
        appliance: String,
        id: u64,
        #[arg(long, value_enum, default_value_t = Format::Asciicast)]
        format: Format,
    },
    /// Find commands in archived sessions of one or more appliances (default: all).
    Search {
        #[command(flatten)]
        at: crate::archive::Bucket,
        #[arg(default_value = "")]
        text: String,
        #[arg(long)]
        appliance: Vec<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Asciicast,
    Json,
    /// One self-contained page that plays the session in a browser, with its commands and seal.
    Html,
    /// The sealed record, self-contained, for `verify --file`.
    Sealed,
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Store the private key bastion uses for LOGIN on TARGET when the certificate is refused.
    Add {
        target: String,
        login: String,
        /// OpenSSH private key file (unencrypted; bastion seals it).
        #[arg(long)]
        key_file: PathBuf,
    },
    /// List stored accounts (public keys only).
    List,
    /// Remove a stored account key.
    Remove { target: String, login: String },
}

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Sizes, compression ratio, oldest and newest session, audit events.
    Stats,
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Print the host CA as a known_hosts `@cert-authority` line (for admins' clients) and the
    /// user-CA public key (for each target's TrustedUserCAKeys).
    Show {
        /// Print only the known_hosts line.
        #[arg(long, conflicts_with = "user_ca")]
        known_hosts: bool,
        /// Print only the user-CA public key.
        #[arg(long, conflicts_with = "audit_key")]
        user_ca: bool,
        /// Print only the audit key that seals session records.
        #[arg(long, conflicts_with = "known_hosts")]
        audit_key: bool,
    },
}

/// The verbs every policy noun has.
#[derive(Subcommand)]
pub enum Noun<A: Args> {
    /// Add one.
    Add(A),
    /// List all.
    List,
    /// Show one.
    Show { name: String },
    /// Remove one. Live sessions and relay flows that depended on it are ended at once, with
    /// the reason.
    Remove {
        name: String,
        /// (grants) Let sessions and relay flows using it now run on until they end.
        #[arg(long)]
        keep_sessions: bool,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    #[command(flatten)]
    Noun(Noun<UserAdd>),
    /// Certificates from trusted user CAs.
    Ca {
        #[command(subcommand)]
        cmd: UserCaCmd,
    },
    /// The second factor (TOTP).
    Mfa {
        #[command(subcommand)]
        cmd: UserMfaCmd,
    },
}

#[derive(Subcommand)]
pub enum TargetCmd {
    #[command(flatten)]
    Noun(Noun<TargetAdd>),
    /// Set who approves access requests for a target.
    Set {
        name: String,
        #[command(flatten)]
        approvers: ApproversArgs,
    },
}

#[derive(Subcommand)]
pub enum SubnetCmd {
    #[command(flatten)]
    Noun(Noun<SubnetAdd>),
    /// Set who approves access requests for addresses of a subnet.
    Set {
        cidr: Cidr,
        #[command(flatten)]
        approvers: ApproversArgs,
    },
}

#[derive(Args)]
pub struct ApproversArgs {
    /// The group whose members approve requests.
    #[arg(long, required_unless_present = "no_approvers")]
    pub approvers: Option<String>,
    /// Distinct approvers each request needs (2: four eyes).
    #[arg(long, default_value_t = 1)]
    pub approvals: u8,
    /// The longest access one request may ask for (e.g. 4h); the config's maximum otherwise.
    #[arg(long, value_parser = parse_duration)]
    pub max_duration: Option<u64>,
    /// Remove these approvers (a covering subnet's approvers, if any, then decide).
    #[arg(long, conflicts_with = "approvers")]
    pub no_approvers: bool,
}

#[derive(Subcommand)]
pub enum RequestCmd {
    /// Requests, newest last (pending ones only, unless --all).
    List {
        #[arg(long)]
        all: bool,
    },
    Show {
        id: u64,
    },
    /// Approve a request (as an administrator of the appliance).
    Approve {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    Deny {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
}

fn parse_duration(s: &str) -> Result<u64, String> {
    bastion_core::ticket::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 30m, 4h, 1h30m)"))
}

#[derive(Subcommand)]
pub enum UserMfaCmd {
    /// Give a user a new TOTP secret: prints its otpauth URI and QR code, once.
    Enroll { name: String },
    /// Remove a user's second factor.
    Remove { name: String },
}

#[derive(Subcommand)]
pub enum UserCaCmd {
    /// Revoke certificates: those with this serial, this key id, or both (from one CA, or any).
    Revoke(RevokeArgs),
    /// List revocations.
    Revoked,
    /// Lift a revocation.
    Unrevoke { name: String },
}

#[derive(Args)]
pub struct RevokeArgs {
    /// A name for this revocation (to list or lift it).
    name: String,
    #[arg(long)]
    serial: Option<u64>,
    #[arg(long = "key-id")]
    key_id: Option<String>,
    /// Only certificates from this CA (an OpenSSH public key line or .pub file).
    #[arg(long)]
    ca: Option<String>,
}

#[derive(Args)]
pub struct UserAdd {
    name: String,
    /// Public key: an OpenSSH key line or a .pub file (repeatable).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Trusted user-CA public key, line or file (repeatable).
    #[arg(long = "ca")]
    cas: Vec<String>,
}

#[derive(Args)]
pub struct GroupAdd {
    name: String,
    /// Member user (repeatable).
    #[arg(long = "member")]
    members: Vec<String>,
}

#[derive(Args)]
pub struct TargetAdd {
    name: String,
    addr: std::net::IpAddr,
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// Pinned host key: an OpenSSH key line or a .pub file (repeatable).
    #[arg(long = "host-key", required_unless_present = "fetch_host_key")]
    host_keys: Vec<String>,
    /// Have bastiond fetch the key the target presents, show it, and pin it once confirmed.
    #[arg(long, conflicts_with = "host_keys")]
    fetch_host_key: bool,
    /// Confirm a fetched host key without asking (scripts).
    #[arg(long, requires = "fetch_host_key")]
    yes: bool,
}

#[derive(Args)]
pub struct SubnetAdd {
    cidr: Cidr,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["user", "group"])))]
#[command(group(clap::ArgGroup::new("object").required(true).args(["target", "subnet"])))]
pub struct GrantAdd {
    /// Grant id.
    id: String,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    group: Option<String>,
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    subnet: Option<Cidr>,
    /// Target login allowed (repeatable; not needed for a tcp-only grant).
    #[arg(long = "login")]
    logins: Vec<String>,
    /// With the tcp right: destination ports relayed (comma-separated).
    #[arg(long = "tcp-port", value_delimiter = ',')]
    tcp_ports: Vec<u16>,
    /// With the tcp right: admin addresses the grant applies to (repeatable CIDR).
    #[arg(long = "from")]
    sources: Vec<Cidr>,
    /// With the tcp right: record the relayed payload too.
    #[arg(long)]
    capture: bool,
    /// Capture the contents of files moved over SFTP and scp (up to
    /// `record.max_file_capture_mb` each; larger files: hash and size only).
    #[arg(long = "capture-files")]
    capture_files: bool,
    /// Sessions under this grant need the second factor (TOTP) at sign-in.
    #[arg(long = "require-mfa")]
    require_mfa: bool,
    /// Exec commands matching this pattern (`*`, `?`) are refused (repeatable). Rules apply in
    /// the order deny, terminate, review, alert; exec is checked exactly, shell lines best effort at Enter.
    #[arg(long = "deny-command")]
    deny_commands: Vec<String>,
    /// Exec commands matching this pattern end the session (repeatable).
    #[arg(long = "terminate-command")]
    terminate_commands: Vec<String>,
    /// Exec commands (and, best effort, shell lines) matching this pattern wait until an
    /// approver approves them with `bastionctl request approve`; refused on timeout
    /// (repeatable).
    #[arg(long = "review-command")]
    review_commands: Vec<String>,
    /// Exec commands matching this pattern run and raise an audit alert (repeatable).
    #[arg(long = "alert-command")]
    alert_commands: Vec<String>,
    /// Comma-separated rights: shell, exec, sftp, forward, agent, tcp.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_right)]
    rights: Vec<Right>,
    /// Valid from (Unix seconds).
    #[arg(long)]
    not_before: Option<u64>,
    /// Valid until (Unix seconds).
    #[arg(long)]
    not_after: Option<u64>,
    /// Recurring window, UTC, e.g. "mon-fri 08:00-18:00".
    #[arg(long)]
    window: Option<Window>,
}

/// Unix seconds from `1795737600`, `2026-11-27` or `2026-11-27T10:00:00Z` (UTC).
/// A session offset: seconds (`93.5`) or `[HH:]MM:SS[.fff]`.
pub fn parse_offset(s: &str) -> Result<f64, String> {
    let bad = || format!("`{s}`: expected seconds or [HH:]MM:SS");
    let parts: Vec<f64> = s
        .split(':')
        .map(|p| p.parse::<f64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if parts.len() > 3 || parts.iter().any(|p| !p.is_finite() || *p < 0.0) {
        return Err(bad());
    }
    Ok(parts.iter().fold(0.0, |acc, p| acc * 60.0 + p))
}

/// A file hash as `search --file-hash` takes it: hex, at least 8 digits, lowercased.
fn parse_hash(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() >= 8 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(format!(
            "`{s}` is not a SHA-256 in hex (8 to 64 hex digits)"
        ))
    }
}

pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let bad = || format!("`{s}`: expected Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, t.strip_suffix('Z').ok_or_else(bad)?),
        None => (s, "00:00:00"),
    };
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (&[y, m, day], &[hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm), UTC.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .map(|d| d * 86_400 + hh * 3600 + mm * 60 + ss)
        .map_err(|_| bad())
}

fn parse_right(s: &str) -> Result<Right, String> {
    Right::parse(s)
        .ok_or_else(|| format!("unknown right `{s}` (shell, exec, sftp, forward, agent)"))
}

/// A key given as a literal line, or a file holding one per line.
fn key_lines(args: &[String]) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for a in args {
        if a.starts_with("ssh-") || a.starts_with("ecdsa-") || a.starts_with("sk-") {
            keys.push(a.clone());
        } else {
            let text = std::fs::read_to_string(a).map_err(|e| format!("key file {a}: {e}"))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
    }
    Ok(keys)
}

/// `target set` / `subnet set`: who approves requests for `object`.
fn approvers_request(object: GrantObject, a: ApproversArgs) -> Result<Request, String> {
    let approvers = Approvers {
        object,
        group: a.approvers.unwrap_or_default(),
        approvals: a.approvals,
        max_secs: a.max_duration,
    };
    Ok(if a.no_approvers {
        Request::PolicyRemove {
            kind: EntityKind::Approvers,
            name: approvers.key(),
            keep_sessions: false,
        }
    } else {
        Request::PolicyAdd {
            entity: Entity::Approvers(approvers),
        }
    })
}

/// Turns a noun's verb into a request; `add` builds the entity with `build`.
fn noun<A: Args>(
    kind: EntityKind,
    cmd: Noun<A>,
    build: impl FnOnce(A) -> Result<Entity, String>,
) -> Result<Request, String> {
    Ok(match cmd {
        Noun::Add(a) => Request::PolicyAdd { entity: build(a)? },
        Noun::List => Request::PolicyList { kind },
        Noun::Show { name } => Request::PolicyShow { kind, name },
        Noun::Remove {
            name,
            keep_sessions,
        } => Request::PolicyRemove {
            kind,
            name,
            keep_sessions,
        },
    })
}

impl Command {
    /// For `target add --fetch-host-key`: the address whose key bastiond should fetch, and
    /// whether it is confirmed in advance.
    pub fn host_key_to_fetch(&self) -> Option<(SocketAddr, bool)> {
        match self {
            Command::Target {
                cmd: TargetCmd::Noun(Noun::Add(a)),
            } if a.fetch_host_key => Some((SocketAddr::new(a.addr, a.port), a.yes)),
            _ => None,
        }
    }

    /// For `session play`: (speed, no_wait, from seconds).
    pub fn playback(&self) -> Option<(f64, bool, f64)> {
        match self {
            Command::Session {
                cmd:
                    SessionCmd::Play {
                        speed,
                        no_wait,
                        from,
                        ..
                    },
            } => Some((*speed, *no_wait, *from)),
            _ => None,
        }
    }

    /// The export `audit --after` asks for.
    pub fn export(&self) -> Option<crate::export::Export> {
        match self {
            Command::Audit {
                after: Some(after),
                follow,
                format,
                output,
                syslog,
                ..
            } => Some(crate::export::Export {
                format: *format,
                after: *after,
                follow: *follow,
                output: output.clone(),
                syslog: syslog.clone(),
            }),
            _ => None,
        }
    }

    /// `verify --file F --key K`: the file and key to check offline.
    pub fn offline_verify(&self) -> Option<(std::path::PathBuf, Option<std::path::PathBuf>)> {
        match self {
            Command::Verify {
                file: Some(f), key, ..
            } => Some((f.clone(), key.clone())),
            _ => None,
        }
    }

    /// `verify [--all] --anchors F [--key K]`: the export to hold the store to, and the key.
    pub fn anchors(&self) -> Option<(std::path::PathBuf, Option<std::path::PathBuf>)> {
        match self {
            Command::Verify {
                anchors: Some(f),
                key,
                ..
            } => Some((f.clone(), key.clone())),
            _ => None,
        }
    }

    /// `verify --key` without --file or --anchors: nothing to check the key against.
    pub fn stray_key(&self) -> bool {
        matches!(
            self,
            Command::Verify {
                key: Some(_),
                file: None,
                anchors: None,
                ..
            }
        )
    }

    /// The session `session watch` follows.
    /// An archive command that reads the bucket itself (all but `status`), taken out.
    pub fn archive_offline(self) -> Result<ArchiveCmd, Box<Command>> {
        match self {
            Command::Archive { cmd } if !matches!(cmd, ArchiveCmd::Status) => Ok(cmd),
            other => Err(Box::new(other)),
        }
    }

    /// `search --file-hash H`: only the files whose hash starts with H are shown.
    pub fn file_hash(&self) -> Option<String> {
        match self {
            Command::Search { file_hash, .. } => file_hash.clone(),
            _ => None,
        }
    }

    /// A command bastionctl composes from several requests, taken out.
    pub fn composite(self) -> Result<Composite, Box<Command>> {
        match self {
            Command::Report(args) => Ok(Composite::Report(args)),
            Command::Session {
                cmd:
                    SessionCmd::Files {
                        id,
                        extract: Some(dir),
                    },
            } => Ok(Composite::Extract { id, dir }),
            Command::Session {
                cmd:
                    SessionCmd::Export {
                        id,
                        format: Format::Html,
                    },
            } => Ok(Composite::Html { id }),
            other => Err(Box::new(other)),
        }
    }

    pub fn watched(&self) -> Option<u64> {
        match self {
            Command::Session {
                cmd: SessionCmd::Watch { id },
            } => Some(*id),
            _ => None,
        }
    }

    /// Which part of `ca show` to print alone, if one.
    pub fn ca_part(&self) -> Option<crate::render::CaPart> {
        use crate::render::CaPart;
        match self {
            Command::Ca {
                cmd:
                    CaCmd::Show {
                        known_hosts,
                        user_ca,
                        audit_key,
                    },
            } => match (known_hosts, user_ca, audit_key) {
                (true, _, _) => Some(CaPart::KnownHosts),
                (_, true, _) => Some(CaPart::UserCa),
                (_, _, true) => Some(CaPart::AuditKey),
                _ => None,
            },
            _ => None,
        }
    }

    /// The request for this command; `fetched` is a host key fetched and confirmed beforehand.
    pub fn into_request(self, fetched: Option<String>) -> Result<Request, String> {
        match self {
            Command::Status => Ok(Request::Status),
            Command::Probe { addr } => Ok(Request::Probe { addr }),
            Command::Audit { limit, .. } => Ok(Request::AuditList { limit }),
            Command::Verify { id, .. } => Ok(Request::Verify { session: id }),
            Command::Store {
                cmd: StoreCmd::Stats,
            } => Ok(Request::StoreStats),
            Command::Search {
                text,
                user,
                target,
                login,
                session,
                since,
                until,
                output,
                file_hash,
                limit,
            } => Ok(Request::Search {
                query: bastion_core::session::CommandQuery {
                    source: file_hash
                        .is_some()
                        .then_some(bastion_core::session::CommandSource::File),
                    text: Some(file_hash.unwrap_or(text)),
                    session,
                    filter: SessionFilter {
                        user,
                        login,
                        target,
                        since_micros: since.map(|s| s * 1_000_000),
                        until_micros: until.map(|s| s * 1_000_000),
                        state: None,
                    },
                    limit,
                },
                output,
            }),
            Command::Flows {
                denied,
                allowed,
                hook,
                proto,
                dst,
                dport,
                since,
                limit,
            } => Ok(Request::FlowList {
                filter: bastion_core::flow::FlowFilter {
                    allowed: (denied || allowed).then_some(allowed),
                    hook,
                    proto,
                    dst,
                    dport,
                    since_micros: since.map(|s| s * 1_000_000),
                },
                limit,
            }),
            Command::Ca {
                cmd: CaCmd::Show { .. },
            } => Ok(Request::CaShow),
            Command::Account { cmd } => Ok(match cmd {
                AccountCmd::Add {
                    target,
                    login,
                    key_file,
                } => Request::AccountAdd {
                    target,
                    login,
                    private_key: Secret::new(
                        std::fs::read_to_string(&key_file)
                            .map_err(|e| format!("key file {}: {e}", key_file.display()))?,
                    ),
                },
                AccountCmd::List => Request::AccountList,
                AccountCmd::Remove { target, login } => Request::AccountRemove { target, login },
            }),
            Command::Session { cmd } => Ok(match cmd {
                SessionCmd::List {
                    user,
                    target,
                    since,
                    until,
                    login,
                    live,
                    closed,
                } => Request::SessionList {
                    filter: SessionFilter {
                        user,
                        login,
                        target,
                        since_micros: since.map(|s| s * 1_000_000),
                        until_micros: until.map(|s| s * 1_000_000),
                        state: match (live, closed) {
                            (true, _) => Some(SessionState::Live),
                            (_, true) => Some(SessionState::Closed),
                            _ => None,
                        },
                    },
                },
                SessionCmd::Show { id } => Request::SessionShow { id },
                SessionCmd::Kill { id, reason } => Request::SessionKill { id, reason },
                SessionCmd::Watch { id } => Request::SessionWatch { id, from: 0 },
                SessionCmd::Export { id, format } => Request::SessionExport {
                    id,
                    format: match format {
                        Format::Asciicast => ExportFormat::Asciicast,
                        Format::Json => ExportFormat::Json,
                        Format::Sealed => ExportFormat::Sealed,
                        // Composed by bastionctl (`replay.rs`) from the asciicast.
                        Format::Html => ExportFormat::Asciicast,
                    },
                },
                SessionCmd::Files { id, .. } => Request::SessionFiles { id },
                SessionCmd::Play { id, .. } => Request::SessionExport {
                    id,
                    format: ExportFormat::Asciicast,
                },
            }),
            Command::User {
                cmd: UserCmd::Noun(cmd),
            } => noun(EntityKind::User, cmd, |a| {
                Ok(Entity::User(User {
                    name: a.name,
                    keys: key_lines(&a.keys)?,
                    trusted_cas: key_lines(&a.cas)?,
                }))
            }),
            Command::User {
                cmd: UserCmd::Ca { cmd },
            } => Ok(match cmd {
                UserCaCmd::Revoke(a) => Request::PolicyAdd {
                    entity: Entity::Revocation(Revocation {
                        name: a.name,
                        serial: a.serial,
                        key_id: a.key_id,
                        ca: match a.ca {
                            Some(ca) => key_lines(&[ca])?.into_iter().next(),
                            None => None,
                        },
                    }),
                },
                UserCaCmd::Revoked => Request::PolicyList {
                    kind: EntityKind::Revocation,
                },
                UserCaCmd::Unrevoke { name } => Request::PolicyRemove {
                    kind: EntityKind::Revocation,
                    name,
                    keep_sessions: false,
                },
            }),
            Command::User {
                cmd: UserCmd::Mfa { cmd },
            } => Ok(match cmd {
                UserMfaCmd::Enroll { name } => Request::MfaEnroll { user: name },
                UserMfaCmd::Remove { name } => Request::MfaRemove { user: name },
            }),
            Command::Group { cmd } => noun(EntityKind::Group, cmd, |a| {
                Ok(Entity::Group(Group {
                    name: a.name,
                    members: a.members,
                }))
            }),
            Command::Target {
                cmd: TargetCmd::Set { name, approvers },
            } => approvers_request(GrantObject::Target(name), approvers),
            Command::Subnet {
                cmd: SubnetCmd::Set { cidr, approvers },
            } => approvers_request(GrantObject::Subnet(cidr), approvers),
            Command::Archive { .. } => Ok(Request::ArchiveStatus),
            Command::Report(_) => Err("report is composed by bastionctl".into()),
            Command::Request { cmd } => Ok(match cmd {
                RequestCmd::List { all } => Request::TicketList { all },
                RequestCmd::Show { id } => Request::TicketShow { id },
                RequestCmd::Approve { id, reason } => Request::TicketDecide {
                    id,
                    approve: true,
                    reason,
                },
                RequestCmd::Deny { id, reason } => Request::TicketDecide {
                    id,
                    approve: false,
                    reason,
                },
            }),
            Command::Target {
                cmd: TargetCmd::Noun(cmd),
            } => noun(EntityKind::Target, cmd, |a| {
                Ok(Entity::Target(Target {
                    name: a.name,
                    addr: a.addr,
                    port: a.port,
                    host_keys: match fetched {
                        Some(key) => vec![key],
                        None => key_lines(&a.host_keys)?,
                    },
                }))
            }),
            Command::Subnet {
                cmd: SubnetCmd::Noun(cmd),
            } => noun(EntityKind::Subnet, cmd, |a| Ok(Entity::Subnet(a.cidr))),
            Command::Grant { cmd } => noun(EntityKind::Grant, cmd, |a| {
                let subject = match (a.user, a.group) {
                    (Some(u), _) => GrantSubject::User(u),
                    (_, Some(g)) => GrantSubject::Group(g),
                    _ => return Err("a grant needs --user or --group".into()),
                };
                let object = match (a.target, a.subnet) {
                    (Some(t), _) => GrantObject::Target(t),
                    (_, Some(c)) => GrantObject::Subnet(c),
                    _ => return Err("a grant needs --target or --subnet".into()),
                };
                Ok(Entity::Grant(Grant {
                    id: a.id,
                    subject,
                    object,
                    logins: a.logins,
                    rights: Rights::new(a.rights),
                    not_before: a.not_before,
                    not_after: a.not_after,
                    window: a.window,
                    tcp_ports: a.tcp_ports,
                    sources: a.sources,
                    capture: a.capture,
                    capture_files: a.capture_files,
                    require_mfa: a.require_mfa,
                    command_rules: [
                        (a.deny_commands, RuleAction::Deny),
                        (a.terminate_commands, RuleAction::Terminate),
                        (a.review_commands, RuleAction::Review),
                        (a.alert_commands, RuleAction::Alert),
                    ]
                    .into_iter()
                    .flat_map(|(patterns, action)| {
                        patterns
                            .into_iter()
                            .map(move |pattern| CommandRule { pattern, action })
                    })
                    .collect(),
                }))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times() {
        assert_eq!(parse_time("1795737600"), Ok(1_795_737_600));
        assert_eq!(parse_time("2026-11-27"), Ok(1_795_737_600));
        assert_eq!(parse_time("2026-11-27T01:02:03Z"), Ok(1_795_737_600 + 3723));
        assert_eq!(parse_time("2000-03-01"), Ok(951_868_800));
        for bad in ["2026-13-01", "2026-11-27T10:00", "yesterday", "2026-11"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
