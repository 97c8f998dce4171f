//! Money as integer minor units (cents). Digistore24 sends amounts as decimal strings with
//! two decimals ("97.00", "-97.00"); Konnektive takes plain decimals with a dot. Floating
//! point never touches an amount.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount in minor units of its currency (the currency travels beside it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an amount with at most two decimals: {0:?}")]
pub struct MoneyError(pub String);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_minor(minor: i64) -> Self {
        Money(minor)
    }

    pub fn minor(self) -> i64 {
        self.0
    }

    /// Parses `"97"`, `"97.5"`, `"97.00"`, `"-97.00"`, `" 1,50"` is refused (no comma, no spaces).
    pub fn parse_decimal(s: &str) -> Result<Money, MoneyError> {
        let err = || MoneyError(s.to_owned());
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (whole, frac) = match digits.split_once('.') {
            Some((w, f)) => (w, f),
            None => (digits, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        if digits.contains('.') && frac.is_empty() {
            return Err(err());
        }
        let whole: i64 = whole.parse().map_err(|_| err())?;
        let frac_minor: i64 = match frac.len() {
            0 => 0,
            1 => frac.parse::<i64>().map_err(|_| err())? * 10,
            _ => frac.parse::<i64>().map_err(|_| err())?,
        };
        let minor = whole
            .checked_mul(100)
            .and_then(|v| v.checked_add(frac_minor))
            .ok_or_else(err)?;
        Ok(Money(if negative { -minor } else { minor }))
    }

    pub fn abs(self) -> Money {
        Money(self.0.abs())
    }

    /// Divides into `parts` equal shares, if that is exact.
    pub fn checked_div_exact(self, parts: u32) -> Option<Money> {
        let parts = i64::from(parts);
        if parts == 0 || self.0 % parts != 0 {
            return None;
        }
        Some(Money(self.0 / parts))
    }
}

impl fmt::Display for Money {
    /// `"97.00"`, `"-0.50"`: the decimal form both outside systems use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_formats_digistore24_sends() {
        let table = [
            ("97.00", 9700, "97.00"),
            ("-97.00", -9700, "-97.00"),
            ("0.5", 50, "0.50"),
            ("12", 1200, "12.00"),
            ("-0.05", -5, "-0.05"),
            ("+3.10", 310, "3.10"),
        ];
        for (input, minor, printed) in table {
            let m = Money::parse_decimal(input).expect(input);
            assert_eq!(m.minor(), minor, "{input}");
            assert_eq!(m.to_string(), printed, "{input}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        for bad in [
            "",
            "-",
            "1,50",
            "1.505",
            "abc",
            "1.",
            ".5",
            " 1.00",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(Money::parse_decimal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn divides_only_when_exact() {
        assert_eq!(
            Money::from_minor(9700).checked_div_exact(2),
            Some(Money::from_minor(4850))
        );
        assert_eq!(Money::from_minor(100).checked_div_exact(3), None);
        assert_eq!(Money::from_minor(100).checked_div_exact(0), None);
    }
}
