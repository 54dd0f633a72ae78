//! bastiond's configuration and control surface: config errors, the control socket's guard,
//! and bastionctl's behaviour against a stopped daemon.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{os::unix::fs::PermissionsExt, os::unix::process::CommandExt, process::Command};

use bastion_core::{
    audit::AuditEvent,
    protocol::{ApiError, Envelope, PROTOCOL_VERSION, Response},
};
use bastion_lab::{
    Lab, sys,
    wait::{LIMIT, eventually},
};

fn one_line(s: &[u8]) -> String {
    let text = String::from_utf8_lossy(s).trim_end().to_owned();
    assert_eq!(
        text.lines().count(),
        1,
        "expected exactly one line, got: {text:?}"
    );
    text
}

#[test]
fn bad_config_is_one_line_naming_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("bastion-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bastiond.toml");
    std::fs::write(
        &file,
        "[store]\npath = \"/var/lib/bastion/store\"\n\n[enforce]\ncgroup_root = \"/sys/fs/cgroup/unified/x\"\nprotected_subnet = [\"203.0.113.0/24\"]\n",
    )
    .unwrap();
    let out = Command::new(sys::bin("bastiond").unwrap())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = one_line(&out.stderr);
    let want = format!("{}:6:1:", file.display());
    assert!(err.contains(&want), "{err} lacks {want}");
    assert!(err.contains("protected_subnet"), "{err}");

    // The same file fixed passes, silently.
    std::fs::write(&file, "[enforce]\ncgroup_root = \"/sys/fs/cgroup/unified/x\"\nprotected_subnets = [\"203.0.113.0/24\"]\nprotected_interfaces = [\"prot0\"]\n").unwrap();
    let out = Command::new(sys::bin("bastiond").unwrap())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty());

    // Starting the daemon with a bad file fails the same way, before touching anything.
    std::fs::write(&file, "[enforce]\ncgroup_root = \"/x\"\ncolour = true\n").unwrap();
    let out = Command::new(sys::bin("bastiond").unwrap())
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = one_line(&out.stderr);
    assert!(err.contains(":3:1:") && err.contains("colour"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bastionctl_against_a_stopped_daemon_says_so_in_one_line() {
    let out = Command::new(sys::bin("bastionctl").unwrap())
        .args(["--socket", "/nonexistent/bastion/control.sock", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = one_line(&out.stderr);
    assert!(err.contains("bastiond is not running"), "{err}");
    assert!(err.contains("/nonexistent/bastion/control.sock"), "{err}");
}

#[test]
fn status_reports_version_store_and_enforcement_and_socket_is_guarded() {
    let lab = Lab::up().expect("lab");
    let mut bastiond = lab.start_bastiond().expect("bastiond");
    let paths = &lab.info().bastiond;

    let out = bastiond.ctl(&["status"]).unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "bastiond 0.1.0",
        &format!(
            "{} (schema v{}",
            paths.store.display(),
            bastion_store::SCHEMA_VERSION
        ),
        "enforcing on",
        "203.0.113.0/24",
    ] {
        assert!(text.contains(want), "status lacks {want:?}:\n{text}");
    }

    let mode = std::fs::metadata(&paths.control_socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");

    // A non-admin uid cannot open the socket at all...
    let ctl_copy = lab.info().run_dir.join("bastionctl");
    std::fs::copy(sys::bin("bastionctl").unwrap(), &ctl_copy).unwrap();
    let as_nobody = |ctl: &std::path::Path| {
        Command::new(ctl)
            .args(["--socket"])
            .arg(&paths.control_socket)
            .arg("status")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody(&ctl_copy);
    assert!(!out.status.success());
    assert!(one_line(&out.stderr).contains("permission denied"));
    // ...and even with the file mode loosened, the SO_PEERCRED check refuses it.
    std::fs::set_permissions(
        &paths.control_socket,
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = as_nobody(&ctl_copy);
    assert!(!out.status.success());
    let err = one_line(&out.stderr);
    assert!(err.contains("uid 65534 is not allowed"), "{err}");

    // A second bastiond on the same socket and store is refused with a reason; the first keeps serving.
    let second = lab.start_bastiond();
    let err = format!(
        "{:#}",
        second.err().expect("second bastiond must not start")
    );
    assert!(err.contains("another bastiond"), "{err}");
    assert!(bastiond.ctl(&["status"]).unwrap().status.success());

    // SIGTERM: clean exit, socket removed, store reopens at the same schema.
    assert!(
        bastiond.stop().unwrap(),
        "bastiond should exit 0 on SIGTERM"
    );
    assert!(
        !paths.control_socket.exists(),
        "socket left behind after clean stop"
    );
    let again = lab.start_bastiond().expect("restart after clean stop");
    let out = again.ctl(&["status", "--json"]).unwrap();
    let s: Response = serde_json::from_slice(&out.stdout).unwrap();
    let Response::Status(s) = s else {
        panic!("status answered {s:?}")
    };
    assert_eq!(s.store.schema_version, bastion_store::SCHEMA_VERSION);

    // Errors cross the wire typed: a stable kind for scripts, a one-line message for people.
    let missing = raw_request(
        &paths.control_socket,
        &format!(r#"{{"v":{PROTOCOL_VERSION},"request":"session_show","id":999999}}"#),
    );
    assert!(
        matches!(&missing.body, Response::Error { error: ApiError::NotFound(m) } if m == "session 999999 does not exist"),
        "{missing:?}"
    );
    let old = raw_request(&paths.control_socket, r#"{"v":1,"request":"status"}"#);
    assert!(
        matches!(&old.body, Response::Error { error: ApiError::Invalid(m) } if m.contains("protocol version 1")),
        "{old:?}"
    );
}

/// One request line written to the control socket as any client could, and the answer.
fn raw_request(socket: &std::path::Path, line: &str) -> Envelope<Response> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[test]
fn audit_exports_as_json_lines_to_a_file_following_and_as_rfc5424_syslog() {
    let lab = Lab::up().expect("lab");
    let b = lab.start_bastiond().expect("bastiond");
    let key = lab.info().admin_key_pub.to_string_lossy().into_owned();
    b.ctl_ok(&["user", "add", "alice", "--key", &key]).unwrap();

    // JSON lines from the start: one event per line, numbered and chained.
    let jsonl = b
        .ctl_ok(&["audit", "--after", "0", "--format", "jsonl"])
        .unwrap();
    let events: Vec<AuditEvent> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(events.len() >= 2, "{jsonl}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "{e:?}");
        assert_eq!(e.chain.as_deref().map(str::len), Some(64), "{e:?}");
    }

    // --follow appends new events to a file as they happen.
    let file = lab.info().run_dir.join("audit.jsonl");
    let mut follower = bastion_lab::bastiond::ctl_command(
        &lab.info().bastiond,
        &[
            "audit",
            "--after",
            "0",
            "--format",
            "jsonl",
            "--follow",
            "--output",
            file.to_str().unwrap(),
        ],
    )
    .unwrap()
    .spawn()
    .unwrap();
    b.ctl_ok(&["group", "add", "ops", "--member", "alice"])
        .unwrap();
    let mut followed = String::new();
    // Not seen in time: the assertion below shows what was followed.
    let _ = eventually("the new event in the followed file", LIMIT, || {
        followed = std::fs::read_to_string(&file).unwrap_or_default();
        followed.contains("\"name\":\"ops\"").then_some(())
    });
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(followed.contains("\"name\":\"ops\""), "{followed}");
    assert_eq!(followed.lines().count(), events.len() + 1, "{followed}");

    // RFC 5424 datagrams to a syslog socket.
    let path = lab.info().run_dir.join("syslog.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    b.ctl_ok(&[
        "audit",
        "--after",
        "0",
        "--format",
        "syslog",
        "--syslog",
        &format!("unix:{}", path.display()),
    ])
    .unwrap();
    let mut buf = [0u8; 8192];
    let n = sock.recv(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("<85>1 "), "{first}");
    assert!(
        first.contains(" bastiond - daemon_started [bastion@32473 seq=\"1\"] {"),
        "{first}"
    );
}
