//! Who a client is: the bastion user owning a verified key, or named by a user certificate
//! from a CA that user trusts, honoured in full as OpenSSH's sshd would: critical options
//! (`source-address`, `force-command`; any other refuses the certificate), extensions (what is
//! not permitted is refused, whatever the grant allows) and revocations. Pure functions of the
//! policy, the client's address and the instant.

use std::net::IpAddr;

use russh::keys::{Certificate, HashAlg, PublicKey};

use bastion_core::{cidr::Cidr, policy::Policy};

use super::events::Request;

/// What a signed-in identity may ask for beyond its grants: everything for a plain key, the
/// certificate's critical options and extensions for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restrictions {
    /// `force-command`: the one command this identity may run.
    pub force_command: Option<String>,
    pub pty: bool,
    pub port_forwarding: bool,
    pub agent_forwarding: bool,
}

impl Restrictions {
    pub const NONE: Restrictions = Restrictions {
        force_command: None,
        pty: true,
        port_forwarding: true,
        agent_forwarding: true,
    };

    /// Before sign-in: nothing.
    pub const DENY_ALL: Restrictions = Restrictions {
        force_command: None,
        pty: false,
        port_forwarding: false,
        agent_forwarding: false,
    };

    fn of(cert: &Certificate) -> Restrictions {
        let ext = |name: &str| cert.extensions().contains_key(name);
        Restrictions {
            force_command: cert.critical_options().get("force-command").cloned(),
            pty: ext("permit-pty"),
            port_forwarding: ext("permit-port-forwarding"),
            agent_forwarding: ext("permit-agent-forwarding"),
        }
    }

    /// Ok if the identity may make `request`, else why not.
    pub fn request(&self, request: &Request) -> Result<(), String> {
        let missing = |ext: &str| format!("the certificate does not permit this (no {ext})");
        match request {
            Request::Pty { .. } if !self.pty => return Err(missing("permit-pty")),
            Request::Agent if !self.agent_forwarding => {
                return Err(missing("permit-agent-forwarding"));
            }
            _ => {}
        }
        let Some(forced) = &self.force_command else {
            return Ok(());
        };
        match request {
            Request::Exec { command } if command == forced.as_bytes() => Ok(()),
            Request::Exec { .. } | Request::Shell | Request::Subsystem { .. } => Err(format!(
                "the certificate allows only the command `{forced}` (force-command)"
            )),
            _ => Ok(()),
        }
    }

    /// Ok if the identity may open forwards (`-L`, `-W`, `-J`).
    pub fn forward(&self) -> Result<(), String> {
        if self.port_forwarding {
            Ok(())
        } else {
            Err(
                "the certificate does not permit port forwarding (no permit-port-forwarding)"
                    .into(),
            )
        }
    }
}

/// The bastion user owning `key`.
pub fn key_owner(policy: &Policy, key: &PublicKey) -> Option<String> {
    policy
        .users
        .values()
        .find(|u| bastion_core::keys::is_pinned(key, &u.keys))
        .map(|u| u.name.clone())
}

/// The bastion user a certificate signs in from `client`, with what the certificate restricts:
/// a user that trusts the certificate's CA and is named among its principals, the certificate a
/// user certificate valid at `now`, not revoked, with only critical options bastion enforces and
/// `client` inside its `source-address`.
pub fn cert_owner(
    policy: &Policy,
    cert: &Certificate,
    client: IpAddr,
    now: u64,
) -> Result<(String, Restrictions), String> {
    if cert.cert_type() != ssh_key::certificate::CertType::User {
        return Err("not a user certificate".into());
    }
    // OpenSSH has no certificate chains: a CA is a plain key.
    if matches!(
        cert.signature_key(),
        ssh_key::public::KeyData::Certificate(_)
    ) {
        return Err("signed by a certificate, not by a CA key".into());
    }
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "force-command" => {}
            "source-address" => source_address(value, client)?,
            other => {
                return Err(format!(
                    "the certificate has critical option `{}`, which bastion does not enforce",
                    other.chars().take(64).collect::<String>()
                ));
            }
        }
    }
    if let Some(r) = revoked(policy, cert) {
        return Err(format!(
            "certificate serial {} (key id {:?}) is revoked ({})",
            cert.serial(),
            cert.key_id(),
            r
        ));
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
                return Ok((u.name.clone(), Restrictions::of(cert)));
            }
        }
    }
    Err("no user trusts this certificate's CA with a matching principal".into())
}

