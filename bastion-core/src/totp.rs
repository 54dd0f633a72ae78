//! TOTP, the second factor (RFC 6238 over RFC 4226's HOTP): HMAC-SHA1, 30-second steps, six
//! digits, which is what every authenticator app does by default. Pure: the caller keeps the
//! secret sealed and remembers the last step used (a code is accepted once).

use ring::hmac;

pub const STEP_SECS: u64 = 30;
pub const DIGITS: u32 = 6;
/// 160 bits, RFC 4226's recommendation for HMAC-SHA1.
pub const SECRET_LEN: usize = 20;
/// Steps either side of now whose code is accepted (clock drift, typing time).
pub const SKEW_STEPS: u64 = 1;

/// The code for time step `step`.
pub fn code(secret: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &step.to_be_bytes());
    let mac = mac.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    bin % 10u32.pow(DIGITS)
}

/// The time step of `unix_secs`.
pub fn step_at(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// The step whose code `typed` is, among those around `unix_secs`; `None` when it is none of
/// them (or is not six digits). Every candidate is computed, so timing says nothing about which.
pub fn matching_step(secret: &[u8], typed: &str, unix_secs: u64) -> Option<u64> {
    let typed = typed.trim();
    if typed.len() != DIGITS as usize || !typed.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let typed: u32 = typed.parse().ok()?;
    let now = step_at(unix_secs);
    let mut found = None;
    for step in now.saturating_sub(SKEW_STEPS)..=now + SKEW_STEPS {
        if code(secret, step) == typed && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// The `otpauth://` URI authenticator apps enrol from (also drawn as a QR code).
pub fn uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        base32(secret)
    )
}

/// The secret as it is sealed at rest (sealed secrets are text): lower-case hex.
pub fn sealable(secret: &[u8]) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(base16ct::lower::encode_string(secret))
}

/// The secret back from [`sealable`] text.
pub fn unsealed(text: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    base16ct::lower::decode_vec(text)
        .ok()
        .map(zeroize::Zeroizing::new)
}

/// RFC 4648 base32 without padding, as otpauth URIs carry secrets.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, truncated to six digits.
    #[test]
    fn rfc_6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59, 287_082),
            (1_111_111_109, 81_804),
            (1_111_111_111, 50_471),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
        ] {
            assert_eq!(code(secret, step_at(t)), want, "t={t}");
        }
    }

    #[test]
    fn codes_match_their_step_and_its_neighbours_only() {
        let secret = b"12345678901234567890";
        let t = 1_111_111_109;
        let now = step_at(t);
        for step in [now - 1, now, now + 1] {
            let typed = format!("{:06}", code(secret, step));
            assert_eq!(matching_step(secret, &typed, t), Some(step));
        }
        let old = format!("{:06}", code(secret, now - 2));
        assert_eq!(matching_step(secret, &old, t), None);
        for bad in ["", "12345", "1234567", "abcdef", "081804 1"] {
            assert_eq!(matching_step(secret, bad, t), None, "{bad:?}");
        }
    }

    #[test]
    fn a_secret_survives_sealing_as_text() {
        let secret = [0u8, 1, 0xfe, 0xff];
        assert_eq!(
            unsealed(&sealable(&secret)).as_deref().map(|v| &v[..]),
            Some(&secret[..])
        );
        assert!(unsealed("not hex").is_none());
    }

    #[test]
    fn base32_and_uri() {
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert!(
            uri("bastion", "alice", b"f").starts_with("otpauth://totp/bastion:alice?secret=MY&")
        );
    }
}
