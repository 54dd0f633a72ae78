//! What the store keeps about sessions and their commands, as plain types: session metadata and
//! listing filters, commands as the recorder hands them over, command searches and their hits.
//! Pure (no sled): the record formats, the control protocol and bastionctl use them without the
//! store; `store` persists them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::record::{
    Frame, Kind,
    commands::{CommandLine, Doubt},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Live,
    Closed,
    /// bastiond stopped (crash, kill) while the session was live; everything flushed is kept.
    Interrupted,
    /// A block could not be stored (write error, store at its floor): the session was ended
    /// at once and the record stops at its last stored block.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub id: u64,
    pub user: String,
    pub login: String,
    pub target: String,
    pub target_addr: SocketAddr,
    pub client_addr: Option<SocketAddr>,
    pub grant: String,
    pub started_micros: u64,
    pub ended_micros: Option<u64>,
    pub state: SessionState,
    pub blocks: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes of recorded blocks (compressed) stored for the session.
    #[serde(default)]
    pub stored_bytes: u64,
    /// How the client reached bastiond: explicit, transparent or jump (empty before v0.2).
    #[serde(default)]
    pub arrival: String,
    /// Head of the session's block hash chain (hex; `None`: recorded before integrity).
    #[serde(default)]
    pub chain: Option<String>,
    /// The audit key's signature (OpenSSH SshSig) over the closed session, see
    /// `integrity::seal_message`.
    #[serde(default)]
    pub seal: Option<String>,
}

impl SessionMeta {
    /// A session starting now toward `target_addr`: live, nothing recorded yet. Callers set who
    /// and how with struct update syntax.
    pub fn starting(id: u64, target_addr: SocketAddr) -> SessionMeta {
        SessionMeta {
            id,
            user: String::new(),
            login: String::new(),
            target: String::new(),
            target_addr,
            client_addr: None,
            grant: String::new(),
            started_micros: crate::audit::now_micros(),
            ended_micros: None,
            state: SessionState::Live,
            blocks: 0,
            bytes_in: 0,
            bytes_out: 0,
            stored_bytes: 0,
            arrival: String::new(),
            chain: None,
            seal: None,
        }
    }
}

/// Which sessions a listing shows. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFilter {
    pub user: Option<String>,
    #[serde(default)]
    pub login: Option<String>,
    /// Matches the target name or address as recorded.
    pub target: Option<String>,
    /// Sessions started at or after this instant (µs since the epoch).
    pub since_micros: Option<u64>,
    /// Sessions started before this instant.
    pub until_micros: Option<u64>,
    pub state: Option<SessionState>,
}

impl SessionFilter {
    pub fn matches(&self, s: &SessionMeta) -> bool {
        self.user.as_ref().is_none_or(|u| *u == s.user)
            && self.login.as_ref().is_none_or(|l| *l == s.login)
            && self
                .target
                .as_ref()
                .is_none_or(|t| *t == s.target || *t == s.target_addr.ip().to_string())
            && self.since_micros.is_none_or(|t| s.started_micros >= t)
            && self.until_micros.is_none_or(|t| s.started_micros < t)
            && self.state.is_none_or(|st| st == s.state)
    }
}

/// Where a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CommandSource {
    /// A line entered at an interactive shell, read off the terminal.
    Shell = 0,
    /// An exec request: exactly what the client sent.
    Exec = 1,
    /// A shell line a command rule kept from the target.
    Refused = 2,
    /// A line of terminal output (output searches only; never stored in the index).
    Output = 3,
    /// A file that crossed a channel (SFTP or scp): `SHA256 direction size path`, so searches by
    /// hash (`search --file-hash`) or by path find the sessions that moved it.
    File = 4,
}

impl CommandSource {
    pub fn from_u8(b: u8) -> CommandSource {
        match b {
            1 => CommandSource::Exec,
            2 => CommandSource::Refused,
            4 => CommandSource::File,
            _ => CommandSource::Shell,
        }
    }
}

/// One command as the recorder hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    pub t_micros: u64,
    pub channel: u32,
    pub source: CommandSource,
    pub doubts: Vec<Doubt>,
    pub line: String,
}

impl NewCommand {
    /// The command a recorded frame carries: an exec request, a shell line, or a file that
    /// crossed a channel.
    pub fn from_frame(f: &Frame) -> Option<NewCommand> {
        let (source, doubts, line) = match f.kind {
            Kind::File => (
                CommandSource::File,
                Vec::new(),
                crate::record::files::parse_file(f)?.index_line(),
            ),
            Kind::Exec => (
                CommandSource::Exec,
                Vec::new(),
                String::from_utf8_lossy(&f.data).into_owned(),
            ),
            Kind::Command => {
                let c: CommandLine = serde_json::from_slice(&f.data).ok()?;
                let source = match c.refused {
                    Some(_) => CommandSource::Refused,
                    None => CommandSource::Shell,
                };
                (source, c.doubts, c.line)
            }
            _ => return None,
        };
        Some(NewCommand {
            t_micros: f.t_micros,
            channel: f.channel,
            source,
            doubts,
            line,
        })
    }
}

/// What to look for. Every field that is set must match; `text` is a case-insensitive
/// substring of the line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandQuery {
    pub text: Option<String>,
    pub session: Option<u64>,
    /// User, target, login, and the time range (of the command itself).
    pub filter: SessionFilter,
    pub limit: usize,
    /// Only entries of this source (e.g. `file`, for `search --file-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CommandSource>,
}

/// A command found, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandHit {
    pub session: u64,
    /// When it was entered (µs since the epoch).
    pub at_micros: u64,
    /// Offset in the session's recording (for `session play --from`).
    pub offset_micros: u64,
    pub channel: u32,
    pub user: String,
    pub login: String,
    pub target: String,
    pub source: CommandSource,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub doubts: Vec<Doubt>,
    pub line: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, user: &str, target: &str, started: u64, state: SessionState) -> SessionMeta {
        SessionMeta {
            id,
            user: user.into(),
            login: "root".into(),
            target: target.into(),
            target_addr: "203.0.113.10:22".parse().unwrap(),
            client_addr: None,
            grant: "g".into(),
            started_micros: started,
            ended_micros: None,
            state,
            blocks: 0,
            bytes_in: 0,
            bytes_out: 0,
            stored_bytes: 0,
            arrival: "explicit".into(),
            chain: None,
            seal: None,
        }
    }

    #[test]
    fn filter_table() {
        let s = meta(1, "alice", "web1", 1_000, SessionState::Closed);
        let f = |f: SessionFilter| f.matches(&s);
        assert!(f(SessionFilter::default()));
        assert!(f(SessionFilter {
            user: Some("alice".into()),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            user: Some("bob".into()),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            target: Some("web1".into()),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            target: Some("203.0.113.10".into()),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            target: Some("web2".into()),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            since_micros: Some(1_000),
            until_micros: Some(1_001),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            since_micros: Some(1_001),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            until_micros: Some(1_000),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            state: Some(SessionState::Closed),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            state: Some(SessionState::Live),
            ..Default::default()
        }));
    }
}
