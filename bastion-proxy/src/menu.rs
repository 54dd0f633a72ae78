//! The self-service menu on a session channel of a connection that signed in without naming a
//! target (`ssh -p 2222 alice@bastion`). With a shell it is interactive (a numbered list, a
//! prompt, simple line editing); with a command (`ssh ... alice@bastion requests`) it runs
//! that one command. Everything typed and shown is recorded like any session. Picking a target
//! hands the channel back to the session actor ([`Pick`]), which routes it as a normal audited
//! session.

use std::sync::Arc;

use bastion_core::record::Kind;
use bastion_record::Recorder;
use bytes::Bytes;
use russh::{Channel, ChannelMsg, server};
use tokio::sync::{mpsc, oneshot};

use super::{
    ProxyContext,
    channel::Ctl,
    events::Request,
    menu_cmd::{self, Reply},
    tickets,
};

/// Longest line the prompt keeps.
const MAX_LINE: usize = 1024;
const PROMPT: &str = "bastion> ";

/// The user picked a target: the channel, with its PTY request, goes to the actor.
pub struct Pick {
    /// `login@target`.
    pub destination: String,
    pub pty: Option<Request>,
    pub down: Channel<server::Msg>,
}

struct Menu {
    ctx: Arc<ProxyContext>,
    user: String,
    rec: Recorder,
    down: Channel<server::Msg>,
    id: u32,
    pty: Option<Request>,
    line: String,
    /// Inside an escape sequence (arrow keys and the like are ignored).
    escape: bool,
    interactive: bool,
}

/// Serves the menu on `down`; requests arrive as [`Ctl`] from the actor.
pub fn spawn(
    ctx: Arc<ProxyContext>,
    user: String,
    rec: Recorder,
    down: Channel<server::Msg>,
    picks: mpsc::Sender<Pick>,
) -> mpsc::Sender<Ctl> {
    let (tx, rx) = mpsc::channel(16);
    let id = u32::from(down.id());
    let menu = Menu {
        ctx,
        user,
        rec,
        down,
        id,
        pty: None,
        line: String::new(),
        escape: false,
        interactive: false,
    };
    tokio::spawn(menu.run(rx, picks));
    tx
}

