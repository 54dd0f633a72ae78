//! Renderings of a recorded session: asciicast v2 (plays in the asciinema player; its output
//! events concatenate to exactly the bytes the client received, when those are UTF-8) and a JSON
//! document with every frame.

use base64ct::{Base64, Encoding as _};
use serde_json::json;

use super::frame::{Frame, Kind, parse_size};
use crate::session::SessionMeta;

/// The channel a terminal recording shows: the first with a PTY, else the first with output.
fn screen_channel(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == Kind::Pty)
        .or_else(|| {
            frames
                .iter()
                .find(|f| matches!(f.kind, Kind::Output | Kind::Stderr))
        })
        .map(|f| f.channel)
}

/// Splits a byte stream into UTF-8 text without breaking a character across frames.
#[derive(Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next frame.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }
}

/// asciicast v2: a header line, then one JSON array per event.
pub fn asciicast(meta: &SessionMeta, frames: &[Frame]) -> String {
    let channel = screen_channel(frames);
    let (mut width, mut height) = (80, 24);
    if let Some(size) = frames
        .iter()
        .find(|f| f.kind == Kind::Pty && Some(f.channel) == channel)
        .and_then(|f| parse_size(&f.data))
    {
        (width, height) = (size.0, size.1);
    }
    let header = json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": meta.started_micros / 1_000_000,
        "title": format!("session {}: {} as {}@{}", meta.id, meta.user, meta.login, meta.target),
    });
    let mut out = header.to_string();
    out.push('\n');
    let mut carry = Utf8Carry::default();
    for f in frames.iter().filter(|f| Some(f.channel) == channel) {
        let t = f.t_micros as f64 / 1e6;
        let event = match f.kind {
            Kind::Output | Kind::Stderr => {
                let text = carry.push(&f.data);
                if text.is_empty() {
                    continue;
                }
                json!([t, "o", text])
            }
            Kind::WindowChange => match parse_size(&f.data) {
                Some((c, r, _)) => json!([t, "r", format!("{c}x{r}")]),
                None => continue,
            },
            _ => continue,
        };
        out.push_str(&event.to_string());
        out.push('\n');
    }
    out
}

/// One line of what happened in a session, for auditors: channel opens, commands, subsystems,
/// SFTP operations, refusals, exit statuses, closes with byte totals (not the bytes themselves).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Activity {
    pub t_micros: u64,
    pub channel: u32,
    pub what: String,
}

pub fn activity(frames: &[Frame]) -> Vec<Activity> {
    let text = |f: &Frame| String::from_utf8_lossy(&f.data).into_owned();
    frames
        .iter()
        .filter_map(|f| {
            let what = match f.kind {
                Kind::Open => format!("open {}", text(f)),
                Kind::Pty => match parse_size(&f.data) {
                    Some((c, r, term)) => format!("pty {} {c}x{r}", String::from_utf8_lossy(term)),
                    None => "pty".into(),
                },
                Kind::Shell => "shell".into(),
                Kind::Exec => format!("exec {}", text(f)),
                Kind::Subsystem => format!("subsystem {}", text(f)),
                Kind::SftpOp => format!("sftp {}", sftp_line(&f.data)),
                Kind::Command => command_line(&f.data),
                Kind::Env => match serde_json::from_slice::<serde_json::Value>(&f.data) {
                    Ok(v) => format!(
                        "env {}={}",
                        v["name"].as_str().unwrap_or("?"),
                        v["value"].as_str().unwrap_or("?")
                    ),
                    Err(_) => "env ?".into(),
                },
                Kind::Refused => format!("refused: {}", text(f)),
                Kind::Notice => format!("told: {}", text(f)),
                Kind::Signal => format!("signal {}", text(f)),
                Kind::ExitStatus => match <[u8; 4]>::try_from(f.data.as_ref()) {
                    Ok(b) => format!("exit status {}", u32::from_le_bytes(b)),
                    Err(_) => "exit status ?".into(),
                },
                Kind::Close => match serde_json::from_slice::<serde_json::Value>(&f.data) {
                    Ok(v) => format!(
                        "close ({} bytes in, {} bytes out)",
                        v["bytes_in"], v["bytes_out"]
                    ),
                    Err(_) => "close".into(),
                },
                Kind::File => match super::files::parse_file(f) {
                    Some(c) => format!(
                        "file {} {} ({} bytes, sha256 {}, {})",
                        c.direction.as_str(),
                        c.path,
                        c.size,
                        c.sha256.as_deref().unwrap_or("unknown"),
                        match (c.captured, c.truncated) {
                            (true, _) => "captured",
                            (false, true) => "too large to capture",
                            (false, false) => "not captured",
                        }
                    ),
                    None => "file ?".into(),
                },
                Kind::Input
                | Kind::Output
                | Kind::Stderr
                | Kind::WindowChange
                | Kind::InputEof
                | Kind::OutputEof
                | Kind::FileData => {
                    return None;
                }
            };
            Some(Activity {
                t_micros: f.t_micros,
                channel: f.channel,
                what,
            })
        })
        .collect()
}

