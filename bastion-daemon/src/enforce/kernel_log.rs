//! aya-log output of the eBPF programs, forwarded into bastiond's own `tracing` log (target
//! `bastion_ebpf`). Debug output only: flows reach the audit stream through `flows`.

use std::os::fd::{AsRawFd, RawFd};

use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

pub struct KernelLog(EbpfLogger<Tracing>);

impl KernelLog {
    /// The logger of the object just loaded (its programs write to its own log buffer).
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Option<KernelLog> {
        match EbpfLogger::init_with_logger(ebpf, Tracing) {
            Ok(l) => Some(KernelLog(l)),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF log unavailable");
                None
            }
        }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        // SAFETY: the descriptor belongs to the logger's ring buffer, which the AsyncFd owns: it
        // stays open for as long as it is registered.
        let mut fd = match unsafe { AsyncFd::register(self) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "eBPF log unavailable: cannot poll");
                return;
            }
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                guard = fd.readable_mut() => match guard {
                    Ok(mut guard) => {
                        guard.get_inner_mut().0.flush();
                        guard.clear_ready();
                    }
                    Err(_) => return,
                },
            }
        }
    }
}

impl AsRawFd for KernelLog {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A `log::Log` that re-emits records as `tracing` events.
struct Tracing;

impl log::Log for Tracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "bastion_ebpf", "{message}"),
            log::Level::Warn => tracing::warn!(target: "bastion_ebpf", "{message}"),
            log::Level::Info => tracing::info!(target: "bastion_ebpf", "{message}"),
            log::Level::Debug => tracing::debug!(target: "bastion_ebpf", "{message}"),
            log::Level::Trace => tracing::trace!(target: "bastion_ebpf", "{message}"),
        }
    }

    fn flush(&self) {}
}
