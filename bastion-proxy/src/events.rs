//! The closed set of events the russh handler sends to the session actor. Requests that need an
//! answer carry a oneshot; the handler waits for it before russh reads the client's next message,
//! which keeps the client's ordering intact.

use bastion_core::keys::Secret;
use russh::{ChannelId, keys::PublicKey, server};
use tokio::sync::oneshot;

/// The actor's answer to a verified key or certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    Accepted,
    Refused,
    /// Accepted as the first factor: the code comes next (keyboard-interactive).
    SecondFactor,
}

/// The actor's answer in keyboard-interactive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Ask for the code, with these instructions.
    Prompt {
        instructions: String,
    },
    Accepted,
    /// Refused; `retry` when the client may answer again.
    Refused {
        retry: bool,
    },
}

/// A channel request from the client that the target must see (and may refuse).
#[derive(Debug, Clone)]
pub enum Request {
    Pty {
        term: String,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        modes: Vec<(russh::Pty, u32)>,
    },
    Shell,
    Exec {
        command: Vec<u8>,
    },
    Subsystem {
        name: String,
    },
    Env {
        name: String,
        value: String,
    },
    Agent,
}

#[derive(Debug, Clone)]
pub enum OpenKind {
    Session,
    /// `direct-tcpip`: the target connects to host:port on the client's behalf.
    DirectTcpip {
        host: String,
        port: u32,
        originator: String,
        originator_port: u32,
    },
}

pub enum Event {
    /// Signed in: the handle through which the actor can open channels toward the client.
    ClientHandle(server::Handle),
    /// May this key sign in as `user`? (Asked before the client proves possession.)
    KeyOffered {
        user: String,
        key: PublicKey,
        reply: oneshot::Sender<bool>,
    },
    /// The client proved possession of the key inside `cert`, an OpenSSH certificate.
    CertVerified {
        user: String,
        cert: Box<russh::keys::Certificate>,
        reply: oneshot::Sender<SignIn>,
    },
    /// The client proved possession of `key`.
    KeyVerified {
        user: String,
        key: PublicKey,
        reply: oneshot::Sender<SignIn>,
    },
    /// keyboard-interactive: the client starts the method (`answers` is `None`) or answers
    /// its prompt. It only ever completes a sign-in whose key was accepted on this connection.
    KeyboardInteractive {
        user: String,
        answers: Option<Vec<Secret>>,
        reply: oneshot::Sender<Challenge>,
    },
    /// A channel the client wants to open: a session, or a local forward (`ssh -L`).
    Open {
        kind: OpenKind,
        channel: russh::Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
    },
    Request {
        channel: ChannelId,
        request: Request,
        reply: oneshot::Sender<bool>,
    },
}
