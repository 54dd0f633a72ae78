//! What the client-facing SSH listeners offer (`ssh.algorithms`). `modern`, the default, is what
//! an SSH scanner finds clean: hybrid post-quantum and X25519 key exchange only, AEAD or
//! encrypt-then-MAC, strict key exchange (Terrapin), and no compression at all, so no
//! decompressor ever runs on what an unauthenticated client sends. `compatible` adds the large
//! finite-field groups, the encrypt-and-MAC MACs and compression after sign-in, for old clients.
//!
//! Not offered in either: SHA-1 anywhere, the 2048-bit group 14, NIST curves for key exchange,
//! CBC ciphers. `sntrup761x25519-sha512` (what OpenSSH 9.0–9.8 prefers) is not offered because
//! russh does not implement it; those clients agree on `curve25519-sha256`.

use std::borrow::Cow;

use bastion_core::config::Algorithms;
use russh::{Preferred, cipher, compression, kex, keys::Algorithm, mac};

const KEX_MODERN: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

const KEX_COMPATIBLE: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::DH_G16_SHA512,
    kex::DH_G18_SHA512,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::AES_256_CTR,
    cipher::AES_128_CTR,
];

const MACS_MODERN: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

const MACS_COMPATIBLE: &[mac::Name] = &[
    mac::HMAC_SHA512_ETM,
    mac::HMAC_SHA256_ETM,
    mac::HMAC_SHA512,
    mac::HMAC_SHA256,
];

const COMPRESSION_MODERN: &[compression::Name] = &[compression::NONE];

/// `zlib@openssh.com` starts only once the client has signed in (delayed compression); plain
/// `zlib` would inflate whatever an unauthenticated client sends.
const COMPRESSION_COMPATIBLE: &[compression::Name] = &[compression::NONE, compression::ZLIB_LEGACY];

/// What the server offers. The key list is also `server-sig-algs`, the signature algorithms
/// clients may sign in with: every key type stays but RSA with SHA-1.
pub fn server_preferred(set: Algorithms) -> Preferred {
    let (kex, mac, compression) = match set {
        Algorithms::Modern => (KEX_MODERN, MACS_MODERN, COMPRESSION_MODERN),
        Algorithms::Compatible => (KEX_COMPATIBLE, MACS_COMPATIBLE, COMPRESSION_COMPATIBLE),
    };
    let key: Vec<Algorithm> = Preferred::DEFAULT
        .key
        .iter()
        .filter(|a| !matches!(a, Algorithm::Rsa { hash: None }))
        .cloned()
        .collect();
    Preferred {
        kex: Cow::Borrowed(kex),
        key: Cow::Owned(key),
        cipher: Cow::Borrowed(CIPHERS),
        mac: Cow::Borrowed(mac),
        compression: Cow::Borrowed(compression),
        ..Preferred::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T: AsRef<str>>(list: &[T]) -> Vec<&str> {
        list.iter().map(AsRef::as_ref).collect()
    }

    #[test]
    fn modern_offers_nothing_a_scanner_flags() {
        let p = server_preferred(Algorithms::Modern);
        let kex = names(&p.kex);
        assert_eq!(kex[0], "mlkem768x25519-sha256", "post-quantum first");
        assert!(kex.contains(&"kex-strict-s-v00@openssh.com"));
        for k in &kex {
            assert!(
                !k.contains("group14") && !k.contains("sha1") && !k.contains("nistp"),
                "{k}"
            );
        }
        assert!(
            names(&p.mac)
                .iter()
                .all(|m| m.ends_with("-etm@openssh.com"))
        );
        assert_eq!(names(&p.compression), ["none"]);
        assert!(!p.key.contains(&Algorithm::Rsa { hash: None }));
    }

    #[test]
    fn compatible_compresses_only_after_sign_in() {
        let p = server_preferred(Algorithms::Compatible);
        assert_eq!(names(&p.compression), ["none", "zlib@openssh.com"]);
        assert!(names(&p.kex).contains(&"diffie-hellman-group16-sha512"));
        assert!(!names(&p.kex).iter().any(|k| k.contains("group14")));
    }
}
