//! Policy management through bastionctl: stored, validated, audited, and (for subnets) enforced
//! by the kernel the moment it is added.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use bastion_lab::{Lab, bastiond::Bastiond};

fn ctl(b: &Bastiond, args: &[&str]) -> (bool, String, String) {
    let out = b.ctl(args).expect("bastionctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
    )
}

fn ok(b: &Bastiond, args: &[&str]) -> String {
    let (success, stdout, stderr) = ctl(b, args);
    assert!(success, "bastionctl {args:?} failed: {stderr}");
    stdout
}

fn refused(b: &Bastiond, args: &[&str], why: &str) {
    let (success, _, stderr) = ctl(b, args);
    assert!(!success, "bastionctl {args:?} should fail");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one-line error expected: {stderr}"
    );
    assert!(
        stderr.contains(why),
        "bastionctl {args:?}: {stderr:?} lacks {why:?}"
    );
}

fn connect_code(lab: &Lab, addr: &str) -> i32 {
    lab.try_connect(&[addr, "22"])
        .expect("lab-connect")
        .status
        .code()
        .unwrap_or(-1)
}

#[test]
fn policy_is_validated_stored_audited_and_survives_restart() {
    let lab = Lab::up().expect("lab");
    let info = lab.info().clone();
    let mut b = lab.start_bastiond().expect("bastiond");
    let admin_key = info.admin_key_pub.to_str().unwrap();
    let web1_key = info.hosts[0].host_key_pub.to_str().unwrap();

    assert!(
        ok(&b, &["user", "add", "alice", "--key", admin_key]).contains("uid 0: added user alice")
    );
    refused(
        &b,
        &["user", "add", "alice", "--key", admin_key],
        "user `alice` already exists",
    );
    refused(
        &b,
        &["user", "add", "bob", "--key", "ssh-ed25519 AAAAnotbase64"],
        "not an OpenSSH public key",
    );
    refused(
        &b,
        &["user", "add", "bad@name", "--key", admin_key],
        "invalid name `bad@name`",
    );
    ok(
        &b,
        &[
            "target",
            "add",
            "web1",
            "203.0.113.10",
            "--host-key",
            web1_key,
        ],
    );
    refused(
        &b,
        &["group", "add", "ops", "--member", "nobody"],
        "user `nobody` does not exist",
    );
    ok(&b, &["group", "add", "ops", "--member", "alice"]);
    refused(
        &b,
        &[
            "grant", "add", "g1", "--group", "ops", "--target", "web9", "--login", "root",
            "--rights", "shell",
        ],
        "target `web9` does not exist",
    );
    refused(
        &b,
        &[
            "grant", "add", "g1", "--group", "ops", "--target", "web1", "--login", "root",
            "--rights", "shell", "--window", "someday",
        ],
        "window `someday`",
    );
    ok(
        &b,
        &[
            "grant",
            "add",
            "g1",
            "--group",
            "ops",
            "--target",
            "web1",
            "--login",
            "root",
            "--rights",
            "shell,exec",
            "--window",
            "mon-fri 08:00-18:00",
        ],
    );
    refused(&b, &["user", "remove", "alice"], "used by group ops");
    refused(&b, &["target", "remove", "web1"], "used by grant g1");

    let grants = ok(&b, &["grant", "list"]);
    assert!(
        grants.contains("g1") && grants.contains("group ops -> target web1 as root [shell,exec]"),
        "{grants}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&b, &["--json", "user", "show", "alice"])).unwrap();
    let stored_key = shown["entities"][0]["value"]["keys"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let file_key = std::fs::read_to_string(&info.admin_key_pub).unwrap();
    assert_eq!(stored_key.trim(), file_key.trim(), "key stored canonically");

    // Restart: everything is still there, and the audit stream names who did what.
    assert!(b.stop().expect("stop"));
    let b = lab.start_bastiond().expect("restart");
    assert!(ok(&b, &["target", "list"]).contains("203.0.113.10:22"));
    let audit = ok(&b, &["audit"]);
    let lines: Vec<&str> = audit.lines().collect();
    for want in [
        "uid 0: added user alice",
        "uid 0: added target web1",
        "uid 0: added group ops",
        "uid 0: added grant g1",
    ] {
        assert!(
            lines.iter().any(|l| l.ends_with(want)),
            "audit lacks {want:?}:\n{audit}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("bastiond: bastiond 0.1.0 started"))
            .count(),
        2,
        "{audit}"
    );
    // Refused changes leave no trace.
    assert!(
        !audit.contains("bob") && !audit.contains("nobody"),
        "{audit}"
    );
}

#[test]
fn subnet_add_and_remove_change_kernel_enforcement_live() {
    let lab = Lab::up().expect("lab");
    let mut b = lab.start_bastiond().expect("bastiond");
    const ADMIN_HOST: &str = "198.51.100.10";
    // Not protected: the kernel answers (no listener: ECONNREFUSED, exit 3).
    assert_eq!(connect_code(&lab, ADMIN_HOST), 3);

    ok(&b, &["subnet", "add", "198.51.100.0/24"]);
    assert_eq!(
        connect_code(&lab, ADMIN_HOST),
        2,
        "added subnet must be enforced at once"
    );
    let status = ok(&b, &["status"]);
    assert!(
        status.contains("198.51.100.0/24, 203.0.113.0/24"),
        "{status}"
    );

    // Stored subnets are enforced again after a restart.
    assert!(b.stop().expect("stop"));
    let b = lab.start_bastiond().expect("restart");
    assert_eq!(connect_code(&lab, ADMIN_HOST), 2);

    refused(&b, &["subnet", "add", "198.51.100.1/24"], "host bits set");
    refused(
        &b,
        &["subnet", "remove", "192.0.2.0/24"],
        "subnet `192.0.2.0/24` does not exist",
    );
    ok(&b, &["subnet", "remove", "198.51.100.0/24"]);
    assert_eq!(
        connect_code(&lab, ADMIN_HOST),
        3,
        "removed subnet must be released"
    );
    // The configured subnet is untouched by store changes.
    assert_eq!(connect_code(&lab, "203.0.113.10"), 2);
}
