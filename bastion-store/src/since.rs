//! Where integrity began in this store ([`IntegritySince`]), kept in the `meta` tree. Schema
//! step 7 records it from what the store holds then: integrity came before that schema, so
//! the records without a chain at that moment are the only ones that may be legacy. Later, a
//! record without a chain had it stripped, and `verify` says TAMPERED instead of LEGACY.

use bastion_core::{audit::AuditEvent, integrity::IntegritySince, session::SessionMeta};

use super::{
    META_TREE, Store, StoreError,
    policy::AUDIT_TREE,
    sessions::{CHAIN_TREE, LEGACY_BLOCKS_TREE, REFS_TREE, SESSIONS_TREE},
};

const SINCE_KEY: &[u8] = b"integrity_since";

/// Schema step 7: records where integrity began. Events before the first chained one (or, in a
/// stream with none, all there are) and sessions up to the newest one with blocks but no chain
/// value, metadata chain or seal may stay unchained; nothing after them.
pub(super) fn record(db: &sled::Db) -> Result<(), sled::Error> {
    let meta = db.open_tree(META_TREE)?;
    if meta.get(SINCE_KEY)?.is_some() {
        return Ok(());
    }
    let audit = db.open_tree(AUDIT_TREE)?;
    let mut audit_seq = 1;
    for item in audit.iter() {
        let (k, v) = item?;
        let seq = <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes);
        let chained = serde_json::from_slice::<AuditEvent>(&v).is_ok_and(|e| e.chain.is_some());
        if chained {
            audit_seq = seq;
            break;
        }
        audit_seq = seq + 1;
    }
    let (refs, legacy_blocks, chains) = (
        db.open_tree(REFS_TREE)?,
        db.open_tree(LEGACY_BLOCKS_TREE)?,
        db.open_tree(CHAIN_TREE)?,
    );
    let mut session_id = 0;
    for item in db.open_tree(SESSIONS_TREE)?.iter().values() {
        let Ok(s) = serde_json::from_slice::<SessionMeta>(&item?) else {
            continue;
        };
        let id = s.id.to_be_bytes();
        let has_blocks =
            refs.scan_prefix(id).next().is_some() || legacy_blocks.scan_prefix(id).next().is_some();
        let unchained =
            s.chain.is_none() && s.seal.is_none() && chains.scan_prefix(id).next().is_none();
        if has_blocks && unchained {
            session_id = session_id.max(s.id + 1);
        }
    }
    let since = IntegritySince {
        audit_seq,
        session_id,
    };
    let bytes = serde_json::to_vec(&since).map_err(|e| sled::Error::Unsupported(e.to_string()))?;
    meta.insert(SINCE_KEY, bytes)?;
    Ok(())
}

impl Store {
    /// Where integrity began; a store without the record (it was deleted: step 7 writes it)
    /// is held to the strictest reading, nothing legacy.
    pub fn integrity_since(&self) -> Result<IntegritySince, StoreError> {
        let raw = self
            .tree(META_TREE)?
            .get(SINCE_KEY)
            .map_err(|e| self.io(e))?;
        Ok(raw
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_core::audit::{Actor, AuditKind};

    fn event(seq: u64, chain: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&AuditEvent {
            seq,
            time_micros: seq,
            actor: Actor::Daemon,
            kind: AuditKind::DaemonStarted {
                version: "0".into(),
                pid: 1,
            },
            chain: chain.map(str::to_owned),
        })
        .unwrap()
    }

    fn session(id: u64, chain: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&SessionMeta {
            chain: chain.map(str::to_owned),
            ..SessionMeta::starting(id, "203.0.113.10:22".parse().unwrap())
        })
        .unwrap()
    }

