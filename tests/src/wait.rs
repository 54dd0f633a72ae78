//! Waiting for what a test cannot be told about directly. Every wait is bounded by a limit far
//! above what any machine needs: a guard against hanging forever, never a timing assertion. The
//! error names what was awaited, so a failure says what never happened.

use std::{
    io::Read,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
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
pub struct Collected {
    buf: Arc<Mutex<Vec<u8>>>,
    /// Set by the reading thread once the stream ended (end of file or a read error).
    ended: Arc<AtomicBool>,
}

impl Collected {
    pub fn spawn(mut reader: impl Read + Send + 'static) -> Collected {
        let collected = Collected {
            buf: Arc::default(),
            ended: Arc::default(),
        };
        let (buf, ended) = (collected.buf.clone(), collected.ended.clone());
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut chunk) {
                if let Ok(mut b) = buf.lock() {
                    b.extend_from_slice(&chunk[..n]);
                }
            }
            ended.store(true, Ordering::SeqCst);
        });
        collected
    }

    pub fn text(&self) -> String {
        self.buf
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// How many bytes have been read so far.
    pub fn len(&self) -> usize {
        self.buf.lock().map(|b| b.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `needle` has been read.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        self.wait_for_times(needle, 1, limit)
    }

    /// Waits until `needle` has been read at least `times` times.
    pub fn wait_for_times(
        &self,
        needle: &str,
        times: usize,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let what = match times {
            1 => format!("{needle:?} in the output"),
            n => format!("{needle:?} {n} times in the output"),
        };
        eventually(&what, limit, || {
            (self.text().matches(needle).count() >= times).then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}; output so far: {:?}", self.text()))
    }

    /// Waits until the stream has been read to its end, so that everything the child wrote
    /// (what it printed last before exiting) is in [`Collected::text`].
    pub fn wait_ended(&self, limit: Duration) -> anyhow::Result<()> {
        eventually("the end of the output", limit, || {
            self.ended.load(Ordering::SeqCst).then_some(())
        })
    }
}
