//! The patch policy's `schedule`: five-field cron with Vixie cron's meaning, in the policy's
//! time zone.
//!
//! The grammar is bootpatch's (`bootpatch::cron`): the same one bootpatch checks the `schedule`
//! of its own config against, with errors that name the field. The times come from croner, a
//! maintained cron crate with time zones, set up to mean what Vixie cron means:
//!
//! - Day of month and day of week: when both are restricted, a day matching either runs (`30 4
//!   1,15 * 5` is the 1st, the 15th and every Friday); a field starting with `*`, `*/2`
//!   included, is not restricted, and then both must match (`0 0 */2 * 1` is an odd-numbered
//!   day that is a Monday). croner's default ORs unless a field is exactly `*`, so `*/2` would
//!   OR; its `dom_and_dow` option ANDs always. The parser takes `dom_and_dow` exactly when one
//!   of the two fields starts with `*`, which gives Vixie's rule in every case.
//! - `N/step` is N to the field's end in steps (croner's `sloppy_ranges`, as bootpatch reads it).
//! - Daylight saving time, as Vixie cron: a fixed time the clock skips runs when the clock
//!   jumps (02:30 on the spring-forward night runs at 03:00); a fixed time the clock repeats
//!   runs once, the first time; a job with `*` or a step in its minute or hour runs on the wall
//!   clock as it is, in both halves of a repeated hour.
//!
//! croner's own extensions (`L`, `W`, `#`, `?`, the `+` prefix, seconds and years) are refused by
//! the grammar: a schedule means the same to every cron that reads it.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    cron: croner::Cron,
}

