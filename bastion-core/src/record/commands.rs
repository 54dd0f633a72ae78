//! Command lines of an interactive shell, as the shell displayed them when Enter was pressed.
//!
//! What is typed is not what runs: line editing, history recall, tab completion and Ctrl-R
//! change the line after the keys arrive. So the keys only say *when* a line is entered; *what*
//! it was is read from a terminal emulator fed with the shell's output (`vt100`). When Enter is
//! pressed the next newline the shell prints ends the line; just before it is fed, the screen
//! from the prompt to the end of the cursor's row is the command (multi-row when it wrapped or
//! when a bracketed paste carried newlines).
//!
//! The prompt is where the cursor stood at the line's first keystroke. At Enter the nearest row
//! at or above the cursor that still starts with that prompt's text is taken, which survives
//! scrolling, Ctrl-L and redraws. When the screen cannot tell, the line carries a [`Doubt`]
//! rather than a silent guess: a full-screen program, input that never echoed, a prompt no
//! longer on screen, or keys typed before the previous line's output had ended.
//!
//! Pure: bytes in, lines out; the channel pumps feed it in the order bastiond forwarded them.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Why a line may not be exactly what the shell ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Doubt {
    /// A full-screen program (alternate screen) had the terminal: Enter is not a shell line.
    FullScreen,
    /// Keys were typed but nothing echoed (a password prompt, `stty -echo`).
    NoEcho,
    /// The prompt the line started at is no longer on screen; the text may include it.
    PromptUnknown,
    /// Keys arrived before the shell had shown the prompt for them.
    TypedAhead,
}

impl Doubt {
    pub fn as_str(self) -> &'static str {
        match self {
            Doubt::FullScreen => "full_screen",
            Doubt::NoEcho => "no_echo",
            Doubt::PromptUnknown => "prompt_unknown",
            Doubt::TypedAhead => "typed_ahead",
        }
    }

    const ALL: [Doubt; 4] = [
        Doubt::FullScreen,
        Doubt::NoEcho,
        Doubt::PromptUnknown,
        Doubt::TypedAhead,
    ];

    /// A set of doubts as bits (the index's stored form).
    pub fn to_bits(doubts: &[Doubt]) -> u8 {
        doubts
            .iter()
            .map(|d| 1u8 << Doubt::ALL.iter().position(|a| a == d).unwrap_or(7))
            .fold(0, |a, b| a | b)
    }

    pub fn from_bits(bits: u8) -> Vec<Doubt> {
        Doubt::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect()
    }
}

/// One line entered at an interactive shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandLine {
    pub line: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub doubts: Vec<Doubt>,
    /// Set when a command rule kept the line from the shell (`deny rm *`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Counts rows scrolled off the top, so a prompt's row stays addressable.
#[derive(Default)]
struct Scrolled(u64);

impl vt100::Callbacks for Scrolled {
    fn on_scroll(&mut self, _: vt100::capture::RowContents<'_>, alternate_screen: bool) {
        if !alternate_screen {
            self.0 += 1;
        }
    }
}

/// Where a line's prompt ended: an absolute row (scrolls counted) and column, and its text.
#[derive(Debug, Clone)]
struct Prompt {
    row: u64,
    col: u16,
    text: String,
}

/// The line being typed, or one entered and waiting for the shell's newline.
#[derive(Debug, Clone, Default)]
struct Line {
    prompt: Option<Prompt>,
    /// Printable keys were typed (so an empty screen line means no echo).
    typed: bool,
    /// Typed while an earlier line still waited for the shell.
    ahead: bool,
    /// The keys as plain line editing would apply them (printable text, backspace, Ctrl-U,
    /// Ctrl-W; escape sequences skipped): what rules also see when the screen lags behind.
    keyed: Vec<u8>,
    /// Inside an escape sequence of the keys.
    key_esc: bool,
}

