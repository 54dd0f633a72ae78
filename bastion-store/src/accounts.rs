//! Target accounts: a private key per (target, login), sealed with the appliance's seal key, for
//! targets that cannot trust the user CA. Keyed `target \0 login`; the value holds only the
//! public half in clear.

use bastion_core::{
    audit::{Actor, AuditEvent, AuditKind},
    keys::Sealed,
};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

pub(super) const ACCOUNTS_TREE: &str = "accounts";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAccount {
    pub target: String,
    pub login: String,
    /// The public key (OpenSSH line) and its SHA-256 fingerprint, for listing.
    pub public_key: String,
    pub fingerprint: String,
    pub sealed: Sealed,
}

fn key(target: &str, login: &str) -> Vec<u8> {
    let mut k = target.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(login.as_bytes());
    k
}

impl Store {
    /// Stores (or replaces) an account with its audit event, atomically.
    pub fn put_account(
        &self,
        account: &StoredAccount,
        actor: Actor,
    ) -> Result<AuditEvent, StoreError> {
        let tree = self.tree(ACCOUNTS_TREE)?;
        let value = serde_json::to_vec(account)
            .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))?;
        let k = key(&account.target, &account.login);
        let event = AuditKind::AccountAdded {
            target: account.target.clone(),
            login: account.login.clone(),
            fingerprint: account.fingerprint.clone(),
        };
        self.write_with_audit(&tree, &k, Some(value), actor, event)
    }

    pub fn remove_account(
        &self,
        target: &str,
        login: &str,
        actor: Actor,
    ) -> Result<AuditEvent, StoreError> {
        let tree = self.tree(ACCOUNTS_TREE)?;
        let event = AuditKind::AccountRemoved {
            target: target.to_owned(),
            login: login.to_owned(),
        };
        self.write_with_audit(&tree, &key(target, login), None, actor, event)
    }

    pub fn account(&self, target: &str, login: &str) -> Result<Option<StoredAccount>, StoreError> {
        self.tree(ACCOUNTS_TREE)?
            .get(key(target, login))
            .map_err(|e| self.io(e))?
            .map(|v| {
                serde_json::from_slice(&v)
                    .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))
            })
            .transpose()
    }

    pub fn accounts(&self) -> Result<Vec<StoredAccount>, StoreError> {
        self.tree(ACCOUNTS_TREE)?
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(|e| self.io(e))?;
                serde_json::from_slice(&v)
                    .map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))
            })
            .collect()
    }
}
