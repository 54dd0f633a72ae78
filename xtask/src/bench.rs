//! `cargo xtask bench`: bastion against the direct path, measured in the same run on the same
//! lab, printed as a table with ratios and written as JSON. Release binaries.
//!
//! Paths: `direct` is OpenSSH straight to web1's sshd (from the admin host, outside enforcement);
//! `jump` is OpenSSH through a plain sshd on the bastion host (`-W`, no audit), the practical
//! limit of any terminating path on shared cores; `bastion` is the same client through
//! bastiond's explicit listener, recording on; `transparent` is plain `ssh root@203.0.113.10`
//! intercepted by bastiond (TPROXY), recording on. The eBPF programs' own cost is measured
//! before and after bastiond attaches them (`ebpf_cost`).

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
    /// Idle interactive sessions held open for the memory figure.
    #[arg(long)]
    idle: Option<usize>,
    /// Commands in the store for the search figure.
    #[arg(long)]
    commands: Option<usize>,
    /// Only the store figures (recorder ingest, search over `--commands`).
    #[arg(long)]
    store_only: bool,
    /// Only bastiond's memory against the volume recorded (`bench_volume.rs`).
    #[arg(long)]
    volume_only: bool,
    /// Only the archive's figures (`bench_archive.rs`).
    #[arg(long)]
    archive_only: bool,
    /// The volume figure's marks in MiB recorded (default 1024,10240; --quick 256,1024).
    #[arg(long, value_delimiter = ',')]
    volume_marks: Vec<u64>,
}

/// The AES-GCM cipher setting the bulk figures are also taken with.
const GCM: &[&str] = &["-c", "aes256-gcm@openssh.com"];

struct Path<'a> {
    name: &'static str,
    lab: &'a Lab,
    /// The admin's client config for transparent mode (`Lab::transparent_client_config`).
    client_config: Option<std::path::PathBuf>,
}

