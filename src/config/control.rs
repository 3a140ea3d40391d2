//! `[control]` and `[endpoints.*]`: the control plane (`pgmesh agent`), see
//! [`crate::control`].
//!
//! ```toml
//! [control]
//! etcd = ["http://10.0.1.5:2379", "http://10.0.2.5:2379", "http://10.0.3.5:2379"]
//! cluster = "prod"            # etcd key prefix /pgmesh/<cluster>/
//! lease_ttl = "3s"            # an agent that cannot renew for this long loses its endpoints
//! safety_margin = "1s"        # fence this long before the lease could expire
//! probe_interval = "500ms"    # health probes and decisions
//! failed_after = 3            # consecutive failed probes before a region counts as failed
//! fence_roles = []            # roles fencing stops; empty: every role that can log in
//! fence_exempt = []           # never fenced, besides superusers and the nodes' dsn users
//! switchover_timeout = "30s"  # how long a switchover may wait for the peer to catch up
//! failback = "manual"         # "manual" | "auto" (a returning home region takes back
//!                             # its endpoints once caught up, see failback_*)
//! failback_max_lag = "1MB"    # auto failback: the home region is at most this far behind
//! failback_after = "30s"      #   ... for this long
//! etcd_leader = "etcd-w"      # optional: keep the etcd leader on this member (the
//!                             # witness's), so it never dies with a region
//! [control.health]            # optional, see [`HealthConfig`]
//! weight_postgres = 6.0
//! [[control.health.promql]]   # optional business signals
//! name = "app_p95"
//! url = "http://127.0.0.1:9090"
//! query = 'histogram_quantile(0.95, sum(rate(http_duration_seconds_bucket[1m])) by (le))'
//! max = 0.5                   # the signal fails when the value is above this
//! [endpoints.app-eu]          # a name clients use; one owner region at a time
//! home = "a"
//! [endpoints.app-us]
//! home = "b"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::duration::{format_duration, parse_duration};
use super::{ByteSize, ConfigError};

/// Validated `[control]` with its endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlConfig {
    pub etcd: Vec<String>,
    pub cluster: String,
    pub lease_ttl: Duration,
    pub safety_margin: Duration,
    pub probe_interval: Duration,
    pub failed_after: u32,
    /// `None`: every role that can log in.
    pub fence_roles: Option<Vec<String>>,
    pub fence_exempt: Vec<String>,
    pub switchover_timeout: Duration,
    pub failback: Failback,
    pub health: HealthConfig,
    /// By name, in name order.
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// The etcd member (by name) the agents keep the etcd leader on
    /// ([`crate::control::placement`]); `None`: wherever etcd elects it.
    pub etcd_leader: Option<String>,
}

/// How a region that returns after a failover gets its home endpoints back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failback {
    /// Only by `pgmesh switchover` (the default: a person decides).
    Manual,
    /// By the home region's agent, once its lag stayed under `max_lag` for `after`.
    Auto { max_lag: ByteSize, after: Duration },
}

/// `[endpoints.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    pub name: String,
    /// The region (node) that owns it when all is well.
    pub home: String,
}

/// `[control.health]`: how signals fold into a score and a state.
///
/// The score is the weighted share of signals that pass (a warning counts half). Below
/// `failed_below` the probe counts as failed; `failed_after` failed probes in a row make
/// the region *failed*. Below `degraded_below` it is *degraded* (alerts, no movement).
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    pub weight_postgres: f64,
    pub weight_sidecar: f64,
    pub weight_slot: f64,
    pub weight_etcd: f64,
    /// The sidecar's apply lag above which its signal warns.
    pub max_lag: ByteSize,
    pub degraded_below: f64,
    pub failed_below: f64,
    /// Where the local sidecar serves `/readyz` (`[http].listen` when not set); `{node}`
    /// is replaced by the agent's node name, so one config serves every region.
    pub sidecar_url: Option<String>,
    pub promql: Vec<PromqlSignal>,
}

