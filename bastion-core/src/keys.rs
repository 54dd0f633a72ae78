//! Key material as plain values: secrets that never print and are wiped on drop, sealed
//! secrets as stored, and the OpenSSH public-key helpers policy and sessions share. Loading,
//! generating and using the appliance's own keys is IO and lives in the daemon.

use ssh_key::PublicKey;
use zeroize::Zeroizing;

/// Secret text: never printed, wiped on drop.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// A sealed secret as stored: nonce and ciphertext (with tag), base64-free raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

/// What a stored account key is sealed to: it opens only for the same target and login (the
/// daemon seals with it when an account key is stored, the session opens with it).
pub fn account_context(target: &str, login: &str) -> String {
    format!("bastion-account:{target}:{login}")
}

/// What a user's TOTP secret is sealed to: it opens only for that user.
pub fn totp_context(user: &str) -> String {
    format!("bastion-totp:{user}")
}

/// The SHA256 fingerprint of an OpenSSH public key line (or the line's error).
pub fn fingerprint(key_line: &str) -> String {
    PublicKey::from_openssh(key_line.trim())
        .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
        .unwrap_or_else(|e| format!("unreadable key: {e}"))
}

/// True if `key` is one of the pinned OpenSSH public key lines.
pub fn is_pinned(key: &PublicKey, pinned: &[String]) -> bool {
    pinned
        .iter()
        .filter_map(|line| PublicKey::from_openssh(line).ok())
        .any(|p| p.key_data() == key.key_data())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
    }

    #[test]
    fn pinned_keys_match_by_key_not_comment() {
        let line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRo5m5Eexf3gzkvIHJ2Tu5S2egvpjinGN953fEA85WX a";
        let key = PublicKey::from_openssh(line).unwrap();
        let other_comment = line.replace(" a", " b");
        assert!(is_pinned(&key, &[other_comment]));
        assert!(!is_pinned(&key, &["not a key".into()]));
        assert!(fingerprint(line).starts_with("SHA256:"));
        assert!(fingerprint("junk").starts_with("unreadable key"));
    }
}
