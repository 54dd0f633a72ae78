//! Record frames: one timed event of one channel. The binary layout is a stored format
//! (version [`FRAME_VERSION`], carried by every block), little endian:
//!
//! ```text
//! kind u8 | channel u32 | t_micros u64 (since session start, monotonic) | len u32 | data[len]
//! ```

use serde::{Deserialize, Serialize};

pub const FRAME_VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 8 + 4;
/// Largest data a frame may carry (SSH packets are far smaller; this bounds hostile input).
pub const MAX_FRAME_DATA: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Kind {
    /// Client to target bytes (stdin, keystrokes).
    Input = 1,
    /// Target to client stdout bytes.
    Output = 2,
    /// Target to client stderr bytes.
    Stderr = 3,
    /// `cols x rows` as two u32 LE.
    WindowChange = 4,
    /// The exact command of an exec request.
    Exec = 5,
    /// The subsystem name (e.g. `sftp`).
    Subsystem = 6,
    /// PTY request: cols u32, rows u32, then the TERM name.
    Pty = 7,
    Shell = 8,
    /// Client sent EOF.
    InputEof = 9,
    /// Target sent EOF.
    OutputEof = 10,
    /// Channel closed: JSON totals `{"bytes_in": n, "bytes_out": n}` (empty in older records).
    Close = 11,
    /// Exit status, u32 LE.
    ExitStatus = 12,
    /// Signal name sent by the client.
    Signal = 13,
    /// Channel opened: its type (`session`, `direct-tcpip host:port`).
    Open = 14,
    /// A request refused by policy: the reason.
    Refused = 15,
    /// An SFTP operation (JSON: op, path, sizes), derived from the channel's bytes.
    SftpOp = 16,
    /// A line entered at an interactive shell (JSON: line, doubts, refused), read off the
    /// terminal when the shell took it.
    Command = 17,
    /// An environment variable the client asked to pass (JSON: name, value), recorded when it
    /// was passed; a refused one is a `Refused` frame naming it.
    Env = 18,
    /// What bastion told the user on every channel of a live session (text), e.g. that its
    /// access ends soon.
    Notice = 19,
    /// A file that crossed the channel (SFTP or scp), at its end: JSON
    /// [`super::files::CapturedFile`] (path, direction, size, SHA-256, captured or not).
    File = 20,
    /// Captured content of a file, in order: its index (u32 LE) then the bytes. All of a
    /// file's pieces come before its `File` frame.
    FileData = 21,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        [
            Input,
            Output,
            Stderr,
            WindowChange,
            Exec,
            Subsystem,
            Pty,
            Shell,
            InputEof,
            OutputEof,
            Close,
            ExitStatus,
            Signal,
            Open,
            Refused,
            SftpOp,
            Command,
            Env,
            Notice,
            File,
            FileData,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub channel: u32,
    pub t_micros: u64,
    pub data: bytes::Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("truncated frame at byte {0}")]
    Truncated(usize),
    #[error("unknown frame kind {kind} at byte {at}")]
    UnknownKind { kind: u8, at: usize },
    #[error("frame at byte {at} claims {len} bytes of data (limit {MAX_FRAME_DATA})")]
    TooLong { at: usize, len: usize },
}

impl Frame {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER + self.data.len());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.channel.to_le_bytes());
        out.extend_from_slice(&self.t_micros.to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.data);
    }

    pub fn encoded_len(&self) -> usize {
        HEADER + self.data.len()
    }
}

/// Decodes every frame in `buf` (a decompressed block).
pub fn decode_all(buf: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let header = buf.get(at..at + HEADER).ok_or(FrameError::Truncated(at))?;
        let kind = Kind::from_u8(header[0]).ok_or(FrameError::UnknownKind {
            kind: header[0],
            at,
        })?;
        let u32_at =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let channel = u32_at(1);
        let mut t = [0u8; 8];
        t.copy_from_slice(&header[5..13]);
        let len = u32_at(13) as usize;
        if len > MAX_FRAME_DATA {
            return Err(FrameError::TooLong { at, len });
        }
        let data = buf
            .get(at + HEADER..at + HEADER + len)
            .ok_or(FrameError::Truncated(at))?;
        frames.push(Frame {
            kind,
            channel,
            t_micros: u64::from_le_bytes(t),
            data: bytes::Bytes::copy_from_slice(data),
        });
        at += HEADER + len;
    }
    Ok(frames)
}

/// `cols x rows` payload of `Pty` and `WindowChange` frames.
pub fn size_payload(cols: u32, rows: u32, rest: &[u8]) -> bytes::Bytes {
    let mut v = Vec::with_capacity(8 + rest.len());
    v.extend_from_slice(&cols.to_le_bytes());
    v.extend_from_slice(&rows.to_le_bytes());
    v.extend_from_slice(rest);
    v.into()
}

/// Reads back a [`size_payload`]: (cols, rows, rest).
pub fn parse_size(data: &[u8]) -> Option<(u32, u32, &[u8])> {
    let cols = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
    let rows = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    Some((cols, rows, &data[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: Kind, channel: u32, t: u64, data: &[u8]) -> Frame {
        Frame {
            kind,
            channel,
            t_micros: t,
            data: bytes::Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn round_trip() {
        let frames = vec![
            f(Kind::Pty, 0, 0, &size_payload(80, 24, b"xterm")),
            f(Kind::Input, 0, 10, b"ls\r"),
            f(Kind::Output, 0, 1_000_000, b"\x1b[0m file\r\n"),
            f(Kind::ExitStatus, 0, u64::MAX, &3u32.to_le_bytes()),
            f(Kind::Close, 7, 5, b""),
        ];
        let mut buf = Vec::new();
        for fr in &frames {
            fr.encode(&mut buf);
        }
        assert_eq!(
            buf.len(),
            frames.iter().map(Frame::encoded_len).sum::<usize>()
        );
        assert_eq!(decode_all(&buf).unwrap(), frames);
        assert_eq!(parse_size(&frames[0].data), Some((80, 24, &b"xterm"[..])));
    }

    #[test]
    fn hostile_input_is_rejected_not_trusted() {
        let mut buf = Vec::new();
        f(Kind::Output, 0, 1, b"hello").encode(&mut buf);
        assert_eq!(
            decode_all(&buf[..buf.len() - 1]),
            Err(FrameError::Truncated(0))
        );
        assert_eq!(decode_all(&buf[..5]), Err(FrameError::Truncated(0)));
        let mut bad = buf.clone();
        bad[0] = 200;
        assert_eq!(
            decode_all(&bad),
            Err(FrameError::UnknownKind { kind: 200, at: 0 })
        );
        let mut huge = buf.clone();
        huge[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_all(&huge), Err(FrameError::TooLong { .. })));
    }
}