/// `$ line` with its doubts and, when a rule kept it from the shell, the rule.
fn command_line(data: &[u8]) -> String {
    let Ok(c) = serde_json::from_slice::<crate::record::commands::CommandLine>(data) else {
        return format!("$ {}", String::from_utf8_lossy(data));
    };
    let mut s = format!("$ {}", c.line);
    if !c.doubts.is_empty() {
        let d: Vec<&str> = c.doubts.iter().map(|d| d.as_str()).collect();
        s.push_str(&format!("  [uncertain: {}]", d.join(", ")));
    }
    if let Some(r) = c.refused {
        s.push_str(&format!("  [refused: {r}]"));
    }
    s
}

fn sftp_line(data: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
    match v["op"].as_str() {
        Some("file") => format!(
            "{} (read {}, written {} bytes)",
            s("path"),
            v["read"],
            v["written"]
        ),
        Some("rename") => format!("rename {} -> {}", s("from"), s("to")),
        Some(op) => format!(
            "{op} {}",
            v["path"].as_str().or(v["reason"].as_str()).unwrap_or("")
        ),
        None => String::from_utf8_lossy(data).into_owned(),
    }
}

/// Every frame, with data as base64 (it is binary in general).
pub fn json(meta: &SessionMeta, frames: &[Frame]) -> serde_json::Value {
    let frames: Vec<_> = frames
        .iter()
        .map(|f| {
            let mut v = json!({
                "t_micros": f.t_micros,
                "channel": f.channel,
                "kind": f.kind,
                "data_base64": Base64::encode_string(&f.data),
            });
            // Frames whose payload is text (or, for SFTP, JSON) are also shown as such.
            match f.kind {
                Kind::SftpOp | Kind::Close | Kind::Command | Kind::Env | Kind::File => {
                    v["json"] = serde_json::from_slice(&f.data).unwrap_or_default()
                }
                Kind::Exec
                | Kind::Subsystem
                | Kind::Open
                | Kind::Refused
                | Kind::Signal
                | Kind::Notice => v["text"] = String::from_utf8_lossy(&f.data).into_owned().into(),
                _ => {}
            }
            v
        })
        .collect();
    json!({ "session": meta, "frames": frames })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_never_split_and_invalid_bytes_are_marked() {
        let mut c = Utf8Carry::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(c.push(&[b'a', euro[0]]), "a");
        assert_eq!(c.push(&euro[1..]), "€");
        assert_eq!(c.push(&[0xff, b'b']), "\u{fffd}b");
    }

    #[test]
    fn activity_summarises_what_matters() {
        let f = |kind, channel, data: &[u8]| Frame {
            kind,
            channel,
            t_micros: 5,
            data: bytes::Bytes::copy_from_slice(data),
        };
        let frames = [
            f(Kind::Open, 0, b"session"),
            f(Kind::Exec, 0, b"uptime"),
            f(Kind::Output, 0, b"up 3 days"),
            f(Kind::ExitStatus, 0, &0u32.to_le_bytes()),
            f(
                Kind::SftpOp,
                1,
                br#"{"op":"file","path":"/etc/motd","read":12,"written":0}"#,
            ),
            f(Kind::Close, 0, br#"{"bytes_in":0,"bytes_out":9}"#),
        ];
        let lines: Vec<String> = activity(&frames).into_iter().map(|a| a.what).collect();
        assert_eq!(
            lines,
            [
                "open session",
                "exec uptime",
                "exit status 0",
                "sftp /etc/motd (read 12, written 0 bytes)",
                "close (0 bytes in, 9 bytes out)"
            ]
        );
    }
}
