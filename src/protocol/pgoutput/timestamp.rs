//! PostgreSQL timestamps as pgoutput sends them.
//!
//! Commit, prepare and abort times are `TimestampTz` values: signed microseconds since
//! 2000-01-01 00:00:00 UTC (PostgreSQL's epoch, not Unix's). They are kept as the raw
//! integer so that they compare and round-trip exactly (last-writer-wins compares
//! them), and converted only at the edges.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds between the Unix epoch (1970-01-01) and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds since the Unix epoch; `None` if that overflows an `i64` (only for
    /// PostgreSQL's `infinity`, which never is a commit time).
    #[must_use]
    pub fn to_unix_micros(self) -> Option<i64> {
        self.0.checked_add(PG_EPOCH_UNIX_MICROS)
    }

    /// From microseconds since the Unix epoch; `None` on overflow.
    #[must_use]
    pub fn from_unix_micros(micros: i64) -> Option<PgTimestamp> {
        micros.checked_sub(PG_EPOCH_UNIX_MICROS).map(PgTimestamp)
    }

    /// As a `SystemTime`; `None` if not representable on this platform.
    #[must_use]
    pub fn to_system_time(self) -> Option<SystemTime> {
        let unix = self.to_unix_micros()?;
        let magnitude = Duration::from_micros(unix.unsigned_abs());
        if unix >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// From a `SystemTime`, truncated to microseconds; `None` if out of range.
    #[must_use]
    pub fn from_system_time(t: SystemTime) -> Option<PgTimestamp> {
        let unix = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).ok()?,
            Err(e) => i64::try_from(e.duration().as_micros())
                .ok()?
                .checked_neg()?,
        };
        PgTimestamp::from_unix_micros(unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversions() {
        assert_eq!(PgTimestamp(0).to_unix_micros(), Some(PG_EPOCH_UNIX_MICROS));
        assert_eq!(
            PgTimestamp(0).to_system_time(),
            Some(UNIX_EPOCH + Duration::from_secs(946_684_800))
        );
        let before_unix = PgTimestamp(-PG_EPOCH_UNIX_MICROS - 1_000_000);
        assert_eq!(
            before_unix.to_system_time(),
            Some(UNIX_EPOCH - Duration::from_secs(1))
        );
        assert_eq!(PgTimestamp(i64::MAX).to_unix_micros(), None);
        for v in [0i64, 1, -1, 800_000_000_000_000, -PG_EPOCH_UNIX_MICROS - 7] {
            let t = PgTimestamp(v);
            assert_eq!(
                t.to_system_time().and_then(PgTimestamp::from_system_time),
                Some(t)
            );
        }
    }
}
