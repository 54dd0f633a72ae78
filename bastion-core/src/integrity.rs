//! Tamper evidence (pure), in one place: every hash chain, every seal and the exact bytes each
//! covers.
//!
//! - Recordings: each session's stored blocks form a hash chain,
//!   `c₀ = H("bastion-session-v1" ‖ id)`, `cₙ₊₁ = H(cₙ ‖ n ‖ block n as stored)`. The chain value
//!   after every block is kept beside the block and the session's metadata carries the head; at
//!   close the session is sealed (SshSig, namespace [`SEAL_NAMESPACE`]) over [`seal_message`],
//!   its metadata and chain head as fixed text. A changed, removed, added or reordered block
//!   breaks the chain at that block; a consistent rewrite of blocks and chain no longer matches
//!   the seal.
//! - The audit stream: `a₀ = H("bastion-audit-v1")`, `aₛ = H(aₛ₋₁ ‖ s ‖ canonical JSON of event
//!   s without its chain)`, canonical meaning compact with keys in byte order ([`audit_link`]).
//! - Anchors: the audit key's SshSig (namespace [`ANCHOR_NAMESPACE`]) over the chain head at an
//!   event ([`anchor_message`]), written into the stream itself so that every export carries it
//!   off the appliance. A store can rewrite itself consistently; it cannot make an anchor that
//!   was exported before agree with a cut, rolled-back or rewritten stream ([`ExportCheck`]).
//! - Legacy: records from before integrity carry no chain. Which ones may is recorded once, when
//!   the store learns it ([`IntegritySince`]); a chain missing after that was stripped.
//!
//! The golden vectors at the end of this file pin all of it: a serialiser or hash that changes
//! what is covered fails them before it can make stored records unverifiable.

use ring::digest::{Context, SHA256};

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    audit::{AuditEvent, AuditKind},
    session::{SessionMeta, SessionState},
};

/// The SshSig namespace of session seals (`ssh-keygen -Y verify -n bastion-session`).
pub const SEAL_NAMESPACE: &str = "bastion-session";
/// The SshSig namespace of audit anchors (`ssh-keygen -Y verify -n bastion-anchor`): a seal
/// can never be passed off as an anchor, or the reverse.
pub const ANCHOR_NAMESPACE: &str = "bastion-anchor";

pub type Hash = [u8; 32];

/// One block as the store holds it, with the chain value kept after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    pub n: u32,
    pub bytes: Vec<u8>,
    pub chain: Option<Hash>,
}

pub fn genesis(id: u64) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(b"bastion-session-v1");
    c.update(&id.to_be_bytes());
    to_hash(c)
}

pub fn next(prev: &Hash, n: u32, stored: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(prev);
    c.update(&n.to_be_bytes());
    c.update(stored);
    to_hash(c)
}

fn to_hash(c: Context) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(c.finish().as_ref());
    h
}

/// Lower-case hex, as chain values are stored and shown.
pub fn hex(h: &Hash) -> String {
    base16ct::lower::encode_string(h)
}

/// What a seal signs: every field of the closed session that an auditor relies on.
pub fn seal_message(m: &SessionMeta) -> Vec<u8> {
    format!(
        "bastion-seal-v1\nid {}\nuser {}\nlogin {}\ntarget {}\ntarget_addr {}\nclient {}\ngrant {}\n\
         started {}\nended {}\nblocks {}\nbytes_in {}\nbytes_out {}\nchain {}\n",
        m.id,
        m.user,
        m.login,
        m.target,
        m.target_addr,
        m.client_addr.map(|a| a.to_string()).unwrap_or_default(),
        m.grant,
        m.started_micros,
        m.ended_micros.unwrap_or(0),
        m.blocks,
        m.bytes_in,
        m.bytes_out,
        m.chain.as_deref().unwrap_or(""),
    )
    .into_bytes()
}

/// Where a recording stops being trustworthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// Block `n`'s bytes do not produce the chain value stored after it: changed, or a frame in
    /// it was removed, added or moved.
    Block { n: u32 },
    /// Block `n` is missing (later blocks exist, or the metadata counts it).
    Missing { n: u32 },
    /// A block the metadata does not count.
    Extra { n: u32 },
    /// The chain rebuilt from the blocks does not end where the metadata says.
    Head,
}

/// Walks the stored blocks (number, bytes, chain value stored after it) of session `id`, which
/// the metadata says has `blocks` blocks ending at `head`.
pub fn check(id: u64, stored: &[StoredBlock], blocks: u32, head: &Hash) -> Result<(), Break> {
    let mut walk = Walk::new(id, blocks);
    stored.iter().for_each(|b| walk.feed(b));
    walk.result(head)
}

/// A session's stored blocks walked one at a time, in order: the chain check and what `judge`
/// needs to know of them, holding no block (a recording of any size verifies in bounded
/// memory).
#[derive(Debug, Clone)]
pub struct Walk {
    /// Blocks the metadata counts.
    blocks: u32,
    chain: Hash,
    seen: u32,
    /// No block seen so far has a chain value (a legacy record, or a stripped one).
    unchained: bool,
    broken: Option<Break>,
}

impl Walk {
    pub fn new(id: u64, blocks: u32) -> Walk {
        Walk {
            blocks,
            chain: genesis(id),
            seen: 0,
            unchained: true,
            broken: None,
        }
    }

    /// The next stored block.
    pub fn feed(&mut self, b: &StoredBlock) {
        let expected_n = self.seen;
        self.seen += 1;
        self.unchained &= b.chain.is_none();
        if self.broken.is_some() {
            return;
        }
        if b.n != expected_n {
            self.broken = Some(Break::Missing { n: expected_n });
        } else if b.n >= self.blocks {
            self.broken = Some(Break::Extra { n: b.n });
        } else {
            self.chain = next(&self.chain, b.n, &b.bytes);
            if b.chain.as_ref() != Some(&self.chain) {
                self.broken = Some(Break::Block { n: b.n });
            }
        }
    }

