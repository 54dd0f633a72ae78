//! The appliance's own key material: the SSH host key its listeners present, the host CA that
//! certifies that key for each target bastiond answers for, and the user CA that
//! signs the short-lived certificates bastiond uses upstream (principal = the target login). All
//! are generated on first start into `ssh.keys_dir` (mode 0600) and never leave the appliance.

use std::{
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bastion_core::keys::{Sealed, Secret};
use ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey, certificate};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key {}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("key {} is readable by others (mode {mode:o}); it must be 0600", path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("signing a certificate: {0}")]
    Sign(String),
}

/// The appliance's keys. `Debug` never prints key material.
pub struct ApplianceKeys {
    pub host_key: PrivateKey,
    pub user_ca: PrivateKey,
    /// Signs the host certificates bastiond presents for each target it answers for, so a
    /// client trusting this one CA (`@cert-authority`) never sees a host-key prompt.
    pub host_ca: PrivateKey,
    /// Seals closed session records (OpenSSH SshSig, verifiable with `ssh-keygen -Y verify`).
    pub audit_key: Arc<PrivateKey>,
    /// Encrypts stored target-account keys (ChaCha20-Poly1305), so the store alone never
    /// yields a usable credential.
    seal: ring::aead::LessSafeKey,
}

impl std::fmt::Debug for ApplianceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApplianceKeys(<secret>)")
    }
}

/// Longest validity of an upstream certificate (issue: at most 5 minutes).
pub const MAX_CERT_VALIDITY: Duration = Duration::from_secs(300);
/// Allowance for clock skew between the appliance and targets.
const BACKDATE: Duration = Duration::from_secs(30);

impl ApplianceKeys {
    /// Loads the keys from `dir`, generating any that is missing.
    pub fn load_or_generate(dir: &Path) -> Result<ApplianceKeys, KeyError> {
        std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(ApplianceKeys {
            host_key: load_or_generate(&dir.join("host_ed25519"), "bastion host key")?,
            user_ca: load_or_generate(&dir.join("user_ca_ed25519"), "bastion user CA")?,
            host_ca: load_or_generate(&dir.join("host_ca_ed25519"), "bastion host CA")?,
            audit_key: Arc::new(load_or_generate(
                &dir.join("audit_ed25519"),
                "bastion audit key",
            )?),
            seal: load_or_generate_seal(&dir.join("seal.key"))?,
        })
    }

    /// Encrypts `plain`, bound to `context` (what it is for: opening it elsewhere fails).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<Sealed, KeyError> {
        let mut nonce = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| KeyError::Sign("no randomness for a nonce".into()))?;
        let mut buf = plain.to_vec();
        self.seal
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyError::Sign("sealing failed".into()))?;
        Ok(Sealed {
            nonce,
            ciphertext: buf,
        })
    }

    /// Decrypts what [`seal`](Self::seal) made for the same `context`.
    pub fn open(&self, context: &str, sealed: &Sealed) -> Result<Secret, KeyError> {
        // Wiped on every way out, the failed ones included.
        let mut buf = zeroize::Zeroizing::new(sealed.ciphertext.clone());
        let plain = self
            .seal
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(sealed.nonce),
                ring::aead::Aad::from(context.as_bytes()),
                &mut buf[..],
            )
            .map_err(|_| {
                KeyError::Sign(format!(
                    "sealed secret for {context} does not open (wrong key or altered)"
                ))
            })?;
        let text = std::str::from_utf8(plain)
            .map_err(|_| KeyError::Sign("sealed secret is not text".into()))?;
        Ok(Secret::new(text.to_owned()))
    }

    pub fn user_ca_public(&self) -> String {
        self.user_ca.public_key().to_openssh().unwrap_or_default()
    }

    pub fn host_ca_public(&self) -> String {
        self.host_ca.public_key().to_openssh().unwrap_or_default()
    }

    /// A host certificate for bastiond's own host key, valid for `principals` (the addresses
    /// and names of one target) from slightly before now for `validity`.
    pub fn host_certificate(
        &self,
        principals: &[String],
        validity: Duration,
    ) -> Result<Certificate, KeyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        let sign = |e: ssh_key::Error| KeyError::Sign(e.to_string());
        let mut b = certificate::Builder::new_with_random_nonce(
            &mut rand::rng(),
            self.host_key.public_key(),
            (now - BACKDATE).as_secs(),
            (now + validity).as_secs(),
        )
        .map_err(sign)?;
        b.cert_type(certificate::CertType::Host).map_err(sign)?;
        b.key_id(format!("bastion-host:{}", principals.join(",")))
            .map_err(sign)?;
        for p in principals {
            b.valid_principal(p).map_err(sign)?;
        }
        b.sign(&self.host_ca).map_err(sign)
    }

    /// A fresh key pair for one upstream session, and a certificate for it: principal `login`,
    /// key id naming the bastion user and session, valid from slightly before now for `validity`.
    pub fn session_credential(
        &self,
        login: &str,
        key_id: &str,
        validity: Duration,
    ) -> Result<(PrivateKey, Certificate), KeyError> {
        let mut rng = rand::rng();
        let key = PrivateKey::random(&mut rng, Algorithm::Ed25519)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        let validity = validity.min(MAX_CERT_VALIDITY);
        let sign = |e: ssh_key::Error| KeyError::Sign(e.to_string());
        let mut b = certificate::Builder::new_with_random_nonce(
            &mut rng,
            key.public_key(),
            (now - BACKDATE).as_secs(),
            (now + validity).as_secs(),
        )
        .map_err(sign)?;
        b.cert_type(certificate::CertType::User).map_err(sign)?;
        b.key_id(key_id).map_err(sign)?;
        b.valid_principal(login).map_err(sign)?;
        for ext in [
            "permit-pty",
            "permit-agent-forwarding",
            "permit-port-forwarding",
        ] {
            b.extension(ext, "").map_err(sign)?;
        }
        let cert = b.sign(&self.user_ca).map_err(sign)?;
        Ok((key, cert))
    }
}