impl Schedule {
    /// Parses a five-field expression or a macro (`@daily`, ...). The error says which field is
    /// wrong and why; the caller adds the key and the value.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        bootpatch::cron::Schedule::parse(text).map_err(|e| e.to_string())?;
        let fields = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t => t,
        };
        let f: Vec<&str> = fields.split_whitespace().collect();
        let vixie_and = f[2].starts_with('*') || f[4].starts_with('*');
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .dom_and_dow(vixie_and)
            .sloppy_ranges(true)
            .build()
            .parse(&f.join(" "))
            .map_err(|e| e.to_string())?;
        Ok(Schedule { cron })
    }

    /// The first occurrence strictly after `after`, the schedule read in `tz`; None when there
    /// is none (30 February).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// One row: what it shows, the expression, the instant to start after, and the next
    /// occurrences expected, all in RFC 3339.
    type Row<'a> = (&'a str, &'a str, &'a str, &'a [&'a str]);

    /// Checks each row's next occurrences, the schedule read in `tz`.
    fn check(tz: &str, table: &[Row]) {
        let tz: Tz = tz.parse().unwrap();
        for (what, expr, after, want) in table {
            let s = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let mut at = t(after);
            let mut got = Vec::new();
            for _ in 0..want.len() {
                at = s
                    .next_after(at, tz)
                    .unwrap_or_else(|| panic!("{expr}: none after {at}"));
                got.push(at);
            }
            let want: Vec<_> = want.iter().map(|w| t(w)).collect();
            assert_eq!(got, want, "{what}: {expr}");
        }
    }

    /// Expressions with their next times, worked out by hand from cron's documentation
    /// (crontab(5): its EXAMPLE CRON FILE, and the note on day-of-month and day-of-week) and
    /// cron(8) on daylight saving time. 2026-12-01 is a Tuesday.
    #[test]
    fn next_times_as_vixie_cron() {
        let after = "2026-12-01T12:00:00Z";
        let table: &[Row] = &[
            // crontab(5)'s examples.
            (
                "five minutes after midnight",
                "5 0 * * *",
                after,
                &["2026-12-02T00:05:00Z"],
            ),
            (
                "14:15 on the 1st",
                "15 14 1 * *",
                after,
                &["2026-12-01T14:15:00Z", "2027-01-01T14:15:00Z"],
            ),
            (
                "22:00 on weekdays",
                "0 22 * * 1-5",
                after,
                &["2026-12-01T22:00:00Z", "2026-12-02T22:00:00Z"],
            ),
            (
                "23 past every even hour",
                "23 0-23/2 * * *",
                after,
                &["2026-12-01T12:23:00Z", "2026-12-01T14:23:00Z"],
            ),
            (
                "04:05 every Sunday",
                "5 4 * * sun",
                after,
                &["2026-12-06T04:05:00Z", "2026-12-13T04:05:00Z"],
            ),
            // Both restricted: either matches. The 1st and 15th, plus every Friday.
            (
                "1st, 15th and Fridays",
                "30 4 1,15 * 5",
                after,
                &[
                    "2026-12-04T04:30:00Z",
                    "2026-12-11T04:30:00Z",
                    "2026-12-15T04:30:00Z",
                    "2026-12-18T04:30:00Z",
                    "2026-12-25T04:30:00Z",
                    "2027-01-01T04:30:00Z",
                ],
            ),
            (
                "1st and Sundays",
                "0 0 1 * 0",
                after,
                &[
                    "2026-12-06T00:00:00Z",
                    "2026-12-13T00:00:00Z",
                    "2026-12-20T00:00:00Z",
                    "2026-12-27T00:00:00Z",
                    "2027-01-01T00:00:00Z",
                ],
            ),
            // A field starting with `*` is unrestricted, steps included: both must match.
            (
                "odd days that are Mondays",
                "0 0 */2 * 1",
                after,
                &[
                    "2026-12-07T00:00:00Z",
                    "2026-12-21T00:00:00Z",
                    "2027-01-11T00:00:00Z",
                    "2027-01-25T00:00:00Z",
                ],
            ),
            (
                "the 13th on Sun/Tue/Thu/Sat",
                "0 0 13 * */2",
                after,
                &["2026-12-13T00:00:00Z", "2027-02-13T00:00:00Z"],
            ),
            ("weekly macro", "@weekly", after, &["2026-12-06T00:00:00Z"]),
            (
                "from 5 in steps of 15",
                "5/15 3 * * *",
                after,
                &["2026-12-02T03:05:00Z", "2026-12-02T03:20:00Z"],
            ),
            (
                "29 February",
                "0 3 29 2 *",
                after,
                &["2028-02-29T03:00:00Z"],
            ),
        ];
        check("UTC", table);
    }

    #[test]
    fn daylight_saving_time_as_vixie_cron() {
        // New York: 2026-03-08 02:00 EST jumps to 03:00 EDT; 2026-11-01 02:00 EDT goes back to
        // 01:00 EST. cron(8): a job at a fixed time the clock skips runs after the change, one
        // the clock repeats runs once; wildcard jobs run on the new time.
        let ny = "America/New_York";
        let table: &[Row] = &[
            (
                "02:30 skipped: runs at the jump",
                "30 2 * * *",
                "2026-03-07T12:00:00Z",
                &[
                    "2026-03-08T07:00:00Z", // 03:00 EDT
                    "2026-03-09T06:30:00Z", // 02:30 EDT
                ],
            ),
            (
                "01:30 repeated: runs once",
                "30 1 * * *",
                "2026-10-31T12:00:00Z",
                &[
                    "2026-11-01T05:30:00Z", // 01:30 EDT
                    "2026-11-02T06:30:00Z", // 01:30 EST, the next day
                ],
            ),
            (
                "every 30 minutes through the repeated hour",
                "*/30 * * * *",
                "2026-11-01T04:45:00Z",
                &[
                    "2026-11-01T05:00:00Z",
                    "2026-11-01T05:30:00Z", // 01:00, 01:30 EDT
                    "2026-11-01T06:00:00Z",
                    "2026-11-01T06:30:00Z", // 01:00, 01:30 EST
                    "2026-11-01T07:00:00Z",
                ],
            ),
            (
                "hourly over the skipped hour",
                "0 * * * *",
                "2026-03-08T06:30:00Z",
                &[
                    "2026-03-08T07:00:00Z",
                    "2026-03-08T08:00:00Z", // 03:00, 04:00 EDT
                ],
            ),
        ];
        check(ny, table);
    }

    #[test]
    fn never_and_refused() {
        let s = Schedule::parse("0 3 30 2 *").unwrap();
        assert_eq!(s.next_after(t("2026-01-01T00:00:00Z"), Tz::UTC), None);
        // Bad fields are named; croner's extensions are not cron.
        for (expr, want) in [
            ("61 * * * *", "minute field"),
            ("* * * * 8", "day-of-week"),
            ("0 0 L * *", "day-of-month"),
            ("0 0 15W * *", "day-of-month"),
            ("0 0 * * 5#2", "day-of-week"),
            ("0 0 ? * *", "day-of-month"),
            ("0 0 1 * +1", "day-of-week"),
            ("0 0 1 1 * 2027", "expected 5 fields"),
            ("/10 * * * *", "minute"),
            ("@reboot", "unknown macro"),
        ] {
            let e = Schedule::parse(expr).unwrap_err();
            assert!(e.contains(want), "{expr}: {e}");
        }
    }
}
