//! The archive's figures (`cargo xtask bench --archive-only`, and at the end of a full run), on
//! the lab's three-node Garage cluster:
//!
//! - archive throughput: one recorded session of incompressible output archived (upload, then
//!   read back whole and verified), against the same client's plain upload of a file of the
//!   same size to the same cluster (the baseline, measured in the same run);
//! - live throughput while archiving: a recorded bulk download through bastiond with the
//!   archiver idle, then again while it uploads a backlog, as a ratio.

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
    let (loaded_mb_s, overlapped) = while_archiving(&lab, &b, mib, bytes, 5)?;
    drop(b);
    std::fs::write(
        &paths.config,
        format!(
            "{text}\n{}max_rate_mb_s = {BOUNDED_MB_S}\n",
            garage.archive_config("bench")
        ),
    )?;
    let b = lab.start_bastiond()?;
    let (bounded_mb_s, bounded_overlapped) = while_archiving(&lab, &b, mib, bytes, 2)?;

    let v = json!({
        "object_mib": mib,
        "baseline_put_mb_s": raw_mb_s,
        "archive_mb_s": archive_mb_s,
        "archive_vs_put": archive_mb_s / raw_mb_s,
        "end_to_archived_mb_s": drain_mb_s,
        "archived_bytes": archived_bytes,
        "live_mib": live_mib,
        "live_idle_mb_s": idle_mb_s,
        "live_while_archiving_mb_s": loaded_mb_s,
        "live_ratio": loaded_mb_s / idle_mb_s,
        "archiving_throughout": overlapped,
        "bounded_rate_mb_s": BOUNDED_MB_S,
        "live_while_archiving_bounded_mb_s": bounded_mb_s,
        "live_ratio_bounded": bounded_mb_s / idle_mb_s,
        "archiving_throughout_bounded": bounded_overlapped,
    });
    println!(
        "\narchive: {mib} MiB incompressible session archived at {archive_mb_s:.0} MB/s (upload + read-back + verify; {drain_mb_s:.0} MB/s from session end to verified), plain put of the same size {raw_mb_s:.0} MB/s: ratio {:.2}",
        archive_mb_s / raw_mb_s
    );
    println!(
        "live recorded download {live_mib} MiB: {idle_mb_s:.0} MB/s archiver idle, {loaded_mb_s:.0} MB/s while archiving{}: ratio {:.2}",
        if overlapped {
            ""
        } else {
            " (the backlog finished before the transfer did)"
        },
        loaded_mb_s / idle_mb_s
    );
    println!(
        "  with the archiver bounded to {BOUNDED_MB_S} MB/s: {bounded_mb_s:.0} MB/s{}: ratio {:.2}",
        if bounded_overlapped {
            ""
        } else {
            " (the backlog finished before the transfer did)"
        },
        bounded_mb_s / idle_mb_s
    );
    Ok(v)
}

/// `archive.max_rate_mb_s` for the bounded live figure.
const BOUNDED_MB_S: u64 = 20;

/// Records a backlog of twice `mib` MiB of incompressible output, then times a live download
/// of `bytes` while it is archived; waits for the queue to drain (`archived` sessions since
/// bastiond started). Returns MB/s and whether the archiver was still busy at the end.
fn while_archiving(
    lab: &Lab,
    b: &Bastiond,
    mib: u64,
    bytes: u64,
    archived: u64,
) -> anyhow::Result<(f64, bool)> {
    download(lab, "cat /dev/urandom", 2 * (mib << 20))?;
    let mb_s = download(lab, "cat /dev/zero", bytes)?;
    let overlapped = archive_status(b)?["pending"].as_u64().unwrap_or(0) > 0;
    drained(b, archived)?;
    Ok((mb_s, overlapped))
}

/// Incompressible bytes, from the kernel's random source.
fn random(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
