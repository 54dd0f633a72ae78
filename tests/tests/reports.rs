//! What auditors look at, end to end: files moved over SFTP and legacy scp captured (once per
//! content) and extracted byte for byte, found by hash; the compliance report's JSON against a
//! scenario with known counts; the HTML report and a session's replay page opened in headless
//! Chromium (screenshots kept beside the lab's run directory and named in the output).

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use bastion_core::session::SessionState;
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    lab::grant_with,
    wait::{LIMIT, eventually},
};

mod common;

fn ok(b: &Bastiond, args: &[&str]) -> String {
    b.ctl_ok(args).expect("bastionctl succeeds")
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn random_file(path: &Path, len: usize) -> String {
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .unwrap();
    std::fs::write(path, &data).unwrap();
    sha256(path)
}

/// Waits (bounded) until `n` sessions exist, all closed.
fn wait_closed(b: &Bastiond, n: usize) {
    eventually(&format!("{n} sessions, all closed"), LIMIT, || {
        let s = common::sessions(b);
        (s.len() == n && s.iter().all(|s| s.state == SessionState::Closed)).then_some(())
    })
    .unwrap();
}

/// Headless Chromium on a local page: the DOM after its scripts ran (virtual time), and a
/// screenshot. Returns the DOM and Chromium's stderr.
fn chromium(page: &Path, fragment: &str, shot: &Path, profile: &Path) -> (String, String) {
    let url = format!("file://{}{fragment}", page.display());
    let base = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    };
    // Bounded: a page that never settles must not hang the suite.
    let mut dom = Command::new("timeout");
    dom.args(["120", "chromium"]);
    base(&mut dom);
    let out = dom
        .args(["--virtual-time-budget=60000", "--dump-dom"])
        .arg(&url)
        .output()
        .expect("chromium runs (installed by cargo xtask setup)");
    common::assert_ok(&out, "chromium --dump-dom");
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "chromium"]);
    base(&mut cmd);
    let shot_out = cmd
        .args(["--window-size=1280,1600", "--virtual-time-budget=60000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    common::assert_ok(&shot_out, "chromium --screenshot");
    assert!(
        std::fs::metadata(shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot {} was written",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_page_errors(dom: &str, stderr: &str, what: &str) {
    assert!(
        !dom.contains("data-error="),
        "{what}: script errors: {dom:.2000}"
    );
    for line in stderr.lines() {
        assert!(
            !(line.contains("CONSOLE") && line.contains("Uncaught")),
            "{what}: console error: {line}"
        );
    }
}

#[test]
fn files_are_captured_reports_count_what_happened_and_pages_render_in_chromium() {
    let (lab, b) = Lab::with_alice().unwrap();
    let web1 = lab.info().hosts[0].addr.clone();
    // alice's grant captures files; bob may only run commands (a legacy scp is one). 10
    // sessions in all: alice's 4 commands and 3 transfers, bob's command, his scp and his
    // refused sftp (the session starts, the subsystem is refused); bob as a login he has no
    // grant for is refused before a session.
    ok(&b, &["grant", "remove", "alice-web1"]);
    grant_with(
        &b,
        "alice-web1",
        "alice",
        "web1",
        "root",
        "shell,exec,sftp",
        &["--capture-files"],
    )
    .unwrap();
    let bob = common::add_user(&lab, &b, "bob");
    grant_with(&b, "bob-web1", "bob", "web1", "root", "exec", &[]).unwrap();

    // Commands: alice runs uptime twice and id on web1, hostname on web2; bob runs uptime.
    lab.register_host(&b, 1).unwrap();
    grant_with(&b, "alice-web2", "alice", "web2", "root", "exec", &[]).unwrap();
    let out = lab
        .ssh_via_bastion("root@web2", &[])
        .unwrap()
        .arg("hostname")
        .output()
        .unwrap();
    common::assert_ok(&out, "hostname on web2");
    for c in ["uptime", "uptime", "id"] {
        let out = lab
            .ssh_via_bastion("root@web1", &[])
            .unwrap()
            .arg(c)
            .output()
            .unwrap();
        common::assert_ok(&out, c);
    }
    let out = lab
        .ssh_via_bastion_as(&bob, "root@web1", &[])
        .unwrap()
        .arg("uptime")
        .output()
        .unwrap();
    common::assert_ok(&out, "bob uptime");
    // Refused: bob as a login his grant does not name; bob asking for sftp.
    let out = lab
        .ssh_via_bastion_as(&bob, "admin@web1", &[])
        .unwrap()
        .arg("id")
        .output()
        .unwrap();
    assert!(!out.status.success(), "bob as admin is refused");
    let out = lab
        .ssh_via_bastion_as(&bob, "root@web1", &["-s"])
        .unwrap()
        .arg("sftp")
        .output()
        .unwrap();
    assert!(!out.status.success(), "bob's sftp is refused");
    // A denied flow: straight to web1's SSH port, not through bastiond.
    let _ = lab.try_connect(&[&web1, "22"]);

    // Files: an SFTP upload and download of one content, a legacy scp upload of another and a
    // legacy scp download of the first again (captured once per session and content).
    let dir = lab.info().run_dir.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.bin");
    let a_sum = random_file(&a, (3 << 20) + 123);
    let c = dir.join("c.txt");
    std::fs::write(&c, "config line 1\nconfig line 2\n".repeat(5000)).unwrap();
    let c_sum = sha256(&c);
    let batch = dir.join("batch");
    let remote_a = dir.join("remote-a.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\n",
            a.display(),
            remote_a.display(),
            remote_a.display(),
            dir.join("back-a.bin").display()
        ),
    )
    .unwrap();
    let port = ["-P".to_string(), "2222".to_string()];
    let mut cmd = lab.command("admin", "sftp").unwrap();
    cmd.args(&port)
        .args(lab.ssh_options())
        .arg("-b")
        .arg(&batch)
        .arg("root@web1@198.51.100.1");
    common::assert_ok(&cmd.output().unwrap(), "sftp");
    let remote = |p: &Path| format!("root@web1@198.51.100.1:{}", p.display());
    let mut cmd = lab.command("admin", "scp").unwrap();
    cmd.arg("-O")
        .args(&port)
        .args(lab.ssh_options())
        .arg(&c)
        .arg(remote(&dir.join("remote-c.txt")));
    common::assert_ok(&cmd.output().unwrap(), "scp -O up");
    let mut cmd = lab.command("admin", "scp").unwrap();
    cmd.arg("-O")
        .args(&port)
        .args(lab.ssh_options())
        .arg(remote(&remote_a))
        .arg(dir.join("scp-a.bin"));
    common::assert_ok(&cmd.output().unwrap(), "scp -O down");
    assert_eq!(sha256(&dir.join("scp-a.bin")), a_sum);
    // bob's grant does not capture: his upload is listed with its hash, its content not kept.
    let mut cmd = lab.command("admin", "scp").unwrap();
    cmd.arg("-O")
        .args(&port)
        .args(lab.ssh_options_for(&bob))
        .arg(&c)
        .arg(remote(&dir.join("bob-c.txt")));
    common::assert_ok(&cmd.output().unwrap(), "bob's scp -O up");
    wait_closed(&b, 10);
    let bobs = common::sessions(&b);
    let bob_scp = bobs
        .iter()
        .find(|s| s.user == "bob" && s.bytes_in > 50_000)
        .expect("bob's scp session");
    let listing = ok(&b, &["session", "files", &bob_scp.id.to_string()]);
    assert!(
        listing.contains(&c_sum)
            && listing.contains("not captured")
            && listing.contains("bob-c.txt"),
        "{listing}"
    );

    // Listed with hashes, extracted byte for byte.
    let sessions = common::sessions(&b);
    let sftp = sessions
        .iter()
        .find(|s| s.user == "alice" && s.bytes_in > 3 << 20)
        .expect("sftp session");
    let listing = ok(&b, &["session", "files", &sftp.id.to_string()]);
    assert!(
        listing.contains(&a_sum) && listing.contains("upload") && listing.contains("download"),
        "{listing}"
    );
    assert!(
        listing.contains("captured (as file 0)"),
        "the download is the same content: {listing}"
    );
    let out_dir = dir.join("extracted");
    ok(
        &b,
        &[
            "session",
            "files",
            &sftp.id.to_string(),
            "--extract",
            &out_dir.display().to_string(),
        ],
    );
    assert_eq!(sha256(&out_dir.join("0-remote-a.bin")), a_sum);
    let up = sessions
        .iter()
        .find(|s| s.user == "alice" && s.bytes_in > 50_000 && s.bytes_in < 1 << 20)
        .expect("scp up");
    let up_dir = dir.join("extracted-scp");
    ok(
        &b,
        &[
            "session",
            "files",
            &up.id.to_string(),
            "--extract",
            &up_dir.display().to_string(),
        ],
    );
    assert_eq!(sha256(&up_dir.join("0-remote-c.txt")), c_sum);
    // Found by hash (a prefix will do): the SFTP session and the scp download moved it.
    let found = ok(&b, &["search", "--file-hash", &a_sum[..16]]);
    let lines: Vec<&str> = found.lines().filter(|l| l.contains(&a_sum)).collect();
    assert_eq!(
        lines.len(),
        3,
        "upload and download over sftp, download over scp: {found}"
    );
    let found = ok(&b, &["search", "--file-hash", &c_sum]);
    assert!(
        found.contains("remote-c.txt") && found.contains("bob-c.txt"),
        "{found}"
    );

    // The report's numbers.
    let now = bastion_core::audit::now_micros() / 1_000_000;
    let minute = (now / 60) % 1440;
    // Working hours that exclude the test's hour: every session is after-hours.
    let off = (minute + 120) % 1440;
    let hours = format!(
        "mon-sun {:02}:{:02}-{:02}:{:02}",
        off / 60,
        off % 60,
        (off + 60) / 60 % 24,
        (off + 60) % 60
    );
    let report: serde_json::Value = serde_json::from_str(&ok(
        &b,
        &[
            "report",
            "--since",
            &(now - 3600).to_string(),
            "--format",
            "json",
            "--work-hours",
            &hours,
        ],
    ))
    .unwrap();
    eprintln!("{report:#}");
    assert_eq!(report["totals"]["sessions"], 10);
    let targets: Vec<(&str, u64)> = report["per_target"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["sessions"].as_u64().unwrap()))
        .collect();
    assert_eq!(targets, [("web1", 9), ("web2", 1)]);
    let users: Vec<(String, u64)> = report["per_user"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["sessions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(users, [("alice".to_owned(), 7), ("bob".to_owned(), 3)]);
    assert_eq!(report["after_hours"].as_array().unwrap().len(), 10);
    assert_eq!(report["top_commands"][0]["name"], "uptime");
    assert_eq!(report["top_commands"][0]["count"], 3);
    assert_eq!(report["uploads"]["count"], 3);
    assert_eq!(report["downloads"]["count"], 2);
    assert_eq!(
        report["uploads"]["bytes"].as_u64().unwrap(),
        std::fs::metadata(&a).unwrap().len() + 2 * std::fs::metadata(&c).unwrap().len()
    );
    assert_eq!(report["integrity"]["sealed"], 10);
    assert_eq!(report["sign_ins_refused"], 0);
    let refusals = report["refusals"].to_string();
    assert!(
        refusals.contains("session: ") && refusals.contains("sftp"),
        "{refusals}"
    );
    let flows = report["denied_flows"].to_string();
    assert!(flows.contains(&format!("{web1}:22")), "{flows}");
    // A user filter; the whole day as working hours.
    let bob_report: serde_json::Value = serde_json::from_str(&ok(
        &b,
        &[
            "report",
            "--since",
            &(now - 3600).to_string(),
            "--format",
            "json",
            "--user",
            "bob",
            "--work-hours",
            "mon-sun 00:00-24:00",
        ],
    ))
    .unwrap();
    assert_eq!(bob_report["totals"]["sessions"], 3);
    assert_eq!(bob_report["after_hours"].as_array().unwrap().len(), 0);
    let csv = ok(
        &b,
        &[
            "report",
            "--since",
            &(now - 3600).to_string(),
            "--format",
            "csv",
        ],
    );
    assert!(csv.lines().any(|l| l.starts_with("user,alice,7,")), "{csv}");

    // The HTML report and a replay page, in Chromium.
    // Kept after the test (the lab's run directory is not), under cargo's target directory.
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reports");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let html = artifacts.join("report.html");
    ok(
        &b,
        &[
            "report",
            "--since",
            &(now - 3600).to_string(),
            "--output",
            &html.display().to_string(),
        ],
    );
    let (dom, err) = chromium(
        &html,
        "",
        &artifacts.join("report.png"),
        &artifacts.join("profile"),
    );
    assert_no_page_errors(&dom, &err, "report");
    assert!(
        dom.matches("<svg").count() >= 4,
        "the charts are inline SVG"
    );
    assert!(dom.contains("Sessions per day") && dom.contains("uptime") && dom.contains(&a_sum));
    let id = sessions
        .iter()
        .find(|s| s.user == "bob" && s.bytes_in == 0 && s.bytes_out > 0)
        .unwrap()
        .id
        .to_string();
    let page = artifacts.join("replay.html");
    std::fs::write(
        &page,
        ok(&b, &["session", "export", &id, "--format", "html"]),
    )
    .unwrap();
    let (dom, err) = chromium(
        &page,
        "#autoplay",
        &artifacts.join("replay.png"),
        &artifacts.join("profile"),
    );
    assert_no_page_errors(&dom, &err, "replay");
    assert!(
        dom.contains("data-player=\"ended\""),
        "the player reached the last frame: {:.3000}",
        dom
    );
    assert!(
        dom.contains("ap-player") || dom.contains("ap-wrapper"),
        "the player is on the page"
    );
    assert!(dom.contains("SEALED") && dom.contains("exec uptime"));
}
