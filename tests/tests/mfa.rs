//! The second factor as a person meets it: `bastionctl user mfa enroll` prints the otpauth URI
//! and its QR code; a grant with `--require-mfa` makes the real OpenSSH client ask for the code
//! (answered here through SSH_ASKPASS, with codes computed by oathtool, not by bastion); a code
//! signs in once, a wrong or replayed one is refused and audited; it holds for explicit,
//! transparent and ProxyJump arrivals; a client that cannot answer (BatchMode) is refused.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, SystemTime},
};

use bastion_lab::{Lab, bastiond::SSH_PORT, names::BASTION_ADMIN_ADDR};

mod common;

use common::said;

/// ssh options that let it prompt (the lab's defaults are for scripts: `BatchMode=yes`).
const PROMPTS: &[&str] = &["-o", "BatchMode=no"];

/// Codes as an authenticator app would show them, each time step used at most once.
struct Authenticator {
    secret: String,
    last_step: u64,
}

impl Authenticator {
    fn now_step() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 30
    }

    fn code_at(&self, step: u64) -> String {
        let out = Command::new("oathtool")
            .args([
                "--totp",
                "-b",
                &self.secret,
                "-N",
                &format!("@{}", step * 30),
            ])
            .output()
            .expect("oathtool (installed by cargo xtask setup)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A code bastion has not seen yet, within one step of now (waiting for the next step when
    /// all three are used).
    fn fresh(&mut self) -> String {
        for _ in 0..3 {
            let now = Self::now_step();
            let step = (self.last_step + 1).max(now.saturating_sub(1));
            if step <= now + 1 {
                self.last_step = step;
                return self.code_at(step);
            }
            std::thread::sleep(Duration::from_secs(31));
        }
        panic!("no fresh time step within 93 s");
    }
}

/// An SSH_ASKPASS program answering every prompt with the code in `code_file`.
fn askpass(dir: &Path) -> (PathBuf, PathBuf) {
    let code_file = dir.join("code");
    let script = dir.join("askpass.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat '{}'\n", code_file.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, code_file)
}

/// `cmd` (an ssh allowed to prompt: `BatchMode=no`) answering the verification prompt with
/// `code`.
fn answering(mut cmd: Command, askpass: &(PathBuf, PathBuf), code: &str) -> Output {
    std::fs::write(&askpass.1, code).unwrap();
    cmd.env("SSH_ASKPASS", &askpass.0)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_grant_with_require_mfa_asks_every_arrival_for_a_code_that_works_once() {
    let (lab, b) = Lab::with_alice().unwrap();
    let dir = lab.info().run_dir.join("mfa");
    std::fs::create_dir_all(&dir).unwrap();
    let ask = askpass(&dir);

    // Enrolment: the URI, and its QR code drawn in the terminal.
    let shown = b.ctl_ok(&["user", "mfa", "enroll", "alice"]).unwrap();
    let uri = shown
        .lines()
        .find(|l| l.starts_with("otpauth://totp/bastion:alice?"))
        .unwrap_or_else(|| panic!("no otpauth URI in:\n{shown}"));
    assert!(
        shown.contains('▀') || shown.contains('▄'),
        "no QR code:\n{shown}"
    );
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap()
        .to_owned();
    let again = b.ctl(&["user", "mfa", "enroll", "alice"]).unwrap();
    assert!(
        !again.status.success(),
        "a second enrolment must be refused"
    );
    let mut app = Authenticator {
        secret,
        last_step: 0,
    };

    // Until a grant asks for it, the key alone signs in.
    let plain = |cmd: Command| answering(cmd, &ask, "000000");
    let out = plain(with_echo(
        lab.ssh_via_bastion("root@web1", PROMPTS).unwrap(),
    ));
    assert!(said(&out).contains("mfa-ok"), "{}", said(&out));

    // A connection signed in before the grant asks for the code (kept open for ssh's
    // connection sharing) gets nothing under it afterwards.
    let master_sock = dir.join("master.sock");
    let master_sock = master_sock.to_str().unwrap();
    let mut master = lab
        .ssh_via_bastion("root@web1", &["-M", "-S", master_sock, "-N"])
        .unwrap()
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    bastion_lab::wait::eventually("the shared connection", bastion_lab::wait::LIMIT, || {
        Path::new(master_sock).exists().then_some(())
    })
    .unwrap();

    b.ctl_ok(&["grant", "remove", "alice-web1"]).unwrap();
    bastion_lab::lab::grant_with(
        &b,
        "alice-web1",
        "alice",
        "web1",
        "root",
        "shell,exec,sftp",
        &["--require-mfa"],
    )
    .unwrap();

    let out = lab
        .ssh_via_bastion("root@web1", &["-S", master_sock, "-o", "ControlMaster=no"])
        .unwrap()
        .arg("echo mfa-ok")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!said(&out).contains("mfa-ok"), "{}", said(&out));
    let _ = master.kill();
    let _ = master.wait();

    // A client that cannot answer (BatchMode) is refused, naming the method it lacks.
    let out = lab
        .ssh_via_bastion("root@web1", &["-o", "LogLevel=INFO"])
        .unwrap()
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        said(&out).contains("keyboard-interactive"),
        "{}",
        said(&out)
    );

    // Explicit arrival with a fresh code; the same code again is refused.
    let code = app.fresh();
    let explicit = || with_echo(lab.ssh_via_bastion("root@web1", PROMPTS).unwrap());
    let out = answering(explicit(), &ask, &code);
    assert!(said(&out).contains("mfa-ok"), "{}", said(&out));
    let out = answering(explicit(), &ask, &code);
    assert!(
        !said(&out).contains("mfa-ok"),
        "a replayed code signed in: {}",
        said(&out)
    );
    // A wrong code (one of a step long past).
    let wrong = app.code_at(Authenticator::now_step() - 100);
    let out = answering(explicit(), &ask, &wrong);
    assert!(
        !said(&out).contains("mfa-ok"),
        "a wrong code signed in: {}",
        said(&out)
    );

    // Transparent arrival.
    let config = lab.transparent_client_config(&b).unwrap();
    let mut cmd = lab.admin_client("ssh", &config).unwrap();
    cmd.args(PROMPTS).arg("root@203.0.113.10");
    let out = answering(with_echo(cmd), &ask, &app.fresh());
    assert!(said(&out).contains("mfa-ok"), "transparent: {}", said(&out));

    // ProxyJump: the outer connection names no target; the inner session asks.
    let mut cmd = lab.admin_client("ssh", &config).unwrap();
    cmd.args(PROMPTS).args([
        "-J",
        &format!("alice@{BASTION_ADMIN_ADDR}:{SSH_PORT}"),
        "root@203.0.113.10",
    ]);
    let out = answering(with_echo(cmd), &ask, &app.fresh());
    assert!(said(&out).contains("mfa-ok"), "jump: {}", said(&out));

    let audit = b.ctl_ok(&["audit", "--limit", "1000"]).unwrap();
    for line in [
        "grant alice-web1 requires the second factor, which this connection did not give",
        "alice enrolled a TOTP second factor",
        "second factor asked for alice",
        "second factor accepted for alice",
        "second factor refused for alice (`root@web1`) from 198.51.100.10",
        ": code already used",
        ": wrong code",
    ] {
        assert!(audit.contains(line), "{line:?} not audited:\n{audit}");
    }
    let sessions = common::sessions(&b);
    let arrivals: Vec<&str> = sessions.iter().map(|s| s.arrival.as_str()).collect();
    for arrival in ["explicit", "transparent", "jump"] {
        assert!(arrivals.contains(&arrival), "{arrivals:?}");
    }

    // Removed: the grant still asks, and alice has nothing to answer with (she is refused at
    // her key, before any prompt; a current code would change nothing).
    b.ctl_ok(&["user", "mfa", "remove", "alice"]).unwrap();
    let out = answering(explicit(), &ask, &app.code_at(Authenticator::now_step()));
    assert!(!said(&out).contains("mfa-ok"), "{}", said(&out));
    let audit = b.ctl_ok(&["audit", "--limit", "20"]).unwrap();
    assert!(
        audit.contains("has none (bastionctl user mfa enroll alice)"),
        "{audit}"
    );
}

fn with_echo(mut cmd: Command) -> Command {
    cmd.arg("echo mfa-ok");
    cmd
}
