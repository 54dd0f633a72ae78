//! `cargo xtask bench`: bastion against the direct path, measured in the same run on the same
//! lab, printed as a table with ratios and written as JSON. Release binaries.
//!
//! Paths: `direct` is OpenSSH straight to web1's sshd (from the admin host, outside enforcement);
//! `bastion` is the same client through bastiond's explicit listener, recording on.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bastion_lab::{Lab, bastiond::Bastiond, sys};
use serde_json::json;

use crate::util::{cargo, require_root, step, workspace};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Small sizes and few samples: a smoke run in well under a minute.
    #[arg(long)]
    quick: bool,
    /// Download size in MiB.
    #[arg(long)]
    down_mib: Option<u64>,
    /// Upload size in MiB.
    #[arg(long)]
    up_mib: Option<u64>,
    /// Keystroke echo samples.
    #[arg(long)]
    samples: Option<usize>,
}

struct Path<'a> {
    name: &'static str,
    lab: &'a Lab,
}

impl Path<'_> {
    /// An ssh command to web1 along this path.
    fn ssh(&self, extra: &[&str]) -> anyhow::Result<Command> {
        match self.name {
            "bastion" => self.lab.ssh_via_bastion("root@web1", extra),
            _ => {
                let mut c = self.lab.command_unenforced("admin", "ssh")?;
                c.args(extra)
                    .args(self.lab.ssh_options())
                    .arg("root@203.0.113.10");
                Ok(c)
            }
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    require_root("cargo xtask bench")?;
    crate::setup::run()?;
    step(
        "build release binaries",
        cargo().args(["build", "--locked", "--release", "--workspace", "--bins"]),
    )?;
    sys::use_bin_dir(workspace().join("target/release"));
    let down = args.down_mib.unwrap_or(if args.quick { 64 } else { 512 });
    let up = args.up_mib.unwrap_or(if args.quick { 32 } else { 256 });
    let samples = args.samples.unwrap_or(if args.quick { 50 } else { 200 });

    let lab = Lab::up()?;
    let b = lab.start_bastiond()?;
    lab.enroll_alice(&b)?;

    let paths = [
        Path {
            name: "direct",
            lab: &lab,
        },
        Path {
            name: "bastion",
            lab: &lab,
        },
    ];
    let mut results = serde_json::Map::new();
    for p in &paths {
        eprintln!(
            "==> {}: download {down} MiB, upload {up} MiB, {samples} echo samples",
            p.name
        );
        let rss_before = rss_kib(&b);
        let down_mbs = throughput(p, down, true)?;
        let up_mbs = throughput(p, up, false)?;
        let (p50, p99) = echo_latency(p, samples)?;
        results.insert(
            p.name.into(),
            json!({
                "down_mb_s": down_mbs, "up_mb_s": up_mbs, "echo_p50_us": p50, "echo_p99_us": p99,
                "bastiond_rss_kib_before": rss_before, "bastiond_rss_kib_after": rss_kib(&b),
                "bastiond_peak_rss_kib": peak_rss_kib(&b),
            }),
        );
    }
    let d = &results["direct"];
    let x = &results["bastion"];
    let ratio = |k: &str| x[k].as_f64().unwrap_or(0.0) / d[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "\n{:<22}{:>12}{:>12}{:>16}",
        "figure", "direct", "bastion", "bastion/direct"
    );
    for (k, label) in [
        ("down_mb_s", "download MB/s"),
        ("up_mb_s", "upload MB/s"),
        ("echo_p50_us", "echo p50 µs"),
        ("echo_p99_us", "echo p99 µs"),
    ] {
        println!(
            "{label:<22}{:>12.1}{:>12.1}{:>16.2}",
            d[k].as_f64().unwrap_or(0.0),
            x[k].as_f64().unwrap_or(0.0),
            ratio(k)
        );
    }
    println!(
        "bastiond RSS: {} KiB before, {} KiB after, peak {} KiB (through {} MiB down + {} MiB up per path)",
        x["bastiond_rss_kib_before"],
        x["bastiond_rss_kib_after"],
        x["bastiond_peak_rss_kib"],
        down,
        up
    );
    let store = b.ctl_ok(&["--json", "status"])?;
    let store: serde_json::Value = serde_json::from_str(&store)?;
    println!(
        "store size after the run: {} bytes",
        store["store"]["size_bytes"]
    );
    let out = workspace().join("target/bench/results.json");
    std::fs::create_dir_all(out.parent().context("path")?)?;
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(
            &json!({"sizes_mib": {"down": down, "up": up}, "samples": samples, "results": results}),
        )?,
    )?;
    println!("results: {}", out.display());
    Ok(())
}

/// MB/s (10^6 bytes) of one transfer of `mib` MiB, down (target → client) or up.
fn throughput(p: &Path, mib: u64, down: bool) -> anyhow::Result<f64> {
    let bytes = mib << 20;
    let remote = if down {
        format!("head -c {bytes} /dev/zero")
    } else {
        "cat > /dev/null".to_owned()
    };
    let mut child = p
        .ssh(&[])?
        .arg(remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        if !down {
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..mib {
                stdin.write_all(&chunk)?;
            }
        }
        Ok(())
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let status = child.wait()?;
    let secs = t0.elapsed().as_secs_f64();
    if !status.success() || (down && got != bytes) {
        bail!(
            "{} transfer failed ({status}, {got} of {bytes} bytes)",
            p.name
        );
    }
    Ok(bytes as f64 / 1e6 / secs)
}

/// p50/p99 µs from writing one byte to a raw PTY running `cat` until it comes back.
fn echo_latency(p: &Path, samples: usize) -> anyhow::Result<(f64, f64)> {
    let mut child = p
        .ssh(&["-tt"])?
        .arg("stty raw -echo; echo READY; exec cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    // Wait for READY (bounded by the line length).
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("READY") {
        if stdout.read(&mut byte)? == 0 || seen.len() > 4096 {
            bail!("{}: the echo session did not start", p.name);
        }
        seen.push(byte[0]);
    }
    // Skip the line ending after READY.
    std::thread::sleep(Duration::from_millis(200));
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let c = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        stdin.write_all(&[c])?;
        stdin.flush()?;
        loop {
            if stdout.read(&mut byte)? == 0 {
                bail!("{}: echo session closed", p.name);
            }
            if byte[0] == c {
                break;
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let _ = child.kill();
    let _ = child.wait();
    times.sort_by(f64::total_cmp);
    let pct = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    Ok((pct(0.5), pct(0.99)))
}

fn status_field(b: &Bastiond, field: &str) -> u64 {
    let Some(pid) = b.pid() else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib(b: &Bastiond) -> u64 {
    status_field(b, "VmRSS:")
}

fn peak_rss_kib(b: &Bastiond) -> u64 {
    status_field(b, "VmHWM:")
}
