//! Policy and audit trees. A policy change and its audit event commit in one sled transaction:
//! there is never a change without its record, nor a record of a change that did not happen.

use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use bastion_core::{
    audit::{Actor, AuditEvent, AuditKind, now_micros},
    integrity::AuditIntegrity,
    policy::{Entity, EntityKind, Policy},
};

use super::{AuditTail, Store, StoreError};

pub(super) const AUDIT_TREE: &str = "audit";

/// The tree each kind of policy object lives in.
pub(super) fn tree_name(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::User => "policy_users",
        EntityKind::Group => "policy_groups",
        EntityKind::Target => "policy_targets",
        EntityKind::Subnet => "policy_subnets",
        EntityKind::Grant => "policy_grants",
        EntityKind::Revocation => "policy_revocations",
        EntityKind::Approvers => "policy_approvers",
    }
}

pub(crate) fn corrupt(tree: &str, e: impl std::fmt::Display) -> sled::Error {
    sled::Error::Unsupported(format!("tree {tree}: undecodable record: {e}"))
}

impl Store {
    /// The whole policy, read from the store.
    pub fn load_policy(&self) -> Result<Policy, StoreError> {
        let mut policy = Policy::default();
        for kind in EntityKind::ALL {
            let name = tree_name(kind);
            for item in self.tree(name)?.iter() {
                let (_, value) = item.map_err(|e| self.io(e))?;
                let entity: Entity =
                    serde_json::from_slice(&value).map_err(|e| self.io(corrupt(name, e)))?;
                policy.insert(entity);
            }
        }
        Ok(policy)
    }

    /// Stores `entity` (already validated) and its audit event, atomically.
    pub fn put_entity(&self, entity: &Entity, actor: Actor) -> Result<AuditEvent, StoreError> {
        let kind = entity.kind();
        let value = serde_json::to_vec(entity).map_err(|e| self.io(corrupt(tree_name(kind), e)))?;
        let event = AuditKind::PolicyAdded {
            kind,
            name: entity.key(),
        };
        self.change(kind, &entity.key(), Some(value), actor, event)
    }

    /// Removes the `kind` entity `key` (already validated) with its audit event, atomically.
    pub fn remove_entity(
        &self,
        kind: EntityKind,
        key: &str,
        actor: Actor,
    ) -> Result<AuditEvent, StoreError> {
        let event = AuditKind::PolicyRemoved {
            kind,
            name: key.to_owned(),
        };
        self.change(kind, key, None, actor, event)
    }

    fn change(
        &self,
        kind: EntityKind,
        key: &str,
        value: Option<Vec<u8>>,
        actor: Actor,
        event: AuditKind,
    ) -> Result<AuditEvent, StoreError> {
        let tree = self.tree(tree_name(kind))?;
        self.write_with_audit(&tree, key.as_bytes(), value, actor, event)
    }

    /// Sets (or, with `None`, removes) `key` in `tree` and appends `event`, in one transaction.
    pub(super) fn write_with_audit(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: Option<Vec<u8>>,
        actor: Actor,
        event: AuditKind,
    ) -> Result<AuditEvent, StoreError> {
        self.write_event(actor, event, |audit, seq, record| {
            (tree, audit)
                .transaction(|(t, a)| {
                    match &value {
                        Some(v) => drop(t.insert(key, v.as_slice())?),
                        None => drop(t.remove(key)?),
                    }
                    a.insert(&seq.to_be_bytes(), record)?;
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Storage(e) => e,
                    TransactionError::Abort(()) => {
                        sled::Error::Unsupported("transaction aborted".into())
                    }
                })
        })
    }

    /// Appends an event that changes nothing else (e.g. daemon start). Events an
    /// unauthenticated source can cause go through [`Store::append_audits`] (the flood budget).
    pub fn append_audit(&self, actor: Actor, kind: AuditKind) -> Result<AuditEvent, StoreError> {
        debug_assert!(
            kind.unauthenticated_source().is_none(),
            "unauthenticated events go through append_audits"
        );
        self.write_event(actor, kind, |audit, seq, record| {
            audit.insert(seq.to_be_bytes(), record).map(drop)
        })
    }

