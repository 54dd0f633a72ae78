//! Authorization as people use it: the self-service menu over plain ssh, access requests that
//! other people approve (four eyes), grants that end by themselves, and policy that acts on
//! live sessions and relay flows (a warning first when the end is known, then the end).

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Output};

use bastion_core::audit::AuditKind;
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    lab::grant,
    wait::{LIMIT, eventually},
};

mod common;

use common::said;

/// A lab whose bastiond warns `warning` seconds before a known end, with alice enrolled (root
/// on web1) and web2 registered.
fn lab_with(policy: &str) -> (Lab, Bastiond) {
    let lab = Lab::up().expect("lab");
    let config = &lab.info().bastiond.config;
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, format!("{text}\n[policy]\n{policy}\n")).unwrap();
    let b = lab.start_bastiond().unwrap();
    lab.enroll_alice(&b).unwrap();
    lab.register_host(&b, 1).unwrap();
    (lab, b)
}

/// `ssh -p 2222 USER@bastion COMMAND` with `key`: the menu's command form.
fn menu(lab: &Lab, key: &Path, user: &str, command: &str) -> Output {
    lab.ssh_via_bastion_as(key, user, &[])
        .unwrap()
        .arg(command)
        .output()
        .unwrap()
}

fn audit_kinds(b: &Bastiond) -> Vec<AuditKind> {
    match common::ctl_json(b, &["audit", "--limit", "500"]) {
        bastion_core::protocol::Response::Audit { events } => {
            events.into_iter().map(|e| e.kind).collect()
        }
        other => panic!("audit answered {other:?}"),
    }
}

#[test]
fn a_request_is_approved_by_two_other_people_and_its_access_ends_by_itself_after_a_warning() {
    let (lab, b) = lab_with("end_warning_secs = 10");
    let alice = lab.info().admin_key.clone();
    let bob = common::add_user(&lab, &b, "bob");
    let carol = common::add_user(&lab, &b, "carol");
    b.ctl_ok(&[
        "group",
        "add",
        "oncall-leads",
        "--member",
        "bob",
        "--member",
        "carol",
    ])
    .unwrap();

    // What alice may reach: web1 now; web2 not at all.
    let out = menu(&lab, &alice, "alice", "targets --json");
    assert!(out.status.success(), "{}", said(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["target"], "web1", "{rows}");
    assert_eq!(rows[0]["now"], true, "{rows}");
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");

    // Nobody approves for web2 yet: the request is refused with what to do.
    let ask = "request web2 --login root --for 25s --reason INC-4211 disk full";
    let out = menu(&lab, &alice, "alice", ask);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        said(&out).contains("target set web2 --approvers"),
        "{}",
        said(&out)
    );
    b.ctl_ok(&[
        "target",
        "set",
        "web2",
        "--approvers",
        "oncall-leads",
        "--approvals",
        "2",
    ])
    .unwrap();
    // A standing grant on web2 with a command rule: access on request inherits it.
    bastion_lab::lab::grant_with(
        &b,
        "bob-web2",
        "bob",
        "web2",
        "root",
        "exec",
        &["--deny-command", "reboot*"],
    )
    .unwrap();
    let out = menu(
        &lab,
        &alice,
        "alice",
        "request web2 --login root --for 9h --reason x",
    );
    assert!(
        said(&out).contains("longer than requests for web2 may ask"),
        "{}",
        said(&out)
    );
    let out = menu(&lab, &alice, "alice", ask);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("request #1 filed"), "{}", said(&out));

    // Four eyes: not the requester, not the same approver twice, not an outsider.
    let out = menu(&lab, &alice, "alice", "approve 1");
    assert!(
        said(&out).contains("a requester never approves their own request"),
        "{}",
        said(&out)
    );
    let out = menu(&lab, &bob, "bob", "requests");
    assert!(said(&out).contains("#1 pending by alice"), "{}", said(&out));
    let out = menu(&lab, &bob, "bob", "approve 1 --reason on call tonight");
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("approvals 1/2"), "{}", said(&out));
    let out = menu(&lab, &bob, "bob", "approve 1");
    assert!(
        said(&out).contains("bob already approved request 1"),
        "{}",
        said(&out)
    );
    let refused = lab
        .ssh_via_bastion("root@web2", &[])
        .unwrap()
        .arg("true")
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "no access before the second approval"
    );
    let out = menu(&lab, &carol, "carol", "approve 1");
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("#1 approved"), "{}", said(&out));

    // alice is told, once, and the grant named after the request works.
    let out = menu(&lab, &alice, "alice", "requests");
    let text = said(&out);
    assert!(
        text.contains("your request #1 was approved by bob and carol: access until"),
        "{text}"
    );
    let again = said(&menu(&lab, &alice, "alice", "requests"));
    assert!(!again.contains("your request #1 was approved"), "{again}");
    let grant = b.ctl_ok(&["grant", "show", "req-1"]).unwrap();
    assert!(grant.contains("user alice"), "{grant}");
    assert!(
        grant.contains("deny command `reboot*`"),
        "inherits the rules on web2: {grant}"
    );

    let mut user = lab.interactive("root@web2", &[]).unwrap();
    user.send(b"echo granted-$((6*7))\n").unwrap();
    user.wait_for("granted-42").unwrap();
    // Warned first (10 s before, on stderr), then ended at expiry.
    user.wait_exit().unwrap();
    let all = format!("{}{}", user.output(), user.errors());
    let warned = all.find("access ends at").unwrap();
    let ended = all
        .find("bastion: access ended: grant req-1 expired")
        .unwrap_or_else(|| panic!("{all}"));
    assert!(warned < ended, "{all}");

    let kinds = audit_kinds(&b);
    let has = |f: &dyn Fn(&AuditKind) -> bool| kinds.iter().any(f);
    assert!(has(
        &|k| matches!(k, AuditKind::RequestApproved { approver, approvals: 2, grant: Some(g), .. } if approver == "carol" && g == "req-1")
    ));
    assert!(has(
        &|k| matches!(k, AuditKind::AccessEnding { grant, .. } if grant == "req-1")
    ));
    assert!(has(
        &|k| matches!(k, AuditKind::AccessEnded { reason, .. } if reason.contains("req-1 expired"))
    ));
    let list = b.ctl_ok(&["request", "list", "--all"]).unwrap();
    assert!(list.contains("#1 approved by alice"), "{list}");
}

