//! Five-field cron schedules (`minute hour day-of-month month day-of-week`)
//! with lists, ranges, steps, month and day names, and the `@daily` family.
//! Day-of-month and day-of-week combine as in Vixie cron: when both are
//! restricted, a day matching either one matches; a field starting with `*`
//! (`*/2` too) is unrestricted, and then both must match. Zone handling is the
//! caller's: [`Schedule::next_after`] works on wall-clock civil time.

use crate::time::{days_in_month, weekday, Civil};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CronError {}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

/// Parses one field into a bit set (bit n = value n); returns whether the
/// field restricts anything (is not `*`).
fn parse_field(text: &str, f: &Field) -> Result<(u64, bool), CronError> {
    let err = |why: &str| CronError(format!("{} field {text:?}: {why}", f.name));
    let value = |s: &str| -> Result<u32, CronError> {
        if let Some(i) = f.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + f.min);
        }
        let v: u32 = digits(s).ok_or_else(|| err(&format!("{s:?} is not a number")))?;
        // Day of week accepts 7 as Sunday.
        let max = if f.name == "day-of-week" { 7 } else { f.max };
        if v < f.min || v > max {
            return Err(err(&format!("{v} is outside {}-{}", f.min, max)));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: u32 =
                    digits(s).ok_or_else(|| err(&format!("step {s:?} is not a number")))?;
                if s == 0 {
                    return Err(err("a step of 0"));
                }
                (r, s)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (f.min, f.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(err(&format!("range {a}-{b} runs backwards")));
            }
            (a, b)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { f.max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    if f.name == "day-of-week" && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1;
    }
    // Vixie cron: a field whose text starts with `*` (`*/2` too) is unrestricted.
    Ok((bits, !text.starts_with('*')))
}

