//! bastiond's memory against the volume it has recorded: 10 concurrent sessions carry bulk
//! downloads and uploads through the explicit listener, half incompressible (random bytes) and
//! half text, and bastiond's RSS is read at each mark (1 GiB and 10 GiB recorded in the full
//! run). A recorder whose memory follows what it recorded shows here; one that only holds up on
//! /dev/zero would show in the incompressible half.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bastion_lab::{Lab, bastiond::Bastiond};
use serde_json::{Value, json};

/// Sessions carrying at once.
const SESSIONS: u64 = 10;
/// Each source file; a session alternates them, so half of what it carries is each.
const CHUNK_MIB: u64 = 16;

/// The two source files: random bytes (incompressible, and no repeat within a block) and text
/// shaped like a file listing.
fn sources(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let random = dir.join("random.bin");
    let text = dir.join("text.txt");
    let mut bytes = vec![0u8; (CHUNK_MIB << 20) as usize];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    std::fs::write(&random, &bytes)?;
    let mut listing = String::with_capacity(bytes.len() + 128);
    let mut i = 0u64;
    while listing.len() < bytes.len() {
        listing.push_str(&format!(
            "-rw-r--r-- 1 root root {:>8} 2026-11-{:02} /usr/share/doc/package-{}/file-{}.txt\n",
            (i * 7919) % 100_000,
            1 + i % 28,
            i / 13,
            i % 97
        ));
        i += 1;
    }
    listing.truncate(bytes.len());
    std::fs::write(&text, listing)?;
    Ok((random, text))
}

/// Carries `mib` MiB in one session: down (the target prints the two files in turn) or up
/// (the client sends them in turn); returns the bytes carried.
fn carry(lab: &Lab, down: bool, mib: u64, random: &Path, text: &Path) -> anyhow::Result<u64> {
    let pairs = (mib / (2 * CHUNK_MIB)).max(1);
    let want = pairs * 2 * (CHUNK_MIB << 20);
    let remote = if down {
        format!(
            "i=0; while [ $i -lt {pairs} ]; do cat {} {}; i=$((i+1)); done",
            random.display(),
            text.display()
        )
    } else {
        "cat > /dev/null".to_owned()
    };
    let mut child = lab
        .ssh_via_bastion("root@web1", &[])?
        .arg(remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let chunks = if down {
        Vec::new()
    } else {
        vec![std::fs::read(random)?, std::fs::read(text)?]
    };
    let (got, status) = crate::bench::pump(&mut child, move |stdin| {
        for _ in 0..pairs {
            for c in &chunks {
                stdin.write_all(c)?;
            }
        }
        Ok(())
    })?;
    if !status.success() || (down && got != want) {
        bail!("volume transfer failed ({status}, {got} of {want} bytes down)");
    }
    Ok(want)
}

/// Where bastiond's anonymous memory is (KiB): the main heap, the other malloc heaps, and the
/// rest (stacks, large blocks mapped on their own, sled). glibc reserves each other heap as a
/// 64 MiB-aligned region and splits it into several mappings as it grows, so a mapping belongs
/// to one when an unnamed mapping starts at its 64 MiB boundary.
fn anon_layout(b: &Bastiond) -> String {
    const HEAP_MAX: u64 = 64 << 20;
    let Some(pid) = b.pid() else {
        return String::new();
    };
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    // (start, name, anonymous KiB) per mapping.
    let mut maps: Vec<(u64, &str, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((lo, _)) = first.split_once('-')
            && let Ok(lo) = u64::from_str_radix(lo, 16)
        {
            maps.push((lo, line.split_whitespace().nth(5).unwrap_or(""), 0));
        } else if first == "Anonymous:"
            && let Some(m) = maps.last_mut()
        {
            m.2 += words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let heap_bases: std::collections::BTreeSet<u64> = maps
        .iter()
        .filter(|(lo, name, _)| name.is_empty() && lo % HEAP_MAX == 0)
        .map(|(lo, _, _)| *lo)
        .collect();
    let (mut heap, mut arenas, mut other) = (0u64, 0u64, 0u64);
    for (lo, name, kib) in &maps {
        match *name {
            "[heap]" => heap += kib,
            "" if heap_bases.contains(&(lo - lo % HEAP_MAX)) => arenas += kib,
            _ => other += kib,
        }
    }
    format!(
        "heap {heap}, other heaps {arenas}, rest {other} in {} maps",
        maps.len()
    )
}

/// A number field of bastiond's /proc status (`VmRSS:`, `RssAnon:`, `Threads:`...).
fn status(b: &Bastiond, field: &str) -> u64 {
    crate::bench::status_field(b, field)
}

fn rss_kib(b: &Bastiond) -> u64 {
    status(b, "VmRSS:")
}

fn store_bytes(b: &Bastiond) -> anyhow::Result<u64> {
    let s: Value = serde_json::from_str(&b.ctl_ok(&["--json", "status"])?)?;
    s["store"]["size_bytes"].as_u64().context("store size")
}

/// bastiond's RSS after each mark (MiB recorded in total, ascending) and the store's growth
/// per byte carried.
pub fn volume(lab: &Lab, b: &Bastiond, marks_mib: &[u64]) -> anyhow::Result<Value> {
    let (random, text) = sources(&lab.info().run_dir.join("volume"))?;
    let store_before = store_bytes(b)?;
    let rss_before = rss_kib(b);
    let t0 = Instant::now();
    let mut carried = 0u64;
    let mut marks = Vec::new();
    for &mark in marks_mib {
        let per_session = (mark.saturating_sub(carried >> 20)) / SESSIONS;
        eprintln!("==> volume: {SESSIONS} sessions carry {per_session} MiB each (to {mark} MiB)");
        let results: Vec<anyhow::Result<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..SESSIONS)
                .map(|i| {
                    let (random, text) = (&random, &text);
                    s.spawn(move || carry(lab, i % 2 == 0, per_session, random, text))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
                })
                .collect()
        });
        for r in results {
            carried += r?;
        }
        // The last blocks are written when the sessions close, and bastiond returns what they
        // freed to the kernel every 5 s.
        std::thread::sleep(Duration::from_secs(7));
        let rss = rss_kib(b);
        eprintln!(
            "    {} MiB recorded: bastiond RSS {rss} KiB ({} anon: {}; {} file; peak {}), {} threads",
            carried >> 20,
            status(b, "RssAnon:"),
            anon_layout(b),
            status(b, "RssFile:"),
            status(b, "VmHWM:"),
            status(b, "Threads:")
        );
        marks.push(json!({
            "recorded_mib": carried >> 20,
            "rss_kib": rss,
            "peak_rss_kib": status(b, "VmHWM:"),
            "rss_anon_kib": status(b, "RssAnon:"),
            "rss_file_kib": status(b, "RssFile:"),
            "threads": status(b, "Threads:"),
            "secs": t0.elapsed().as_secs_f64(),
        }));
    }
    let grown = store_bytes(b)?.saturating_sub(store_before);
    let incompressible = incompressible_per_byte(lab, b, &random)?;
    Ok(json!({
        "incompressible_store_bytes_per_byte": incompressible,
        "sessions": SESSIONS,
        "rss_kib_before": rss_before,
        "marks": marks,
        "store_bytes_per_byte": grown as f64 / carried.max(1) as f64,
        "mb_s": carried as f64 / 1e6 / t0.elapsed().as_secs_f64(),
    }))
}

