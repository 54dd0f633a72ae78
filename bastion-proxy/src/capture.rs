//! File capture: the contents of files that cross a channel (SFTP or scp), for grants with
//! `capture_files` (or `record.capture_files`). A file's pieces are staged, at their offsets, in
//! an unnamed temporary file beside the store (`O_TMPFILE`: nothing is left behind by a crash),
//! so memory stays flat whatever the file's size; at the file's end its SHA-256 is known, and
//! the content is recorded once per session and hash ([`bastion_core::record::files`]).
//! Files larger than `record.max_file_capture_mb` keep their hash and size only, and what one
//! session stages at once is bounded too ([`STAGED_FILES`] files' worth), so a hostile client
//! cannot fill the store's disk through staging.

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
/// A session stages at most this many largest files' worth of bytes at once.
pub const STAGED_FILES: u64 = 4;
/// Bytes per `FileData` frame.
pub const PIECE: usize = 64 * 1024;

/// Where and how much to capture (from the config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The directory staged files are created in (the store's, so the same filesystem).
    pub dir: PathBuf,
    /// Largest file captured, bytes.
    pub max_bytes: u64,
}

/// What a session's channels share: file numbers, and the contents captured so far by hash.
#[derive(Debug, Default)]
pub struct SessionFiles {
    next: AtomicU32,
    seen: Mutex<HashMap<String, u32>>,
    /// Bytes staged now, over all the session's channels.
    staged: AtomicU64,
}

/// A file at its end: what the `File` frame says, and the staged content still to record
/// (`None`: nothing to add, the content is already in the record or was not captured).
pub struct Finished {
    pub file: CapturedFile,
    pub content: Option<File>,
}

impl Finished {
    /// Reads the staged content back in [`PIECE`]s, in order (`None` at its end).
    pub fn next_piece(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
        let Some(f) = &mut self.content else {
            return Ok(None);
        };
        buf.resize(PIECE, 0);
        let n = f.read(buf)?;
        Ok((n > 0).then_some(n))
    }
}

struct Staged {
    session: Arc<SessionFiles>,
    /// Bytes this file holds in staging (counted in the session's `staged`).
    staged: u64,
    index: u32,
    path: String,
    direction: Direction,
    file: Option<File>,
    hasher: ContentHash,
    /// Bytes hashed, from 0: pieces are hashed as they arrive while they arrive in order.
    hashed: u64,
    in_order: bool,
    size: u64,
    truncated: bool,
    note: Option<String>,
}

/// One channel's files in progress.
pub struct Capture {
    settings: Arc<Settings>,
    session: Arc<SessionFiles>,
    protocol: Protocol,
    open: HashMap<u64, Staged>,
}

