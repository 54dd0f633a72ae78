//! Work that must not slow a live session: a runtime of its own on a thread of its own, whose
//! threads (its blocking pool's too) run at the lowest CPU priority, nice 19.
//!
//! The archiver reads whole recordings back from the store, hashes them, sends every byte and
//! reads every byte back again. On the session runtime that work would queue beside the
//! sessions' own tasks and take an equal share of the cores when they are all busy; niced, it
//! takes what the sessions leave. Niced threads still use every core nobody else wants, so an
//! idle appliance archives at full speed, and a nice value (unlike `SCHED_IDLE`) is never
//! starved outright, so a busy one archives too, later. (`cargo xtask bench --archive-only`
//! measures live throughput while archiving; with one session on two cores, most of the
//! slowdown left is the lab's store sharing the machine, not the archiver.)

use std::{future::Future, time::Duration};

/// The nice value of background threads: the lowest priority there is.
const NICE: i32 = 19;

/// Runs `work` to its end on a niced runtime of its own; the handle ends with it.
pub fn spawn(
    name: &'static str,
    work: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let started = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority(name);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(name)
                .on_thread_start(move || lower_priority(name))
                .thread_keep_alive(crate::allocator::BLOCKING_IDLE)
                .build();
            match runtime {
                Ok(runtime) => {
                    runtime.block_on(work);
                    // A blocking task still reading the store gets five seconds, then is left
                    // behind: it holds nothing that is not on disk already, and the store is
                    // flushed after this handle ends.
                    runtime.shutdown_timeout(Duration::from_secs(5));
                }
                Err(e) => tracing::error!(error = %e, task = name, "cannot start its runtime"),
            }
            drop(done_tx);
        });
    if let Err(e) = started {
        tracing::error!(error = %e, task = name, "cannot start its thread");
    }
    tokio::spawn(async move {
        let _ = done_rx.await;
    })
}

/// Lowers the calling thread's priority: Linux keeps a nice value per thread, and
/// `setpriority(PRIO_PROCESS, 0)` is the calling thread's. A failure costs live sessions some
/// speed, not correctness: it is logged, and the work goes on.
fn lower_priority(name: &str) {
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        tracing::warn!(error = %e, task = name, "cannot lower the priority of a background thread");
    }
}
