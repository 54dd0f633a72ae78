//! Every way past a protected link a process on the appliance might try — broadcast, multicast,
//! IPv6 link-local, a packet socket with and without qdisc bypass, AF_XDP — first shown to work
//! without bastiond (so the test can fail), then closed with bastiond up and again after
//! `kill -9`, and each attempt audited as a denied flow or a refused socket option.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use bastion_lab::{Lab, names::BASTION_PROTECTED_IF};

const EPERM_EXIT: i32 = 2;
/// One port per technique, so what reaches web1 names how it got there.
const BROADCAST: u16 = 7001;
const MULTICAST: u16 = 7002;
const PACKET: u16 = 7003;
const PACKET_BYPASS: u16 = 7004;
const LINK_LOCAL: u16 = 7005;
const LISTEN_SECS: &str = "12";

/// The IPv6 link-local address of `dev` in `role`'s namespace, once duplicate address
/// detection has finished.
fn link_local(lab: &Lab, role: &str, dev: &str) -> String {
    let ns = lab.name().netns(role);
    let t0 = Instant::now();
    loop {
        let out = bastion_lab::sys::run(
            "ip",
            &[
                "-n", &ns, "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
            ],
        )
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !text.contains("tentative")
            && let Some(addr) = text.split_whitespace().skip_while(|w| *w != "inet6").nth(1)
        {
            return addr.split('/').next().unwrap().to_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{role} {dev} has no usable link-local address: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What happened to each attempt: (technique, exit code, output), and the lines web1's
/// listener printed.
struct Round {
    attempts: Vec<(&'static str, i32, String)>,
    received: String,
}

impl Round {
    fn reached(&self, port: u16) -> bool {
        self.received.lines().any(|l| {
            l.starts_with(&format!("udp {port} ")) || l.starts_with(&format!("tcp {port} "))
        })
    }

    fn exit(&self, technique: &str) -> (i32, &str) {
        self.attempts
            .iter()
            .find(|(t, _, _)| *t == technique)
            .map(|(_, c, o)| (*c, o.as_str()))
            .unwrap()
    }
}

fn listener(lab: &Lab) -> Child {
    let bin = bastion_lab::sys::bin("lab-attack").unwrap();
    let ports = [BROADCAST, MULTICAST, PACKET, PACKET_BYPASS, LINK_LOCAL].map(|p| p.to_string());
    let mut child = lab
        .command_unenforced("web1", bin)
        .unwrap()
        .arg("listen")
        .arg(LISTEN_SECS)
        .args(&ports)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for "listening" before attacking.
    let mut first = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"listening\n");
    child
}

/// Every technique once, from the lab's clients cgroup on the bastion host.
fn round(lab: &Lab, link_local: &str) -> Round {
    let listen = listener(lab);
    let bin = bastion_lab::sys::bin("lab-attack").unwrap();
    let (b, m, p, pb, ll) = (
        BROADCAST.to_string(),
        MULTICAST.to_string(),
        PACKET.to_string(),
        PACKET_BYPASS.to_string(),
        LINK_LOCAL.to_string(),
    );
    let techniques: [(&str, Vec<&str>); 6] = [
        ("broadcast", vec!["broadcast", BASTION_PROTECTED_IF, &b]),
        ("multicast", vec!["multicast", BASTION_PROTECTED_IF, &m]),
        ("packet", vec!["packet", BASTION_PROTECTED_IF, &p]),
        (
            "packet-bypass",
            vec!["packet", BASTION_PROTECTED_IF, &pb, "--qdisc-bypass"],
        ),
        (
            "link-local",
            vec!["link-local", link_local, BASTION_PROTECTED_IF, &ll],
        ),
        ("xdp", vec!["xdp"]),
    ];
    let mut attempts = Vec::new();
    for (name, args) in techniques {
        let out = lab
            .command("bastion", &bin)
            .unwrap()
            .args(&args)
            .output()
            .unwrap();
        attempts.push((
            name,
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ));
    }
    // Give the last datagram time to arrive, then stop listening (bounded: LISTEN_SECS).
    std::thread::sleep(Duration::from_millis(500));
    let mut listen = listen;
    let _ = listen.kill();
    let out = listen.wait_with_output().unwrap();
    Round {
        attempts,
        received: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn assert_closed(r: &Round, when: &str) {
    for port in [BROADCAST, MULTICAST, PACKET, PACKET_BYPASS, LINK_LOCAL] {
        assert!(
            !r.reached(port),
            "{when}: something reached web1 on port {port}: {}\nattempts: {:?}",
            r.received,
            r.attempts
        );
    }
    // The options that skip tcx egress are refused outright, not just filtered later.
    for technique in ["packet-bypass", "xdp"] {
        let (code, out) = r.exit(technique);
        assert_eq!(code, EPERM_EXIT, "{when}: {technique} not refused: {out}");
    }
    let (code, out) = r.exit("link-local");
    assert_ne!(code, 0, "{when}: link-local TCP connected: {out}");
}

#[test]
fn no_way_past_a_protected_link_with_bastiond_up_or_killed() {
    let lab = Lab::up().expect("lab");
    // The bastion side needs its own link-local address to connect from.
    link_local(&lab, "bastion", BASTION_PROTECTED_IF);
    let link_local = link_local(&lab, "web1", "eth0");

    // Without bastiond every technique reaches web1 (AF_XDP needs no target to show it works):
    // this is what makes the refusals below bastiond's doing.
    let open = round(&lab, &link_local);
    for port in [BROADCAST, MULTICAST, PACKET, PACKET_BYPASS, LINK_LOCAL] {
        assert!(
            open.reached(port),
            "without bastiond port {port} must be reachable: {}\n{:?}",
            open.received,
            open.attempts
        );
    }
    assert_eq!(open.exit("xdp").0, 0, "{:?}", open.exit("xdp"));

    let mut bastiond = lab.start_bastiond().expect("bastiond starts");
    assert_closed(&round(&lab, &link_local), "bastiond up");
    bastiond.kill9().expect("kill -9");
    let killed = Instant::now();
    assert_closed(&round(&lab, &link_local), "bastiond killed");

    // The kernel kept every refusal in the pinned ring buffer: the next bastiond audits them.
    let bastiond = lab.start_bastiond().expect("bastiond restarts");
    let since = (std::time::SystemTime::now() - killed.elapsed() - Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let wanted: [(&str, &str); 5] = [
        ("egress", "255.255.255.255"),
        ("egress", "224.0.0.1"),
        ("egress", link_local.as_str()),
        ("setsockopt", "packet_qdisc_bypass"),
        ("setsockopt", "af_xdp"),
    ];
    let t0 = Instant::now();
    loop {
        let (flows, _) = common::flows(
            &bastiond,
            &["--denied", "--since", &since, "--limit", "500"],
        );
        let seen = |hook: &str, what: &str| {
            flows.iter().any(|f| {
                f.hook == hook && (f.proto == what || f.dst.is_some_and(|d| d.to_string() == what))
            })
        };
        let missing: Vec<_> = wanted.iter().filter(|(h, w)| !seen(h, w)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "not audited: {missing:?}; flows: {flows:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// As root would: a shell moves itself into bastiond's cgroup, then tries the protected host.
/// Returns its pid and lab-connect's exit code.
fn hijack(lab: &Lab) -> (u32, Option<i32>) {
    let procs = lab.name().bastiond_cgroup().join("cgroup.procs");
    let connect = bastion_lab::sys::bin("lab-connect").unwrap();
    let out = lab
        .command("bastion", "sh")
        .unwrap()
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && echo joined $$ && exec {} 203.0.113.10 22",
            procs.display(),
            connect.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("joined "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "did not join: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (pid, out.status.code())
}

/// Waits (bounded) until `pid`'s refusal is audited as a denied flow and as an ALERT.
fn wait_refused_and_alerted(bastiond: &bastion_lab::bastiond::Bastiond, pid: u32) {
    // Flows are audited once a second.
    let t0 = Instant::now();
    loop {
        let (flows, _) = common::flows(bastiond, &["--denied", "--dport", "22"]);
        let refused = flows.iter().any(|f| f.pid == Some(pid));
        let alerted = match common::ctl_json(bastiond, &["audit", "--limit", "500"]) {
            bastion_core::protocol::Response::Audit { events } => events.iter().any(|e| {
                matches!(&e.kind, bastion_core::audit::AuditKind::CgroupJoined { pid: p, .. } if *p == pid)
            }),
            other => panic!("audit answered {other:?}"),
        };
        if refused && alerted {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "pid {pid}: refusal audited {refused}, ALERT {alerted}; flows {flows:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = bastiond.ctl_ok(&["audit", "--limit", "500"]).unwrap();
    assert!(text.contains(&format!("ALERT pid {pid}")), "{text}");
}

#[test]
fn a_process_that_joins_bastionds_cgroup_is_refused_and_alerted() {
    let lab = Lab::up().expect("lab");
    let mut bastiond = lab.start_bastiond().expect("bastiond starts");
    let (pid, code) = hijack(&lab);
    assert_eq!(
        code,
        Some(EPERM_EXIT),
        "bastiond's cgroup alone must not buy a connection"
    );
    wait_refused_and_alerted(&bastiond, pid);

    // With bastiond dead its cgroup is still no way in; the next bastiond audits the attempt.
    bastiond.kill9().expect("kill -9");
    let (pid, code) = hijack(&lab);
    assert_eq!(code, Some(EPERM_EXIT), "refused with bastiond dead too");
    let bastiond = lab.start_bastiond().expect("bastiond restarts");
    wait_refused_and_alerted(&bastiond, pid);
}
