//! Calendar days without a time zone library: a [`Day`] is a count of days since 1970-01-01
//! (proleptic Gregorian), converted with the well-known civil-from-days arithmetic. Both
//! outside systems speak in days here: Digistore24 sends `YYYY-MM-DD`, Konnektive's query
//! filters take `MM/DD/YYYY` and are day-granular.

use std::fmt;

/// A calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(i64);

const MS_PER_DAY: i64 = 86_400_000;

impl Day {
    /// The UTC day of a Unix-millisecond time.
    pub fn from_unix_ms(ms: i64) -> Day {
        Day(ms.div_euclid(MS_PER_DAY))
    }

    /// Parses `YYYY-MM-DD`; `None` for anything else or an impossible date.
    pub fn parse_iso(s: &str) -> Option<Day> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = s.get(r)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return None;
        }
        Some(Day::from_civil(y, m, d))
    }

    fn from_civil(y: i64, m: i64, d: i64) -> Day {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Day(era * 146_097 + doe - 719_468)
    }

    /// `(year, month, day)`.
    pub fn civil(self) -> (i64, i64, i64) {
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }

    pub fn add_days(self, n: i64) -> Day {
        Day(self.0 + n)
    }

    /// `MM/DD/YYYY`, as Konnektive's filters take it.
    pub fn us(self) -> String {
        let (y, m, d) = self.civil();
        format!("{m:02}/{d:02}/{y:04}")
    }
}

impl fmt::Display for Day {
    /// `YYYY-MM-DD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.civil();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The days (inclusive, UTC) during which an action may have reached the target: from the
/// job's creation to now. Reconciliation searches this window, widened by a day each side
/// because the target filters in its own time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayWindow {
    pub first: Day,
    pub last: Day,
}

/// RFC 3339 UTC with milliseconds (`2026-03-14T10:22:41.123Z`) of a Unix-millisecond time.
pub fn rfc3339_utc(ms: i64) -> String {
    let (y, mo, d) = Day::from_unix_ms(ms).civil();
    let of_day = ms.rem_euclid(MS_PER_DAY);
    let (h, mi, s, milli) = (
        of_day / 3_600_000,
        of_day / 60_000 % 60,
        of_day / 1000 % 60,
        of_day % 1000,
    );
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_format() {
        for (ms, iso, us) in [
            (0, "1970-01-01", "01/01/1970"),
            (951_782_400_000, "2000-02-29", "02/29/2000"),
            (1_741_947_761_000, "2025-03-14", "03/14/2025"),
            (-86_400_000, "1969-12-31", "12/31/1969"),
            (4_102_444_799_000, "2099-12-31", "12/31/2099"),
        ] {
            let day = Day::from_unix_ms(ms);
            assert_eq!(day.to_string(), iso, "{ms}");
            assert_eq!(day.us(), us, "{ms}");
            assert_eq!(Day::parse_iso(iso), Some(day), "{iso}");
        }
    }

    #[test]
    fn parse_refuses_what_is_not_a_date() {
        for bad in [
            "2026-02-30",
            "2026-3-02",
            "02/03/2026",
            "",
            "2026-13-01",
            "abcd-ef-gh",
        ] {
            assert_eq!(Day::parse_iso(bad), None, "{bad}");
        }
        assert_eq!(
            Day::parse_iso("2024-03-01").map(|d| d.add_days(-1).to_string()),
            Some("2024-02-29".to_owned())
        );
    }
}