    #[test]
    fn a_store_from_before_integrity_keeps_its_legacy_records_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            // A schema 6 store: two unchained events, then chained ones; session 3 recorded
            // before integrity, session 5 after (and session 9 without blocks).
            let db = sled::open(&path).unwrap();
            db.open_tree(META_TREE)
                .unwrap()
                .insert(super::super::SCHEMA_KEY, &6u32.to_be_bytes())
                .unwrap();
            let audit = db.open_tree(AUDIT_TREE).unwrap();
            audit.insert(1u64.to_be_bytes(), event(1, None)).unwrap();
            audit.insert(2u64.to_be_bytes(), event(2, None)).unwrap();
            audit
                .insert(3u64.to_be_bytes(), event(3, Some("ab")))
                .unwrap();
            let sessions = db.open_tree(SESSIONS_TREE).unwrap();
            let refs = db.open_tree(REFS_TREE).unwrap();
            for (id, chain) in [(3u64, None), (5, Some("cd")), (9, None)] {
                sessions
                    .insert(id.to_be_bytes(), session(id, chain))
                    .unwrap();
            }
            for id in [3u64, 5] {
                let mut k = id.to_be_bytes().to_vec();
                k.extend_from_slice(&0u32.to_be_bytes());
                refs.insert(k, b"ref".to_vec()).unwrap();
            }
            db.flush().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let since = store.integrity_since().unwrap();
        assert_eq!(
            since,
            IntegritySince {
                audit_seq: 3,
                session_id: 4
            }
        );
        assert!(since.event_may_be_legacy(2) && !since.event_may_be_legacy(3));
        assert!(since.session_may_be_legacy(3) && !since.session_may_be_legacy(5));
    }

    #[test]
    fn a_new_store_has_nothing_legacy_and_the_record_stays_put() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.integrity_since().unwrap(),
            IntegritySince {
                audit_seq: 1,
                session_id: 0
            }
        );
        store
            .append_audit(
                Actor::Daemon,
                AuditKind::DaemonStarted {
                    version: "0".into(),
                    pid: 1,
                },
            )
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.integrity_since().unwrap().audit_seq, 1);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use bastion_core::{
        audit::{Actor, AuditKind},
        integrity,
    };

    fn started() -> AuditKind {
        AuditKind::DaemonStarted {
            version: "0".into(),
            pid: 1,
        }
    }

    #[test]
    fn a_stream_stripped_of_every_chain_is_tampered_not_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            for _ in 0..3 {
                store.append_audit(Actor::Daemon, started()).unwrap();
            }
            assert_eq!(store.verify_audit().unwrap().chained, 3);
            let audit = store.tree(AUDIT_TREE).unwrap();
            for seq in 1..=3u64 {
                let raw = audit.get(seq.to_be_bytes()).unwrap().unwrap();
                let mut e: AuditEvent = serde_json::from_slice(&raw).unwrap();
                e.chain = None;
                audit
                    .insert(seq.to_be_bytes(), serde_json::to_vec(&e).unwrap())
                    .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        let (seq, why) = store.verify_audit().unwrap().broken.unwrap();
        assert_eq!(seq, 1);
        assert!(why.contains("chain stripped"), "{why}");
    }

    #[test]
    fn an_anchor_attests_the_head_it_follows_and_is_skipped_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        assert!(
            store
                .append_anchor(|_, _| unreachable!())
                .unwrap()
                .is_none()
        );
        let first = store.append_audit(Actor::Daemon, started()).unwrap();
        // Signing is integrity's (tested there); here, what the store hands the signer.
        let anchor = store
            .append_anchor(|at_seq, head| {
                Some(AuditKind::Anchor {
                    at_seq,
                    head: integrity::hex(head),
                    signature: String::new(),
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!(anchor.seq, 2);
        assert!(matches!(
            &anchor.kind,
            AuditKind::Anchor { at_seq: 1, head, .. } if Some(head) == first.chain.as_ref()
        ));
        assert!(store.append_anchor(|_, _| None).unwrap().is_none());
        assert_eq!(store.verify_audit().unwrap().chained, 2);
    }
}
