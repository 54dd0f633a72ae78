//! Anchors outside the store, end to end: bastiond signs the audit chain head after every
//! session's end (and every `audit.anchor_interval_secs`), the export carries the anchors off
//! the appliance, and `verify --all --anchors FILE` holds the store to them. An intact store
//! passes; one edited while bastiond was stopped, as an attacker with disk access would (a
//! session deleted with its metadata, block references, chain values, command index and
//! segment files; the audit tail cut back to before the last session started), fails with
//! both named.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Stdio};

use bastion_core::audit::{AuditEvent, AuditKind};
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    wait::{LIMIT, eventually},
};

mod common;

/// The store's whole audit stream, as an export reads it.
fn stream(b: &Bastiond) -> Vec<AuditEvent> {
    b.ctl_ok(&["audit", "--after", "0", "--format", "jsonl"])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn seq_of(events: &[AuditEvent], pick: impl Fn(&AuditKind) -> bool) -> Option<u64> {
    events.iter().find(|e| pick(&e.kind)).map(|e| e.seq)
}

/// Deletes session `id` from a stopped bastiond's store: everything keyed by it in sled, and
/// its segment files.
fn delete_session(store: &Path, db: &sled::Db, id: u64) {
    db.open_tree("sessions")
        .unwrap()
        .remove(id.to_be_bytes())
        .unwrap()
        .expect("the session is stored");
    for tree in ["record_segments", "commands"] {
        let tree = db.open_tree(tree).unwrap();
        for key in tree.scan_prefix(id.to_be_bytes()).keys() {
            tree.remove(key.unwrap()).unwrap();
        }
    }
    let prefix = format!("{id:016x}-");
    let mut removed = 0;
    for entry in std::fs::read_dir(store.join("segments")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        {
            std::fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "session {id} has segment files");
}

#[test]
fn verify_with_anchors_names_a_deleted_session_and_a_cut_tail() {
    let lab = Lab::up().unwrap();
    let config = &lab.info().bastiond.config;
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        format!("{text}\n[audit]\nanchor_interval_secs = 1\n"),
    )
    .unwrap();
    let mut b = lab.start_bastiond().unwrap();
    lab.enroll_alice(&b).unwrap();
    for _ in 0..2 {
        let out = lab
            .ssh_via_bastion("root@web1", &[])
            .unwrap()
            .arg("echo recorded")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Both sessions ended on the stream, and an anchor after the second end.
    let (deleted, cut_from) = eventually("both ends anchored", LIMIT, || {
        let events = stream(&b);
        let ended: Vec<(u64, u64)> = events
            .iter()
            .filter_map(|e| match e.kind {
                AuditKind::SessionEnded { session, .. } => Some((session, e.seq)),
                _ => None,
            })
            .collect();
        let &[(first, _), (second, second_end)] = ended.as_slice() else {
            return None;
        };
        seq_of(
            &events,
            |k| matches!(k, AuditKind::Anchor { at_seq, .. } if *at_seq >= second_end),
        )?;
        let second_start = seq_of(
            &events,
            |k| matches!(k, AuditKind::SessionStarted { session, .. } if *session == second),
        )?;
        Some((first, second_start))
    })
    .unwrap();

    let dir = lab.info().run_dir.join("anchors");
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("audit.jsonl");
    b.ctl_ok(&[
        "audit",
        "--after",
        "0",
        "--format",
        "jsonl",
        "--output",
        export.to_str().unwrap(),
    ])
    .unwrap();
    let anchors = ["verify", "--all", "--anchors", export.to_str().unwrap()];

    // The intact store passes against its own export.
    let clean = b.ctl(&anchors).unwrap();
    let text = String::from_utf8_lossy(&clean.stdout).into_owned();
    assert!(
        clean.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(
        text.contains("signed anchors") && !text.contains("TAMPERED"),
        "{text}"
    );
    // A sealed file is only checked against a key the auditor brings.
    let no_key = b
        .ctl(&["verify", "--file", export.to_str().unwrap()])
        .unwrap();
    assert!(!no_key.status.success());
    assert!(
        String::from_utf8_lossy(&no_key.stderr).contains("--key"),
        "{}",
        String::from_utf8_lossy(&no_key.stderr)
    );

    assert!(b.stop().unwrap(), "bastiond stops cleanly");
    let store = &lab.info().bastiond.store;
    {
        let db = sled::open(store).unwrap();
        delete_session(store, &db, deleted);
        let audit = db.open_tree("audit").unwrap();
        for key in audit.range(cut_from.to_be_bytes()..).keys() {
            audit.remove(key.unwrap()).unwrap();
        }
        db.flush().unwrap();
    }
    // bastionctl verifies through bastiond: it starts again on the edited store (and goes on
    // writing the stream from where it was cut).
    let b = lab.start_bastiond().unwrap();
    let out = b.ctl(&anchors).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "tampering must fail verify: {text}");
    assert!(
        text.contains(&format!("session {deleted} deleted")),
        "the deleted session is named: {text}"
    );
    assert!(
        text.contains(&format!("audit tail cut or store rolled back: the store's stream matches the export only up to seq {}", cut_from - 1)),
        "the cut is named: {text}"
    );
    // Without the export, the store still gives the deleted session away: its start and end
    // are on the stream it kept.
    let alone = b.ctl(&["verify", "--all"]).unwrap();
    let text = String::from_utf8_lossy(&alone.stdout).into_owned();
    assert!(!alone.status.success(), "{text}");
    assert!(
        text.contains(&format!("session {deleted} deleted")),
        "{text}"
    );
}