impl Default for HealthConfig {
    /// PostgreSQL outweighs everything else together: only a primary that cannot take a
    /// write makes a region fail on its own; the rest degrade it.
    fn default() -> Self {
        HealthConfig {
            weight_postgres: 6.0,
            weight_sidecar: 1.0,
            weight_slot: 1.0,
            weight_etcd: 1.0,
            max_lag: ByteSize(64 << 20),
            degraded_below: 1.0,
            failed_below: 0.5,
            sidecar_url: None,
            promql: Vec::new(),
        }
    }
}

/// One `[[control.health.promql]]` query against the user's Prometheus.
#[derive(Clone, Debug, PartialEq)]
pub struct PromqlSignal {
    pub name: String,
    pub url: String,
    pub query: String,
    /// Fails when the value is above `max` (or below `min`), or when there is no value.
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub weight: f64,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    etcd: Option<Vec<String>>,
    cluster: Option<String>,
    lease_ttl: Option<String>,
    safety_margin: Option<String>,
    probe_interval: Option<String>,
    failed_after: Option<u32>,
    fence_roles: Option<Vec<String>>,
    #[serde(default)]
    fence_exempt: Vec<String>,
    switchover_timeout: Option<String>,
    failback: Option<String>,
    failback_max_lag: Option<ByteSize>,
    failback_after: Option<String>,
    etcd_leader: Option<String>,
    #[serde(default)]
    health: RawHealth,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    weight_postgres: Option<f64>,
    weight_sidecar: Option<f64>,
    weight_slot: Option<f64>,
    weight_etcd: Option<f64>,
    max_lag: Option<ByteSize>,
    degraded_below: Option<f64>,
    failed_below: Option<f64>,
    sidecar_url: Option<String>,
    #[serde(default)]
    promql: Vec<RawPromql>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPromql {
    name: Option<String>,
    url: Option<String>,
    query: Option<String>,
    max: Option<f64>,
    min: Option<f64>,
    weight: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    home: Option<String>,
}

type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

impl ControlConfig {
    /// Validates `raw` against the node names; `None` when neither `[control]` nor any
    /// endpoint is configured (the data path alone).
    pub(super) fn from_raw(
        raw: Option<RawControl>,
        endpoints: BTreeMap<String, RawEndpoint>,
        nodes: &[&str],
        invalid: Invalid<'_>,
    ) -> Result<Option<ControlConfig>, ConfigError> {
        let raw = match raw {
            Some(r) => r,
            None if endpoints.is_empty() => return Ok(None),
            None => {
                return Err(invalid(
                    "control",
                    "endpoints are configured but [control] is missing; add e.g.\n  [control]\n  etcd = [\"http://127.0.0.1:2379\"]\n  cluster = \"prod\"".into(),
                ))
            }
        };
        let etcd = raw.etcd.unwrap_or_default();
        if etcd.is_empty() {
            return Err(invalid(
                "control.etcd",
                "no etcd endpoints; list every member, e.g. etcd = [\"http://10.0.1.5:2379\", \"http://10.0.2.5:2379\", \"http://10.0.3.5:2379\"]".into(),
            ));
        }
        for url in &etcd {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                return Err(invalid(
                    "control.etcd",
                    format!(
                        "{url:?} is not an etcd client URL; write e.g. \"http://10.0.1.5:2379\""
                    ),
                ));
            }
        }
        let cluster = raw.cluster.unwrap_or_else(|| "default".into());
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !ok_name(&cluster) {
            return Err(invalid(
                "control.cluster",
                format!("{cluster:?}: use 1-63 letters, digits, - or _ (it becomes the etcd prefix /pgmesh/<cluster>/)"),
            ));
        }
        let duration =
            |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                let Some(text) = v else { return Ok(default) };
                let d = parse_duration(&text).map_err(|m| invalid(key, m))?;
                if d.is_zero() {
                    return Err(invalid(key, "must be more than 0".into()));
                }
                Ok(d)
            };
        let lease_ttl = duration("control.lease_ttl", raw.lease_ttl, Duration::from_secs(3))?;
        if lease_ttl < Duration::from_secs(2) || lease_ttl.subsec_millis() != 0 {
            return Err(invalid(
                "control.lease_ttl",
                format!(
                    "{} is not allowed: etcd leases count whole seconds, and below 2s a busy etcd cannot renew in time; use e.g. \"3s\"",
                    format_duration(lease_ttl)
                ),
            ));
        }
        let safety_margin = duration(
            "control.safety_margin",
            raw.safety_margin,
            Duration::from_secs(1),
        )?;
        if safety_margin * 2 > lease_ttl {
            return Err(invalid(
                "control.safety_margin",
                format!(
                    "{} is more than half of lease_ttl ({}): the agent would fence before its first renewal could land; lower it or raise lease_ttl",
                    format_duration(safety_margin),
                    format_duration(lease_ttl)
                ),
            ));
        }
        let probe_interval = duration(
            "control.probe_interval",
            raw.probe_interval,
            Duration::from_millis(500),
        )?;
        if probe_interval * 2 > lease_ttl - safety_margin {
            return Err(invalid(
                "control.probe_interval",
                format!(
                    "{} is too long: the agent renews its lease from the same loop and must get at least two tries before the fence deadline (lease_ttl - safety_margin = {})",
                    format_duration(probe_interval),
                    format_duration(lease_ttl - safety_margin)
                ),
            ));
        }
        let failed_after = match raw.failed_after {
            None => 3,
            Some(0) => return Err(invalid("control.failed_after", "must be at least 1".into())),
            Some(n) => n,
        };
        let fence_roles = match raw.fence_roles {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => Some(v),
        };
        let switchover_timeout = duration(
            "control.switchover_timeout",
            raw.switchover_timeout,
            Duration::from_secs(30),
        )?;
        let failback = match raw.failback.as_deref() {
            None | Some("manual") => Failback::Manual,
            Some("auto") => Failback::Auto {
                max_lag: raw.failback_max_lag.unwrap_or(ByteSize(1 << 20)),
                after: duration(
                    "control.failback_after",
                    raw.failback_after,
                    Duration::from_secs(30),
                )?,
            },
            Some(other) => {
                return Err(invalid(
                    "control.failback",
                    format!("unknown policy {other:?}; use \"manual\" or \"auto\""),
                ))
            }
        };
        let health = HealthConfig::from_raw(raw.health, invalid)?;

