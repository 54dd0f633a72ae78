//! Files that crossed a channel (SFTP or scp) and, when the grant captures files, their
//! contents. The trackers ([`super::sftp`], [`super::scp`]) turn a channel's bytes into
//! [`FileEvent`]s; the proxy stages each file's content and, at its end, records it as
//! `FileData` frames followed by one `File` frame ([`CapturedFile`]). A content already captured
//! in the session (same SHA-256) is not stored twice: its `File` frame points at the first
//! (`same_as`). Being frames, captured bytes count in the store's budgets and are covered by
//! the record's chain and seal like every other byte.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Frame, Kind};

/// Which way a file went, seen from the admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to target (written on the target).
    Upload,
    /// Target to client (read from the target).
    Download,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Sftp,
    Scp,
}

/// What a tracker saw of one file, in the order it happened. `key` tells a channel's files
/// apart while they are open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    /// A file begins: before its first piece, or before its end when no byte crossed (an
    /// empty file is listed too).
    Begin {
        key: u64,
        path: String,
        direction: Direction,
    },
    Data {
        key: u64,
        offset: u64,
        data: Bytes,
    },
    /// The file ended: closed, or `cut` short (why) when it could not be followed to its end.
    End {
        key: u64,
        cut: Option<String>,
    },
}

/// The `File` frame: one file that crossed the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedFile {
    /// Numbers the session's files from 0 (its `FileData` frames carry it).
    pub index: u32,
    pub path: String,
    pub direction: Direction,
    pub protocol: Protocol,
    /// Bytes that crossed (the end of the furthest piece).
    pub size: u64,
    /// SHA-256 of the content (hex); `None` when it could not be known (pieces out of order
    /// past the capture limit).
    pub sha256: Option<String>,
    /// The content is in the record (here, or at `same_as`).
    pub captured: bool,
    /// Larger than `record.max_file_capture_mb`: hash and size only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The same content was captured before in this session, as file `same_as`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as: Option<u32>,
    /// Why the content was not captured, when capturing was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl CapturedFile {
    /// The file whose `FileData` frames hold this one's content.
    pub fn content_index(&self) -> u32 {
        self.same_as.unwrap_or(self.index)
    }

    /// The line the command index keeps for the file, so `search --file-hash` and text
    /// searches find it: `SHA256 direction size path`.
    pub fn index_line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.sha256.as_deref().unwrap_or("-"),
            self.direction.as_str(),
            self.size,
            self.path
        )
    }
}

/// SHA-256 of a file's content, fed as it arrives; finished as listed (lower-case hex).
pub struct ContentHash(ring::digest::Context);

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl ContentHash {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> String {
        base16ct::lower::encode_string(self.0.finish().as_ref())
    }
}

/// A `FileData` frame's payload.
pub fn data_payload(index: u32, data: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(4 + data.len());
    v.extend_from_slice(&index.to_le_bytes());
    v.extend_from_slice(data);
    v.into()
}

/// Reads a `FileData` frame back: (file index, bytes).
pub fn parse_data(frame: &Frame) -> Option<(u32, &[u8])> {
    if frame.kind != Kind::FileData {
        return None;
    }
    let (i, rest) = frame.data.split_at_checked(4)?;
    Some((u32::from_le_bytes(i.try_into().ok()?), rest))
}

/// The `File` frames among `frames`, in order.
pub fn listed(frames: &[Frame]) -> Vec<CapturedFile> {
    frames.iter().filter_map(parse_file).collect()
}

pub fn parse_file(frame: &Frame) -> Option<CapturedFile> {
    (frame.kind == Kind::File)
        .then(|| serde_json::from_slice(&frame.data).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_payload_round_trips_and_listing_reads_file_frames() {
        let frame = |kind, data: Bytes| Frame {
            kind,
            channel: 1,
            t_micros: 5,
            data,
        };
        let d = frame(Kind::FileData, data_payload(7, b"abc"));
        assert_eq!(parse_data(&d), Some((7, &b"abc"[..])));
        assert_eq!(parse_data(&frame(Kind::Output, Bytes::new())), None);
        assert_eq!(
            parse_data(&frame(Kind::FileData, Bytes::from_static(b"ab"))),
            None
        );
        let file = CapturedFile {
            index: 7,
            path: "/tmp/x".into(),
            direction: Direction::Upload,
            protocol: Protocol::Scp,
            size: 3,
            sha256: Some("ab".into()),
            captured: true,
            truncated: false,
            same_as: None,
            note: None,
        };
        let f = frame(
            Kind::File,
            serde_json::to_vec(&file).expect("serializes").into(),
        );
        assert_eq!(listed(&[d, f]), std::slice::from_ref(&file));
        assert_eq!(file.index_line(), "ab upload 3 /tmp/x");
    }
}
