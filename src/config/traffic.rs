//! `[traffic]`: how the agents move clients to an endpoint's owner, see [`crate::traffic`].
//!
//! ```toml
//! [[traffic.pgbouncer]]                 # one per pgbouncer that serves endpoints
//! name = "bouncer-a"
//! node = "a"                            # the agent that rewrites its databases_file
//! admin = "host=10.0.1.7 port=6432 dbname=pgbouncer user=pgmesh"
//! databases_file = "/etc/pgbouncer/pgmesh-databases.ini"
//! endpoints = ["app-eu"]                # pgbouncer databases named like endpoints; default all
//! pause_timeout = "10s"                 # PAUSE waits this long for running transactions
//! targets.a = "host=10.0.1.5 port=5432 dbname=app"   # the [databases] line per owner
//! targets.b = "host=10.0.2.5 port=5432 dbname=app"
//!
//! [traffic.dns]                         # RFC 2136 UPDATE with TSIG
//! zone = "db.example.com."
//! servers = ["10.0.1.53:53", "10.0.2.53:53"]   # each updated, each must confirm
//! ttl = "5s"
//! timeout = "10s"                       # for one switch, retries included
//! tsig_key = "pgmesh"
//! tsig_algorithm = "hmac-sha256"        # or "hmac-sha512"
//! tsig_secret_file = "/etc/pgmesh/tsig.secret"  # base64, as in the server's key file
//! records.a = ["10.0.1.5"]              # <endpoint>.<zone> while region a owns it
//! records.b = "lb-b.example.net."       # a string: a CNAME
//!
//! [[traffic.hook]]                      # a command (argv, JSON on stdin) or a webhook
//! name = "route53"
//! events = ["owner_changed"]            # default: every event
//! command = ["/usr/local/bin/route53-switch"]
//! timeout = "5s"
//! retries = 2
//!
//! [traffic.alertmanager]
//! urls = ["http://10.0.3.9:9093"]
//! labels = { env = "prod" }
//! resend = "30s"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

use super::duration::parse_duration;
use super::ConfigError;
use crate::traffic::alert::AlertmanagerConfig;
use crate::traffic::dns::{DnsConfig, RecordSet, TsigAlgorithm, TsigKey};
use crate::traffic::hook::{HookAction, HookConfig, HookEvent};
use crate::traffic::pgbouncer::PgbouncerConfig;

/// Validated `[traffic]`; every part optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficConfig {
    pub pgbouncer: Vec<PgbouncerConfig>,
    pub dns: Option<DnsConfig>,
    pub hooks: Vec<HookConfig>,
    pub alertmanager: Option<AlertmanagerConfig>,
}

