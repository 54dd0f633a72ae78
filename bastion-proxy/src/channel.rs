//! Per-channel pumps. Each direction runs in its own task: a target that stops reading must never
//! stop output flowing to the client (or the reverse), or the two windows deadlock. Both tasks
//! record what they forward, before forwarding it.
//!
//! Channel requests (pty, exec, ...) come from the actor (after policy) as [`Ctl`]; they are sent
//! upstream with want-reply, and the target's replies, which arrive in order on the target side,
//! are matched to them first-in first-out.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use bastion_core::{
    policy::commands::{CommandRule, RuleAction},
    record::{
        Kind,
        commands::CommandLine,
        files::{self, Protocol},
        frame::size_payload,
        scp::ScpTracker,
        sftp::{SftpEvent, SftpTracker},
    },
};
use bastion_record::{Recorder, RecordingFailed};
use bytes::Bytes;
use russh::{Channel, ChannelMsg, client, server};
use tokio::sync::{mpsc, oneshot};

use super::{
    capture::{self, Capture},
    events::Request,
    shell::{Hold, Keys, Shell, ToActor},
};

pub enum Ctl {
    /// Forward an allowed request; answer `reply` with the target's verdict.
    Request {
        request: Request,
        reply: oneshot::Sender<bool>,
    },
    /// The command rules that apply to a shell started on this channel, and their grant.
    CommandRules {
        grant: String,
        rules: Vec<CommandRule>,
    },
    /// Follow the files the next request moves (SFTP, or an exec of the legacy scp).
    CaptureFiles(CaptureFiles),
    /// Read nothing more from the client until the next request: an exec held for review.
    /// (The target opens its window only once the command starts; data sent ahead of it would
    /// keep the pump from ever carrying the command.)
    HoldInput,
}

type Pending = Arc<Mutex<VecDeque<oneshot::Sender<bool>>>>;

/// Bytes the client sent on the channel (the target-to-client task reports it at close).
type BytesIn = Arc<std::sync::atomic::AtomicU64>;

/// What both directions of one channel share.
#[derive(Clone)]
struct Shared {
    id: u32,
    pending: Pending,
    transfers: Transfers,
    bytes_in: BytesIn,
    rec: Recorder,
    shell: Shell,
    /// Lines that matched a command rule, to the session actor.
    hits: ToActor,
}

/// What the channel's bytes say about files: SFTP operations once it runs the `sftp`
/// subsystem, and the files moved by SFTP or the legacy scp protocol, each listed with its
/// hash (and its content, with capture on). The flag keeps other channels' hot path free of
/// the lock.
#[derive(Clone, Default)]
struct Transfers {
    active: Arc<std::sync::atomic::AtomicBool>,
    state: Arc<Mutex<TransferState>>,
}

#[derive(Default)]
struct TransferState {
    sftp: Option<SftpTracker>,
    scp: Option<ScpTracker>,
    /// Set by the actor before the request that may move files.
    files: Option<CaptureFiles>,
    capture: Option<Capture>,
}

/// What a request that may move files needs to follow them.
#[derive(Clone)]
pub struct CaptureFiles {
    /// Where contents are staged; `None`: listed and hashed only.
    pub settings: Option<Arc<capture::Settings>>,
    pub session: Arc<capture::SessionFiles>,
}

