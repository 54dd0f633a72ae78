//! Control API messages. One request and one response per connection, each a single JSON line.
//!
//! Some messages carry the stored value types themselves (`SessionMeta`, `AuditEvent`, policy
//! `Entity`): on purpose, because an exported session or audit event must be exactly what was
//! sealed or chained. The wire is kept apart from the schema by [`PROTOCOL_VERSION`] and by the
//! pinned wire form in this file's tests: a stored-type change that alters what crosses the wire
//! fails them, and then either stays additive (a new field with a default, which both old and new
//! peers read) or bumps the version. Store migrations never change the wire by themselves.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    audit::AuditEvent,
    cidr::Cidr,
    keys::Secret,
    policy::{Entity, EntityKind},
    record::export::Activity,
    session::{CommandHit, CommandQuery, SessionFilter, SessionMeta},
};

/// Bumped on any incompatible change; a mismatch is answered with a clear error.
pub const PROTOCOL_VERSION: u32 = 2;
/// Longest request line the server reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Version, uptime, store and enforcement state.
    Status,
    /// bastiond connects to `addr` from its own cgroup and reports the first line the peer sends
    /// (the SSH banner of an sshd): proof that the audited path reaches a target.
    Probe {
        addr: SocketAddr,
    },
    /// Adds a user, group, target, protected subnet or grant (refused if it exists).
    PolicyAdd {
        entity: Entity,
    },
    /// Removes one (refused while something still refers to it).
    PolicyRemove {
        kind: EntityKind,
        name: String,
        /// For a grant: sessions and relay flows using it now keep it until they end.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_sessions: bool,
    },
    /// Every entity of a kind.
    PolicyList {
        kind: EntityKind,
    },
    /// One entity.
    PolicyShow {
        kind: EntityKind,
        name: String,
    },
    /// The newest `limit` audit events.
    AuditList {
        limit: usize,
    },
    /// Up to `limit` audit events after sequence number `after`, oldest first (export, follow).
    AuditSince {
        after: u64,
        limit: usize,
    },
    /// Ends a live session; the user is told `reason`.
    SessionKill {
        id: u64,
        reason: String,
    },
    /// Terminal output of a session from block `from` on (poll to watch it live, passing the
    /// `next` of the previous answer: each block is read once).
    SessionWatch {
        id: u64,
        #[serde(default)]
        from: u32,
    },
    /// What the store holds: sizes, compression, oldest and newest records.
    StoreStats,
    /// Checks the integrity of one session (or all, `None`) and of the audit stream.
    Verify {
        session: Option<u64>,
    },
    /// The newest `limit` flow events matching the filter.
    FlowList {
        #[serde(default)]
        filter: crate::flow::FlowFilter,
        limit: usize,
    },
    /// Recorded sessions matching the filter, newest first.
    SessionList {
        #[serde(default)]
        filter: SessionFilter,
    },
    /// Commands (or, with `output`, terminal output lines) matching the query, newest first.
    Search {
        query: CommandQuery,
        #[serde(default)]
        output: bool,
    },
    /// One session's metadata.
    SessionShow {
        id: u64,
    },
    /// One session rendered for export or replay.
    SessionExport {
        id: u64,
        format: ExportFormat,
    },
    /// The files that crossed a session's channels (SFTP, scp), captured or not.
    SessionFiles {
        id: u64,
    },
    /// Captured content of file `index` of a session, read from block `from` on (a few blocks
    /// per answer: continue at `next` until `done`).
    SessionFileData {
        id: u64,
        index: u32,
        #[serde(default)]
        from: u32,
    },
    /// The appliance's user-CA public key (for targets' TrustedUserCAKeys).
    CaShow,
    /// Stores a private key for `login` on `target`, sealed (fallback when the target does not
    /// trust the user CA). The key travels only over the 0600 control socket.
    AccountAdd {
        target: String,
        login: String,
        private_key: Secret,
    },
    AccountRemove {
        target: String,
        login: String,
    },
    AccountList,
    /// Gives `user` a new TOTP secret (refused if they have one: remove it first); the answer
    /// carries the otpauth URI, shown once.
    MfaEnroll {
        user: String,
    },
    MfaRemove {
        user: String,
    },
    /// The archive's queue and figures (`bastionctl archive status`).
    ArchiveStatus,
    /// Access requests (pending ones only, unless `all`).
    TicketList {
        all: bool,
    },
    TicketShow {
        id: u64,
    },
    /// An administrator approves or denies a request.
    TicketDecide {
        id: u64,
        approve: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The host key `addr` presents, fetched by bastiond (for confirmation before pinning).
    FetchHostKey {
        addr: SocketAddr,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Probe(ProbeResult),
    /// A policy change was stored; this is its audit event.
    Changed(AuditEvent),
    // Struct variants: an internally tagged enum cannot carry a bare sequence.
    Entities {
        entities: Vec<Entity>,
    },
    Audit {
        events: Vec<AuditEvent>,
    },
    Sessions {
        sessions: Vec<SessionMeta>,
    },
    /// One session and what happened in it.
    Session {
        session: SessionMeta,
        activity: Vec<Activity>,
    },
    /// An exported session: asciicast v2 text, or a JSON document.
    Export {
        format: ExportFormat,
        content: String,
    },
    /// Output bytes of the blocks from the one asked for; `next` is the block to continue at.
    Watch {
        output: Vec<u8>,
        next: u32,
        live: bool,
    },
    StoreStats(StoreStats),
    Files {
        files: Vec<crate::record::files::CapturedFile>,
    },
    /// Part of a captured file's content, base64.
    FileData {
        data_base64: String,
        next: u32,
        done: bool,
    },
    /// A new TOTP enrolment: the otpauth URI for the user's authenticator (and its event).
    MfaEnrolled {
        uri: String,
        event: AuditEvent,
    },
    Tickets {
        tickets: Vec<crate::ticket::Ticket>,
    },
    ArchiveStatus(ArchiveStatus),
    /// Search results, newest first; `searched` commands (or output lines) were looked at in
    /// `micros`; `complete` is false when an output search stopped at its budget.
    Search {
        hits: Vec<CommandHit>,
        searched: u64,
        complete: bool,
        micros: u64,
    },
    /// What `Verify` found, per session and for the audit stream; `findings`: sessions the
    /// stream names that the store lacks, and the reverse (all sessions only). Older bastiond
    /// sends none.
    Verify {
        sessions: Vec<crate::integrity::SessionIntegrity>,
        audit: crate::integrity::AuditIntegrity,
        #[serde(default)]
        findings: Vec<crate::integrity::Finding>,
    },
    /// Flow audit events (newest last) and how many the kernel lost in all.
    Flows {
        events: Vec<AuditEvent>,
        lost_total: u64,
    },
    Ca {
        user_ca: String,
        host_ca: String,
        /// The `@cert-authority` line clients add to known_hosts.
        known_hosts: String,
        /// The key that seals session records (`verify --file --key`).
        #[serde(default)]
        audit_key: String,
    },
    Accounts {
        accounts: Vec<AccountInfo>,
    },
    HostKey {
        addr: SocketAddr,
        key: String,
        fingerprint: String,
    },
    Error {
        error: ApiError,
    },
}

/// Why a request failed, as it crosses the wire: `kind` is stable for scripts to match on,
/// `message` is one line for people (`{"kind":"not_found","message":"session 9 does not exist"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ApiError {
    /// The caller may not use the API (neither root nor a configured admin uid).
    #[error("{0}")]
    Forbidden(String),
    /// The request cannot be read, or asks for something invalid (a policy change that does
    /// not validate, a malformed key, a bad argument).
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists (e.g. a target that still has account keys).
    #[error("{0}")]
    Conflict(String),
    /// The target side failed: unreachable, no banner, an unexpected host key.
    #[error("{0}")]
    Target(String),
    /// bastiond itself failed: the store, the kernel, its keys.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::policy::PolicyError> for ApiError {
    fn from(e: crate::policy::PolicyError) -> ApiError {
        use crate::policy::PolicyError as P;
        let message = e.to_string();
        match e {
            P::Missing { .. } => ApiError::NotFound(message),
            P::Exists { .. } | P::InUse { .. } => ApiError::Conflict(message),
            P::BadName(_) | P::BadKey { .. } | P::Invalid(_) => ApiError::Invalid(message),
        }
    }
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }

    pub fn invalid(e: impl std::fmt::Display) -> ApiError {
        ApiError::Invalid(e.to_string())
    }
}

