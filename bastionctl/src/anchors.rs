//! `verify --anchors FILE`: holds the store to an export of its audit stream kept off the
//! appliance. bastionctl reads the store's stream over the control API (as `audit --after`
//! does) and compares it here, with `integrity::ExportCheck`; the export never has to fit in
//! one control request, and the check trusts nothing the store says about itself: the export's
//! anchors are checked against the audit key, and a store cannot make an old anchor agree with
//! a rewritten stream.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use bastion_core::{
    audit::AuditEvent,
    integrity::{ExportCheck, Finding},
    protocol::{Request, Response},
    session::SessionFilter,
};

use crate::{
    client,
    export::{BATCH, audit_page},
};

/// The events in an export: JSON lines, or syslog lines (RFC 5424 as `audit --format syslog`
/// writes them, or as a syslog daemon stores them) whose message is the event as JSON. Lines
/// that hold no event are skipped; a file with none at all is refused (a `--format text`
/// export cannot be checked).
pub fn read_export(text: &str) -> Result<BTreeMap<u64, AuditEvent>, String> {
    let mut events = BTreeMap::new();
    for line in text.lines() {
        // The event is the line's first JSON object: syslog headers hold no brace.
        let Some(start) = line.find('{') else {
            continue;
        };
        if let Ok(e) = serde_json::from_str::<AuditEvent>(line[start..].trim_end()) {
            events.insert(e.seq, e);
        }
    }
    if events.is_empty() {
        return Err("no audit events in it (export with --format jsonl or syslog)".into());
    }
    Ok(events)
}

/// Checks the store behind `socket` against the export in `file`, with the audit key in
/// `key` or, without one, the key bastiond reports (an anchor made by another key does not
/// verify, so a replaced key is found rather than trusted). Returns the findings and a line
/// saying what was checked.
pub fn check(
    socket: &Path,
    timeout: Duration,
    file: &Path,
    key: Option<&Path>,
) -> Result<(Vec<Finding>, String), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let export = read_export(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let key_line = match key {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => match client::call(socket, &Request::CaShow, timeout) {
            Ok(Response::Ca { audit_key, .. }) => audit_key,
            Ok(other) => return Err(format!("unexpected answer to ca show: {other:?}")),
            Err(e) => return Err(e.to_string()),
        },
    };
    let public =
        ssh_key::PublicKey::from_openssh(key_line.trim()).map_err(|e| format!("audit key: {e}"))?;
    let stored: BTreeSet<u64> = match client::call(
        socket,
        &Request::SessionList {
            filter: SessionFilter::default(),
        },
        timeout,
    ) {
        Ok(Response::Sessions { sessions }) => sessions.iter().map(|s| s.id).collect(),
        Ok(other) => return Err(format!("unexpected answer to session list: {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    let mut check = ExportCheck::new(&export, &public);
    let mut after = 0;
    loop {
        let events = audit_page(socket, after, timeout)?;
        for e in &events {
            check.store_event(e);
            after = e.seq;
        }
        if events.len() < BATCH {
            break;
        }
    }
    let summary = format!(
        "anchors  {} signed anchors among {} exported events in {} (audit key {})",
        check.anchors(),
        export.len(),
        file.display(),
        bastion_core::keys::fingerprint(key_line.trim())
    );
    Ok((check.finish(&stored), summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_core::audit::{Actor, AuditKind};

    #[test]
    fn json_and_syslog_lines_are_read_and_other_lines_skipped() {
        let ev = AuditEvent {
            seq: 7,
            time_micros: 1,
            actor: Actor::Daemon,
            kind: AuditKind::SessionEnded {
                session: 3,
                bytes_in: 1,
                bytes_out: 2,
            },
            chain: Some("ab".into()),
        };
        let json = serde_json::to_string(&ev).unwrap();
        let mut other = ev.clone();
        other.seq = 8;
        let syslog = crate::export::rfc5424(&other, "bastion");
        let text = format!("{json}\nnot an event\n{syslog}\n");
        let events = read_export(&text).unwrap();
        assert_eq!(events.keys().copied().collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(events[&8], other);
        assert!(read_export("#1 2026-01-01 bastiond: started\n").is_err());
    }
}
