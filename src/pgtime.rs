//! RFC 3339 text for PostgreSQL timestamps (microseconds since 2000-01-01 UTC), shared by
//! `tail` output and the conflict ledger.

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
/// 2000-01-01 00:00:00 UTC (PostgreSQL's epoch) in microseconds since the Unix epoch.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// This machine's clock in microseconds since the Unix epoch (0 before it).
#[must_use]
pub fn unix_micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// This machine's clock as RFC 3339 text (reports, file names).
#[must_use]
pub fn rfc3339_now() -> String {
    rfc3339(unix_micros_now() - PG_EPOCH_UNIX_MICROS)
}

/// `2026-11-25T20:01:02.123456Z` for a PostgreSQL timestamp.
#[must_use]
pub fn rfc3339(pg_micros: i64) -> String {
    let unix = i128::from(pg_micros) + i128::from(PG_EPOCH_UNIX_MICROS);
    let micros = unix.rem_euclid(1_000_000);
    let secs = unix.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Microseconds since the Unix epoch of an RFC 3339 time: `2026-11-25T20:01:02Z`,
/// `2026-11-25 20:01:02.5+01:00`, `2026-11-25T20:01Z`, or a date alone (`2026-11-25`,
/// midnight UTC). An offset is required with a time, so a bare local time cannot be
/// misread. The error says what is wrong and what to write.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let text = s.trim();
    let bad = |why: &str| {
        format!("{text:?} is not an RFC 3339 time ({why}); write e.g. \"2026-11-25T20:01:02Z\" or \"2026-11-25\"")
    };
    let num = |part: &str, what: &str, lo: i64, hi: i64| -> Result<i64, String> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("bad {what}")));
        }
        let v: i64 = part.parse().map_err(|_| bad(&format!("bad {what}")))?;
        if v < lo || v > hi {
            return Err(bad(&format!("{what} {v} out of range")));
        }
        Ok(v)
    };
    let (date, rest) = match text.find(['T', 't', ' ']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (
        d.next().unwrap_or(""),
        d.next().unwrap_or(""),
        d.next().unwrap_or(""),
    );
    if y.len() != 4 || m.len() != 2 || day.len() != 2 {
        return Err(bad("the date must be YYYY-MM-DD"));
    }
    let (y, m) = (num(y, "year", 1, 9999)?, num(m, "month", 1, 12)?);
    let day = num(day, "day", 1, days_in_month(y, m))?;
    let mut micros = days_from_civil(y, m, day) * 86_400_000_000;
    let Some(rest) = rest else { return Ok(micros) };
    let tz_at = rest
        .find(['Z', 'z', '+', '-'])
        .ok_or_else(|| bad("a time needs an offset: Z or +HH:MM"))?;
    let (clock, tz) = rest.split_at(tz_at);
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (clock, None),
    };
    let mut t = hms.split(':');
    let h = num(t.next().unwrap_or(""), "hour", 0, 23)?;
    let mi = num(t.next().unwrap_or(""), "minute", 0, 59)?;
    let sec = match t.next() {
        Some(sec) => num(sec, "second", 0, 60)?,
        None => 0,
    };
    if t.next().is_some() {
        return Err(bad("the time must be HH:MM:SS"));
    }
    micros += ((h * 60 + mi) * 60 + sec) * 1_000_000;
    if let Some(frac) = frac {
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("bad fraction of a second"));
        }
        let six: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
        micros += num(&six, "fraction", 0, 999_999)?;
    }
    if !tz.is_ascii() {
        return Err(bad("the offset must be +HH:MM"));
    }
    if tz != "Z" && tz != "z" {
        let sign = if tz.starts_with('-') { -1 } else { 1 };
        let (oh, om) = match tz[1..].split_once(':') {
            Some((oh, om)) => (oh, om),
            None if tz.len() == 5 => (&tz[1..3], &tz[3..5]),
            None => (&tz[1..], "00"),
        };
        if oh.len() != 2 || om.len() != 2 {
            return Err(bad("the offset must be +HH:MM"));
        }
        let offset = num(oh, "offset hours", 0, 23)? * 60 + num(om, "offset minutes", 0, 59)?;
        micros -= sign * offset * 60_000_000;
    }
    Ok(micros)
}

/// `(year, month, day)` to days since 1970-01-01 (inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i128) -> (i128, i128, i128) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29T12:34:56.789012Z
        assert_eq!(rfc3339(762_525_296_789_012), "2024-02-29T12:34:56.789012Z");
        // Extremes never panic.
        let _ = rfc3339(i64::MIN);
        let _ = rfc3339(i64::MAX);
    }

    #[test]
    fn parses_rfc3339() {
        let unix = |pg: i64| pg + PG_EPOCH_UNIX_MICROS;
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.789012Z"),
            Ok(unix(762_525_296_789_012))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29 13:34:56.789012+01:00"),
            Ok(unix(762_525_296_789_012))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T10:34:56.789012-0200"),
            Ok(unix(762_525_296_789_012))
        );
        assert_eq!(parse_rfc3339("2000-01-01"), Ok(unix(0)));
        assert_eq!(parse_rfc3339("2000-01-01T00:00Z"), Ok(unix(0)));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.5Z"), Ok(500_000));
        for bad in [
            "",
            "yesterday",
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-1-01",
            "2024-01-01T12:00:00",
            "2024-01-01T25:00:00Z",
            "2024-01-01T12:00:00.Z",
            "2024-01-01T12:00:00+1:00",
            "2024-01-01T12:00:00:00Z",
            "\u{ff11}999-01-01",
            "2024-01-01T12:00:00+1\u{e9}2",
        ] {
            let e = parse_rfc3339(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad:?}: {e}");
        }
    }
}