/// A stored account as listed: never the private key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountInfo {
    pub target: String,
    pub login: String,
    pub public_key: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Asciicast,
    Json,
    /// The sealed record as stored, checkable offline (`bastionctl verify --file`).
    Sealed,
}

/// `bastionctl store stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStats {
    pub path: String,
    pub size_bytes: u64,
    pub sessions: u64,
    /// Bytes the sessions carried (both directions) and what their recordings take (compressed).
    pub carried_bytes: u64,
    pub recorded_bytes: u64,
    pub oldest_micros: Option<u64>,
    pub newest_micros: Option<u64>,
    pub audit_events: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub store: StoreStatus,
    pub enforcement: EnforceStatus,
}

/// The archive as bastiond sees it: what waits, what went, what failed last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiveStatus {
    pub url: String,
    pub appliance: String,
    /// Finished sessions not archived yet, and their stored bytes.
    pub pending: u64,
    pub pending_bytes: u64,
    /// When the oldest of them was queued (µs since the epoch).
    pub oldest_queued_micros: Option<u64>,
    /// Of them, those whose last attempt failed (waiting to retry).
    pub retrying: u64,
    pub last_error: Option<String>,
    pub last_error_micros: Option<u64>,
    pub last_success_micros: Option<u64>,
    /// Since bastiond started.
    pub archived_sessions: u64,
    pub archived_bytes: u64,
    /// Of the last session archived: bytes per second, upload and read-back together.
    pub last_rate_bytes_per_sec: u64,
    /// The audit stream is archived up to this event; the store holds `audit_events`.
    pub audit_archived_through: u64,
    pub audit_events: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStatus {
    pub path: PathBuf,
    pub schema_version: u32,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    pub addr: SocketAddr,
    /// The first line the peer sent, without its line ending.
    pub banner: String,
    pub connect_micros: u64,
}

