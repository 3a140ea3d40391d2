//! The TOML config: which nodes, what to replicate, how to batch.
//!
//! ```toml
//! [nodes.a]
//! dsn = "host=127.0.0.1 port=5501 user=postgres dbname=postgres"
//! # password_file = "/run/secrets/pg_a"   # else a password in the dsn, PGPASSWORD, ~/.pgpass
//! [nodes.b]
//! dsn = "host=127.0.0.1 port=5502 user=postgres dbname=postgres password=${PG_B_PASSWORD}"
//! [replication]
//! tables = ["public.*"]   # schema.table patterns, `*` wildcard
//! full_identity = []      # tables allowed without a primary key (REPLICA IDENTITY FULL)
//! exclude = []
//! clock_skew_warn = "500ms"  # warn when a node's clock is surely this far from its peer's
//! clock_wait_max = "10s"    # apply a change only once our clock passed its commit time
//! [apply]                 # optional, defaults shown
//! batch_max_rows = 5000
//! batch_max_bytes = "16MB"
//! batch_max_delay_ms = 1   # none once the peer's walsender has sent all it had
//! stream_after = "64MB"   # apply a peer's bigger transaction while it is open; 0 = off
//! cpu_policy = "auto"     # SCHED_BATCH while catching up; "batch": always; "normal": never
//! [http]                  # optional
//! listen = "127.0.0.1:9187"
//! [ledger]                # optional, defaults shown (see [`LedgerConfig`])
//! retention = "30d"
//! max_rows = 1000000
//! [guardrail]             # optional, see [`guardrail`] for the keys and defaults
//! policy = "warn"
//! ```
//!
//! Unknown keys are errors (a typo must not silently mean "default"). Values can be
//! overridden from the environment (see [`env`] for the rule) and, winning over both, from
//! command-line flags ([`ConfigFlags`]); `${VAR}` inside a dsn is replaced by that
//! variable. Passwords never appear in `Debug`/`Display` output.

pub mod control;
mod cpu_policy;
mod dsn;
mod duration;
pub mod env;
mod error;
mod flags;
pub mod guardrail;
mod ledger;
pub mod names;
mod password;
mod pattern;
mod size;
pub mod traffic;

pub use control::{ControlConfig, EndpointConfig, Failback, HealthConfig, PromqlSignal};
pub use cpu_policy::CpuPolicy;
pub use dsn::{interpolate, mask, Dsn};
pub use duration::{format_duration, parse_duration};
pub use env::Env;
pub use error::ConfigError;
pub use flags::ConfigFlags;
pub use guardrail::{GuardrailConfig, GuardrailPolicy};
pub use ledger::LedgerConfig;
pub use pattern::TablePattern;
pub use size::{human_bytes, ByteSize};
pub use traffic::TrafficConfig;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many nodes this version supports. The types hold N; only validation says two.
pub const SUPPORTED_NODE_COUNT: usize = 2;

/// A loaded, validated config.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it came from (file path), for messages.
    pub source: String,
    /// Nodes by name; the map's order (by name) is the fixed node order that breaks ties.
    pub nodes: BTreeMap<String, NodeConfig>,
    pub replication: ReplicationConfig,
    pub apply: ApplyConfig,
    pub http: Option<HttpConfig>,
    pub ledger: LedgerConfig,
    pub guardrail: GuardrailConfig,
    /// `[control]` and `[endpoints.*]`: `None` when only the data path is configured.
    pub control: Option<ControlConfig>,
    /// `[traffic]`: pgbouncer, DNS, hooks and Alertmanager the agents drive (empty: none).
    pub traffic: TrafficConfig,
}

/// One PostgreSQL primary.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `[a-z][a-z0-9_]{0,30}`: it becomes part of slot and origin names.
    pub name: String,
    /// With `${VAR}` already interpolated.
    pub dsn: Dsn,
    pub password_file: Option<PathBuf>,
}

/// `[replication]`: which tables.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub tables: Vec<TablePattern>,
    /// Tables allowed without a primary key; they must be REPLICA IDENTITY FULL.
    pub full_identity: Vec<TablePattern>,
    pub exclude: Vec<TablePattern>,
    /// The sidecar warns (log, `/readyz`) and `pgmesh status` shows a warning when a
    /// node's clock is surely further than this from its peer's: last-writer-wins then
    /// favours the node whose clock is ahead (README "What last-writer-wins does under
    /// clock skew").
    pub clock_skew_warn: Duration,
    /// A peer change whose commit time is ahead of this node's clock waits (up to this)
    /// until the clock passed it, so a local write made after it is stamped later
    /// ([`crate::conflict::causality`]). Zero: never wait.
    pub clock_wait_max: Duration,
}

