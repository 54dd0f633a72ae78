//! The figures of `cargo xtask bench` beyond one session at a time: bastiond's memory with
//! many idle interactive sessions, CPU seconds per GB carried, hung recorded transfers, and the
//! store (ingest rate of the recorder, search over a million commands). Load comes from
//! `lab-load` (tests/src/bin).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bastion_lab::{Lab, bastiond::Bastiond, sys};
use serde_json::{Value, json};

/// bastiond's user + system CPU seconds so far.
pub fn cpu_secs(b: &Bastiond) -> f64 {
    let Some(pid) = b.pid() else { return f64::NAN };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is the 3rd field, utime the 14th, stime the 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (f.get(11), f.get(12)) {
        (Some(u), Some(s)) => (u + s) / hz,
        _ => f64::NAN,
    }
}

fn rss_kib(b: &Bastiond) -> u64 {
    let Some(pid) = b.pid() else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// bastiond's RSS with `n` idle interactive sessions open, against its RSS just before.
pub fn idle_sessions(lab: &Lab, b: &Bastiond, n: usize) -> anyhow::Result<Value> {
    eprintln!("==> {n} idle interactive sessions");
    let before = rss_kib(b);
    let key = lab.info().admin_key.display().to_string();
    let addr = format!(
        "{}:{}",
        bastion_lab::names::BASTION_ADMIN_ADDR,
        bastion_lab::bastiond::SSH_PORT
    );
    let mut child = lab
        .command_unenforced("admin", sys::bin("lab-load")?)?
        .args(["idle", &n.to_string(), &addr, "root@web1", &key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting lab-load idle")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    let t0 = Instant::now();
    BufReader::new(stdout).read_line(&mut line)?;
    let ready = line.starts_with(&format!("ready {n} "));
    let retried: u64 = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let secs = t0.elapsed().as_secs_f64();
    // Let allocations settle before reading memory.
    std::thread::sleep(Duration::from_secs(2));
    let with = rss_kib(b);
    drop(child.stdin.take());
    let _ = child.wait();
    if !ready {
        bail!("lab-load idle: {}", line.trim());
    }
    Ok(json!({
        "sessions": n,
        "retried": retried,
        "open_secs": secs,
        "rss_kib_before": before,
        "rss_kib_with": with,
        "kib_per_session": (with.saturating_sub(before)) as f64 / n as f64,
    }))
}

/// `n` recorded downloads of `mib` MiB, each given 60 s: how many finished whole, how many hung.
pub fn bulk_hangs(
    ssh: impl Fn() -> anyhow::Result<Command>,
    n: usize,
    mib: u64,
) -> anyhow::Result<Value> {
    eprintln!("==> {n} recorded bulk downloads of {mib} MiB");
    let bytes = mib << 20;
    let (mut whole, mut hung, mut short) = (0, 0, 0);
    for _ in 0..n {
        let mut child = ssh()?
            .arg(format!("head -c {bytes} /dev/urandom"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdout = child.stdout.take().context("stdout")?;
        let reader = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let got = reader.join().ok().and_then(|r| r.ok()).unwrap_or(0);
        match status {
            None => hung += 1,
            Some(s) if s.success() && got == bytes => whole += 1,
            Some(_) => short += 1,
        }
    }
    Ok(json!({ "transfers": n, "mib": mib, "whole": whole, "hung": hung, "short": short }))
}

/// The recorder's ingest rate into a fresh store, then search latency over `commands`
/// commands in the lab bastiond's store (bastiond is restarted to load them).
pub fn store(
    lab: &Lab,
    b: &mut Bastiond,
    ingest_mib: u64,
    commands: usize,
) -> anyhow::Result<Value> {
    eprintln!("==> store: ingest {ingest_mib} MiB, search over {commands} commands");
    let load = sys::bin("lab-load")?;
    let dir = lab.info().run_dir.join("ingest");
    let out = Command::new(&load)
        .args([
            "ingest",
            &dir.display().to_string(),
            &ingest_mib.to_string(),
        ])
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let ingest: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("lab-load ingest: {}", String::from_utf8_lossy(&out.stderr)))?;

    if !b.stop()? {
        bail!("bastiond did not stop cleanly before the store was filled");
    }
    let store = lab.info().bastiond.store.display().to_string();
    let out = Command::new(&load)
        .args(["populate", &store, &commands.to_string()])
        .output()?;
    let populate: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "lab-load populate: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let t0 = Instant::now();
    *b = lab.start_bastiond()?;
    let start_secs = t0.elapsed().as_secs_f64();
    let mut figures =
        json!({ "ingest": ingest, "populate": populate, "bastiond_start_secs": start_secs });
    for (name, args) in [
        (
            "rare_match",
            vec!["search", "systemctl restart", "--limit", "20"],
        ),
        (
            "no_match",
            vec!["search", "no-such-command-anywhere", "--limit", "20"],
        ),
        (
            "by_user",
            vec!["search", "df -h", "--user", "alice", "--limit", "20"],
        ),
    ] {
        let (mut wall, mut server) = (Vec::new(), Vec::new());
        let mut found = 0;
        for _ in 0..21 {
            let mut full = vec!["--json"];
            full.extend_from_slice(&args);
            let t = Instant::now();
            let v: Value = serde_json::from_str(&b.ctl_ok(&full)?)?;
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            server.push(v["micros"].as_f64().unwrap_or(f64::NAN) / 1e3);
            found = v["hits"].as_array().map_or(0, Vec::len);
        }
        wall.sort_by(f64::total_cmp);
        server.sort_by(f64::total_cmp);
        figures[name] = json!({
            "hits": found,
            "p50_ms_bastionctl": wall[wall.len() / 2],
            "p50_ms_in_bastiond": server[server.len() / 2],
            "max_ms_bastionctl": wall[wall.len() - 1],
        });
    }
    Ok(figures)
}