    /// Where the chain breaks, if it does, given the head the metadata names.
    pub fn result(&self, head: &Hash) -> Result<(), Break> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        if self.seen < self.blocks {
            return Err(Break::Missing { n: self.seen });
        }
        if &self.chain != head {
            return Err(Break::Head);
        }
        Ok(())
    }
}

/// How a session's record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Chain intact and sealed by the audit key.
    Sealed,
    /// Chain intact, but not (yet) sealed: live, or interrupted by a bastiond stop.
    Unsealed,
    /// Chain intact up to where recording failed: the session was ended there, and anything
    /// it carried after the last stored block is not on record. Never sealed.
    Incomplete,
    /// Recorded before integrity existed: nothing to check.
    Legacy,
    /// Something was changed, removed, added or reordered.
    Tampered,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionIntegrity {
    pub session: u64,
    pub status: Status,
    pub detail: String,
}

/// Judges one session from its metadata and stored blocks; `seal_ok(message, seal)` checks a
/// seal against the audit key. `legacy_allowed`: the session may predate integrity
/// ([`IntegritySince::session_may_be_legacy`]); when it may not, a record without any chain
/// value or seal had them stripped.
pub fn judge(
    meta: &SessionMeta,
    stored: &[StoredBlock],
    legacy_allowed: bool,
    seal_ok: impl Fn(&[u8], &str) -> bool,
) -> SessionIntegrity {
    let mut walk = Walk::new(meta.id, meta.blocks);
    stored.iter().for_each(|b| walk.feed(b));
    let frames_before = |n: u32| -> usize {
        stored
            .iter()
            .take_while(|b| b.n < n)
            .map(|b| crate::record::block::decompress(&b.bytes).map_or(0, |f| f.len()))
            .sum()
    };
    judge_walk(meta, &walk, legacy_allowed, frames_before, seal_ok)
}

/// [`judge`] from a [`Walk`] over the session's blocks; `frames_before(n)` counts the frames
/// in the blocks before block `n` (only asked for when the chain breaks, to name a position a
/// replay can find).
pub fn judge_walk(
    meta: &SessionMeta,
    walk: &Walk,
    legacy_allowed: bool,
    frames_before: impl Fn(u32) -> usize,
    seal_ok: impl Fn(&[u8], &str) -> bool,
) -> SessionIntegrity {
    let verdict = |status, detail: String| SessionIntegrity {
        session: meta.id,
        status,
        detail,
    };
    let stored_blocks = walk.seen;
    let legacy = meta.chain.is_none() && meta.seal.is_none() && walk.unchained;
    if legacy && stored_blocks > 0 {
        if !legacy_allowed {
            return verdict(
                Status::Tampered,
                format!(
                    "chain stripped: {stored_blocks} blocks without chain values or seal, recorded after integrity began"
                ),
            );
        }
        return verdict(
            Status::Legacy,
            format!("{stored_blocks} blocks recorded before integrity"),
        );
    }
    let head = match meta.chain.as_deref() {
        Some(h) => match parse_hex(h) {
            Some(h) => h,
            None => {
                return verdict(
                    Status::Tampered,
                    "chain head in the metadata is not a hash".into(),
                );
            }
        },
        None => genesis(meta.id),
    };
    if let Err(b) = walk.result(&head) {
        let at = |n: u32| format!("block {n} (frames from #{})", frames_before(n));
        let detail = match b {
            Break::Block { n } => format!(
                "{}: changed, or a frame in it removed, added or moved",
                at(n)
            ),
            Break::Missing { n } => format!("{}: missing", at(n)),
            Break::Extra { n } => format!("block {n}: not counted by the session (added)"),
            Break::Head => {
                "blocks and chain rewritten: the chain no longer ends where the metadata says"
                    .into()
            }
        };
        return verdict(Status::Tampered, detail);
    }
    if meta.state == crate::session::SessionState::Failed {
        return verdict(
            Status::Incomplete,
            format!(
                "recording failed: the record stops after its {} stored blocks (chain intact up to there)",
                meta.blocks
            ),
        );
    }
    match &meta.seal {
        Some(seal) if seal_ok(&seal_message(meta), seal) => verdict(
            Status::Sealed,
            format!("{} blocks, chain and seal intact", meta.blocks),
        ),
        Some(_) => verdict(
            Status::Tampered,
            "the seal does not match the record (metadata or chain head edited)".into(),
        ),
        None => verdict(
            Status::Unsealed,
            format!(
                "{} blocks, chain intact, not sealed ({})",
                meta.blocks,
                serde_json::to_value(meta.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        ),
    }
}

/// Seals a closed session: the audit key's SshSig (SHA-256, namespace [`SEAL_NAMESPACE`]) over
/// [`seal_message`], as PEM (`ssh-keygen -Y verify` reads it).
pub fn seal(audit_key: &PrivateKey, meta: &SessionMeta) -> Result<String, ssh_key::Error> {
    audit_key
        .sign(SEAL_NAMESPACE, HashAlg::Sha256, &seal_message(meta))?
        .to_pem(LineEnding::LF)
}

/// True if `pem` is a seal by `audit_key` over `msg` (a [`seal_message`]).
pub fn seal_valid(audit_key: &PublicKey, msg: &[u8], pem: &str) -> bool {
    SshSig::from_pem(pem).is_ok_and(|sig| audit_key.verify(SEAL_NAMESPACE, msg, &sig).is_ok())
}

/// Parses a hex chain value as stored in the metadata.
pub fn parse_hex(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    match base16ct::mixed::decode(s, &mut h) {
        Ok(bytes) if bytes.len() == 32 => Some(h),
        _ => None,
    }
}

/// Where the audit chain starts.
pub fn audit_genesis() -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(b"bastion-audit-v1");
    to_hash(c)
}

/// The chain value of `event` after `prev`: `H(prev ‖ seq ‖ canonical JSON of the event
/// without its own chain)`.
pub fn audit_link(prev: &Hash, event: &AuditEvent) -> Result<Hash, serde_json::Error> {
    let mut value = serde_json::to_value(event)?;
    if let Some(map) = value.as_object_mut() {
        map.remove("chain");
    }
    let mut bytes = Vec::new();
    canonical_json(&value, &mut bytes)?;
    let mut c = Context::new(&SHA256);
    c.update(prev);
    c.update(&event.seq.to_be_bytes());
    c.update(&bytes);
    Ok(to_hash(c))
}

/// Compact JSON with every object's keys in byte order, written out here rather than left to
/// the map type serde_json happens to be built with (its `preserve_order` feature, enabled by
/// any crate in the build, would otherwise change what the audit chain hashes).
fn canonical_json(value: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                canonical_json(v, out)?;
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(v, out)?;
            }
            out.push(b']');
        }
        leaf => serde_json::to_writer(&mut *out, leaf)?,
    }
    Ok(())
}