        if endpoints.is_empty() {
            return Err(invalid(
                "endpoints",
                "no endpoints; add one per name clients use, e.g.\n  [endpoints.app-eu]\n  home = \"a\"".into(),
            ));
        }
        let mut out = BTreeMap::new();
        for (name, e) in endpoints {
            let key = format!("endpoints.{name}.home");
            if !ok_name(&name) {
                return Err(invalid(
                    &format!("endpoints.{name}"),
                    format!("endpoint name {name:?}: use 1-63 letters, digits, - or _"),
                ));
            }
            let home = e.home.ok_or_else(|| {
                invalid(
                    &key,
                    format!("missing key `home`; add e.g. home = \"{}\"", nodes[0]),
                )
            })?;
            if !nodes.contains(&home.as_str()) {
                return Err(invalid(
                    &key,
                    format!("no node named {home:?}; known nodes: {}", nodes.join(", ")),
                ));
            }
            out.insert(name.clone(), EndpointConfig { name, home });
        }
        let etcd_leader = match raw.etcd_leader {
            Some(n) if n.trim().is_empty() => {
                return Err(invalid(
                    "control.etcd_leader",
                    "empty; name an etcd member (etcdctl member list shows the names), or leave the key out".into(),
                ))
            }
            other => other,
        };
        Ok(Some(ControlConfig {
            etcd,
            cluster,
            lease_ttl,
            safety_margin,
            probe_interval,
            failed_after,
            fence_roles,
            fence_exempt: raw.fence_exempt,
            switchover_timeout,
            failback,
            health,
            endpoints: out,
            etcd_leader,
        }))
    }

    /// The endpoints whose home is `node`, in name order.
    pub fn homed_at<'c>(&'c self, node: &'c str) -> impl Iterator<Item = &'c EndpointConfig> {
        self.endpoints.values().filter(move |e| e.home == node)
    }

    /// An endpoint by name, or the list of known ones.
    pub fn endpoint(&self, name: &str) -> Result<&EndpointConfig, String> {
        self.endpoints.get(name).ok_or_else(|| {
            format!(
                "no endpoint named {name:?}; known endpoints: {}",
                self.endpoints
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

impl HealthConfig {
    fn from_raw(raw: RawHealth, invalid: Invalid<'_>) -> Result<HealthConfig, ConfigError> {
        let d = HealthConfig::default();
        let weight = |key: &str, v: Option<f64>, default: f64| -> Result<f64, ConfigError> {
            match v {
                None => Ok(default),
                Some(w) if w.is_finite() && w >= 0.0 => Ok(w),
                Some(w) => Err(invalid(key, format!("{w} is not a weight: use 0 or more"))),
            }
        };
        let fraction = |key: &str, v: Option<f64>, default: f64| -> Result<f64, ConfigError> {
            match v {
                None => Ok(default),
                Some(f) if (0.0..=1.0).contains(&f) => Ok(f),
                Some(f) => Err(invalid(key, format!("{f} is not a score: use 0.0 to 1.0"))),
            }
        };
        let degraded_below = fraction(
            "control.health.degraded_below",
            raw.degraded_below,
            d.degraded_below,
        )?;
        let failed_below = fraction(
            "control.health.failed_below",
            raw.failed_below,
            d.failed_below,
        )?;
        if failed_below > degraded_below {
            return Err(invalid(
                "control.health.failed_below",
                format!("{failed_below} is above degraded_below ({degraded_below}): a region must be degraded before it fails"),
            ));
        }
        let mut promql = Vec::new();
        for (i, p) in raw.promql.into_iter().enumerate() {
            let key = format!("control.health.promql[{i}]");
            let missing = |k: &str, example: &str| {
                invalid(
                    &format!("{key}.{k}"),
                    format!("missing key `{k}`; add e.g. {k} = {example}"),
                )
            };
            let name = p.name.ok_or_else(|| missing("name", "\"app_p95\""))?;
            let url = p
                .url
                .ok_or_else(|| missing("url", "\"http://127.0.0.1:9090\""))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    &format!("{key}.url"),
                    format!(
                        "{url:?} is not a Prometheus URL; write e.g. \"http://127.0.0.1:9090\""
                    ),
                ));
            }
            let query = p
                .query
                .ok_or_else(|| missing("query", "'up{job=\"app\"}'"))?;
            if p.max.is_none() && p.min.is_none() {
                return Err(invalid(
                    &key,
                    format!("signal {name:?} has neither `max` nor `min`: say when the value is bad, e.g. max = 0.5"),
                ));
            }
            promql.push(PromqlSignal {
                weight: weight(&format!("{key}.weight"), p.weight, 1.0)?,
                name,
                url,
                query,
                max: p.max,
                min: p.min,
            });
        }
        Ok(HealthConfig {
            weight_postgres: weight(
                "control.health.weight_postgres",
                raw.weight_postgres,
                d.weight_postgres,
            )?,
            weight_sidecar: weight(
                "control.health.weight_sidecar",
                raw.weight_sidecar,
                d.weight_sidecar,
            )?,
            weight_slot: weight("control.health.weight_slot", raw.weight_slot, d.weight_slot)?,
            weight_etcd: weight("control.health.weight_etcd", raw.weight_etcd, d.weight_etcd)?,
            max_lag: raw.max_lag.unwrap_or(d.max_lag),
            degraded_below,
            failed_below,
            sidecar_url: raw.sidecar_url,
            promql,
        })
    }
}
