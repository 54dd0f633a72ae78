//! Files that cross a channel (SFTP or scp): every one is listed with its size and SHA-256, and
//! for grants with `capture_files` (or `record.capture_files`) its content is kept too. A
//! file's pieces are staged, at their offsets, in an unnamed temporary file beside the store
//! (`O_TMPFILE`: nothing is left behind by a crash), so memory stays flat whatever the file's
//! size; at the file's end its SHA-256 is known, and the content is recorded once per session
//! and hash ([`bastion_core::record::files`]).
//!
//! Bounded against a hostile client: files larger than `record.max_file_capture_mb` keep their
//! hash and size only, and staging holds at most [`SESSION_STAGED_FILES`] largest files' worth
//! per session and [`STAGED_FILES`] for the whole daemon, until each file is on record; past
//! that, files are hashed and listed but not captured, and say why.

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use bastion_core::record::files::{CapturedFile, ContentHash, Direction, FileEvent, Protocol};

/// Files staged at once per channel; more are hashed but not captured.
const MAX_OPEN: usize = 64;
/// A session stages at most this many largest files' worth of bytes at once...
pub const SESSION_STAGED_FILES: u64 = 4;
/// ... and the daemon this many.
pub const STAGED_FILES: u64 = 16;
/// Separate stretches of a file followed before it counts as too fragmented to vouch for.
const MAX_STRETCHES: usize = 1024;
/// Bytes per `FileData` frame.
pub const PIECE: usize = 64 * 1024;

/// Where and how much to capture (from the config), and what is staged daemon-wide.
#[derive(Debug)]
pub struct Settings {
    /// The directory staged files are created in (the store's, so the same filesystem).
    pub dir: PathBuf,
    /// Largest file captured, bytes.
    pub max_bytes: u64,
    staged: AtomicU64,
}

impl Settings {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Settings {
        Settings {
            dir,
            max_bytes,
            staged: AtomicU64::new(0),
        }
    }
}

/// What a session's channels share: file numbers, and the contents captured so far by hash.
#[derive(Debug, Default)]
pub struct SessionFiles {
    next: AtomicU32,
    seen: Mutex<HashMap<String, u32>>,
    /// Bytes staged now, over all the session's channels.
    staged: AtomicU64,
}

/// Staging space held by one file, in the session's and the daemon's counts until dropped.
struct Space {
    session: Arc<SessionFiles>,
    settings: Arc<Settings>,
    bytes: u64,
}

