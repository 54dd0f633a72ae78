//! The audit stream archived as chunks of JSON lines (events exactly as stored, chain values
//! included), each ending at an anchor when one is available, and the walk that verifies an
//! appliance's chunks with nothing but its audit public key: contiguous numbers across chunks,
//! every chain link rebuilt, every anchor's signature checked, and the sessions the stream says
//! were archived held against the session objects present.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    audit::{AuditEvent, AuditKind},
    integrity::{self, Hash},
};

/// A chunk's bytes: one event per line.
pub fn encode(events: &[AuditEvent]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    for e in events {
        serde_json::to_writer(&mut out, e)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// A chunk's events, in order.
pub fn decode(bytes: &[u8]) -> Result<Vec<AuditEvent>, String> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_slice(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// What an archive check found wrong. Any finding fails `archive verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum ArchiveFinding {
    /// Audit events `first..=last` are in no chunk.
    AuditGap { first: u64, last: u64 },
    /// Event `seq` does not chain onto the one before it: altered, or reordered.
    AuditAltered { seq: u64 },
    /// An anchor whose signature is not the audit key's.
    ForgedAnchor { at_seq: u64 },
    /// An anchor whose head is not the chain value of the event it attests.
    AnchorMismatch { at_seq: u64 },
    /// A chunk that cannot be read as events, or whose events are not the ones its key names.
    ChunkUnreadable { object: String, error: String },
    /// The stream says session `session` was archived as `object`, and no such object exists.
    SessionMissing { session: u64, object: String },
    /// The session object is not the one that was archived, or does not verify.
    SessionTampered {
        session: u64,
        object: String,
        detail: String,
    },
    /// The stream names session `session` as ended, and it has not been archived (yet).
    SessionNotArchived { session: u64, ended_seq: u64 },
}

impl std::fmt::Display for ArchiveFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveFinding::AuditGap { first, last } if first == last => {
                write!(f, "audit event {first} is in no archived chunk")
            }
            ArchiveFinding::AuditGap { first, last } => {
                write!(f, "audit events {first} to {last} are in no archived chunk")
            }
            ArchiveFinding::AuditAltered { seq } => write!(
                f,
                "audit event {seq} does not chain onto the one before it (altered or reordered)"
            ),
            ArchiveFinding::ForgedAnchor { at_seq } => write!(
                f,
                "anchor for #{at_seq} is not signed by the audit key (forged or altered)"
            ),
            ArchiveFinding::AnchorMismatch { at_seq } => write!(
                f,
                "anchor for #{at_seq} attests another chain head than the archived stream's"
            ),
            ArchiveFinding::ChunkUnreadable { object, error } => {
                write!(f, "{object}: unreadable audit chunk: {error}")
            }
            ArchiveFinding::SessionMissing { session, object } => write!(
                f,
                "session {session}: {object} is missing (the audit stream says it was archived)"
            ),
            ArchiveFinding::SessionTampered {
                session,
                object,
                detail,
            } => write!(f, "session {session}: {object} TAMPERED: {detail}"),
            ArchiveFinding::SessionNotArchived { session, ended_seq } => write!(
                f,
                "session {session} ended (audit #{ended_seq}) and is not archived (yet)"
            ),
        }
    }
}

/// What the stream says was archived for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRecord {
    pub object: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Walks an appliance's archived audit events in order, chunk after chunk.
pub struct AuditWalk<'k> {
    key: &'k ssh_key::PublicKey,
    /// The next sequence number expected, and the chain head before it.
    at: Option<(u64, Option<Hash>)>,
    /// Chain values of recent events, for anchors that follow their event.
    heads: BTreeMap<u64, Hash>,
    pub findings: Vec<ArchiveFinding>,
    pub events: u64,
    pub first: Option<u64>,
    /// The highest sequence number a valid anchor attests.
    pub anchored: Option<u64>,
    /// Sessions the stream says ended (session → the event).
    pub ended: BTreeMap<u64, u64>,
    /// Sessions the stream says were archived.
    pub archived: BTreeMap<u64, ArchivedRecord>,
    /// Sessions the stream says retention deleted (locally).
    pub expired: std::collections::BTreeSet<u64>,
}

impl<'k> AuditWalk<'k> {
    pub fn new(key: &'k ssh_key::PublicKey) -> Self {
        AuditWalk {
            key,
            at: None,
            heads: BTreeMap::new(),
            findings: Vec::new(),
            events: 0,
            first: None,
            anchored: None,
            ended: BTreeMap::new(),
            archived: BTreeMap::new(),
            expired: Default::default(),
        }
    }

    pub fn last(&self) -> Option<u64> {
        self.at.map(|(next, _)| next - 1)
    }