/// Default of `[replication] clock_skew_warn`.
pub const DEFAULT_CLOCK_SKEW_WARN: Duration = Duration::from_millis(500);
/// Default of `[replication] clock_wait_max`: well past any skew a disciplined clock
/// shows, short of stalling a direction for long.
pub const DEFAULT_CLOCK_WAIT_MAX: Duration = Duration::from_secs(10);

impl ReplicationConfig {
    /// Whether a table is replicated: matched by `tables`, not by `exclude`.
    #[must_use]
    pub fn selects(&self, schema: &str, table: &str) -> bool {
        self.tables.iter().any(|p| p.matches(schema, table))
            && !self.exclude.iter().any(|p| p.matches(schema, table))
    }

    /// Whether a table may go without a primary key.
    #[must_use]
    pub fn allows_full_identity(&self, schema: &str, table: &str) -> bool {
        self.full_identity.iter().any(|p| p.matches(schema, table))
    }
}

/// `[apply]`: batching bounds of the sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyConfig {
    pub batch_max_rows: usize,
    pub batch_max_bytes: ByteSize,
    pub batch_max_delay: Duration,
    /// Stream a peer's transaction once its changes pass this size on the peer (its
    /// walsender's `logical_decoding_work_mem`) and apply it while it is still open
    /// (PostgreSQL 16+ peers; see `apply::streamed`). `None` (`stream_after = 0`): whole
    /// transactions only.
    pub stream_after: Option<ByteSize>,
    /// The sidecar's CPU scheduling policy (see [`crate::sidecar::scheduling`]).
    pub cpu_policy: CpuPolicy,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            batch_max_rows: 5000,
            batch_max_bytes: ByteSize(16 << 20),
            batch_max_delay: Duration::from_millis(1),
            stream_after: Some(DEFAULT_STREAM_AFTER),
            cpu_policy: CpuPolicy::Auto,
        }
    }
}

/// Default of `[apply] stream_after`: PostgreSQL's default `logical_decoding_work_mem`,
/// where a native subscription with `streaming` on starts to stream too.
pub const DEFAULT_STREAM_AFTER: ByteSize = ByteSize(64 << 20);

/// `[http]`: the sidecar's HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    nodes: BTreeMap<String, RawNode>,
    replication: Option<RawReplication>,
    #[serde(default)]
    apply: RawApply,
    http: Option<RawHttp>,
    #[serde(default)]
    ledger: ledger::RawLedger,
    #[serde(default)]
    guardrail: guardrail::RawGuardrail,
    control: Option<control::RawControl>,
    #[serde(default)]
    endpoints: BTreeMap<String, control::RawEndpoint>,
    #[serde(default)]
    traffic: traffic::RawTraffic,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    dsn: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    tables: Option<Vec<String>>,
    #[serde(default)]
    full_identity: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    clock_skew_warn: Option<String>,
    clock_wait_max: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApply {
    batch_max_rows: Option<u64>,
    batch_max_bytes: Option<ByteSize>,
    batch_max_delay_ms: Option<u64>,
    stream_after: Option<ByteSize>,
    cpu_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
}

