//! Live sessions: an administrator watches what the user sees, read-only, and kills the
//! session with a reason the user is shown; the kill is audited and the record still seals.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{io::Write, process::Stdio};

use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    wait::{Collected, LIMIT},
};

fn live_session(b: &Bastiond) -> Option<u64> {
    let v: serde_json::Value =
        serde_json::from_str(&b.ctl_ok(&["--json", "session", "list", "--live"]).unwrap()).unwrap();
    v["sessions"][0]["id"].as_u64()
}

#[test]
fn watch_shows_live_output_and_kill_ends_the_session_with_its_reason() {
    let lab = Lab::up().expect("lab");
    let b = lab.start_bastiond().expect("bastiond");
    lab.enroll_alice(&b).unwrap();
    let mut user = lab
        .ssh_via_bastion("root@web1", &["-tt"])
        .unwrap()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = user.stdin.take().unwrap();
    stdin
        .write_all(b"echo watch-me-$((40+2)); sleep 60\n")
        .unwrap();
    let mut id = None;
    let start = std::time::Instant::now();
    while start.elapsed() < LIMIT {
        id = live_session(&b);
        if id.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let id = id.expect("a live session").to_string();
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

    let out = user.wait_with_output().unwrap();
    drop(stdin);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    let start = std::time::Instant::now();
    while start.elapsed() < LIMIT {
        verdict = b.ctl_ok(&["verify", &id]).unwrap();
        if verdict.contains("SEALED") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        verdict.contains(&format!("session {id:<8} SEALED")),
        "{verdict}"
    );
    let shown = b.ctl_ok(&["session", "show", &id]).unwrap();
    assert!(shown.contains("killed by an administrator"), "{shown}");
}