/// What a walk of the audit stream found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditIntegrity {
    pub events: u64,
    /// Events stored before integrity (unchained, at the start of the stream).
    pub legacy: u64,
    pub chained: u64,
    /// The first event that breaks the stream, and how.
    pub broken: Option<(u64, String)>,
}

/// Where integrity began in one store: which records may lack a chain because they predate it.
/// Written once, by the schema step that introduced it (computed from what the store held
/// then) or at creation; a store without it is held to the strictest reading (nothing may be
/// unchained), so deleting it never turns a stripped chain into a legacy one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IntegritySince {
    /// Audit events from this sequence number on must carry their chain link.
    pub audit_seq: u64,
    /// Sessions with this id or above must carry chain values (ids only grow).
    pub session_id: u64,
}

impl IntegritySince {
    pub fn session_may_be_legacy(&self, id: u64) -> bool {
        id < self.session_id
    }

    pub fn event_may_be_legacy(&self, seq: u64) -> bool {
        seq < self.audit_seq
    }
}

/// What an anchor signs: the audit stream's chain head after event `at_seq`.
pub fn anchor_message(at_seq: u64, head: &Hash) -> Vec<u8> {
    format!("bastion-anchor-v1\nseq {at_seq}\nhead {}\n", hex(head)).into_bytes()
}

/// The anchor event for the stream whose event `at_seq` has chain value `head`, signed by the
/// audit key.
pub fn anchor(
    audit_key: &PrivateKey,
    at_seq: u64,
    head: &Hash,
) -> Result<AuditKind, ssh_key::Error> {
    let signature = audit_key
        .sign(
            ANCHOR_NAMESPACE,
            HashAlg::Sha256,
            &anchor_message(at_seq, head),
        )?
        .to_pem(LineEnding::LF)?;
    Ok(AuditKind::Anchor {
        at_seq,
        head: hex(head),
        signature,
    })
}

/// The anchored `(at_seq, head)` if `kind` is an anchor signed by `audit_key`; `Err` with the
/// anchored sequence number if it is an anchor that is not; `None` if it is no anchor.
pub fn anchor_valid(audit_key: &PublicKey, kind: &AuditKind) -> Option<Result<(u64, Hash), u64>> {
    let AuditKind::Anchor {
        at_seq,
        head,
        signature,
    } = kind
    else {
        return None;
    };
    let valid = parse_hex(head).filter(|h| {
        SshSig::from_pem(signature).is_ok_and(|sig| {
            audit_key
                .verify(ANCHOR_NAMESPACE, &anchor_message(*at_seq, h), &sig)
                .is_ok()
        })
    });
    Some(valid.map(|h| (*at_seq, h)).ok_or(*at_seq))
}

/// Something `verify` found beyond single records: the audit stream against its sessions, or
/// the store against an export of its stream. Any finding fails `verify`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// The audit stream names session `session` (started or ended, at event `seq`), the store
    /// has no such session, and no retention expiry names it.
    SessionDeleted { session: u64, seq: u64 },
    /// A finished session in the store whose start is not in the audit stream.
    SessionUnaudited { session: u64 },
    /// An anchor (for event `at_seq`) whose signature is not the audit key's.
    ForgedAnchor { at_seq: u64 },
    /// The store keeps the stream only up to event `kept`, but the export attests `attested`
    /// (with an anchor, if `anchored`); `continued`: the store has other events after `kept`
    /// (bastiond ran on after the cut or roll-back).
    TailCut {
        kept: u64,
        attested: u64,
        anchored: bool,
        continued: bool,
    },
    /// Exported events `first..=last` are not in the store; `renumbered`: the later ones were
    /// moved down and re-chained to hide the gap.
    EventsDeleted {
        first: u64,
        last: u64,
        renumbered: bool,
    },
    /// The store's event `seq` is not the exported one (same time, other content).
    EventAltered { seq: u64 },
    /// The store's chain value at an anchored event is not the anchored head.
    AnchorMismatch { at_seq: u64 },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::SessionDeleted { session, seq } => write!(
                f,
                "session {session} deleted: audit event #{seq} names it, the store has no such session"
            ),
            Finding::SessionUnaudited { session } => write!(
                f,
                "session {session} has no start event in the audit stream (audit events deleted?)"
            ),
            Finding::ForgedAnchor { at_seq } => write!(
                f,
                "anchor for #{at_seq} is not signed by the audit key (forged or altered)"
            ),
            Finding::TailCut {
                kept,
                attested,
                anchored,
                continued,
            } => {
                let by = if *anchored { "an anchor" } else { "the export" };
                if *continued {
                    write!(
                        f,
                        "audit tail cut or store rolled back: the store's stream matches the export only up to seq {kept}, but {by} attests seq {attested} (the store went on with other events)"
                    )
                } else {
                    write!(
                        f,
                        "audit tail cut or store rolled back: the store ends at seq {kept} but {by} attests seq {attested}"
                    )
                }
            }
            Finding::EventsDeleted {
                first,
                last,
                renumbered,
            } => {
                if first == last {
                    write!(f, "audit event {first} deleted")?;
                } else {
                    write!(f, "audit events {first} to {last} deleted")?;
                }
                if *renumbered {
                    write!(f, " (the later events renumbered and re-chained)")?;
                }
                Ok(())
            }
            Finding::EventAltered { seq } => write!(
                f,
                "store altered at seq {seq}: its audit event #{seq} is not the exported one"
            ),
            Finding::AnchorMismatch { at_seq } => write!(
                f,
                "store rolled back or altered at or before seq {at_seq}: its chain head there is not the anchored one"
            ),
        }
    }
}

