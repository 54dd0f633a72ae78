//! The SSH surface as a scanner and an old client see it. ssh-audit against both listeners
//! finds nothing but the post-quantum notes on the classic key exchanges kept for OpenSSH 9.2
//! clients, and no missing connection throttle; `ssh.algorithms = "compatible"` lets old
//! algorithms in that `modern` keeps out.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Output, Stdio};

use bastion_lab::{
    Lab,
    bastiond::{Bastiond, SSH_PORT},
    names::{BASTION_ADMIN_ADDR, HOSTS},
};

const NOT_PQ: &str = "does not provide protection against post-quantum attacks";
const RATE_NOTE: &str = "connection throttling";

/// Restarts bastiond with its config edited by `edit` (the store, and so alice, stays).
fn restart_with(lab: &Lab, b: Bastiond, edit: impl FnOnce(String) -> String) -> Bastiond {
    drop(b);
    let config = &lab.info().bastiond.config;
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, edit(text)).unwrap();
    lab.start_bastiond().unwrap()
}

fn echo_ok(lab: &Lab, options: &[&str]) -> Output {
    let mut cmd = lab.ssh_via_bastion("root@web1", &["-v"]).unwrap();
    for o in options {
        cmd.args(["-o", o]);
    }
    cmd.arg("echo ok").stdin(Stdio::null()).output().unwrap()
}

fn works(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

#[test]
fn a_scanner_finds_both_listeners_clean_and_their_connection_rate_throttled() {
    let (lab, b) = Lab::with_alice().unwrap();
    let explicit = (BASTION_ADMIN_ADDR, SSH_PORT);
    let transparent = (HOSTS[0].1, 22);

    // The lab runs without the throttle: the scanner's rate test notices (so it can fail).
    let unthrottled = lab.ssh_audit(explicit.0, explicit.1).unwrap();
    assert!(
        unthrottled.notes.iter().any(|n| n.contains(RATE_NOTE)),
        "ssh-audit did not report an unthrottled listener: {:?}",
        unthrottled.notes
    );

    // The product's default throttle.
    let b = restart_with(&lab, b, |t| {
        t.replacen("connections_per_source_per_sec = 0\n", "", 1)
    });
    for (host, port) in [explicit, transparent] {
        let audit = lab.ssh_audit(host, port).unwrap();
        let unexpected: Vec<&String> = audit
            .findings
            .iter()
            .filter(|f| !(f.starts_with("warn kex ") && f.ends_with(NOT_PQ)))
            .collect();
        assert!(unexpected.is_empty(), "{host}:{port}: {unexpected:#?}");
        assert_eq!(
            audit.kex.first().map(String::as_str),
            Some("mlkem768x25519-sha256"),
            "{host}:{port}: post-quantum key exchange first: {:?}",
            audit.kex
        );
        assert_eq!(audit.compression, ["none"], "{host}:{port}");
        assert!(
            !audit.notes.iter().any(|n| n.contains(RATE_NOTE)),
            "{host}:{port}: {:?}",
            audit.notes
        );
    }
    // A person connecting after the scan is served (at most after a short wait).
    let out = echo_ok(&lab, &[]);
    assert!(works(&out), "{}", String::from_utf8_lossy(&out.stderr));
    drop(b);
}

#[test]
fn compatible_lets_in_the_old_algorithms_that_modern_keeps_out() {
    let (lab, b) = Lab::with_alice().unwrap();
    let group16 = ["KexAlgorithms=diffie-hellman-group16-sha512"];
    let encrypt_and_mac = ["MACs=hmac-sha2-256", "Ciphers=aes128-ctr"];
    let compressed = ["Compression=yes"];

    // Modern: Debian 12's OpenSSH agrees on curve25519 and no compression.
    let out = echo_ok(&lab, &compressed);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(works(&out), "{log}");
    assert!(log.contains("kex: algorithm: curve25519-sha256"), "{log}");
    assert!(!log.contains("compression: zlib"), "{log}");
    for old in [&group16[..], &encrypt_and_mac[..]] {
        let out = echo_ok(&lab, old);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!works(&out), "modern accepted {old:?}: {log}");
        assert!(log.contains("no matching"), "{old:?}: {log}");
    }

    let b = restart_with(&lab, b, |t| {
        t.replacen("[ssh]\n", "[ssh]\nalgorithms = \"compatible\"\n", 1)
    });
    for old in [&group16[..], &encrypt_and_mac[..]] {
        let out = echo_ok(&lab, old);
        assert!(
            works(&out),
            "compatible refused {old:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Compression only after sign-in (zlib@openssh.com), never plain zlib.
    let out = echo_ok(&lab, &compressed);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(works(&out), "{log}");
    assert!(log.contains("compression: zlib@openssh.com"), "{log}");
    drop(b);
}