impl Config {
    /// Reads `path`, applies environment overrides from the process and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &ConfigFlags::default())
    }

    /// Like [`Config::load`], then `flags` on top (flag > environment > file).
    pub fn load_with(path: &Path, flags: &ConfigFlags) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse_with(
            &text,
            &path.display().to_string(),
            &Env::from_process(),
            flags,
        )
    }

    /// Parses TOML `text` (named `source` in messages) with overrides from `env`.
    pub fn parse(text: &str, source: &str, env: &Env) -> Result<Config, ConfigError> {
        Config::parse_with(text, source, env, &ConfigFlags::default())
    }

    /// Parses TOML `text` with overrides from `env`, then from `flags` (they win).
    pub fn parse_with(
        text: &str,
        source: &str,
        env: &Env,
        flags: &ConfigFlags,
    ) -> Result<Config, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            file: source.to_string(),
            message,
        };
        let mut root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        let mut origins = env::Origins::new();
        env::apply_overrides(&mut root, env, &mut origins)?;
        flags.apply(&mut root, &mut origins)?;
        let raw: RawConfig = RawConfig::deserialize(toml::Value::Table(root))
            .map_err(|e| parse_err(e.to_string()))?;
        // A bad value from a flag or variable names it, not the file.
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: match origins.get(key) {
                Some(origin) => format!("{source} (value from {origin})"),
                None => source.to_string(),
            },
            key: key.to_string(),
            message,
        };

        if raw.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "no nodes defined; add one table per node, e.g.\n  [nodes.a]\n  dsn = \"host=10.0.0.1 user=postgres dbname=app\"\n  [nodes.b]\n  dsn = \"host=10.0.0.2 user=postgres dbname=app\"".into(),
            ));
        }
        let mut nodes = BTreeMap::new();
        for (name, node) in raw.nodes {
            let key = format!("nodes.{name}");
            check_node_name(&name).map_err(|m| invalid(&key, m))?;
            let dsn = node.dsn.ok_or_else(|| {
                invalid(
                    &format!("{key}.dsn"),
                    format!("missing key `dsn`; add e.g.\n  [nodes.{name}]\n  dsn = \"host=10.0.0.1 port=5432 user=postgres dbname=app\""),
                )
            })?;
            let dsn =
                interpolate(&dsn, |v| env.get(v)).map_err(|m| invalid(&format!("{key}.dsn"), m))?;
            nodes.insert(
                name.clone(),
                NodeConfig {
                    name,
                    dsn: Dsn::new(dsn),
                    password_file: node.password_file,
                },
            );
        }
        if nodes.len() != SUPPORTED_NODE_COUNT {
            let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
            return Err(invalid(
                "nodes",
                format!(
                    "pgmesh supports exactly {SUPPORTED_NODE_COUNT} nodes for now; found {} ({})",
                    names.len(),
                    names.join(", ")
                ),
            ));
        }

        let example_tables = "add e.g.\n  [replication]\n  tables = [\"public.*\"]";
        let repl = raw.replication.ok_or_else(|| {
            invalid(
                "replication",
                format!("missing section [replication]; {example_tables}"),
            )
        })?;
        let tables = repl.tables.ok_or_else(|| {
            invalid(
                "replication.tables",
                format!("missing key `tables`; {example_tables}"),
            )
        })?;
        if tables.is_empty() {
            return Err(invalid(
                "replication.tables",
                format!("no tables listed; {example_tables}"),
            ));
        }
        let patterns = |key: &str, list: Vec<String>| -> Result<Vec<TablePattern>, ConfigError> {
            list.iter()
                .map(|s| TablePattern::parse(s).map_err(|m| invalid(key, m)))
                .collect()
        };
        let clock_skew_warn = match repl.clock_skew_warn {
            None => DEFAULT_CLOCK_SKEW_WARN,
            Some(text) => {
                let key = "replication.clock_skew_warn";
                let d = parse_duration(&text).map_err(|m| invalid(key, m))?;
                if d.is_zero() {
                    return Err(invalid(
                        key,
                        "must be more than 0 (every measurable skew would warn); the default is \"500ms\"".into(),
                    ));
                }
                d
            }
        };
        let clock_wait_max = match repl.clock_wait_max {
            None => DEFAULT_CLOCK_WAIT_MAX,
            Some(text) => {
                parse_duration(&text).map_err(|m| invalid("replication.clock_wait_max", m))?
            }
        };
        let replication = ReplicationConfig {
            tables: patterns("replication.tables", tables)?,
            full_identity: patterns("replication.full_identity", repl.full_identity)?,
            exclude: patterns("replication.exclude", repl.exclude)?,
            clock_skew_warn,
            clock_wait_max,
        };

        let defaults = ApplyConfig::default();
        let batch_max_rows = match raw.apply.batch_max_rows {
            None => defaults.batch_max_rows,
            Some(0) => return Err(invalid("apply.batch_max_rows", "must be at least 1".into())),
            Some(n) => usize::try_from(n)
                .map_err(|_| invalid("apply.batch_max_rows", "too large".into()))?,
        };
        let batch_max_bytes = match raw.apply.batch_max_bytes {
            Some(ByteSize(0)) => {
                return Err(invalid(
                    "apply.batch_max_bytes",
                    "must be more than 0".into(),
                ))
            }
            b => b.unwrap_or(defaults.batch_max_bytes),
        };
        let stream_after = match raw.apply.stream_after {
            None => defaults.stream_after,
            Some(ByteSize(0)) => None,
            Some(ByteSize(b)) if b < 64 << 10 => {
                return Err(invalid(
                    "apply.stream_after",
                    "must be at least \"64kB\" (PostgreSQL's smallest logical_decoding_work_mem), or 0 for off".into(),
                ))
            }
            b => b,
        };
        let cpu_policy = match raw.apply.cpu_policy.as_deref() {
            None => defaults.cpu_policy,
            Some(v) => CpuPolicy::parse(v).map_err(|m| invalid("apply.cpu_policy", m))?,
        };
        let apply = ApplyConfig {
            stream_after,
            cpu_policy,
            batch_max_rows,
            batch_max_bytes,
            batch_max_delay: raw
                .apply
                .batch_max_delay_ms
                .map_or(defaults.batch_max_delay, Duration::from_millis),
        };

        let http = match raw.http {
            None => None,
            Some(h) => {
                let listen = h.listen.ok_or_else(|| {
                    invalid(
                        "http.listen",
                        "missing key `listen`; add e.g. listen = \"127.0.0.1:9187\"".into(),
                    )
                })?;
                Some(HttpConfig {
                    listen: listen.parse().map_err(|_| {
                        invalid(
                            "http.listen",
                            format!("{listen:?} is not an address; write e.g. \"127.0.0.1:9187\""),
                        )
                    })?,
                })
            }
        };

        let ledger = LedgerConfig::from_raw(raw.ledger, &invalid)?;
        let guardrail = raw
            .guardrail
            .validate()
            .map_err(|(key, m)| invalid(key, m))?;
        let node_names: Vec<&str> = nodes.keys().map(String::as_str).collect();
        let control = ControlConfig::from_raw(raw.control, raw.endpoints, &node_names, &invalid)?;
        let endpoint_names: Vec<&str> = control
            .as_ref()
            .map(|c| c.endpoints.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let traffic = TrafficConfig::from_raw(raw.traffic, &node_names, &endpoint_names, &invalid)?;

        Ok(Config {
            source: source.to_string(),
            nodes,
            replication,
            apply,
            http,
            ledger,
            guardrail,
            control,
            traffic,
        })
    }

    /// A node by name, or an error listing the known ones.
    pub fn node(&self, name: &str) -> Result<&NodeConfig, ConfigError> {
        self.nodes.get(name).ok_or_else(|| ConfigError::Invalid {
            file: self.source.clone(),
            key: "nodes".into(),
            message: format!(
                "no node named {name:?}; known nodes: {}",
                self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// `[control]`, or an error saying how to add it (for `pgmesh agent` and friends).
    pub fn control(&self) -> Result<&ControlConfig, ConfigError> {
        self.control.as_ref().ok_or_else(|| ConfigError::Invalid {
            file: self.source.clone(),
            key: "control".into(),
            message: "no [control] section: the control plane needs etcd and endpoints, e.g.\n  [control]\n  etcd = [\"http://127.0.0.1:2379\"]\n  cluster = \"prod\"\n  [endpoints.app-eu]\n  home = \"a\"".into(),
        })
    }

    /// Every node except `name`, in node order.
    pub fn peers<'c>(&'c self, name: &'c str) -> impl Iterator<Item = &'c NodeConfig> + 'c {
        self.nodes.values().filter(move |n| n.name != name)
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config {}", self.source)?;
        for n in self.nodes.values() {
            writeln!(f, "  node {}: {}", n.name, n.dsn)?;
        }
        let list = |v: &[TablePattern]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "  tables: {}", list(&self.replication.tables))?;
        if !self.replication.exclude.is_empty() {
            writeln!(f, "  exclude: {}", list(&self.replication.exclude))?;
        }
        write!(
            f,
            "  apply: batch_max_rows={} batch_max_bytes={} batch_max_delay={:?}",
            self.apply.batch_max_rows, self.apply.batch_max_bytes.0, self.apply.batch_max_delay
        )
    }
}

/// `[a-z][a-z0-9_]{0,30}`: short and safe inside slot and origin names (63-byte limit).
fn check_node_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 31
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name {name:?} is not allowed: use 1-31 characters, a lowercase letter first, then lowercase letters, digits or _"
        ))
    }
}

#[cfg(test)]
mod tests;
