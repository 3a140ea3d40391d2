//! Command-line overrides of config values, for `run`, `setup` and `teardown`.
//!
//! Precedence: flag > environment (`PGMESH_<SECTION>_<KEY>`, see [`super::env`]) > file.
//! A flag is applied to the parsed TOML after the environment, through the same key table
//! and value parsing as an environment variable, so the same validation runs on it and a
//! bad value is reported with the flag's name.

use super::env::{set_value, Origins};
use super::ConfigError;
use toml::Table;

/// Config values given as flags; `None` leaves the environment's or the file's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Config overrides (flag > PGMESH_* environment > file)")]
pub struct ConfigFlags {
    /// Changes per downstream transaction; overrides [apply].batch_max_rows and
    /// PGMESH_APPLY_BATCH_MAX_ROWS.
    #[arg(long, value_name = "N")]
    pub batch_max_rows: Option<String>,
    /// Bytes per downstream transaction, e.g. 16MB; overrides [apply].batch_max_bytes and
    /// PGMESH_APPLY_BATCH_MAX_BYTES.
    #[arg(long, value_name = "SIZE")]
    pub batch_max_bytes: Option<String>,
    /// How long a downstream transaction waits for more upstream ones; overrides
    /// [apply].batch_max_delay_ms and PGMESH_APPLY_BATCH_MAX_DELAY_MS.
    #[arg(long, value_name = "MS")]
    pub batch_max_delay_ms: Option<String>,
    /// Stream a peer's transactions past this size and apply them while open, e.g. 8MB;
    /// overrides [apply].stream_after and PGMESH_APPLY_STREAM_AFTER.
    #[arg(long, value_name = "SIZE")]
    pub stream_after: Option<String>,
    /// Address of the HTTP endpoint, e.g. 127.0.0.1:9187; overrides [http].listen and
    /// PGMESH_HTTP_LISTEN.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
}

impl ConfigFlags {
    /// `(flag, SECTION, KEY, value)` of every flag given.
    fn given(&self) -> impl Iterator<Item = (&'static str, &'static str, &'static str, &str)> {
        [
            (
                "--batch-max-rows",
                "APPLY",
                "BATCH_MAX_ROWS",
                &self.batch_max_rows,
            ),
            (
                "--batch-max-bytes",
                "APPLY",
                "BATCH_MAX_BYTES",
                &self.batch_max_bytes,
            ),
            (
                "--batch-max-delay-ms",
                "APPLY",
                "BATCH_MAX_DELAY_MS",
                &self.batch_max_delay_ms,
            ),
            (
                "--stream-after",
                "APPLY",
                "STREAM_AFTER",
                &self.stream_after,
            ),
            ("--http-listen", "HTTP", "LISTEN", &self.http_listen),
        ]
        .into_iter()
        .filter_map(|(flag, section, key, v)| Some((flag, section, key, v.as_deref()?)))
    }

    /// Applies the flags to `root` (after the environment: they win).
    pub(super) fn apply(&self, root: &mut Table, origins: &mut Origins) -> Result<(), ConfigError> {
        for (flag, section, key, raw) in self.given() {
            let dotted =
                set_value(root, section, key, raw).map_err(|message| ConfigError::Flag {
                    flag: flag.to_string(),
                    message,
                })?;
            origins.insert(dotted, flag.to_string());
        }
        Ok(())
    }
}
