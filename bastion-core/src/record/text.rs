//! The plain text lines of a session's terminal output, for search: escape sequences dropped,
//! backspace applied, one line per newline, each with the time its first byte was recorded (so
//! `session play --from` lands just before it).

use std::collections::HashMap;

use super::{Frame, Kind};

/// Longest line kept (a line without newlines is cut, not grown without bound).
const MAX_LINE: usize = 4096;

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Esc {
    #[default]
    None,
    /// After ESC.
    Start,
    /// In a CSI sequence (ESC [ ... final byte).
    Csi,
    /// In an OSC/DCS string (ends at BEL or ESC \).
    Str,
    StrEnding,
}

#[derive(Default)]
struct Line {
    bytes: Vec<u8>,
    t_micros: Option<u64>,
    esc: Esc,
}

/// One line of output text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextLine {
    pub t_micros: u64,
    pub channel: u32,
    pub text: String,
}

/// The output (stdout and stderr) of `frames` as text lines, in order.
pub fn output_lines(frames: &[Frame]) -> Vec<TextLine> {
    let mut lines: HashMap<u32, Line> = HashMap::new();
    let mut out = Vec::new();
    for f in frames {
        if !matches!(f.kind, Kind::Output | Kind::Stderr) {
            continue;
        }
        let line = lines.entry(f.channel).or_default();
        for &b in f.data.iter() {
            line.esc = match (line.esc, b) {
                (Esc::None, 0x1b) => Esc::Start,
                (Esc::None, b'\n') => {
                    push(&mut out, f.channel, line);
                    Esc::None
                }
                (Esc::None, 0x08) => {
                    line.bytes.pop();
                    Esc::None
                }
                (Esc::None, b) if b >= 0x20 || b == b'\t' => {
                    if line.bytes.len() < MAX_LINE {
                        line.t_micros.get_or_insert(f.t_micros);
                        line.bytes.push(b);
                    }
                    Esc::None
                }
                (Esc::None, _) => Esc::None,
                (Esc::Start, b'[') => Esc::Csi,
                (Esc::Start, b']' | b'P' | b'_' | b'^') => Esc::Str,
                (Esc::Start, _) => Esc::None,
                (Esc::Csi, 0x40..=0x7e) => Esc::None,
                (Esc::Csi, _) => Esc::Csi,
                (Esc::Str, 0x07) => Esc::None,
                (Esc::Str, 0x1b) => Esc::StrEnding,
                (Esc::Str, _) => Esc::Str,
                (Esc::StrEnding, b'\\') => Esc::None,
                (Esc::StrEnding, _) => Esc::Str,
            };
        }
    }
    let mut rest: Vec<(u32, Line)> = lines.into_iter().collect();
    rest.sort_by_key(|(c, _)| *c);
    for (channel, mut line) in rest {
        push(&mut out, channel, &mut line);
    }
    out
}

fn push(out: &mut Vec<TextLine>, channel: u32, line: &mut Line) {
    let text = String::from_utf8_lossy(&line.bytes).trim_end().to_owned();
    if let Some(t_micros) = line.t_micros.take()
        && !text.is_empty()
    {
        out.push(TextLine {
            t_micros,
            channel,
            text,
        });
    }
    line.bytes.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(t: u64, data: &[u8]) -> Frame {
        Frame {
            kind: Kind::Output,
            channel: 0,
            t_micros: t,
            data: bytes::Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn escapes_go_lines_stay_with_their_first_byte_time() {
        let frames = [
            out(1, b"\x1b]0;title\x07\x1b[1;32mgreen\x1b[0m te"),
            out(2, b"xt\r\nsecond\x08D\r\n"),
            out(3, b"tail"),
        ];
        let lines: Vec<(u64, String)> = output_lines(&frames)
            .into_iter()
            .map(|l| (l.t_micros, l.text))
            .collect();
        assert_eq!(
            lines,
            [
                (1, "green text".to_owned()),
                (2, "seconD".to_owned()),
                (3, "tail".to_owned())
            ]
        );
    }
}
