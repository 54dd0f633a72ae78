//! The recorder's own threads for its disk work: compressing, appending and committing blocks,
//! and closing records. A session's work always goes to the same thread (chosen by its id), so
//! it runs in order, and sessions spread over [`threads`] threads.
//!
//! Why not tokio's blocking pool: its threads come and go with the load, and each runs on a
//! malloc heap it shares with whatever ran there before. A commit's small allocations that
//! live on (sled's cached nodes and values, its epoch garbage) then land between the proxy's
//! short-lived packet buffers, and keep those pages after the buffers are freed: bastiond's RSS
//! crept up with the volume recorded (1.08 to 1.24 times between 1 and 10 GiB in
//! `cargo xtask bench --volume-only`). Threads that stay keep their heaps, and what a commit
//! leaves behind stays packed together.

use std::{
    panic::AssertUnwindSafe,
    sync::{OnceLock, mpsc},
};

type Job = Box<dyn FnOnce() + Send>;

/// How many disk threads there are: one per core (compression is the recorder's CPU work),
/// within bounds.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .clamp(1, 16)
}

/// The threads' queues, started on first use.
fn queues() -> &'static [mpsc::Sender<Job>] {
    static QUEUES: OnceLock<Vec<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUES.get_or_init(|| {
        (0..threads())
            .filter_map(|i| {
                let (tx, rx) = mpsc::channel::<Job>();
                let spawned = std::thread::Builder::new()
                    .name(format!("record-disk-{i}"))
                    .spawn(move || serve(rx));
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a recorder disk thread");
                        None
                    }
                }
            })
            .collect()
    })
}

fn serve(rx: mpsc::Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        // A job that panics drops its reply, so its session fails (closed) as a lost write;
        // the thread goes on serving the others.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

/// Runs `f` on session `session`'s disk thread and returns its result; `None` when it did not
/// run to the end (it panicked, or no disk thread could be started).
pub(crate) async fn run<T: Send + 'static>(
    session: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let queues = queues();
    let index = session.checked_rem(queues.len() as u64)?;
    let queue = queues.get(usize::try_from(index).ok()?)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    queue.send(job).ok()?;
    rx.await.ok()
}
