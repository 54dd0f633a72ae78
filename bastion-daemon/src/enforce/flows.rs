//! Flow audit: the hooks report every denied attempt and every allowed flow to a protected
//! prefix through the pinned `FLOWS` ring buffer; this module turns them into audit events.
//!
//! Repeats within one second (a SYN retried, a ping every 200 ms) become one event with a count,
//! and at most `MAX_PER_WINDOW` distinct flows are kept per second, the rest counted as
//! suppressed in a summary event: a flood is audited without flooding the store. Events the
//! kernel could not queue (ring full) are counted there (`FLOWS_LOST`) and audited as lost.

use std::{os::fd::AsRawFd, time::Duration};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use bastion_common::{FlowEvent, map_names};
use bastion_core::flow::{Flow, Window};
use tokio::io::unix::AsyncFd;

use super::EnforceError;

const WINDOW: Duration = Duration::from_secs(1);
/// The kernel side of flow audit: the ring buffer and the lost-event counter.
pub struct FlowSource {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

impl FlowSource {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<FlowSource, EnforceError> {
        let mut map = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| EnforceError::Missing(format!("map {name}")))
        };
        let ring =
            RingBuf::try_from(map(map_names::FLOWS)?).map_err(|source| EnforceError::Map {
                name: map_names::FLOWS,
                source,
            })?;
        let lost = PerCpuArray::try_from(map(map_names::FLOWS_LOST)?).map_err(|source| {
            EnforceError::Map {
                name: map_names::FLOWS_LOST,
                source,
            }
        })?;
        Ok(FlowSource { ring, lost })
    }

    /// Reads flows until `shutdown`, handing each window to `sink`.
    pub async fn run(
        self,
        mut sink: impl FnMut(WindowReport) + Send,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let FlowSource { ring, lost } = self;
        let mut last_lost = lost_total(&lost);
        // Events lost while no bastiond was reading are reported by the first window.
        let mut first = true;
        // SAFETY: the descriptor belongs to the ring buffer, which the AsyncFd owns: it stays
        // open for as long as it is registered.
        let mut ring = match unsafe { AsyncFd::register(RingFd(ring)) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "flow audit unavailable: cannot poll the ring buffer");
                return;
            }
        };
        let offset = wall_minus_mono_ns();
        let mut window = Window::default();
        let mut tick = tokio::time::interval(WINDOW);
        tokio::pin!(shutdown);
        loop {
            let stopping = tokio::select! {
                _ = &mut shutdown => true,
                _ = tick.tick() => false,
                guard = ring.readable_mut() => {
                    if let Ok(mut guard) = guard {
                        drain(&mut guard.get_inner_mut().0, &mut window, offset);
                        guard.clear_ready();
                    }
                    continue;
                }
            };
            drain(&mut ring.get_mut().0, &mut window, offset);
            let lost_now = lost_total(&lost);
            let (flows, suppressed) = window.take();
            let lost_new = lost_now.saturating_sub(last_lost);
            if first || !flows.is_empty() || suppressed > 0 || lost_new > 0 {
                sink(WindowReport {
                    flows,
                    suppressed,
                    lost_new,
                    lost_total: lost_now,
                });
            }
            first = false;
            last_lost = lost_now;
            if stopping {
                return;
            }
        }
    }
}

/// What one window produced.
pub struct WindowReport {
    pub flows: Vec<Flow>,
    /// Distinct flows beyond the per-window cap, counted only.
    pub suppressed: u64,
    /// Events the kernel lost (ring full) since the previous window.
    pub lost_new: u64,
    /// Events lost since the pinned counter was created.
    pub lost_total: u64,
}

fn lost_total(lost: &PerCpuArray<MapData, u64>) -> u64 {
    lost.get(&0, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

fn drain(ring: &mut RingBuf<MapData>, window: &mut Window, offset: i128) {
    // Bounded by what is queued now; new events wake the poll again.
    for _ in 0..bastion_common::FLOW_RING_BYTES / 80 {
        let Some(item) = ring.next() else { return };
        if item.len() >= std::mem::size_of::<FlowEvent>() {
            // SAFETY: the kernel wrote a whole FlowEvent (a plain #[repr(C)] struct of integers
            // and byte arrays: any bit pattern is valid); read_unaligned makes no alignment claim.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) };
            window.add(Flow::from_event(&event, offset));
        }
    }
}

struct RingFd(RingBuf<MapData>);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

fn wall_minus_mono_ns() -> i128 {
    let ns = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec to write.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    ns(libc::CLOCK_REALTIME) - ns(libc::CLOCK_MONOTONIC)
}
