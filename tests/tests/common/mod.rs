//! bastionctl's `--json` answers read as the control API's own types, for the end-to-end tests.
//! `bastionctl --json` prints the [`Response`] bastiond sent (`{"response":"sessions",
//! "sessions":[...]}`). It lives with the tests, not in the lab library: the lab depends on no
//! bastion crate (xtask checks it).

// Each test binary includes this module and uses a subset of it.
#![allow(dead_code)]

use bastion_core::{
    audit::AuditKind,
    flow::Flow,
    protocol::Response,
    session::{CommandHit, SessionMeta},
};
use std::{path::PathBuf, process::Output};

use bastion_lab::{Lab, bastiond::Bastiond};

/// `bastionctl --json args...`, read as the typed response; `Err` when bastionctl fails or
/// prints something else (for polls, where a failed look is only a look that saw nothing).
pub fn try_ctl_json(b: &Bastiond, args: &[&str]) -> anyhow::Result<Response> {
    let out = b.ctl_ok(&[&["--json"], args].concat())?;
    serde_json::from_str(&out)
        .map_err(|e| anyhow::anyhow!("bastionctl --json {args:?}: {e}: {out}"))
}

/// `bastionctl --json args...`, read as the typed response; panics when that fails.
pub fn ctl_json(b: &Bastiond, args: &[&str]) -> Response {
    try_ctl_json(b, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `bastionctl --json session list [filter...]`, newest first; `Err` as [`try_ctl_json`].
pub fn try_sessions_where(b: &Bastiond, filter: &[&str]) -> anyhow::Result<Vec<SessionMeta>> {
    match try_ctl_json(b, &[&["session", "list"], filter].concat())? {
        Response::Sessions { sessions } => Ok(sessions),
        other => anyhow::bail!("session list answered {other:?}"),
    }
}

/// The sessions `session list` shows with the filter arguments `filter`, newest first.
pub fn sessions_where(b: &Bastiond, filter: &[&str]) -> Vec<SessionMeta> {
    try_sessions_where(b, filter).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every recorded session, newest first.
pub fn sessions(b: &Bastiond) -> Vec<SessionMeta> {
    sessions_where(b, &[])
}

/// The live sessions, newest first.
pub fn live_sessions(b: &Bastiond) -> Vec<SessionMeta> {
    sessions_where(b, &["--live"])
}

/// `session show ID`: the session's metadata.
pub fn session(b: &Bastiond, id: u64) -> SessionMeta {
    match ctl_json(b, &["session", "show", &id.to_string()]) {
        Response::Session { session, .. } => session,
        other => panic!("session show {id} answered {other:?}"),
    }
}

/// `bastionctl --json flows args...`: the flows (newest last) and how many the kernel lost.
pub fn flows(b: &Bastiond, args: &[&str]) -> (Vec<Flow>, u64) {
    match ctl_json(b, &[&["flows"], args].concat()) {
        Response::Flows { events, lost_total } => {
            let flows = events
                .into_iter()
                .map(|e| match e.kind {
                    AuditKind::Flow(f) => f,
                    other => panic!("flows listed a {other:?}"),
                })
                .collect();
            (flows, lost_total)
        }
        other => panic!("flows {args:?} answered {other:?}"),
    }
}

/// `bastionctl --json search args...`: the hits, newest first.
pub fn search(b: &Bastiond, args: &[&str]) -> Vec<CommandHit> {
    match ctl_json(b, &[&["search"], args].concat()) {
        Response::Search { hits, .. } => hits,
        other => panic!("search {args:?} answered {other:?}"),
    }
}

/// A finished command's status and both outputs, for assertion messages.
pub fn said(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A new bastion user `name` with a key of their own; returns the private key's path.
pub fn add_user(lab: &Lab, b: &Bastiond, name: &str) -> PathBuf {
    let key = lab.info().run_dir.join(format!("{name}_ed25519"));
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success());
    let public = format!("{}.pub", key.display());
    b.ctl_ok(&["user", "add", name, "--key", &public])
        .expect("user add");
    key
}

/// Fails with the command's output when it did not succeed.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