#[test]
fn an_administrator_decides_with_bastionctl_and_undecided_requests_expire() {
    let (lab, b) = lab_with("request_ttl_secs = 3");
    let alice = lab.info().admin_key.clone();
    let _bob = common::add_user(&lab, &b, "bob");
    b.ctl_ok(&["group", "add", "leads", "--member", "bob"])
        .unwrap();
    b.ctl_ok(&["subnet", "set", "203.0.113.0/24", "--approvers", "leads"])
        .unwrap();
    // A target with approvers of its own is not reached around them through its subnet.
    b.ctl_ok(&["target", "set", "web1", "--approvers", "leads"])
        .unwrap();
    let around = menu(
        &lab,
        &alice,
        "alice",
        "request 203.0.113.0/24 --login root --for 1h --reason x",
    );
    assert!(
        said(&around)
            .contains("web1 (203.0.113.10) is in 203.0.113.0/24 and has approvers of its own"),
        "{}",
        said(&around)
    );
    // web2 falls under the subnet's approvers.
    let ask = |reason: &str| {
        menu(
            &lab,
            &alice,
            "alice",
            &format!("request web2 --login root --for 1h --reason {reason}"),
        )
    };
    assert!(ask("one").status.success());
    assert!(ask("two").status.success());
    let denied = b
        .ctl_ok(&["request", "deny", "1", "--reason", "not today"])
        .unwrap();
    assert!(denied.contains("#1 denied"), "{denied}");
    let again = b.ctl(&["request", "approve", "1"]).unwrap();
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("request 1 is denied, not pending"),
        "{again:?}"
    );
    // Request 2 is never decided: after request_ttl_secs it is expired, and says so.
    let expired = eventually("request 2 expired", LIMIT, || {
        let list = b.ctl_ok(&["request", "list", "--all"]).unwrap();
        list.contains("#2 expired").then_some(list)
    })
    .unwrap();
    assert!(expired.contains("#1 denied"), "{expired}");
    let out = menu(&lab, &alice, "alice", "requests");
    let text = said(&out);
    assert!(
        text.contains("your request #1 was denied by admin:uid 0: not today"),
        "{text}"
    );
    assert!(text.contains("your request #2 expired undecided"), "{text}");
    let approve = b.ctl(&["request", "approve", "2"]).unwrap();
    assert!(
        String::from_utf8_lossy(&approve.stderr).contains("expired"),
        "{approve:?}"
    );
    assert!(
        b.ctl(&["grant", "show", "req-2"])
            .map(|o| !o.status.success())
            .unwrap()
    );
}

