//! Who a client is: the bastion user owning a verified key, or named by a user certificate
//! from a CA that user trusts. Pure functions of the policy and the instant.

use russh::keys::{Certificate, HashAlg, PublicKey};

use bastion_core::policy::Policy;

/// The bastion user owning `key`.
pub fn key_owner(policy: &Policy, key: &PublicKey) -> Option<String> {
    policy
        .users
        .values()
        .find(|u| bastion_core::keys::is_pinned(key, &u.keys))
        .map(|u| u.name.clone())
}

/// The bastion user a certificate signs in: a user that trusts the certificate's CA and is
/// named among its principals, with the certificate a user certificate valid at `now`.
pub fn cert_owner(policy: &Policy, cert: &Certificate, now: u64) -> Result<String, String> {
    if cert.cert_type() != ssh_key::certificate::CertType::User {
        return Err("not a user certificate".into());
    }
    for u in policy.users.values() {
        for ca in u
            .trusted_cas
            .iter()
            .filter_map(|l| PublicKey::from_openssh(l).ok())
        {
            if cert.signature_key() != ca.key_data() {
                continue;
            }
            let fp = ca.fingerprint(HashAlg::Sha256);
            cert.validate_at(now, [&fp])
                .map_err(|e| format!("certificate from CA {fp}: {e}"))?;
            if cert.valid_principals().iter().any(|p| p == &u.name) {
                return Ok(u.name.clone());
            }
        }
    }
    Err("no user trusts this certificate's CA with a matching principal".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_core::policy::User;
    use ssh_key::{Algorithm, PrivateKey, certificate};

    fn cert(
        ca: &PrivateKey,
        principal: &str,
        after: u64,
        before: u64,
        kind: certificate::CertType,
    ) -> Certificate {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let mut b = certificate::Builder::new_with_random_nonce(
            &mut rand::rng(),
            key.public_key(),
            after,
            before,
        )
        .unwrap();
        b.cert_type(kind).unwrap();
        b.valid_principal(principal).unwrap();
        b.sign(ca).unwrap()
    }

    #[test]
    fn certificates_table() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let other_ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let mut policy = Policy::default();
        policy.users.insert(
            "carol".into(),
            User {
                name: "carol".into(),
                keys: vec![],
                trusted_cas: vec![ca.public_key().to_openssh().unwrap()],
            },
        );
        let now = 1_000_000;
        let user = certificate::CertType::User;
        let cases = [
            (cert(&ca, "carol", now - 10, now + 10, user), Ok("carol")),
            (
                cert(&ca, "carol", now - 20, now - 10, user),
                Err("certificate from CA"),
            ),
            (
                cert(&ca, "mallory", now - 10, now + 10, user),
                Err("matching principal"),
            ),
            (
                cert(&other_ca, "carol", now - 10, now + 10, user),
                Err("matching principal"),
            ),
            (
                cert(
                    &ca,
                    "carol",
                    now - 10,
                    now + 10,
                    certificate::CertType::Host,
                ),
                Err("not a user certificate"),
            ),
        ];
        for (i, (c, want)) in cases.into_iter().enumerate() {
            match (cert_owner(&policy, &c, now), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "case {i}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "case {i}: {e}"),
                (got, w) => panic!("case {i}: {got:?} vs {w:?}"),
            }
        }
    }
}