impl TrafficConfig {
    /// Whether nothing is configured (HAProxy alone needs nothing here).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pgbouncer.is_empty()
            && self.dns.is_none()
            && self.hooks.is_empty()
            && self.alertmanager.is_none()
    }

    /// The pgbouncers that serve `endpoint`.
    pub fn bouncers_of<'c>(
        &'c self,
        endpoint: &'c str,
    ) -> impl Iterator<Item = &'c PgbouncerConfig> + 'c {
        self.pgbouncer
            .iter()
            .filter(move |b| b.endpoints.iter().any(|e| e == endpoint))
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTraffic {
    #[serde(default)]
    pgbouncer: Vec<RawPgbouncer>,
    dns: Option<RawDns>,
    #[serde(default)]
    hook: Vec<RawHook>,
    alertmanager: Option<RawAlertmanager>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgbouncer {
    name: Option<String>,
    node: Option<String>,
    admin: Option<String>,
    databases_file: Option<PathBuf>,
    endpoints: Option<Vec<String>>,
    pause_timeout: Option<String>,
    #[serde(default)]
    targets: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    zone: Option<String>,
    #[serde(default)]
    servers: Vec<String>,
    ttl: Option<String>,
    timeout: Option<String>,
    tsig_key: Option<String>,
    tsig_algorithm: Option<String>,
    tsig_secret: Option<String>,
    tsig_secret_file: Option<PathBuf>,
    #[serde(default)]
    records: BTreeMap<String, RawRecords>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRecords {
    Addresses(Vec<String>),
    Cname(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    name: Option<String>,
    events: Option<Vec<String>>,
    command: Option<Vec<String>>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout: Option<String>,
    retries: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertmanager {
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    resend: Option<String>,
    timeout: Option<String>,
}

type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// A positive duration, or `default` when not set.
fn duration(
    invalid: Invalid<'_>,
    key: &str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = v else { return Ok(default) };
    let d = parse_duration(&text).map_err(|m| invalid(key, m))?;
    if d.is_zero() {
        return Err(invalid(key, "must be more than 0".into()));
    }
    Ok(d)
}

impl TrafficConfig {
    pub(super) fn from_raw(
        raw: RawTraffic,
        nodes: &[&str],
        endpoints: &[&str],
        invalid: Invalid<'_>,
    ) -> Result<TrafficConfig, ConfigError> {
        let any = !raw.pgbouncer.is_empty()
            || raw.dns.is_some()
            || !raw.hook.is_empty()
            || raw.alertmanager.is_some();
        if any && endpoints.is_empty() {
            return Err(invalid(
                "traffic",
                "[traffic] moves endpoints, but none are configured; add [control] and e.g.\n  [endpoints.app]\n  home = \"a\"".into(),
            ));
        }
        let mut pgbouncer = Vec::new();
        for (i, b) in raw.pgbouncer.into_iter().enumerate() {
            pgbouncer.push(pgbouncer_from_raw(i, b, nodes, endpoints, invalid)?);
        }
        let mut names: Vec<&str> = pgbouncer.iter().map(|b| b.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(
                "traffic.pgbouncer",
                format!("two pgbouncers named {:?}; give each its own name", w[0]),
            ));
        }
        let dns = raw
            .dns
            .map(|d| dns_from_raw(d, nodes, invalid))
            .transpose()?;
        let hooks = raw
            .hook
            .into_iter()
            .enumerate()
            .map(|(i, h)| hook_from_raw(i, h, invalid))
            .collect::<Result<Vec<_>, _>>()?;
        let alertmanager = raw
            .alertmanager
            .map(|a| alertmanager_from_raw(a, invalid))
            .transpose()?;
        Ok(TrafficConfig {
            pgbouncer,
            dns,
            hooks,
            alertmanager,
        })
    }
}

fn pgbouncer_from_raw(
    i: usize,
    b: RawPgbouncer,
    nodes: &[&str],
    endpoints: &[&str],
    invalid: Invalid<'_>,
) -> Result<PgbouncerConfig, ConfigError> {
    let name = b.name.unwrap_or_else(|| format!("pgbouncer-{}", i + 1));
    let key = |k: &str| format!("traffic.pgbouncer[{name}].{k}");
    let node = b.node.ok_or_else(|| {
        invalid(
            &key("node"),
            format!("missing key `node`: the region whose agent rewrites this pgbouncer's databases_file, e.g. node = \"{}\"", nodes[0]),
        )
    })?;
    if !nodes.contains(&node.as_str()) {
        return Err(invalid(
            &key("node"),
            format!("no node named {node:?}; known nodes: {}", nodes.join(", ")),
        ));
    }
    let admin = b.admin.ok_or_else(|| {
        invalid(
            &key("admin"),
            "missing key `admin`: the admin console, e.g. admin = \"host=127.0.0.1 port=6432 dbname=pgbouncer user=pgmesh\"".into(),
        )
    })?;
    if admin.parse::<tokio_postgres::Config>().is_err() {
        return Err(invalid(
            &key("admin"),
            "not a libpq connection string; write e.g. \"host=127.0.0.1 port=6432 dbname=pgbouncer user=pgmesh\"".into(),
        ));
    }
    let databases_file = b.databases_file.ok_or_else(|| {
        invalid(
            &key("databases_file"),
            "missing key `databases_file`: the file pgmesh writes and pgbouncer.ini includes, e.g. databases_file = \"/etc/pgbouncer/pgmesh-databases.ini\"".into(),
        )
    })?;
    let served: Vec<String> = match b.endpoints {
        None => endpoints.iter().map(|e| (*e).to_string()).collect(),
        // The agents drive a pgbouncer only for the endpoints listed: an empty list would
        // be accepted and never used.
        Some(list) if list.is_empty() => {
            return Err(invalid(
                &key("endpoints"),
                "an empty list: this pgbouncer would serve no endpoint; list the endpoints it serves, or leave `endpoints` out to serve all".into(),
            ))
        }
        Some(list) => {
            for e in &list {
                if !endpoints.contains(&e.as_str()) {
                    return Err(invalid(
                        &key("endpoints"),
                        format!(
                            "no endpoint named {e:?}; known endpoints: {}",
                            endpoints.join(", ")
                        ),
                    ));
                }
            }
            list
        }
    };
    for n in nodes {
        if !b.targets.contains_key(*n) {
            return Err(invalid(
                &key("targets"),
                format!("no target for node {n:?}: pgbouncer must know how to reach every region that can own its endpoints; add e.g. targets.{n} = \"host=10.0.0.5 port=5432 dbname=app\""),
            ));
        }
    }
    for (n, conn) in &b.targets {
        if !nodes.contains(&n.as_str()) {
            return Err(invalid(
                &key("targets"),
                format!("no node named {n:?}; known nodes: {}", nodes.join(", ")),
            ));
        }
        if conn.contains('\n') || conn.trim().is_empty() {
            return Err(invalid(
                &key(&format!("targets.{n}")),
                "must be one line of pgbouncer's [databases] syntax, e.g. \"host=10.0.0.5 port=5432 dbname=app\"".into(),
            ));
        }
    }
    Ok(PgbouncerConfig {
        pause_timeout: duration(
            invalid,
            &key("pause_timeout"),
            b.pause_timeout,
            Duration::from_secs(10),
        )?,
        name,
        node,
        admin,
        databases_file,
        endpoints: served,
        targets: b.targets,
    })
}

fn dns_from_raw(d: RawDns, nodes: &[&str], invalid: Invalid<'_>) -> Result<DnsConfig, ConfigError> {
    let zone = d.zone.ok_or_else(|| {
        invalid(
            "traffic.dns.zone",
            "missing key `zone`, e.g. zone = \"db.example.com.\"".into(),
        )
    })?;
    let zone = if zone.ends_with('.') {
        zone
    } else {
        format!("{zone}.")
    };
    if d.servers.is_empty() {
        return Err(invalid(
            "traffic.dns.servers",
            "no servers; list every authoritative server to update, e.g. servers = [\"10.0.1.53:53\"]".into(),
        ));
    }
    let servers = d
        .servers
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    invalid(
                        "traffic.dns.servers",
                        format!("{s:?} is not an address; write e.g. \"10.0.1.53:53\""),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ttl = duration(invalid, "traffic.dns.ttl", d.ttl, Duration::from_secs(5))?;
    if ttl.subsec_millis() != 0 {
        return Err(invalid(
            "traffic.dns.ttl",
            "DNS TTLs are whole seconds; write e.g. \"5s\"".into(),
        ));
    }
    let timeout = duration(
        invalid,
        "traffic.dns.timeout",
        d.timeout,
        Duration::from_secs(10),
    )?;
    let tsig = match (d.tsig_key, d.tsig_secret, d.tsig_secret_file) {
        (None, None, None) => None,
        (None, _, _) => {
            return Err(invalid(
                "traffic.dns.tsig_key",
                "a TSIG secret is set but no key name; add tsig_key = \"<the key's name on the server>\"".into(),
            ))
        }
        (Some(_), Some(_), Some(_)) => {
            return Err(invalid(
                "traffic.dns.tsig_secret",
                "set tsig_secret or tsig_secret_file, not both".into(),
            ))
        }
        (Some(_), None, None) => {
            return Err(invalid(
                "traffic.dns.tsig_secret_file",
                "a TSIG key needs its secret: tsig_secret_file = \"/etc/pgmesh/tsig.secret\" (base64, as the DNS server's key file has it)".into(),
            ))
        }
        (Some(name), secret, file) => {
            let (key, text) = match (secret, file) {
                (Some(s), _) => ("traffic.dns.tsig_secret", s),
                (None, Some(path)) => (
                    "traffic.dns.tsig_secret_file",
                    std::fs::read_to_string(&path).map_err(|e| {
                        invalid(
                            "traffic.dns.tsig_secret_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?,
                ),
                (None, None) => unreachable!("matched above"),
            };
            let secret = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| invalid(key, format!("not base64 ({e}); copy the secret from the DNS server's key (e.g. `keymgr -t pgmesh hmac-sha256`)")))?;
            let algorithm = match d.tsig_algorithm.as_deref() {
                None => TsigAlgorithm::HmacSha256,
                Some(a) => a.parse::<TsigAlgorithm>().map_err(|_| {
                    invalid(
                        "traffic.dns.tsig_algorithm",
                        format!("{a:?}: use \"hmac-sha256\" or \"hmac-sha512\""),
                    )
                })?,
            };
            Some(TsigKey {
                name,
                algorithm,
                secret,
            })
        }
    };
    let mut records = BTreeMap::new();
    for n in nodes {
        let Some(r) = d.records.get(*n) else {
            return Err(invalid(
                "traffic.dns.records",
                format!("no records for node {n:?}: what should <endpoint>.{zone} answer while {n} owns it? e.g. records.{n} = [\"10.0.0.5\"] or records.{n} = \"lb-{n}.example.net.\""),
            ));
        };
        let set = match r {
            RawRecords::Addresses(list) if list.is_empty() => {
                return Err(invalid(
                    &format!("traffic.dns.records.{n}"),
                    "an empty record set would leave clients nothing to reach".into(),
                ))
            }
            RawRecords::Addresses(list) => RecordSet::Addresses(
                list.iter()
                    .map(|a| {
                        a.parse::<IpAddr>().map_err(|_| {
                            invalid(
                                &format!("traffic.dns.records.{n}"),
                                format!("{a:?} is not an IPv4 or IPv6 address; for a name, give one string (a CNAME)"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            RawRecords::Cname(name) => RecordSet::Cname(if name.ends_with('.') {
                name.clone()
            } else {
                format!("{name}.")
            }),
        };
        records.insert((*n).to_string(), set);
    }
    if let Some(extra) = d.records.keys().find(|k| !nodes.contains(&k.as_str())) {
        return Err(invalid(
            "traffic.dns.records",
            format!("no node named {extra:?}; known nodes: {}", nodes.join(", ")),
        ));
    }
    Ok(DnsConfig {
        zone,
        servers,
        ttl,
        tsig,
        timeout,
        records,
    })
}

fn hook_from_raw(i: usize, h: RawHook, invalid: Invalid<'_>) -> Result<HookConfig, ConfigError> {
    let name = h.name.unwrap_or_else(|| format!("hook-{}", i + 1));
    let key = |k: &str| format!("traffic.hook[{name}].{k}");
    let action = match (h.command, h.url) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &key("command"),
                "set `command` or `url`, not both (make two hooks for both)".into(),
            ))
        }
        (None, None) => return Err(invalid(
            &key("command"),
            "a hook needs `command = [\"/path/to/program\", \"arg\"]` or `url = \"https://...\"`"
                .into(),
        )),
        (Some(argv), None) => {
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(invalid(
                    &key("command"),
                    "empty command; give the program and its arguments, e.g. [\"/usr/local/bin/notify\"]".into(),
                ));
            }
            if !h.headers.is_empty() {
                return Err(invalid(
                    &key("headers"),
                    "headers only apply to a webhook (`url`)".into(),
                ));
            }
            HookAction::Command(argv)
        }
        (None, Some(url)) => {
            if reqwest::Url::parse(&url)
                .map(|u| u.scheme() != "http" && u.scheme() != "https")
                .unwrap_or(true)
            {
                return Err(invalid(
                    &key("url"),
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            HookAction::Webhook {
                url,
                headers: h.headers,
            }
        }
    };
    let events = match h.events {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(invalid(
                &key("events"),
                "an empty list: the hook would never run; list its events, or leave `events` out for every event".into(),
            ))
        }
        Some(list) => Some(
            list.iter()
                .map(|e| {
                    e.parse::<HookEvent>().map_err(|_| {
                        invalid(
                            &key("events"),
                            format!("unknown event {e:?}; use owner_changed, fenced, unfenced, degraded, recovered, switchover_aborted or lease_lost"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(HookConfig {
        timeout: duration(invalid, &key("timeout"), h.timeout, Duration::from_secs(5))?,
        retries: h.retries.unwrap_or(2),
        name,
        events,
        action,
    })
}

fn alertmanager_from_raw(
    a: RawAlertmanager,
    invalid: Invalid<'_>,
) -> Result<AlertmanagerConfig, ConfigError> {
    if a.urls.is_empty() {
        return Err(invalid(
            "traffic.alertmanager.urls",
            "no urls; list every Alertmanager of the set, e.g. urls = [\"http://10.0.3.9:9093\"]"
                .into(),
        ));
    }
    for u in &a.urls {
        if reqwest::Url::parse(u)
            .map(|u| u.scheme() != "http" && u.scheme() != "https")
            .unwrap_or(true)
        {
            return Err(invalid(
                "traffic.alertmanager.urls",
                format!("{u:?} is not an http(s) URL; write e.g. \"http://10.0.3.9:9093\""),
            ));
        }
    }
    Ok(AlertmanagerConfig {
        urls: a.urls,
        labels: a.labels,
        resend: duration(
            invalid,
            "traffic.alertmanager.resend",
            a.resend,
            Duration::from_secs(30),
        )?,
        timeout: duration(
            invalid,
            "traffic.alertmanager.timeout",
            a.timeout,
            Duration::from_secs(5),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use std::net::Ipv4Addr;

    const BASE: &str = "[nodes.a]\ndsn = \"host=a\"\n[nodes.b]\ndsn = \"host=b\"\n[replication]\ntables = [\"public.*\"]\n";
    const CONTROL: &str = "[control]\netcd = [\"http://127.0.0.1:2379\"]\ncluster = \"prod\"\n[endpoints.app-eu]\nhome = \"a\"\n[endpoints.app-us]\nhome = \"b\"\n";

    /// A secret as Knot's `keymgr` prints it.
    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==";

    const PGBOUNCER: &str = r#"
[[traffic.pgbouncer]]
name = "bouncer-a"
node = "a"
admin = "host=10.0.1.7 port=6432 dbname=pgbouncer user=pgmesh"
databases_file = "/etc/pgbouncer/pgmesh-databases.ini"
targets.a = "host=10.0.1.5 port=5432 dbname=app"
targets.b = "host=10.0.2.5 port=5432 dbname=app"
"#;

    const DNS: &str = r#"
[traffic.dns]
zone = "db.example.com"
servers = ["10.0.1.53:53", "10.0.2.53"]
tsig_key = "pgmesh"
tsig_secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="
records.a = ["10.0.1.5", "2001:db8::5"]
records.b = "lb-b.example.net"
"#;

    fn parse_config(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            "pgmesh.toml",
            &Env::from_pairs(std::iter::empty::<(&str, &str)>()),
        )
    }

    /// `[traffic]` text with two nodes (a, b) and two endpoints (app-eu homed in a,
    /// app-us in b).
    fn parse(traffic: &str) -> Result<TrafficConfig, ConfigError> {
        parse_config(&format!("{BASE}{CONTROL}{traffic}")).map(|c| c.traffic)
    }

    /// The key and message of the error `traffic` gets; panics on any other outcome.
    fn invalid(traffic: &str) -> (String, String) {
        match parse(traffic) {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected an invalid value, got {other:?} for\n{traffic}"),
        }
    }

    #[test]
    fn a_full_traffic_section_maps_to_its_parts() {
        let text = format!(
            r#"{PGBOUNCER}endpoints = ["app-eu"]
pause_timeout = "2s"
{DNS}ttl = "30s"
timeout = "4s"
tsig_algorithm = "hmac-sha512"

[[traffic.hook]]
name = "route53"
events = ["owner_changed", "lease_lost"]
command = ["/usr/local/bin/route53-switch", "--zone", "Z1"]
timeout = "7s"
retries = 0

[[traffic.hook]]
url = "https://hooks.example.com/pgmesh"
headers = {{ Authorization = "Bearer t0ken" }}

[traffic.alertmanager]
urls = ["http://10.0.3.9:9093", "https://am.example.com"]
labels = {{ env = "prod" }}
resend = "1m"
timeout = "2s"
"#
        );
        let t = parse(&text).unwrap();
        assert!(!t.is_empty());
        assert_eq!(
            t.pgbouncer,
            vec![PgbouncerConfig {
                name: "bouncer-a".into(),
                node: "a".into(),
                admin: "host=10.0.1.7 port=6432 dbname=pgbouncer user=pgmesh".into(),
                databases_file: PathBuf::from("/etc/pgbouncer/pgmesh-databases.ini"),
                endpoints: vec!["app-eu".into()],
                targets: BTreeMap::from([
                    ("a".into(), "host=10.0.1.5 port=5432 dbname=app".into()),
                    ("b".into(), "host=10.0.2.5 port=5432 dbname=app".into()),
                ]),
                pause_timeout: Duration::from_secs(2),
            }]
        );
        assert_eq!(t.bouncers_of("app-eu").count(), 1);
        assert_eq!(t.bouncers_of("app-us").count(), 0);

        let dns = t.dns.as_ref().unwrap();
        assert_eq!(dns.zone, "db.example.com.", "made absolute");
        assert_eq!(
            dns.servers,
            vec![
                SocketAddr::from(([10, 0, 1, 53], 53)),
                SocketAddr::from(([10, 0, 2, 53], 53)),
            ]
        );
        assert_eq!(dns.ttl, Duration::from_secs(30));
        assert_eq!(dns.timeout, Duration::from_secs(4));
        assert_eq!(
            dns.tsig,
            Some(TsigKey {
                name: "pgmesh".into(),
                algorithm: TsigAlgorithm::HmacSha512,
                secret: b"secret-secret-secret-secret!".to_vec(),
            })
        );
        // Compared field by field: RecordSet's equality is a client's view (order and
        // case do not count), the parsed values must be exact.
        match &dns.records["a"] {
            RecordSet::Addresses(list) => assert_eq!(
                list,
                &vec![
                    IpAddr::V4(Ipv4Addr::new(10, 0, 1, 5)),
                    "2001:db8::5".parse::<IpAddr>().unwrap(),
                ]
            ),
            other @ RecordSet::Cname(_) => panic!("records.a: {other:?}"),
        }
        match &dns.records["b"] {
            RecordSet::Cname(name) => assert_eq!(name, "lb-b.example.net.", "made absolute"),
            other @ RecordSet::Addresses(_) => panic!("records.b: {other:?}"),
        }
        assert_eq!(dns.records.len(), 2);

        assert_eq!(
            t.hooks,
            vec![
                HookConfig {
                    name: "route53".into(),
                    events: Some(vec![HookEvent::OwnerChanged, HookEvent::LeaseLost]),
                    action: HookAction::Command(vec![
                        "/usr/local/bin/route53-switch".into(),
                        "--zone".into(),
                        "Z1".into(),
                    ]),
                    timeout: Duration::from_secs(7),
                    retries: 0,
                },
                HookConfig {
                    name: "hook-2".into(),
                    events: None,
                    action: HookAction::Webhook {
                        url: "https://hooks.example.com/pgmesh".into(),
                        headers: BTreeMap::from([("Authorization".into(), "Bearer t0ken".into())]),
                    },
                    timeout: Duration::from_secs(5),
                    retries: 2,
                },
            ]
        );
        assert_eq!(
            t.alertmanager,
            Some(AlertmanagerConfig {
                urls: vec![
                    "http://10.0.3.9:9093".into(),
                    "https://am.example.com".into()
                ],
                labels: BTreeMap::from([("env".into(), "prod".into())]),
                resend: Duration::from_secs(60),
                timeout: Duration::from_secs(2),
            })
        );
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let t = parse(&format!("{PGBOUNCER}{DNS}")).unwrap();
        let b = &t.pgbouncer[0];
        assert_eq!(b.endpoints, ["app-eu", "app-us"], "all endpoints");
        assert_eq!(b.pause_timeout, Duration::from_secs(10));
        assert_eq!(t.bouncers_of("app-us").count(), 1);
        let dns = t.dns.unwrap();
        assert_eq!(dns.ttl, Duration::from_secs(5));
        assert_eq!(dns.timeout, Duration::from_secs(10));
        assert_eq!(dns.tsig.unwrap().algorithm, TsigAlgorithm::HmacSha256);
        assert!(t.hooks.is_empty() && t.alertmanager.is_none());

        let t = parse("[[traffic.pgbouncer]]\nnode = \"b\"\nadmin = \"host=h\"\ndatabases_file = \"f\"\ntargets = { a = \"host=a\", b = \"host=b\" }\n[traffic.alertmanager]\nurls = [\"http://am:9093\"]\n").unwrap();
        assert_eq!(t.pgbouncer[0].name, "pgbouncer-1");
        let am = t.alertmanager.unwrap();
        assert_eq!(
            (am.resend, am.timeout),
            (Duration::from_secs(30), Duration::from_secs(5))
        );

        // No [traffic] at all, with or without [control]: nothing to drive.
        assert!(parse("").unwrap().is_empty());
        assert!(parse_config(BASE).unwrap().traffic.is_empty());
    }

    #[test]
    fn the_tsig_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tsig.secret");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let dns = DNS.replace(
            &format!("tsig_secret = \"{SECRET}\""),
            &format!("tsig_secret_file = \"{}\"", file.display()),
        );
        let t = parse(&dns).unwrap();
        assert_eq!(
            t.dns.unwrap().tsig.unwrap().secret,
            b"secret-secret-secret-secret!"
        );
        let (key, m) = invalid(&dns.replace("tsig.secret", "missing.secret"));
        assert_eq!(key, "traffic.dns.tsig_secret_file");
        assert!(
            m.starts_with("cannot read ") && m.contains("missing.secret"),
            "{m}"
        );
    }

    /// Each case: a broken `[traffic]`, the key the error must name, and what its
    /// message must say (the problem and the fix).
    #[test]
    fn errors_name_the_key_and_the_fix() {
        let dns_with = |from: &str, to: &str| {
            assert!(DNS.contains(from), "{from}");
            DNS.replace(from, to)
        };
        let bouncer_with = |from: &str, to: &str| {
            assert!(PGBOUNCER.contains(from), "{from}");
            PGBOUNCER.replace(from, to)
        };
        let hook = |body: &str| format!("[[traffic.hook]]\nname = \"h\"\n{body}\n");
        let cases: Vec<(String, &str, Vec<&str>)> = vec![
            (
                bouncer_with("targets.b = \"host=10.0.2.5 port=5432 dbname=app\"\n", ""),
                "traffic.pgbouncer[bouncer-a].targets",
                vec!["no target for node \"b\"", "targets.b = \""],
            ),
            (
                bouncer_with("node = \"a\"", "node = \"c\""),
                "traffic.pgbouncer[bouncer-a].node",
                vec!["no node named \"c\"; known nodes: a, b"],
            ),
            (
                bouncer_with("node = \"a\"\n", ""),
                "traffic.pgbouncer[bouncer-a].node",
                vec!["missing key `node`", "node = \"a\""],
            ),
            (
                format!("{PGBOUNCER}targets.c = \"host=10.0.3.5\"\n"),
                "traffic.pgbouncer[bouncer-a].targets",
                vec!["no node named \"c\"; known nodes: a, b"],
            ),
            (
                format!("{PGBOUNCER}endpoints = [\"app-eu\", \"app-xx\"]\n"),
                "traffic.pgbouncer[bouncer-a].endpoints",
                vec!["no endpoint named \"app-xx\"; known endpoints: app-eu, app-us"],
            ),
            (
                format!("{PGBOUNCER}endpoints = []\n"),
                "traffic.pgbouncer[bouncer-a].endpoints",
                vec!["would serve no endpoint", "leave `endpoints` out"],
            ),
            (
                bouncer_with(
                    "admin = \"host=10.0.1.7 port=6432 dbname=pgbouncer user=pgmesh\"",
                    "admin = \"host=h port=notaport\"",
                ),
                "traffic.pgbouncer[bouncer-a].admin",
                vec!["not a libpq connection string", "dbname=pgbouncer"],
            ),
            (
                bouncer_with(
                    "databases_file = \"/etc/pgbouncer/pgmesh-databases.ini\"\n",
                    "",
                ),
                "traffic.pgbouncer[bouncer-a].databases_file",
                vec!["missing key `databases_file`", "pgbouncer.ini includes"],
            ),
            (
                format!("{PGBOUNCER}pause_timeout = \"0s\"\n"),
                "traffic.pgbouncer[bouncer-a].pause_timeout",
                vec!["must be more than 0"],
            ),
            (
                format!("{PGBOUNCER}{PGBOUNCER}"),
                "traffic.pgbouncer",
                vec![
                    "two pgbouncers named \"bouncer-a\"",
                    "give each its own name",
                ],
            ),
            (
                hook("command = [\"/bin/true\"]\nurl = \"https://h.example.com\""),
                "traffic.hook[h].command",
                vec!["`command` or `url`, not both"],
            ),
            (
                hook("timeout = \"1s\""),
                "traffic.hook[h].command",
                vec!["a hook needs `command = [", "or `url = \""],
            ),
            (
                hook("command = []"),
                "traffic.hook[h].command",
                vec!["empty command"],
            ),
            (
                hook("command = [\"/bin/true\"]\nheaders = { X = \"y\" }"),
                "traffic.hook[h].headers",
                vec!["only apply to a webhook"],
            ),
            (
                hook("url = \"ftp://h.example.com\""),
                "traffic.hook[h].url",
                vec!["\"ftp://h.example.com\" is not an http(s) URL"],
            ),
            (
                hook("command = [\"/bin/true\"]\nevents = [\"owner_change\"]"),
                "traffic.hook[h].events",
                vec![
                    "unknown event \"owner_change\"",
                    "use owner_changed, fenced",
                ],
            ),
            (
                hook("command = [\"/bin/true\"]\nevents = []"),
                "traffic.hook[h].events",
                vec!["would never run", "leave `events` out"],
            ),
            (
                dns_with("records.b = \"lb-b.example.net\"\n", ""),
                "traffic.dns.records",
                vec!["no records for node \"b\"", "records.b = [\""],
            ),
            (
                format!("{DNS}records.c = [\"10.0.3.5\"]\n"),
                "traffic.dns.records",
                vec!["no node named \"c\"; known nodes: a, b"],
            ),
            (
                dns_with("\"10.0.1.5\"", "\"10.0.1.500\""),
                "traffic.dns.records.a",
                vec!["\"10.0.1.500\" is not an IPv4 or IPv6 address", "CNAME"],
            ),
            (
                dns_with(
                    "records.a = [\"10.0.1.5\", \"2001:db8::5\"]",
                    "records.a = []",
                ),
                "traffic.dns.records.a",
                vec!["empty record set"],
            ),
            (
                dns_with(SECRET, "not base64!"),
                "traffic.dns.tsig_secret",
                vec!["not base64", "keymgr"],
            ),
            (
                dns_with("tsig_key = \"pgmesh\"\n", ""),
                "traffic.dns.tsig_key",
                vec!["no key name", "tsig_key = \""],
            ),
            (
                dns_with(&format!("tsig_secret = \"{SECRET}\"\n"), ""),
                "traffic.dns.tsig_secret_file",
                vec!["needs its secret"],
            ),
            (
                format!("{DNS}tsig_secret_file = \"/etc/pgmesh/tsig.secret\"\n"),
                "traffic.dns.tsig_secret",
                vec!["not both"],
            ),
            (
                format!("{DNS}tsig_algorithm = \"hmac-md5\"\n"),
                "traffic.dns.tsig_algorithm",
                vec!["\"hmac-md5\": use \"hmac-sha256\" or \"hmac-sha512\""],
            ),
            (
                dns_with(
                    "servers = [\"10.0.1.53:53\", \"10.0.2.53\"]",
                    "servers = []",
                ),
                "traffic.dns.servers",
                vec!["no servers", "servers = [\""],
            ),
            (
                dns_with("\"10.0.2.53\"", "\"ns2.example.com\""),
                "traffic.dns.servers",
                vec!["\"ns2.example.com\" is not an address"],
            ),
            (
                format!("{DNS}ttl = \"1500ms\"\n"),
                "traffic.dns.ttl",
                vec!["whole seconds"],
            ),
            (
                dns_with("zone = \"db.example.com\"\n", ""),
                "traffic.dns.zone",
                vec!["missing key `zone`"],
            ),
            (
                "[traffic.alertmanager]\nlabels = { env = \"prod\" }\n".into(),
                "traffic.alertmanager.urls",
                vec!["no urls", "urls = [\"http://"],
            ),
            (
                "[traffic.alertmanager]\nurls = [\"10.0.3.9:9093\"]\n".into(),
                "traffic.alertmanager.urls",
                vec!["is not an http(s) URL"],
            ),
        ];
        for (traffic, want_key, fragments) in cases {
            let (key, message) = invalid(&traffic);
            assert_eq!(key, want_key, "{message}\nfor\n{traffic}");
            for f in fragments {
                assert!(
                    message.contains(f),
                    "{key}: {message:?} lacks {f:?}\nfor\n{traffic}"
                );
            }
        }
    }

    #[test]
    fn traffic_needs_endpoints_to_move() {
        for traffic in [
            PGBOUNCER,
            DNS,
            "[traffic.alertmanager]\nurls = [\"http://am:9093\"]\n",
        ] {
            let e = parse_config(&format!("{BASE}{traffic}")).unwrap_err();
            let m = e.to_string();
            assert!(
                matches!(&e, ConfigError::Invalid { key, .. } if key == "traffic"),
                "{m}"
            );
            assert!(
                m.contains("none are configured")
                    && m.contains("[control]")
                    && m.contains("[endpoints.app]"),
                "{m}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors_naming_the_key() {
        let e = parse(&format!("{PGBOUNCER}pause = \"1s\"\n")).unwrap_err();
        assert!(
            matches!(e, ConfigError::Parse { .. }) && e.to_string().contains("pause"),
            "{e}"
        );
        let e =
            parse(&DNS.replace("records.b = \"lb-b.example.net\"", "records.b = 5")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = parse("[traffic.webhooks]\nurl = \"https://x\"\n").unwrap_err();
        assert!(e.to_string().contains("webhooks"), "{e}");
    }
}
