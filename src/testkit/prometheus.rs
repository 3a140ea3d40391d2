//! A throwaway Prometheus on loopback that scrapes given targets every second.
//!
//! pgmesh's metrics and alert rules are only proven when a real Prometheus (Debian's
//! `prometheus` 2.x, `/usr/bin/prometheus`) scrapes them: the exposition format must parse,
//! and series must carry the labels the rules select on. Scrape and rule evaluation run every
//! second so a test sees a new value within about two seconds; the TSDB lives in a scratch
//! directory that is deleted on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::{lost_port_race, scratch_dir, tail, Daemon};
use super::loopback::{encode_query_value, free_ports, get_json, wait_http_ready};
use super::TestkitError;

/// The server from Debian's `prometheus` package.
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// How long the server may take to answer `/-/ready` with 200.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Start attempts when the free port is taken before Prometheus binds it.
const START_ATTEMPTS: usize = 5;
/// Log lines quoted in errors.
const LOG_TAIL: usize = 30;
/// Timeout of one HTTP request to the server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// One element of an instant vector: the series' labels (with `__name__` when the query keeps
/// it) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A running Prometheus on 127.0.0.1 scraping one job; killed and deleted on drop.
#[derive(Debug)]
pub struct Prometheus {
    job: String,
    targets: Vec<String>,
    port: u16,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, served at `/metrics` over http) as
    /// job `job` every second, and waits until it is ready to answer queries (at most 30 s).
    ///
    /// Targets need not be up yet: Prometheus records them as down until they answer, which
    /// is what [`Prometheus::wait_target_up`] waits out.
    pub fn start(job: &str, targets: &[String]) -> Result<Prometheus, TestkitError> {
        if let Some(bad) = targets.iter().find(|t| t.contains('/')) {
            return Err(TestkitError::Failed {
                what: format!("prometheus target {bad}"),
                status: "not host:port".to_string(),
                stderr: "give targets as host:port; Prometheus adds http:// and /metrics"
                    .to_string(),
            });
        }
        let binary = Path::new(PROMETHEUS);
        if !binary.exists() {
            return Err(TestkitError::ProgramMissing {
                program: binary.to_path_buf(),
                script: "scripts/install-control.sh",
            });
        }
        let dir = scratch_dir("prometheus")?;
        let mut prom = Prometheus {
            job: job.to_string(),
            targets: targets.to_vec(),
            port: 0,
            dir,
            daemon: None,
        };
        let config = prom.dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(job, targets)).map_err(|source| TestkitError::Io {
            path: config.clone(),
            source,
        })?;
        let mut last_err = None;
        for attempt in 0..START_ATTEMPTS {
            prom.port = free_ports(1)?[0];
            let log_path = prom.log_path();
            let mut cmd = Command::new(binary);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    prom.dir.join(format!("tsdb-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{}", prom.port));
            prom.daemon = Some(Daemon::spawn("prometheus", cmd, &log_path)?);
            match prom.wait_ready() {
                Ok(()) => return Ok(prom),
                Err(e) if lost_port_race(&prom.log()) => {
                    last_err = Some(e);
                    if let Some(mut d) = prom.daemon.take() {
                        d.kill()?;
                    }
                    // The next attempt appends to the same log: start it afresh.
                    let _ = std::fs::remove_file(&log_path);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| TestkitError::NotReady {
            what: "prometheus did not start".to_string(),
            log: String::new(),
        }))
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The scratch directory holding the config, the TSDB and the log; gone after drop.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the last scrape of every target succeeded (`up{job=...} == 1` has one
    /// series per target), so later queries see the targets' metrics. On timeout the error
    /// lists each target's health and last scrape error as Prometheus reports them.
    pub fn wait_target_up(&self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        let promql = format!("up{{job={}}} == 1", promql_string(&self.job));
        let want: BTreeSet<&str> = self.targets.iter().map(String::as_str).collect();
        loop {
            let last = match self.query(&promql) {
                Ok(samples) => {
                    let up: BTreeSet<&str> = samples
                        .iter()
                        .filter_map(|s| s.labels.get("instance").map(String::as_str))
                        .collect();
                    if want.is_subset(&up) {
                        return Ok(());
                    }
                    format!("up: {up:?}")
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    what: format!(
                        "prometheus at {} did not see every target of job {} up within \
                         {timeout:?} (wanted {want:?}; last query: {last}); targets: {}",
                        self.url(),
                        self.job,
                        self.target_health()
                    ),
                    log: tail(&self.log(), LOG_TAIL),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Evaluates `promql` now (`GET /api/v1/query`) and returns the instant vector it yields;
    /// any other result type (scalar, string, matrix) is an error.
    pub fn query(&self, promql: &str) -> Result<Vec<PromSample>, TestkitError> {
        let path = format!("/api/v1/query?query={}", encode_query_value(promql));
        let json = self.get_json(&path)?;
        let failed = |why: String| TestkitError::Failed {
            what: format!("prometheus query {promql}"),
            status: why,
            stderr: json.to_string(),
        };
        if json["status"] != "success" {
            return Err(failed(format!("status {}", json["status"])));
        }
        if json["data"]["resultType"] != "vector" {
            return Err(failed(format!(
                "result type {}, not vector",
                json["data"]["resultType"]
            )));
        }
        let results = json["data"]["result"]
            .as_array()
            .ok_or_else(|| failed("no result array".to_string()))?;
        results
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                // Values are [unix_time, "decimal string"]; the string also spells NaN/±Inf.
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| failed(format!("sample without a value: {r}")))?;
                Ok(PromSample { labels, value })
            })
            .collect()
    }

    /// Everything Prometheus logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    /// Polls `/-/ready` (200 once the TSDB is open and the config loaded).
    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let log_path = self.log_path();
        let daemon = &mut self.daemon;
        wait_http_ready(
            "prometheus",
            self.port,
            READY_DEADLINE,
            || daemon.as_mut().and_then(Daemon::exit_status),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
        )
    }

    fn get_json(&self, path: &str) -> Result<serde_json::Value, TestkitError> {
        get_json(self.port, path, HTTP_TIMEOUT)
    }

    /// `instance=health (last error)` for each active target, for timeout messages.
    fn target_health(&self) -> String {
        let json = match self.get_json("/api/v1/targets?state=active") {
            Ok(j) => j,
            Err(e) => return e.to_string(),
        };
        let mut out = String::new();
        for t in json["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let _ = write!(
                out,
                "{}={} ({}); ",
                t["labels"]["instance"].as_str().unwrap_or("?"),
                t["health"].as_str().unwrap_or("?"),
                t["lastError"].as_str().unwrap_or("")
            );
        }
        if out.is_empty() {
            out.push_str("none active");
        }
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// prometheus.yml: one job, 1 s scrape and evaluation. `scrape_timeout` is set because its
/// default (10 s) may not exceed the scrape interval. Strings are written JSON-quoted, which
/// YAML reads as double-quoted scalars, so any job name or target is safe.
fn config_yaml(job: &str, targets: &[String]) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let list = targets
        .iter()
        .map(|t| quote(t))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# written by pgmesh testkit\n\
         global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: {}\n    static_configs:\n      - targets: [{list}]\n",
        quote(job)
    )
}

/// A PromQL string literal (PromQL accepts Go escapes, which JSON's are a subset of).
fn promql_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_quotes_job_and_targets() {
        let y = config_yaml("pg\"mesh", &["127.0.0.1:1".to_string()]);
        assert!(y.contains(r#"job_name: "pg\"mesh""#), "{y}");
        assert!(y.contains(r#"targets: ["127.0.0.1:1"]"#), "{y}");
    }
}
