//! Giving freed memory back. glibc's malloc keeps what a session frees in the heap of the
//! thread that freed it (one heap per thread up to 8 per core) for reuse; under recording load
//! the blocking pool's threads come and go, and bastiond's RSS settled at the high-water mark
//! of every heap any thread had touched, well after the sessions that needed it ended.
//! Trimming every few seconds returns the free pages to the kernel, so RSS follows what is
//! live now (`cargo xtask bench --volume-only` measures it at 1 GiB and 10 GiB recorded).

use std::{future::Future, time::Duration};

const EVERY: Duration = Duration::from_secs(5);

/// Returns the allocator's free pages to the kernel every [`EVERY`] until `shutdown`.
pub async fn trim_periodically(shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        // Walks every heap: off the async workers.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Returns free memory at the top and in the middle of every heap to the kernel.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases pages malloc holds free; it touches no live allocation
    // and is thread-safe (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}
