//! `archive search`: commands across the archived sessions of one or more appliances, read
//! from each object's header (its command index) with two range reads, never its blocks.

use bastion_core::{
    archive::{ArchivedKey, object},
    session::CommandHit,
};
use serde::Serialize;

use crate::remote::{Remote, RemoteError};

#[derive(Debug, Clone, Serialize)]
pub struct ArchivedHit {
    pub appliance: String,
    pub object: String,
    #[serde(flatten)]
    pub hit: CommandHit,
}

/// The header of the session object at `key`.
pub async fn header(remote: &Remote, key: &str) -> Result<object::Header, RemoteError> {
    let head = remote.get_range(key, 0, 12).await?;
    let bad = |message: String| RemoteError::Url(format!("{key}: {message}"));
    if head.len() < 12 || &head[..8] != object::MAGIC {
        return Err(bad("not an archived session".into()));
    }
    let len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as u64;
    let json = remote.get_range(key, 12, 12 + len).await?;
    serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))
}

/// Commands containing `text` in the sessions of `appliances` (every appliance when empty),
/// newest first, at most `limit`.
pub async fn search(
    remote: &Remote,
    appliances: &[String],
    text: &str,
    limit: usize,
) -> Result<Vec<ArchivedHit>, RemoteError> {
    let appliances = if appliances.is_empty() {
        remote.appliances().await?
    } else {
        appliances.to_vec()
    };
    let mut hits = Vec::new();
    for appliance in &appliances {
        for l in remote.list(&remote.location.appliance(appliance)).await? {
            if !matches!(
                remote.location.parse_key(&l.key),
                Some((_, ArchivedKey::Session { .. }))
            ) {
                continue;
            }
            let h = header(remote, &l.key).await?;
            hits.extend(
                h.commands
                    .into_iter()
                    .filter(|c| c.line.contains(text))
                    .map(|hit| ArchivedHit {
                        appliance: appliance.clone(),
                        object: l.key.clone(),
                        hit,
                    }),
            );
        }
    }
    hits.sort_by_key(|h| std::cmp::Reverse(h.hit.at_micros));
    hits.truncate(limit);
    Ok(hits)
}
