//! Anchors: every `audit.anchor_interval_secs`, whenever a session has ended (`now` is
//! notified), and once more at shutdown, the audit key signs the audit chain's head and the
//! signature is appended to the stream as an `anchor` event.
//!
//! Written into the stream rather than to a side channel of its own: whatever exports the
//! stream (`bastionctl audit --follow` to a file or syslog) carries the anchors off the
//! appliance with no second export path to configure or lose, and the anchor is itself
//! chained. It attests the head at the event before it, which is all `verify --anchors` needs.
//! One task writes them all, so an idle appliance adds no anchor after its last one.

use std::{future::Future, sync::Arc, time::Duration};

use bastion_core::integrity;
use bastion_store::Store;
use tokio::sync::Notify;

pub async fn run(
    store: Arc<Store>,
    key: Arc<ssh_key::PrivateKey>,
    every: Duration,
    now: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // The first after one interval: the stream as found at start is the previous bastiond's,
    // which anchored it when it stopped.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The sequence number of the last anchor written: nothing new since, nothing to sign.
    let mut last = None;
    loop {
        let stopping = tokio::select! {
            _ = &mut shutdown => true,
            _ = tick.tick() => false,
            _ = now.notified() => false,
        };
        let (s, k) = (store.clone(), key.clone());
        let written = tokio::task::spawn_blocking(move || {
            s.append_anchor(|seq, head| {
                if last == Some(seq) {
                    return None;
                }
                integrity::anchor(&k, seq, head)
                    .map_err(|e| tracing::error!(error = %e, "cannot sign an audit anchor"))
                    .ok()
            })
        })
        .await;
        match written {
            Ok(Ok(Some(event))) => last = Some(event.seq),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot store an audit anchor"),
            Err(e) => tracing::error!(error = %e, "anchor task failed"),
        }
        if stopping {
            return;
        }
    }
}