impl Line {
    fn key(&mut self, b: u8, in_paste: bool) {
        if self.key_esc {
            // CSI/SS3 sequences end at a letter or `~`.
            self.key_esc = !(b.is_ascii_alphabetic() || b == b'~');
            return;
        }
        match b {
            0x1b => self.key_esc = true,
            0x7f | 0x08 => {
                // One character, not one byte.
                while let Some(c) = self.keyed.pop() {
                    if c & 0xc0 != 0x80 {
                        break;
                    }
                }
            }
            0x15 => self.keyed.clear(),
            0x17 => {
                while self.keyed.last() == Some(&b' ') {
                    self.keyed.pop();
                }
                while self.keyed.last().is_some_and(|c| *c != b' ') {
                    self.keyed.pop();
                }
            }
            b'\n' | b'\r' if in_paste => self.keyed.push(b'\n'),
            b if b >= 0x20 || b == b'\t' => {
                self.typed = true;
                if self.keyed.len() < MAX_LINE {
                    self.keyed.push(b);
                }
            }
            _ => {}
        }
    }
}

/// Bracketed paste markers in the client's keys.
const PASTE_START: &[u8] = b"\x1b[200~";
const PASTE_END: &[u8] = b"\x1b[201~";
/// Lines a shell may owe output for before further Enters are not tracked one by one.
const MAX_PENDING: usize = 64;
/// Longest command line kept (a pasted file is not a command).
const MAX_LINE: usize = 16 * 1024;

pub struct ShellTracker {
    term: vt100::Parser<Scrolled>,
    current: Option<Line>,
    pending: VecDeque<Line>,
    /// Lines resolved while taking keys, handed out with the next output.
    resolved: Vec<CommandLine>,
    /// The last prompt text seen, for lines typed ahead of their prompt.
    last_prompt: Option<String>,
    in_paste: bool,
    /// Output arrived since the last Enter (the shell answered, maybe without a newline).
    answered: bool,
    /// The tail of the last keys, to find paste markers split across packets.
    key_tail: Vec<u8>,
}

