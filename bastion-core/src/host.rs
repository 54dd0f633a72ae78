//! The host part of a forward (`ssh -L`/`-W`, `direct-tcpip`) read the way the target's
//! resolver would read it, so that policy judges the address that will be reached and not a
//! spelling of it. glibc's `getaddrinfo` (what OpenSSH's sshd calls) accepts every `inet_aton`
//! form: `3405803787`, `0xcb.0.113.11`, `0313.0.0161.013`, `203.0.28939`, `203.28939`; IPv6
//! includes IPv4-mapped addresses (`::ffff:203.0.113.11`), and NAT64 ones where the target's
//! network has NAT64, which reach the IPv4 host; a name may end in dots. Pure.

use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An address, in canonical form (an IPv4-mapped IPv6 address is its IPv4 address).
    Addr(IpAddr),
    /// A DNS name, lower-cased, without trailing dots: resolved by bastiond, then judged by
    /// address.
    Name(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("`{0}` is not a host name or address")]
    Invalid(String),
}

/// Reads a forward's host. Anything that is neither an address nor a plain DNS name (spaces,
/// which `inet_aton` stops at; control characters; `%` zone ids) is refused rather than guessed.
pub fn parse(text: &str) -> Result<Host, HostError> {
    let invalid = || HostError::Invalid(text.chars().take(256).collect());
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(v6) = inner.parse::<std::net::Ipv6Addr>() {
        return Ok(Host::Addr(embedded_v4(v6)));
    }
    let trimmed = inner.trim_end_matches('.');
    if trimmed.is_empty() || trimmed.len() > 253 || inner.len() != text.len() {
        return Err(invalid());
    }
    if let Some(v4) = inet_aton(trimmed) {
        return Ok(Host::Addr(IpAddr::V4(v4)));
    }
    let plain = trimmed.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    // A name made only of digits and dots that `inet_aton` refused (`1.2.3.4.5`, `999.1.1.1`)
    // is no name either.
    let numeric = trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !plain || numeric {
        return Err(invalid());
    }
    Ok(Host::Name(trimmed.to_ascii_lowercase()))
}

/// An IPv6 address that reaches an IPv4 host is that host: IPv4-mapped (`::ffff:a.b.c.d`),
/// the well-known NAT64 prefix (`64:ff9b::/96`, RFC 6052), and IPv4-compatible (`::a.b.c.d`,
/// deprecated but still parsed), apart from `::` and `::1`.
fn embedded_v4(v6: std::net::Ipv6Addr) -> IpAddr {
    let bits = u128::from(v6);
    let low = Ipv4Addr::from(bits as u32);
    let nat64 = bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000;
    let compatible = bits >> 32 == 0 && bits > 1;
    if nat64 || compatible {
        return IpAddr::V4(low);
    }
    IpAddr::V6(v6).to_canonical()
}

/// glibc's `inet_aton`: one to four parts, each decimal, octal (leading 0) or hex (0x); the
/// last part fills the bytes that remain.
fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u64> = text.split('.').map(number).collect::<Option<_>>()?;
    let (last, head) = parts.split_last()?;
    if head.len() > 3 || head.iter().any(|&p| p > 0xff) {
        return None;
    }
    let last_bits = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let value = head
        .iter()
        .enumerate()
        .fold(*last, |acc, (i, &p)| acc | p << (24 - 8 * i as u32));
    Some(Ipv4Addr::from(u32::try_from(value).ok()?))
}

fn number(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() && radix == 16 {
        // glibc reads a bare `0x` as 0.
        return Some(0);
    }
    if digits.is_empty() || digits.len() > 12 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_address_is_that_address() {
        let web2 = "203.0.113.11";
        for text in [
            "203.0.113.11",
            "203.0.113.11.",
            "3405803787",
            "0xcb00710b",
            "0xcb.0.113.11",
            "0313.0.0161.013",
            "203.0.28939",
            "203.28939",
            "::ffff:203.0.113.11",
            "[::ffff:203.0.113.11]",
            "::ffff:cb00:710b",
            "64:ff9b::cb00:710b",
            "64:ff9b::203.0.113.11",
            "::203.0.113.11",
        ] {
            assert_eq!(parse(text), Ok(Host::Addr(web2.parse().unwrap())), "{text}");
        }
        assert_eq!(parse("127.1"), Ok(Host::Addr("127.0.0.1".parse().unwrap())));
        assert_eq!(parse("::1"), Ok(Host::Addr("::1".parse().unwrap())));
        assert_eq!(
            parse("[2001:db8::1]"),
            Ok(Host::Addr("2001:db8::1".parse().unwrap()))
        );
    }

    #[test]
    fn names_are_names_and_the_rest_is_refused() {
        assert_eq!(parse("Web2.Lab."), Ok(Host::Name("web2.lab".into())));
        assert_eq!(parse("localhost"), Ok(Host::Name("localhost".into())));
        for bad in [
            "",
            ".",
            "203.0.113.11 x",
            "203.0.113.11\n",
            "256.0.0.1",
            "1.2.3.4.5",
            "203.0.65536",
            "fe80::1%eth0",
            "a..b",
            "09.1.1.1",
            "x/y",
            "[203.0.113.11",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
