//! SFTP (version 3) operations seen in a recorded `sftp` subsystem channel: which files were
//! read or written (path and byte count, reported when the file is closed), removed, renamed,
//! created. Pure: fed the two byte streams, returns events. Bounded: oversized packets or too
//! many open handles stop the tracking (reported once) rather than grow memory.
//!
//! When capturing ([`SftpTracker::capturing`]), it also hands over every file's content as
//! [`FileEvent`]s: the data of writes, and of reads as their answers arrive, with offsets.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Serialize;

use super::files::{Direction, FileEvent};

/// Largest SFTP packet tracked (OpenSSH's own limit is 256 KiB).
const MAX_PACKET: usize = 256 * 1024 + 1024;
/// Requests awaiting an answer, and open handles, at most.
const MAX_PENDING: usize = 4096;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_OPENDIR: u8 = 11;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXF_WRITE: u32 = 0x2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SftpEvent {
    /// A file was closed after `read` bytes were read from it and `written` written to it.
    File {
        path: String,
        read: u64,
        written: u64,
    },
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Listed {
        path: String,
    },
    /// The stream could not be followed any further (the recording itself is complete).
    Untracked {
        reason: String,
    },
}

#[derive(Debug)]
struct Open {
    key: u64,
    /// Opened for writing (an upload when nothing is read from it).
    write: bool,
    /// Its `Begin` was handed over.
    begun: bool,
    path: String,
    read: u64,
    written: u64,
    dir: bool,
}

#[derive(Debug)]
enum Pending {
    Open {
        path: String,
        dir: bool,
        write: bool,
    },
    Read {
        handle: Vec<u8>,
        offset: u64,
    },
}

#[derive(Debug, Default)]
pub struct SftpTracker {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    pending: HashMap<u32, Pending>,
    handles: HashMap<Vec<u8>, Open>,
    stopped: bool,
    capture: bool,
    next_key: u64,
    files: Vec<FileEvent>,
}