impl ShellTracker {
    pub fn new(cols: u32, rows: u32) -> ShellTracker {
        ShellTracker {
            term: vt100::Parser::new_with_callbacks(
                dim(rows, 24, MAX_ROWS),
                dim(cols, 80, MAX_COLS),
                0,
                Scrolled(0),
            ),
            current: None,
            pending: VecDeque::new(),
            resolved: Vec::new(),
            last_prompt: None,
            in_paste: false,
            answered: false,
            key_tail: Vec::new(),
        }
    }

    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.term
            .screen_mut()
            .set_size(dim(rows, 24, MAX_ROWS), dim(cols, 80, MAX_COLS));
    }

    /// Takes the client's keys up to the first Enter. Returns `Some(i)` when `keys[i]` is an
    /// Enter (not yet taken: call [`ShellTracker::enter`] or [`ShellTracker::cancel`], then go
    /// on with `keys[i + 1..]`), `None` when all of `keys` was taken.
    pub fn keys(&mut self, keys: &[u8]) -> Option<usize> {
        for (i, &b) in keys.iter().enumerate() {
            self.key_tail.push(b);
            if self.key_tail.len() > PASTE_START.len() {
                self.key_tail.remove(0);
            }
            if self.key_tail.ends_with(PASTE_START) {
                self.in_paste = true;
            } else if self.key_tail.ends_with(PASTE_END) {
                self.in_paste = false;
            }
            match b {
                b'\r' | b'\n' if !self.in_paste => {
                    self.start_line();
                    return Some(i);
                }
                // Ctrl-C: the shell drops the line and prompts again.
                0x03 => self.current = None,
                _ => {
                    let in_paste = self.in_paste;
                    let line = self.start_line();
                    line.key(b, in_paste);
                }
            }
        }
        None
    }

    /// The line as the keys alone make it (for command rules, when keys outrun the echo).
    pub fn keyed_now(&self) -> String {
        self.current
            .as_ref()
            .map(|l| String::from_utf8_lossy(&l.keyed).trim().to_owned())
            .unwrap_or_default()
    }

    /// The line as the screen shows it now, before the Enter reaches the shell (for command
    /// rules: best effort, the shell may still change it).
    pub fn line_now(&self) -> Option<CommandLine> {
        let line = self.current.clone().unwrap_or_default();
        let mut read = self.read_line(&line)?;
        if read.doubts.contains(&Doubt::PromptUnknown)
            && let Some(found) = isearch_match(&read.line)
        {
            read.line = found;
        }
        Some(read)
    }

    /// The Enter at the position [`ShellTracker::keys`] returned goes to the shell.
    pub fn enter(&mut self) {
        self.answered = false;
        let line = self.current.take().unwrap_or_default();
        if self.pending.len() < MAX_PENDING {
            self.pending.push_back(line);
        }
    }

    /// The Enter was withheld from the shell (a denied line).
    pub fn cancel(&mut self) {
        self.current = None;
    }

    /// Feeds the shell's output; pushes the lines it completes.
    pub fn output(&mut self, mut data: &[u8], out: &mut Vec<CommandLine>) {
        out.append(&mut self.resolved);
        self.answered |= !data.is_empty();
        while !self.pending.is_empty() {
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                break;
            };
            self.term.process(&data[..nl]);
            if let Some(line) = self.pending.pop_front()
                && let Some(read) = self.read_line(&line)
            {
                out.push(read);
            }
            self.term.process(&data[nl..=nl]);
            data = &data[nl + 1..];
        }
        self.term.process(data);
    }

    /// Lines entered whose output never came (the channel closed).
    pub fn finish(&mut self, out: &mut Vec<CommandLine>) {
        out.append(&mut self.resolved);
        while let Some(line) = self.pending.pop_front() {
            if let Some(read) = self.read_line(&line) {
                out.push(read);
            }
        }
    }

    fn start_line(&mut self) -> &mut Line {
        if self.current.is_none() && self.answered {
            // The shell answered the last Enter without a newline (no echo: `read -s`) and
            // now takes keys again: what it shows is final.
            let mut done = Vec::new();
            self.finish(&mut done);
            self.resolved.extend(done);
        }
        if self.current.is_none() {
            let ahead = !self.pending.is_empty();
            let prompt = (!ahead).then(|| self.prompt_here()).flatten();
            if let Some(p) = &prompt {
                self.last_prompt = Some(p.text.clone());
            }
            self.current = Some(Line {
                prompt,
                ahead,
                ..Line::default()
            });
        }
        self.current.get_or_insert_default()
    }

    fn prompt_here(&self) -> Option<Prompt> {
        let screen = self.term.screen();
        if screen.alternate_screen() {
            return None;
        }
        let (row, col) = screen.cursor_position();
        let text = row_text(screen, row, 0, col);
        (!text.trim().is_empty()).then(|| Prompt {
            row: self.term.callbacks().0 + u64::from(row),
            col,
            text: text.trim_end().to_owned(),
        })
    }

    /// Reads `line` off the screen: from its prompt to the end of the cursor's row.
    fn read_line(&self, line: &Line) -> Option<CommandLine> {
        let screen = self.term.screen();
        let (cur_row, _) = screen.cursor_position();
        let (_, cols) = screen.size();
        let mut doubts = Vec::new();
        if screen.alternate_screen() {
            doubts.push(Doubt::FullScreen);
        }
        // Readline may accept a multi-line buffer with the cursor on its first row: the rest
        // is the non-empty rows right below.
        let (rows, _) = screen.size();
        let mut end_row = cur_row;
        while end_row + 1 < rows.get()
            && !row_text(screen, end_row + 1, 0, cols.get())
                .trim()
                .is_empty()
        {
            end_row += 1;
        }
        let text = match self.locate_prompt(line, cur_row) {
            Some((row, col)) => screen.contents_between(row, col, end_row, cols.get()),
            None => {
                // A full-screen program has no prompt to miss.
                if !screen.alternate_screen() {
                    doubts.push(Doubt::PromptUnknown);
                }
                let mut top = cur_row;
                while top > 0 && screen.row_wrapped(top - 1) {
                    top -= 1;
                }
                screen.contents_between(top, 0, end_row, cols.get())
            }
        };
        if line.ahead {
            doubts.push(Doubt::TypedAhead);
        }
        let mut text: String = text
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_owned();
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if text.is_empty() {
            if !line.typed {
                return None;
            }
            doubts.push(Doubt::NoEcho);
        }
        doubts.sort_by_key(|d| Doubt::ALL.iter().position(|a| a == d));
        doubts.dedup();
        Some(CommandLine {
            line: text,
            doubts,
            refused: None,
        })
    }

    /// The nearest row at or above the cursor (not above the prompt's own row) that starts with
    /// the prompt's text; its column.
    fn locate_prompt(&self, line: &Line, cur_row: u16) -> Option<(u16, u16)> {
        let screen = self.term.screen();
        let scrolled = self.term.callbacks().0;
        let (text, col, lowest) = match &line.prompt {
            Some(p) => (
                p.text.as_str(),
                p.col,
                p.row
                    .checked_sub(scrolled)
                    .and_then(|r| u16::try_from(r).ok()),
            ),
            None => {
                let text = self.last_prompt.as_deref()?;
                (text, text.chars().count() as u16, Some(0))
            }
        };
        // A prompt scrolled off the top cannot be read back.
        let lowest = lowest?;
        (lowest..=cur_row)
            .rev()
            .find(|&r| {
                let row = row_text(screen, r, 0, col);
                row.trim_end() == text
            })
            .map(|r| (r, col))
    }
}