impl Menu {
    async fn run(mut self, mut ctl: mpsc::Receiver<Ctl>, picks: mpsc::Sender<Pick>) {
        loop {
            let next = tokio::select! {
                c = ctl.recv() => match c {
                    Some(Ctl::Request { request, reply }) => self.request(request, reply).await,
                    Some(Ctl::CommandRules { .. } | Ctl::HoldInput | Ctl::CaptureFiles(_)) => Step::Stay,
                    None => Step::Close,
                },
                msg = self.down.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => self.keys(&data).await,
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => Step::Close,
                    // A picked target gets the terminal's size as it is then.
                    Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                        if let Some(Request::Pty { cols, rows, .. }) = &mut self.pty {
                            (*cols, *rows) = (col_width, row_height);
                        }
                        Step::Stay
                    }
                    Some(_) => Step::Stay,
                },
            };
            match next {
                Step::Stay => {}
                Step::Close => break,
                Step::Connect(destination) => {
                    let pick = Pick {
                        destination,
                        pty: self.pty.take(),
                        down: self.down,
                    };
                    // The actor routes it; if the connection is gone, so is the channel.
                    let _ = picks.send(pick).await;
                    return;
                }
            }
        }
        let _ = self.down.eof().await;
        let _ = self.down.close().await;
    }

    async fn request(&mut self, request: Request, reply: oneshot::Sender<bool>) -> Step {
        let recorded = match &request {
            Request::Pty {
                term, cols, rows, ..
            } => Some((
                Kind::Pty,
                bastion_core::record::frame::size_payload(*cols, *rows, term.as_bytes()),
            )),
            Request::Shell => Some((Kind::Shell, Bytes::new())),
            Request::Exec { command } => Some((Kind::Exec, Bytes::copy_from_slice(command))),
            _ => None,
        };
        if let Some((kind, data)) = recorded
            && self.rec.record(kind, self.id, data).await.is_err()
        {
            let _ = reply.send(false);
            return Step::Close;
        }
        match request {
            Request::Pty { .. } => {
                self.pty = Some(request);
                let _ = reply.send(true);
                Step::Stay
            }
            // Accepted and not passed anywhere: the menu has no environment.
            Request::Env { .. } => {
                let _ = reply.send(true);
                Step::Stay
            }
            Request::Shell => {
                let _ = reply.send(true);
                self.interactive = true;
                let mut text = format!("bastion: signed in as {}\n", self.user);
                text.push_str(&self.news().await);
                let reply = self
                    .command(menu_cmd::Command::Targets { json: false })
                    .await;
                text.push_str(&reply.text);
                let requests = self
                    .command(menu_cmd::Command::Requests { json: false })
                    .await;
                text.push_str("Your requests, and those you may decide:\n");
                text.push_str(&requests.text);
                text.push_str(
                    "Type a number or name to connect, `request ...` to ask for access; `help` lists the commands.\n",
                );
                self.say(&text).await;
                self.prompt().await
            }
            Request::Exec { command } => {
                let _ = reply.send(true);
                let line = String::from_utf8_lossy(&command).into_owned();
                let news = self.news().await;
                if !news.is_empty() {
                    self.say_stderr(&news).await;
                }
                let reply = match menu_cmd::parse(&line) {
                    Ok(menu_cmd::Command::Connect(which)) => Reply {
                        text: format!(
                            "bastion: to connect, sign in to the target itself: ssh LOGIN@{which}@bastion (on this port)\n"
                        ),
                        status: 2,
                        ..Reply::default()
                    },
                    Ok(cmd) => self.command(cmd).await,
                    Err(e) => Reply {
                        text: format!("bastion: {e}\n"),
                        status: 2,
                        ..Reply::default()
                    },
                };
                if reply.status == 0 {
                    self.say(&reply.text).await;
                } else {
                    self.say_stderr(&reply.text).await;
                }
                let _ = self.down.exit_status(reply.status).await;
                let _ = self
                    .rec
                    .record(
                        Kind::ExitStatus,
                        self.id,
                        Bytes::copy_from_slice(&reply.status.to_le_bytes()),
                    )
                    .await;
                Step::Close
            }
            Request::Subsystem { .. } | Request::Agent => {
                let _ = reply.send(false);
                Step::Stay
            }
        }
    }

    /// Decisions on the user's requests not told yet.
    async fn news(&self) -> String {
        let (ctx, user) = (self.ctx.clone(), self.user.clone());
        let now = bastion_core::clock::now_secs();
        let lines = tokio::task::spawn_blocking(move || tickets::news(&ctx, &user, now))
            .await
            .unwrap_or_default();
        lines.iter().map(|l| format!("bastion: {l}\n")).collect()
    }

    async fn command(&self, cmd: menu_cmd::Command) -> Reply {
        let (ctx, user) = (self.ctx.clone(), self.user.clone());
        let now = bastion_core::clock::now_secs();
        tokio::task::spawn_blocking(move || menu_cmd::run(&ctx, &user, cmd, now))
            .await
            .unwrap_or_else(|e| Reply {
                text: format!("bastion: internal: {e}\n"),
                status: 1,
                ..Reply::default()
            })
    }

    /// Interactive keys: printable characters are echoed, Backspace erases, Enter runs the
    /// line, Ctrl-C drops it, Ctrl-D on an empty line leaves.
    async fn keys(&mut self, data: &[u8]) -> Step {
        if self
            .rec
            .record(Kind::Input, self.id, Bytes::copy_from_slice(data))
            .await
            .is_err()
        {
            return Step::Close;
        }
        if !self.interactive {
            return Step::Stay;
        }
        let mut echo = String::new();
        for &b in data {
            if self.escape {
                self.escape = !(b.is_ascii_alphabetic() || b == b'~');
                continue;
            }
            match b {
                0x1b => self.escape = true,
                b'\r' | b'\n' => {
                    echo.push_str("\r\n");
                    self.say(&echo).await;
                    echo.clear();
                    let line = std::mem::take(&mut self.line);
                    match self.enter(&line).await {
                        Step::Stay => {}
                        other => return other,
                    }
                }
                0x03 => {
                    self.line.clear();
                    echo.push_str("^C\r\n");
                    echo.push_str(PROMPT);
                }
                0x04 if self.line.is_empty() => return Step::Close,
                0x7f | 0x08 if self.line.pop().is_some() => echo.push_str("\x08 \x08"),
                b if (0x20..0x7f).contains(&b) && self.line.len() < MAX_LINE => {
                    self.line.push(b as char);
                    echo.push(b as char);
                }
                _ => {}
            }
        }
        if !echo.is_empty() {
            self.say(&echo).await;
        }
        Step::Stay
    }

    async fn enter(&mut self, line: &str) -> Step {
        if line.trim().is_empty() {
            return self.prompt().await;
        }
        let reply = match menu_cmd::parse(line) {
            Ok(cmd) => self.command(cmd).await,
            Err(e) => Reply {
                text: format!("bastion: {e}\n"),
                status: 2,
                ..Reply::default()
            },
        };
        if reply.quit {
            return Step::Close;
        }
        if let Some(destination) = reply.connect {
            self.say(&format!("bastion: connecting to {destination}\n"))
                .await;
            return Step::Connect(destination);
        }
        self.say(&reply.text).await;
        self.prompt().await
    }

    async fn prompt(&mut self) -> Step {
        self.say(PROMPT).await;
        Step::Stay
    }

    /// Shows `text` (LF as CRLF on a terminal), recorded first.
    async fn say(&self, text: &str) {
        let bytes = self.terminal(text);
        if self
            .rec
            .record(Kind::Output, self.id, bytes.clone())
            .await
            .is_ok()
        {
            let _ = self.down.data_bytes(bytes).await;
        }
    }

    async fn say_stderr(&self, text: &str) {
        let bytes = self.terminal(text);
        if self
            .rec
            .record(Kind::Stderr, self.id, bytes.clone())
            .await
            .is_ok()
        {
            let _ = self.down.extended_data_bytes(1, bytes).await;
        }
    }

    fn terminal(&self, text: &str) -> Bytes {
        if self.pty.is_some() || self.interactive {
            Bytes::from(text.replace("\r\n", "\n").replace('\n', "\r\n"))
        } else {
            Bytes::copy_from_slice(text.as_bytes())
        }
    }
}

enum Step {
    Stay,
    Close,
    Connect(String),
}
