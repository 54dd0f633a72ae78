//! The archive's layout in object storage, as pure values: where a bucket and prefix come
//! from (`s3://BUCKET/PREFIX`), which key each record gets, and what a key says about its
//! record. Many appliances share one bucket; every key starts with the appliance's id.
//!
//! ```text
//! PREFIX/APPLIANCE/sessions/YYYY-MM-DD/ID.bsa        one finished session (object.rs)
//! PREFIX/APPLIANCE/audit/FIRST-LAST.jsonl           audit events FIRST..=LAST (chunks.rs)
//! ```
//! Numbers are zero-padded to 20 digits so that keys list in record order.

pub mod chunks;
pub mod object;

use std::fmt;

/// Where the archive lives: a bucket and a key prefix (without slashes at either end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

impl Location {
    pub fn parse(url: &str) -> Result<Location, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{url}` is not an s3://BUCKET[/PREFIX] URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(format!(
                "bucket `{bucket}`: 3 to 63 lower-case letters, digits, dots and dashes"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(format!(
                "prefix `{prefix}`: empty, `.` or `..` path segment"
            ));
        }
        Ok(Location {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    /// The key prefix of one appliance's records (ending in `/`).
    pub fn appliance(&self, appliance: &str) -> String {
        if self.prefix.is_empty() {
            format!("{appliance}/")
        } else {
            format!("{}/{appliance}/", self.prefix)
        }
    }

    /// The key of session `id` of `appliance`, started at `started_micros`.
    pub fn session_key(&self, appliance: &str, id: u64, started_micros: u64) -> String {
        let (y, m, d, ..) = crate::clock::civil(started_micros / 1_000_000);
        format!(
            "{}sessions/{y:04}-{m:02}-{d:02}/{id:020}.bsa",
            self.appliance(appliance)
        )
    }

    /// The key of audit events `first..=last` of `appliance`.
    pub fn audit_key(&self, appliance: &str, first: u64, last: u64) -> String {
        format!(
            "{}audit/{first:020}-{last:020}.jsonl",
            self.appliance(appliance)
        )
    }

    /// What `key` holds, if it is one of this location's record keys.
    pub fn parse_key(&self, key: &str) -> Option<(String, ArchivedKey)> {
        let rest = if self.prefix.is_empty() {
            key
        } else {
            key.strip_prefix(&self.prefix)?.strip_prefix('/')?
        };
        let (appliance, rest) = rest.split_once('/')?;
        check_appliance_id(appliance).ok()?;
        let parsed = if let Some(rest) = rest.strip_prefix("sessions/") {
            let (day, file) = rest.split_once('/')?;
            let id = file.strip_suffix(".bsa")?;
            (day.len() == 10 && id.len() == 20).then_some(())?;
            ArchivedKey::Session {
                day: day.into(),
                id: id.parse().ok()?,
            }
        } else {
            let range = rest.strip_prefix("audit/")?.strip_suffix(".jsonl")?;
            let (first, last) = range.split_once('-')?;
            (first.len() == 20 && last.len() == 20).then_some(())?;
            ArchivedKey::Audit {
                first: first.parse().ok()?,
                last: last.parse().ok()?,
            }
        };
        Some((appliance.into(), parsed))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A record key of the archive, read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ArchivedKey {
    /// A session, under the UTC day it started (`YYYY-MM-DD`).
    Session {
        day: String,
        id: u64,
    },
    Audit {
        first: u64,
        last: u64,
    },
}

/// An appliance id: 1 to 64 letters, digits, dots, dashes and underscores (a key segment that
/// needs no escaping).
pub fn check_appliance_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}`: 1 to 64 letters, digits, dots, dashes and underscores"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        let l = Location::parse("s3://audit-archive/site/a/").unwrap();
        assert_eq!(
            l,
            Location {
                bucket: "audit-archive".into(),
                prefix: "site/a".into()
            }
        );
        assert_eq!(l.to_string(), "s3://audit-archive/site/a");
        assert_eq!(Location::parse("s3://bkt").unwrap().prefix, "");
        for bad in [
            "http://bucket",
            "s3://",
            "s3://B",
            "s3://UPPER",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_and_sort_in_record_order() {
        let l = Location::parse("s3://bkt/p").unwrap();
        // 2026-11-27 00:00:01 UTC.
        let s = l.session_key("edge-1", 42, 1_795_737_601_000_000);
        assert_eq!(s, "p/edge-1/sessions/2026-11-27/00000000000000000042.bsa");
        assert_eq!(
            l.parse_key(&s),
            Some((
                "edge-1".into(),
                ArchivedKey::Session {
                    day: "2026-11-27".into(),
                    id: 42
                }
            ))
        );
        let a = l.audit_key("edge-1", 1, 9);
        assert_eq!(
            l.parse_key(&a),
            Some(("edge-1".into(), ArchivedKey::Audit { first: 1, last: 9 }))
        );
        assert!(l.audit_key("x", 9, 10) < l.audit_key("x", 10, 11));
        assert_eq!(l.parse_key("other/edge-1/audit/1-2.jsonl"), None);
        assert_eq!(l.parse_key("p/edge-1/sessions/2026-11-27/42.bsa"), None);
    }

    #[test]
    fn appliance_ids_are_plain_key_segments() {
        assert!(check_appliance_id("edge-1.site_a").is_ok());
        for bad in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_appliance_id(bad).is_err(), "{bad:?}");
        }
    }
}