/// A plain decimal number: digits only (`str::parse` would take `+5`, which other crons read
/// differently).
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, CronError> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => return Err(CronError(format!("unknown macro {t:?}"))),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        }
        let spec = [
            Field {
                name: "minute",
                min: 0,
                max: 59,
                names: &[],
            },
            Field {
                name: "hour",
                min: 0,
                max: 23,
                names: &[],
            },
            Field {
                name: "day-of-month",
                min: 1,
                max: 31,
                names: &[],
            },
            Field {
                name: "month",
                min: 1,
                max: 12,
                names: &MONTHS,
            },
            Field {
                name: "day-of-week",
                min: 0,
                max: 6,
                names: &DAYS,
            },
        ];
        let mut out = [(0u64, false); 5];
        for (i, f) in spec.iter().enumerate() {
            out[i] = parse_field(fields[i], f)?;
        }
        Ok(Schedule {
            minutes: out[0].0,
            hours: out[1].0 as u32,
            days: out[2].0 as u32,
            months: out[3].0 as u16,
            weekdays: out[4].0 as u8,
            days_restricted: out[2].1,
            weekdays_restricted: out[4].1,
        })
    }

    fn day_matches(&self, y: i64, m: u32, d: u32) -> bool {
        let dom = self.days & (1 << d) != 0;
        let dow = self.weekdays & (1 << weekday(y, m, d)) != 0;
        // Vixie cron: OR only when both are restricted; otherwise AND, which for a
        // plain `*` (every bit set) is the other field alone, and for `*/2` keeps
        // its step.
        if self.days_restricted && self.weekdays_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// Whether the schedule fires at this minute.
    pub fn matches(&self, c: &Civil) -> bool {
        self.minutes & (1 << c.minute) != 0
            && self.hours & (1 << c.hour) != 0
            && self.months & (1 << c.month) != 0
            && self.day_matches(c.year, c.month, c.day)
    }

    /// The first minute strictly after `after` at which the schedule fires,
    /// within the next eight years (None for a date that never comes, such
    /// as 30 February).
    pub fn next_after(&self, after: &Civil) -> Option<Civil> {
        let (mut y, mut m, mut d) = (after.year, after.month, after.day);
        let mut first_day = true;
        for _ in 0..(8 * 366) {
            if self.months & (1 << m) != 0 && self.day_matches(y, m, d) {
                let start = if first_day {
                    after.hour * 60 + after.minute + 1
                } else {
                    0
                };
                for minute_of_day in start..24 * 60 {
                    let (h, mi) = (minute_of_day / 60, minute_of_day % 60);
                    if self.hours & (1 << h) != 0 && self.minutes & (1 << mi) != 0 {
                        return Some(Civil {
                            year: y,
                            month: m,
                            day: d,
                            hour: h,
                            minute: mi,
                            second: 0,
                        });
                    }
                }
            }
            first_day = false;
            d += 1;
            if d > days_in_month(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: u32, d: u32, h: u32, mi: u32) -> Civil {
        Civil {
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: 0,
        }
    }

    #[test]
    fn next_times() {
        let s = Schedule::parse("0 0 * * *").unwrap();
        assert_eq!(
            s.next_after(&at(2026, 11, 24, 19, 3)),
            Some(at(2026, 11, 25, 0, 0))
        );
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        // Saturday 28 November 2026 -> Monday 30th 09:00.
        assert_eq!(
            s.next_after(&at(2026, 11, 28, 10, 0)),
            Some(at(2026, 11, 30, 9, 0))
        );
        assert_eq!(
            s.next_after(&at(2026, 11, 30, 9, 0)),
            Some(at(2026, 11, 30, 9, 15))
        );
        let s = Schedule::parse("0 3 29 2 *").unwrap();
        assert_eq!(
            s.next_after(&at(2026, 1, 1, 0, 0)),
            Some(at(2028, 2, 29, 3, 0))
        );
        let s = Schedule::parse("0 3 30 2 *").unwrap();
        assert_eq!(s.next_after(&at(2026, 1, 1, 0, 0)), None);
    }

    #[test]
    fn dom_or_dow_when_both_restricted() {
        // The 1st of the month, or any Sunday.
        let s = Schedule::parse("0 0 1 * 0").unwrap();
        assert!(s.matches(&at(2026, 11, 29, 0, 0))); // Sunday
        assert!(s.matches(&at(2026, 12, 1, 0, 0))); // Tuesday the 1st
        assert!(!s.matches(&at(2026, 12, 2, 0, 0)));
        // Vixie cron: `*/2` is unrestricted, so the days must be odd AND Mondays
        // (crontab(5): a field is restricted when it does not start with `*`).
        let s = Schedule::parse("0 0 */2 * 1").unwrap();
        assert!(!s.matches(&at(2026, 12, 3, 0, 0))); // odd, a Thursday
        assert!(!s.matches(&at(2026, 12, 14, 0, 0))); // a Monday, even
        assert!(s.matches(&at(2026, 12, 7, 0, 0))); // odd and a Monday
        assert_eq!(
            s.next_after(&at(2026, 12, 1, 12, 0)),
            Some(at(2026, 12, 7, 0, 0))
        );
        let s = Schedule::parse("0 0 13 * */2").unwrap();
        assert_eq!(
            s.next_after(&at(2026, 12, 14, 0, 0)),
            Some(at(2027, 2, 13, 0, 0)) // the next 13th on a Sun/Tue/Thu/Sat
        );
        // crontab(5)'s example: 04:30 on the 1st and 15th, plus every Friday.
        let s = Schedule::parse("30 4 1,15 * 5").unwrap();
        assert_eq!(
            s.next_after(&at(2026, 12, 11, 5, 0)),
            Some(at(2026, 12, 15, 4, 30))
        );
        assert_eq!(
            s.next_after(&at(2026, 12, 1, 12, 0)),
            Some(at(2026, 12, 4, 4, 30))
        );
        // Sunday as 7, and macros.
        assert_eq!(
            Schedule::parse("0 0 * * 7").unwrap(),
            Schedule::parse("@weekly").unwrap()
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (t, want) in [
            ("61 * * * *", "minute field \"61\""),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * foo *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step of 0"),
            ("0 0 1 * +1", "\"+1\" is not a number"),
            ("*/+5 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("* * * *", "expected 5 fields"),
            ("@often", "unknown macro"),
        ] {
            let e = Schedule::parse(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }
}