/// Reads a private file, refusing one that others can read; `None` if it does not exist.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Creates a private file (mode 0600 from the start, and only if absent, so two starts never
/// race each other into different keys) and makes it durable.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    std::io::Write::write_all(&mut f, bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

fn load_or_generate(path: &Path, comment: &str) -> Result<PrivateKey, KeyError> {
    let format = |reason: String| KeyError::Format {
        path: path.to_owned(),
        reason,
    };
    if let Some(bytes) = read_private(path)? {
        // The parser's own words alone ("PEM preamble contains invalid data (NUL byte)") send an
        // operator looking for the wrong thing; say first what the file should have been.
        return PrivateKey::from_openssh(&bytes)
            .map_err(|e| format(format!("not a readable OpenSSH private key ({e})")));
    }
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| format(e.to_string()))?;
    key.set_comment(comment);
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format(e.to_string()))?;
    write_private(path, text.as_bytes())?;
    let public = key.public_key().to_openssh().unwrap_or_default() + "\n";
    std::fs::write(path.with_extension("pub"), public).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    tracing::info!(key = %path.display(), "generated {comment}");
    Ok(key)
}

fn load_or_generate_seal(path: &Path) -> Result<ring::aead::LessSafeKey, KeyError> {
    let bytes = match read_private(path)? {
        Some(bytes) => bytes,
        None => {
            let mut k = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k).map_err(
                |_| KeyError::Format {
                    path: path.to_owned(),
                    reason: "no randomness".into(),
                },
            )?;
            write_private(path, &k)?;
            k
        }
    };
    let key =
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &bytes).map_err(|_| {
            KeyError::Format {
                path: path.to_owned(),
                reason: format!("expected 32 bytes, found {}", bytes.len()),
            }
        })?;
    Ok(ring::aead::LessSafeKey::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_certificates_carry_the_right_fields() {
        let dir = tempfile::tempdir().unwrap();
        let a = ApplianceKeys::load_or_generate(dir.path()).unwrap();
        let b = ApplianceKeys::load_or_generate(dir.path()).unwrap();
        assert_eq!(
            a.user_ca_public(),
            b.user_ca_public(),
            "second start reuses the keys"
        );
        assert_eq!(format!("{a:?}"), "ApplianceKeys(<secret>)");

        let (key, cert) = a
            .session_credential("root", "alice/s42", Duration::from_secs(3600))
            .unwrap();
        assert_eq!(cert.valid_principals(), ["root"]);
        assert_eq!(cert.key_id(), "alice/s42");
        assert_eq!(cert.public_key(), key.public_key().key_data());
        assert!(
            cert.valid_before() - cert.valid_after() <= (MAX_CERT_VALIDITY + BACKDATE).as_secs()
        );
        let ca_fp = a.user_ca.public_key().fingerprint(ssh_key::HashAlg::Sha256);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        cert.validate_at(now, [&ca_fp])
            .expect("signed by the user CA and valid now");

        let host = a
            .host_certificate(
                &["203.0.113.10".into(), "web1".into()],
                Duration::from_secs(600),
            )
            .unwrap();
        assert_eq!(host.cert_type(), certificate::CertType::Host);
        assert_eq!(host.valid_principals(), ["203.0.113.10", "web1"]);
        assert_eq!(host.public_key(), a.host_key.public_key().key_data());
        let host_ca_fp = a.host_ca.public_key().fingerprint(ssh_key::HashAlg::Sha256);
        host.validate_at(now, [&host_ca_fp])
            .expect("signed by the host CA");
        assert!(
            host.validate_at(now, [&ca_fp]).is_err(),
            "not by the user CA"
        );
    }

    #[test]
    fn sealed_secrets_open_only_in_their_context() {
        let dir = tempfile::tempdir().unwrap();
        let k = ApplianceKeys::load_or_generate(dir.path()).unwrap();
        let sealed = k.seal("web1/root", b"private key text").unwrap();
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"private"));
        assert_eq!(
            k.open("web1/root", &sealed).unwrap().expose(),
            "private key text"
        );
        assert!(k.open("web2/root", &sealed).is_err(), "context is bound");
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(
            k.open("web1/root", &altered).is_err(),
            "tampering is detected"
        );
        // A restart reads the same seal key.
        let again = ApplianceKeys::load_or_generate(dir.path()).unwrap();
        assert_eq!(
            again.open("web1/root", &sealed).unwrap().expose(),
            "private key text"
        );
    }

    #[test]
    fn unreadable_key_is_refused_naming_file_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("host_ed25519");
        std::fs::write(&p, "this is not an OpenSSH private key\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = ApplianceKeys::load_or_generate(dir.path()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("host_ed25519") && text.contains("not a readable OpenSSH private key"),
            "{text}"
        );
    }

    #[test]
    fn exposed_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ApplianceKeys::load_or_generate(dir.path()).unwrap();
        let p = dir.path().join("user_ca_ed25519");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ApplianceKeys::load_or_generate(dir.path()).unwrap_err();
        assert!(e.to_string().contains("must be 0600"), "{e}");
    }
}
