//! Human durations as they appear in the config (`90s`, `10m`, `1h30m`, or a
//! bare number of seconds). Serialized back in the same short form.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// Parses `1h30m`, `90s`, `250ms`, `2d` or a bare number of seconds.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let bad = || format!("invalid duration {text:?} (use e.g. 90s, 10m, 1h30m)");
        if let Ok(secs) = t.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        let nanos = sum_terms(t, CONFIG_UNITS, false).map_err(|_| bad())?;
        let ms = u64::try_from(nanos / 1_000_000).map_err(|_| bad())?;
        Ok(Duration(std::time::Duration::from_millis(ms)))
    }
}

/// The units of bootpatch's own durations (config, CLI), in nanoseconds.
const CONFIG_UNITS: &[(&str, u128)] = &[
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// The units of Go's `time.ParseDuration`, in nanoseconds.
const GO_UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Why a run of `<number><unit>` terms did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermError {
    Empty,
    /// A term with no number before its unit (`m`, `h5m`).
    NoNumber,
    BadNumber(String),
    /// The text ends with a number (`10`, `1h30`).
    MissingUnit,
    UnknownUnit(String),
    TooLarge,
}

impl fmt::Display for TermError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TermError::Empty | TermError::NoNumber => f.write_str("not a duration"),
            TermError::BadNumber(n) => write!(f, "bad number {n:?}"),
            TermError::MissingUnit => f.write_str("missing unit"),
            TermError::UnknownUnit(u) => write!(f, "unknown unit {u:?}"),
            TermError::TooLarge => f.write_str("too large"),
        }
    }
}

/// The one duration grammar: a sequence of `<number><unit>` terms, summed in nanoseconds.
/// `fractions` allows a decimal point in the numbers (Go's `1.5s`).
fn sum_terms(text: &str, units: &[(&str, u128)], fractions: bool) -> Result<u128, TermError> {
    if text.is_empty() {
        return Err(TermError::Empty);
    }
    let is_num = |c: char| c.is_ascii_digit() || (fractions && c == '.');
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !is_num(c))
            .ok_or(TermError::MissingUnit)?;
        if n == 0 {
            return Err(TermError::NoNumber);
        }
        let number = &rest[..n];
        rest = &rest[n..];
        let u = rest.find(is_num).unwrap_or(rest.len());
        let unit = &rest[..u];
        rest = &rest[u..];
        let scale = units
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, s)| *s)
            .ok_or_else(|| TermError::UnknownUnit(unit.to_string()))?;
        let bad = || TermError::BadNumber(number.to_string());
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut nanos = whole.checked_mul(scale).ok_or(TermError::TooLarge)?;
        // The fraction, digit by digit, rounded down to the nanosecond as Go does.
        let mut place = scale;
        for d in frac.chars() {
            let d = d.to_digit(10).ok_or_else(bad)? as u128;
            place /= 10;
            nanos += d * place;
        }
        total = total.checked_add(nanos).ok_or(TermError::TooLarge)?;
    }
    Ok(total)
}

/// Parses a duration as Go's `time.ParseDuration` does (`600s`, `10m`, `1h30m`, `1.5s`,
/// `250ms`, `0`): the Kubernetes-style durations of the updater's drain policy. No sign is
/// accepted (a negative duration is never meant there).
pub fn parse_go(text: &str) -> Result<std::time::Duration, TermError> {
    let t = text.trim();
    if t == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let nanos = sum_terms(t, GO_UNITS, true)?;
    let nanos = u64::try_from(nanos).map_err(|_| TermError::TooLarge)?;
    Ok(std::time::Duration::from_nanos(nanos))
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = ms;
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
            ("ms", 1),
        ] {
            if rest >= size {
                write!(f, "{}{}", rest / size, unit)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 10m or 1h30m")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom(format!("invalid duration {v} (must not be negative)")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, secs, shown) in [
            ("90s", 90, "1m30s"),
            ("10m", 600, "10m"),
            ("1h30m", 5400, "1h30m"),
            ("2d", 172_800, "2d"),
            ("45", 45, "45s"),
            ("0", 0, "0s"),
        ] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(d.as_secs(), secs, "{text}");
            assert_eq!(d.to_string(), shown);
            assert_eq!(Duration::parse(shown).unwrap(), d);
        }
        assert_eq!(Duration::parse("250ms").unwrap().as_std().as_millis(), 250);
    }

    #[test]
    fn refuses_nonsense() {
        for t in [
            "",
            "m",
            "10x",
            "1h-5m",
            "ten minutes",
            "99999999999999999999d",
        ] {
            assert!(Duration::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn go_durations_as_go_parses_them() {
        for (text, nanos) in [
            ("0", 0u64),
            ("600s", 600_000_000_000),
            ("10m", 600_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5s", 1_500_000_000),
            (".5s", 500_000_000),
            ("250ms", 250_000_000),
            ("1us", 1_000),
            ("1\u{b5}s", 1_000),
            ("3ns", 3),
            ("1m0.000000001s", 60_000_000_001),
        ] {
            assert_eq!(parse_go(text).unwrap().as_nanos() as u64, nanos, "{text}");
        }
        for (text, err) in [
            ("", TermError::Empty),
            ("10", TermError::MissingUnit),
            ("1h30", TermError::MissingUnit),
            ("ten", TermError::NoNumber),
            ("-5s", TermError::NoNumber),
            ("10x", TermError::UnknownUnit("x".into())),
            ("2d", TermError::UnknownUnit("d".into())),
            (".s", TermError::BadNumber(".".into())),
            ("1.2.3s", TermError::BadNumber("1.2.3".into())),
        ] {
            assert_eq!(parse_go(text), Err(err), "{text}");
        }
    }
}
