//! The eBPF enforcement's own cost, for `cargo xtask bench`: connect() latency and veth
//! throughput measured by `lab-bench` in the bastion namespace, once before bastiond attaches
//! its programs and once after, in the same run.
//!
//! - `connect_local`: connect() to a listener on 127.0.0.1 from the clients cgroup (the hook
//!   runs and finds the destination unprotected: the cost every process on the appliance pays);
//! - `connect_protected`: connect() to web1 as bastiond (protected and allowed: the longest path
//!   through the hook, flow event included);
//! - `veth_mb_s`: one bulk TCP stream as bastiond to web1 across the protected interface, where
//!   the tcx egress program judges every packet.
//!
//! "As bastiond" takes what bastiond's exemption takes: its cgroup *and* a process id in the
//! pinned `ALLOWED_TGIDS` map. The harness (root, like any root process could) joins the
//! cgroup and adds the measuring process's pid to the map for the run, then removes it.

use std::process::Stdio;

use anyhow::{Context, bail};
use bastion_lab::{Lab, sys};
use serde_json::{Value, json};

const SINK_PORT: &str = "9000";
const WEB1: &str = "203.0.113.10";

pub fn measure(lab: &Lab, quick: bool) -> anyhow::Result<Value> {
    let connects = if quick { "2000" } else { "5000" };
    let mib = if quick { "512" } else { "2048" };
    let bin = sys::bin("lab-bench")?;
    let mut sink = lab
        .command_unenforced("web1", &bin)?
        .args(["sink", SINK_PORT])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the sink on web1")?;
    let daemon_cgroup = lab.name().bastiond_cgroup();
    std::fs::create_dir_all(&daemon_cgroup)?;
    let bastion = lab.name().netns("bastion");
    let tgids = lab
        .name()
        .bpffs_dir()
        .join("maps")
        // bastion_common::map_names::ALLOWED_TGIDS (a pin name: a stored format, never renamed).
        .join("ALLOWED_TGIDS");
    let clients = |args: &[&str]| run(lab.command("bastion", &bin)?, args);
    let as_bastiond = |args: &[&str]| {
        // The shell adds its own pid (kept by exec) to the map, if bastiond's programs are
        // there to read it, then becomes lab-bench.
        let mut cmd = sys::command_in("sh", Some(&bastion), &daemon_cgroup)?;
        cmd.arg("-c")
            .arg(format!(
                "p=$$; m='{}'; if [ -e \"$m\" ]; then bpftool map update pinned \"$m\" key {} value 1 0 0 0 || exit 1; fi; exec \"$0\" \"$@\"",
                tgids.display(),
                "$((p & 255)) $((p >> 8 & 255)) $((p >> 16 & 255)) $((p >> 24 & 255))"
            ))
            .arg(&bin);
        run_then(cmd, args, |pid| {
            let key: Vec<String> = pid.to_le_bytes().iter().map(u8::to_string).collect();
            let _ = std::process::Command::new("bpftool")
                .args(["map", "delete", "pinned"])
                .arg(&tgids)
                .arg("key")
                .args(&key)
                .output();
        })
    };
    // With the kernel's accounting on, each connect phase also gets connect4's own ns per run.
    let phase = |f: &dyn Fn() -> anyhow::Result<Value>| -> anyhow::Result<Value> {
        let before = program_stats();
        let mut v = f()?;
        let after = program_stats();
        if let (Some((r1, t1)), Some((r0, t0))) = (after.get("connect4"), before.get("connect4"))
            && r1 > r0
        {
            v["connect4_ns_per_run"] = ((t1 - t0) as f64 / (r1 - r0) as f64).into();
        }
        Ok(v)
    };
    let result = (|| {
        Ok(json!({
            "connect_local": phase(&|| clients(&["connect", connects, "127.0.0.1", "0"]))?,
            "connect_protected": phase(&|| as_bastiond(&["connect", connects, WEB1, SINK_PORT]))?,
            // The median of three streams: one stream swings by several percent on shared cores.
            "veth_mb_s": median((0..3).map(|_| {
                as_bastiond(&["send", mib, WEB1, SINK_PORT]).map(|v| v["mb_s"].as_f64().unwrap_or(f64::NAN))
            }).collect::<anyhow::Result<Vec<f64>>>()?),
        }))
    })();
    let _ = sink.kill();
    let _ = sink.wait();
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run(cmd: std::process::Command, args: &[&str]) -> anyhow::Result<Value> {
    run_then(cmd, args, |_| {})
}

/// Runs `cmd args`, then `after(pid)` whatever happened, and parses its JSON output.
fn run_then(
    mut cmd: std::process::Command,
    args: &[&str],
    after: impl FnOnce(u32),
) -> anyhow::Result<Value> {
    let child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let out = child.wait_with_output();
    after(pid);
    let out = out?;
    if !out.status.success() {
        bail!(
            "lab-bench {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs `f` with the kernel's BPF run-time accounting on (`kernel.bpf_stats_enabled`, restored
/// after), and returns what `f` returned plus the kernel's own figure for each of bastion's
/// programs: runs and nanoseconds per run. Unlike the before/after latencies, this is not
/// blurred by the scheduler: it is the programs' cost itself (the profile of the hooks).
pub fn with_program_stats(
    f: impl FnOnce() -> anyhow::Result<Value>,
) -> anyhow::Result<(Value, Value)> {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let was = std::fs::read_to_string(KNOB).unwrap_or_else(|_| "0".into());
    std::fs::write(KNOB, "1").context("enabling kernel.bpf_stats_enabled")?;
    let before = program_stats();
    let result = f();
    let after = program_stats();
    let _ = std::fs::write(KNOB, was.trim());
    let mut stats = serde_json::Map::new();
    for (name, (runs, ns)) in after {
        let (runs0, ns0) = before.get(&name).copied().unwrap_or((0, 0));
        let runs = runs.saturating_sub(runs0);
        if runs > 0 {
            stats.insert(
                name,
                json!({ "runs": runs, "ns_per_run": ns.saturating_sub(ns0) as f64 / runs as f64 }),
            );
        }
    }
    Ok((result?, Value::Object(stats)))
}

/// (runs, total ns) per bastion program name, summed over every loaded instance.
fn program_stats() -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(o) = std::process::Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
    else {
        return out;
    };
    let progs: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        if [
            "connect4",
            "connect6",
            "sendmsg4",
            "sendmsg6",
            "setsockopt",
            "egress",
        ]
        .contains(&name)
        {
            let e = out.entry(name.to_owned()).or_insert((0, 0));
            e.0 += p["run_cnt"].as_u64().unwrap_or(0);
            e.1 += p["run_time_ns"].as_u64().unwrap_or(0);
        }
    }
    out
}