/// Store growth per byte carried for incompressible bytes alone: one session downloads the
/// random file four times (64 MiB), and the store (segments and sled) is measured around it.
fn incompressible_per_byte(lab: &Lab, b: &Bastiond, random: &Path) -> anyhow::Result<f64> {
    let before = store_bytes(b)?;
    let r = random.display();
    let out = lab
        .ssh_via_bastion("root@web1", &[])?
        .arg(format!("cat {r} {r} {r} {r}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let carried = out.stdout.len() as u64;
    if carried != 4 * (CHUNK_MIB << 20) {
        bail!("incompressible download carried {carried} bytes");
    }
    // The record closes just after the client exits.
    std::thread::sleep(Duration::from_secs(2));
    Ok(store_bytes(b)?.saturating_sub(before) as f64 / carried as f64)
}

/// The volume figures as lines of the bench report.
pub fn print(v: &Value) {
    let marks = v["marks"].as_array().cloned().unwrap_or_default();
    let line: Vec<String> = marks
        .iter()
        .map(|m| {
            format!(
                "{} MiB -> {} MiB RSS (peak {} MiB)",
                m["recorded_mib"],
                m["rss_kib"].as_u64().unwrap_or(0) >> 10,
                m["peak_rss_kib"].as_u64().unwrap_or(0) >> 10
            )
        })
        .collect();
    let ratio = match (marks.first(), marks.last()) {
        (Some(a), Some(z)) => {
            z["rss_kib"].as_f64().unwrap_or(f64::NAN) / a["rss_kib"].as_f64().unwrap_or(f64::NAN)
        }
        _ => f64::NAN,
    };
    println!(
        "volume recorded ({} sessions, half incompressible, down and up): bastiond RSS {} MiB before; {}; last/first {ratio:.3}; store grew {:.3} bytes per byte carried ({:.4} for incompressible bytes alone); {:.0} MB/s",
        v["sessions"],
        v["rss_kib_before"].as_u64().unwrap_or(0) >> 10,
        line.join(", "),
        v["store_bytes_per_byte"].as_f64().unwrap_or(f64::NAN),
        v["incompressible_store_bytes_per_byte"]
            .as_f64()
            .unwrap_or(f64::NAN),
        v["mb_s"].as_f64().unwrap_or(f64::NAN)
    );
}