#[test]
fn the_menu_lists_targets_and_connects_to_the_one_picked() {
    let (lab, b) = lab_with("end_warning_secs = 300");
    let mut user = lab.interactive("alice", &[]).unwrap();
    user.wait_for("bastion> ").unwrap();
    let shown = user.output();
    assert!(shown.contains("1) web1"), "{shown}");
    assert!(shown.contains("Your requests"), "{shown}");
    user.send(b"help\r").unwrap();
    user.wait_for("request TARGET --login").unwrap();
    user.send(b"1\r").unwrap();
    user.wait_for("connecting to root@web1").unwrap();
    user.send(b"echo picked-$((40+2))\n").unwrap();
    user.wait_for("picked-42").unwrap();
    user.send(b"exit\n").unwrap();
    user.wait_exit().unwrap();
    let sessions = common::sessions(&b);
    let menu = sessions
        .iter()
        .find(|s| s.target == "bastion-menu")
        .unwrap();
    let web1 = sessions.iter().find(|s| s.target == "web1").unwrap();
    assert_eq!(menu.user, "alice");
    assert!(web1.id > menu.id, "{sessions:?}");
    // The menu is on record like any session: what was typed and shown.
    let shown = b
        .ctl_ok(&["session", "show", &menu.id.to_string()])
        .unwrap();
    assert!(shown.contains("shell"), "{shown}");
    let played = b
        .ctl_ok(&[
            "session",
            "export",
            &menu.id.to_string(),
            "--format",
            "json",
        ])
        .unwrap();
    assert!(played.contains("\"output\""), "{played}");
    let verdict = eventually("both sealed", LIMIT, || {
        let v = b.ctl_ok(&["verify", "--all"]).unwrap();
        (v.matches("SEALED").count() >= 2).then_some(v)
    });
    assert!(verdict.is_ok(), "{verdict:?}");
}