/// How a hook's link came to be enforcing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LinkOrigin {
    /// A link pinned by an earlier bastiond now runs this bastiond's program.
    Adopted,
    /// No link was pinned; this bastiond attached and pinned one.
    Attached,
    /// The pinned link was defunct (its interface had been deleted and re-created): replaced.
    Replaced,
    /// The protected interface does not exist (yet): attached as soon as it appears, and
    /// until then the appliance's static floor is all that holds on it.
    Missing,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookStatus {
    pub program: String,
    pub link: LinkOrigin,
    pub pin: PathBuf,
}

/// A protected prefix (or part of it) routed through an interface with no egress program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnprotectedRoute {
    /// The protected prefix.
    pub prefix: Cidr,
    /// The route that carries (some of) it.
    pub route: Cidr,
    pub iface: String,
}

/// What `bastionctl status` shows about enforcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnforceStatus {
    pub bpffs_dir: PathBuf,
    pub cgroup_root: PathBuf,
    pub daemon_cgroup: PathBuf,
    pub daemon_cgroup_id: u64,
    pub hooks: Vec<HookStatus>,
    pub protected_subnets: Vec<Cidr>,
    /// Attempts refused (connects and sends to protected prefixes, frames dropped on protected
    /// links, socket options refused) since the counters were created.
    pub denied: u64,
    /// Connects/sends to protected prefixes allowed (bastiond's own) since then.
    pub allowed: u64,
    /// Protected prefixes routed (in part) through an interface that is not protected.
    #[serde(default)]
    pub unprotected_routes: Vec<UnprotectedRoute>,
    /// The nftables table steering intercepted traffic, when interception is on.
    #[serde(default)]
    pub intercept_table: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::{Actor, AuditKind},
        policy::{Group, User},
    };

    fn round_trip(r: Response) {
        let line = serde_json::to_string(&Envelope {
            v: PROTOCOL_VERSION,
            body: r,
        })
        .expect("encodes");
        let back: Envelope<Response> = serde_json::from_str(&line).expect("decodes");
        assert_eq!(back.v, PROTOCOL_VERSION);
    }

    #[test]
    fn every_response_shape_encodes_and_decodes() {
        let event = AuditEvent {
            seq: 1,
            time_micros: 2,
            actor: Actor::Admin {
                uid: 0,
                pid: Some(3),
            },
            kind: AuditKind::PolicyAdded {
                kind: EntityKind::User,
                name: "alice".into(),
            },
            chain: None,
        };
        round_trip(Response::Changed(event.clone()));
        round_trip(Response::Audit {
            events: vec![event],
        });
        round_trip(Response::Entities {
            entities: vec![
                Entity::User(User {
                    name: "alice".into(),
                    keys: vec![],
                    trusted_cas: vec![],
                }),
                Entity::Group(Group {
                    name: "ops".into(),
                    members: vec![],
                }),
                Entity::Subnet("203.0.113.0/24".parse().expect("cidr")),
            ],
        });
        round_trip(Response::Entities { entities: vec![] });
        round_trip(Response::Error {
            error: ApiError::NotFound("x".into()),
        });
    }

    #[test]
    fn every_request_shape_round_trips() {
        for r in [
            Request::Status,
            Request::PolicyList {
                kind: EntityKind::Grant,
            },
            Request::PolicyShow {
                kind: EntityKind::User,
                name: "alice".into(),
            },
            Request::PolicyRemove {
                kind: EntityKind::Subnet,
                name: "203.0.113.0/24".into(),
                keep_sessions: false,
            },
            Request::AuditList { limit: 5 },
            Request::PolicyAdd {
                entity: Entity::Subnet("203.0.113.0/24".parse().expect("cidr")),
            },
        ] {
            let line = serde_json::to_string(&Envelope {
                v: PROTOCOL_VERSION,
                body: &r,
            })
            .expect("encodes");
            let back: Envelope<Request> = serde_json::from_str(&line).expect("decodes");
            assert_eq!(back.body, r);
        }
    }

    #[test]
    fn errors_have_a_stable_wire_form() {
        let wire = serde_json::to_value(Response::Error {
            error: ApiError::NotFound("session 9 does not exist".into()),
        })
        .unwrap();
        assert_eq!(
            wire,
            serde_json::json!({
                "response": "error",
                "error": {"kind": "not_found", "message": "session 9 does not exist"},
            })
        );
        assert_eq!(
            ApiError::internal("store full").to_string(),
            "internal error: store full"
        );
    }

    /// The wire form of a session listing, pinned. If this fails, a stored type changed what
    /// crosses the wire: keep the change additive (with `#[serde(default)]`) and update this
    /// text, or bump PROTOCOL_VERSION.
    #[test]
    fn the_wire_form_of_stored_types_is_pinned() {
        let session = SessionMeta {
            user: "alice".into(),
            login: "root".into(),
            target: "web1".into(),
            started_micros: 1,
            ..SessionMeta::starting(42, "203.0.113.10:22".parse().expect("addr"))
        };
        let wire = serde_json::to_string(&Response::Sessions {
            sessions: vec![session],
        })
        .expect("encodes");
        assert_eq!(
            wire,
            r#"{"response":"sessions","sessions":[{"id":42,"user":"alice","login":"root","target":"web1","target_addr":"203.0.113.10:22","client_addr":null,"grant":"","started_micros":1,"ended_micros":null,"state":"live","blocks":0,"bytes_in":0,"bytes_out":0,"stored_bytes":0,"arrival":"","chain":null,"seal":null}]}"#
        );
    }
}