/// The sessions an audit stream speaks of, for the cross-check with the sessions stored.
#[derive(Debug, Clone, Default)]
pub struct SessionLedger {
    /// Each session started or ended, with the first event naming it.
    named: BTreeMap<u64, u64>,
    started: BTreeSet<u64>,
    /// Deleted by retention (audited): absent on purpose.
    expired: BTreeSet<u64>,
}

impl SessionLedger {
    pub fn observe(&mut self, event: &AuditEvent) {
        match &event.kind {
            AuditKind::SessionStarted { session, .. } => {
                self.named.entry(*session).or_insert(event.seq);
                self.started.insert(*session);
            }
            AuditKind::SessionEnded { session, .. } => {
                self.named.entry(*session).or_insert(event.seq);
            }
            AuditKind::SessionsExpired { sessions, .. } => self.expired.extend(sessions),
            _ => {}
        }
    }

    /// Counts `other`'s expiries as this stream's (an export checked against the store: the
    /// store may have expired a session after the export was taken).
    pub fn expired_too(&mut self, other: &SessionLedger) {
        self.expired.extend(&other.expired);
    }

    /// Sessions named here that `stored` lacks, not expired.
    pub fn deleted(&self, stored: &BTreeSet<u64>) -> Vec<Finding> {
        self.named
            .iter()
            .filter(|(id, _)| !stored.contains(id) && !self.expired.contains(id))
            .map(|(&session, &seq)| Finding::SessionDeleted { session, seq })
            .collect()
    }

    /// Stored sessions this stream never saw start. Live ones (their start may not be written
    /// yet), legacy ones and ones that carried nothing (refused because their start could not
    /// be audited) are passed over.
    pub fn unaudited(&self, stored: &[(SessionMeta, Status)]) -> Vec<Finding> {
        stored
            .iter()
            .filter(|(m, status)| {
                m.state != SessionState::Live
                    && *status != Status::Legacy
                    && m.blocks > 0
                    && !self.started.contains(&m.id)
            })
            .map(|(m, _)| Finding::SessionUnaudited { session: m.id })
            .collect()
    }
}

/// Checks a store's audit stream against an export of it (JSON lines as `bastionctl audit
/// --format jsonl|syslog` writes them; anchors among them). Fed the store's events in order
/// with [`ExportCheck::store_event`], then [`ExportCheck::finish`]ed with the store's session
/// ids. The export is evidence held outside the store: what it holds that the store does not
/// is named; only signed anchors speak for events the export itself does not hold.
pub struct ExportCheck<'a> {
    export: &'a BTreeMap<u64, AuditEvent>,
    /// Valid anchors: anchored sequence number → head.
    anchors: BTreeMap<u64, Hash>,
    findings: Vec<Finding>,
    /// The last store event seen.
    last: u64,
    /// The first place the store departs from the export has been named.
    diverged: bool,
    /// ... and it was a cut: what the export holds past it is part of that cut.
    cut: bool,
    /// ... or a deletion hidden by renumbering: the store ends that much earlier.
    shift: u64,
    store_sessions: SessionLedger,
    /// Exported events the store skips over, named in `finish` unless audit retention
    /// deleted them (`retained`).
    skipped: Vec<(u64, u64)>,
    /// What the store's `audit_expired` events say retention deleted: through which sequence
    /// number, and only events older than which time (µs).
    retained: Option<(u64, u64)>,
}

impl<'a> ExportCheck<'a> {
    pub fn new(export: &'a BTreeMap<u64, AuditEvent>, audit_key: &PublicKey) -> Self {
        let mut anchors = BTreeMap::new();
        let mut findings = Vec::new();
        for e in export.values() {
            match anchor_valid(audit_key, &e.kind) {
                Some(Ok((at, head))) => {
                    anchors.insert(at, head);
                }
                Some(Err(at_seq)) => findings.push(Finding::ForgedAnchor { at_seq }),
                None => {}
            }
        }
        ExportCheck {
            export,
            anchors,
            findings,
            last: 0,
            diverged: false,
            cut: false,
            shift: 0,
            store_sessions: SessionLedger::default(),
            skipped: Vec::new(),
            retained: None,
        }
    }

    /// How many valid anchors the export holds.
    pub fn anchors(&self) -> usize {
        self.anchors.len()
    }

