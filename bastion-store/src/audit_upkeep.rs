//! What keeps the audit stream bounded: the flood budget for events unauthenticated sources
//! cause (`bastion_core::audit_flood`, applied where events are appended) and audit retention
//! (`store.audit_retention_days`), which deletes the oldest events and keeps, in `meta`, the
//! base the remaining chain continues from.

use bastion_core::{
    audit::{Actor, AuditEvent, AuditKind},
    audit_flood::{FloodGate, FloodLimits},
};
use serde::{Deserialize, Serialize};

use super::{META_TREE, Store, StoreError, policy::AUDIT_TREE};

/// Key in `meta` of the [`AuditBase`].
const AUDIT_BASE_KEY: &[u8] = b"audit_base";

/// Where the stored audit stream starts once retention has deleted its beginning: the first
/// sequence number kept and the chain head just before it (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AuditBase {
    pub next: u64,
    pub head: String,
}

/// Until the daemon sets them from its config (`StoreConfig`'s defaults).
pub const DEFAULT_FLOOD_LIMITS: FloodLimits = FloodLimits {
    per_source_per_minute: 60,
    bytes_per_hour: 64 << 20,
};

/// A stored event's size for the budget: its JSON, the chain and the key around it.
fn approx_bytes(kind: &AuditKind) -> u64 {
    serde_json::to_vec(kind).map_or(512, |v| v.len() as u64) + 160
}

impl Store {
    pub fn set_flood_limits(&self, limits: FloodLimits) {
        *self.flood.lock().unwrap_or_else(|p| p.into_inner()) = FloodGate::new(limits);
    }

    /// Holds `kinds` to the flood budget at `now_secs`: what an unauthenticated source may no
    /// longer add this minute is counted instead, and the summary of a minute that closed
    /// comes first.
    pub(crate) fn hold_to_flood_budget(
        &self,
        kinds: Vec<AuditKind>,
        now_secs: u64,
    ) -> Vec<AuditKind> {
        let mut gate = self.flood.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(kinds.len() + 1);
        out.extend(gate.close_minute(now_secs));
        for kind in kinds {
            match kind.unauthenticated_source() {
                Some(source) if !gate.admit(source, approx_bytes(&kind), now_secs) => {}
                _ => out.push(kind),
            }
        }
        out
    }

    /// Stores the summary of the minute that closed, if anything was suppressed in it (called
    /// periodically, so a flood that stops is still summed up within a minute).
    pub fn close_flood_minute(&self) -> Result<(), StoreError> {
        self.append_audits(Actor::Daemon, Vec::new())
    }

