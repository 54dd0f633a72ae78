//! Transparent interception end to end: from the admin namespace, plain `ssh`, `scp`, `sftp`
//! and `ssh -J` to a protected address land in audited, recorded sessions (nftables TPROXY in
//! bastiond's own table, policy routing, the IP_TRANSPARENT listener), and the client verifies
//! bastiond's host certificate with nothing but the `@cert-authority` line.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Output};

use bastion_lab::{Lab, bastiond::Bastiond};

const WEB1: &str = "203.0.113.10";

fn setup() -> (Lab, Bastiond, std::path::PathBuf) {
    let lab = Lab::up().expect("lab");
    let b = lab.start_bastiond().expect("bastiond");
    lab.enroll_alice(&b).expect("enrol alice");
    let config = lab.transparent_client_config(&b).expect("client config");
    (lab, b, config)
}

fn admin(lab: &Lab, program: &str, config: &Path, args: &[&str]) -> Output {
    lab.admin_client(program, config)
        .expect("command")
        .args(args)
        .output()
        .expect("runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sessions(b: &Bastiond) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&b.ctl_ok(&["--json", "session", "list"]).unwrap()).unwrap();
    v["sessions"].as_array().cloned().unwrap_or_default()
}

/// Waits (bounded) until the session is closed, and returns its `session show` text.
fn closed_session_text(b: &Bastiond, id: u64) -> String {
    for _ in 0..100 {
        if sessions(b)
            .iter()
            .any(|s| s["id"] == id && s["state"] == "closed")
        {
            return b.ctl_ok(&["session", "show", &id.to_string()]).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("session {id} did not close");
}

#[test]
fn plain_ssh_scp_and_sftp_to_a_protected_address_are_intercepted_and_recorded() {
    let (lab, b, config) = setup();

    let out = admin(
        &lab,
        "ssh",
        &config,
        &[&format!("root@{WEB1}"), "echo via-$((6*7))"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-42\n");
    let list = sessions(&b);
    assert_eq!(list.len(), 1, "{list:?}");
    let s = &list[0];
    assert_eq!(s["arrival"], "transparent");
    assert_eq!(
        s["target"], "web1",
        "the intercepted address resolves to the registered target"
    );
    assert_eq!(s["login"], "root");
    assert_eq!(s["user"], "alice", "who the person is comes from the key");
    assert!(
        s["client_addr"]
            .as_str()
            .unwrap()
            .starts_with("198.51.100.10:"),
        "the admin's own address, not a NATed one: {s}"
    );
    let shown = closed_session_text(&b, s["id"].as_u64().unwrap());
    assert!(shown.contains("echo via-$((6*7))"), "{shown}");

    // scp (SFTP protocol in OpenSSH 9) up, sftp down: both intercepted and recorded.
    let dir = lab.info().run_dir.join("transfer");
    std::fs::create_dir_all(&dir).unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("up.bin"), &payload).unwrap();
    let up = dir.join("up.bin").display().to_string();
    let out = admin(
        &lab,
        "scp",
        &config,
        &[&up, &format!("root@{WEB1}:/tmp/bastion-up.bin")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let batch = dir.join("batch");
    let down = dir.join("down.bin");
    std::fs::write(
        &batch,
        format!("get /tmp/bastion-up.bin {}\n", down.display()),
    )
    .unwrap();
    let out = admin(
        &lab,
        "sftp",
        &config,
        &["-b", &batch.display().to_string(), &format!("root@{WEB1}")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&down).unwrap(),
        payload,
        "bytes survive the round trip"
    );

    let list = sessions(&b);
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|s| s["arrival"] == "transparent"));
    let mut ops = String::new();
    for s in &list {
        ops += &closed_session_text(&b, s["id"].as_u64().unwrap());
    }
    assert!(
        ops.contains("sftp /tmp/bastion-up.bin (read 0, written 200000 bytes)"),
        "{ops}"
    );
    assert!(
        ops.contains("sftp /tmp/bastion-up.bin (read 200000, written 0 bytes)"),
        "{ops}"
    );
}

#[test]
fn host_certificate_is_trusted_only_through_the_ca_line() {
    let (lab, b, config) = setup();
    // Without the @cert-authority line, strict checking refuses: OpenSSH would have prompted.
    let empty = lab.info().run_dir.join("admin-client/empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let out = admin(
        &lab,
        "ssh",
        &config,
        &[
            "-o",
            &format!("UserKnownHostsFile={}", empty.display()),
            &format!("root@{WEB1}"),
            "true",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"),
        "{}",
        text(&out)
    );
    // With it, the certificate names the address it was reached by.
    let out = admin(
        &lab,
        "ssh",
        &config,
        &["-v", &format!("root@{WEB1}"), "true"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("Server host certificate: ssh-ed25519-cert-v01@openssh.com"),
        "{log}"
    );
    assert!(
        log.contains("Host '203.0.113.10' is known and matches the ED25519-CERT host certificate"),
        "{log}"
    );
    assert_eq!(sessions(&b).len(), 1, "the refused client never signed in");
}

#[test]
fn proxyjump_is_an_audited_session_and_other_forwards_to_protected_hosts_are_refused() {
    let (lab, b, config) = setup();
    let jump = format!("alice@198.51.100.1:{}", bastion_lab::bastiond::SSH_PORT);
    let out = admin(
        &lab,
        "ssh",
        &config,
        &["-J", &jump, &format!("root@{WEB1}"), "echo inner-$((2+3))"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inner-5\n");
    let list = sessions(&b);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["arrival"], "jump");
    assert_eq!(list[0]["target"], "web1");
    let shown = closed_session_text(&b, list[0]["id"].as_u64().unwrap());
    assert!(shown.contains("echo inner-$((2+3))"), "{shown}");

    // `ssh -W` to another port of a protected host is no way around the audited path.
    let out = admin(
        &lab,
        "ssh",
        &config,
        &[
            "-o",
            "LogLevel=INFO",
            "-p",
            &bastion_lab::bastiond::SSH_PORT.to_string(),
            "-W",
            &format!("{WEB1}:80"),
            "alice@198.51.100.1",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only SSH to it is carried"),
        "{}",
        text(&out)
    );
}
