//! Second factors: a TOTP secret per bastion user, sealed with the appliance's seal key, and the
//! last time step a code was accepted for, so that each code signs in once. Keyed by user name.

use bastion_core::{
    audit::{Actor, AuditEvent, AuditKind},
    keys::Sealed,
};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

pub(super) const MFA_TREE: &str = "mfa";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTotp {
    pub user: String,
    pub sealed: Sealed,
    /// The newest time step whose code was accepted (0: none yet).
    #[serde(default)]
    pub last_step: u64,
}

fn decode(store: &Store, v: &[u8]) -> Result<StoredTotp, StoreError> {
    serde_json::from_slice(v).map_err(|e| store.io(sled::Error::Unsupported(e.to_string())))
}

impl Store {
    /// Stores a user's new TOTP secret with its audit event, atomically.
    pub fn put_totp(&self, totp: &StoredTotp, actor: Actor) -> Result<AuditEvent, StoreError> {
        let tree = self.tree(MFA_TREE)?;
        let value = serde_json::to_vec(totp)
            .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
        let event = AuditKind::MfaEnrolled {
            user: totp.user.clone(),
        };
        self.write_with_audit(&tree, totp.user.as_bytes(), Some(value), actor, event)
    }

    pub fn remove_totp(&self, user: &str, actor: Actor) -> Result<AuditEvent, StoreError> {
        let tree = self.tree(MFA_TREE)?;
        let event = AuditKind::MfaRemoved {
            user: user.to_owned(),
        };
        self.write_with_audit(&tree, user.as_bytes(), None, actor, event)
    }

    pub fn totp(&self, user: &str) -> Result<Option<StoredTotp>, StoreError> {
        self.tree(MFA_TREE)?
            .get(user.as_bytes())
            .map_err(|e| self.io(e))?
            .map(|v| decode(self, &v))
            .transpose()
    }

    /// Marks `step` used for `user`'s code, durably: true if it is newer than every step used
    /// before, false for a code already used (or older). Two connections racing with the same
    /// code cannot both win: the update is a compare-and-swap.
    pub fn use_totp_step(&self, user: &str, step: u64) -> Result<bool, StoreError> {
        let tree = self.tree(MFA_TREE)?;
        loop {
            let Some(old) = tree.get(user.as_bytes()).map_err(|e| self.io(e))? else {
                return Ok(false);
            };
            let mut totp = decode(self, &old)?;
            if step <= totp.last_step {
                return Ok(false);
            }
            totp.last_step = step;
            let new = serde_json::to_vec(&totp)
                .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
            let swapped = tree
                .compare_and_swap(user.as_bytes(), Some(old), Some(new))
                .map_err(|e| self.io(e))?;
            if swapped.is_ok() {
                tree.flush().map_err(|e| self.io(e))?;
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_used_once_and_never_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.use_totp_step("alice", 10).unwrap(), "not enrolled");
        let sealed = Sealed {
            nonce: [0; 12],
            ciphertext: vec![1, 2, 3],
        };
        store
            .put_totp(
                &StoredTotp {
                    user: "alice".into(),
                    sealed,
                    last_step: 0,
                },
                Actor::Daemon,
            )
            .unwrap();
        assert!(store.use_totp_step("alice", 10).unwrap());
        assert!(!store.use_totp_step("alice", 10).unwrap(), "replayed");
        assert!(!store.use_totp_step("alice", 9).unwrap(), "older");
        assert!(store.use_totp_step("alice", 11).unwrap());
        store.remove_totp("alice", Actor::Daemon).unwrap();
        assert_eq!(store.totp("alice").unwrap(), None);
    }
}
