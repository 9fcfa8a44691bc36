//! Parsing of durations written the Go way (`250ms`, `5s`, `1m30s`, `1.5s`) into milliseconds.

use std::fmt;

use crate::cut::cut;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration such as `250ms`, `5s`, `2m`, `1h`, `1m30s` or `1.5s` into whole
/// milliseconds. A unit is required for every number; `us`/`ns` parts round down.
pub fn parse_millis(input: &str) -> Result<u64, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError(
            "empty duration, expected e.g. 5s or 250ms".into(),
        ));
    }
    // Values are quoted cut: an annotation may be a megabyte long.
    let shown = cut(input);
    let mut total_us: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(DurationError(format!(
                "{shown:?} is not a duration: expected a number at {:?}",
                cut(rest)
            )));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let per_unit_us: u128 = match unit {
            "ns" => 0,
            "us" | "µs" => 1,
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "" => {
                let n = cut(num);
                return Err(DurationError(format!(
                    "{shown:?} has no unit: write e.g. {n}s or {n}ms"
                )));
            }
            other => {
                return Err(DurationError(format!(
                    "{shown:?} has an unknown unit {:?}: use ms, s, m or h",
                    cut(other)
                )));
            }
        };
        let value: f64 = num.parse().map_err(|_| {
            DurationError(format!(
                "{shown:?} is not a duration: bad number {:?}",
                cut(num)
            ))
        })?;
        if !value.is_finite() {
            return Err(DurationError(format!("{shown:?} is out of range")));
        }
        total_us = total_us.saturating_add((value * per_unit_us as f64) as u128);
        rest = next;
    }
    u64::try_from(total_us / 1000).map_err(|_| DurationError(format!("{shown:?} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("5s"), Ok(5000));
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("1.5s"), Ok(1500));
        assert_eq!(parse_millis("2h"), Ok(7_200_000));
        assert_eq!(parse_millis(" 10s "), Ok(10_000));
    }

    #[test]
    fn rejects_bad_forms_with_reason() {
        assert!(parse_millis("").unwrap_err().0.contains("empty"));
        assert!(parse_millis("5").unwrap_err().0.contains("no unit"));
        assert!(parse_millis("5d").unwrap_err().0.contains("unknown unit"));
        assert!(parse_millis("-5s").is_err());
        assert!(parse_millis("abc").is_err());
        assert!(parse_millis("1..2s").is_err());
    }
}
