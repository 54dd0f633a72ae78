//! Audit events: bastion's product output, kept apart from debug logs. Every policy change,
//! daemon start and (later) login, session and flow is one event in the store's `audit` tree,
//! in order, naming who caused it.

use serde::{Deserialize, Serialize};

use crate::policy::EntityKind;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "actor", rename_all = "snake_case")]
pub enum Actor {
    /// A bastionctl caller, identified by SO_PEERCRED.
    Admin { uid: u32, pid: Option<i32> },
    /// bastiond itself.
    Daemon,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditKind {
    DaemonStarted {
        version: String,
        pid: u32,
    },
    PolicyAdded {
        kind: EntityKind,
        name: String,
    },
    PolicyRemoved {
        kind: EntityKind,
        name: String,
    },
    /// A client key was accepted or refused at sign-in.
    Login {
        client: String,
        /// The SSH user name as sent (`login@target`).
        username: String,
        fingerprint: String,
        /// The bastion user the key belongs to, if any.
        user: Option<String>,
        accepted: bool,
        /// Why a certificate was refused, when one was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The second factor at sign-in (after the key or certificate): `outcome` is `asked`,
    /// `accepted` or `refused` (with why: a wrong code, a code used before, not enrolled...).
    SecondFactor {
        client: String,
        username: String,
        user: String,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A user enrolled a TOTP second factor, or had it removed.
    MfaEnrolled {
        user: String,
    },
    MfaRemoved {
        user: String,
    },
    /// Sign-in attempts refused because the source failed too often recently.
    SignInThrottled {
        client: String,
        username: String,
        remaining_secs: u64,
    },
    /// A session was refused before reaching its target (policy, username, target side).
    SessionRefused {
        client: String,
        user: String,
        username: String,
        reason: String,
    },
    SessionStarted {
        session: u64,
        client: String,
        user: String,
        login: String,
        target: String,
        grant: String,
        /// explicit, transparent or jump.
        #[serde(default)]
        arrival: String,
    },
    /// A channel request (shell, exec, sftp, ...) refused by policy.
    RequestRefused {
        session: u64,
        channel: u32,
        request: String,
        reason: String,
    },
    SessionEnded {
        session: u64,
        bytes_in: u64,
        bytes_out: u64,
    },
    /// A sealed private key was stored for login on target (fallback to certificates).
    AccountAdded {
        target: String,
        login: String,
        fingerprint: String,
    },
    AccountRemoved {
        target: String,
        login: String,
    },
    /// Sessions found live at start: the previous bastiond died under them.
    SessionsInterrupted {
        sessions: Vec<u64>,
    },
    /// An exec request matched a command rule of its grant (`action`: deny, alert, terminate).
    CommandRule {
        session: u64,
        channel: u32,
        command: String,
        rule: String,
        action: String,
        grant: String,
    },
    /// Recordings deleted by the retention policy.
    SessionsExpired {
        sessions: Vec<u64>,
        /// The retention in force, in seconds.
        retention_secs: u64,
    },
    /// The store's filesystem fell below `store.min_free_mb`: new sessions are refused.
    StoreFloorReached {
        free_mb: u64,
        floor_mb: u64,
    },
    /// A session's recording failed (a block could not be stored): the session was ended at
    /// once; its record stops after `stored_blocks` blocks.
    RecordingFailed {
        session: u64,
        stored_blocks: u32,
        reason: String,
    },
    /// An administrator ended a live session.
    SessionKilled {
        session: u64,
        reason: String,
    },
    /// A live session was warned that its access ends at `ends_at` (Unix seconds).
    AccessEnding {
        session: u64,
        ends_at: u64,
        grant: String,
    },
    /// A live session or relay flow was ended because the access it used no longer holds
    /// (expiry, a window closing, a grant, user or target removed, rights narrowed).
    AccessEnded {
        session: u64,
        reason: String,
    },
    /// A user asked for access (or a command was held for review): ticket `request`.
    AccessRequested {
        request: u64,
        requester: String,
        what: String,
        reason: String,
        approvers: String,
    },
    /// An approver approved ticket `request`; with `grant` when it was the last approval
    /// needed (the grant it created; none for a held command).
    RequestApproved {
        request: u64,
        requester: String,
        approver: String,
        approvals: u8,
        needed: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    RequestDenied {
        request: u64,
        requester: String,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Ticket `request` was not decided in time.
    RequestExpired {
        request: u64,
        requester: String,
    },
    /// A protected interface's egress program changed: attached to an interface that
    /// appeared, replaced after the interface was re-created, or missing (only the static floor
    /// holds on it until it is back).
    ProtectedInterface {
        iface: String,
        /// attached, replaced or missing.
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A protected prefix (or part of it) is routed through an interface that is not protected
    /// (`resolved`: that route is gone).
    UnprotectedRoute {
        prefix: String,
        route: String,
        iface: String,
        resolved: bool,
    },
    /// ALERT: a process joined bastiond's cgroup, which would share bastiond's exemption from
    /// enforcement. Only root can do this; it is detected, not prevented.
    CgroupJoined {
        cgroup: String,
        pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comm: Option<String>,
    },
    /// A flow to a protected prefix, denied or allowed, as an enforcement hook saw it.
    Flow(crate::flow::Flow),
    /// The audit key's signature over the chain head after event `at_seq`, written every
    /// `audit.anchor_interval_secs` and after every session's end. Exported like every event,
    /// it is what `bastionctl verify --anchors` holds a store to: a store that no longer has
    /// that head at `at_seq` was cut, rolled back or rewritten. (`at_seq`, not `seq`: the
    /// kind is flattened into the event, which has its own `seq`.)
    Anchor {
        at_seq: u64,
        /// The chain value of event `at_seq` (hex).
        head: String,
        /// SshSig PEM, namespace `bastion-anchor`, over [`crate::integrity::anchor_message`].
        signature: String,
    },
    /// Flow events not stored one by one: over the per-second cap (suppressed) or lost by the
    /// kernel to a full ring buffer. Never silent.
    FlowsUncounted {
        suppressed: u64,
        lost: u64,
        lost_total: u64,
    },
    /// Events unauthenticated sources caused in one minute that were not stored one by one
    /// (`audit_flood.rs`): over a source's cap (named, most first, the rest summed in
    /// `other_sources`) or over the store-wide hourly budget (`over_budget`).
    AuditSuppressed {
        /// Start of the minute, seconds since the epoch.
        minute_secs: u64,
        total: u64,
        sources: Vec<crate::audit_flood::SuppressedSource>,
        other_sources: u64,
        over_budget: u64,
    },
    /// Audit events deleted by `store.audit_retention_days`: the stream now starts after
    /// `through_seq`, and its chain continues from the head kept for it.
    AuditExpired {
        through_seq: u64,
        count: u64,
        retention_secs: u64,
    },
    /// Session `session`'s record was written to the archive as object `object` and read back
    /// whole: `bytes` long with SHA-256 `sha256` (hex), its chain and seal judged `status`.
    /// From here on retention may delete the local copy; `archive verify` expects the object.
    SessionArchived {
        session: u64,
        object: String,
        bytes: u64,
        sha256: String,
        status: String,
    },
    /// The archive has been unreachable (or slower than recording) for long enough that the
    /// store's free space fell below `archive.alert_free_mb` with records not yet archived:
    /// retention cannot free their space, and at `store.min_free_mb` new sessions are refused.
    ArchiveBacklog {
        pending: u64,
        pending_bytes: u64,
        /// When the oldest record waiting was queued (µs since the epoch).
        oldest_micros: u64,
        free_mb: u64,
        alert_mb: u64,
        last_error: String,
    },
    /// The archive accepted the backlog again after an [`AuditKind::ArchiveBacklog`] alert.
    ArchiveRecovered {
        pending: u64,
        free_mb: u64,
    },
}

impl AuditKind {
    /// The source address of an event that someone who never signed in can cause (a refused
    /// flow or relay connection, a failed or throttled sign-in): such events are held to the
    /// flood budget. `None` for everything else.
    pub fn unauthenticated_source(&self) -> Option<std::net::IpAddr> {
        let client = |c: &str| {
            c.parse::<std::net::SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| c.parse::<std::net::IpAddr>())
                .ok()
        };
        match self {
            // A flow without an address (a frame of another ethertype) counts as the
            // unspecified source, so it is held to the budget too.
            AuditKind::Flow(f) if !f.allowed => Some(
                f.src
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            ),
            AuditKind::Login {
                client: c,
                accepted: false,
                ..
            }
            | AuditKind::SignInThrottled { client: c, .. } => {
                Some(client(c).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
            }
            // Someone holding a key, but not signed in until the code is right.
            AuditKind::SecondFactor {
                client: c, outcome, ..
            } if outcome != "accepted" => {
                Some(client(c).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the audit stream (strictly increasing).
    pub seq: u64,
    /// Wall-clock time, microseconds since the Unix epoch.
    pub time_micros: u64,
    #[serde(flatten)]
    pub actor: Actor,
    #[serde(flatten)]
    pub kind: AuditKind,
    /// Hash chain over the stream (hex): `H(previous chain ‖ seq ‖ this event without it)`, the
    /// event as canonical JSON (sorted keys). `None` for events stored before integrity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
