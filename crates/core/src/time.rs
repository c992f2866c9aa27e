//! Time as data. The core's decisions never read a clock: callers pass `now` in, as epoch
//! milliseconds ([`SystemClock`] is here so every adapter shares one).
//! Durations in workflow files are strings such as `250ms`, `30s`, `5m`, `2h`, `1d`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The source of `now` for adapters. Production uses the system clock; tests use a manual one,
/// so no test sleeps.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> Millis;
}

/// Wall-clock time in epoch milliseconds: what every adapter in production reads (the one
/// place outside tests where time comes from the host).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        // A clock set before 1970 is a broken host; 0 keeps everything ordered instead of panicking.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A duration written in a workflow file, kept in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub u64);

impl Dur {
    pub fn ms(self) -> u64 {
        self.0
    }

    pub fn from_secs(s: u64) -> Dur {
        Dur(s.saturating_mul(1000))
    }

    /// Parses `250ms`, `30s`, `5m`, `2h`, `1d`, or a bare integer (milliseconds).
    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| {
            format!("`{text}` is not a duration (expected e.g. 250ms, 30s, 5m, 2h)")
        })?;
        let factor = match unit.trim() {
            "" | "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            other => {
                return Err(format!(
                    "`{text}` has unknown unit `{other}` (expected ms, s, m, h or d)"
                ))
            }
        };
        let ms = value * factor;
        if !(0.0..=1.0e15).contains(&ms) {
            return Err(format!("`{text}` is out of range"));
        }
        Ok(Dur(ms.round() as u64))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms != 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms != 0 && ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(ms) => Ok(Dur(ms)),
            Raw::Text(t) => Dur::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        let table = [
            ("250ms", Some(250)),
            ("30s", Some(30_000)),
            ("1.5s", Some(1_500)),
            ("5m", Some(300_000)),
            ("2h", Some(7_200_000)),
            ("1d", Some(86_400_000)),
            ("42", Some(42)),
            ("", None),
            ("5 parsecs", None),
            ("-3s", None),
        ];
        for (text, want) in table {
            assert_eq!(Dur::parse(text).ok().map(|d| d.0), want, "{text}");
        }
    }

    #[test]
    fn displays_round_trip() {
        for ms in [0, 1, 999, 1000, 60_000, 90_000, 3_600_000] {
            let d = Dur(ms);
            assert_eq!(Dur::parse(&d.to_string()).ok(), Some(d));
        }
    }
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds (`2026-12-03T13:04:05.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod rfc3339_tests {
    #[test]
    fn formats_utc_with_millis() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_614_265_330_000, "2021-02-25T15:02:10.000Z"),
            (1_796_302_245_123, "2026-12-03T12:50:45.123Z"),
        ] {
            assert_eq!(super::rfc3339_ms(ms), want, "{ms}");
        }
    }
}