impl Space {
    /// Grows to `bytes`; `Err(why)` (and nothing taken) past a budget.
    fn grow(&mut self, bytes: u64) -> Result<(), String> {
        let more = bytes.saturating_sub(self.bytes);
        let max = self.settings.max_bytes;
        for (counter, budget, whose) in [
            (
                &self.session.staged,
                max.saturating_mul(SESSION_STAGED_FILES),
                "the session",
            ),
            (
                &self.settings.staged,
                max.saturating_mul(STAGED_FILES),
                "bastiond",
            ),
        ] {
            let before = counter.fetch_add(more, Ordering::Relaxed);
            if before.saturating_add(more) > budget {
                counter.fetch_sub(more, Ordering::Relaxed);
                if whose == "bastiond" {
                    self.session.staged.fetch_sub(more, Ordering::Relaxed);
                }
                return Err(format!(
                    "not captured: {whose} was staging {} MiB of files at once already",
                    before >> 20
                ));
            }
        }
        self.bytes = bytes.max(self.bytes);
        Ok(())
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        self.session.staged.fetch_sub(self.bytes, Ordering::Relaxed);
        self.settings
            .staged
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A file at its end: what the `File` frame says, and the staged content still to record
/// (`None`: nothing to add: the content is in the record already, or is not captured). The
/// staging space stays counted until this is dropped, after recording.
pub struct Finished {
    pub file: CapturedFile,
    content: Option<(File, Space)>,
}

impl Finished {
    /// Reads the staged content back in [`PIECE`]s, in order (`None` at its end).
    pub fn next_piece(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
        let Some((f, _)) = &mut self.content else {
            return Ok(None);
        };
        buf.resize(PIECE, 0);
        let n = f.read(buf)?;
        Ok((n > 0).then_some(n))
    }

    pub fn has_content(&self) -> bool {
        self.content.is_some()
    }
}

struct Staged {
    index: u32,
    path: String,
    direction: Direction,
    /// The staged copy and its space (`None`: hashed only).
    copy: Option<(File, Space)>,
    hasher: ContentHash,
    /// Bytes hashed, from 0: pieces are hashed as they arrive while they arrive in order.
    hashed: u64,
    in_order: bool,
    /// The stretches of the file that crossed, merged (`None`: too fragmented to follow).
    stretches: Option<Vec<(u64, u64)>>,
    size: u64,
    truncated: bool,
    note: Option<String>,
}

/// One channel's files in progress.
pub struct Capture {
    /// Where to stage contents; `None`: files are listed and hashed only.
    settings: Option<Arc<Settings>>,
    session: Arc<SessionFiles>,
    protocol: Protocol,
    open: HashMap<u64, Staged>,
}

impl Capture {
    pub fn new(
        settings: Option<Arc<Settings>>,
        session: Arc<SessionFiles>,
        protocol: Protocol,
    ) -> Self {
        Capture {
            settings,
            session,
            protocol,
            open: HashMap::new(),
        }
    }

    /// Takes a tracker's events; returns the files they ended.
    pub fn take(&mut self, events: Vec<FileEvent>) -> Vec<Finished> {
        let mut done = Vec::new();
        for e in events {
            match e {
                FileEvent::Begin {
                    key,
                    path,
                    direction,
                } => {
                    let staged = self.stage(path, direction);
                    self.open.insert(key, staged);
                }
                FileEvent::Data { key, offset, data } => {
                    let max = self.settings.as_ref().map(|s| s.max_bytes);
                    if let Some(s) = self.open.get_mut(&key) {
                        s.piece(offset, &data, max);
                    }
                }
                FileEvent::End { key, cut } => {
                    if let Some(mut s) = self.open.remove(&key) {
                        if let Some(why) = cut {
                            s.note = Some(why);
                        }
                        done.push(self.finish_one(s));
                    }
                }
            }
        }
        done
    }

    /// Every file still open (the channel ended).
    pub fn finish(&mut self) -> Vec<Finished> {
        let mut open: Vec<Staged> = self.open.drain().map(|(_, s)| s).collect();
        open.sort_by_key(|s| s.index);
        open.into_iter()
            .map(|mut s| {
                s.note
                    .get_or_insert_with(|| "the channel ended before the file did".into());
                self.finish_one(s)
            })
            .collect()
    }

    fn stage(&self, path: String, direction: Direction) -> Staged {
        let (copy, note) = match &self.settings {
            None => (None, None),
            Some(_) if self.open.len() >= MAX_OPEN => (
                None,
                Some("not captured: too many files open at once".to_owned()),
            ),
            Some(settings) => match tempfile::tempfile_in(&settings.dir) {
                Ok(f) => {
                    let space = Space {
                        session: self.session.clone(),
                        settings: settings.clone(),
                        bytes: 0,
                    };
                    (Some((f, space)), None)
                }
                Err(e) => (None, Some(format!("not captured: staging failed: {e}"))),
            },
        };
        Staged {
            index: self.session.next.fetch_add(1, Ordering::Relaxed),
            path,
            direction,
            copy,
            hasher: ContentHash::default(),
            hashed: 0,
            in_order: true,
            stretches: Some(Vec::new()),
            size: 0,
            truncated: false,
            note,
        }
    }

    fn finish_one(&self, mut s: Staged) -> Finished {
        let missing = s.missing();
        let sha256 = if s.in_order {
            Some(std::mem::take(&mut s.hasher).finish())
        } else {
            // Pieces came out of order: hashed from the staged copy, when there is one whole.
            s.copy.as_mut().and_then(|(f, _)| hash_file(f).ok())
        };
        let mut file = CapturedFile {
            index: s.index,
            path: std::mem::take(&mut s.path),
            direction: s.direction,
            protocol: self.protocol,
            size: s.size,
            sha256,
            captured: false,
            truncated: s.truncated,
            same_as: None,
            note: s.note.take(),
        };
        if let Some(m) = missing {
            file.note = Some(match file.note {
                Some(n) => format!("{n}; {m}"),
                None => m,
            });
        }
        let mut content = None;
        if let (Some((mut staged, space)), Some(sha)) = (s.copy.take(), file.sha256.clone()) {
            use std::io::Seek;
            let mut seen = self.session.seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(first) = seen.get(&sha) {
                file.captured = true;
                file.same_as = Some(*first);
            } else {
                match staged.rewind() {
                    Ok(()) => {
                        seen.insert(sha, file.index);
                        file.captured = true;
                        content = Some((staged, space));
                    }
                    Err(e) => file.note = Some(format!("not captured: staging failed: {e}")),
                }
            }
        }
        Finished { file, content }
    }
}

impl Staged {
    fn piece(&mut self, offset: u64, data: &[u8], max: Option<u64>) {
        let end = offset.saturating_add(data.len() as u64);
        self.size = self.size.max(end);
        self.crossed(offset, end);
        if offset == self.hashed && self.in_order {
            self.hasher.update(data);
            self.hashed = end;
        } else if end > offset {
            // A gap, or bytes again where some were hashed: hashed from the copy instead.
            self.in_order = false;
        }
        let Some(max) = max else { return };
        if end > max {
            self.truncated = true;
            // Hash and size only: the staged copy goes (and with it the way to hash pieces
            // that came out of order).
            self.copy = None;
            return;
        }
        let Some((f, space)) = &mut self.copy else {
            return;
        };
        let result = space.grow(end).and_then(|()| {
            f.write_all_at(data, offset)
                .map_err(|e| format!("not captured: staging failed: {e}"))
        });
        if let Err(why) = result {
            self.note = Some(why);
            self.copy = None;
        }
    }

    /// Notes that `[start, end)` crossed.
    fn crossed(&mut self, start: u64, end: u64) {
        let Some(v) = &mut self.stretches else {
            return;
        };
        if start >= end {
            return;
        }
        let at = v.partition_point(|s| s.1 < start);
        let mut merged = (start, end);
        let mut last = at;
        while last < v.len() && v[last].0 <= end {
            merged = (merged.0.min(v[last].0), merged.1.max(v[last].1));
            last += 1;
        }
        v.splice(at..last, [merged]);
        if v.len() > MAX_STRETCHES {
            self.stretches = None;
        }
    }

    /// What of the file never crossed, if anything (or that it could not be followed).
    fn missing(&self) -> Option<String> {
        let Some(v) = &self.stretches else {
            return Some("too fragmented to tell whether every byte crossed".into());
        };
        let covered: u64 = v.iter().map(|s| s.1 - s.0).sum();
        (covered < self.size).then(|| {
            format!(
                "{} of its {} bytes never crossed (zeros in the captured copy)",
                self.size - covered,
                self.size
            )
        })
    }
}

fn hash_file(f: &mut File) -> std::io::Result<String> {
    use std::io::Seek;
    f.rewind()?;
    let mut ctx = ContentHash::default();
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(key: u64) -> FileEvent {
        FileEvent::Begin {
            key,
            path: format!("/f{key}"),
            direction: Direction::Upload,
        }
    }

    fn piece(key: u64, offset: u64, data: &[u8]) -> FileEvent {
        FileEvent::Data {
            key,
            offset,
            data: bytes::Bytes::copy_from_slice(data),
        }
    }

    fn end(key: u64) -> FileEvent {
        FileEvent::End { key, cut: None }
    }

    fn content(f: &mut Finished) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(n) = f.next_piece(&mut buf).expect("reads") {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn sha(b: &[u8]) -> String {
        let mut h = ContentHash::default();
        h.update(b);
        h.finish()
    }

    fn setup(max_bytes: u64) -> (tempfile::TempDir, Arc<Settings>, Arc<SessionFiles>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Arc::new(Settings::new(dir.path().into(), max_bytes));
        (dir, settings, Arc::default())
    }

    #[test]
    fn files_in_any_order_are_captured_once_per_hash_and_large_ones_hashed_only() {
        let (_dir, settings, session) = setup(8);
        let mut c = Capture::new(Some(settings.clone()), session.clone(), Protocol::Sftp);
        // In order; out of order; too large; written twice at one offset.
        let mut done = c.take(vec![
            begin(1),
            begin(2),
            begin(3),
            begin(4),
            piece(1, 0, b"abc"),
            piece(2, 3, b"def"),
            piece(1, 3, b"de"),
            piece(2, 0, b"abc"),
            piece(3, 0, b"0123456789"),
            piece(4, 0, b"xyz"),
            piece(4, 0, b"abc"),
            end(1),
            end(2),
            end(4),
        ]);
        done.extend(c.finish());
        assert_eq!(done.len(), 4);
        assert_eq!(done[0].file.sha256.as_deref(), Some(sha(b"abcde").as_str()));
        assert_eq!(content(&mut done[0]), b"abcde");
        assert_eq!(
            done[1].file.sha256.as_deref(),
            Some(sha(b"abcdef").as_str())
        );
        assert_eq!(content(&mut done[1]), b"abcdef");
        assert_eq!(done[1].file.note, None, "every byte crossed");
        // Written twice at one offset: the hash is of what the copy holds, the second write.
        assert_eq!(done[2].file.sha256.as_deref(), Some(sha(b"abc").as_str()));
        assert_eq!(content(&mut done[2]), b"abc");
        let big = &done[3].file;
        assert_eq!((big.size, big.truncated, big.captured), (10, true, false));
        assert_eq!(big.sha256.as_deref(), Some(sha(b"0123456789").as_str()));
        assert!(!done[3].has_content());
        // Another channel of the same session moves the same content: not stored again.
        let mut c2 = Capture::new(Some(settings), session, Protocol::Scp);
        let again = c2.take(vec![begin(9), piece(9, 0, b"abcde"), end(9)]);
        assert_eq!(again[0].file.same_as, Some(done[0].file.index));
        assert!(again[0].file.captured && !again[0].has_content());
    }

    #[test]
    fn gaps_and_cut_files_say_so() {
        let (_dir, settings, session) = setup(64);
        let mut c = Capture::new(Some(settings), session, Protocol::Sftp);
        let done = c.take(vec![
            begin(1),
            piece(1, 0, b"ab"),
            piece(1, 6, b"gh"),
            end(1),
            begin(2),
            piece(2, 0, b"ab"),
            FileEvent::End {
                key: 2,
                cut: Some("SFTP tracking stopped".into()),
            },
        ]);
        let note = done[0].file.note.as_deref().unwrap_or_default();
        assert!(note.contains("4 of its 8 bytes never crossed"), "{note}");
        assert_eq!(done[1].file.note.as_deref(), Some("SFTP tracking stopped"));
        let open = c.take(vec![begin(3), piece(3, 0, b"x")]);
        assert!(open.is_empty());
        let last = c.finish();
        assert!(
            last[0]
                .file
                .note
                .as_deref()
                .unwrap_or_default()
                .contains("channel ended")
        );
    }

    #[test]
    fn without_capture_files_are_hashed_and_listed_only() {
        let session = Arc::default();
        let mut c = Capture::new(None, session, Protocol::Scp);
        let done = c.take(vec![begin(1), piece(1, 0, b"abc"), end(1)]);
        let f = &done[0].file;
        assert_eq!((f.size, f.captured, f.note.as_deref()), (3, false, None));
        assert_eq!(f.sha256.as_deref(), Some(sha(b"abc").as_str()));
    }

    #[test]
    fn staging_is_bounded_per_session_and_released_once_recorded() {
        let (_dir, settings, session) = setup(8);
        let mut c = Capture::new(Some(settings.clone()), session.clone(), Protocol::Sftp);
        // Five files of 8 bytes open at once: four fit the session's budget (4 x 8).
        let pieces = (1..=5)
            .flat_map(|k| [begin(k), piece(k, 0, &[k as u8; 8])])
            .collect();
        assert!(c.take(pieces).is_empty());
        assert_eq!(session.staged.load(Ordering::Relaxed), 32);
        assert_eq!(settings.staged.load(Ordering::Relaxed), 32);
        let done = c.finish();
        assert_eq!(done.iter().filter(|f| f.file.captured).count(), 4);
        let fifth = &done[4].file;
        assert!(!fifth.captured && fifth.sha256.is_some(), "{fifth:?}");
        assert!(fifth.note.as_deref().unwrap_or("").contains("staging"));
        assert_eq!(
            session.staged.load(Ordering::Relaxed),
            32,
            "held until recorded"
        );
        drop(done);
        assert_eq!(session.staged.load(Ordering::Relaxed), 0, "all given back");
        assert_eq!(settings.staged.load(Ordering::Relaxed), 0);
    }
}
