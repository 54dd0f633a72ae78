//! Wall-clock time as bastion reads and shows it: Unix seconds, UTC, no time zone database.

/// Now, in Unix seconds (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The civil date and time of Unix seconds `secs` (proleptic Gregorian, UTC):
/// `(year, month, day, hour, minute, second)`. Howard Hinnant's days-to-civil.
pub fn civil(secs: u64) -> (i64, u64, u64, u64, u64, u64) {
    let rem = secs % 86_400;
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for Unix seconds.
pub fn utc_text(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for Unix microseconds (RFC 3339, as RFC 5424 wants).
pub fn rfc3339_micros(micros: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(micros / 1_000_000);
    format!(
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z",
        micros % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00");
        assert_eq!(utc_text(1_795_737_600 + 3661), "2026-11-27 01:01:01");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_text(4_102_444_799), "2099-12-31 23:59:59");
    }
}
