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
//!
//! The golden vectors at the end of this file pin all of it: a serialiser or hash that changes
//! what is covered fails them before it can make stored records unverifiable.

use ring::digest::{Context, SHA256};

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::{audit::AuditEvent, session::SessionMeta};

/// The SshSig namespace of session seals (`ssh-keygen -Y verify -n bastion-session`).
pub const SEAL_NAMESPACE: &str = "bastion-session";

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
    let mut c = genesis(id);
    for (i, b) in stored.iter().enumerate() {
        let expected_n = i as u32;
        if b.n != expected_n {
            return Err(Break::Missing { n: expected_n });
        }
        if b.n >= blocks {
            return Err(Break::Extra { n: b.n });
        }
        c = next(&c, b.n, &b.bytes);
        if b.chain.as_ref() != Some(&c) {
            return Err(Break::Block { n: b.n });
        }
    }
    if (stored.len() as u32) < blocks {
        return Err(Break::Missing {
            n: stored.len() as u32,
        });
    }
    if &c != head {
        return Err(Break::Head);
    }
    Ok(())
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
/// seal against the audit key.
pub fn judge(
    meta: &SessionMeta,
    stored: &[StoredBlock],
    seal_ok: impl Fn(&[u8], &str) -> bool,
) -> SessionIntegrity {
    let verdict = |status, detail: String| SessionIntegrity {
        session: meta.id,
        status,
        detail,
    };
    let legacy =
        meta.chain.is_none() && meta.seal.is_none() && stored.iter().all(|b| b.chain.is_none());
    if legacy && !stored.is_empty() {
        return verdict(
            Status::Legacy,
            format!("{} blocks recorded before integrity", stored.len()),
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
    if let Err(b) = check(meta.id, stored, meta.blocks, &head) {
        let at = |n: u32| {
            // Frames before block n, for a position a replay can find.
            let before: usize = stored
                .iter()
                .take_while(|b| b.n < n)
                .map(|b| crate::record::block::decompress(&b.bytes).map_or(0, |f| f.len()))
                .sum();
            format!("block {n} (frames from #{before})")
        };
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
