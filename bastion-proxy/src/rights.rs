//! Which rights a channel request needs, the first grant that gives them, and the names
//! requests and channels carry in records and audit events. Pure.
use bastion_core::policy::{self, Policy, ResolvedTarget, Right};

use super::events::{OpenKind, Request};

/// The first grant allowing any of `rights`, or the closest refusal among them, as the client
/// is told it.
pub fn first_grant(
    policy: &Policy,
    user: &str,
    target: &ResolvedTarget,
    login: &str,
    rights: &[Right],
    now: u64,
) -> Result<String, String> {
    policy::evaluate_any(policy, user, target, login, rights, now).map_err(|d| d.to_string())
}

/// Which rights allow a request (any one suffices); `None` for requests policy does not gate.
pub fn right_for(request: &Request) -> Result<Option<&'static [Right]>, String> {
    Ok(match request {
        // A PTY serves a shell or an interactive command (`ssh -t host top`).
        Request::Pty { .. } => Some(&[Right::Shell, Right::Exec]),
        Request::Shell => Some(&[Right::Shell]),
        Request::Exec { .. } => Some(&[Right::Exec]),
        Request::Subsystem { name } if name == "sftp" => Some(&[Right::Sftp]),
        Request::Subsystem { name } => return Err(format!("subsystem `{name}` is not supported")),
        Request::Env { .. } => None,
        Request::Agent => Some(&[Right::Agent]),
    })
}

pub fn open_label(kind: &OpenKind) -> String {
    match kind {
        OpenKind::Session => "session".into(),
        OpenKind::DirectTcpip {
            host,
            port,
            originator,
            originator_port,
        } => format!("direct-tcpip {host}:{port} from {originator}:{originator_port}"),
    }
}

pub fn request_name(request: &Request) -> String {
    match request {
        Request::Pty { .. } => "pty".into(),
        Request::Shell => "shell".into(),
        Request::Exec { command } => format!("exec {}", String::from_utf8_lossy(command)),
        Request::Subsystem { name } => format!("subsystem {name}"),
        // The value too: a refused variable is on record with what it tried to carry.
        Request::Env { name, value } => {
            format!(
                "env {name}={}",
                value.chars().take(1024).collect::<String>()
            )
        }
        Request::Agent => "agent".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_rights() {
        let sftp = Request::Subsystem {
            name: "sftp".into(),
        };
        let other = Request::Subsystem {
            name: "netconf".into(),
        };
        assert_eq!(right_for(&Request::Shell), Ok(Some(&[Right::Shell][..])));
        assert_eq!(right_for(&sftp), Ok(Some(&[Right::Sftp][..])));
        assert!(right_for(&other).unwrap_err().contains("netconf"));
        assert_eq!(
            right_for(&Request::Env {
                name: "LANG".into(),
                value: "C".into()
            }),
            Ok(None)
        );
        assert_eq!(
            request_name(&Request::Exec {
                command: b"uptime".to_vec()
            }),
            "exec uptime"
        );
    }
}
