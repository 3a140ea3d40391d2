//! RFC 3339 text for PostgreSQL timestamps (microseconds since 2000-01-01 UTC), shared by
//! `tail` output and the conflict ledger.

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

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
}
