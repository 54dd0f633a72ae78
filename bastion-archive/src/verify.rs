//! `archive verify`: one appliance's archive judged with its audit public key alone.
//!
//! Every session object in range is read whole (streamed, one block in memory) and must judge
//! SEALED, INCOMPLETE or UNSEALED exactly as the store did, with the size and SHA-256 the
//! audit stream recorded when it was archived; the audit chunks are walked from the first to
//! the last, their numbers contiguous, their chain links rebuilt, their anchors checked; and the
//! sessions the stream says were archived, or ended, must have their objects.

use std::collections::BTreeMap;

use bastion_core::{
    archive::{
        ArchivedKey,
        chunks::{self, ArchiveFinding, AuditWalk},
        object,
    },
    integrity::Status,
};
use serde::Serialize;

use crate::remote::{Remote, RemoteError, StreamReader};

/// Which sessions to check, by start time (µs since the epoch); the audit stream is always
/// walked whole, since a gap anywhere breaks what follows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    pub since_micros: Option<u64>,
    pub until_micros: Option<u64>,
}

impl Range {
    fn holds(&self, micros: u64) -> bool {
        self.since_micros.is_none_or(|s| micros >= s)
            && self.until_micros.is_none_or(|u| micros < u)
    }

    /// Could a session started on `day` (`YYYY-MM-DD`) be in range?
    fn may_hold_day(&self, day: &str) -> bool {
        let of = |micros: u64| {
            let (y, m, d, ..) = bastion_core::clock::civil(micros / 1_000_000);
            format!("{y:04}-{m:02}-{d:02}")
        };
        self.since_micros.is_none_or(|s| day >= of(s).as_str())
            && self.until_micros.is_none_or(|u| day <= of(u).as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionVerdict {
    pub session: u64,
    pub object: String,
    pub status: Status,
    pub detail: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub appliance: String,
    pub sessions: Vec<SessionVerdict>,
    pub audit_chunks: usize,
    pub audit_events: u64,
    pub audit_first: Option<u64>,
    pub audit_last: Option<u64>,
    /// The highest event a valid anchor attests.
    pub anchored_through: Option<u64>,
    pub findings: Vec<ArchiveFinding>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

pub async fn verify(
    remote: &Remote,
    appliance: &str,
    key: &ssh_key::PublicKey,
    range: Range,
) -> Result<Report, RemoteError> {
    let listed = remote.list(&remote.location.appliance(appliance)).await?;
    let mut sessions = BTreeMap::new();
    let mut audit = Vec::new();
    for l in &listed {
        match remote.location.parse_key(&l.key) {
            Some((_, ArchivedKey::Session { day, id })) => {
                sessions.insert(id, (l.key.clone(), day));
            }
            Some((_, ArchivedKey::Audit { first, last })) => {
                audit.push((first, last, l.key.clone()))
            }
            None => {}
        }
    }
    audit.sort();
    let mut walk = AuditWalk::new(key);
    let mut findings = Vec::new();
    for (first, last, k) in &audit {
        let bytes = remote.get(k).await?;
        match chunks::decode(&bytes) {
            Ok(events)
                if events.first().map(|e| e.seq) == Some(*first)
                    && events.last().map(|e| e.seq) == Some(*last) =>
            {
                events.iter().for_each(|e| walk.feed(e));
            }
            Ok(_) => findings.push(ArchiveFinding::ChunkUnreadable {
                object: k.clone(),
                error: format!("its events are not #{first} to #{last}"),
            }),
            Err(error) => findings.push(ArchiveFinding::ChunkUnreadable {
                object: k.clone(),
                error,
            }),
        }
    }
    let mut verdicts = Vec::new();
    for (id, (k, day)) in &sessions {
        if !range.may_hold_day(day) {
            continue;
        }
        let stream = remote.open(k).await?;
        let handle = tokio::runtime::Handle::current();
        let public = key.clone();
        let checked = tokio::task::spawn_blocking(move || {
            object::check(StreamReader::new(handle, stream), &public)
        })
        .await
        .map_err(|e| RemoteError::Url(format!("verifier task: {e}")))?;
        let (status, detail, bytes) = match checked {
            Ok(c) if c.session.id != *id => (
                Status::Tampered,
                format!("the object holds session {}, not {id}", c.session.id),
                c.bytes,
            ),
            Ok(c) if !range.holds(c.session.started_micros) => continue,
            Ok(c) => match walk.archived.get(id) {
                Some(a) if a.sha256 != c.sha256 || a.bytes != c.bytes => (
                    Status::Tampered,
                    format!(
                        "{} bytes with SHA-256 {}, but {} bytes with SHA-256 {} were archived",
                        c.bytes, c.sha256, a.bytes, a.sha256
                    ),
                    c.bytes,
                ),
                _ => (c.integrity.status, c.integrity.detail, c.bytes),
            },
            Err(e) => (Status::Tampered, e.to_string(), 0),
        };
        if status == Status::Tampered {
            findings.push(ArchiveFinding::SessionTampered {
                session: *id,
                object: k.clone(),
                detail: detail.clone(),
            });
        }
        verdicts.push(SessionVerdict {
            session: *id,
            object: k.clone(),
            status,
            detail,
            bytes,
        });
    }
    for (id, a) in &walk.archived {
        let in_range = remote.location.parse_key(&a.object).is_some_and(
            |(_, k)| matches!(k, ArchivedKey::Session { day, .. } if range.may_hold_day(&day)),
        );
        if !sessions.contains_key(id) && in_range {
            findings.push(ArchiveFinding::SessionMissing {
                session: *id,
                object: a.object.clone(),
            });
        }
    }
    for (id, seq) in &walk.ended {
        // Deleted by retention before archiving was on: gone on purpose, and audited so.
        if !sessions.contains_key(id)
            && !walk.archived.contains_key(id)
            && !walk.expired.contains(id)
            && range == Range::default()
        {
            findings.push(ArchiveFinding::SessionNotArchived {
                session: *id,
                ended_seq: *seq,
            });
        }
    }
    findings.extend(walk.findings.iter().cloned());
    Ok(Report {
        appliance: appliance.into(),
        sessions: verdicts,
        audit_chunks: audit.len(),
        audit_events: walk.events,
        audit_first: walk.first,
        audit_last: walk.last(),
        anchored_through: walk.anchored,
        findings,
    })
}
