//! The audit stream's flood budget, end to end: a source on the admin network sweeps 3000
//! ports of a protected host (each a distinct denied flow, dropped by the egress program).
//! Only the source's per-minute cap of them is stored one by one; everything else is counted
//! in summary events (the flood budget's per minute, the flow window's per second, the
//! kernel's lost counter), so the store stays bounded and nothing disappears uncounted.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use bastion_core::audit::{AuditEvent, AuditKind};
use bastion_lab::{Lab, bastiond::Bastiond, wait::eventually};

const WEB1: &str = "203.0.113.10";
const CAP: u64 = 20;
const SWEEP: u64 = 3000;
const FIRST_PORT: u64 = 10_000;

fn all_events(b: &Bastiond) -> Vec<AuditEvent> {
    b.ctl_ok(&["audit", "--after", "0", "--format", "jsonl"])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_sweep_from_one_source_stays_within_its_cap_and_the_rest_is_counted() {
    let lab = Lab::up().expect("lab");
    let config = &lab.info().bastiond.config;
    let text = std::fs::read_to_string(config).unwrap();
    let store_line = format!("path = \"{}\"", lab.info().bastiond.store.display());
    assert!(text.contains(&store_line));
    std::fs::write(
        config,
        text.replacen(
            &store_line,
            &format!("{store_line}\nunauthenticated_audit_per_source_per_minute = {CAP}"),
            1,
        ),
    )
    .unwrap();
    let b = lab.start_bastiond().expect("bastiond");

    let attack = bastion_lab::sys::bin("lab-attack").unwrap();
    let out = lab
        .command_unenforced("admin", &attack)
        .unwrap()
        .args(["sweep", WEB1, &FIRST_PORT.to_string(), &SWEEP.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // The flood budget's summary comes within a minute and a tick of the sweep.
    let mut events = Vec::new();
    let summarized = eventually(
        "the flood budget's summary",
        std::time::Duration::from_secs(90),
        || {
            events = all_events(&b);
            events
                .iter()
                .any(|e| matches!(e.kind, AuditKind::AuditSuppressed { .. }))
                .then_some(())
        },
    );
    assert!(summarized.is_ok(), "no audit_suppressed event: {events:#?}");

    let swept = |dport: u16| (FIRST_PORT..FIRST_PORT + SWEEP).contains(&u64::from(dport));
    let mut stored = 0u64;
    let mut by_budget = 0u64;
    let mut by_window = 0u64;
    let mut source = None;
    for e in &events {
        match &e.kind {
            AuditKind::Flow(f) if !f.allowed && swept(f.dport) => {
                stored += f.count;
                source = f.src;
            }
            AuditKind::AuditSuppressed { total, sources, .. } => {
                by_budget += total;
                assert!(
                    sources.iter().any(
                        |s| Some(s.source.as_str()) == source.map(|s| s.to_string()).as_deref()
                    ),
                    "the summary names the sweeping source {source:?}: {sources:?}"
                );
            }
            AuditKind::FlowsUncounted {
                suppressed, lost, ..
            } => by_window += suppressed + lost,
            _ => {}
        }
    }
    println!(
        "{SWEEP}-port sweep: {stored} flows stored one by one, {by_budget} counted by the flood budget, {by_window} by the flow window; {} audit events in all",
        events.len()
    );
    // One source: at most its cap per minute (the sweep may straddle a minute's end).
    assert!(
        stored > 0 && stored <= 2 * CAP,
        "{stored} swept flows stored one by one (cap {CAP} a minute)"
    );
    // Nothing vanished: what was not stored was counted.
    assert!(
        stored + by_budget + by_window >= SWEEP,
        "{stored} stored + {by_budget} held back by the budget + {by_window} by the flow window < {SWEEP}"
    );
    assert!(
        events.len() < 200,
        "{} audit events for a 3000-port sweep",
        events.len()
    );
    let report = b.ctl(&["verify", "--all"]).unwrap();
    assert!(report.status.success(), "{report:?}");
}
