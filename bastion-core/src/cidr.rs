//! Protected prefixes: parsing `203.0.113.0/24`-style text into the exact keys the eBPF LPM tries use.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 or IPv6 prefix with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("`{0}` is not a prefix: expected ADDRESS/LENGTH such as 203.0.113.0/24")]
    MissingLength(String),
    #[error("`{0}` has an invalid address")]
    BadAddress(String),
    #[error("`{text}` has an invalid prefix length (0..={max})")]
    BadLength { text: String, max: u8 },
    #[error("`{text}` has host bits set; did you mean {canonical}?")]
    HostBits { text: String, canonical: Cidr },
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let max = max_len(addr);
        if prefix_len > max {
            return Err(CidrError::BadLength {
                text: format!("{addr}/{prefix_len}"),
                max,
            });
        }
        let canonical = Cidr {
            addr: mask(addr, prefix_len),
            prefix_len,
        };
        if canonical.addr != addr {
            return Err(CidrError::HostBits {
                text: format!("{addr}/{prefix_len}"),
                canonical,
            });
        }
        Ok(canonical)
    }

    /// The prefix around `ip` that counts as one source: `v4_len` bits of an IPv4 address,
    /// `v6_len` of an IPv6 one (an IPv4-mapped IPv6 address is its IPv4 address). One machine
    /// is usually handed a whole IPv6 /64, so counting per /128 would count nothing.
    pub fn source(ip: IpAddr, v4_len: u8, v6_len: u8) -> Cidr {
        let ip = ip.to_canonical();
        let len = if ip.is_ipv4() {
            v4_len.min(32)
        } else {
            v6_len.min(128)
        };
        Cidr {
            addr: mask(ip, len),
            prefix_len: len,
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }

    /// Whether every address of `inner` is in this prefix.
    pub fn covers(&self, inner: &Cidr) -> bool {
        inner.prefix_len >= self.prefix_len && self.contains(inner.addr)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::MissingLength(s.to_owned()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(s.to_owned()))?;
        let len: u8 = len.parse().map_err(|_| CidrError::BadLength {
            text: s.to_owned(),
            max: max_len(addr),
        })?;
        Cidr::new(addr, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_its_prefix() {
        let cases = [
            ("198.51.100.77", "198.51.100.0/24"),
            ("::ffff:198.51.100.77", "198.51.100.0/24"),
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ];
        for (ip, want) in cases {
            assert_eq!(
                Cidr::source(ip.parse().unwrap(), 24, 64).to_string(),
                want,
                "{ip}"
            );
        }
    }

    #[test]
    fn parses_and_rejects() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("203.0.113.0/24", Ok("203.0.113.0/24")),
            ("203.0.113.10/32", Ok("203.0.113.10/32")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("2001:db8::/32", Ok("2001:db8::/32")),
            (
                "203.0.113.1/24",
                Err("host bits set; did you mean 203.0.113.0/24?"),
            ),
            ("203.0.113.0", Err("is not a prefix")),
            ("203.0.113.0/33", Err("invalid prefix length (0..=32)")),
            ("2001:db8::/129", Err("invalid prefix length (0..=128)")),
            ("web1/24", Err("invalid address")),
            ("203.0.113.0/x", Err("invalid prefix length")),
        ];
        for (input, want) in cases {
            let got = input.parse::<Cidr>().map(|c| c.to_string());
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(*w, g, "{input}"),
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{input}: {e}"),
                (w, g) => panic!("{input}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn contains_respects_family_and_prefix() {
        let c: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(c.contains("203.0.113.200".parse().unwrap()));
        assert!(!c.contains("203.0.114.1".parse().unwrap()));
        assert!(!c.contains("::ffff:203.0.113.1".parse().unwrap()));
    }
}