/// `source-address`: a comma-separated list of addresses and prefixes that must include the
/// client's real address. A list that does not parse refuses the certificate.
fn source_address(list: &str, client: IpAddr) -> Result<(), String> {
    let client = client.to_canonical();
    let mut any = false;
    for item in list.split(',') {
        let item = item.trim();
        let cidr = match item.parse::<IpAddr>() {
            Ok(a) => Cidr::source(a, 32, 128),
            Err(_) => item
                .parse::<Cidr>()
                .map_err(|e| format!("the certificate's source-address is malformed: {e}"))?,
        };
        any |= cidr.contains(client);
    }
    if any {
        Ok(())
    } else {
        Err(format!(
            "the certificate's source-address ({}) does not include {client}",
            list.chars().take(256).collect::<String>()
        ))
    }
}

/// The name of the revocation `cert` matches, if any.
fn revoked<'p>(policy: &'p Policy, cert: &Certificate) -> Option<&'p str> {
    policy
        .revocations
        .values()
        .find(|r| {
            (r.serial.is_some() || r.key_id.is_some())
                && r.serial.is_none_or(|s| s == cert.serial())
                && r.key_id.as_deref().is_none_or(|id| id == cert.key_id())
                && r.ca.as_deref().is_none_or(|ca| {
                    PublicKey::from_openssh(ca)
                        .is_ok_and(|ca| ca.key_data() == cert.signature_key())
                })
        })
        .map(|r| r.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_core::policy::User;
    use ssh_key::{Algorithm, PrivateKey, certificate};

    /// A certificate of `kind` for `subject` and `principal`, valid from `after` to `before`,
    /// shaped by `f`, signed by `ca`.
    fn issue(
        ca: &PrivateKey,
        subject: &PrivateKey,
        principal: &str,
        (after, before): (u64, u64),
        kind: certificate::CertType,
        f: impl FnOnce(&mut certificate::Builder) -> ssh_key::Result<()>,
    ) -> Certificate {
        let mut b = certificate::Builder::new_with_random_nonce(
            &mut rand::rng(),
            subject.public_key(),
            after,
            before,
        )
        .unwrap();
        b.cert_type(kind).unwrap();
        b.valid_principal(principal).unwrap();
        f(&mut b).unwrap();
        b.sign(ca).unwrap()
    }

    /// A policy where carol signs in only with certificates from `ca`.
    fn carol_trusting(ca: &PrivateKey) -> Policy {
        let mut policy = Policy::default();
        policy.users.insert(
            "carol".into(),
            User {
                name: "carol".into(),
                keys: vec![],
                trusted_cas: vec![ca.public_key().to_openssh().unwrap()],
            },
        );
        policy
    }

    fn random_key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn cert(
        ca: &PrivateKey,
        principal: &str,
        after: u64,
        before: u64,
        kind: certificate::CertType,
    ) -> Certificate {
        issue(ca, &random_key(), principal, (after, before), kind, |_| {
            Ok(())
        })
    }

    /// A user certificate for `principal` valid around 1 000 000, shaped by `f`.
    fn build(
        ca: &PrivateKey,
        principal: &str,
        f: impl FnOnce(&mut certificate::Builder) -> ssh_key::Result<()>,
    ) -> Certificate {
        let around = (1_000_000 - 10, 1_000_000 + 10);
        issue(
            ca,
            &random_key(),
            principal,
            around,
            certificate::CertType::User,
            f,
        )
    }

    #[test]
    fn extensions_and_force_command_narrow_what_may_be_asked() {
        let ca = random_key();
        let bare = Restrictions::of(&build(&ca, "carol", |b| {
            b.critical_option("force-command", "uptime").map(drop)
        }));
        let exec = |c: &str| Request::Exec {
            command: c.as_bytes().to_vec(),
        };
        assert_eq!(bare.request(&exec("uptime")), Ok(()));
        for refused in [
            exec("id"),
            Request::Shell,
            Request::Subsystem {
                name: "sftp".into(),
            },
        ] {
            let e = bare.request(&refused).unwrap_err();
            assert!(e.contains("only the command `uptime`"), "{refused:?}: {e}");
        }
        assert!(
            bare.request(&Request::Agent)
                .unwrap_err()
                .contains("permit-agent-forwarding")
        );
        assert!(
            bare.forward()
                .unwrap_err()
                .contains("permit-port-forwarding")
        );
        let pty = Request::Pty {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
            pix_width: 0,
            pix_height: 0,
            modes: vec![],
        };
        assert!(bare.request(&pty).unwrap_err().contains("permit-pty"));
        let full = Restrictions::of(&build(&ca, "carol", |b| {
            for ext in [
                "permit-pty",
                "permit-port-forwarding",
                "permit-agent-forwarding",
            ] {
                b.extension(ext, "")?;
            }
            Ok(())
        }));
        assert_eq!(full, Restrictions::NONE);
    }

    /// A certificate whose signing key is itself a certificate (OpenSSH has no chains) never
    /// signs anyone in, whoever signed that certificate.
    #[test]
    fn a_certificate_signed_by_a_certificate_is_refused() {
        let (ca, intermediate) = (random_key(), random_key());
        // The intermediate's own certificate, from the trusted CA.
        let around = (1_000_000 - 10, 1_000_000 + 10);
        let user = certificate::CertType::User;
        let intermediate_cert = issue(&ca, &intermediate, "carol", around, user, |_| Ok(()));
        // A certificate signed by the intermediate's key, then made to name the intermediate's
        // certificate as its signing key.
        let leaf = build(&intermediate, "carol", |_| Ok(()));
        let string = |blob: Vec<u8>| [&(blob.len() as u32).to_be_bytes()[..], &blob].concat();
        let plain = string(intermediate.public_key().to_bytes().unwrap());
        let chained = string(intermediate_cert.to_bytes().unwrap());
        let bytes = leaf.to_bytes().unwrap();
        let at = bytes
            .windows(plain.len())
            .position(|w| w == plain.as_slice())
            .expect("the signing key's blob is in the certificate");
        let forged = [&bytes[..at], &chained[..], &bytes[at + plain.len()..]].concat();
        let policy = carol_trusting(&ca);
        let parsed = Certificate::from_bytes(&forged).unwrap();
        let client = "198.51.100.10".parse().unwrap();
        let refused = cert_owner(&policy, &parsed, client, 1_000_000).unwrap_err();
        assert!(refused.contains("signed by a certificate"), "{refused}");
    }

    #[test]
    fn certificates_table() {
        let (ca, other_ca) = (random_key(), random_key());
        let mut policy = carol_trusting(&ca);
        let now = 1_000_000;
        policy.revocations.insert(
            "lost-laptop".into(),
            bastion_core::policy::Revocation {
                name: "lost-laptop".into(),
                ca: None,
                serial: Some(666),
                key_id: None,
            },
        );
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
            (
                build(&ca, "carol", |b| b.serial(666).map(drop)),
                Err("revoked (lost-laptop)"),
            ),
            (
                build(&ca, "carol", |b| {
                    b.critical_option("verify-required", "").map(drop)
                }),
                Err("critical option `verify-required`"),
            ),
            (
                build(&ca, "carol", |b| {
                    b.critical_option("source-address", "203.0.113.0/24,10.0.0.1")
                        .map(drop)
                }),
                Err("does not include 198.51.100.10"),
            ),
            (
                build(&ca, "carol", |b| {
                    b.critical_option("source-address", "198.51.100.0/25")
                        .map(drop)
                }),
                Ok("carol"),
            ),
            (
                build(&ca, "carol", |b| {
                    b.critical_option("source-address", "nonsense").map(drop)
                }),
                Err("source-address is malformed"),
            ),
        ];
        let client = "198.51.100.10".parse().unwrap();
        for (i, (c, want)) in cases.into_iter().enumerate() {
            match (cert_owner(&policy, &c, client, now), want) {
                (Ok((got, _)), Ok(w)) => assert_eq!(got, w, "case {i}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "case {i}: {e}"),
                (got, w) => panic!("case {i}: {got:?} vs {w:?}"),
            }
        }
    }
}
