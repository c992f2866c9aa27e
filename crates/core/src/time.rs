//! Time as data. The core never reads a clock: callers pass `now` in, as epoch milliseconds.
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
