//! A throwaway HAProxy (Debian's 2.6, `/usr/sbin/haproxy`) on loopback in front of the
//! primaries, one `listen` section per endpoint, each server checked on its agent's
//! `/owner/ENDPOINT` — the setup `examples/haproxy.cfg` shows users.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::{lost_port_race, scratch_dir, tail, Daemon};
use super::loopback::{free_ports, http_get};
use super::TestkitError;

const HAPROXY: &str = "/usr/sbin/haproxy";
const READY_DEADLINE: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 5;

/// One PostgreSQL server behind an endpoint: its name (the region), its port and the port
/// of its agent's HTTP endpoint.
#[derive(Clone, Debug)]
pub struct HaproxyServer {
    pub name: String,
    pub pg_port: u16,
    pub agent_port: u16,
}

/// How HAProxy checks each server's agent (`inter`, `fall`, `rise` of `default-server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthChecks {
    pub inter: Duration,
    /// Failed checks before a server is DOWN.
    pub fall: u32,
    /// Good checks before a DOWN server is UP again.
    pub rise: u32,
}

impl HealthChecks {
    /// The testkit's default: a move shows within about half a second.
    pub const FAST: HealthChecks = HealthChecks {
        inter: Duration::from_millis(200),
        fall: 2,
        rise: 1,
    };
    /// What `examples/haproxy.cfg` gives users: `inter 500ms fall 2 rise 2`.
    pub const EXAMPLE: HealthChecks = HealthChecks {
        inter: Duration::from_millis(500),
        fall: 2,
        rise: 2,
    };
}

/// A running HAProxy; killed and its directory removed on drop.
#[derive(Debug)]
pub struct Haproxy {
    dir: PathBuf,
    daemon: Option<Daemon>,
    ports: BTreeMap<String, u16>,
    stats_port: u16,
}

/// The config for `endpoints` (name → servers) listening on `ports`, with a stats page on
/// `stats_port` ([`HealthChecks::FAST`]).
#[must_use]
pub fn haproxy_config(
    endpoints: &BTreeMap<String, Vec<HaproxyServer>>,
    ports: &BTreeMap<String, u16>,
    stats_port: u16,
) -> String {
    haproxy_config_with(endpoints, ports, stats_port, HealthChecks::FAST)
}

/// The config for `endpoints` (name → servers) listening on `ports`, with a stats page on
/// `stats_port` (`/stats`, CSV at `/stats;csv`): one `listen` section per endpoint in
/// `mode tcp`, each server checked with `GET /owner/ENDPOINT` on its agent (200: it owns
/// the endpoint). `on-marked-down shutdown-sessions` closes the sessions of a server that
/// went down, so clients reconnect to the new owner.
#[must_use]
pub fn haproxy_config_with(
    endpoints: &BTreeMap<String, Vec<HaproxyServer>>,
    ports: &BTreeMap<String, u16>,
    stats_port: u16,
    checks: HealthChecks,
) -> String {
    let mut s = String::from(
        "global\n    maxconn 500\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 1s\n\n",
    );
    let _ = write!(
        s,
        "listen stats\n    mode http\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /stats\n\n"
    );
    for (endpoint, servers) in endpoints {
        let port = ports.get(endpoint).copied().unwrap_or(0);
        let _ = write!(
            s,
            "listen {endpoint}\n    bind 127.0.0.1:{port}\n    option httpchk GET /owner/{endpoint}\n    http-check expect status 200\n    default-server inter {}ms fall {} rise {} on-marked-down shutdown-sessions\n",
            checks.inter.as_millis(),
            checks.fall,
            checks.rise,
        );
        for srv in servers {
            let _ = writeln!(
                s,
                "    server {} 127.0.0.1:{} check addr 127.0.0.1 port {}",
                srv.name, srv.pg_port, srv.agent_port
            );
        }
        s.push('\n');
    }
    s
}

impl Haproxy {
    /// Starts HAProxy for `endpoints` ([`haproxy_config`]) and waits until its stats page
    /// answers.
    pub fn start(
        endpoints: &BTreeMap<String, Vec<HaproxyServer>>,
    ) -> Result<Haproxy, TestkitError> {
        let names: Vec<String> = endpoints.keys().cloned().collect();
        Self::start_config(&names, |ports, stats| {
            haproxy_config(endpoints, ports, stats)
        })
    }

