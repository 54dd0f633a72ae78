//! Crash safety: bastiond is killed with SIGKILL at random moments while 50 recorded sessions
//! stream output, 10 times over the same store. Each time the store opens, every sealed
//! session verifies, the interrupted ones are marked, every audit event that was acknowledged
//! before the kill is still there unchanged, and what a killed session recorded is an unbroken
//! prefix of what it printed.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use bastion_core::{
    audit::AuditEvent, integrity::Status, protocol::Response, session::SessionState,
};
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    wait::{LIMIT, eventually},
};

mod common;

// Ten kills over the same store keep CI within its time (each round is ~13 s with 50 sessions).
const ROUNDS: usize = 10;
const SESSIONS: usize = 50;

/// A cheap deterministic pseudo-random sequence (the kill moments), seeded per run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// Waits (bounded) until `n` sessions are live; returns how many were live at the last look
/// (fewer than `n` when not all went live in time: the round goes on with those) and the last
/// listing error. A listing that fails (bastiond too busy to answer in bastionctl's time while
/// 50 sessions start) is only a poll that saw nothing.
fn wait_live(b: &Bastiond, n: usize) -> (usize, Option<String>) {
    let mut live = 0;
    let mut error = None;
    let _ = eventually(&format!("{n} live sessions"), LIMIT, || {
        live = match common::try_sessions_where(b, &["--live"]) {
            Ok(s) => s.len(),
            Err(e) => {
                error = Some(format!("{e:#}"));
                0
            }
        };
        (live >= n).then_some(())
    });
    (live, error)
}

/// The output lines `line-N` a session recorded, in order.
fn recorded_lines(b: &Bastiond, id: u64) -> Vec<u64> {
    let cast = b.ctl_ok(&["session", "export", &id.to_string()]).unwrap();
    let mut text = String::new();
    for l in cast.lines().skip(1) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v[1] == "o" {
            text.push_str(v[2].as_str().unwrap());
        }
    }
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("line-"))
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[test]
fn repeated_kills_during_fifty_sessions_lose_nothing_that_was_flushed() {
    let (lab, mut b) = Lab::with_alice().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Lcg(seed);
    println!("kill moments seeded with {seed}");
    let mut interrupted_total = 0;
    let first_stderr = lab.info().run_dir.join("client0.stderr");
    for round in 0..ROUNDS {
        let clients: Vec<Child> = (0..SESSIONS)
            .map(|i| {
                // The first client's complaints are kept for a round where nothing goes live.
                let stderr = if i == 0 {
                    Stdio::from(std::fs::File::create(&first_stderr).unwrap())
                } else {
                    Stdio::null()
                };
                lab.ssh_via_bastion("root@web1", &[])
                    .unwrap()
                    // One process a session (a shell loop forking `sleep` 50 times a second
                    // in each of 50 sessions was most of the test's CPU).
                    .arg("perl -e '$|=1; for my $i (0..99999) { print \"line-$i\\n\"; select(undef, undef, undef, 0.02) }'")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .spawn()
                    .unwrap()
            })
            .collect();
        let (live, error) = wait_live(&b, SESSIONS);
        // A bastiond that stopped answering: its threads, where gdb is installed, say where.
        let threads = if live == 0 {
            b.pid()
                .and_then(|pid| {
                    std::process::Command::new("gdb")
                        .args([
                            "-p",
                            &pid.to_string(),
                            "-batch",
                            "-ex",
                            "thread apply all bt 25",
                        ])
                        .output()
                        .ok()
                })
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        assert!(
            live > 0,
            "round {round}: no session went live; last listing error: {error:?}\n\
             first client's stderr: {}\nbastiond's log:\n{}\nbastiond's threads:\n{threads}",
            std::fs::read_to_string(&first_stderr).unwrap_or_default(),
            b.log_tail()
        );
        // What the audit stream acknowledged just before the kill.
        let before = match common::ctl_json(&b, &["audit", "--limit", "1"]) {
            Response::Audit { events } => events[0].clone(),
            other => panic!("audit answered {other:?}"),
        };
        // A random moment to kill at: pacing, not a wait for anything.
        std::thread::sleep(Duration::from_millis(rng.next(1500)));
        b.kill9().unwrap();
        for mut c in clients {
            // The clients lose their connection with bastiond.
            let _ = c.kill();
            let _ = c.wait();
        }

        b = lab.start_bastiond().expect("the store opens after a kill");
        let seq = before.seq;
        let again = b
            .ctl_ok(&[
                "audit",
                "--after",
                &(seq - 1).to_string(),
                "--format",
                "jsonl",
            ])
            .unwrap();
        let first: AuditEvent = serde_json::from_str(again.lines().next().unwrap()).unwrap();
        assert_eq!(first.seq, before.seq, "round {round}");
        assert_eq!(first.kind, before.kind, "round {round}");
        assert_eq!(
            first.chain, before.chain,
            "round {round}: {first:?} vs {before:?}"
        );

        let verify = b.ctl(&["--json", "verify", "--all"]).unwrap();
        let report: Response = serde_json::from_slice(&verify.stdout).unwrap();
        assert!(verify.status.success(), "round {round}: {report:?}");
        let Response::Verify {
            sessions, audit, ..
        } = &report
        else {
            panic!("round {round}: verify answered {report:?}")
        };
        assert!(audit.broken.is_none(), "round {round}: {report:?}");
        let status = |s: Status| sessions.iter().filter(|x| x.status == s).count();
        assert_eq!(status(Status::Tampered), 0, "round {round}: {report:?}");
        let unsealed: Vec<u64> = sessions
            .iter()
            .filter(|x| x.status == Status::Unsealed)
            .map(|x| x.session)
            .collect();
        assert_eq!(
            status(Status::Sealed) + unsealed.len(),
            sessions.len(),
            "round {round}: {report:?}"
        );
        assert!(
            unsealed.len() >= interrupted_total + live.min(1),
            "round {round}: the killed sessions are marked interrupted: {report:?}"
        );
        interrupted_total = unsealed.len();
        // A killed session's record is an unbroken prefix of what it printed.
        let sample = unsealed[rng.next(unsealed.len() as u64) as usize];
        let lines = recorded_lines(&b, sample);
        for (i, n) in lines.iter().enumerate() {
            assert_eq!(*n, i as u64, "round {round}: session {sample} lost a line");
        }
    }
    let states: Vec<SessionState> = common::sessions(&b).iter().map(|s| s.state).collect();
    assert!(
        states
            .iter()
            .all(|s| *s == SessionState::Interrupted || *s == SessionState::Closed),
        "{states:?}"
    );
    println!(
        "{} sessions over {ROUNDS} kills; {} interrupted",
        states.len(),
        interrupted_total
    );
}