    /// Appends several events that change nothing else, numbered in order, with one flush
    /// (flow events arrive in batches). This is the way in for every event an unauthenticated
    /// source can cause: they are held to the flood budget here.
    pub fn append_audits(&self, actor: Actor, kinds: Vec<AuditKind>) -> Result<(), StoreError> {
        let kinds = self.hold_to_flood_budget(kinds, now_micros() / 1_000_000);
        if kinds.is_empty() {
            return Ok(());
        }
        let audit = self.tree(AUDIT_TREE)?;
        let mut tail = self.audit_tail.lock().unwrap_or_else(|p| p.into_inner());
        // One insert at a time, in order, the tail advancing past each one written: a failed
        // write leaves a contiguous prefix. Not a `Batch`: sled applies batches and
        // transactions under a process-wide write lock that every other read and write then
        // queues behind, and under many sessions' load that lock has hung sled 0.34 (see
        // `sessions.rs`, `commit_blocks`); plain inserts never take it.
        for kind in kinds {
            let mut next = *tail;
            let (event, record) = self.chained(&mut next, actor.clone(), kind)?;
            audit
                .insert(event.seq.to_be_bytes(), record)
                .map_err(|e| self.io(e))?;
            *tail = next;
        }
        self.flush()
    }

    /// Numbers and chains the next event after `tail` (advancing it); the record to store.
    fn chained(
        &self,
        tail: &mut AuditTail,
        actor: Actor,
        kind: AuditKind,
    ) -> Result<(AuditEvent, Vec<u8>), StoreError> {
        let mut event = AuditEvent {
            seq: tail.next,
            time_micros: now_micros(),
            actor,
            kind,
            chain: None,
        };
        let bad = |e| self.io(corrupt(AUDIT_TREE, e));
        let head = bastion_core::integrity::audit_link(&tail.head, &event).map_err(bad)?;
        event.chain = Some(bastion_core::integrity::hex(&head));
        let record = serde_json::to_vec(&event).map_err(bad)?;
        *tail = AuditTail {
            next: tail.next + 1,
            head,
        };
        Ok((event, record))
    }

