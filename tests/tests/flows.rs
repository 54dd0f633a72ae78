//! Every way around the audited path is blocked and audited as a denied flow: from the admin
//! namespace (routed through the appliance) on a non-SSH port, by UDP and by ICMP; from a
//! process on the bastion host outside bastiond's cgroup by TCP, UDP, IPv4-mapped IPv6, ICMP and
//! with bastiond's own SO_MARK. The same holds while bastiond is dead, and what was attempted
//! then is audited once it is back (the ring buffer is pinned).

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::Output;

use bastion_core::flow::Flow;
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    wait::{LIMIT, eventually},
};

mod common;

const WEB1: &str = "203.0.113.10";
/// ssh.upstream_mark's default, which the lab does not change.
const BASTIOND_MARK: &str = "2903";

/// How an attempt was made: from which namespace (and whether the process is held to the
/// cgroup hooks), with which lab-connect arguments, and how the flow must be audited.
struct Attempt {
    name: &'static str,
    from_admin: bool,
    args: &'static [&'static str],
    hook: &'static str,
    proto: &'static str,
    dport: u16,
}

const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "routed TCP to a non-SSH port",
        from_admin: true,
        args: &["--timeout", "1", WEB1, "80"],
        hook: "egress",
        proto: "tcp",
        dport: 80,
    },
    Attempt {
        name: "routed UDP",
        from_admin: true,
        args: &["--udp", WEB1, "53"],
        hook: "egress",
        proto: "udp",
        dport: 53,
    },
    Attempt {
        name: "routed ICMP echo",
        from_admin: true,
        args: &["--timeout", "1", "--icmp", WEB1, "0"],
        hook: "egress",
        proto: "icmp",
        dport: 0,
    },
    Attempt {
        name: "local TCP connect",
        from_admin: false,
        args: &[WEB1, "22"],
        hook: "connect4",
        proto: "tcp",
        dport: 22,
    },
    Attempt {
        name: "local UDP sendmsg",
        from_admin: false,
        args: &["--udp", WEB1, "5353"],
        hook: "sendmsg4",
        proto: "udp",
        dport: 5353,
    },
    Attempt {
        name: "local IPv4-mapped IPv6 connect",
        from_admin: false,
        args: &["::ffff:203.0.113.10", "2222"],
        hook: "connect6",
        proto: "tcp",
        dport: 2222,
    },
    Attempt {
        name: "local connect with bastiond's SO_MARK",
        from_admin: false,
        args: &["--mark", BASTIOND_MARK, WEB1, "443"],
        hook: "connect4",
        proto: "tcp",
        dport: 443,
    },
    Attempt {
        name: "local raw ICMP with bastiond's SO_MARK",
        from_admin: false,
        args: &[
            "--timeout",
            "1",
            "--mark",
            BASTIOND_MARK,
            "--icmp",
            WEB1,
            "0",
        ],
        hook: "egress",
        proto: "icmp",
        dport: 0,
    },
];

fn attempt(lab: &Lab, a: &Attempt) -> Output {
    let bin = bastion_lab::sys::bin("lab-connect").unwrap();
    let cmd = if a.from_admin {
        // Another machine: not held to the cgroup hooks, only the egress program stands in the way.
        lab.command_unenforced("admin", &bin)
    } else {
        lab.command("bastion", &bin)
    };
    cmd.unwrap().args(a.args).output().unwrap()
}

/// Blocked: refused locally (EPERM), or no answer at all. A UDP send "succeeds" locally when
/// only the egress program drops it; the audited flow is what proves the drop.
fn assert_blocked(a: &Attempt, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = match (a.from_admin, a.proto) {
        (false, "tcp") | (false, "udp") => out.status.code() == Some(2),
        (_, "udp") => true,
        _ => !out.status.success(),
    };
    assert!(
        ok,
        "{}: not blocked: {:?} {stdout}",
        a.name,
        out.status.code()
    );
    assert!(!stdout.contains("SSH-2.0"), "{}: {stdout}", a.name);
}

fn denied_flows(b: &Bastiond, since: u64) -> Vec<Flow> {
    common::flows(
        b,
        &[
            "--denied",
            "--dst",
            WEB1,
            "--since",
            &since.to_string(),
            "--limit",
            "1000",
        ],
    )
    .0
}

/// Waits (bounded: flows are written once a second) until every attempt has its denied flow.
fn assert_audited(b: &Bastiond, since: u64) {
    let mut missing = Vec::new();
    let audited = eventually("a denied flow for every attempt", LIMIT, || {
        let flows = denied_flows(b, since);
        missing = ATTEMPTS
            .iter()
            .filter(|a| {
                !flows.iter().any(|f| {
                    f.hook == a.hook
                        && f.proto == a.proto
                        && f.dport == a.dport
                        && !f.allowed
                        // Local attempts name the process; forwarded ones have no socket.
                        && (a.from_admin && f.cgroup == 0
                            || !a.from_admin
                                && (a.hook == "egress" || f.comm.as_deref() == Some("lab-connect")))
                })
            })
            .map(|a| a.name)
            .collect();
        missing.is_empty().then_some(())
    });
    if let Err(e) = audited {
        panic!(
            "{e}: no denied flow audited for {missing:?}; flows: {:#?}",
            denied_flows(b, since)
        );
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn every_bypass_is_blocked_and_audited_as_a_denied_flow_even_across_kill9() {
    let lab = Lab::up().expect("lab");
    let mut b = lab.start_bastiond().expect("bastiond");
    let since = now_secs();
    for a in ATTEMPTS {
        assert_blocked(a, &attempt(&lab, a));
    }
    assert_audited(&b, since);
    // The programs' own log (aya-log) reaches bastiond's log.
    let log = std::fs::read_to_string(&lab.info().bastiond.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("bastion_ebpf") && l.contains("connect4 denied: port 22")),
        "{log}"
    );

    // bastiond's own upstream connections are audited as allowed flows.
    b.ctl_ok(&["probe", &format!("{WEB1}:22")]).unwrap();
    let (allowed, lost_total) = eventually("an allowed flow to port 22", LIMIT, || {
        let (flows, lost_total) = common::flows(&b, &["--allowed", "--dport", "22"]);
        (!flows.is_empty()).then_some((flows, lost_total))
    })
    .unwrap();
    let first = &allowed[0];
    assert_eq!(first.hook, "connect4", "{allowed:?}");
    assert_eq!(
        first.pid,
        Some(b.pid().unwrap()),
        "bastiond's own: {allowed:?}"
    );
    assert_eq!(lost_total, 0);

    // Dead bastiond: the same attempts are blocked, and audited once it is back.
    b.kill9().unwrap();
    let dead_since = now_secs();
    for a in ATTEMPTS {
        assert_blocked(a, &attempt(&lab, a));
    }
    let b = lab.start_bastiond().expect("bastiond restarts");
    assert_audited(&b, dead_since);
    let text = b
        .ctl_ok(&["flows", "--denied", "--hook", "connect4"])
        .unwrap();
    assert!(text.contains("DENIED tcp"), "{text}");
    assert!(
        text.contains("flow events lost by the kernel (ring buffer full): 0"),
        "{text}"
    );
}