impl Transfers {
    fn lock(&self) -> std::sync::MutexGuard<'_, TransferState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request was carried: follow what it starts.
    fn request(&self, request: &Request) {
        let mut st = self.lock();
        let protocol = match request {
            Request::Subsystem { name } if name == "sftp" => {
                st.sftp = Some(match st.files {
                    Some(_) => SftpTracker::capturing(),
                    None => SftpTracker::default(),
                });
                Protocol::Sftp
            }
            Request::Exec { command } if st.files.is_some() => {
                match ScpTracker::for_command(&String::from_utf8_lossy(command)) {
                    Some(t) => st.scp = Some(t),
                    None => return,
                }
                Protocol::Scp
            }
            _ => return,
        };
        if let Some(c) = st.files.clone() {
            st.capture = Some(Capture::new(c.settings, c.session, protocol));
        }
        self.active
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Feeds one direction's bytes and records the operations and files they complete.
    async fn feed(
        &self,
        rec: &Recorder,
        id: u32,
        data: &[u8],
        from_client: bool,
    ) -> Result<(), RecordingFailed> {
        if !self.active.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let (ops, files) = {
            let mut st = self.lock();
            let st = &mut *st;
            let (ops, events) = match (&mut st.sftp, &mut st.scp) {
                (Some(t), _) => {
                    let ops = if from_client {
                        t.client(data)
                    } else {
                        t.server(data)
                    };
                    (ops, t.take_files())
                }
                (None, Some(t)) if from_client => (Vec::new(), t.client(data)),
                (None, Some(t)) => (Vec::new(), t.server(data)),
                (None, None) => return Ok(()),
            };
            let files = st
                .capture
                .as_mut()
                .map(|c| c.take(events))
                .unwrap_or_default();
            (ops, files)
        };
        record_sftp(rec, id, ops).await?;
        record_files(rec, id, files).await
    }

    async fn finish(&self, rec: &Recorder, id: u32) -> Result<(), RecordingFailed> {
        if !self.active.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let (ops, files) = {
            let mut st = self.lock();
            let st = &mut *st;
            let mut events = Vec::new();
            let ops = match &mut st.sftp {
                Some(t) => {
                    let ops = t.finish();
                    events = t.take_files();
                    ops
                }
                None => Vec::new(),
            };
            if let Some(t) = &mut st.scp {
                events.extend(t.finish());
            }
            let files = match &mut st.capture {
                Some(c) => {
                    let mut files = c.take(events);
                    files.extend(c.finish());
                    files
                }
                None => Vec::new(),
            };
            (ops, files)
        };
        record_sftp(rec, id, ops).await?;
        record_files(rec, id, files).await
    }
}

/// Records each finished file: its staged content (when the session does not hold it yet) as
/// `FileData` frames, then its `File` frame.
async fn record_files(
    rec: &Recorder,
    id: u32,
    files: Vec<capture::Finished>,
) -> Result<(), RecordingFailed> {
    let mut buf = Vec::new();
    for mut f in files {
        loop {
            match f.next_piece(&mut buf) {
                Ok(Some(n)) => {
                    let data = files::data_payload(f.file.index, &buf[..n]);
                    rec.record(Kind::FileData, id, data).await?;
                }
                Ok(None) => break,
                Err(e) => {
                    // What was recorded of it stays; the listing says it is incomplete.
                    f.file.captured = false;
                    f.file.note = Some(format!("could not read the staged file: {e}"));
                    break;
                }
            }
        }
        if let Ok(json) = serde_json::to_vec(&f.file) {
            rec.record(Kind::File, id, json.into()).await?;
        }
    }
    Ok(())
}

async fn record_lines(
    rec: &Recorder,
    id: u32,
    lines: Vec<CommandLine>,
) -> Result<(), RecordingFailed> {
    for line in lines {
        if let Ok(json) = serde_json::to_vec(&line) {
            rec.record(Kind::Command, id, json.into()).await?;
        }
    }
    Ok(())
}

async fn record_sftp(
    rec: &Recorder,
    id: u32,
    events: Vec<SftpEvent>,
) -> Result<(), RecordingFailed> {
    for e in events {
        if let Ok(json) = serde_json::to_vec(&e) {
            rec.record(Kind::SftpOp, id, json.into()).await?;
        }
    }
    Ok(())
}

/// Starts pumping between the client's channel `down` and the target's channel `up`.
pub fn spawn(
    down: Channel<server::Msg>,
    up: Channel<client::Msg>,
    recorder: Recorder,
    hits: ToActor,
) -> mpsc::Sender<Ctl> {
    let (ctl_tx, ctl_rx) = control();
    start(down, up, recorder, hits, ctl_rx);
    ctl_tx
}

/// A pump's control channel, for [`start`]: requests queued on it before the pump starts are
/// carried before any of the client's data.
pub fn control() -> (mpsc::Sender<Ctl>, mpsc::Receiver<Ctl>) {
    mpsc::channel(16)
}

/// [`spawn`] with a control channel made beforehand.
pub fn start(
    down: Channel<server::Msg>,
    up: Channel<client::Msg>,
    recorder: Recorder,
    hits: ToActor,
    ctl_rx: mpsc::Receiver<Ctl>,
) {
    let id = u32::from(down.id());
    let (down_r, down_w) = down.split();
    let (up_r, up_w) = up.split();
    let shared = Shared {
        id,
        pending: Pending::default(),
        transfers: Transfers::default(),
        bytes_in: BytesIn::default(),
        rec: recorder,
        shell: Shell::default(),
        hits,
    };
    let notice = Box::new(down_w.make_writer());
    tokio::spawn(client_to_target(
        down_r,
        up_w,
        ctl_rx,
        notice,
        shared.clone(),
    ));
    tokio::spawn(target_to_client(up_r, down_w, shared));
}

async fn client_to_target(
    mut down: russh::ChannelReadHalf,
    up: russh::ChannelWriteHalf<client::Msg>,
    mut ctl: mpsc::Receiver<Ctl>,
    mut notice: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    shared: Shared,
) {
    let Shared {
        id,
        pending,
        transfers,
        bytes_in,
        rec,
        shell,
        hits,
    } = shared;
    let mut ctl_open = true;
    let mut holding = false;
    loop {
        tokio::select! {
            // Requests first: a target opens a session channel's window only once its shell
            // or command is requested, so client data waiting ahead of them would wait forever.
            biased;
            c = ctl.recv(), if ctl_open => match c {
                Some(Ctl::CommandRules { grant, rules }) => shell.rules(grant, rules),
                Some(Ctl::HoldInput) => holding = true,
                Some(Ctl::CaptureFiles(c)) => transfers.lock().files = Some(c),
                Some(Ctl::Request { request, reply }) => {
                    holding = false;
                    if record_request(&rec, id, &request).await.is_err() {
                        // Not on record, not carried: the session is ending.
                        let _ = reply.send(false);
                        break;
                    }
                    transfers.request(&request);
                    match &request {
                        Request::Pty { cols, rows, .. } => shell.pty(*cols, *rows),
                        Request::Shell => shell.start(),
                        _ => {}
                    }
                    if let Ok(mut p) = pending.lock() {
                        p.push_back(reply);
                    }
                    if let Err(e) = send_request(&up, request).await {
                        tracing::debug!(channel = id, error = %e, "forwarding request to target failed");
                        // Answer "no" rather than leave the client waiting.
                        if let Some(r) = pending.lock().ok().and_then(|mut p| p.pop_back()) {
                            let _ = r.send(false);
                        }
                    }
                }
                // A held command's channel was given up: nothing more is carried.
                None if holding => break,
                None => ctl_open = false,
            },
            msg = down.wait(), if !holding => {
                let Some(msg) = msg else { break };
                // Recorded before forwarded: what cannot be recorded is not carried (the
                // recorder has told the session, which ends).
                let sent = match msg {
                    ChannelMsg::Data { data } => {
                        bytes_in.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        if rec.record(Kind::Input, id, data.clone()).await.is_err()
                            || transfers.feed(&rec, id, &data, true).await.is_err()
                        {
                            break;
                        }
                        let to = Upward { up: &up, shell: &shell, rec: &rec, hits: &hits, id };
                        keys(&to, &mut notice, &mut ctl, data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        if rec.record(Kind::Input, id, data.clone()).await.is_err() {
                            break;
                        }
                        up.extended_data_bytes(ext, data).await
                    }
                    ChannelMsg::Eof => {
                        if rec.record(Kind::InputEof, id, Bytes::new()).await.is_err() {
                            break;
                        }
                        up.eof().await
                    }
                    ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                        shell.resize(col_width, row_height);
                        if rec.record(Kind::WindowChange, id, size_payload(col_width, row_height, b"")).await.is_err() {
                            break;
                        }
                        up.window_change(col_width, row_height, pix_width, pix_height).await
                    }
                    ChannelMsg::Signal { signal } => {
                        if rec.record(Kind::Signal, id, Bytes::from(signal_name(&signal).to_owned())).await.is_err() {
                            break;
                        }
                        up.signal(signal).await
                    }
                    ChannelMsg::Close => break,
                    // Requests reach the target through the actor, after policy.
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
        }
    }
    let _ = up.close().await;
}

/// Where the client's keys go, and what watches them on the way.
struct Upward<'a> {
    up: &'a russh::ChannelWriteHalf<client::Msg>,
    shell: &'a Shell,
    rec: &'a Recorder,
    hits: &'a ToActor,
    id: u32,
}

/// Forwards the client's keys; on a shell, a line a rule stops never gets its Enter: the shell
/// is sent Ctrl-C to drop it, the client is told why, and the actor audits it. A line a review
/// rule holds keeps its Enter (and every key after it) until it is decided.
async fn keys(
    to: &Upward<'_>,
    notice: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    ctl: &mut mpsc::Receiver<Ctl>,
    data: Bytes,
) -> Result<(), russh::Error> {
    use tokio::io::AsyncWriteExt;
    let Upward {
        up,
        shell,
        rec,
        hits,
        id,
    } = *to;
    // Every channel's input passes here: no shell, no work.
    if !shell.active() {
        return up.data_bytes(data).await;
    }
    let mut alerts = Vec::new();
    let mut next = Some(data);
    while let Some(data) = next.take() {
        for run in shell.keys(id, data, &mut alerts) {
            match run {
                Keys::Hold { hit, rest } => {
                    let (decided, decision) = tokio::sync::oneshot::channel();
                    let line = hit.line.clone();
                    // Never waits on the actor: a full queue refuses the line.
                    let outcome = match hits.holds.try_send(Hold { hit, decided }) {
                        Ok(()) => decision_for(decision, ctl, shell).await,
                        Err(_) => Err("too many commands are waiting for approval".into()),
                    };
                    shell.decided(outcome.is_ok());
                    match outcome {
                        Ok(()) => up.data_bytes(Bytes::from_static(b"\r")).await?,
                        Err(why) => {
                            up.data_bytes(Bytes::from_static(b"\x03")).await?;
                            let _ = notice
                                .write_all(
                                    format!("\r\nbastion: `{line}` refused: {why}\r\n").as_bytes(),
                                )
                                .await;
                            let _ = notice.flush().await;
                            let refused = CommandLine {
                                line,
                                doubts: Vec::new(),
                                refused: Some(format!("review: {why}")),
                            };
                            let _ = record_lines(rec, id, vec![refused]).await;
                        }
                    }
                    if !rest.is_empty() {
                        next = Some(rest);
                    }
                }
                Keys::Forward(bytes) if bytes.is_empty() => {}
                Keys::Forward(bytes) => up.data_bytes(bytes).await?,
                Keys::Withhold(hit) => {
                    up.data_bytes(Bytes::from_static(b"\x03")).await?;
                    let verb = if hit.rule.action == RuleAction::Terminate {
                        "ends the session"
                    } else {
                        "denied"
                    };
                    let why = format!(
                        "bastion: command {verb} by rule `{}` of grant {}",
                        hit.rule.pattern, hit.grant
                    );
                    let _ = notice.write_all(format!("\r\n{why}\r\n").as_bytes()).await;
                    let _ = notice.flush().await;
                    let line = CommandLine {
                        line: hit.line.clone(),
                        doubts: Vec::new(),
                        refused: Some(format!("{} {}", hit.rule.action.as_str(), hit.rule.pattern)),
                    };
                    // A failed recording ends the session anyway; the refusal stands either way.
                    let _ = record_lines(rec, id, vec![line]).await;
                    let _ = hits.hits.send(hit).await;
                }
            }
        }
    }
    for hit in alerts {
        let _ = hits.hits.send(hit).await;
    }
    Ok(())
}

/// Waits for a held line's decision while still serving the actor's control queue (requests
/// on this channel are refused while the line waits), so the actor never blocks on this
/// pump; the queue closing (the session ending) refuses the line and ends the wait.
async fn decision_for(
    mut decision: oneshot::Receiver<Result<(), String>>,
    ctl: &mut mpsc::Receiver<Ctl>,
    shell: &Shell,
) -> Result<(), String> {
    let ending = || Err("the session is ending".to_owned());
    loop {
        tokio::select! {
            d = &mut decision => return d.unwrap_or_else(|_| ending()),
            c = ctl.recv() => match c {
                Some(Ctl::CommandRules { grant, rules }) => shell.rules(grant, rules),
                Some(Ctl::Request { reply, .. }) => drop(reply.send(false)),
                Some(Ctl::HoldInput | Ctl::CaptureFiles(_)) => {}
                None => return ending(),
            },
        }
    }
}

async fn target_to_client(
    mut up: russh::ChannelReadHalf,
    down: russh::ChannelWriteHalf<server::Msg>,
    shared: Shared,
) {
    let Shared {
        id,
        pending,
        transfers,
        bytes_in,
        rec,
        shell,
        ..
    } = shared;
    let mut bytes_out = 0u64;
    while let Some(msg) = up.wait().await {
        // Recorded before forwarded, as from the client.
        let sent = match msg {
            ChannelMsg::Data { data } => {
                bytes_out += data.len() as u64;
                if rec.record(Kind::Output, id, data.clone()).await.is_err()
                    || transfers.feed(&rec, id, &data, false).await.is_err()
                    || record_lines(&rec, id, shell.output(&data)).await.is_err()
                {
                    break;
                }
                down.data_bytes(data).await
            }
            ChannelMsg::ExtendedData { data, ext } => {
                bytes_out += data.len() as u64;
                if rec.record(Kind::Stderr, id, data.clone()).await.is_err() {
                    break;
                }
                down.extended_data_bytes(ext, data).await
            }
            ChannelMsg::Eof => {
                if rec.record(Kind::OutputEof, id, Bytes::new()).await.is_err() {
                    break;
                }
                down.eof().await
            }
            ChannelMsg::ExitStatus { exit_status } => {
                let status = Bytes::copy_from_slice(&exit_status.to_le_bytes());
                if rec.record(Kind::ExitStatus, id, status).await.is_err() {
                    break;
                }
                down.exit_status(exit_status).await
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                let name = Bytes::from(format!("exit {}", self::signal_name(&signal_name)));
                if rec.record(Kind::Signal, id, name).await.is_err() {
                    break;
                }
                Ok(())
            }
            ChannelMsg::Success | ChannelMsg::Failure => {
                let ok = matches!(msg, ChannelMsg::Success);
                if let Some(r) = pending.lock().ok().and_then(|mut p| p.pop_front()) {
                    let _ = r.send(ok);
                }
                Ok(())
            }
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    // What the channel leaves on record as it closes; after a recording failure there is no
    // record to add to (the session is ending), so failures here change nothing.
    let _ = transfers.finish(&rec, id).await;
    let _ = record_lines(&rec, id, shell.finish()).await;
    // The channel's totals, so a forward's open and close frames bracket its traffic.
    let totals = format!(
        r#"{{"bytes_in":{},"bytes_out":{bytes_out}}}"#,
        bytes_in.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = rec.record(Kind::Close, id, Bytes::from(totals)).await;
    let _ = down.close().await;
}

async fn record_request(rec: &Recorder, id: u32, request: &Request) -> Result<(), RecordingFailed> {
    let (kind, data) = match request {
        Request::Pty {
            term, cols, rows, ..
        } => (Kind::Pty, size_payload(*cols, *rows, term.as_bytes())),
        Request::Shell => (Kind::Shell, Bytes::new()),
        Request::Exec { command } => (Kind::Exec, Bytes::copy_from_slice(command)),
        Request::Subsystem { name } => (Kind::Subsystem, Bytes::copy_from_slice(name.as_bytes())),
        Request::Env { name, value } => (
            Kind::Env,
            Bytes::from(serde_json::json!({ "name": name, "value": value }).to_string()),
        ),
        Request::Agent => return Ok(()),
    };
    rec.record(kind, id, data).await
}

async fn send_request(
    up: &russh::ChannelWriteHalf<client::Msg>,
    request: Request,
) -> Result<(), russh::Error> {
    match request {
        Request::Pty {
            term,
            cols,
            rows,
            pix_width,
            pix_height,
            modes,
        } => {
            up.request_pty(true, &term, cols, rows, pix_width, pix_height, &modes)
                .await
        }
        Request::Shell => up.request_shell(true).await,
        Request::Exec { command } => up.exec(true, command).await,
        Request::Subsystem { name } => up.request_subsystem(true, name).await,
        Request::Env { name, value } => up.set_env(true, name, value).await,
        Request::Agent => up.agent_forward(true).await,
    }
}

/// A signal as RFC 4254 names it (`TERM`, or a custom name as sent), for the record: russh's
/// `Debug` would store `Custom("X")`, and its own `name` is private.
fn signal_name(sig: &russh::Sig) -> &str {
    use russh::Sig;
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_recorded_by_their_protocol_name() {
        assert_eq!(signal_name(&russh::Sig::TERM), "TERM");
        assert_eq!(signal_name(&russh::Sig::Custom("WINCH".into())), "WINCH");
    }
}
