//! Live sessions an administrator can act on. Each routed session registers a control channel
//! here; `session kill` reaches the session's actor through it (the actor tells the client why,
//! records the kill, and ends the connection).

use std::{collections::HashMap, sync::Mutex};

use tokio::sync::mpsc;

/// What an administrator can ask of a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Kill { reason: String },
}

#[derive(Default)]
pub struct Registry(Mutex<HashMap<u64, mpsc::Sender<Control>>>);

impl Registry {
    pub fn register(&self, session: u64) -> mpsc::Receiver<Control> {
        let (tx, rx) = mpsc::channel(4);
        self.lock().insert(session, tx);
        rx
    }

    pub fn remove(&self, session: u64) {
        self.lock().remove(&session);
    }

    /// Hands `control` to live session `session`.
    pub fn send(&self, session: u64, control: Control) -> Result<(), LiveError> {
        let tx = self
            .lock()
            .get(&session)
            .cloned()
            .ok_or(LiveError::NotLive(session))?;
        tx.try_send(control).map_err(|_| LiveError::Ending(session))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Control>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("session {0} is not live")]
    NotLive(u64),
    #[error("session {0} is ending already")]
    Ending(u64),
}