    /// The next event in sequence order (chunks are fed in key order).
    pub fn feed(&mut self, e: &AuditEvent) {
        self.events += 1;
        self.first.get_or_insert(e.seq);
        let kept = e.chain.as_deref().and_then(integrity::parse_hex);
        let prev = match self.at {
            Some((next, _)) if e.seq < next => {
                // Overlap with a chunk already read (a re-upload): already judged.
                return;
            }
            Some((next, head)) => {
                if e.seq > next {
                    self.findings.push(ArchiveFinding::AuditGap {
                        first: next,
                        last: e.seq - 1,
                    });
                    None
                } else {
                    head
                }
            }
            None => None,
        };
        // The first event after a gap (or of the archive) cannot be linked to its predecessor:
        // its kept value is taken as is, and anchors after it bind it.
        if let (Some(prev), Some(kept)) = (prev, kept) {
            match integrity::audit_link(&prev, e) {
                Ok(link) if link == kept => {}
                _ => self
                    .findings
                    .push(ArchiveFinding::AuditAltered { seq: e.seq }),
            }
        }
        self.at = Some((e.seq + 1, kept));
        if let Some(k) = kept {
            self.heads.insert(e.seq, k);
            // Anchors follow their event closely; older heads are not needed.
            while self.heads.len() > 4096 {
                self.heads.pop_first();
            }
        }
        match integrity::anchor_valid(self.key, &e.kind) {
            Some(Ok((at_seq, head))) => match self.heads.get(&at_seq) {
                Some(h) if *h == head => {
                    self.anchored = Some(self.anchored.map_or(at_seq, |a| a.max(at_seq)));
                }
                Some(_) => self
                    .findings
                    .push(ArchiveFinding::AnchorMismatch { at_seq }),
                // Attests an event before the archive begins: nothing here to hold it against.
                None => {}
            },
            Some(Err(at_seq)) => self.findings.push(ArchiveFinding::ForgedAnchor { at_seq }),
            None => {}
        }
        match &e.kind {
            AuditKind::SessionEnded { session, .. } => {
                self.ended.entry(*session).or_insert(e.seq);
            }
            AuditKind::SessionArchived {
                session,
                object,
                bytes,
                sha256,
                ..
            } => {
                self.archived.insert(
                    *session,
                    ArchivedRecord {
                        object: object.clone(),
                        bytes: *bytes,
                        sha256: sha256.clone(),
                    },
                );
            }
            AuditKind::SessionsExpired { sessions, .. } => self.expired.extend(sessions),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Actor;

    fn key(seed: u8) -> ssh_key::PrivateKey {
        ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
    }

    /// A chained stream of `n` events, with an anchor signed by `k` after every 5th.
    fn stream(n: u64, k: &ssh_key::PrivateKey) -> Vec<AuditEvent> {
        let mut head = integrity::audit_genesis();
        let mut out: Vec<AuditEvent> = Vec::new();
        for seq in 1..=n {
            let kind = if seq % 6 == 0 {
                integrity::anchor(k, seq - 1, &head).unwrap()
            } else {
                AuditKind::SessionEnded {
                    session: seq,
                    bytes_in: 0,
                    bytes_out: 0,
                }
            };
            let mut e = AuditEvent {
                seq,
                time_micros: seq,
                actor: Actor::Daemon,
                kind,
                chain: None,
            };
            head = integrity::audit_link(&head, &e).unwrap();
            e.chain = Some(integrity::hex(&head));
            out.push(e);
        }
        out
    }

    #[test]
    fn an_intact_stream_in_chunks_verifies_and_is_anchored() {
        let k = key(1);
        let events = stream(20, &k);
        let bytes = encode(&events).unwrap();
        assert_eq!(decode(&bytes).unwrap(), events);
        let public = k.public_key();
        let mut w = AuditWalk::new(public);
        for chunk in events.chunks(7) {
            chunk.iter().for_each(|e| w.feed(e));
        }
        assert!(w.findings.is_empty(), "{:?}", w.findings);
        assert_eq!(w.anchored, Some(17));
        assert_eq!(w.last(), Some(20));
        assert_eq!(w.ended.len(), 17);
    }

    #[test]
    fn gaps_alterations_and_forged_anchors_are_named() {
        let k = key(1);
        let mut events = stream(20, &k);
        // A chunk deleted (events 8..=10), an event altered (12), an anchor by another key (18).
        events.retain(|e| !(8..=10).contains(&e.seq));
        if let Some(e) = events.iter_mut().find(|e| e.seq == 12) {
            e.time_micros += 1;
        }
        let other = key(2);
        if let Some(e) = events.iter_mut().find(|e| e.seq == 18) {
            e.kind = integrity::anchor(&other, 17, &[0; 32]).unwrap();
        }
        let public = k.public_key();
        let mut w = AuditWalk::new(public);
        events.iter().for_each(|e| w.feed(e));
        assert!(
            w.findings
                .contains(&ArchiveFinding::AuditGap { first: 8, last: 10 })
        );
        assert!(
            w.findings
                .contains(&ArchiveFinding::AuditAltered { seq: 12 })
        );
        assert!(
            w.findings
                .contains(&ArchiveFinding::ForgedAnchor { at_seq: 17 })
        );
    }
}