/// A reader over one packet's payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (h, t) = self.0.split_at_checked(4)?;
        self.0 = t;
        Some(u32::from_be_bytes(h.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        let (h, t) = self.0.split_at_checked(8)?;
        self.0 = t;
        Some(u64::from_be_bytes(h.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let (h, t) = self.0.split_at_checked(n)?;
        self.0 = t;
        Some(h)
    }
    fn string(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

impl Open {
    /// A piece of the file's content, after its `Begin` (the first piece's direction).
    fn piece(
        &mut self,
        files: &mut Vec<FileEvent>,
        direction: Direction,
        offset: u64,
        data: &[u8],
    ) {
        self.begin(files, direction);
        files.push(FileEvent::Data {
            key: self.key,
            offset,
            data: Bytes::copy_from_slice(data),
        });
    }

    fn begin(&mut self, files: &mut Vec<FileEvent>, direction: Direction) {
        if !self.begun {
            self.begun = true;
            files.push(FileEvent::Begin {
                key: self.key,
                path: self.path.clone(),
                direction,
            });
        }
    }

    /// The file's end; one that never moved a byte is listed too (as written, when opened for
    /// writing: an empty file created).
    fn end(&mut self, files: &mut Vec<FileEvent>, cut: Option<&str>) {
        let direction = match self.write {
            true => Direction::Upload,
            false => Direction::Download,
        };
        self.begin(files, direction);
        files.push(FileEvent::End {
            key: self.key,
            cut: cut.map(str::to_owned),
        });
    }
}

impl SftpTracker {
    /// A tracker that also hands over files' contents ([`SftpTracker::take_files`]).
    pub fn capturing() -> SftpTracker {
        SftpTracker {
            capture: true,
            ..SftpTracker::default()
        }
    }

    /// File contents seen since the last call (always empty unless capturing).
    pub fn take_files(&mut self) -> Vec<FileEvent> {
        std::mem::take(&mut self.files)
    }

    /// Bytes the client sent on the channel.
    pub fn client(&mut self, data: &[u8]) -> Vec<SftpEvent> {
        let mut buf = std::mem::take(&mut self.to_server);
        let events = self.feed(&mut buf, data, true);
        self.to_server = buf;
        events
    }

    /// Bytes the server sent on the channel.
    pub fn server(&mut self, data: &[u8]) -> Vec<SftpEvent> {
        let mut buf = std::mem::take(&mut self.to_client);
        let events = self.feed(&mut buf, data, false);
        self.to_client = buf;
        events
    }

    /// Files still open when the channel ends.
    pub fn finish(&mut self) -> Vec<SftpEvent> {
        let capture = self.capture;
        let files = &mut self.files;
        self.handles
            .drain()
            .filter(|(_, o)| !o.dir)
            .map(|(_, mut o)| {
                if capture {
                    o.end(files, Some("the channel ended before the file was closed"));
                }
                o
            })
            .map(|o| SftpEvent::File {
                path: o.path,
                read: o.read,
                written: o.written,
            })
            .collect()
    }

    fn stop(&mut self, reason: String) -> Vec<SftpEvent> {
        self.stopped = true;
        if self.capture {
            // Open files cannot be followed further: they end here, cut, and say why.
            let cut = format!("SFTP tracking stopped ({reason}): the file could not be followed");
            for o in self.handles.values_mut().filter(|o| !o.dir) {
                o.end(&mut self.files, Some(&cut));
            }
        }
        self.to_server = Vec::new();
        self.to_client = Vec::new();
        self.pending.clear();
        vec![SftpEvent::Untracked { reason }]
    }

    fn feed(&mut self, buf: &mut Vec<u8>, data: &[u8], from_client: bool) -> Vec<SftpEvent> {
        if self.stopped {
            return Vec::new();
        }
        buf.extend_from_slice(data);
        let mut events = Vec::new();
        let mut at = 0;
        while let Some(len) = buf
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        {
            if len == 0 || len > MAX_PACKET {
                buf.clear();
                return self.stop(format!("SFTP packet of {len} bytes"));
            }
            let Some(packet) = buf.get(at + 4..at + 4 + len) else {
                break;
            };
            let packet = packet.to_vec();
            at += 4 + len;
            let result = if from_client {
                self.request(&packet)
            } else {
                self.response(&packet)
            };
            match result {
                Some(Some(e)) => events.push(e),
                Some(None) => {}
                None => {
                    buf.clear();
                    events.extend(self.stop("malformed SFTP packet".into()));
                    return events;
                }
            }
            if self.pending.len() > MAX_PENDING || self.handles.len() > MAX_PENDING {
                buf.clear();
                events.extend(self.stop("too many outstanding SFTP requests".into()));
                return events;
            }
        }
        buf.drain(..at);
        events
    }

    /// `None` if malformed; `Some(event?)` otherwise.
    fn request(&mut self, p: &[u8]) -> Option<Option<SftpEvent>> {
        let (&kind, rest) = p.split_first()?;
        let mut c = Cursor(rest);
        if kind == 1 {
            return Some(None); // INIT: version only
        }
        let id = c.u32()?;
        Some(match kind {
            FXP_OPEN | FXP_OPENDIR => {
                let path = c.string()?;
                let write = kind == FXP_OPEN && c.u32()? & FXF_WRITE != 0;
                self.pending.insert(
                    id,
                    Pending::Open {
                        path,
                        dir: kind == FXP_OPENDIR,
                        write,
                    },
                );
                None
            }
            FXP_READ => {
                let handle = c.bytes()?.to_vec();
                let offset = c.u64()?;
                self.pending.insert(id, Pending::Read { handle, offset });
                None
            }
            FXP_WRITE => {
                let handle = c.bytes()?;
                let offset = c.u64()?;
                let data = c.bytes()?;
                if let Some(o) = self.handles.get_mut(handle) {
                    o.written += data.len() as u64;
                    if self.capture {
                        o.piece(&mut self.files, Direction::Upload, offset, data);
                    }
                }
                None
            }
            FXP_CLOSE => {
                let handle = c.bytes()?;
                match self.handles.remove(handle) {
                    Some(o) if o.dir => Some(SftpEvent::Listed { path: o.path }),
                    Some(mut o) => {
                        if self.capture {
                            o.end(&mut self.files, None);
                        }
                        Some(SftpEvent::File {
                            path: o.path,
                            read: o.read,
                            written: o.written,
                        })
                    }
                    None => None,
                }
            }
            FXP_REMOVE => Some(SftpEvent::Remove { path: c.string()? }),
            FXP_MKDIR => Some(SftpEvent::Mkdir { path: c.string()? }),
            FXP_RMDIR => Some(SftpEvent::Rmdir { path: c.string()? }),
            FXP_RENAME => Some(SftpEvent::Rename {
                from: c.string()?,
                to: c.string()?,
            }),
            _ => None,
        })
    }

    fn response(&mut self, p: &[u8]) -> Option<Option<SftpEvent>> {
        let (&kind, rest) = p.split_first()?;
        let mut c = Cursor(rest);
        if kind == 2 {
            return Some(None); // VERSION
        }
        let id = c.u32()?;
        match (kind, self.pending.remove(&id)) {
            (FXP_HANDLE, Some(Pending::Open { path, dir, write })) => {
                let handle = c.bytes()?.to_vec();
                self.next_key += 1;
                self.handles.insert(
                    handle,
                    Open {
                        key: self.next_key,
                        write,
                        begun: false,
                        path,
                        read: 0,
                        written: 0,
                        dir,
                    },
                );
            }
            (FXP_DATA, Some(Pending::Read { handle, offset })) => {
                let data = c.bytes()?;
                if let Some(o) = self.handles.get_mut(&handle) {
                    o.read += data.len() as u64;
                    if self.capture {
                        o.piece(&mut self.files, Direction::Download, offset, data);
                    }
                }
            }
            (FXP_STATUS, _) | (_, _) => {}
        }
        Some(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: Option<u32>, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        if let Some(id) = id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    fn s(v: &[u8]) -> Vec<u8> {
        let mut out = (v.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(v);
        out
    }

    #[test]
    fn upload_download_and_namespace_ops() {
        let mut t = SftpTracker::default();
        assert!(
            t.client(&packet(1, None, &[&3u32.to_be_bytes()]))
                .is_empty()
        );
        // OPEN /tmp/a (split across two deliveries) → HANDLE h1
        let open = packet(
            FXP_OPEN,
            Some(7),
            &[&s(b"/tmp/a"), &0x1au32.to_be_bytes(), &0u32.to_be_bytes()],
        );
        assert!(t.client(&open[..5]).is_empty());
        assert!(t.client(&open[5..]).is_empty());
        assert!(
            t.server(&packet(FXP_HANDLE, Some(7), &[&s(b"h1")]))
                .is_empty()
        );
        for off in [0u64, 5] {
            t.client(&packet(
                FXP_WRITE,
                Some(8),
                &[&s(b"h1"), &off.to_be_bytes(), &s(b"hello")],
            ));
        }
        let closed = t.client(&packet(FXP_CLOSE, Some(9), &[&s(b"h1")]));
        assert_eq!(
            closed,
            [SftpEvent::File {
                path: "/tmp/a".into(),
                read: 0,
                written: 10
            }]
        );
        // Read back 3 bytes.
        t.client(&packet(
            FXP_OPEN,
            Some(10),
            &[&s(b"/tmp/a"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        t.server(&packet(FXP_HANDLE, Some(10), &[&s(b"h2")]));
        t.client(&packet(
            FXP_READ,
            Some(11),
            &[&s(b"h2"), &0u64.to_be_bytes(), &32768u32.to_be_bytes()],
        ));
        t.server(&packet(FXP_DATA, Some(11), &[&s(b"hel")]));
        assert_eq!(
            t.finish(),
            [SftpEvent::File {
                path: "/tmp/a".into(),
                read: 3,
                written: 0
            }]
        );
        assert_eq!(
            t.client(&packet(
                FXP_RENAME,
                Some(12),
                &[&s(b"/tmp/a"), &s(b"/tmp/b")]
            )),
            [SftpEvent::Rename {
                from: "/tmp/a".into(),
                to: "/tmp/b".into()
            }]
        );
        assert_eq!(
            t.client(&packet(FXP_REMOVE, Some(13), &[&s(b"/tmp/b")])),
            [SftpEvent::Remove {
                path: "/tmp/b".into()
            }]
        );
    }

    #[test]
    fn capturing_hands_over_pieces_and_ends_including_empty_and_cut_files() {
        let mut t = SftpTracker::capturing();
        let open = |id: u32, path: &[u8], flags: u32| {
            packet(
                FXP_OPEN,
                Some(id),
                &[&s(path), &flags.to_be_bytes(), &0u32.to_be_bytes()],
            )
        };
        t.client(&open(1, b"/up", 0x1a));
        t.server(&packet(FXP_HANDLE, Some(1), &[&s(b"h1")]));
        t.client(&packet(
            FXP_WRITE,
            Some(2),
            &[&s(b"h1"), &4u64.to_be_bytes(), &s(b"tail")],
        ));
        t.client(&packet(
            FXP_WRITE,
            Some(3),
            &[&s(b"h1"), &0u64.to_be_bytes(), &s(b"head")],
        ));
        t.client(&packet(FXP_CLOSE, Some(4), &[&s(b"h1")]));
        // An empty file created, and one read from, still open when tracking stops.
        t.client(&open(5, b"/empty", 0x1a));
        t.server(&packet(FXP_HANDLE, Some(5), &[&s(b"h2")]));
        t.client(&packet(FXP_CLOSE, Some(6), &[&s(b"h2")]));
        t.client(&open(7, b"/down", 0x1));
        t.server(&packet(FXP_HANDLE, Some(7), &[&s(b"h3")]));
        t.client(&packet(
            FXP_READ,
            Some(8),
            &[&s(b"h3"), &0u64.to_be_bytes(), &9u32.to_be_bytes()],
        ));
        t.server(&packet(FXP_DATA, Some(8), &[&s(b"abc")]));
        t.client(&u32::MAX.to_be_bytes());
        let files = t.take_files();
        let summary: Vec<String> = files
            .iter()
            .map(|e| match e {
                FileEvent::Begin {
                    key,
                    path,
                    direction,
                } => format!("{key} {path} {direction:?}"),
                FileEvent::Data { key, offset, data } => format!("{key} {offset} {}", data.len()),
                FileEvent::End { key, cut } => format!("{key} end {}", cut.is_some()),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "1 /up Upload",
                "1 4 4",
                "1 0 4",
                "1 end false",
                "2 /empty Upload",
                "2 end false",
                "3 /down Download",
                "3 0 3",
                "3 end true",
            ]
        );
    }

    #[test]
    fn hostile_streams_stop_tracking_without_growing() {
        let mut t = SftpTracker::default();
        let events = t.client(&u32::MAX.to_be_bytes());
        assert!(matches!(events.as_slice(), [SftpEvent::Untracked { .. }]));
        assert!(
            t.client(&[0u8; 100]).is_empty(),
            "stopped trackers ignore input"
        );
        let mut t = SftpTracker::default();
        let events = t.client(&packet(FXP_OPEN, Some(1), &[&[0, 0, 0, 9]]));
        assert!(
            matches!(events.as_slice(), [SftpEvent::Untracked { .. }]),
            "{events:?}"
        );
    }
}
