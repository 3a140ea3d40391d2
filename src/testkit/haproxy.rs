//! A throwaway HAProxy (Debian's 2.6, `/usr/sbin/haproxy`) on loopback in front of the
//! primaries, one `listen` section per endpoint, each server checked on its agent's
//! `/owner/ENDPOINT` — the setup `examples/haproxy.cfg` shows users.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::{scratch_dir, tail, Daemon};
use super::loopback::{free_ports, http_get};
use super::TestkitError;

const HAPROXY: &str = "/usr/sbin/haproxy";
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// One PostgreSQL server behind an endpoint: its name (the region), its port and the port
/// of its agent's HTTP endpoint.
#[derive(Clone, Debug)]
pub struct HaproxyServer {
    pub name: String,
    pub pg_port: u16,
    pub agent_port: u16,
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
/// `stats_port`. Checks every 200 ms; a server is down after 2 failed checks and up after
/// one good one; `on-marked-down shutdown-sessions` closes the sessions of a server that
/// went down, so clients reconnect to the new owner.
#[must_use]
pub fn haproxy_config(
    endpoints: &BTreeMap<String, Vec<HaproxyServer>>,
    ports: &BTreeMap<String, u16>,
    stats_port: u16,
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
            "listen {endpoint}\n    bind 127.0.0.1:{port}\n    option httpchk GET /owner/{endpoint}\n    http-check expect status 200\n    default-server inter 200ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
        );
        for srv in servers {
            let _ = writeln!(
                s,
                "    server {} 127.0.0.1:{} check port {}",
                srv.name, srv.pg_port, srv.agent_port
            );
        }
        s.push('\n');
    }
    s
}

impl Haproxy {
    /// Starts HAProxy for `endpoints` and waits until its stats page answers.
    pub fn start(
        endpoints: &BTreeMap<String, Vec<HaproxyServer>>,
    ) -> Result<Haproxy, TestkitError> {
        if !Path::new(HAPROXY).exists() {
            return Err(TestkitError::ProgramMissing {
                program: HAPROXY.into(),
                script: "scripts/install-control.sh",
            });
        }
        let dir = scratch_dir("haproxy")?;
        let free = free_ports(endpoints.len() + 1)?;
        let ports: BTreeMap<String, u16> = endpoints
            .keys()
            .cloned()
            .zip(free.iter().copied())
            .collect();
        let stats_port = free[endpoints.len()];
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(endpoints, &ports, stats_port)).map_err(|source| {
            TestkitError::Io {
                path: cfg.clone(),
                source,
            }
        })?;
        let mut cmd = Command::new(HAPROXY);
        cmd.arg("-db").arg("-f").arg(&cfg);
        let daemon = Daemon::spawn("haproxy", cmd, &dir.join("haproxy.log"))?;
        let mut me = Haproxy {
            dir,
            daemon: Some(daemon),
            ports,
            stats_port,
        };
        let deadline = Instant::now() + READY_DEADLINE;
        while me.server_states().is_err() {
            if let Some(status) = me.daemon.as_mut().and_then(Daemon::exit_status) {
                return Err(TestkitError::NotReady {
                    what: format!("haproxy exited ({status})"),
                    log: tail(&me.log(), 20),
                });
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    what: "haproxy's stats page did not answer in time".into(),
                    log: tail(&me.log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
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
