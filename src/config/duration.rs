//! Durations written as `"30d"`, `"12h"`, `"15m"`, `"90s"`, `"500ms"` or sums of them
//! (`"1h30m"`): the `[ledger]` settings and the `--since` / `--until` filters.

use std::time::Duration;

/// Parses `"30d"`, `"1h30m"`, `"2w"`, `"45s"`, `"250ms"` (units `ms`, `s`, `m`, `h`, `d`,
/// `w`; no unit is an error, so `"30"` cannot silently mean seconds or days).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let example = "write e.g. \"30d\", \"12h\", \"15m\" or \"1h30m\"";
    if text.is_empty() {
        return Err(format!("empty duration; {example}"));
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration; {example}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3_600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "w" => n.checked_mul(7 * 86_400).map(Duration::from_secs),
            "" => return Err(format!("{text:?} has no unit; {example}")),
            other => {
                return Err(format!(
                    "unknown duration unit {other:?} in {text:?}; use ms, s, m, h, d or w"
                ))
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("{text:?} is too large"))?;
    }
    Ok(total)
}

/// `"30d"`, `"1h30m"`, `"90s"`: the shortest text [`parse_duration`] reads back to the same
/// whole seconds (below a second: milliseconds).
#[must_use]
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    let mut left = secs;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= size {
            out.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("30d"), Duration::from_secs(30 * 86_400));
        assert_eq!(ok("1h30m"), Duration::from_secs(5_400));
        assert_eq!(ok(" 2w "), Duration::from_secs(14 * 86_400));
        assert_eq!(ok("45s"), Duration::from_secs(45));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("10min"), Duration::from_secs(600));
        assert_eq!(ok("1h 5m"), Duration::from_secs(3_900));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "30",
            "d",
            "5 parsecs",
            "1h30",
            "-1h",
            "99999999999999999999d",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3y")
            .unwrap_err()
            .contains("unknown duration unit"));
        assert!(parse_duration(&format!("{}w", u64::MAX / 1000))
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn formats_back() {
        for s in ["30d", "1h30m", "90s", "1d1s", "250ms"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
    }
}
