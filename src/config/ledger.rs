//! `[ledger]`: how long conflict records are kept, and how many at most.
//!
//! ```toml
//! [ledger]
//! retention = "30d"        # delete records older than this
//! max_rows = 1000000       # and keep at most this many (oldest go first)
//! prune_interval = "10m"   # how often the sidecar prunes
//! ```
//!
//! Both limits always apply and neither can be switched off: the ledger is written by
//! every conflict, so a table without a bound grows until the disk is full.

use std::time::Duration;

use serde::Deserialize;

use super::duration::{format_duration, parse_duration};
use super::ConfigError;

/// Validated `[ledger]` settings (defaults when the section is absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Records detected longer ago than this are deleted.
    pub retention: Duration,
    /// At most this many records are kept; the oldest (lowest id) go first.
    pub max_rows: u64,
    /// How often `pgmesh run` prunes (it also prunes once at start).
    pub prune_interval: Duration,
    /// Tombstones are pruned once every peer is past them by this much (a margin for
    /// clock skew; see `sidecar/tombstone_gc.rs`).
    pub tombstone_retention: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            retention: Duration::from_secs(30 * 86_400),
            max_rows: 1_000_000,
            prune_interval: Duration::from_secs(600),
            tombstone_retention: Duration::from_secs(3600),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLedger {
    retention: Option<String>,
    max_rows: Option<u64>,
    prune_interval: Option<String>,
    tombstone_retention: Option<String>,
}

impl LedgerConfig {
    /// Validates `raw`; `invalid(key, message)` builds the error (it knows the file and
    /// whether the value came from a flag or variable).
    pub(super) fn from_raw(
        raw: RawLedger,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<LedgerConfig, ConfigError> {
        let d = LedgerConfig::default();
        let duration = |key: &str, v: Option<String>, default: Duration, min: Duration| {
            let Some(text) = v else { return Ok(default) };
            let value = parse_duration(&text).map_err(|m| invalid(key, m))?;
            if value < min {
                return Err(invalid(
                    key,
                    format!(
                        "{text:?} is too short: use at least {}",
                        format_duration(min)
                    ),
                ));
            }
            Ok(value)
        };
        let retention = duration(
            "ledger.retention",
            raw.retention,
            d.retention,
            Duration::from_secs(1),
        )?;
        let prune_interval = duration(
            "ledger.prune_interval",
            raw.prune_interval,
            d.prune_interval,
            Duration::from_secs(1),
        )?;
        let tombstone_retention = duration(
            "ledger.tombstone_retention",
            raw.tombstone_retention,
            d.tombstone_retention,
            Duration::from_secs(1),
        )?;
        let max_rows = match raw.max_rows {
            None => d.max_rows,
            Some(0) => {
                return Err(invalid(
                    "ledger.max_rows",
                    "must be at least 1 (the ledger is how you learn what conflicts decided)"
                        .into(),
                ))
            }
            Some(n) if n > i64::MAX as u64 => {
                return Err(invalid("ledger.max_rows", "too large".into()))
            }
            Some(n) => n,
        };
        Ok(LedgerConfig {
            retention,
            max_rows,
            prune_interval,
            tombstone_retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};

    const BASE: &str = "[nodes.a]\ndsn = \"host=a\"\n[nodes.b]\ndsn = \"host=b\"\n[replication]\ntables = [\"public.*\"]\n";

    fn parse(extra: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("{BASE}{extra}"),
            "pgmesh.toml",
            &Env::from_pairs(env.iter().copied()),
        )
    }

    #[test]
    fn defaults_are_bounded() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.ledger, LedgerConfig::default());
        assert_eq!(c.ledger.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.ledger.max_rows, 1_000_000);
    }

    #[test]
    fn section_and_environment() {
        let c = parse(
            "[ledger]\nretention = \"7d\"\nmax_rows = 500\nprune_interval = \"30s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.ledger.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.ledger.max_rows, 500);
        assert_eq!(c.ledger.prune_interval, Duration::from_secs(30));
        let c = parse(
            "[ledger]\nretention = \"7d\"\n",
            &[
                ("PGMESH_LEDGER_RETENTION", "12h"),
                ("PGMESH_LEDGER_MAX_ROWS", "10"),
            ],
        )
        .unwrap();
        assert_eq!(c.ledger.retention, Duration::from_secs(12 * 3_600));
        assert_eq!(c.ledger.max_rows, 10);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = |extra: &str, env: &[(&str, &str)]| parse(extra, env).unwrap_err().to_string();
        let e = err("[ledger]\nretention = \"30\"\n", &[]);
        assert!(
            e.contains("ledger.retention") && e.contains("no unit"),
            "{e}"
        );
        let e = err("[ledger]\nretention = \"0s\"\n", &[]);
        assert!(e.contains("too short"), "{e}");
        let e = err("[ledger]\nmax_rows = 0\n", &[]);
        assert!(
            e.contains("ledger.max_rows") && e.contains("at least 1"),
            "{e}"
        );
        let e = err("[ledger]\nkeep = \"1d\"\n", &[]);
        assert!(e.contains("keep"), "{e}");
        let e = err("", &[("PGMESH_LEDGER_RETENTION", "forever")]);
        assert!(
            e.contains("value from environment variable PGMESH_LEDGER_RETENTION"),
            "{e}"
        );
        let e = err("", &[("PGMESH_LEDGER_MAXROWS", "1")]);
        assert!(e.contains("PGMESH_LEDGER_MAXROWS"), "{e}");
    }
}
