//! An interactive shell channel watched line by line: the keys and output pass through a
//! [`ShellTracker`], each line entered is recorded as a `command` frame, and the grant's command
//! rules are applied at Enter, before the Enter reaches the target.
//!
//! Inside a PTY this is best effort (see `policy::commands`): the line is read off the screen
//! as the shell shows it, and a shell can run things no screen shows (aliases, functions,
//! scripts). Exec requests are checked exactly by the actor instead.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;

use bastion_core::{
    policy::commands::{self, CommandRule, RuleAction},
    record::commands::{CommandLine, ShellTracker},
};

/// A line that matched a command rule, for the actor to audit (and end the session on
/// terminate).
#[derive(Debug, Clone)]
pub struct RuleHit {
    pub channel: u32,
    pub line: String,
    pub rule: CommandRule,
    pub grant: String,
}

/// A held line on its way to the session actor, which answers once it is decided (Err: why
/// it was refused).
pub struct Hold {
    pub hit: RuleHit,
    pub decided: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Where a channel's shell reports to the session actor: lines rules matched, lines held.
#[derive(Clone)]
pub struct ToActor {
    pub hits: tokio::sync::mpsc::Sender<RuleHit>,
    pub holds: tokio::sync::mpsc::Sender<Hold>,
}

/// What to do with a run of the client's keys.
pub enum Keys {
    Forward(Bytes),
    /// The Enter of this line is withheld (deny or terminate): the shell is told to drop the
    /// line and the client why.
    Withhold(RuleHit),
    /// A line a `review` rule holds: its Enter waits for the decision, and so does `rest`
    /// (the keys typed after it), fed again once the line is decided.
    Hold {
        hit: RuleHit,
        rest: Bytes,
    },
}

#[derive(Default)]
struct State {
    size: Option<(u32, u32)>,
    tracker: Option<ShellTracker>,
    grant: String,
    rules: Vec<CommandRule>,
}

/// Shared by both directions of a channel. The flag keeps other channels' hot path free of the
/// lock.
#[derive(Clone, Default)]
pub struct Shell {
    active: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
}

impl Shell {
    pub fn pty(&self, cols: u32, rows: u32) {
        if let Ok(mut s) = self.state.lock() {
            s.size = Some((cols, rows));
        }
    }

    pub fn rules(&self, grant: String, rules: Vec<CommandRule>) {
        if let Ok(mut s) = self.state.lock() {
            s.grant = grant;
            s.rules = rules;
        }
    }

    /// A shell started: with a PTY, its lines are followed from now on.
    pub fn start(&self) {
        if let Ok(mut s) = self.state.lock()
            && let Some((cols, rows)) = s.size
        {
            s.tracker = Some(ShellTracker::new(cols, rows));
            self.active.store(true, Ordering::Release);
        }
    }

    pub fn resize(&self, cols: u32, rows: u32) {
        if let Ok(mut s) = self.state.lock() {
            s.size = Some((cols, rows));
            if let Some(t) = &mut s.tracker {
                t.resize(cols, rows);
            }
        }
    }

    /// Whether a shell with a PTY is being followed on this channel (the pumps skip it otherwise).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Splits the client's keys at Enters that a rule stops; `alerts` gets the lines that match
    /// an alert rule (they go on).
    pub fn keys(&self, channel: u32, data: Bytes, alerts: &mut Vec<RuleHit>) -> Vec<Keys> {
        if !self.active.load(Ordering::Acquire) {
            return vec![Keys::Forward(data)];
        }
        let Ok(mut guard) = self.state.lock() else {
            return vec![Keys::Forward(data)];
        };
        let State {
            tracker,
            grant,
            rules,
            ..
        } = &mut *guard;
        let Some(tracker) = tracker else {
            return vec![Keys::Forward(data)];
        };
        let mut out = Vec::new();
        let mut start = 0;
        let mut pos = 0;
        while let Some(i) = tracker.keys(&data[pos..]) {
            let enter = pos + i;
            pos = enter + 1;
            // What the screen shows, and what the keys alone say (keys typed or pasted
            // faster than the echo): a rule matching either applies.
            let screen = tracker.line_now().map(|l| l.line).unwrap_or_default();
            let keyed = tracker.keyed_now();
            let hit = [screen, keyed]
                .into_iter()
                .find_map(|line| commands::first_match(rules, &line).map(|r| (line, r)))
                .map(|(line, rule)| RuleHit {
                    channel,
                    line,
                    rule: rule.clone(),
                    grant: grant.clone(),
                });
            match hit {
                Some(hit) if hit.rule.action == RuleAction::Review => {
                    out.push(Keys::Forward(data.slice(start..enter)));
                    out.push(Keys::Hold {
                        hit,
                        rest: data.slice(pos..),
                    });
                    return out;
                }
                Some(hit) if hit.rule.action != RuleAction::Alert => {
                    tracker.cancel();
                    out.push(Keys::Forward(data.slice(start..enter)));
                    out.push(Keys::Withhold(hit));
                    start = pos;
                }
                hit => {
                    alerts.extend(hit);
                    tracker.enter();
                }
            }
        }
        if start < data.len() {
            out.push(Keys::Forward(data.slice(start..)));
        }
        out
    }

    /// A held line was decided: entered (it runs) or dropped.
    pub fn decided(&self, approved: bool) {
        if let Ok(mut s) = self.state.lock()
            && let Some(t) = &mut s.tracker
        {
            if approved {
                t.enter();
            } else {
                t.cancel();
            }
        }
    }

    /// Feeds the target's output; returns the lines it completes.
    pub fn output(&self, data: &[u8]) -> Vec<CommandLine> {
        let mut lines = Vec::new();
        if self.active.load(Ordering::Acquire)
            && let Ok(mut s) = self.state.lock()
            && let Some(t) = &mut s.tracker
        {
            t.output(data, &mut lines);
        }
        lines
    }

    /// The channel closed: lines still waiting for output.
    pub fn finish(&self) -> Vec<CommandLine> {
        let mut lines = Vec::new();
        if self.active.load(Ordering::Acquire)
            && let Ok(mut s) = self.state.lock()
            && let Some(t) = &mut s.tracker
        {
            t.finish(&mut lines);
        }
        lines
    }
}