    /// The base the stored stream continues from, if retention has cut its beginning.
    pub(crate) fn audit_base(&self) -> Result<Option<AuditBase>, StoreError> {
        let raw = self
            .tree(META_TREE)?
            .get(AUDIT_BASE_KEY)
            .map_err(|e| self.io(e))?;
        raw.map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| self.io(sled::Error::Unsupported(format!("audit base: {e}"))))
        })
        .transpose()
    }

    /// Deletes the audit events older than `cutoff` (µs since the epoch) and, when archiving,
    /// already archived, always keeping the newest one; returns (the last deleted sequence number, how many). The chain head after
    /// the last deleted event becomes the stream's base in the same transaction, so `verify`
    /// walks what remains from there.
    pub fn expire_audit(&self, cutoff: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let audit = self.tree(AUDIT_TREE)?;
        let meta = self.tree(META_TREE)?;
        let newest = audit.last().map_err(|e| self.io(e))?.map(|(k, _)| k);
        // Archiving: what the archive does not have yet stays.
        let archived_through = if self.archiving() {
            self.audit_archived()?.through_seq
        } else {
            u64::MAX
        };
        let mut gone = Vec::new();
        let mut base = None;
        for item in audit.iter() {
            let (k, v) = item.map_err(|e| self.io(e))?;
            if Some(&k) == newest.as_ref() {
                break;
            }
            let event: AuditEvent = serde_json::from_slice(&v)
                .map_err(|e| self.io(sled::Error::Unsupported(format!("audit: {e}"))))?;
            if event.time_micros >= cutoff || event.seq > archived_through {
                break;
            }
            base = Some(AuditBase {
                next: event.seq + 1,
                head: event.chain.clone().unwrap_or_default(),
            });
            gone.push(k);
        }
        let Some(base) = base else { return Ok(None) };
        let value = serde_json::to_vec(&base)
            .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
        use sled::Transactional;
        (&audit, &meta)
            .transaction(|(a, m)| {
                for k in &gone {
                    a.remove(k)?;
                }
                m.insert(AUDIT_BASE_KEY, value.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => self.io(e),
                sled::transaction::TransactionError::Abort(()) => {
                    self.io(sled::Error::Unsupported("aborted".into()))
                }
            })?;
        self.flush()?;
        Ok(Some((base.next - 1, gone.len() as u64)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refused_login(last: u8) -> AuditKind {
        AuditKind::Login {
            client: format!("198.51.100.{last}:40000"),
            username: "root@web1".into(),
            fingerprint: "SHA256:x".into(),
            user: None,
            accepted: false,
            reason: None,
        }
    }

    #[test]
    fn a_flooding_source_is_held_to_its_cap_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        store.set_flood_limits(FloodLimits {
            per_source_per_minute: 5,
            bytes_per_hour: u64::MAX,
        });
        store
            .append_audits(Actor::Daemon, (0..100).map(|_| refused_login(7)).collect())
            .unwrap();
        // Another source and an authenticated event are not held back.
        store
            .append_audits(Actor::Daemon, vec![refused_login(8)])
            .unwrap();
        let stored = store.audit_events(1000).unwrap();
        let from = |ip: &str| {
            stored
                .iter()
                .filter(|e| matches!(&e.kind, AuditKind::Login { client, .. } if client.starts_with(ip)))
                .count()
        };
        assert!(from("198.51.100.7:") <= 10, "{}", from("198.51.100.7:"));
        assert_eq!(from("198.51.100.8:"), 1);
        // The minute's summary comes with the first event after it (time passed explicitly).
        let later = bastion_core::audit::now_micros() / 1_000_000 + 120;
        let out = store.hold_to_flood_budget(vec![refused_login(9)], later);
        match &out[0] {
            AuditKind::AuditSuppressed { total, sources, .. } => {
                assert!(*total >= 90, "{total}");
                assert_eq!(sources[0].source, "198.51.100.7");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out.len(), 2);
        assert!(store.verify_audit().unwrap().broken.is_none());
    }

    #[test]
    fn audit_retention_keeps_the_chain_verifiable_from_its_new_base() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            for pid in 0..5 {
                store
                    .append_audit(
                        Actor::Daemon,
                        AuditKind::DaemonStarted {
                            version: "t".into(),
                            pid,
                        },
                    )
                    .unwrap();
            }
            let cutoff = bastion_core::audit::now_micros() + 1;
            // Everything is older than the cutoff; the newest event stays.
            assert_eq!(store.expire_audit(cutoff).unwrap(), Some((4, 4)));
            assert_eq!(store.audit_count().unwrap(), 1);
            let report = store.verify_audit().unwrap();
            assert!(report.broken.is_none(), "{report:?}");
        }
        // After a restart the stream continues, and still verifies.
        let store = Store::open(&path).unwrap();
        let e = store
            .append_audit(
                Actor::Daemon,
                AuditKind::DaemonStarted {
                    version: "t".into(),
                    pid: 9,
                },
            )
            .unwrap();
        assert_eq!(e.seq, 6);
        let report = store.verify_audit().unwrap();
        assert!(report.broken.is_none(), "{report:?}");
        assert_eq!(report.chained, 2);
        // Deleting a kept event is still found.
        store
            .tree(AUDIT_TREE)
            .unwrap()
            .remove(5u64.to_be_bytes())
            .unwrap();
        assert!(store.verify_audit().unwrap().broken.is_some());
    }
}
