//! The archive, end to end, against a real three-node Garage cluster (replication factor 3)
//! in the lab, and the audit stream to a real rsyslog.
//!
//! One appliance archives sessions (one of them large enough for a multipart upload, with
//! incompressible output) and deletes each local copy only after its remote copy was read
//! back and verified; keeps archiving with one Garage node killed; holds 20 sessions through a
//! minute with the whole cluster down and a bastiond crash in the middle, then archives them all.
//! An auditor's machine, with read credentials and the audit public key only, verifies the
//! archive, finds a tampered and a deleted object, tells two appliances sharing the bucket
//! apart, and replays and searches archived sessions.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use bastion_core::{
    audit::{AuditEvent, AuditKind},
    protocol::{ArchiveStatus, Response},
};
use bastion_lab::{
    Lab,
    bastiond::{self, Bastiond, BastiondPaths},
    services::{self, Garage, Rsyslog},
    sys,
    wait::{LIMIT, eventually},
};

mod common;

fn status(b: &Bastiond) -> Option<ArchiveStatus> {
    match common::try_ctl_json(b, &["archive", "status"]).ok()? {
        Response::ArchiveStatus(s) => Some(s),
        _ => None,
    }
}

fn stream(b: &Bastiond) -> Vec<AuditEvent> {
    b.ctl_ok(&["audit", "--after", "0", "--format", "jsonl"])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One recorded session running `command` on web1.
fn session(lab: &Lab, command: &str) {
    let out = lab
        .ssh_via_bastion("root@web1", &[])
        .unwrap()
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until nothing is pending and at least `archived` sessions went since start.
fn drained(b: &Bastiond, archived: u64, limit: Duration) -> ArchiveStatus {
    eventually("the archive queue drained", limit, || {
        status(b).filter(|s| s.pending == 0 && s.archived_sessions >= archived)
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}\n{}", status(b), b.log_tail()))
}

/// The backlog alert's free-space level: above any disk the lab runs on, so that it is raised
/// as soon as records wait on a failing archive.
const ALERT_MB: u64 = 1 << 40;

/// Writes bastiond's config for `paths` with archiving to `garage` as `appliance`; local copies
/// are deleted about a second after they are archived (when retention may).
fn configure(lab: &Lab, paths: &BastiondPaths, garage: &Garage, appliance: &str) {
    bastiond::write_config(lab.name(), paths).unwrap();
    let text = std::fs::read_to_string(&paths.config)
        .unwrap()
        .replace("[store]\n", "[store]\nretention_days = 0.00001\n");
    std::fs::write(
        &paths.config,
        format!(
            "{text}\n[audit]\nanchor_interval_secs = 1\n\n{}part_mb = 5\nalert_free_mb = {ALERT_MB}\n",
            garage.archive_config(appliance)
        ),
    )
    .unwrap();
}

/// `bastionctl archive ARGS` on the auditor's machine (no bastiond, no store there).
fn auditor(lab: &Lab, garage: &Garage, args: &[&str]) -> (bool, String) {
    let mut cmd = lab
        .command_unenforced("auditor", sys::bin("bastionctl").unwrap())
        .unwrap();
    let (sub, rest) = args.split_first().unwrap();
    cmd.args(["archive", sub])
        .args(garage.bucket_args())
        .args(rest);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `archive verify --appliance APPLIANCE --key KEY [extra...]` on the auditor's machine.
fn verify(
    lab: &Lab,
    garage: &Garage,
    appliance: &str,
    key: &Path,
    extra: &[&str],
) -> (bool, String) {
    let key = key.to_str().unwrap();
    let args = [
        &["verify", "--appliance", appliance, "--key", key][..],
        extra,
    ]
    .concat();
    auditor(lab, garage, &args)
}

fn audit_key(b: &Bastiond, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.pub"));
    std::fs::write(&path, b.ctl_ok(&["ca", "show", "--audit-key"]).unwrap()).unwrap();
    path
}

/// `lab-load s3-* ...` from the auditor's machine, as someone with write access to the bucket.
fn s3(lab: &Lab, garage: &Garage, args: &[&str]) {
    let mut cmd = lab
        .command_unenforced("auditor", sys::bin("lab-load").unwrap())
        .unwrap();
    cmd.arg(args[0])
        .arg(&garage.credentials)
        .arg(&garage.endpoint)
        .arg("s3://bastion-archive/lab")
        .args(&args[1..]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sessions_are_archived_verified_and_kept_through_node_loss_outage_and_crash() {
    let lab = Lab::up().unwrap();
    services::create(lab.name()).unwrap();
    let mut garage = Garage::start(&lab).unwrap();
    let paths = lab.info().bastiond.clone();
    configure(&lab, &paths, &garage, "edge-a");
    let mut b = lab.start_bastiond().unwrap();
    lab.enroll_alice(&b).unwrap();
    let dir = lab.info().run_dir.join("archive-test");
    std::fs::create_dir_all(&dir).unwrap();
    let key_a = audit_key(&b, &dir, "edge-a");

    // Three small sessions and one of ~16 MB of base64 over random bytes (multipart).
    for i in 0..3 {
        session(&lab, &format!("echo archived-{i}"));
    }
    session(&lab, "head -c 12000000 /dev/urandom | base64");
    let s = drained(&b, 4, LIMIT);
    assert!(s.last_rate_bytes_per_sec > 0, "{s:?}");
    // The archiver's threads yield to live sessions (and only they: the rest keep their
    // priority).
    let threads = b.threads();
    let archiver: Vec<_> = threads.iter().filter(|(n, _)| n == "archiver").collect();
    assert!(!archiver.is_empty(), "{threads:?}");
    assert!(
        threads
            .iter()
            .all(|(n, nice)| (n == "archiver") == (*nice == 19)),
        "{threads:?}"
    );

    // One node down: replication keeps serving.
    garage.kill_node(2).unwrap();
    for i in 3..6 {
        session(&lab, &format!("echo archived-{i}"));
    }
    drained(&b, 7, LIMIT);
    garage.start_node(&lab, 2).unwrap();
    garage.wait_up(&lab).unwrap();
    eventually("local copies deleted once archived", LIMIT, || {
        common::sessions(&b).is_empty().then_some(())
    })
    .unwrap();

    // The whole cluster down for a minute, 20 sessions and a bastiond crash meanwhile.
    for i in 0..3 {
        garage.kill_node(i).unwrap();
    }
    let down = Instant::now();
    for i in 6..26 {
        session(&lab, &format!("echo archived-{i}"));
    }
    let s = eventually("20 sessions waiting, with the error", LIMIT, || {
        status(&b).filter(|s| s.pending == 20 && s.retrying > 0 && s.last_error.is_some())
    })
    .unwrap();
    assert!(s.pending_bytes > 0, "{s:?}");
    b.kill9().unwrap();
    let b = lab.start_bastiond().unwrap();
    let waiting = eventually("the queue after a crash", LIMIT, || {
        status(&b).filter(|s| s.retrying > 0)
    })
    .unwrap();
    assert_eq!(
        waiting.pending, 20,
        "the queue survives a crash: {waiting:?}"
    );
    // Not one of them was deleted locally while its archive copy could not be verified.
    assert_eq!(common::sessions(&b).len(), 20);
    std::thread::sleep(Duration::from_secs(60).saturating_sub(down.elapsed()));
    assert_eq!(common::sessions(&b).len(), 20);
    for i in 0..3 {
        garage.start_node(&lab, i).unwrap();
    }
    garage.wait_up(&lab).unwrap();
    drained(&b, 20, LIMIT);
    eventually("local copies deleted once archived", LIMIT, || {
        common::sessions(&b).is_empty().then_some(())
    })
    .unwrap();

    // Every local deletion came after the verified archive copy was audited (the deletions'
    // event follows the deletions themselves: looked at until all 27 are on the stream).
    eventually("every deletion audited", LIMIT, || {
        let mut archived = std::collections::BTreeSet::new();
        let mut expired = 0;
        for e in &stream(&b) {
            match &e.kind {
                AuditKind::SessionArchived { session, .. } => {
                    archived.insert(*session);
                }
                AuditKind::SessionsExpired { sessions, .. } => {
                    for s in sessions {
                        assert!(archived.contains(s), "session {s} deleted before archived");
                        expired += 1;
                    }
                }
                _ => {}
            }
        }
        ((archived.len(), expired) == (27, 27)).then_some(())
    })
    .unwrap();
    // The outage raised the backlog ALERT with its figures, and its end cleared it (on the
    // archiver's next look after the queue drained).
    eventually("the backlog alert raised, then cleared", LIMIT, || {
        let events = stream(&b);
        let alert = events.iter().position(|e| {
            matches!(&e.kind, AuditKind::ArchiveBacklog { pending, pending_bytes, last_error, .. }
            if *pending > 0 && *pending_bytes > 0 && !last_error.is_empty())
        })?;
        events[alert..]
            .iter()
            .any(|e| matches!(e.kind, AuditKind::ArchiveRecovered { .. }))
            .then_some(())
    })
    .unwrap();

    // The auditor: every object verifies against the appliance's key.
    let (ok, out) = verify(&lab, &garage, "edge-a", &key_a, &[]);
    assert!(ok, "{out}");
    assert_eq!(out.matches(" SEALED ").count(), 27, "{out}");
    assert!(out.contains("0 findings"), "{out}");
    // A time range holds only the sessions that started in it.
    let (ok, out) = verify(&lab, &garage, "edge-a", &key_a, &["--since", "2099-01-01"]);
    assert!(
        ok && out.contains("0 sessions checked, 0 findings"),
        "{out}"
    );

    // A second appliance, its own keys, the same bucket.
    drop(b);
    let paths_b = BastiondPaths::in_dir(lab.name(), "bastiond-b");
    configure(&lab, &paths_b, &garage, "edge-b");
    let b2 = Bastiond::start(lab.name(), &paths_b).unwrap();
    lab.enroll_alice(&b2).unwrap();
    let key_b = audit_key(&b2, &dir, "edge-b");
    session(&lab, "echo from-edge-b");
    drained(&b2, 1, LIMIT);
    let (ok, out) = auditor(&lab, &garage, &["list"]);
    assert!(ok && out.contains("edge-a\nedge-b"), "{out}");
    let (ok, out) = verify(&lab, &garage, "edge-b", &key_b, &[]);
    assert!(ok && out.matches(" SEALED ").count() == 1, "{out}");
    let (ok, out) = verify(&lab, &garage, "edge-a", &key_b, &[]);
    assert!(
        !ok && out.matches(" TAMPERED ").count() == 27,
        "another appliance's key: {out}"
    );
    let (ok, out) = auditor(&lab, &garage, &["search", "echo archived-1"]);
    assert!(
        ok && out.contains("edge-a") && out.contains("archived-1"),
        "{out}"
    );

    // Replay and fetch straight from the archive.
    let (ok, listing) = auditor(&lab, &garage, &["list", "--appliance", "edge-a"]);
    assert!(ok, "{listing}");
    let objects: Vec<(u64, String)> = listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "session").then_some(())?;
            let id = w.next()?.parse().ok()?;
            Some((id, w.last()?.to_owned()))
        })
        .collect();
    assert_eq!(objects.len(), 27, "{listing}");
    let (played, _) = &objects[0];
    let (ok, out) = auditor(
        &lab,
        &garage,
        &[
            "play",
            "--appliance",
            "edge-a",
            &played.to_string(),
            "--no-wait",
        ],
    );
    assert!(ok && out.contains("archived-0"), "{out}");
    let (tampered, tampered_key) = &objects[1];
    let (deleted, deleted_key) = &objects[2];
    let fetched = dir.join("fetched.bsa");
    let (ok, out) = auditor(
        &lab,
        &garage,
        &[
            "fetch",
            "--appliance",
            "edge-a",
            &tampered.to_string(),
            "--output",
            fetched.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let verified = b2
        .ctl(&[
            "verify",
            "--file",
            fetched.to_str().unwrap(),
            "--key",
            key_a.to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );

    // Someone with write access changes one object and deletes another.
    let mut bytes = std::fs::read(&fetched).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x20;
    let edited = dir.join("edited.bsa");
    std::fs::write(&edited, bytes).unwrap();
    s3(
        &lab,
        &garage,
        &["s3-put", tampered_key, edited.to_str().unwrap()],
    );
    s3(&lab, &garage, &["s3-delete", deleted_key]);
    let (ok, out) = verify(&lab, &garage, "edge-a", &key_a, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "FINDING session {tampered}: {tampered_key} TAMPERED"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "FINDING session {deleted}: {deleted_key} is missing"
        )),
        "{out}"
    );
    assert!(out.contains("2 findings"), "{out}");
}

#[test]
fn the_audit_stream_reaches_rsyslog_with_no_gap_across_a_receiver_restart() {
    let lab = Lab::up().unwrap();
    services::create(lab.name()).unwrap();
    let mut rsyslog = Rsyslog::start(&lab).unwrap();
    let config = &lab.info().bastiond.config;
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        format!(
            "{text}\n[syslog]\ntcp = \"{}:{}\"\nhostname = \"edge-a\"\nretry_max_secs = 1\n",
            services::addr("syslog"),
            services::SYSLOG_PORT
        ),
    )
    .unwrap();
    let b = lab.start_bastiond().unwrap();
    // Policy changes (each an audit event) keep coming while the receiver restarts.
    let writer = {
        let paths = b.paths.clone();
        std::thread::spawn(move || {
            for i in 0..150 {
                let out = bastiond::ctl(&paths, &["group", "add", &format!("g{i}")]).unwrap();
                assert!(out.status.success());
            }
        })
    };
    eventually("the first events received", LIMIT, || {
        (rsyslog.seqs().len() > 20).then_some(())
    })
    .unwrap();
    rsyslog.stop().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    rsyslog.restart(&lab).unwrap();
    writer.join().unwrap();
    let last = stream(&b).last().unwrap().seq;
    let got = eventually("every event up to the last one received", LIMIT, || {
        let seqs = rsyslog.seqs();
        (1..=last).all(|s| seqs.contains(&s)).then_some(seqs)
    })
    .unwrap_or_else(|e| panic!("{e:#}: got {:?}", rsyslog.seqs()));
    assert!(got.len() as u64 >= last);
    let lines = std::fs::read_to_string(&rsyslog.received).unwrap();
    let first = lines.lines().next().unwrap();
    assert!(
        first.starts_with("<85>1 ") && first.contains(" edge-a bastiond - "),
        "RFC 5424 as sent: {first}"
    );
}
