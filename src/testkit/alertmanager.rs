//! A throwaway Alertmanager on loopback, to prove pgmesh's health alerts against the real
//! v2 API (Debian's `prometheus-alertmanager` 0.25).
//!
//! Gossip is off (`--cluster.listen-address=` empty), so it is ready at once and needs one
//! port; its one receiver discards everything. What tests can rely on in 0.25:
//! `GET /api/v2/alerts` lists an alert as soon as it is posted (state `active`), and drops
//! it as soon as its `endsAt` has passed — a resolved alert is not listed at all, whatever
//! the `active`/`silenced`/`inhibited` filters say — so "resolved" means "gone from
//! [`Alertmanager::alerts`]". [`Alertmanager::received`] counts resolves that arrived, to
//! tell a resolve from an alert that merely expired.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::{lost_port_race, scratch_dir, tail, Daemon};
use super::loopback::{free_ports, get_json, http_get, wait_http_ready};
use super::TestkitError;

/// The server from Debian's `prometheus-alertmanager` package.
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const READY_DEADLINE: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;
const LOG_TAIL: usize = 30;
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// One alert as `GET /api/v2/alerts` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `active`, `suppressed` or `unprocessed`.
    pub state: String,
    pub starts_at: String,
    pub ends_at: String,
    pub fingerprint: String,
}

impl ActiveAlert {
    /// The label's value, `""` when absent.
    #[must_use]
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Alerts the server took in since it started (`alertmanager_alerts_received_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Received {
    pub firing: u64,
    pub resolved: u64,
}

/// A running Alertmanager on 127.0.0.1; killed and its directory deleted on drop.
#[derive(Debug)]
pub struct Alertmanager {
    port: u16,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

impl Alertmanager {
    /// Starts an Alertmanager and waits until `/-/ready` answers 200 (at most 30 s).
    pub fn start() -> Result<Alertmanager, TestkitError> {
        let binary = Path::new(ALERTMANAGER);
        if !binary.exists() {
            return Err(TestkitError::ProgramMissing {
                program: binary.to_path_buf(),
                script: "scripts/install-control.sh",
            });
        }
        let dir = scratch_dir("alertmanager")?;
        let mut am = Alertmanager {
            port: 0,
            dir,
            daemon: None,
        };
        let config = am.dir.join("alertmanager.yml");
        std::fs::write(&config, CONFIG).map_err(|source| TestkitError::Io {
            path: config.clone(),
            source,
        })?;
        let mut last_err = None;
        for attempt in 0..START_ATTEMPTS {
            am.port = free_ports(1)?[0];
            let log_path = am.log_path();
            let mut cmd = Command::new(binary);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.path={}",
                    am.dir.join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{}", am.port))
                // Empty: no gossip, so no second port and no wait for the cluster to settle.
                .arg("--cluster.listen-address=");
            am.daemon = Some(Daemon::spawn("alertmanager", cmd, &log_path)?);
            match am.wait_ready() {
                Ok(()) => return Ok(am),
                Err(e) if lost_port_race(&am.log()) => {
                    last_err = Some(e);
                    if let Some(mut d) = am.daemon.take() {
                        d.kill()?;
                    }
                    let _ = std::fs::remove_file(&log_path);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| TestkitError::NotReady {
            what: "alertmanager did not start".to_string(),
            log: String::new(),
        }))
    }

    /// The base URL, `http://127.0.0.1:PORT` (what pgmesh's `urls` take).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The scratch directory holding the config, the data and the log; gone after drop.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The alerts the server holds now (`GET /api/v2/alerts`): firing ones only, a resolved
    /// alert is not listed.
    pub fn alerts(&self) -> Result<Vec<ActiveAlert>, TestkitError> {
        let path = "/api/v2/alerts";
        let json = self.get_json(path)?;
        let list = json.as_array().ok_or_else(|| TestkitError::Failed {
            what: format!("GET {}{path}", self.url()),
            status: "not a JSON array".to_string(),
            stderr: json.to_string(),
        })?;
        let map = |v: &serde_json::Value| -> BTreeMap<String, String> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        Ok(list
            .iter()
            .map(|a| ActiveAlert {
                labels: map(&a["labels"]),
                annotations: map(&a["annotations"]),
                state: text(&a["status"]["state"]),
                starts_at: text(&a["startsAt"]),
                ends_at: text(&a["endsAt"]),
                fingerprint: text(&a["fingerprint"]),
            })
            .collect())
    }

    /// Polls [`Alertmanager::alerts`] until `done` holds and returns those alerts; after
    /// `timeout` the error names `what` and shows the alerts last seen.
    pub fn wait_alerts(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[ActiveAlert]) -> bool,
    ) -> Result<Vec<ActiveAlert>, TestkitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.alerts() {
                Ok(a) if done(&a) => return Ok(a),
                Ok(a) => format!("{a:#?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    what: format!(
                        "alertmanager at {}: {what} did not happen within {timeout:?}; alerts \
                         last seen: {last}",
                        self.url()
                    ),
                    log: tail(&self.log(), LOG_TAIL),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many firing and resolved alerts the server received (its own metric, summed
    /// over API versions).
    pub fn received(&self) -> Result<Received, TestkitError> {
        let reply =
            http_get(self.port, "/metrics", HTTP_TIMEOUT).map_err(|e| TestkitError::Failed {
                what: format!("GET {}/metrics", self.url()),
                status: "no answer".to_string(),
                stderr: e.to_string(),
            })?;
        let mut r = Received::default();
        for line in reply
            .body
            .lines()
            .filter(|l| l.starts_with("alertmanager_alerts_received_total{"))
        {
            let n = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            // Counter values are whole numbers.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = n as u64;
            if line.contains(r#"status="firing""#) {
                r.firing += n;
            } else if line.contains(r#"status="resolved""#) {
                r.resolved += n;
            }
        }
        Ok(r)
    }

    /// Everything the server logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("alertmanager.log")
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let log_path = self.log_path();
        let daemon = &mut self.daemon;
        wait_http_ready(
            "alertmanager",
            self.port,
            READY_DEADLINE,
            || daemon.as_mut().and_then(Daemon::exit_status),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
        )
    }

    fn get_json(&self, path: &str) -> Result<serde_json::Value, TestkitError> {
        get_json(self.port, path, HTTP_TIMEOUT)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One route to one receiver without integrations: alerts are kept and listed, never sent.
const CONFIG: &str = "# written by pgmesh testkit\n\
route:\n  receiver: \"null\"\n\
receivers:\n  - name: \"null\"\n";