    /// Starts HAProxy on the config text `render` returns for free ports (endpoint → port
    /// of its frontend, and the stats page's port, which the config must serve at
    /// `/stats`), retried with new ports when one was taken. Waits until the stats page
    /// answers.
    pub fn start_config(
        endpoints: &[String],
        render: impl Fn(&BTreeMap<String, u16>, u16) -> String,
    ) -> Result<Haproxy, TestkitError> {
        if !Path::new(HAPROXY).exists() {
            return Err(TestkitError::ProgramMissing {
                program: HAPROXY.into(),
                script: "scripts/install-control.sh",
            });
        }
        let dir = scratch_dir("haproxy")?;
        let mut me = Haproxy {
            dir,
            daemon: None,
            ports: BTreeMap::new(),
            stats_port: 0,
        };
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let free = free_ports(endpoints.len() + 1)?;
            me.ports = endpoints
                .iter()
                .cloned()
                .zip(free.iter().copied())
                .collect();
            me.stats_port = free[endpoints.len()];
            let cfg = me.dir.join("haproxy.cfg");
            std::fs::write(&cfg, render(&me.ports, me.stats_port)).map_err(|source| {
                TestkitError::Io {
                    path: cfg.clone(),
                    source,
                }
            })?;
            let log = me.dir.join("haproxy.log");
            let _ = std::fs::remove_file(&log);
            let mut cmd = Command::new(HAPROXY);
            cmd.arg("-db").arg("-f").arg(&cfg);
            me.daemon = Some(Daemon::spawn("haproxy", cmd, &log)?);
            match me.wait_ready() {
                Ok(()) => return Ok(me),
                Err(e) if lost_port_race(&me.log().to_lowercase()) => {
                    last = Some(e);
                    if let Some(mut d) = me.daemon.take() {
                        d.kill()?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::NotReady {
            what: "haproxy did not start".into(),
            log: String::new(),
        }))
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            // HAProxy binds every frontend before it serves any: the stats page answering
            // means the endpoints' ports listen too (a probe connection to them would
            // reach the servers and leave noise in their logs).
            if self.server_states().is_ok() {
                return Ok(());
            }
            if let Some(status) = self.daemon.as_mut().and_then(Daemon::exit_status) {
                return Err(TestkitError::NotReady {
                    what: format!("haproxy exited ({status})"),
                    log: tail(&self.log(), 20),
                });
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    what: "haproxy's stats page or frontends did not answer in time".into(),
                    log: tail(&self.log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `haproxy -c -f config`: whether HAProxy accepts a config file (its output on
    /// success, the error with its output otherwise).
    pub fn check_config(config: &Path) -> Result<String, TestkitError> {
        let out = Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(config)
            .output()
            .map_err(|source| TestkitError::Spawn {
                program: HAPROXY.into(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(TestkitError::Failed {
                what: format!("haproxy -c -f {}", config.display()),
                status: out.status.to_string(),
                stderr: text,
            })
        }
    }

    /// Waits until HAProxy reports `server` of `endpoint` in state `want` (`UP`, `DOWN`);
    /// returns how long that took.
    pub fn wait_state(
        &self,
        endpoint: &str,
        server: &str,
        want: &str,
        timeout: Duration,
    ) -> Result<Duration, TestkitError> {
        let started = Instant::now();
        let key = (endpoint.to_string(), server.to_string());
        loop {
            let states = self.server_states()?;
            if states.get(&key).map(String::as_str) == Some(want) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return Err(TestkitError::NotReady {
                    what: format!(
                        "haproxy did not report {endpoint}/{server} {want} within {timeout:?}: {states:?}"
                    ),
                    log: tail(&self.log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where clients of `endpoint` connect.
    #[must_use]
    pub fn port_of(&self, endpoint: &str) -> Option<u16> {
        self.ports.get(endpoint).copied()
    }

    /// `(endpoint, server) -> status` (`UP`, `DOWN`, `UP 1/2`, ...) from the stats CSV.
    pub fn server_states(&self) -> Result<BTreeMap<(String, String), String>, TestkitError> {
        let reply =
            http_get(self.stats_port, "/stats;csv", Duration::from_secs(2)).map_err(|source| {
                TestkitError::Io {
                    path: PathBuf::from(format!("127.0.0.1:{}/stats", self.stats_port)),
                    source,
                }
            })?;
        // HAProxy answers in chunks even to HTTP/1.0.
        let body = dechunk(&reply.body);
        let mut lines = body.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            return Err(TestkitError::Failed {
                what: "haproxy stats".into(),
                status: "no pxname/svname/status columns".into(),
                stderr: body.clone(),
            });
        };
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st.max(px).max(sv))
            .filter(|f| f[sv] != "FRONTEND" && f[sv] != "BACKEND")
            .map(|f| ((f[px].to_string(), f[sv].to_string()), f[st].to_string()))
            .collect())
    }

    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

/// The payload of a `Transfer-Encoding: chunked` body (the body itself when it is not).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return if out.is_empty() {
                body.to_string()
            } else {
                out
            };
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return if out.is_empty() {
                body.to_string()
            } else {
                out
            };
        };
        if n == 0 || after.len() < n {
            return out;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
