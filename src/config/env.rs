//! Environment variable overrides, applied to the parsed TOML before it is validated.
//!
//! The rule: `PGMESH_<SECTION>_<KEY>` sets `[section].key`, upper-cased, e.g.
//! `PGMESH_APPLY_BATCH_MAX_ROWS=10000`, `PGMESH_HTTP_LISTEN=0.0.0.0:9187`,
//! `PGMESH_REPLICATION_TABLES=public.*,sales.orders` (lists are comma-separated). Nodes
//! take their name in the middle: `PGMESH_NODES_<NAME>_DSN`, `PGMESH_NODES_<NAME>_PASSWORD_FILE`
//! set `[nodes.<name>]` (and create the node if the file lacks it). An override wins over
//! the file. A variable under one of these prefixes that names no known key is an error,
//! so a typo does not silently fall back to the file's value; other `PGMESH_*` variables
//! (used by tests and tools) are ignored. Command-line flags ([`super::ConfigFlags`]) go
//! through the same key table and parsing, after the environment, and win over it.

use super::{ByteSize, ConfigError};
use std::collections::BTreeMap;
use toml::{Table, Value};

/// The environment as seen by the config loader; tests build one from a list.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process environment (non-UTF-8 variables are skipped).
    #[must_use]
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    #[must_use]
    pub fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
}

pub(super) enum Kind {
    Str,
    /// 0 or more.
    Int,
    /// A [`ByteSize`] (checked here so a bad value names its variable or flag).
    Size,
    List,
}

/// Every `[section].key` that can be overridden (by environment or flag), upper-cased.
pub(super) const SECTION_KEYS: &[(&str, &str, Kind)] = &[
    ("APPLY", "BATCH_MAX_ROWS", Kind::Int),
    ("APPLY", "BATCH_MAX_BYTES", Kind::Size),
    ("APPLY", "BATCH_MAX_DELAY_MS", Kind::Int),
    ("APPLY", "STREAM_AFTER", Kind::Size),
    ("APPLY", "CPU_POLICY", Kind::Str),
    ("HTTP", "LISTEN", Kind::Str),
    ("LEDGER", "RETENTION", Kind::Str),
    ("LEDGER", "MAX_ROWS", Kind::Int),
    ("LEDGER", "PRUNE_INTERVAL", Kind::Str),
    ("LEDGER", "TOMBSTONE_RETENTION", Kind::Str),
    ("GUARDRAIL", "WARN_RETAINED", Kind::Size),
    ("GUARDRAIL", "LIMIT_RETAINED", Kind::Size),
    ("GUARDRAIL", "POLICY", Kind::Str),
    ("GUARDRAIL", "CHECK_INTERVAL_S", Kind::Int),
    ("REPLICATION", "TABLES", Kind::List),
    ("REPLICATION", "FULL_IDENTITY", Kind::List),
    ("REPLICATION", "EXCLUDE", Kind::List),
    ("REPLICATION", "CLOCK_SKEW_WARN", Kind::Str),
    ("REPLICATION", "CLOCK_WAIT_MAX", Kind::Str),
    ("CONTROL", "ETCD", Kind::List),
    ("CONTROL", "CLUSTER", Kind::Str),
    ("CONTROL", "LEASE_TTL", Kind::Str),
    ("CONTROL", "SAFETY_MARGIN", Kind::Str),
    ("CONTROL", "PROBE_INTERVAL", Kind::Str),
    ("CONTROL", "FAILED_AFTER", Kind::Int),
    ("CONTROL", "FAILBACK", Kind::Str),
];

const NODE_KEYS: &[&str] = &["PASSWORD_FILE", "DSN"];

/// Where each overridden value came from, by dotted key (`apply.batch_max_rows`), so a
/// value that fails validation is blamed on its flag or variable, not on the file.
pub(super) type Origins = BTreeMap<String, String>;

/// Applies every `PGMESH_*` override in `env` to `root`.
pub(super) fn apply_overrides(
    root: &mut Table,
    env: &Env,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    for (var, raw) in &env.vars {
        let Some(rest) = var.strip_prefix("PGMESH_") else {
            continue;
        };
        let env_err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        if let Some(node_part) = rest.strip_prefix("NODES_") {
            let (node, key) = NODE_KEYS
                .iter()
                .find_map(|k| {
                    let n = node_part.strip_suffix(k)?.strip_suffix('_')?;
                    (!n.is_empty()).then(|| (n.to_ascii_lowercase(), k.to_ascii_lowercase()))
                })
                .ok_or_else(|| {
                    env_err(
                        "expected PGMESH_NODES_<NAME>_DSN or PGMESH_NODES_<NAME>_PASSWORD_FILE"
                            .into(),
                    )
                })?;
            let nodes = table_at(root, "nodes").map_err(env_err)?;
            let node_table = table_at(nodes, &node).map_err(env_err)?;
            node_table.insert(key.clone(), Value::String(raw.clone()));
            origins.insert(
                format!("nodes.{node}.{key}"),
                format!("environment variable {var}"),
            );
            continue;
        }
        let Some((section, key, _)) = SECTION_KEYS.iter().find(|(s, k, _)| {
            rest.strip_prefix(s)
                .and_then(|r| r.strip_prefix('_'))
                .is_some_and(|r| r == *k)
        }) else {
            if [
                "APPLY_",
                "CONTROL_",
                "GUARDRAIL_",
                "HTTP_",
                "LEDGER_",
                "REPLICATION_",
            ]
            .iter()
            .any(|p| rest.starts_with(p))
            {
                return Err(env_err(
                    "names no config key (see the config documentation for the list)".into(),
                ));
            }
            continue;
        };
        let dotted = set_value(root, section, key, raw).map_err(env_err)?;
        origins.insert(dotted, format!("environment variable {var}"));
    }
    Ok(())
}

/// Sets `[section].key` (names as in [`SECTION_KEYS`]) from a raw string, parsed by the
/// key's kind (lists are comma-separated). Returns the dotted key.
pub(super) fn set_value(
    root: &mut Table,
    section: &str,
    key: &str,
    raw: &str,
) -> Result<String, String> {
    let kind = SECTION_KEYS
        .iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map(|(_, _, kind)| kind)
        .ok_or_else(|| format!("names no config key {section}_{key}"))?;
    let value = match kind {
        Kind::Str => Value::String(raw.to_string()),
        Kind::Int => Value::Integer(
            raw.trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or_else(|| format!("{raw:?} is not an integer (0 or more)"))?,
        ),
        Kind::Size => {
            ByteSize::parse(raw)?;
            Value::String(raw.to_string())
        }
        Kind::List => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
    };
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    table_at(root, &section)?.insert(key.clone(), value);
    Ok(format!("{section}.{key}"))
}

fn table_at<'t>(t: &'t mut Table, key: &str) -> Result<&'t mut Table, String> {
    t.entry(key.to_string())
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| format!("cannot override: `{key}` in the file is not a table"))
}