impl Path<'_> {
    /// An ssh command to web1 along this path.
    fn ssh(&self, extra: &[&str]) -> anyhow::Result<Command> {
        match self.name {
            "bastion" => self.lab.ssh_via_bastion("root@web1", extra),
            "transparent" => {
                let config = self.client_config.as_deref().context("no client config")?;
                let mut c = self.lab.admin_client("ssh", config)?;
                c.args(extra).arg("root@203.0.113.10");
                Ok(c)
            }
            "jump" => {
                let mut opts = self.lab.ssh_options().join(" ");
                // The cipher asked for applies to both legs of the jump.
                if let Some(i) = extra.iter().position(|a| *a == "-c") {
                    opts.push_str(&format!(" -c {}", extra.get(i + 1).unwrap_or(&"")));
                }
                let proxy = format!("ProxyCommand=ssh {opts} -W %h:%p root@198.51.100.1");
                let mut c = self.lab.command("admin", "ssh")?;
                c.args(extra)
                    .args(["-o", &proxy])
                    .args(self.lab.ssh_options())
                    .arg("root@203.0.113.10");
                Ok(c)
            }
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
    let setups = if args.quick { 10 } else { 50 };
    let idle = args.idle.unwrap_or(if args.quick { 100 } else { 1000 });
    let commands = args
        .commands
        .unwrap_or(if args.quick { 100_000 } else { 1_000_000 });
    let transfers = if args.quick { 20 } else { 100 };

    let volume_marks: &[u64] = if !args.volume_marks.is_empty() {
        &args.volume_marks
    } else if args.quick {
        &[256, 1024]
    } else {
        &[1024, 10240]
    };
    if args.volume_only {
        let lab = Lab::up()?;
        let b = lab.start_bastiond()?;
        lab.enroll_alice(&b)?;
        let v = crate::bench_volume::volume(&lab, &b, volume_marks)?;
        crate::bench_volume::print(&v);
        let out = workspace().join("target/bench/volume.json");
        std::fs::create_dir_all(out.parent().context("path")?)?;
        std::fs::write(&out, serde_json::to_vec_pretty(&v)?)?;
        println!("results: {}", out.display());
        return Ok(());
    }
    if args.archive_only {
        let v = crate::bench_archive::archive(args.quick)?;
        let out = workspace().join("target/bench/archive.json");
        std::fs::create_dir_all(out.parent().context("path")?)?;
        std::fs::write(&out, serde_json::to_vec_pretty(&v)?)?;
        println!("results: {}", out.display());
        return Ok(());
    }
    if args.store_only {
        let lab = Lab::up()?;
        let mut b = lab.start_bastiond()?;
        let store =
            crate::bench_scale::store(&lab, &mut b, if args.quick { 64 } else { 512 }, commands)?;
        print_store(&store, if args.quick { 64 } else { 512 });
        let out = workspace().join("target/bench/store.json");
        std::fs::create_dir_all(out.parent().context("path")?)?;
        std::fs::write(&out, serde_json::to_vec_pretty(&store)?)?;
        println!("results: {}", out.display());
        return Ok(());
    }
    let mut lab = Lab::up()?;
    lab.start_jump_host()?;
    let mut paths = ["direct", "jump", "bastion", "transparent"].map(|name| Path {
        name,
        lab: &lab,
        client_config: None,
    });
    let mut results = serde_json::Map::new();
    // Direct and jump first: once bastiond runs, its egress program drops every path to the
    // protected hosts but its own sessions, as it must.
    for p in &paths[..2] {
        results.insert(p.name.into(), measure(p, None, down, up, samples, setups)?);
    }
    eprintln!("==> eBPF cost without the programs");
    let ebpf_without = crate::ebpf_cost::measure(&lab, args.quick)?;
    let mut b = lab.start_bastiond()?;
    lab.enroll_alice(&b)?;
    eprintln!("==> eBPF cost with the programs");
    let (ebpf_with, program_stats) =
        crate::ebpf_cost::with_program_stats(|| crate::ebpf_cost::measure(&lab, args.quick))?;
    paths[3].client_config = Some(lab.transparent_client_config(&b)?);
    for p in &paths[2..] {
        results.insert(
            p.name.into(),
            measure(p, Some(&b), down, up, samples, setups)?,
        );
    }
    let (d, jmp, x, t) = (
        &results["direct"],
        &results["jump"],
        &results["bastion"],
        &results["transparent"],
    );
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "\n{:<16}{:>10}{:>10}{:>10}{:>13}{:>16}{:>14}{:>12}",
        "figure",
        "direct",
        "jump",
        "bastion",
        "transparent",
        "bastion/direct",
        "bastion/jump",
        "transp/jump"
    );
    for (k, label) in [
        ("down_mb_s", "download MB/s"),
        ("up_mb_s", "upload MB/s"),
        ("echo_p50_us", "echo p50 µs"),
        ("echo_p99_us", "echo p99 µs"),
        ("sessions_per_s", "sessions/s"),
        ("down_gcm_mb_s", "down GCM MB/s"),
        ("up_gcm_mb_s", "up GCM MB/s"),
        ("cpu_s_per_gb", "CPU s/GB"),
    ] {
        println!(
            "{label:<16}{:>10.1}{:>10.1}{:>10.1}{:>13.1}{:>16.2}{:>14.2}{:>12.2}",
            f(d, k),
            f(jmp, k),
            f(x, k),
            f(t, k),
            f(x, k) / f(d, k),
            f(x, k) / f(jmp, k),
            f(t, k) / f(jmp, k)
        );
    }
    println!("\neBPF cost            without        with     ratio");
    for (label, get) in [
        ("connect() local p50 ns", "/connect_local/p50_ns"),
        ("connect() local p99 ns", "/connect_local/p99_ns"),
        ("connect() protected p50 ns", "/connect_protected/p50_ns"),
        ("connect() protected p99 ns", "/connect_protected/p99_ns"),
        ("veth MB/s", "/veth_mb_s"),
    ] {
        let a = ebpf_without
            .pointer(get)
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN);
        let w = ebpf_with
            .pointer(get)
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN);
        println!("{label:<28}{a:>10.0}{w:>12.0}{:>10.3}", w / a);
    }
    for (label, get) in [
        ("local", "/connect_local/connect4_ns_per_run"),
        ("protected", "/connect_protected/connect4_ns_per_run"),
    ] {
        println!(
            "  connect4 on a {label} destination: {:.0} ns per run (kernel's own accounting)",
            ebpf_with
                .pointer(get)
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN)
        );
    }
    for (name, v) in program_stats.as_object().into_iter().flatten() {
        println!(
            "  {name:<10} {:>10} runs, {:>6.0} ns per run (kernel's own accounting)",
            v["runs"],
            v["ns_per_run"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "bastiond RSS: {} KiB before its path, {} KiB after, peak {} KiB (through {down} MiB down + {up} MiB up)",
        x["bastiond_rss_kib_before"], x["bastiond_rss_kib_after"], x["bastiond_peak_rss_kib"]
    );
    let random = disk_per_byte(&b, &paths[2], "head -c 33554432 /dev/urandom", 32 << 20)?;
    let text = disk_per_byte(
        &b,
        &paths[2],
        "find / -xdev 2>/dev/null | head -c 16777216",
        0,
    )?;
    println!(
        "recorded bytes per byte carried: {:.3} incompressible, {:.3} file-listing text (sled store grew {:.3} and {:.3} per byte)",
        random.0, text.0, random.1, text.1
    );
    let hangs = crate::bench_scale::bulk_hangs(|| paths[2].ssh(&[]), transfers, 8)?;
    println!(
        "recorded bulk downloads: {} of {} whole, {} hung, {} short",
        hangs["whole"], hangs["transfers"], hangs["hung"], hangs["short"]
    );
    let volume = crate::bench_volume::volume(&lab, &b, volume_marks)?;
    crate::bench_volume::print(&volume);
    let mut idle_figures = Vec::new();
    for n in [idle / 10, idle].into_iter().filter(|n| *n > 0) {
        let v = crate::bench_scale::idle_sessions(&lab, &b, n)?;
        println!(
            "{n} idle interactive sessions: bastiond RSS {} -> {} KiB, {:.0} KiB per session (opened in {:.1} s)",
            v["rss_kib_before"],
            v["rss_kib_with"],
            v["kib_per_session"].as_f64().unwrap_or(f64::NAN),
            v["open_secs"].as_f64().unwrap_or(f64::NAN)
        );
        idle_figures.push(v);
    }
    let store =
        crate::bench_scale::store(&lab, &mut b, if args.quick { 64 } else { 512 }, commands)?;
    print_store(&store, if args.quick { 64 } else { 512 });
    let archive = crate::bench_archive::archive(args.quick)?;
    let summary = json!({
        "archive": archive,
        "bulk_hangs": hangs,
        "volume": volume,
        "idle_sessions": idle_figures,
        "store": store,
        "sizes_mib": {"down": down, "up": up},
        "samples": samples,
        "setups": setups,
        "results": results,
        "ebpf": {"without": ebpf_without, "with": ebpf_with, "program_stats": program_stats},
        "recorded_bytes_per_byte": {"incompressible": random.0, "text": text.0},
        "store_growth_per_byte": {"incompressible": random.1, "text": text.1},
    });
    let out = workspace().join("target/bench/results.json");
    std::fs::create_dir_all(out.parent().context("path")?)?;
    std::fs::write(&out, serde_json::to_vec_pretty(&summary)?)?;
    println!("results: {}", out.display());
    Ok(())
}

fn print_store(store: &serde_json::Value, ingest_mib: u64) {
    println!(
        "store: recorder ingest {:.0} MB/s, {:.0} MB per CPU-second ({ingest_mib} MiB, half incompressible); {} commands indexed in {:.1} s; bastiond start {:.2} s",
        store["ingest"]["mb_s"].as_f64().unwrap_or(f64::NAN),
        store["ingest"]["mb_per_cpu_s"].as_f64().unwrap_or(f64::NAN),
        store["populate"]["commands"],
        store["populate"]["secs"].as_f64().unwrap_or(f64::NAN),
        store["bastiond_start_secs"].as_f64().unwrap_or(f64::NAN)
    );
    for k in ["rare_match", "no_match", "by_user"] {
        println!(
            "search {k:<10} p50 {:.1} ms (bastionctl, end to end), {:.2} ms in bastiond, max {:.1} ms, {} hits",
            store[k]["p50_ms_bastionctl"].as_f64().unwrap_or(f64::NAN),
            store[k]["p50_ms_in_bastiond"].as_f64().unwrap_or(f64::NAN),
            store[k]["max_ms_bastionctl"].as_f64().unwrap_or(f64::NAN),
            store[k]["hits"]
        );
    }
}

/// Every per-path figure; bastiond's memory when it is on the path.
fn measure(
    p: &Path,
    b: Option<&Bastiond>,
    down: u64,
    up: u64,
    samples: usize,
    setups: usize,
) -> anyhow::Result<serde_json::Value> {
    eprintln!(
        "==> {}: download {down} MiB, upload {up} MiB, {samples} echo samples, {setups} setups",
        p.name
    );
    let rss_before = b.map(rss_kib);
    let cpu_before = b.map(crate::bench_scale::cpu_secs);
    let mut v = json!({
        "down_mb_s": throughput(p, down, true, &[])?,
        "up_mb_s": throughput(p, up, false, &[])?,
    });
    if let (Some(b), Some(before)) = (b, cpu_before) {
        let gb = (down + up) as f64 * 1_048_576.0 / 1e9;
        v["cpu_s_per_gb"] = ((crate::bench_scale::cpu_secs(b) - before) / gb).into();
    }
    if p.name != "transparent" {
        v["down_gcm_mb_s"] = throughput(p, down, true, GCM)?.into();
        v["up_gcm_mb_s"] = throughput(p, up, false, GCM)?.into();
    }
    let (p50, p99) = echo_latency(p, samples)?;
    v["echo_p50_us"] = p50.into();
    v["echo_p99_us"] = p99.into();
    v["sessions_per_s"] = setup_rate(p, setups)?.into();
    if let Some(b) = b {
        v["bastiond_rss_kib_before"] = rss_before.into();
        v["bastiond_rss_kib_after"] = rss_kib(b).into();
        v["bastiond_peak_rss_kib"] = peak_rss_kib(b).into();
    }
    Ok(v)
}

/// Sessions per second for `n` sequential `ssh host true`.
fn setup_rate(p: &Path, n: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    for _ in 0..n {
        let st = p
            .ssh(&[])?
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("{}: `ssh host true` failed ({st})", p.name);
        }
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn store_bytes(b: &Bastiond) -> anyhow::Result<u64> {
    let s: serde_json::Value = serde_json::from_str(&b.ctl_ok(&["--json", "status"])?)?;
    s["store"]["size_bytes"].as_u64().context("store size")
}

/// Recorded bytes per byte carried while `remote` streams its output through bastion:
/// (what the recorder stored for the session, what the store as a whole grew by).
/// `expected` is the byte count to check, or 0 to take what arrived.
fn disk_per_byte(
    b: &Bastiond,
    p: &Path,
    remote: &str,
    expected: u64,
) -> anyhow::Result<(f64, f64)> {
    let before = store_bytes(b)?;
    let out = p
        .ssh(&[])?
        .arg(remote)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let carried = out.stdout.len() as u64;
    if carried == 0 || (expected != 0 && carried != expected) {
        bail!("recording measurement: carried {carried} bytes");
    }
    // The record closes just after the client exits.
    let mut stored = None;
    for _ in 0..100 {
        let list: serde_json::Value =
            serde_json::from_str(&b.ctl_ok(&["--json", "session", "list", "--closed"])?)?;
        let newest = &list["sessions"][0];
        if newest["bytes_out"].as_u64() == Some(carried) {
            stored = newest["stored_bytes"].as_u64();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = stored.context("the measured session never closed")?;
    let grown = store_bytes(b)?.saturating_sub(before);
    Ok((
        stored as f64 / carried as f64,
        grown as f64 / carried as f64,
    ))
}

/// Runs a transfer through `child` (stdin and stdout piped): `send` writes its stdin on a
/// thread while stdout is drained here; returns the bytes read and how the child exited.
pub(crate) fn pump(
    child: &mut std::process::Child,
    send: impl FnOnce(&mut std::process::ChildStdin) -> std::io::Result<()> + Send + 'static,
) -> anyhow::Result<(u64, std::process::ExitStatus)> {
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    // stdin is closed when the thread ends, which ends an upload.
    let writer = std::thread::spawn(move || send(&mut stdin));
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
    Ok((got, child.wait()?))
}

/// MB/s (10^6 bytes) of one transfer of `mib` MiB, down (target → client) or up.
fn throughput(p: &Path, mib: u64, down: bool, extra: &[&str]) -> anyhow::Result<f64> {
    let bytes = mib << 20;
    let remote = if down {
        format!("head -c {bytes} /dev/zero")
    } else {
        "cat > /dev/null".to_owned()
    };
    let mut child = p
        .ssh(extra)?
        .arg(remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    let (got, status) = pump(&mut child, move |stdin| {
        if !down {
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..mib {
                stdin.write_all(&chunk)?;
            }
        }
        Ok(())
    })?;
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

pub(crate) fn status_field(b: &Bastiond, field: &str) -> u64 {
    b.status_field(field)
}

fn rss_kib(b: &Bastiond) -> u64 {
    status_field(b, "VmRSS:")
}

fn peak_rss_kib(b: &Bastiond) -> u64 {
    status_field(b, "VmHWM:")
}
