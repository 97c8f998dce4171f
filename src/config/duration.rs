//! Durations as written in `connectors.toml`: an integer followed by a unit, `"500ms"`,
//! `"30s"`, `"15m"`, `"2h"`, `"10d"`.
//!
//! This file owns only the text → [`Duration`] conversion. Whether zero is allowed, or how
//! two durations must relate, is a rule of the key that holds the value and lives in the
//! schema walker. Decisions: fractions (`"1.5h"`), signs, blanks inside the value and bare
//! numbers (`"5"`) are rejected rather than guessed, so that a value means exactly one thing;
//! a value too large for [`Duration`] is an error, never a silent saturation.

use std::time::Duration;

/// The accepted units, longest first so that `ms` wins over `m`.
const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `"500ms"`, `"30s"`, `"15m"`, `"2h"`, `"10d"`: an unsigned integer and one unit.
///
/// The error is a complete sentence fragment meant to follow the key's name, e.g.
/// ``invalid duration `1.5h`: …``.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const FORMS: &str = "write an integer followed by ms, s, m, h or d, e.g. \"30s\"";
    if s.is_empty() {
        return Err(format!("empty duration; {FORMS}"));
    }
    if s.starts_with('-') {
        return Err(format!(
            "invalid duration `{s}`: a duration cannot be negative"
        ));
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("invalid duration `{s}`: {FORMS}"));
    }
    if unit.is_empty() {
        return Err(format!("invalid duration `{s}`: missing unit; {FORMS}"));
    }
    let Some(&(_, millis_per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "invalid duration `{s}`: unknown unit `{unit}`; {FORMS}"
        ));
    };
    let too_large = || format!("invalid duration `{s}`: too large");
    let count: u64 = number.parse().map_err(|_| too_large())?;
    let millis = count.checked_mul(millis_per_unit).ok_or_else(too_large)?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let table: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("0s", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("15m", Duration::from_secs(15 * 60)),
            ("2h", Duration::from_secs(2 * 3600)),
            ("10d", Duration::from_secs(10 * 86_400)),
            ("007s", Duration::from_secs(7)),
        ];
        for (input, expected) in table {
            assert_eq!(parse_duration(input).as_ref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn rejected_forms() {
        let table: &[(&str, &str)] = &[
            ("", "empty duration"),
            ("5", "missing unit"),
            ("1.5h", "unknown unit `.5h`"),
            ("0x", "unknown unit `x`"),
            ("-5s", "cannot be negative"),
            ("+5s", "write an integer"),
            ("s", "write an integer"),
            ("30 s", "unknown unit ` s`"),
            ("30S", "unknown unit `S`"),
            ("5sec", "unknown unit `sec`"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615d", "too large"),
        ];
        for (input, expected) in table {
            let err = parse_duration(input).expect_err(input);
            assert!(err.contains(expected), "{input}: {err}");
        }
    }
}