/// `(reverse-i-search)`pat': line` as readline shows it during Ctrl-R: the line.
fn isearch_match(text: &str) -> Option<String> {
    let start = text.find("i-search)`")?;
    let rest = &text[start..];
    let sep = rest.find("': ")?;
    Some(rest[sep + 3..].to_owned())
}

fn row_text(screen: &vt100::Screen, row: u16, start: u16, end: u16) -> String {
    if end <= start {
        return String::new();
    }
    screen
        .rows(start, end - start)
        .nth(usize::from(row))
        .unwrap_or_default()
}

/// The largest screen the emulator keeps. A client may claim any size, and the target sees what
/// it claims; but each cell costs 32 bytes here, twice once the alternate screen is used, so
/// 65535×65535 would be 256 GiB. 512×256 is wider and taller than real terminals, and keeps one
/// session's screens under 8 MiB. A wider terminal's long lines wrap here a little earlier,
/// which reading a command line already handles.
pub const MAX_COLS: u16 = 512;
pub const MAX_ROWS: u16 = 256;

/// A claimed dimension as the emulator's: 0 means `default`, anything past `max` is `max`.
fn dim(v: u32, default: u16, max: u16) -> std::num::NonZeroU16 {
    let v = if v == 0 {
        default
    } else {
        u16::try_from(v).unwrap_or(max).min(max)
    };
    std::num::NonZeroU16::new(v).unwrap_or(std::num::NonZeroU16::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_screen_is_clamped_for_the_emulator() {
        let size = |t: &ShellTracker| {
            let (rows, cols) = t.term.screen().size();
            (rows.get(), cols.get())
        };
        let mut t = ShellTracker::new(65_535, 65_535);
        assert_eq!(size(&t), (MAX_ROWS, MAX_COLS));
        t.resize(u32::MAX, 3);
        assert_eq!(size(&t), (3, MAX_COLS));
        t.resize(0, 0);
        assert_eq!(size(&t), (24, 80));
    }

    /// Plays `(keys, output)` steps; returns the lines.
    fn run(steps: &[(&[u8], &[u8])]) -> Vec<CommandLine> {
        let mut t = ShellTracker::new(40, 10);
        let mut out = Vec::new();
        t.output(b"$ ", &mut out);
        for (keys, output) in steps {
            let mut rest: &[u8] = keys;
            while let Some(i) = t.keys(rest) {
                t.enter();
                rest = &rest[i + 1..];
            }
            t.output(output, &mut out);
        }
        t.finish(&mut out);
        out
    }

    fn plain(line: &str) -> CommandLine {
        CommandLine {
            line: line.into(),
            doubts: vec![],
            refused: None,
        }
    }

    #[test]
    fn the_echoed_line_after_editing_is_the_command() {
        // `ls -x`, backspace, `l`: the screen shows `ls -l`.
        let got = run(&[
            (b"ls -x", b"ls -x"),
            (b"\x7fl", b"\x08 \x08l"),
            (b"\r", b"\r\nfile\r\n$ "),
        ]);
        assert_eq!(got, vec![plain("ls -l")]);
    }

    #[test]
    fn a_redrawn_line_counts_not_the_keys() {
        // Up arrow: the shell redraws the line with a history entry.
        let got = run(&[
            (b"\x1b[A", b"\r$ echo from-history\x1b[K"),
            (b"\r", b"\r\nfrom-history\r\n$ "),
        ]);
        assert_eq!(got, vec![plain("echo from-history")]);
    }

    #[test]
    fn a_line_wrapped_over_rows_is_one_command() {
        let long = "echo ".to_owned() + &"x".repeat(60);
        let got = run(&[(long.as_bytes(), long.as_bytes()), (b"\r", b"\r\n")]);
        assert_eq!(got, vec![plain(&long)]);
    }

    #[test]
    fn scrolling_keeps_the_prompt() {
        let many = "\r\n".to_owned() + &"out\r\n".repeat(30) + "$ ";
        let got = run(&[
            (b"a", b"a"),
            (b"\r", many.as_bytes()),
            (b"b", b"b"),
            (b"\r", b"\r\n$ "),
        ]);
        assert_eq!(got, vec![plain("a"), plain("b")]);
    }

    #[test]
    fn unechoed_keys_and_full_screen_are_flagged() {
        let got = run(&[(b"secret", b""), (b"\r", b"\r\n")]);
        assert_eq!(got[0].doubts, vec![Doubt::NoEcho]);
        let got = run(&[(b"x", b"\x1b[?1049h\x1b[Hx"), (b"\r", b"\r\n")]);
        assert!(got[0].doubts.contains(&Doubt::FullScreen), "{got:?}");
    }

    #[test]
    fn an_empty_enter_is_no_command_and_paste_newlines_are_not_enter() {
        let got = run(&[
            (b"\r", b"\r\n$ "),
            (b"\x1b[200~echo a\necho b\x1b[201~", b"echo a\r\necho b"),
            (b"\r", b"\r\n"),
        ]);
        assert_eq!(got, vec![plain("echo a\necho b")]);
    }

    #[test]
    fn ctrl_c_starts_over() {
        let got = run(&[
            (b"junk", b"junk"),
            (b"\x03", b"^C\r\n$ "),
            (b"ok", b"ok"),
            (b"\r", b"\r\n"),
        ]);
        assert_eq!(got, vec![plain("ok")]);
    }

    #[test]
    fn reverse_search_is_read_while_it_shows() {
        let mut t = ShellTracker::new(60, 10);
        let mut out = Vec::new();
        t.output(b"$ ", &mut out);
        assert_eq!(t.keys(b"\x12rm"), None);
        t.output(b"\r(reverse-i-search)`rm': rm -rf /tmp/x", &mut out);
        assert_eq!(t.keys(b"\r"), Some(0));
        assert_eq!(
            t.line_now().map(|l| l.line).as_deref(),
            Some("rm -rf /tmp/x")
        );
    }

    #[test]
    fn keys_alone_make_a_line_when_the_echo_lags() {
        let mut t = ShellTracker::new(60, 10);
        assert_eq!(t.keys(b"rm -rf /x\x7f\x7fy \x1b[Djunk\x17z"), None);
        assert_eq!(t.keyed_now(), "rm -rf y z");
        assert_eq!(t.keys(b"\x15ls\x1b[200~ -l\x1b[201~\r"), Some(18));
        assert_eq!(t.keyed_now(), "ls -l");
    }

    /// Bytes exchanged with a real bash 5.2 (in a pty, 80x24): a multi-line bracketed paste,
    /// `read -s` (no echo, and no newline before the next prompt), a program on the alternate
    /// screen, Ctrl-C.
    #[test]
    fn a_real_bash_transcript() {
        let transcript: &[(bool, &[u8])] = &[
            (false, b"\x1b[?2004hcorpus$ "),
            (true, b"\x1b[200~echo p1\x0aecho p2\x1b[201~"),
            (
                false,
                b"\x1b[7mecho p1\x1b[27m\x0d\x0a\x0d\x1b[7mecho p2\x1b[27m",
            ),
            (true, b"\x0d"),
            (false, b"\x1b[A echo p1\x0d\x0a\x0decho p2\x0d\x0a"),
            (false, b"\x1b[?2004l\x0d"),
            (false, b"p1\x0d\x0a"),
            (false, b"p2\x0d\x0a"),
            (false, b"\x1b[?2004h"),
            (false, b"corpus$ "),
            (true, b"read -s pw"),
            (false, b"read -s pw"),
            (true, b"\x0d"),
            (false, b"\x0d\x0a\x1b[?2004l\x0d"),
            (true, b"hunter2"),
            (true, b"\x0d"),
            (false, b"\x1b[?2004hcorpus$ "),
            (true, b"printf '\\e[?1049h'; read x; printf '\\e[?1049l'"),
            (false, b"printf '\\e[?1049h'; read x; printf '\\e[?1049l'"),
            (true, b"\x0d"),
            (false, b"\x0d\x0a\x1b[?2004l\x0d"),
            (false, b"\x1b[?1049h"),
            (true, b"in-vim"),
            (false, b"in-vim"),
            (true, b"\x0d"),
            (false, b"\x0d\x0a"),
            (false, b"\x1b[?1049l\x1b[?2004hcorpus$ "),
            (true, b"echo cancelled"),
            (false, b"echo cancelled"),
            (true, b"\x03"),
            (false, b"^C\x1b[?2004l\x0d"),
            (false, b"\x1b[?2004h"),
            (false, b"\x1b[?2004l\x0d"),
            (false, b"\x0d\x0a"),
            (false, b"\x1b[?2004hcorpus$ "),
            (true, b"echo after"),
            (false, b"echo after"),
            (true, b"\x0d"),
            (false, b"\x0d\x0a\x1b[?2004l\x0d"),
            (false, b"after\x0d\x0a"),
            (false, b"\x1b[?2004h"),
            (false, b"corpus$ "),
            (true, b"exit\x0d"),
            (false, b"exit\x0d\x0a\x1b[?2004l\x0d"),
            (false, b"exit\x0d\x0a"),
        ];
        let mut t = ShellTracker::new(80, 24);
        let mut out = Vec::new();
        for (keys, bytes) in transcript {
            if *keys {
                let mut rest: &[u8] = bytes;
                while let Some(i) = t.keys(rest) {
                    t.enter();
                    rest = &rest[i + 1..];
                }
            } else {
                t.output(bytes, &mut out);
            }
        }
        t.finish(&mut out);
        let doubted = |line: &str, doubts: Vec<Doubt>| CommandLine {
            line: line.into(),
            doubts,
            refused: None,
        };
        assert_eq!(
            out,
            vec![
                plain("echo p1\necho p2"),
                plain("read -s pw"),
                doubted("", vec![Doubt::NoEcho]),
                plain("printf '\\e[?1049h'; read x; printf '\\e[?1049l'"),
                doubted("in-vim", vec![Doubt::FullScreen]),
                plain("echo after"),
                plain("exit"),
            ]
        );
    }

    #[test]
    fn doubts_round_trip_as_bits() {
        let d = vec![Doubt::NoEcho, Doubt::TypedAhead];
        assert_eq!(Doubt::from_bits(Doubt::to_bits(&d)), d);
    }
}
