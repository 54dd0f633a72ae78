//! Files moved by the legacy scp protocol (`scp -O`, or any scp older than OpenSSH 9): an exec
//! of `scp -t DEST` (the client sends, an upload) or `scp -f SRC` (the target sends, a
//! download). Only the sender's bytes are followed; the receiver answers with one status byte
//! per step, which says nothing about the files. The sender's stream is:
//!
//! ```text
//! T<mtime> 0 <atime> 0\n      times of the next file or directory (ignored)
//! D<mode> 0 <name>\n          enter a directory
//! C<mode> <size> <name>\n     a file: then <size> bytes, then one \0
//! E\n                         leave the directory
//! \x01 or \x02 <message>\n     a warning or error
//! ```
//!
//! Pure and bounded: a control line longer than [`MAX_LINE`] or a malformed one stops the
//! tracking (the recording itself is complete).

use bytes::Bytes;

use super::files::{Direction, FileEvent};

/// Longest control line followed (a name is at most a path's length).
const MAX_LINE: usize = 8192;
/// Deepest directory nesting followed.
const MAX_DEPTH: usize = 256;

#[derive(Debug)]
enum State {
    /// Reading a control line.
    Line(Vec<u8>),
    /// Inside a file's content: bytes left.
    Content {
        left: u64,
    },
    /// After a file's content: its closing \0.
    Trailer,
    Stopped,
}

#[derive(Debug)]
pub struct ScpTracker {
    direction: Direction,
    /// The command's operand: the destination (`-t`) or the source (`-f`).
    operand: String,
    /// `-d` or `-r`: the destination is a directory.
    into_dir: bool,
    /// Directories entered (`D` lines).
    dirs: Vec<String>,
    state: State,
    key: u64,
    offset: u64,
}

impl ScpTracker {
    /// The tracker for an exec command, if it is the remote end of a legacy scp.
    pub fn for_command(command: &str) -> Option<ScpTracker> {
        let mut words = command.split_whitespace();
        let program = words.next()?;
        if program != "scp" && !program.ends_with("/scp") {
            return None;
        }
        let mut direction = None;
        let mut operand = None;
        let mut into_dir = false;
        for w in words {
            match w {
                "--" => {}
                w if w.starts_with('-') => {
                    into_dir |= w.contains('d') || w.contains('r');
                    if w.contains('t') {
                        direction = Some(Direction::Upload);
                    } else if w.contains('f') {
                        direction = Some(Direction::Download);
                    }
                }
                w => operand = Some(w.to_owned()),
            }
        }
        Some(ScpTracker {
            direction: direction?,
            operand: operand.unwrap_or_else(|| ".".into()),
            into_dir,
            dirs: Vec::new(),
            state: State::Line(Vec::new()),
            key: 0,
            offset: 0,
        })
    }

    /// Bytes the client sent: followed only for an upload.
    pub fn client(&mut self, data: &[u8]) -> Vec<FileEvent> {
        match self.direction {
            Direction::Upload => self.feed(data),
            Direction::Download => Vec::new(),
        }
    }

    /// Bytes the target sent: followed only for a download.
    pub fn server(&mut self, data: &[u8]) -> Vec<FileEvent> {
        match self.direction {
            Direction::Download => self.feed(data),
            Direction::Upload => Vec::new(),
        }
    }

