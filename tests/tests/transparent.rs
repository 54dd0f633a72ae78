//! Transparent interception end to end: from the admin namespace, plain `ssh`, `scp`, `sftp`
//! and `ssh -J` to a protected address land in audited, recorded sessions (nftables TPROXY in
//! bastiond's own table, policy routing, the IP_TRANSPARENT listener), and the client verifies
//! bastiond's host certificate with nothing but the `@cert-authority` line.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{net::IpAddr, path::Path, process::Output};

use bastion_core::session::{SessionMeta, SessionState};
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    wait::{LIMIT, eventually},
};

mod common;

use common::sessions;

const WEB1: &str = "203.0.113.10";

/// [`Lab::with_alice`] and the admin's client config for transparent mode.
fn setup() -> (Lab, Bastiond, std::path::PathBuf) {
    let (lab, b) = Lab::with_alice().expect("lab with alice");
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

/// Waits (bounded) until the session is closed, and returns its `session show` text.
fn closed_session_text(b: &Bastiond, id: u64) -> String {
    eventually(&format!("session {id} closed"), LIMIT, || {
        sessions(b)
            .iter()
            .any(|s| s.id == id && s.state == SessionState::Closed)
            .then_some(())
    })
    .unwrap();
    b.ctl_ok(&["session", "show", &id.to_string()]).unwrap()
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
    assert_eq!(s.arrival, "transparent");
    assert_eq!(
        s.target, "web1",
        "the intercepted address resolves to the registered target"
    );
    assert_eq!(s.login, "root");
    assert_eq!(s.user, "alice", "who the person is comes from the key");
    assert_eq!(
        s.client_addr.map(|a| a.ip()),
        Some(IpAddr::from([198, 51, 100, 10])),
        "the admin's own address, not a NATed one: {s:?}"
    );
    let shown = closed_session_text(&b, s.id);
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
    assert!(list.iter().all(|s| s.arrival == "transparent"));
    let mut ops = String::new();
    for s in &list {
        ops += &closed_session_text(&b, s.id);
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
    assert_eq!(list[0].arrival, "jump");
    assert_eq!(list[0].target, "web1");
    let shown = closed_session_text(&b, list[0].id);
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

#[test]
fn raw_tcp_is_relayed_only_as_granted_and_every_connection_is_a_flow() {
    let (lab, b, _config) = setup();
    let bin = bastion_lab::sys::bin("lab-connect").unwrap();
    let mut service = lab
        .command_unenforced("web1", &bin)
        .unwrap()
        .args(["--serve", "7777"])
        .spawn()
        .unwrap();
    let connect = |args: &[&str]| {
        let out = lab
            .command_unenforced("admin", &bin)
            .unwrap()
            .args(["--timeout", "2"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Not granted: not steered, so forwarded and dropped by the egress program.
    assert!(connect(&["--send", "x", WEB1, "7777"]).contains("timed out"));

    b.ctl_ok(&[
        "grant",
        "add",
        "web1-echo",
        "--user",
        "alice",
        "--target",
        "web1",
        "--rights",
        "tcp",
        "--tcp-port",
        "7777",
        "--from",
        "198.51.100.10/32",
        "--capture",
    ])
    .unwrap();
    let got = connect(&["--from", "198.51.100.10", "--send", "hello", WEB1, "7777"]);
    assert_eq!(got, "connected lab-echo\nhello");
    // The admin's other address is not in the grant: the relay refuses it.
    let refused = connect(&["--from", "198.51.100.11", "--send", "hello", WEB1, "7777"]);
    assert!(!refused.contains("lab-echo"), "{refused}");

    let mut flows = Vec::new();
    // Not both seen in time: the checks below say what is missing.
    let _ = eventually("the relay's two flows", LIMIT, || {
        flows = common::flows(&b, &["--hook", "relay"]).0;
        (flows.len() == 2).then_some(())
    });
    let carried = flows.iter().find(|f| f.allowed).unwrap();
    let relayed = carried.relay.as_ref().unwrap();
    assert_eq!(
        carried.src,
        Some(IpAddr::from([198, 51, 100, 10])),
        "{flows:?}"
    );
    assert_eq!(carried.dport, 7777);
    assert_eq!(relayed.grant.as_deref(), Some("web1-echo"));
    assert_eq!(relayed.bytes_up, 5);
    assert_eq!(relayed.bytes_down, 14);
    let denied = flows.iter().find(|f| !f.allowed).unwrap();
    assert_eq!(
        denied.src,
        Some(IpAddr::from([198, 51, 100, 11])),
        "{flows:?}"
    );
    assert!(
        denied
            .relay
            .as_ref()
            .and_then(|r| r.reason.as_deref())
            .unwrap()
            .contains("not granted from 198.51.100.11"),
        "{flows:?}"
    );
    // Captured payload, zstd-compressed into the store like a session.
    let session = relayed.session.unwrap();
    let export = b
        .ctl_ok(&[
            "session",
            "export",
            &session.to_string(),
            "--format",
            "json",
        ])
        .unwrap();
    let export: serde_json::Value = serde_json::from_str(&export).unwrap();
    let frames = export["frames"].as_array().unwrap();
    let data = |kind: &str| -> String {
        frames
            .iter()
            .filter(|f| f["kind"] == kind)
            .map(|f| base64_decode(f["data_base64"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(data("input"), "hello", "{export}");
    assert_eq!(data("output"), "lab-echo\nhello", "{export}");
    let meta: SessionMeta = serde_json::from_value(export["session"].clone()).unwrap();
    assert_eq!(meta.arrival, "tcp");

    // Removing the grant stops the steering at once.
    b.ctl_ok(&["grant", "remove", "web1-echo"]).unwrap();
    assert!(connect(&["--send", "x", WEB1, "7777"]).contains("timed out"));
    let _ = service.kill();
    let _ = service.wait();
}

/// Standard base64 (with padding) to text; enough for the export's `data_base64`.
fn base64_decode(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn intercepted_ssh_fails_closed_while_bastiond_is_dead_and_steering_is_removed_on_clean_stop() {
    let (lab, mut b, config) = setup();
    let ssh = |lab: &Lab| {
        admin(
            lab,
            "ssh",
            &config,
            &["-o", "ConnectTimeout=3", &format!("root@{WEB1}"), "echo up"],
        )
    };
    assert!(ssh(&lab).status.success());
    b.kill9().unwrap();
    let out = ssh(&lab);
    assert!(!out.status.success(), "{}", text(&out));
    // A new bastiond replaces the table its predecessor left, in one step.
    let mut b = lab.start_bastiond().unwrap();
    let out = ssh(&lab);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "up\n",
        "{}",
        text(&out)
    );

    let nft = |lab: &Lab| {
        let out = lab
            .command_unenforced("bastion", "nft")
            .unwrap()
            .args(["list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules = |lab: &Lab| {
        let out = lab
            .command_unenforced("bastion", "ip")
            .unwrap()
            .args(["rule", "list"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(nft(&lab).contains("table inet bastion"), "{}", nft(&lab));
    assert!(rules(&lab).contains("lookup 2901"), "{}", rules(&lab));
    assert!(b.stop().unwrap());
    assert!(!nft(&lab).contains("table inet bastion"), "{}", nft(&lab));
    assert!(!rules(&lab).contains("lookup 2901"), "{}", rules(&lab));
    // Stopped cleanly, nothing is steered: SSH to web1 is forwarded, and the pinned egress
    // program still drops it.
    let out = ssh(&lab);
    assert!(!out.status.success(), "{}", text(&out));
}
