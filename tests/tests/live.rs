//! Live sessions: an administrator watches what the user sees, read-only, and kills the
//! session with a reason the user is shown; the kill is audited and the record still seals.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;

use bastion_lab::{
    Lab,
    wait::{Collected, LIMIT, eventually},
};

mod common;

#[test]
fn watch_shows_live_output_and_kill_ends_the_session_with_its_reason() {
    let (lab, b) = Lab::with_alice().unwrap();
    let mut user = lab.interactive("root@web1", &[]).unwrap();
    user.send(b"echo watch-me-$((40+2)); sleep 60\n").unwrap();
    let id = eventually("a live session", LIMIT, || {
        common::live_sessions(&b).first().map(|s| s.id)
    })
    .unwrap()
    .to_string();
    assert!(
        b.ctl(&["session", "kill", "999999", "--reason", "x"])
            .map(|o| String::from_utf8_lossy(&o.stderr).contains("session 999999 is not live"))
            .unwrap(),
        "killing what is not live says so"
    );

    let mut watcher =
        bastion_lab::bastiond::ctl_command(&lab.info().bastiond, &["session", "watch", &id])
            .unwrap()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    // The watcher sees what the user sees, live (before the session ends).
    let watched = Collected::spawn(watcher.stdout.take().unwrap());
    watched.wait_for("watch-me-42", LIMIT).unwrap();
    b.ctl_ok(&["session", "kill", &id, "--reason", "maintenance window"])
        .unwrap();

    user.wait_exit().unwrap();
    let said = format!("{}{}", user.output(), user.errors());
    assert!(
        said.contains("bastion: session killed by an administrator: maintenance window"),
        "{said}"
    );
    // The watch ends with the session.
    let status = watcher.wait_with_output().unwrap().status;
    assert!(status.success(), "watch output: {}", watched.text());

    let audit = b.ctl_ok(&["audit"]).unwrap();
    assert!(
        audit.contains(&format!("session {id} killed: maintenance window")),
        "{audit}"
    );
    let mut verdict = String::new();
    // Not seen sealed in time: the assertion below shows the verdict.
    let _ = eventually("the killed session sealed", LIMIT, || {
        verdict = b.ctl_ok(&["verify", &id]).unwrap();
        verdict.contains("SEALED").then_some(())
    });
    assert!(
        verdict.contains(&format!("session {id:<8} SEALED")),
        "{verdict}"
    );
    let shown = b.ctl_ok(&["session", "show", &id]).unwrap();
    assert!(shown.contains("killed by an administrator"), "{shown}");
}
