//! `cargo xtask demo`: bastion's enforcement shown end to end in the lab.

use std::process::Output;

use anyhow::{Context, bail};
use bastion_lab::Lab;

use crate::util::{build_bins, require_root};

const WEB1: &str = "203.0.113.10";

pub fn run(keep: bool) -> anyhow::Result<()> {
    require_root("cargo xtask demo")?;
    crate::setup::run()?;
    build_bins()?;

    say(
        "Building the lab: admin 198.51.100.0/24 -> bastion (router) -> protected 203.0.113.0/24 (web1, web2 with sshd)",
    );
    let lab = if keep { Lab::up_kept()? } else { Lab::up()? };
    let info = lab.info().clone();
    println!("    lab {} up", info.name);

    say("Before bastiond runs, a process on the bastion host reaches web1's sshd directly:");
    show(&ssh_from_bastion(&lab)?);

    say("Starting bastiond (enforcement on the lab's cgroup, pins under its bpffs dir):");
    let mut bastiond = lab.start_bastiond()?;
    show(&bastiond.ctl(&["status"])?);

    say(
        "Now the same ssh from the bastion host is refused by the kernel (EPERM), IPv4 and IPv4-mapped IPv6:",
    );
    expect_eperm(&ssh_from_bastion(&lab)?)?;
    expect_eperm(&lab.try_connect(&["::ffff:203.0.113.10", "22"])?)?;
    expect_eperm(&lab.try_connect(&["--udp", WEB1, "53"])?)?;

    say(
        "An admin host routing past bastiond (another port, UDP, ICMP) is dropped at the protected-side interface:",
    );
    for args in [
        &["--timeout", "2", WEB1, "80"][..],
        &["--udp", WEB1, "53"],
        &["--timeout", "2", "--icmp", WEB1, "0"],
    ] {
        println!("    admin$ lab-connect {}", args.join(" "));
        show(
            &lab.command_unenforced("admin", bastion_lab::sys::bin("lab-connect")?)?
                .args(args)
                .output()?,
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    say("Every denied attempt is an audit event (ring buffer from the hooks, never silent):");
    println!("    $ bastionctl flows --denied");
    show(&bastiond.ctl(&["flows", "--denied"])?);

    say("...while bastiond itself, in its own cgroup, reaches the target:");
    let probe = bastiond.ctl(&["probe", &format!("{WEB1}:22")])?;
    show(&probe);
    if !probe.status.success() {
        bail!("bastiond could not reach web1");
    }

    say("kill -9 bastiond: enforcement stays pinned, and bastionctl says the daemon is gone:");
    bastiond.kill9()?;
    expect_eperm(&lab.try_connect(&[WEB1, "22"])?)?;
    show(&bastiond.ctl(&["status"])?);

    say("A new bastiond adopts the pinned links (atomic program swap, no open window):");
    let bastiond = lab.start_bastiond()?;
    show(&bastiond.ctl(&["status"])?);
    expect_eperm(&lab.try_connect(&[WEB1, "22"])?)?;

    say("Policy lives in the store and changes only through bastionctl; every change is audited.");
    say(
        "Enrolling: hosts trust bastiond's user CA; alice (the lab's admin key) may reach web1 as root:",
    );
    lab.enroll_alice(&bastiond)?;
    for args in [
        vec!["ca", "show"],
        vec!["user", "list"],
        vec!["target", "list"],
        vec!["grant", "list"],
        vec!["user", "remove", "alice"],
    ] {
        println!("    $ bastionctl {}", args.join(" "));
        show(&bastiond.ctl(&args)?);
    }

    say(
        "An admin uses plain ssh through bastion's explicit listener; the target sees a 5-minute certificate:",
    );
    let via = format!("root@web1@{}", info.bastion.admin_addr);
    let remote = "echo \"$(id -un) on $(uname -n)\"; exit 3";
    println!("    admin$ ssh -p 2222 {via} '{remote}'");
    let out = lab
        .ssh_via_bastion("root@web1", &[])?
        .arg(remote)
        .stdin(std::process::Stdio::null())
        .output()?;
    show(&out);
    println!("    (exit status {})", out.status.code().unwrap_or(-1));
    let sshd_log = std::fs::read_to_string(&info.hosts[0].sshd_log).unwrap_or_default();
    if let Some(line) = sshd_log
        .lines()
        .rev()
        .find(|l| l.contains("Accepted publickey"))
    {
        println!("    web1 sshd: {}", line.trim());
    }

    say(
        "An interactive shell (PTY) is recorded with timing, each line entered as an event, then replayed:",
    );
    let mut child = lab
        .ssh_via_bastion("root@web1", &["-tt"])?
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // Typed as a person would: after the prompt, one line at a time, with a correction.
        for keys in [
            &b"printf 'hello from an audited shell\\n'\r"[..],
            b"ls / | hed\x7fad -3\r",
            b"exit\r",
        ] {
            std::thread::sleep(std::time::Duration::from_millis(1200));
            stdin.write_all(keys)?;
            stdin.flush()?;
        }
    }
    child.wait()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    println!("    $ bastionctl session list");
    let list = bastiond.ctl(&["session", "list"])?;
    show(&list);
    let json: serde_json::Value =
        serde_json::from_slice(&bastiond.ctl(&["--json", "session", "list"])?.stdout)?;
    if let Some(id) = json["sessions"][1]["id"].as_u64() {
        println!("    $ bastionctl session show {id}");
        show(&bastiond.ctl(&["session", "show", &id.to_string()])?);
    }
    if let Some(id) = json["sessions"][0]["id"].as_u64() {
        println!("    $ bastionctl session show {id}");
        show(&bastiond.ctl(&["session", "show", &id.to_string()])?);
        println!("    $ bastionctl session play {id} --no-wait");
        show(&bastiond.ctl(&["session", "play", &id.to_string(), "--no-wait"])?);
    }
    println!("    $ bastionctl search head");
    show(&bastiond.ctl(&["search", "head"])?);

    say(
        "Transparent mode: plain `ssh root@203.0.113.10` from the admin host is intercepted (nftables TPROXY) and audited.",
    );
    say("The admin's only client change is one known_hosts line for bastiond's host CA:");
    let config = lab.transparent_client_config(&bastiond)?;
    println!("    $ bastionctl ca show --known-hosts");
    show(&bastiond.ctl(&["ca", "show", "--known-hosts"])?);
    for (shown, args) in [
        (
            format!("ssh root@{WEB1} 'uname -n'"),
            vec![format!("root@{WEB1}"), "uname -n".to_owned()],
        ),
        (
            format!("ssh -J alice@198.51.100.1:2222 root@{WEB1} 'echo via ProxyJump'"),
            vec![
                "-J".to_owned(),
                "alice@198.51.100.1:2222".to_owned(),
                format!("root@{WEB1}"),
                "echo via ProxyJump".to_owned(),
            ],
        ),
    ] {
        println!("    admin$ {shown}");
        show(&lab.admin_client("ssh", &config)?.args(&args).output()?);
    }
    println!("    $ bastionctl session list");
    show(&bastiond.ctl(&["session", "list"])?);

    say("Refusals reach the client in one line (and are audited):");
    for dest in ["postgres@web1", "root@web9"] {
        println!("    admin$ ssh -p 2222 {dest}@{}", info.bastion.admin_addr);
        show(
            &lab.ssh_via_bastion(dest, &["-o", "LogLevel=INFO"])?
                .arg("true")
                .stdin(std::process::Stdio::null())
                .output()?,
        );
    }

    say("A new protected subnet is enforced by the kernel the moment it is added:");
    println!("    $ bastionctl subnet add 198.51.100.0/24");
    show(&bastiond.ctl(&["subnet", "add", "198.51.100.0/24"])?);
    expect_eperm(&lab.try_connect(&["198.51.100.10", "22"])?)?;
    println!("    $ bastionctl subnet remove 198.51.100.0/24");
    show(&bastiond.ctl(&["subnet", "remove", "198.51.100.0/24"])?);
    show(&lab.try_connect(&["198.51.100.10", "22"])?);
    println!("    $ bastionctl audit");
    show(&bastiond.ctl(&["audit"])?);

    if keep {
        // The lab and this bastiond stay up; `cargo xtask lab down` removes both.
        std::mem::forget(bastiond);
        crate::lab::print_enter(&lab);
    } else {
        drop(bastiond);
        drop(lab);
        say("Lab torn down: namespaces, cgroups, pins and processes removed.");
    }
    Ok(())
}

fn say(s: &str) {
    println!("\n--- {s}");
}

fn show(out: &Output) {
    for stream in [&out.stdout, &out.stderr] {
        for line in String::from_utf8_lossy(stream).lines() {
            println!("    {line}");
        }
    }
}

/// A real OpenSSH client on the bastion host, not in bastiond's cgroup.
fn ssh_from_bastion(lab: &Lab) -> anyhow::Result<Output> {
    lab.command("bastion", "ssh")?
        .args(lab.ssh_options())
        .args([
            "-o",
            "ConnectTimeout=5",
            &format!("root@{WEB1}"),
            "echo connected to $(cat /proc/sys/kernel/hostname) as $(id -un)",
        ])
        .output()
        .context("running ssh")
}

fn expect_eperm(out: &Output) -> anyhow::Result<()> {
    show(out);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() || !text.contains("Operation not permitted") {
        bail!("expected EPERM, got: {}", text.trim());
    }
    Ok(())
}