    /// Where the stored stream ends: the next sequence number and the chain head to continue.
    pub(super) fn load_audit_tail(&self) -> Result<AuditTail, StoreError> {
        let last = self.tree(AUDIT_TREE)?.last().map_err(|e| self.io(e))?;
        let Some((k, v)) = last else {
            return Ok(match self.audit_base()? {
                Some(base) => AuditTail {
                    next: base.next,
                    head: bastion_core::integrity::parse_hex(&base.head)
                        .unwrap_or_else(bastion_core::integrity::audit_genesis),
                },
                None => AuditTail {
                    next: 1,
                    head: bastion_core::integrity::audit_genesis(),
                },
            });
        };
        let seq = <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes);
        let event: AuditEvent =
            serde_json::from_slice(&v).map_err(|e| self.io(corrupt(AUDIT_TREE, e)))?;
        Ok(AuditTail {
            next: seq + 1,
            // A stream from before integrity starts its chain with the next event.
            head: event
                .chain
                .as_deref()
                .and_then(bastion_core::integrity::parse_hex)
                .unwrap_or_else(bastion_core::integrity::audit_genesis),
        })
    }

    /// Walks the whole audit stream: contiguous numbers, and the chain rebuilt from each event.
    pub fn verify_audit(&self) -> Result<AuditIntegrity, StoreError> {
        self.verify_audit_with(|_| {})
    }

    /// [`verify_audit`](Self::verify_audit), showing `visit` every event it reads (up to the
    /// first break), for checks that need the stream's content too.
    pub fn verify_audit_with(
        &self,
        mut visit: impl FnMut(&AuditEvent),
    ) -> Result<AuditIntegrity, StoreError> {
        let since = self.integrity_since()?;
        let mut report = AuditIntegrity::default();
        let mut head = bastion_core::integrity::audit_genesis();
        let mut expected = None;
        // Retention deleted the beginning: the rest continues from the head kept for it.
        if let Some(base) = self.audit_base()? {
            // A base without a chain head: the events it cut were unchained (legacy).
            if let Some(h) = bastion_core::integrity::parse_hex(&base.head) {
                head = h;
            }
            expected = Some(base.next);
        }
        for item in self.tree(AUDIT_TREE)?.iter() {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let seq = <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes);
            report.events += 1;
            if let Some(want) = expected
                && seq != want
            {
                report.broken = Some((want, "missing (the sequence skips it)".into()));
                return Ok(report);
            }
            expected = Some(seq + 1);
            let event: AuditEvent = match serde_json::from_slice(&v) {
                Ok(e) => e,
                Err(e) => {
                    report.broken = Some((seq, format!("unreadable: {e}")));
                    return Ok(report);
                }
            };
            let Some(kept) = event
                .chain
                .as_deref()
                .and_then(bastion_core::integrity::parse_hex)
            else {
                if report.chained > 0 {
                    report.broken = Some((seq, "unchained after the chain began".into()));
                    return Ok(report);
                }
                if !since.event_may_be_legacy(seq) {
                    report.broken = Some((
                        seq,
                        format!(
                            "chain stripped: unchained, but the store chains every event from #{}",
                            since.audit_seq
                        ),
                    ));
                    return Ok(report);
                }
                visit(&event);
                report.legacy += 1;
                continue;
            };
            let link = bastion_core::integrity::audit_link(&head, &event)
                .map_err(|e| self.io(corrupt(AUDIT_TREE, e)))?;
            if event.seq != seq || link != kept {
                report.broken = Some((seq, "altered, or out of order".into()));
                return Ok(report);
            }
            head = link;
            report.chained += 1;
            visit(&event);
        }
        Ok(report)
    }

    /// Appends an anchor for the stream as it stands: `make(seq, head)` is given the last
    /// event's number and chain value and returns the anchor event (`None`: nothing to anchor,
    /// e.g. the last event is the previous anchor). The sequence lock is held from reading the
    /// head to writing the anchor, so the anchor directly follows the event it attests.
    pub fn append_anchor(
        &self,
        make: impl FnOnce(u64, &[u8; 32]) -> Option<AuditKind>,
    ) -> Result<Option<AuditEvent>, StoreError> {
        let audit = self.tree(AUDIT_TREE)?;
        let mut tail = self.audit_tail.lock().unwrap_or_else(|p| p.into_inner());
        let last = tail.next.saturating_sub(1);
        if last == 0 {
            return Ok(None);
        }
        let Some(kind) = make(last, &tail.head) else {
            return Ok(None);
        };
        let mut next = *tail;
        let (event, record) = self.chained(&mut next, Actor::Daemon, kind)?;
        audit
            .insert(event.seq.to_be_bytes(), record)
            .map_err(|e| self.io(e))?;
        self.flush()?;
        *tail = next;
        Ok(Some(event))
    }

    /// Numbers and writes one event with `write(audit_tree, seq, record)`, then flushes. The
    /// sequence lock is held throughout, so a failed write leaves no gap.
    fn write_event(
        &self,
        actor: Actor,
        kind: AuditKind,
        write: impl FnOnce(&sled::Tree, u64, &[u8]) -> Result<(), sled::Error>,
    ) -> Result<AuditEvent, StoreError> {
        let audit = self.tree(AUDIT_TREE)?;
        let mut tail = self.audit_tail.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = *tail;
        let (event, record) = self.chained(&mut next, actor, kind)?;
        write(&audit, event.seq, &record).map_err(|e| self.io(e))?;
        self.flush()?;
        *tail = next;
        Ok(event)
    }

    /// The newest `limit` events (looking at no more than `scan` of the newest) that `keep`
    /// selects, oldest first.
    pub fn audit_find(
        &self,
        limit: usize,
        scan: usize,
        keep: impl Fn(&AuditEvent) -> bool,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut found = Vec::new();
        for item in self.tree(AUDIT_TREE)?.iter().rev().take(scan) {
            if found.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(|e| self.io(e))?;
            let event: AuditEvent =
                serde_json::from_slice(&v).map_err(|e| self.io(corrupt(AUDIT_TREE, e)))?;
            if keep(&event) {
                found.push(event);
            }
        }
        found.reverse();
        Ok(found)
    }

    /// How many audit events are stored.
    pub fn audit_count(&self) -> Result<u64, StoreError> {
        Ok(self.tree(AUDIT_TREE)?.len() as u64)
    }

    /// Up to `limit` events after sequence number `after`, oldest first.
    pub fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.tree(AUDIT_TREE)?
            .range((after.saturating_add(1)).to_be_bytes()..)
            .take(limit)
            .map(|item| {
                let (_, v) = item.map_err(|e| self.io(e))?;
                serde_json::from_slice(&v).map_err(|e| self.io(corrupt(AUDIT_TREE, e)))
            })
            .collect()
    }

    /// The newest `limit` audit events, oldest first.
    pub fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut events = self
            .tree(AUDIT_TREE)?
            .iter()
            .rev()
            .take(limit)
            .map(|item| {
                let (_, v) = item.map_err(|e| self.io(e))?;
                serde_json::from_slice(&v).map_err(|e| self.io(corrupt(AUDIT_TREE, e)))
            })
            .collect::<Result<Vec<AuditEvent>, StoreError>>()?;
        events.reverse();
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_core::policy::{Group, User};

    #[test]
    fn audit_stream_is_chained_across_reopen_and_edits_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            for pid in 0..3 {
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
        }
        let store = Store::open(&path).unwrap();
        store
            .append_audits(
                Actor::Daemon,
                vec![AuditKind::SessionsInterrupted { sessions: vec![1] }; 2],
            )
            .unwrap();
        let ok = store.verify_audit().unwrap();
        assert_eq!((ok.events, ok.chained, ok.broken), (5, 5, None));

        let audit = store.tree(AUDIT_TREE).unwrap();
        let key = 3u64.to_be_bytes();
        let original = audit.get(key).unwrap().unwrap();
        let edited = String::from_utf8(original.to_vec())
            .unwrap()
            .replace("\"pid\":2", "\"pid\":9");
        audit.insert(key, edited.as_bytes()).unwrap();
        assert_eq!(store.verify_audit().unwrap().broken.unwrap().0, 3);
        audit.insert(key, original).unwrap();
        audit.remove(4u64.to_be_bytes()).unwrap();
        let gap = store.verify_audit().unwrap().broken.unwrap();
        assert_eq!(gap.0, 4, "{gap:?}");
    }

    #[test]
    fn changes_persist_with_their_audit_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let admin = Actor::Admin {
            uid: 0,
            pid: Some(1),
        };
        {
            let s = Store::open(&path).unwrap();
            s.put_entity(
                &Entity::User(User {
                    name: "alice".into(),
                    keys: vec!["ssh-ed25519 AAAA".into()],
                    trusted_cas: vec![],
                }),
                admin.clone(),
            )
            .unwrap();
            s.put_entity(
                &Entity::Group(Group {
                    name: "ops".into(),
                    members: vec!["alice".into()],
                }),
                admin.clone(),
            )
            .unwrap();
            s.remove_entity(
                EntityKind::Group,
                "ops",
                Actor::Admin {
                    uid: 1000,
                    pid: None,
                },
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let p = s.load_policy().unwrap();
        assert_eq!(p.users.keys().collect::<Vec<_>>(), ["alice"]);
        assert!(p.groups.is_empty());
        let events = s.audit_events(10).unwrap();
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.kind.clone(), e.actor.clone()))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    AuditKind::PolicyAdded {
                        kind: EntityKind::User,
                        name: "alice".into()
                    },
                    admin.clone()
                ),
                (
                    AuditKind::PolicyAdded {
                        kind: EntityKind::Group,
                        name: "ops".into()
                    },
                    admin
                ),
                (
                    AuditKind::PolicyRemoved {
                        kind: EntityKind::Group,
                        name: "ops".into()
                    },
                    Actor::Admin {
                        uid: 1000,
                        pid: None
                    }
                ),
            ]
        );
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(s.audit_events(1).unwrap().len(), 1);
        // After a reopen, numbering continues without a gap.
        let e = s
            .append_audit(
                Actor::Daemon,
                AuditKind::DaemonStarted {
                    version: "x".into(),
                    pid: 1,
                },
            )
            .unwrap();
        assert_eq!(e.seq, 4);
    }
}