    /// A file cut short when the channel ends.
    pub fn finish(&mut self) -> Vec<FileEvent> {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Content { .. } | State::Trailer => vec![FileEvent::End {
                key: self.key,
                cut: Some("the channel ended in the middle of the file".into()),
            }],
            _ => Vec::new(),
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Vec<FileEvent> {
        let mut events = Vec::new();
        while !data.is_empty() {
            match &mut self.state {
                State::Stopped => break,
                State::Line(line) => {
                    let end = memchr(b'\n', data);
                    let take = end.map_or(data.len(), |e| e + 1);
                    line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if line.len() > MAX_LINE {
                        self.state = State::Stopped;
                    } else if end.is_some() {
                        let line = std::mem::take(line);
                        events.extend(self.control(&line));
                    }
                }
                State::Content { left } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    events.push(FileEvent::Data {
                        key: self.key,
                        offset: self.offset,
                        data: Bytes::copy_from_slice(&data[..n]),
                    });
                    self.offset += n as u64;
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        self.state = State::Trailer;
                    }
                }
                State::Trailer => {
                    events.push(FileEvent::End {
                        key: self.key,
                        cut: None,
                    });
                    data = &data[1..];
                    self.state = State::Line(Vec::new());
                }
            }
        }
        events
    }

    /// One control line (with its `\n`); a `C` line begins a file.
    fn control(&mut self, line: &[u8]) -> Option<FileEvent> {
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        let mut begun = None;
        let next = match text.as_bytes().first() {
            Some(b'C') => self.file(&text[1..]).map(|(state, path)| {
                begun = Some(FileEvent::Begin {
                    key: self.key,
                    path,
                    direction: self.direction,
                });
                state
            }),
            Some(b'D') if self.dirs.len() < MAX_DEPTH => {
                let name = text.splitn(3, ' ').nth(2).map(str::to_owned);
                name.filter(|n| valid_name(n)).map(|n| {
                    self.dirs.push(n);
                    State::Line(Vec::new())
                })
            }
            Some(b'E') => {
                self.dirs.pop();
                Some(State::Line(Vec::new()))
            }
            Some(b'T' | 1 | 2) => Some(State::Line(Vec::new())),
            _ => None,
        };
        self.state = next.unwrap_or(State::Stopped);
        begun
    }

    /// `<mode> <size> <name>`: a file begins; the state to read it in, and its path.
    fn file(&mut self, rest: &str) -> Option<(State, String)> {
        let mut parts = rest.splitn(3, ' ');
        let _mode = parts.next()?;
        let size: u64 = parts.next()?.parse().ok()?;
        let name = parts.next().filter(|n| valid_name(n))?;
        self.key += 1;
        self.offset = 0;
        let state = match size {
            0 => State::Trailer,
            left => State::Content { left },
        };
        Some((state, self.path_of(name)))
    }

    /// Where the file is on the target, as well as the command line tells. A source's own
    /// name comes first in its stream, so a download is under the source's parent. An upload
    /// goes into the destination when that is a directory (`-d`, `-r`, a trailing `/`, or a
    /// last component without a dot unlike the file's), else it is the destination itself
    /// (renamed on the way). Only the target knows for sure; this is the best guess.
    fn path_of(&self, name: &str) -> String {
        let operand = self.operand.as_str();
        let mut path = match self.direction {
            Direction::Download => match operand.trim_end_matches('/').rsplit_once('/') {
                Some((parent, _)) => parent.to_owned(),
                None => ".".to_owned(),
            },
            Direction::Upload => {
                let last = operand.rsplit('/').next().unwrap_or_default();
                let dir = self.into_dir
                    || !self.dirs.is_empty()
                    || matches!(last, "" | "." | ".." | "~")
                    || (last != name && !last.contains('.') && name.contains('.'));
                if !dir {
                    return operand.to_owned();
                }
                operand.trim_end_matches('/').to_owned()
            }
        };
        for part in self.dirs.iter().map(String::as_str).chain([name]) {
            path.push('/');
            path.push_str(part);
        }
        path
    }
}

