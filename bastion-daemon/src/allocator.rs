//! Keeping the allocator's memory to what is live. glibc's malloc gives threads heaps of their
//! own (up to 8 per core) and keeps what is freed in them for reuse; under recording load the
//! blocking pool's threads come and go, each new one could take a new heap, and bastiond's RSS
//! climbed with the volume recorded as more heaps reached their high-water marks, well after
//! the sessions that needed them ended. So: a heap for each thread that stays and no more
//! ([`bound_heaps`], at start; the recorder's disk threads are among those that stay, see
//! `bastion_record::disk_thread`), large blocks always mapped on their own (glibc otherwise
//! raises its mmap threshold each time one is freed, up to 32 MiB, after which block buffers
//! and zstd contexts land in the heaps and fragment them), and the free pages in the heaps
//! returned to the kernel every few seconds ([`trim_periodically`]).
//! `cargo xtask bench --volume-only` measures RSS at 1 GiB and 10 GiB recorded.

use std::{future::Future, time::Duration};

const EVERY: Duration = Duration::from_secs(5);

/// How long an idle thread of the blocking pool (sled reads, audit writes, control requests)
/// waits for work before it exits (tokio's default is 10 s). A burst starts threads; once they
/// exit, their stacks go back to the kernel, so RSS after a burst follows what is running.
pub const BLOCKING_IDLE: Duration = Duration::from_secs(2);

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

/// Heaps the allocator may keep: one for the main thread and one for each thread that stays,
/// tokio's workers and the recorder's disk threads (one per core each). A bound reached at once
/// keeps RSS from creeping up as the blocking pool's threads come and go: they share these.
fn heaps() -> i32 {
    let per_core = bastion_record::disk_thread::threads();
    i32::try_from(1 + 2 * per_core).unwrap_or(i32::MAX)
}

/// Allocations of this size and up get a mapping of their own, returned whole when freed.
/// Set, it stays put (glibc's threshold is dynamic only while never set).
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Caps the allocator's heaps and fixes its mmap threshold. Call before any thread starts.
pub fn bound_heaps() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, heaps());
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
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