impl Capture {
    pub fn new(settings: Arc<Settings>, session: Arc<SessionFiles>, protocol: Protocol) -> Self {
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
                FileEvent::Data {
                    key,
                    path,
                    direction,
                    offset,
                    data,
                } => {
                    if !self.open.contains_key(&key) {
                        let staged = self.stage(path, direction);
                        self.open.insert(key, staged);
                    }
                    if let Some(s) = self.open.get_mut(&key) {
                        s.piece(offset, &data, &self.settings);
                    }
                }
                FileEvent::End { key } => {
                    if let Some(s) = self.open.remove(&key) {
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
        open.into_iter().map(|s| self.finish_one(s)).collect()
    }

    fn stage(&self, path: String, direction: Direction) -> Staged {
        let (file, note) = if self.open.len() >= MAX_OPEN {
            (None, Some("too many files open at once".to_owned()))
        } else {
            match tempfile::tempfile_in(&self.settings.dir) {
                Ok(f) => (Some(f), None),
                Err(e) => (None, Some(format!("could not stage the file: {e}"))),
            }
        };
        Staged {
            session: self.session.clone(),
            staged: 0,
            index: self.session.next.fetch_add(1, Ordering::Relaxed),
            path,
            direction,
            file,
            hasher: ContentHash::default(),
            hashed: 0,
            in_order: true,
            size: 0,
            truncated: false,
            note,
        }
    }

    fn finish_one(&self, mut s: Staged) -> Finished {
        let sha256 = if s.in_order && s.hashed == s.size {
            Some(std::mem::take(&mut s.hasher).finish())
        } else {
            // Pieces came out of order: the staged copy is whole (unless truncated).
            s.file.as_mut().and_then(|f| hash_file(f).ok())
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
        let mut content = None;
        if let (Some(mut staged), Some(sha)) = (s.file.take(), file.sha256.clone()) {
            let mut seen = self.session.seen.lock().unwrap_or_else(|p| p.into_inner());
            file.captured = true;
            match seen.get(&sha) {
                Some(first) => file.same_as = Some(*first),
                None => {
                    use std::io::Seek;
                    seen.insert(sha, file.index);
                    if let Err(e) = staged.rewind() {
                        file.captured = false;
                        file.note = Some(format!("could not read the staged file: {e}"));
                    } else {
                        content = Some(staged);
                    }
                }
            }
        }
        Finished { file, content }
    }
}

impl Staged {
    fn piece(&mut self, offset: u64, data: &[u8], settings: &Settings) {
        let max = settings.max_bytes;
        let end = offset.saturating_add(data.len() as u64);
        self.size = self.size.max(end);
        if offset == self.hashed {
            self.hasher.update(data);
            self.hashed = end;
        } else if end > self.hashed {
            // A gap, or an overlap reaching past what is hashed: hashed from the copy instead.
            self.in_order = false;
        }
        if end > max {
            self.truncated = true;
            // Hash and size only: the staged copy goes (and with it the way to hash pieces
            // that came out of order).
            self.unstage();
            if !self.in_order {
                self.note = Some("pieces out of order past the capture limit".into());
            }
            return;
        }
        if self.file.is_some() && end > self.staged {
            let more = end - self.staged;
            let budget = max.saturating_mul(STAGED_FILES);
            let before = self.session.staged.fetch_add(more, Ordering::Relaxed);
            self.staged = end;
            if before.saturating_add(more) > budget {
                self.unstage();
                self.note = Some(format!(
                    "not captured: the session was staging {} MiB of files at once already",
                    before >> 20
                ));
                return;
            }
        }
        if let Some(f) = &self.file
            && let Err(e) = f.write_all_at(data, offset)
        {
            self.note = Some(format!("could not stage the file: {e}"));
            self.unstage();
        }
    }

    /// Gives the staged copy up (its space back to the session's budget).
    fn unstage(&mut self) {
        self.file = None;
        self.session
            .staged
            .fetch_sub(std::mem::take(&mut self.staged), Ordering::Relaxed);
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.unstage();
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

    fn piece(key: u64, offset: u64, data: &[u8]) -> FileEvent {
        FileEvent::Data {
            key,
            path: format!("/f{key}"),
            direction: Direction::Upload,
            offset,
            data: bytes::Bytes::copy_from_slice(data),
        }
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

    #[test]
    fn files_in_any_order_are_captured_once_per_hash_and_large_ones_hashed_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Arc::new(Settings {
            dir: dir.path().into(),
            max_bytes: 8,
        });
        let session = Arc::new(SessionFiles::default());
        let mut c = Capture::new(settings.clone(), session.clone(), Protocol::Sftp);
        // In order; out of order (overlapping a piece hashed already); too large.
        let mut done = c.take(vec![
            piece(1, 0, b"abc"),
            piece(2, 3, b"def"),
            piece(1, 3, b"de"),
            piece(2, 0, b"abc"),
            piece(3, 0, b"0123456789"),
            FileEvent::End { key: 1 },
            FileEvent::End { key: 2 },
        ]);
        done.extend(c.finish());
        assert_eq!(done.len(), 3);
        assert_eq!(done[0].file.sha256.as_deref(), Some(sha(b"abcde").as_str()));
        assert_eq!(content(&mut done[0]), b"abcde");
        assert_eq!(
            done[1].file.sha256.as_deref(),
            Some(sha(b"abcdef").as_str())
        );
        assert_eq!(content(&mut done[1]), b"abcdef");
        let big = &done[2].file;
        assert_eq!((big.size, big.truncated, big.captured), (10, true, false));
        assert_eq!(big.sha256.as_deref(), Some(sha(b"0123456789").as_str()));
        assert!(done[2].content.is_none());
        // Another channel of the same session moves the same content: not stored again.
        let mut c2 = Capture::new(settings, session, Protocol::Scp);
        let again = c2.take(vec![piece(9, 0, b"abcde"), FileEvent::End { key: 9 }]);
        assert_eq!(again[0].file.same_as, Some(done[0].file.index));
        assert!(again[0].file.captured && again[0].content.is_none());
        assert_eq!(again[0].file.index, 3);
    }

    #[test]
    fn a_session_stages_a_bounded_amount_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Arc::new(Settings {
            dir: dir.path().into(),
            max_bytes: 8,
        });
        let session = Arc::new(SessionFiles::default());
        let mut c = Capture::new(settings, session.clone(), Protocol::Sftp);
        // Five files of 8 bytes open at once: four fit the budget (4 x 8), the fifth does not.
        let pieces = (1..=5).map(|k| piece(k, 0, &[k as u8; 8])).collect();
        assert!(c.take(pieces).is_empty());
        assert_eq!(session.staged.load(Ordering::Relaxed), 32);
        let done = c.finish();
        assert_eq!(done.iter().filter(|f| f.file.captured).count(), 4);
        let fifth = &done[4].file;
        assert!(!fifth.captured && fifth.sha256.is_some(), "{fifth:?}");
        assert!(fifth.note.as_deref().unwrap_or("").contains("staging"));
        drop(done);
        assert_eq!(session.staged.load(Ordering::Relaxed), 0, "all given back");
    }
}
