//! The archive's figures (`cargo xtask bench --archive-only`, and at the end of a full run), on
//! the lab's three-node Garage cluster:
//!
//! - archive throughput: one recorded session of incompressible output archived (upload, then
//!   read back whole and verified), against the same client's plain upload of a file of the
//!   same size to the same cluster (the baseline, measured in the same run);
//! - live throughput while archiving: a recorded bulk download through bastiond with the
//!   archiver idle, then again while it uploads a backlog, as a ratio: with the lab's store at
//!   normal priority (its three nodes' work on this machine's cores too), with the store in the
//!   idle scheduling class (as if on machines of its own), and with the archiver's rate bounded.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    services::{self, Garage},
    sys,
};
use serde_json::json;

fn archive_status(b: &Bastiond) -> anyhow::Result<serde_json::Value> {
    let out = b.ctl_ok(&["--json", "archive", "status"])?;
    Ok(serde_json::from_str(&out)?)
}

/// Waits until the queue is empty with at least `archived` sessions gone since start.
fn drained(b: &Bastiond, archived: u64) -> anyhow::Result<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let s = archive_status(b)?;
        if s["pending"] == 0 && s["archived_sessions"].as_u64() >= Some(archived) {
            return Ok(s);
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("the archive did not drain in 10 minutes: {s}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// MB/s (10^6 bytes) of a recorded download of `bytes` produced on web1 by `source`.
fn download(lab: &Lab, source: &str, bytes: u64) -> anyhow::Result<f64> {
    let mut child = lab
        .ssh_via_bastion("root@web1", &[])?
        .arg(format!("{source} | head -c {bytes}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    let (got, status) = crate::bench::pump(&mut child, |_| Ok(()))?;
    let secs = t0.elapsed().as_secs_f64();
    if !status.success() || got != bytes {
        bail!("download failed ({status}, {got} of {bytes} bytes)");
    }
    Ok(bytes as f64 / 1e6 / secs)
}

pub fn archive(quick: bool) -> anyhow::Result<serde_json::Value> {
    let mib: u64 = if quick { 128 } else { 512 };
    let live_mib: u64 = if quick { 256 } else { 1024 };
    eprintln!("==> archive: {mib} MiB archived, {live_mib} MiB live transfers");
    let lab = Lab::up()?;
    services::create(lab.name())?;
    let garage = Garage::start(&lab)?;
    let paths = &lab.info().bastiond;
    let text = std::fs::read_to_string(&paths.config)?;
    std::fs::write(
        &paths.config,
        format!("{text}\n{}", garage.archive_config("bench")),
    )?;
    let b = lab.start_bastiond()?;
    lab.enroll_alice(&b)?;

    // Baseline: the same S3 client putting a file of the same size, from a machine beside
    // the appliance.
    let file = lab.info().run_dir.join("bench-object");
    let mut data = vec![0u8; (mib << 20) as usize];
    random(&mut data)?;
    std::fs::write(&file, &data)?;
    drop(data);
    let t0 = Instant::now();
    let out = lab
        .command_unenforced("auditor", sys::bin("lab-load")?)?
        .arg("s3-put")
        .arg(&garage.credentials)
        .arg(&garage.endpoint)
        .arg("s3://bastion-archive/lab")
        .arg("lab/baseline/object")
        .arg(&file)
        .output()?;
    let put_secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("baseline put: {}", String::from_utf8_lossy(&out.stderr));
    }
    let raw_mb_s = (mib << 20) as f64 / 1e6 / put_secs;

    // The archiver: one session of incompressible output, archived and verified.
    download(&lab, "cat /dev/urandom", mib << 20)?;
    let ended = Instant::now();
    let s = drained(&b, 1)?;
    let to_drained = ended.elapsed().as_secs_f64();
    let archived_bytes = s["archived_bytes"].as_u64().context("archived_bytes")?;
    let archive_mb_s = s["last_rate_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1e6;
    let drain_mb_s = archived_bytes as f64 / 1e6 / to_drained;

    // Live bulk transfers, archiver idle, then while it uploads a backlog: at the default
    // rate bound, then bounded to BOUNDED_MB_S (bastiond restarted with it).
    let bytes = live_mib << 20;
    let idle: Vec<f64> = (0..2)
        .map(|_| download(&lab, "cat /dev/zero", bytes))
        .collect::<anyhow::Result<_>>()?;
    drained(&b, 3)?;
    let idle_mb_s = idle.iter().sum::<f64>() / idle.len() as f64;
    let normal = while_archiving(&lab, &b, mib, bytes, 6)?;
    // The store's own work (three replicas hashing, encrypting between nodes, writing) is on
    // this machine's two cores only because the lab has no other: in the idle scheduling
    // class, it stands aside for the appliance as a store on machines of its own would.
    garage.idle_priority()?;
    let store_sched_idle = while_archiving(&lab, &b, mib, bytes, 9)?;
    drop(b);
    std::fs::write(
        &paths.config,
        format!(
            "{text}\n{}max_rate_mb_s = {BOUNDED_MB_S}\n",
            garage.archive_config("bench")
        ),
    )?;
    let b = lab.start_bastiond()?;
    let bounded = while_archiving(&lab, &b, mib, bytes, 3)?;

    let v = json!({
        "object_mib": mib,
        "baseline_put_mb_s": raw_mb_s,
        "archive_mb_s": archive_mb_s,
        "archive_vs_put": archive_mb_s / raw_mb_s,
        "end_to_archived_mb_s": drain_mb_s,
        "archived_bytes": archived_bytes,
        "live_mib": live_mib,
        "live_idle_mb_s": idle_mb_s,
        "while_archiving": normal.json(idle_mb_s),
        "while_archiving_store_sched_idle": store_sched_idle.json(idle_mb_s),
        "bounded_rate_mb_s": BOUNDED_MB_S,
        "while_archiving_bounded_store_sched_idle": bounded.json(idle_mb_s),
    });
    println!(
        "\narchive: {mib} MiB incompressible session archived at {archive_mb_s:.0} MB/s (upload + read-back + verify; {drain_mb_s:.0} MB/s from session end to verified), plain put of the same size {raw_mb_s:.0} MB/s: ratio {:.2}",
        archive_mb_s / raw_mb_s
    );
    println!(
        "live recorded download {live_mib} MiB: {idle_mb_s:.0} MB/s archiver idle; while archiving:"
    );
    normal.print("archiver unbounded, store at normal priority", idle_mb_s);
    store_sched_idle.print("archiver unbounded, store in SCHED_IDLE", idle_mb_s);
    bounded.print(
        &format!("archiver bounded to {BOUNDED_MB_S} MB/s, store in SCHED_IDLE"),
        idle_mb_s,
    );
    Ok(v)
}

/// `archive.max_rate_mb_s` for the bounded live figure.
const BOUNDED_MB_S: u64 = 20;

/// A live download timed while the archiver works through a backlog.
struct Loaded {
    /// MB/s of the live download.
    live_mb_s: f64,
    /// Whether the archiver was still busy when the download ended.
    overlapped: bool,
    /// MB/s of the backlog archived, from its recording's end to the queue drained.
    backlog_mb_s: f64,
}

impl Loaded {
    fn json(&self, idle_mb_s: f64) -> serde_json::Value {
        json!({
            "live_mb_s": self.live_mb_s,
            "live_ratio": self.live_mb_s / idle_mb_s,
            "archiving_throughout": self.overlapped,
            "backlog_archived_mb_s": self.backlog_mb_s,
        })
    }

    fn print(&self, what: &str, idle_mb_s: f64) {
        println!(
            "  {what}: {:.0} MB/s, ratio {:.2}{} (backlog archived at {:.0} MB/s)",
            self.live_mb_s,
            self.live_mb_s / idle_mb_s,
            if self.overlapped {
                ""
            } else {
                ", the backlog finished before the transfers did"
            },
            self.backlog_mb_s,
        );
    }
}

/// Records a backlog of twice `mib` MiB of incompressible output, then times two live downloads
/// of `bytes` while it is archived; waits for the queue to drain (`archived` sessions since
/// bastiond started).
fn while_archiving(
    lab: &Lab,
    b: &Bastiond,
    mib: u64,
    bytes: u64,
    archived: u64,
) -> anyhow::Result<Loaded> {
    let before = archive_status(b)?["archived_bytes"].as_u64().unwrap_or(0);
    download(lab, "cat /dev/urandom", 2 * (mib << 20))?;
    let recorded = Instant::now();
    // Two in a row, averaged: one transfer's figure on a shared two-core machine varies by
    // more than the effect measured.
    let live_mb_s =
        (download(lab, "cat /dev/zero", bytes)? + download(lab, "cat /dev/zero", bytes)?) / 2.0;
    let overlapped = archive_status(b)?["pending"].as_u64().unwrap_or(0) > 0;
    let s = drained(b, archived)?;
    let after = s["archived_bytes"].as_u64().unwrap_or(0);
    Ok(Loaded {
        live_mb_s,
        overlapped,
        backlog_mb_s: after.saturating_sub(before) as f64 / 1e6 / recorded.elapsed().as_secs_f64(),
    })
}

/// Incompressible bytes, from the kernel's random source.
fn random(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
