//! The archive's credentials, read from a file only its owner can read.

use std::{os::unix::fs::PermissionsExt, path::Path};

use bastion_core::keys::Secret;
use serde::Deserialize;

#[derive(Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    access_key_id: String,
    secret_access_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: mode {mode:04o} lets others read the archive's secret; `chmod 600 {path}`")]
    Loose { path: String, mode: u32 },
    #[error("{path}: {message} (expected access_key_id = \"...\" and secret_access_key = \"...\")")]
    Parse { path: String, message: String },
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let shown = path.display().to_string();
        let read = |source| CredentialsError::Read {
            path: shown.clone(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::Loose { path: shown, mode });
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(read)?);
        let file: File = toml::from_str(&text).map_err(|e| CredentialsError::Parse {
            path: shown.clone(),
            message: e.message().to_owned(),
        })?;
        if file.access_key_id.is_empty() || file.secret_access_key.is_empty() {
            return Err(CredentialsError::Parse {
                path: shown,
                message: "empty key id or secret".into(),
            });
        }
        Ok(Credentials {
            access_key_id: file.access_key_id,
            secret_access_key: Secret::new(file.secret_access_key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_private_well_formed_file_is_accepted() {
        let dir = std::env::temp_dir().join(format!("bastion-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            "access_key_id = \"GK1\"\nsecret_access_key = \"s3cr3t\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::load(&p).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::load(&p).unwrap();
        assert_eq!(c.access_key_id, "GK1");
        assert_eq!(c.secret_access_key.expose(), "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        std::fs::write(&p, "access_key = 1\n").unwrap();
        assert!(matches!(
            Credentials::load(&p),
            Err(CredentialsError::Parse { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
