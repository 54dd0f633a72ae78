//! One sealed session as a self-contained file that anyone can check offline with bastionctl
//! (`session export ID --format sealed`, `verify --file F [--key audit.pub]`): the metadata with
//! its seal, every block as stored with the chain value kept after it, and the audit public key.
//! The key in the file only names which key claims to have sealed it: anyone who rewrites the
//! file can seal it again with a key of their own, so the check takes the appliance's key from
//! the auditor (`--key`, from `bastionctl ca show --audit-key`) and never from the file.

use base64ct::{Base64, Encoding as _};
use serde::{Deserialize, Serialize};

use crate::{
    integrity::{self, SessionIntegrity, StoredBlock},
    session::SessionMeta,
};

pub const FORMAT: &str = "bastion-sealed-session-v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedFile {
    pub format: String,
    pub session: SessionMeta,
    pub blocks: Vec<FileBlock>,
    /// OpenSSH public key line of the audit key that sealed it.
    pub audit_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileBlock {
    pub n: u32,
    pub data_base64: String,
    pub chain: Option<String>,
}

pub fn build(session: SessionMeta, blocks: &[StoredBlock], audit_key: String) -> SealedFile {
    SealedFile {
        format: FORMAT.into(),
        session,
        blocks: blocks
            .iter()
            .map(|b| FileBlock {
                n: b.n,
                data_base64: Base64::encode_string(&b.bytes),
                chain: b.chain.as_ref().map(integrity::hex),
            })
            .collect(),
        audit_key,
    }
}

/// Checks `text` (a sealed file) against `key` (the appliance's audit public key line).
/// Returns the verdict and the key used.
pub fn check(text: &str, key: &str) -> Result<(SessionIntegrity, String), String> {
    let file: SealedFile =
        serde_json::from_str(text).map_err(|e| format!("not a sealed session file: {e}"))?;
    if file.format != FORMAT {
        return Err(format!("format `{}`, expected `{FORMAT}`", file.format));
    }
    let key_line = key.trim().to_owned();
    let public =
        ssh_key::PublicKey::from_openssh(&key_line).map_err(|e| format!("audit key: {e}"))?;
    let mut blocks = Vec::with_capacity(file.blocks.len());
    for b in &file.blocks {
        blocks.push(StoredBlock {
            n: b.n,
            bytes: Base64::decode_vec(&b.data_base64)
                .map_err(|_| format!("block {}: not base64", b.n))?,
            chain: b.chain.as_deref().and_then(integrity::parse_hex),
        });
    }
    // No store here to say when integrity began: a file without chain values reads LEGACY,
    // which fails the check all the same (only SEALED passes).
    let verdict = integrity::judge(&file.session, &blocks, true, |msg, seal| {
        integrity::seal_valid(&public, msg, seal)
    });
    Ok((verdict, key_line))
}
