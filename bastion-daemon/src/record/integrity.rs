//! Tamper evidence for recordings (pure). Each session's stored blocks form a hash chain:
//! `c₀ = H("bastion-session-v1" ‖ id)`, `cₙ₊₁ = H(cₙ ‖ n ‖ block n as stored)`. The chain value
//! after every block is kept beside the block, and the session's metadata carries the head; at
//! close the session is sealed with the appliance's audit key over its metadata and chain head.
//! A changed, removed, added or reordered block (so any frame inside one) breaks the chain at
//! that block; a consistent rewrite of blocks and chain no longer matches the seal.

use ring::digest::{Context, SHA256};

use crate::session::SessionMeta;

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

pub fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
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
                .map(|b| super::block::decompress(&b.bytes).map_or(0, |f| f.len()))
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

/// Parses a hex chain value as stored in the metadata.
pub fn parse_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(h)
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
}