    /// The store's next event (in sequence order).
    pub fn store_event(&mut self, e: &AuditEvent) {
        self.store_sessions.observe(e);
        if let crate::audit::AuditKind::AuditExpired {
            through_seq,
            retention_secs,
            ..
        } = &e.kind
        {
            let cutoff = e
                .time_micros
                .saturating_sub(retention_secs.saturating_mul(1_000_000));
            self.retained = Some((*through_seq, cutoff));
        }
        // Exported events the store skips over.
        if e.seq > self.last + 1 {
            let skipped: Vec<u64> = self
                .export
                .range(self.last + 1..e.seq)
                .map(|(s, _)| *s)
                .collect();
            if let (Some(&first), Some(&last)) = (skipped.first(), skipped.last()) {
                self.skipped.push((first, last));
            }
        }
        self.last = self.last.max(e.seq);
        let kept = e.chain.as_deref().and_then(parse_hex);
        if let Some(x) = self.export.get(&e.seq)
            && x.chain.as_deref().and_then(parse_hex) != kept
            && !self.diverged
        {
            self.diverged = true;
            let same = |a: &AuditEvent, b: &AuditEvent| {
                a.time_micros == b.time_micros && a.actor == b.actor && a.kind == b.kind
            };
            let finding = if self.export.get(&(e.seq + 1)).is_some_and(|n| same(n, e)) {
                self.shift = 1;
                Finding::EventsDeleted {
                    first: e.seq,
                    last: e.seq,
                    renumbered: true,
                }
            } else if x.time_micros == e.time_micros {
                Finding::EventAltered { seq: e.seq }
            } else {
                // Another event where the export has one from another time: the stream was
                // cut here and went on (a restart, or a rolled-back copy in use).
                let (attested, anchored) = self.attested(e.seq.saturating_sub(1));
                self.cut = true;
                Finding::TailCut {
                    kept: e.seq.saturating_sub(1),
                    attested,
                    anchored,
                    continued: true,
                }
            };
            self.findings.push(finding);
        }
        if let Some(head) = self.anchors.get(&e.seq)
            && kept.as_ref() != Some(head)
            && !self.diverged
        {
            self.diverged = true;
            self.findings
                .push(Finding::AnchorMismatch { at_seq: e.seq });
        }
    }

    /// The last event after `kept` the export attests: the newest anchor's if one is past it
    /// (signed), else the newest exported event's.
    fn attested(&self, kept: u64) -> (u64, bool) {
        let anchored = self.anchors.keys().next_back().copied().unwrap_or(0);
        if anchored > kept {
            return (anchored, true);
        }
        (self.export.keys().next_back().copied().unwrap_or(0), false)
    }

