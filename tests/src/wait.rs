//! Waiting for what a test cannot be told about directly. Every wait is bounded by a limit far
//! above what any machine needs: a guard against hanging forever, never a timing assertion. The
//! error names what was awaited, so a failure says what never happened.

use std::{
    io::Read,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::bail;

/// The bound for waits in tests: far above what any machine needs for one step.
pub const LIMIT: Duration = Duration::from_secs(60);

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(100);

/// Calls `probe` until it returns `Some`, at most for `limit`.
pub fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if start.elapsed() >= limit {
            bail!("{what}: not seen within {}s", limit.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

/// Everything read so far from a child's output, collected by a thread of its own (so a pipe
/// never fills up and stalls the child).
#[derive(Clone)]
pub struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    pub fn spawn(mut reader: impl Read + Send + 'static) -> Collected {
        let collected = Collected(Arc::default());
        let buf = collected.0.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut chunk) {
                if let Ok(mut b) = buf.lock() {
                    b.extend_from_slice(&chunk[..n]);
                }
            }
        });
        collected
    }

    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `needle` has been read.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        eventually(&format!("{needle:?} in the output"), limit, || {
            self.text().contains(needle).then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}; output so far: {:?}", self.text()))
    }
}