/// A name scp itself would accept: not empty, no `/`, not `.` or `..`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each piece with its file's key and path (from the file's `Begin`).
    fn content(events: &[FileEvent]) -> Vec<(u64, String, u64, Vec<u8>)> {
        let mut paths = std::collections::HashMap::new();
        events
            .iter()
            .filter_map(|e| match e {
                FileEvent::Begin { key, path, .. } => {
                    paths.insert(*key, path.clone());
                    None
                }
                FileEvent::Data { key, offset, data } => {
                    let path = paths.get(key).cloned().unwrap_or_default();
                    Some((*key, path, *offset, data.to_vec()))
                }
                FileEvent::End { .. } => None,
            })
            .collect()
    }

    #[test]
    fn only_scp_sinks_and_sources_are_followed() {
        assert!(ScpTracker::for_command("ls -t /tmp").is_none());
        assert!(ScpTracker::for_command("scp /tmp/x").is_none());
        let t = ScpTracker::for_command("scp -v -t -- /tmp/").expect("sink");
        assert_eq!(
            (t.direction, t.operand.as_str()),
            (Direction::Upload, "/tmp/")
        );
        let t = ScpTracker::for_command("/usr/bin/scp -pf /etc/hosts").expect("source");
        assert_eq!(t.direction, Direction::Download);
    }

    #[test]
    fn an_upload_split_anywhere_gives_its_bytes_and_end() {
        let mut stream = b"T1 0 1 0\nC0644 11 a.txt\nhello world\0".to_vec();
        stream.extend_from_slice(b"C0600 0 empty\n\0");
        for split in 0..stream.len() {
            let mut t = ScpTracker::for_command("scp -t /tmp").expect("sink");
            let mut events = t.client(&stream[..split]);
            events.extend(t.client(&stream[split..]));
            assert!(t.server(b"\0\0\0").is_empty(), "acks are not followed");
            let bytes: Vec<u8> = content(&events).into_iter().flat_map(|c| c.3).collect();
            assert_eq!(bytes, b"hello world");
            assert!(content(&events).iter().all(|c| c.1 == "/tmp/a.txt"));
            let ends: Vec<_> = events
                .iter()
                .filter(|e| matches!(e, FileEvent::End { .. }))
                .collect();
            assert_eq!(
                ends,
                [
                    &FileEvent::End { key: 1, cut: None },
                    &FileEvent::End { key: 2, cut: None }
                ]
            );
        }
    }

    #[test]
    fn paths_follow_directories_and_operands() {
        let mut t = ScpTracker::for_command("scp -r -t /srv").expect("sink");
        let e = t.client(b"D0755 0 site\nC0644 1 i.html\nx\0E\n");
        assert_eq!(content(&e)[0].1, "/srv/site/i.html");
        for (command, name, path) in [
            ("scp -t /tmp/renamed.txt", "first.txt", "/tmp/renamed.txt"),
            ("scp -t /tmp/same.txt", "same.txt", "/tmp/same.txt"),
            ("scp -t /tmp", "a.txt", "/tmp/a.txt"),
            ("scp -t /tmp/", "Makefile", "/tmp/Makefile"),
            ("scp -d -t /srv/x.d", "a.txt", "/srv/x.d/a.txt"),
        ] {
            let mut t = ScpTracker::for_command(command).expect("sink");
            let line = format!("C0644 1 {name}\nx\0");
            assert_eq!(content(&t.client(line.as_bytes()))[0].1, path, "{command}");
        }
        let mut t = ScpTracker::for_command("scp -f /etc/hosts").expect("source");
        assert!(t.client(b"\0").is_empty());
        assert_eq!(
            content(&t.server(b"C0644 2 hosts\nab\0"))[0].1,
            "/etc/hosts"
        );
        let mut t = ScpTracker::for_command("scp -f notes.txt").expect("source");
        assert_eq!(
            content(&t.server(b"C0644 2 notes.txt\nab\0"))[0].1,
            "./notes.txt"
        );
    }

    #[test]
    fn hostile_streams_stop_without_growing() {
        let mut t = ScpTracker::for_command("scp -t /tmp").expect("sink");
        assert!(t.client(&vec![b'C'; MAX_LINE + 10]).is_empty());
        assert!(matches!(t.state, State::Stopped));
        assert!(
            t.client(b"C0644 1 x\nx\0").is_empty(),
            "stopped stays stopped"
        );
        let mut t = ScpTracker::for_command("scp -t /tmp").expect("sink");
        assert!(t.client(b"C0644 1 ../../etc/passwd\nx\0").is_empty());
        let mut t = ScpTracker::for_command("scp -t /tmp").expect("sink");
        assert!(t.client(b"Cbad\n").is_empty());
        let mut t = ScpTracker::for_command("scp -t /tmp").expect("sink");
        let e = t.client(b"C0644 10 cut\nabc");
        assert_eq!(content(&e).len(), 1);
        assert!(matches!(
            t.finish().as_slice(),
            [FileEvent::End {
                key: 1,
                cut: Some(_)
            }]
        ));
    }
}
