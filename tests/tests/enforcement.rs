//! eBPF enforcement end to end: real kernel hooks on a lab cgroup, a real sshd behind them.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bastion_lab::Lab;
use serde_json::Value;

const WEB1: &str = "203.0.113.10";
const WEB2: &str = "203.0.113.11";
const EPERM_EXIT: i32 = 2;
const REFUSED_EXIT: i32 = 3;

fn connect(lab: &Lab, args: &[&str]) -> (i32, String) {
    let out = lab.try_connect(args).expect("lab-connect runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

fn assert_eperm(lab: &Lab, args: &[&str]) {
    let (code, out) = connect(lab, args);
    assert_eq!(
        code, EPERM_EXIT,
        "{args:?} should be refused with EPERM, got: {out}"
    );
    assert!(out.contains("Operation not permitted"), "{out}");
}

fn status_json(b: &bastion_lab::bastiond::Bastiond) -> Value {
    let out = b.ctl(&["status", "--json"]).expect("bastionctl runs");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

fn probe_ok(b: &bastion_lab::bastiond::Bastiond, addr: &str) {
    let out = b.ctl(&["probe", addr]).expect("bastionctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe {addr} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SSH-2.0-OpenSSH"),
        "no sshd banner: {stdout}"
    );
}

#[test]
fn protected_hosts_are_refused_to_everyone_but_bastiond() {
    let lab = Lab::up().expect("lab");
    // Before bastiond runs, nothing is enforced: the same connect reaches sshd. This is what makes
    // the EPERM below attributable to bastiond's programs and nothing else.
    let (code, out) = connect(&lab, &[WEB1, "22"]);
    assert_eq!(code, 0, "without bastiond the lab must connect: {out}");
    assert!(out.contains("SSH-2.0-OpenSSH"), "{out}");

    let bastiond = lab.start_bastiond().expect("bastiond starts");
    assert_eperm(&lab, &[WEB1, "22"]);
    assert_eperm(&lab, &[WEB2, "22"]);
    assert_eperm(&lab, &["::ffff:203.0.113.10", "22"]);
    assert_eperm(&lab, &["--udp", WEB1, "53"]);
    assert_eperm(&lab, &["--udp", "::ffff:203.0.113.11", "53"]);
    // Not protected: the connect goes through to the kernel (refused there, no listener).
    let (code, out) = connect(&lab, &["198.51.100.10", "22"]);
    assert_eq!(
        code, REFUSED_EXIT,
        "unprotected address must not be blocked: {out}"
    );

    // bastiond itself, in its own cgroup, reaches both sshds.
    probe_ok(&bastiond, &format!("{WEB1}:22"));
    probe_ok(&bastiond, &format!("{WEB2}:22"));

    let s = status_json(&bastiond);
    let e = &s["enforcement"];
    assert_eq!(
        e["protected_subnets"],
        serde_json::json!(["203.0.113.0/24"])
    );
    let hooks: Vec<(&str, &str)> = e["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .map(|h| {
            (
                h["program"].as_str().unwrap_or(""),
                h["link"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        hooks,
        [
            ("connect4", "attached"),
            ("connect6", "attached"),
            ("sendmsg4", "attached"),
            ("sendmsg6", "attached"),
            ("setsockopt", "attached"),
            ("egress on prot0", "attached"),
        ]
    );
    assert!(e["denied"].as_u64().unwrap_or(0) >= 5, "{e}");
    assert!(e["allowed"].as_u64().unwrap_or(0) >= 2, "{e}");
}

#[test]
fn enforcement_holds_after_kill9_and_restart_adopts_without_a_gap() {
    let lab = Lab::up().expect("lab");
    let mut bastiond = lab.start_bastiond().expect("bastiond starts");
    assert_eperm(&lab, &[WEB1, "22"]);

    bastiond.kill9().expect("kill -9");
    assert_eperm(&lab, &[WEB1, "22"]);
    assert_eperm(&lab, &["::ffff:203.0.113.10", "22"]);
    let out = bastiond.ctl(&["status"]).expect("bastionctl runs");
    assert!(!out.status.success());

    // Hammer the hook while a new bastiond adopts the pins: not one attempt may get through.
    let restarting = Arc::new(AtomicBool::new(true));
    let prober = {
        let restarting = restarting.clone();
        let lab_connect = bastion_lab::sys::bin("lab-connect").expect("lab-connect built");
        let ns = lab.name().netns("bastion");
        let clients = lab.name().clients_cgroup();
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            let t0 = Instant::now();
            // Bounded: stops when the restart is over, after 2000 attempts, or after 60 s.
            while (restarting.load(Ordering::SeqCst) || codes.is_empty())
                && codes.len() < 2000
                && t0.elapsed() < Duration::from_secs(60)
            {
                let out = bastion_lab::sys::command_in(&lab_connect, Some(&ns), &clients)
                    .expect("command")
                    .args([WEB1, "22"])
                    .output()
                    .expect("lab-connect runs");
                codes.push(out.status.code().unwrap_or(-1));
            }
            codes
        })
    };
    let bastiond = lab.start_bastiond().expect("bastiond restarts");
    restarting.store(false, Ordering::SeqCst);
    let codes = prober.join().expect("prober thread");
    assert!(
        codes.iter().all(|c| *c == EPERM_EXIT),
        "a connect got through during restart: {codes:?}"
    );
    eprintln!("{} connects during the restart, all refused", codes.len());

    let s = status_json(&bastiond);
    for hook in s["enforcement"]["hooks"].as_array().expect("hooks") {
        assert_eq!(hook["link"], "adopted", "{hook}");
    }
    // Counters live in pinned maps: they carry across the restart.
    assert!(s["enforcement"]["denied"].as_u64().unwrap_or(0) >= 3, "{s}");
    probe_ok(&bastiond, &format!("{WEB1}:22"));
    assert_eperm(&lab, &[WEB1, "22"]);
}

#[test]
fn forwarded_traffic_to_protected_hosts_is_dropped_even_after_kill9() {
    let lab = Lab::up().expect("lab");
    let lab_connect = bastion_lab::sys::bin("lab-connect").unwrap();
    // From the admin host, routed through the appliance (no local socket on the bastion). The
    // lab's admin host shares this kernel, so its client runs outside the cgroup hooks, as a
    // separate machine would: only the egress program can stop it.
    let routed = |lab: &Lab, port: &str| {
        let out = lab
            .command_unenforced("admin", &lab_connect)
            .unwrap()
            .args(["--timeout", "2", WEB1, port])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(
        routed(&lab, "22").contains("SSH-2.0-OpenSSH"),
        "without bastiond the router forwards"
    );
    assert!(
        routed(&lab, "80").contains("refused"),
        "and web1 itself answers on a closed port"
    );

    let mut bastiond = lab.start_bastiond().expect("bastiond");
    let got = routed(&lab, "80");
    assert!(
        got.contains("timed out"),
        "forwarded SYN must be dropped: {got}"
    );
    let got = routed(&lab, "22");
    assert!(
        got.starts_with("connected SSH-2.0-") && !got.contains("OpenSSH"),
        "SSH is intercepted: bastiond answers, not web1's sshd: {got}"
    );
    // bastiond's own sessions to the same host still pass the same interface.
    let out = bastiond.ctl(&["probe", "203.0.113.10:22"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SSH-2.0-OpenSSH"));

    bastiond.kill9().unwrap();
    let got = routed(&lab, "80");
    assert!(
        got.contains("timed out"),
        "still dropped with bastiond dead: {got}"
    );
    let got = routed(&lab, "22");
    assert!(
        !got.contains("OpenSSH") && !got.starts_with("connected"),
        "SSH fails closed while bastiond is dead: {got}"
    );
}