#[test]
fn a_closing_window_and_removed_grants_end_live_sessions_and_relay_flows() {
    let (lab, b) = lab_with("end_warning_secs = 300");
    // A window that closes at the next minute boundary at least 6 s away (at most 66 s).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut close = (now / 60 + 1) * 60;
    if close - now < 6 {
        close += 60;
    }
    let hm = |t: u64| format!("{:02}:{:02}", t % 86_400 / 3600, t % 3600 / 60);
    let window = format!("daily {}-{}", hm(now - 60), hm(close));
    bastion_lab::lab::grant_with(
        &b,
        "closing",
        "alice",
        "web2",
        "root",
        "shell",
        &["--window", &window],
    )
    .unwrap();
    let mut closing = lab.interactive("root@web2", &[]).unwrap();
    closing.send(b"echo in-window\n").unwrap();
    closing.wait_for("in-window").unwrap();
    // Warned at once (the end is within end_warning_secs), on stderr.
    eventually("the warning", LIMIT, || {
        closing
            .errors()
            .contains("bastion: access ends at")
            .then_some(())
    })
    .unwrap();

    // A grant removed with --keep-sessions lets the session using it run on...
    let mut kept = lab.interactive("root@web1", &[]).unwrap();
    kept.send(b"echo kept-$((1+1))\n").unwrap();
    kept.wait_for("kept-2").unwrap();
    b.ctl_ok(&["grant", "remove", "alice-web1", "--keep-sessions"])
        .unwrap();
    // ... but a removed grant ends the sessions that depended on it, with the reason.
    grant(&b, "alice-web1-again", "alice", "web1", "root", "shell").unwrap();
    let mut ended = lab.interactive("root@web1", &[]).unwrap();
    ended.send(b"echo second-$((2+2))\n").unwrap();
    ended.wait_for("second-4").unwrap();
    b.ctl_ok(&["grant", "remove", "alice-web1-again"]).unwrap();
    ended.wait_exit().unwrap();
    let text = format!("{}{}", ended.output(), ended.errors());
    assert!(
        text.contains("bastion: access ended: no grant lets alice reach web1"),
        "{text}"
    );
    kept.send(b"echo still-$((3+3))\n").unwrap();
    kept.wait_for("still-6").unwrap();
    kept.send(b"exit\n").unwrap();
    kept.wait_exit().unwrap();

    // A relayed TCP flow ends when its grant is removed.
    let bin = bastion_lab::sys::bin("lab-connect").unwrap();
    let mut service = lab
        .command_unenforced("web1", &bin)
        .unwrap()
        .args(["--serve", "7777"])
        .spawn()
        .unwrap();
    b.ctl_ok(&[
        "grant",
        "add",
        "web1-tcp",
        "--user",
        "alice",
        "--target",
        "web1",
        "--rights",
        "tcp",
        "--tcp-port",
        "7777",
        "--from",
        "198.51.100.0/24",
        "--capture",
    ])
    .unwrap();
    let flow = lab
        .command_unenforced("admin", &bin)
        .unwrap()
        .args(["--hold", "30", "203.0.113.10", "7777"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Captured, so it is a live session while it lasts.
    eventually("the relayed flow live", LIMIT, || {
        common::live_sessions(&b)
            .iter()
            .any(|s| s.arrival == "tcp")
            .then_some(())
    })
    .unwrap();
    b.ctl_ok(&["grant", "remove", "web1-tcp"]).unwrap();
    let out = flow.wait_with_output().unwrap();
    let held = String::from_utf8_lossy(&out.stdout);
    assert!(held.contains("closed by peer"), "{held}");
    let mut flows = Vec::new();
    // Not seen in time: the assertion below shows what was.
    let _ = eventually("the relayed flow's end audited", LIMIT, || {
        flows = common::flows(&b, &["--hook", "relay"]).0;
        (!flows.is_empty()).then_some(())
    });
    assert!(
        flows.iter().any(|f| f
            .relay
            .as_ref()
            .and_then(|r| r.reason.as_deref())
            .is_some_and(|r| r.contains("ended: no grant relays TCP"))),
        "{flows:?}"
    );
    let _ = service.kill();
    let _ = service.wait();

    // The window closes (at most 66 s after the test began): the session ends with the reason.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::thread::sleep(std::time::Duration::from_secs(close.saturating_sub(now)));
    closing.wait_exit().unwrap();
    let text = format!("{}{}", closing.output(), closing.errors());
    let warned = text.find("bastion: access ends at").unwrap();
    let ended = text
        .find("bastion: access ended: grant closing applies only during")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(warned < ended, "{text}");
}

/// `child`'s output once it exits (bounded: killed after the lab's time limit).
fn finished(mut child: std::process::Child) -> Output {
    let exited = eventually("ssh's exit", LIMIT, || child.try_wait().ok().flatten());
    if exited.is_err() {
        let _ = child.kill();
    }
    child.wait_with_output().unwrap()
}

/// The pending ticket of a held command, once it is filed.
fn pending_command(b: &Bastiond) -> u64 {
    eventually(
        "a held command's request",
        LIMIT,
        || match common::ctl_json(b, &["request", "list"]) {
            bastion_core::protocol::Response::Tickets { tickets } => tickets
                .iter()
                .find(|t| matches!(t.asked, bastion_core::ticket::Asked::Command { .. }))
                .map(|t| t.id),
            _ => None,
        },
    )
    .unwrap()
}

#[test]
fn a_reviewed_command_runs_only_after_approval_and_is_refused_on_timeout() {
    let (lab, b) = lab_with("review_timeout_secs = 8");
    bastion_lab::lab::grant_with(
        &b,
        "reviewed",
        "alice",
        "web2",
        "root",
        "shell,exec",
        &["--review-command", "touch /tmp/reviewed*"],
    )
    .unwrap();
    let run = |command: &str| {
        lab.ssh_via_bastion("root@web2", &[])
            .unwrap()
            .arg(command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Held, approved by an administrator, then it runs, with what was piped to it while it
    // waited (the target takes input only once the command starts).
    let mut held = run("touch /tmp/reviewed-exec && echo ran-$((20+22)) && cat");
    {
        use std::io::Write;
        let mut stdin = held.stdin.take().unwrap();
        stdin.write_all(b"piped-while-held\n").unwrap();
    }
    let id = pending_command(&b);
    assert!(
        !b.ctl_ok(&["request", "show", &id.to_string()])
            .unwrap()
            .contains("approved"),
        "still pending"
    );
    b.ctl_ok(&["request", "approve", &id.to_string()]).unwrap();
    let out = finished(held);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("ran-42"), "{}", said(&out));
    assert!(said(&out).contains("piped-while-held"), "{}", said(&out));
    assert!(
        said(&out).contains("waits for approval by an administrator"),
        "{}",
        said(&out)
    );

    // Not approved in time: refused, and it never ran.
    let timed_out = run("touch /tmp/reviewed-late");
    let out = finished(timed_out);
    assert_eq!(out.status.code(), Some(126), "{}", said(&out));
    assert!(
        said(&out).contains("was not approved in time"),
        "{}",
        said(&out)
    );
    let ls = lab
        .ssh_via_bastion("root@web2", &[])
        .unwrap()
        .arg("ls /tmp/reviewed-exec /tmp/reviewed-late")
        .output()
        .unwrap();
    let listed = said(&ls);
    assert!(listed.contains("/tmp/reviewed-exec"), "{listed}");
    assert!(
        listed.contains("cannot access '/tmp/reviewed-late'"),
        "{listed}"
    );

    // In a shell, the line's Enter waits for the decision (best effort, like every PTY rule).
    let mut user = lab.interactive("root@web2", &[]).unwrap();
    user.send(b"touch /tmp/reviewed-shell; echo shell-$((1+1))\n")
        .unwrap();
    let id = pending_command(&b);
    assert!(!user.output().contains("shell-2"), "{}", user.output());
    b.ctl_ok(&["request", "approve", &id.to_string()]).unwrap();
    user.wait_for("shell-2").unwrap();
    user.send(b"exit\n").unwrap();
    user.wait_exit().unwrap();
    assert!(
        user.errors().contains("waits for approval"),
        "{}",
        user.errors()
    );
    let kinds = audit_kinds(&b);
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, AuditKind::RequestExpired { .. }))
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, AuditKind::CommandRule { action, .. } if action == "review"))
    );
}
