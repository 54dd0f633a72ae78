//! The task that turns the kernel's flow reports into audit events: one batch per window,
//! with what was suppressed or lost counted in the same batch.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bastion_core::audit::{Actor, AuditKind};
use bastion_store::{Store, StoreError};

use super::cgroup_watch::Intruders;
use crate::enforce::flows::{FlowSource, WindowReport};

/// Stores each window of flows the kernel reports as audit events (the last window is
/// written at shutdown).
pub(super) async fn audit_flows(
    source: FlowSource,
    store: Arc<Store>,
    lost_total: Arc<AtomicU64>,
    intruders: Intruders,
    shutdown: impl Future<Output = ()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = source.run(
        move |report| {
            let _ = tx.send(report);
        },
        shutdown,
    );
    let writer = async {
        while let Some(report) = rx.recv().await {
            let WindowReport {
                flows,
                suppressed,
                lost_new,
                lost_total: total,
            } = report;
            lost_total.store(total, Ordering::Relaxed);
            let alerts = intruders.alerts_for_flows(&flows);
            let mut kinds: Vec<AuditKind> = flows.into_iter().map(AuditKind::Flow).collect();
            kinds.extend(alerts);
            if suppressed > 0 || lost_new > 0 {
                tracing::warn!(
                    suppressed,
                    lost = lost_new,
                    "flow events not stored one by one"
                );
                kinds.push(AuditKind::FlowsUncounted {
                    suppressed,
                    lost: lost_new,
                    lost_total: total,
                });
            }
            if kinds.is_empty() {
                continue;
            }
            let store = store.clone();
            let written =
                tokio::task::spawn_blocking(move || store.append_audits(Actor::Daemon, kinds))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))
                    .and_then(|r| r);
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot store flow events");
            }
        }
    };
    tokio::join!(reader, writer);
}
