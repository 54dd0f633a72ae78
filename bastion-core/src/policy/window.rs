//! Recurring validity windows: days of the week and a time-of-day range, in UTC. Pure arithmetic
//! on Unix seconds, so evaluation stays IO-free and testable at any instant.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Days (bit 0 = Sunday) and minutes since midnight UTC: `start` inclusive, `end` exclusive.
/// `start > end` wraps past midnight (e.g. 22:00-06:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    days: u8,
    start: u16,
    end: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "window `{0}`: expected DAYS HH:MM-HH:MM, e.g. `mon-fri 08:00-18:00` or `sat,sun 00:00-24:00`"
)]
pub struct WindowError(String);

impl Window {
    /// Does the window contain the instant `unix_secs`?
    pub fn contains(&self, unix_secs: u64) -> bool {
        let days_since_epoch = unix_secs / 86_400;
        // 1970-01-01 was a Thursday (day 4 with Sunday = 0).
        let weekday = ((days_since_epoch + 4) % 7) as u8;
        let minute = ((unix_secs % 86_400) / 60) as u16;
        if self.start <= self.end {
            self.on(weekday) && minute >= self.start && minute < self.end
        } else if minute >= self.start {
            self.on(weekday)
        } else {
            // The early-morning part belongs to the window that started the day before.
            minute < self.end && self.on((weekday + 6) % 7)
        }
    }

    /// When the window, open at `unix_secs`, closes: the end of this occurrence, or of the
    /// occurrences that follow it without a gap (`mon-fri 00:00-24:00` closes on Saturday).
    /// `Some(unix_secs)` when it is not open; `None` when it never closes (`daily 00:00-24:00`).
    pub fn closes_after(&self, unix_secs: u64) -> Option<u64> {
        if !self.contains(unix_secs) {
            return Some(unix_secs);
        }
        let mut t = unix_secs;
        // A week of back-to-back occurrences at most; longer means always open.
        for _ in 0..8 {
            let midnight = t - t % 86_400;
            let minute = ((t % 86_400) / 60) as u16;
            let end = u64::from(self.end) * 60;
            let close = if self.start > self.end && minute >= self.start {
                midnight + 86_400 + end
            } else {
                midnight + end
            };
            if !self.contains(close) {
                return Some(close);
            }
            t = close;
        }
        None
    }

    fn on(&self, weekday: u8) -> bool {
        self.days & (1 << weekday) != 0
    }
}

fn parse_days(s: &str) -> Option<u8> {
    let day = |d: &str| DAYS.iter().position(|x| *x == d);
    let mut mask = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None if part == "daily" => mask = 0x7f,
            None => mask |= 1 << day(part)?,
        }
    }
    Some(mask)
}

fn parse_minute(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || WindowError(s.to_owned());
        let (days, times) = s.trim().split_once(' ').ok_or_else(err)?;
        let (start, end) = times.trim().split_once('-').ok_or_else(err)?;
        let w = Window {
            days: parse_days(&days.to_ascii_lowercase()).ok_or_else(err)?,
            start: parse_minute(start).ok_or_else(err)?,
            end: parse_minute(end).ok_or_else(err)?,
        };
        if w.start == w.end {
            return Err(err());
        }
        Ok(w)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.on(*d))
            .map(|d| DAYS[d as usize])
            .collect();
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02}",
            days.join(","),
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-27 was a Friday. 00:00 UTC that day:
    const FRI: u64 = 1_795_737_600;
    const H: u64 = 3600;

    #[test]
    fn friday_reference_is_a_friday() {
        let w: Window = "fri 00:00-24:00".parse().unwrap();
        assert!(w.contains(FRI));
        assert!(!w.contains(FRI - 1));
        assert!(!w.contains(FRI + 24 * H));
    }

    #[test]
    fn table() {
        let cases: &[(&str, u64, bool)] = &[
            ("mon-fri 08:00-18:00", FRI + 8 * H, true),
            ("mon-fri 08:00-18:00", FRI + 18 * H, false),
            ("mon-fri 08:00-18:00", FRI + 7 * H + 3599, false),
            ("mon-fri 08:00-18:00", FRI + 24 * H + 9 * H, false), // Saturday
            ("sat,sun 00:00-24:00", FRI + 24 * H + 9 * H, true),
            ("fri-mon 12:00-13:00", FRI + 3 * 24 * H + 12 * H, true), // Monday, wraps through the week
            ("fri 22:00-06:00", FRI + 23 * H, true),
            ("fri 22:00-06:00", FRI + 24 * H + 5 * H, true), // Saturday early, started Friday
            ("fri 22:00-06:00", FRI + 5 * H, false),         // Friday early belongs to Thursday
            ("daily 00:00-01:00", FRI + 30 * 60, true),
        ];
        for (spec, t, want) in cases {
            let w: Window = spec.parse().unwrap();
            assert_eq!(w.contains(*t), *want, "{spec} at +{}s", t - FRI);
        }
    }

    #[test]
    fn closing_times() {
        let cases: &[(&str, u64, Option<u64>)] = &[
            ("mon-fri 08:00-18:00", FRI + 10 * H, Some(FRI + 18 * H)),
            ("mon-fri 08:00-18:00", FRI + 19 * H, Some(FRI + 19 * H)), // closed already
            ("fri 22:00-06:00", FRI + 23 * H, Some(FRI + 30 * H)),
            ("fri 22:00-06:00", FRI + 24 * H + H, Some(FRI + 30 * H)), // the early part
            // Back-to-back days close when the run of days ends (Friday's midnight here).
            ("mon-fri 00:00-24:00", FRI + 10 * H, Some(FRI + 24 * H)),
            ("thu,fri 20:00-24:00", FRI + 21 * H, Some(FRI + 24 * H)),
            ("daily 00:00-24:00", FRI + 10 * H, None),
            (
                "daily 12:00-12:01",
                FRI + 12 * H + 30,
                Some(FRI + 12 * H + 60),
            ),
        ];
        for (spec, t, want) in cases {
            let w: Window = spec.parse().unwrap();
            assert_eq!(w.closes_after(*t), *want, "{spec} at +{}s", t - FRI);
        }
    }

    #[test]
    fn rejects_and_round_trips() {
        for bad in [
            "",
            "mon",
            "mon 8-18",
            "mon 08:00-08:00",
            "xyz 08:00-09:00",
            "mon 25:00-26:00",
            "mon 08:60-09:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
        let w: Window = "mon-fri 08:00-18:30".parse().unwrap();
        assert_eq!(w.to_string(), "mon,tue,wed,thu,fri 08:00-18:30");
        assert_eq!(w.to_string().parse::<Window>().unwrap(), w);
    }
}