    /// Everything found, given the ids of the sessions the store holds.
    pub fn finish(mut self, stored_sessions: &BTreeSet<u64>) -> Vec<Finding> {
        // Skipped events are deleted, unless retention says it deleted them: then each of them
        // must be within what it deleted and older than its cutoff.
        for (first, last) in std::mem::take(&mut self.skipped) {
            let expired = |seq: &u64| {
                self.retained.is_some_and(|(through, cutoff)| {
                    *seq <= through && self.export.get(seq).is_some_and(|x| x.time_micros < cutoff)
                })
            };
            let deleted: Vec<u64> = self
                .export
                .range(first..=last)
                .map(|(s, _)| *s)
                .filter(|s| !expired(s))
                .collect();
            if let (Some(&first), Some(&last)) = (deleted.first(), deleted.last()) {
                self.findings.push(Finding::EventsDeleted {
                    first,
                    last,
                    renumbered: false,
                });
            }
        }
        let (attested, anchored) = self.attested(self.last);
        if attested > self.last && !self.diverged {
            self.findings.push(Finding::TailCut {
                kept: self.last,
                attested,
                anchored,
                continued: false,
            });
        }
        let missing: Vec<u64> = self
            .export
            .range(self.last + 1 + self.shift..)
            .map(|(s, _)| *s)
            .collect();
        if let (Some(&first), Some(&last), false) = (missing.first(), missing.last(), self.cut) {
            self.findings.push(Finding::EventsDeleted {
                first,
                last,
                renumbered: false,
            });
        }
        let mut exported = SessionLedger::default();
        self.export.values().for_each(|e| exported.observe(e));
        exported.expired_too(&self.store_sessions);
        self.findings.extend(exported.deleted(stored_sessions));
        self.findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(id: u64, blocks: &[&[u8]]) -> (Vec<StoredBlock>, Hash) {
        let mut c = genesis(id);
        let mut out = Vec::new();
        for (n, b) in blocks.iter().enumerate() {
            c = next(&c, n as u32, b);
            out.push(StoredBlock {
                n: n as u32,
                bytes: b.to_vec(),
                chain: Some(c),
            });
        }
        (out, c)
    }

    #[test]
    fn intact_chain_verifies_and_every_kind_of_tampering_is_located() {
        let (good, head) = chain(7, &[b"one", b"two", b"three"]);
        assert_eq!(check(7, &good, 3, &head), Ok(()));
        assert_eq!(
            check(8, &good, 3, &head),
            Err(Break::Block { n: 0 }),
            "bound to the id"
        );

        let mut flipped = good.clone();
        flipped[1].bytes[0] ^= 1;
        assert_eq!(check(7, &flipped, 3, &head), Err(Break::Block { n: 1 }));

        let mut removed = good.clone();
        removed.remove(1);
        assert_eq!(check(7, &removed, 3, &head), Err(Break::Missing { n: 1 }));

        let mut truncated = good.clone();
        truncated.pop();
        assert_eq!(check(7, &truncated, 3, &head), Err(Break::Missing { n: 2 }));

        let mut swapped = good.clone();
        let (a, b) = (swapped[0].bytes.clone(), swapped[1].bytes.clone());
        swapped[0].bytes = b;
        swapped[1].bytes = a;
        assert_eq!(check(7, &swapped, 3, &head), Err(Break::Block { n: 0 }));

        // Blocks and chain rewritten consistently: only the head (which the seal signs) tells.
        let (forged, forged_head) = chain(7, &[b"one", b"TWO", b"three"]);
        assert_eq!(check(7, &forged, 3, &head), Err(Break::Head));
        assert_ne!(forged_head, head);

        let (more, _) = chain(7, &[b"one", b"two", b"three", b"four"]);
        assert_eq!(check(7, &more, 3, &head), Err(Break::Extra { n: 3 }));
        assert_eq!(parse_hex(&hex(&head)), Some(head));
    }

    /// Golden vectors: fixed inputs, and outputs computed independently (Python's hashlib,
    /// json with sorted keys and `cryptography`'s Ed25519 over the SshSig signed data). If one
    /// fails, stored chains and seals would no longer verify: that needs a new format version
    /// and a migration, not a new vector.
    #[test]
    fn golden_vectors_pin_every_chain_and_seal() {
        let g = genesis(42);
        assert_eq!(
            hex(&g),
            "3e3c6b53beb9e7fa01944a7e71ed099e3fe8aa898c83b0eb4b1c418c1a746912"
        );
        let head = next(&g, 0, b"block zero");
        assert_eq!(
            hex(&head),
            "8194399f2504df3f537b26db0a2179421b0ce160fcc79473e63380498c1941e7"
        );

        let event = AuditEvent {
            seq: 7,
            time_micros: 1_700_000_000_000_000,
            actor: crate::audit::Actor::Admin {
                uid: 0,
                pid: Some(1234),
            },
            kind: crate::audit::AuditKind::Login {
                client: "198.51.100.5:40000".into(),
                username: "root@web1".into(),
                fingerprint: "SHA256:abc".into(),
                user: Some("alice".into()),
                accepted: true,
                reason: None,
            },
            chain: Some("ignored: an event's own chain is not covered".into()),
        };
        assert_eq!(
            hex(&audit_genesis()),
            "8d00fd23fb53f2dc043e4ed60e6c8dbaac6cd5cfde35146510d505a9110de135"
        );
        assert_eq!(
            hex(&audit_link(&audit_genesis(), &event).unwrap()),
            "dd5cbc7c060351898e60da5433531e74e292f803a9e9d68c7948e024008d86fd"
        );

        let meta = SessionMeta {
            user: "alice".into(),
            login: "root".into(),
            target: "web1".into(),
            client_addr: Some("198.51.100.5:40000".parse().unwrap()),
            grant: "alice-web1".into(),
            started_micros: 1_700_000_000_000_000,
            ended_micros: Some(1_700_000_060_000_000),
            state: crate::session::SessionState::Closed,
            blocks: 1,
            bytes_in: 10,
            bytes_out: 20,
            chain: Some(hex(&head)),
            ..SessionMeta::starting(42, "203.0.113.10:22".parse().unwrap())
        };
        let msg = seal_message(&meta);
        assert_eq!(
            String::from_utf8(msg.clone()).unwrap(),
            "bastion-seal-v1\nid 42\nuser alice\nlogin root\ntarget web1\n\
             target_addr 203.0.113.10:22\nclient 198.51.100.5:40000\ngrant alice-web1\n\
             started 1700000000000000\nended 1700000060000000\nblocks 1\nbytes_in 10\n\
             bytes_out 20\nchain 8194399f2504df3f537b26db0a2179421b0ce160fcc79473e63380498c1941e7\n"
        );
        let key = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[7; 32]));
        let pem = seal(&key, &meta).unwrap();
        let sig = SshSig::from_pem(&pem).unwrap();
        assert_eq!(
            base16ct::lower::encode_string(sig.signature().as_bytes()),
            "695cb85090e912b259ba66473f211811955fa8f5dd967fd67630fd123f75d975\
             752ce295522108e7fc860129e20b06ce07a1dfde53f2c9f71dbfd2fd7ca8290a"
        );
        assert!(seal_valid(key.public_key(), &msg, &pem));
        let mut other = msg.clone();
        other[0] ^= 1;
        assert!(!seal_valid(key.public_key(), &other, &pem));
    }

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
    }

    #[test]
    fn anchors_verify_only_with_their_key_head_and_sequence() {
        let k = key(7);
        let head = audit_link(&audit_genesis(), &started(1)).unwrap();
        assert_eq!(
            String::from_utf8(anchor_message(1, &head)).unwrap(),
            format!("bastion-anchor-v1\nseq 1\nhead {}\n", hex(&head))
        );
        let good = anchor(&k, 1, &head).unwrap();
        assert_eq!(anchor_valid(k.public_key(), &good), Some(Ok((1, head))));
        assert_eq!(
            anchor_valid(key(8).public_key(), &good),
            Some(Err(1)),
            "other key"
        );
        let AuditKind::Anchor { signature, .. } = &good else {
            unreachable!()
        };
        let cases = [
            ("wrong head", 1, hex(&audit_genesis()), signature.clone()),
            ("wrong sequence", 2, hex(&head), signature.clone()),
            ("not a hash", 1, "zz".into(), signature.clone()),
            ("not a signature", 1, hex(&head), "garbage".into()),
        ];
        for (what, at_seq, head, signature) in cases {
            let kind = AuditKind::Anchor {
                at_seq,
                head,
                signature,
            };
            assert_eq!(
                anchor_valid(k.public_key(), &kind),
                Some(Err(at_seq)),
                "{what}"
            );
        }
        // A seal over the same bytes is no anchor: the namespaces differ.
        let sig = k
            .sign(SEAL_NAMESPACE, HashAlg::Sha256, &anchor_message(1, &head))
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap();
        let seal_as_anchor = AuditKind::Anchor {
            at_seq: 1,
            head: hex(&head),
            signature: sig,
        };
        assert_eq!(anchor_valid(k.public_key(), &seal_as_anchor), Some(Err(1)));
        assert_eq!(anchor_valid(k.public_key(), &started(1).kind), None);
    }

    fn started(seq: u64) -> AuditEvent {
        AuditEvent {
            seq,
            time_micros: 1_000 * seq,
            actor: crate::audit::Actor::Daemon,
            kind: AuditKind::DaemonStarted {
                version: "1".into(),
                pid: seq as u32,
            },
            chain: None,
        }
    }

    fn session_event(seq: u64, session: u64, start: bool) -> AuditEvent {
        let kind = if start {
            AuditKind::SessionStarted {
                session,
                client: "198.51.100.5:40000".into(),
                user: "alice".into(),
                login: "root".into(),
                target: "web1".into(),
                grant: "g".into(),
                arrival: String::new(),
            }
        } else {
            AuditKind::SessionEnded {
                session,
                bytes_in: 1,
                bytes_out: 2,
            }
        };
        AuditEvent {
            kind,
            ..started(seq)
        }
    }

    /// Chains `events` (renumbered from 1) as the store would; with an anchor by `k` after
    /// each position in `anchor_after`.
    fn stream(events: Vec<AuditEvent>, k: &PrivateKey, anchor_after: &[u64]) -> Vec<AuditEvent> {
        let mut out: Vec<AuditEvent> = Vec::new();
        let mut head = audit_genesis();
        let mut push = |mut e: AuditEvent, out: &mut Vec<AuditEvent>| {
            e.seq = out.len() as u64 + 1;
            e.chain = None;
            head = audit_link(&head, &e).unwrap();
            e.chain = Some(hex(&head));
            out.push(e);
            head
        };
        for e in events {
            let h = push(e, &mut out);
            let seq = out.len() as u64;
            if anchor_after.contains(&seq) {
                let a = AuditEvent {
                    kind: anchor(k, seq, &h).unwrap(),
                    ..started(seq)
                };
                push(a, &mut out);
            }
        }
        out
    }

    fn check_export(
        export: &[AuditEvent],
        store: &[AuditEvent],
        k: &PrivateKey,
        sessions: &[u64],
    ) -> Vec<Finding> {
        let export: BTreeMap<u64, AuditEvent> = export.iter().map(|e| (e.seq, e.clone())).collect();
        let mut c = ExportCheck::new(&export, k.public_key());
        store.iter().for_each(|e| c.store_event(e));
        c.finish(&sessions.iter().copied().collect())
    }

    #[test]
    fn events_audit_retention_deleted_are_not_named_but_younger_ones_are() {
        let k = key(7);
        // Events at 1, 2, 3, 4 ms; retention of 1 s written at 1.0035 s deletes what is older
        // than 3.5 ms: through 3 may go, not 4.
        let full = stream(
            vec![
                AuditEvent {
                    time_micros: 1_000,
                    ..started(0)
                },
                AuditEvent {
                    time_micros: 2_000,
                    ..started(0)
                },
                AuditEvent {
                    time_micros: 3_000,
                    ..started(0)
                },
                AuditEvent {
                    time_micros: 4_000,
                    ..started(0)
                },
            ],
            &k,
            &[],
        );
        let expired = |through_seq| AuditEvent {
            seq: 5,
            time_micros: 1_003_500,
            kind: AuditKind::AuditExpired {
                through_seq,
                count: through_seq,
                retention_secs: 1,
            },
            ..started(5)
        };
        // The store after retention: 4, and the expiry event (chains aside: not judged here).
        let kept = vec![full[3].clone(), expired(3)];
        assert!(check_export(&full, &kept, &k, &[]).is_empty());
        // A "retention" that deleted a younger event is a deletion.
        let overreach = vec![expired(4)];
        assert_eq!(
            check_export(&full, &overreach, &k, &[]),
            vec![Finding::EventsDeleted {
                first: 4,
                last: 4,
                renumbered: false,
            }]
        );
    }

    #[test]
    fn a_store_is_held_to_its_export_and_anchors() {
        let k = key(7);
        // 1 started, 2 session 5 starts, 3 ends, 4 anchor over 3, 5 started, 6 session 6 starts,
        // 7 ends, 8 anchor over 7 (times all 0: only the continued cut below has another).
        let events = vec![
            started(0),
            session_event(0, 5, true),
            session_event(0, 5, false),
            started(0),
            session_event(0, 6, true),
            session_event(0, 6, false),
        ];
        let full = stream(events.clone(), &k, &[3, 7]);
        assert_eq!(full.len(), 8);
        assert!(check_export(&full, &full, &k, &[5, 6]).is_empty());
        // Only the anchors exported (e.g. a filtered syslog): still enough.
        let anchors: Vec<_> = full
            .iter()
            .filter(|e| matches!(e.kind, AuditKind::Anchor { .. }))
            .cloned()
            .collect();
        assert!(check_export(&anchors, &full, &k, &[5, 6]).is_empty());

        // (what was done to the store, the store, what the export names)
        let cases: Vec<(&str, Vec<AuditEvent>, Vec<Finding>)> = vec![
            (
                "tail cut after #4",
                full[..4].to_vec(),
                vec![
                    Finding::TailCut {
                        kept: 4,
                        attested: 7,
                        anchored: true,
                        continued: false,
                    },
                    Finding::EventsDeleted {
                        first: 5,
                        last: 8,
                        renumbered: false,
                    },
                    Finding::SessionDeleted { session: 6, seq: 6 },
                ],
            ),
            (
                "tail cut, then bastiond went on",
                {
                    let mut s = full[..4].to_vec();
                    s.extend(stream(vec![started(0)], &k, &[]).into_iter().map(|mut e| {
                        e.seq = 5;
                        e.time_micros = 99_000;
                        e.chain = Some(hex(&audit_link(
                            &parse_hex(full[3].chain.as_deref().unwrap()).unwrap(),
                            &e,
                        )
                        .unwrap()));
                        e
                    }));
                    s
                },
                vec![
                    Finding::TailCut {
                        kept: 4,
                        attested: 7,
                        anchored: true,
                        continued: true,
                    },
                    Finding::SessionDeleted { session: 6, seq: 6 },
                ],
            ),
            (
                "event 2 deleted, the rest renumbered and re-chained",
                {
                    let mut ev = events.clone();
                    ev.remove(1);
                    stream(ev, &k, &[2, 6])
                },
                vec![
                    Finding::EventsDeleted {
                        first: 2,
                        last: 2,
                        renumbered: true,
                    },
                    Finding::SessionDeleted { session: 5, seq: 2 },
                ],
            ),
            (
                "event 5 deleted, leaving a gap",
                full.iter().filter(|e| e.seq != 5).cloned().collect(),
                vec![Finding::EventsDeleted {
                    first: 5,
                    last: 5,
                    renumbered: false,
                }],
            ),
            (
                "event 3 altered and everything re-chained",
                {
                    let mut ev = events.clone();
                    ev[2] = session_event(0, 5, false);
                    if let AuditKind::SessionEnded { bytes_out, .. } = &mut ev[2].kind {
                        *bytes_out = 0;
                    }
                    stream(ev, &k, &[3, 7])
                },
                vec![Finding::EventAltered { seq: 3 }],
            ),
        ];
        for (what, store, want) in cases {
            let sessions: Vec<u64> = store
                .iter()
                .filter_map(|e| match e.kind {
                    AuditKind::SessionStarted { session, .. } => Some(session),
                    _ => None,
                })
                .collect();
            assert_eq!(check_export(&full, &store, &k, &sessions), want, "{what}");
        }

        // A store rewritten where only anchors were exported: the anchor names it.
        let mut ev = events.clone();
        ev[3] = started(77);
        let rewritten = stream(ev, &k, &[3, 7]);
        assert_eq!(
            check_export(&anchors, &rewritten, &k, &[5, 6]),
            vec![Finding::AnchorMismatch { at_seq: 7 }]
        );
        // A session deleted from the store with its events kept.
        assert_eq!(
            check_export(&full, &full, &k, &[6]),
            vec![Finding::SessionDeleted { session: 5, seq: 2 }]
        );
        // A forged anchor is named, and attests nothing.
        let mut forged = full.clone();
        forged.push(AuditEvent {
            kind: anchor(&key(9), 12, &audit_genesis()).unwrap(),
            ..started(9)
        });
        assert_eq!(
            check_export(&forged, &full, &k, &[5, 6]),
            vec![
                Finding::ForgedAnchor { at_seq: 12 },
                Finding::TailCut {
                    kept: 8,
                    attested: 9,
                    anchored: false,
                    continued: false
                },
                Finding::EventsDeleted {
                    first: 9,
                    last: 9,
                    renumbered: false
                }
            ]
        );
        assert!(
            Finding::TailCut {
                kept: 4,
                attested: 7,
                anchored: true,
                continued: false
            }
            .to_string()
            .contains("audit tail cut or store rolled back: the store ends at seq 4 but an anchor attests seq 7")
        );
    }

    #[test]
    fn the_session_ledger_finds_deleted_and_unaudited_sessions() {
        let mut ledger = SessionLedger::default();
        for e in [
            session_event(1, 5, true),
            session_event(2, 5, false),
            session_event(3, 6, true),
            session_event(4, 7, false),
            AuditEvent {
                kind: AuditKind::SessionsExpired {
                    sessions: vec![6],
                    retention_secs: 1,
                },
                ..started(5)
            },
        ] {
            ledger.observe(&e);
        }
        assert_eq!(
            ledger.deleted(&[5].into_iter().collect()),
            vec![Finding::SessionDeleted { session: 7, seq: 4 }],
            "6 expired, 7 deleted"
        );
        let meta = |id, state, blocks| SessionMeta {
            state,
            blocks,
            ..SessionMeta::starting(id, "203.0.113.10:22".parse().unwrap())
        };
        let stored = [
            (meta(5, SessionState::Closed, 2), Status::Sealed),
            (meta(8, SessionState::Closed, 2), Status::Sealed),
            (meta(9, SessionState::Live, 2), Status::Unsealed),
            (meta(10, SessionState::Closed, 2), Status::Legacy),
            (meta(11, SessionState::Closed, 0), Status::Sealed),
        ];
        assert_eq!(
            ledger.unaudited(&stored),
            vec![Finding::SessionUnaudited { session: 8 }]
        );
    }

    #[test]
    fn a_stripped_session_is_legacy_only_before_integrity() {
        let (blocks, _) = chain(3, &[b"one"]);
        let stripped: Vec<StoredBlock> = blocks
            .into_iter()
            .map(|b| StoredBlock { chain: None, ..b })
            .collect();
        let meta = SessionMeta {
            blocks: 1,
            state: SessionState::Closed,
            ..SessionMeta::starting(3, "203.0.113.10:22".parse().unwrap())
        };
        assert_eq!(
            judge(&meta, &stripped, true, |_, _| true).status,
            Status::Legacy
        );
        let v = judge(&meta, &stripped, false, |_, _| true);
        assert_eq!(v.status, Status::Tampered);
        assert!(v.detail.contains("chain stripped"), "{}", v.detail);
        let since = IntegritySince {
            audit_seq: 4,
            session_id: 3,
        };
        assert!(since.session_may_be_legacy(2) && !since.session_may_be_legacy(3));
        assert!(since.event_may_be_legacy(3) && !since.event_may_be_legacy(4));
        assert!(!IntegritySince::default().session_may_be_legacy(0));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = serde_json::json!({"b": [{"z": 1, "a": "é"}], "a": null});
        let mut out = Vec::new();
        canonical_json(&v, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":null,"b":[{"a":"é","z":1}]}"#
        );
    }
}
