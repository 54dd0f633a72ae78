//! The kernel's own packets for bastiond's upstream connections pass the default-deny egress
//! program: when bastiond has closed and the target's FIN comes later, bastiond's TIME_WAIT
//! socket's ACK leaves (or the target would sit in LAST_ACK, retransmitting); when the target
//! closes or resets a connection mid-session, the session ends at once and no socket is left
//! behind on either side.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use bastion_lab::Lab;

const WEB1: &str = "203.0.113.10";

/// TCP sockets in namespace `role` between the bastion's protected address and web1's sshd,
/// as `ss` shows them (state first), TIME_WAIT excluded (that one is the normal end).
fn upstream_sockets(lab: &Lab, role: &str) -> Vec<String> {
    sockets_to(lab, role, 22)
}

fn sockets_to(lab: &Lab, role: &str, port: u16) -> Vec<String> {
    let out = bastion_lab::sys::run(
        "ip",
        &["netns", "exec", &lab.name().netns(role), "ss", "-tanH"],
    )
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("{WEB1}:{port}")) && l.contains("203.0.113.1:"))
        .filter(|l| !l.starts_with("TIME-WAIT") && !l.starts_with("LISTEN"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Polls until neither side holds an upstream socket (bounded); returns what is left if not.
fn wait_no_sockets(lab: &Lab, within: Duration) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let mut left: Vec<String> = upstream_sockets(lab, "bastion")
            .into_iter()
            .map(|s| format!("bastion: {s}"))
            .collect();
        left.extend(
            upstream_sockets(lab, "web1")
                .into_iter()
                .map(|s| format!("web1: {s}")),
        );
        if left.is_empty() || t0.elapsed() > within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `ssh root@web1 sleep 30` through bastiond and waits until web1 runs it.
fn long_session(lab: &Lab) -> std::process::Child {
    let child = lab
        .ssh_via_bastion("root@web1", &["-T"])
        .unwrap()
        .arg("sleep 30")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while upstream_sockets(lab, "web1")
        .iter()
        .all(|s| !s.starts_with("ESTAB"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "session never reached web1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Signed in and running (the connection exists before the command starts).
    std::thread::sleep(Duration::from_millis(500));
    child
}

/// Waits (bounded) for the client to exit; returns how long that took.
fn client_ends(mut child: std::process::Child, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return t0.elapsed();
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            panic!("the client hung for {within:?} after the target side went away");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `command` in web1's namespace under a live session: the client must end promptly and
/// no upstream socket may stay on either side.
fn ended_by_target(lab: &Lab, how: &str, command: &[&str]) {
    let client = long_session(lab);
    let ns = lab.name().netns("web1");
    bastion_lab::sys::run("ip", &[&["netns", "exec", &ns], command].concat()).unwrap();
    let took = client_ends(client, Duration::from_secs(10));
    eprintln!("client ended {took:?} after the target {how} the connection");
    let left = wait_no_sockets(lab, Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "after the target {how} the connection: {left:?}"
    );
}

#[test]
fn closes_and_resets_from_either_side_leave_no_hung_session_or_socket() {
    let (lab, bastiond) = Lab::with_alice().expect("lab");

    // bastiond closes first and web1 a second later: by then bastiond's side is a TIME_WAIT
    // socket, and its ACK of web1's FIN is the kernel's packet, with no process behind it.
    let mut slow = lab
        .command_unenforced("web1", bastion_lab::sys::bin("lab-attack").unwrap())
        .unwrap()
        .args(["slow-close", "7100", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 10];
    std::io::Read::read_exact(slow.stdout.as_mut().unwrap(), &mut ready).unwrap();
    let banner = bastiond.ctl_ok(&["probe", "203.0.113.10:7100"]).unwrap();
    assert!(banner.contains("lab-slow"), "{banner}");
    let t0 = Instant::now();
    let left = loop {
        // Give web1 its second, then the FIN/ACK exchange.
        std::thread::sleep(Duration::from_millis(200));
        let left = sockets_to(&lab, "web1", 7100);
        if (left.is_empty() && t0.elapsed() > Duration::from_millis(1500))
            || t0.elapsed() > Duration::from_secs(6)
        {
            break left;
        }
    };
    let _ = slow.kill();
    let _ = slow.wait();
    assert!(
        left.is_empty(),
        "web1 never got the ACK of its FIN from bastiond's TIME_WAIT socket: {left:?}"
    );

    // bastiond closes first in a session: nothing is left behind.
    let out = lab
        .ssh_via_bastion("root@web1", &["-T"])
        .unwrap()
        .arg("true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = wait_no_sockets(&lab, Duration::from_secs(5));
    assert!(left.is_empty(), "after a normal end: {left:?}");

    // web1 ends the session under the client (its sshd's session process is killed), then
    // resets one (its socket destroyed: the kernel sends a RST).
    ended_by_target(&lab, "closed", &["pkill", "-f", "^sleep 30$"]);
    ended_by_target(&lab, "reset", &["ss", "-K", "src", WEB1, "sport", "= :22"]);
}
