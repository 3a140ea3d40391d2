//! A two-region control-plane lab for tests: a real 3-member etcd, two PostgreSQL
//! primaries set up by `pgmesh setup`, both sidecars and both agents as processes (each
//! agent with its watchdog and HTTP endpoint), an application role `app`, and the probes
//! tests need: who serves an endpoint, whether a region's database takes app writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgmesh::testkit::{AckWriter, Cluster, EtcdCluster, WriterReport};

use super::cli::{pgmesh, text, Sidecars};

pub const DDL: &str = "CREATE TABLE acked (id bigint PRIMARY KEY, payload text);";
const APP: &str = "CREATE ROLE app LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON acked TO app;";

/// Lease and probe settings of the lab (short, so tests are quick).
pub const TTL: Duration = Duration::from_secs(3);

pub struct Lab {
    /// Agent a reaches etcd through these: cutting them isolates a from etcd alone.
    pub proxies: Vec<CutProxy>,
    pub etcd: EtcdCluster,
    pub a: Cluster,
    pub b: Cluster,
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub sidecars: Option<Sidecars>,
    pub agents: [Option<AgentProc>; 2],
    pub ports: [u16; 2],
}

/// One `pgmesh agent` process and its log.
pub struct AgentProc {
    pub child: Child,
    pub log: PathBuf,
}

impl AgentProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {}", self.pid());
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Lab {
    /// etcd, two nodes of `major` set up with `extra` control settings, sidecars and
    /// agents running; returns once each agent serves its home endpoint.
    pub fn start(major: u32, extra: &str) -> Lab {
        Lab::start_with(major, |_, _| extra.to_string())
    }

    /// Like [`Lab::start`], with config text that depends on the two primaries (written
    /// inside `[control]`, so it may open its own tables such as `[traffic.dns]`).
    pub fn start_with(major: u32, extra: impl FnOnce(&Cluster, &Cluster) -> String) -> Lab {
        let etcd = EtcdCluster::start(3).expect("etcd");
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql(DDL).unwrap();
            c.psql(APP).unwrap();
        }
        let extra = extra(&a, &b);
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("pgmesh.toml");
        let etcd_list = etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let control = format!(
            "[control]\netcd = [{etcd_list}]\ncluster = \"t{}\"\nlease_ttl = \"3s\"\nsafety_margin = \"1s\"\nprobe_interval = \"500ms\"\n{extra}\n[endpoints.app-eu]\nhome = \"a\"\n[endpoints.app-us]\nhome = \"b\"\n",
            std::process::id()
        );
        std::fs::write(
            &cfg,
            format!(
                "[nodes.a]\ndsn = \"{}\"\n[nodes.b]\ndsn = \"{}\"\n[replication]\ntables = [\"public.acked\"]\n{control}",
                a.dsn(),
                b.dsn()
            ),
        )
        .unwrap();
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "setup: {}", text(&out));
        let proxies: Vec<CutProxy> = etcd
            .endpoints()
            .iter()
            .map(|e| CutProxy::start(e.trim_start_matches("http://")))
            .collect();
        let proxied = proxies
            .iter()
            .map(|p| format!("\"http://127.0.0.1:{}\"", p.port))
            .collect::<Vec<_>>()
            .join(", ");
        let text_a = std::fs::read_to_string(&cfg).unwrap().replace(
            &format!("etcd = [{etcd_list}]"),
            &format!("etcd = [{proxied}]"),
        );
        std::fs::write(dir.path().join("pgmesh-a.toml"), text_a).unwrap();
        let sidecars = Some(Sidecars::start(&cfg));
        let ports = [free_port(), free_port()];
        let mut lab = Lab {
            proxies,
            etcd,
            a,
            b,
            dir,
            cfg,
            sidecars,
            agents: [None, None],
            ports,
        };
        lab.start_agent("a");
        lab.start_agent("b");
        lab.wait_serving("a", "app-eu", Duration::from_secs(30));
        lab.wait_serving("b", "app-us", Duration::from_secs(30));
        lab
    }

    fn index(node: &str) -> usize {
        usize::from(node != "a")
    }

    pub fn cluster(&self, node: &str) -> &Cluster {
        if node == "a" {
            &self.a
        } else {
            &self.b
        }
    }

    pub fn start_agent(&mut self, node: &str) {
        let i = Lab::index(node);
        let log = self.dir.path().join(format!("agent-{node}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let cfg = if node == "a" {
            self.dir.path().join("pgmesh-a.toml")
        } else {
            self.cfg.clone()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .args(["--log-format", "text", "agent", "-c"])
            .arg(&cfg)
            .args(["--node", node, "--http-listen"])
            .arg(format!("127.0.0.1:{}", self.ports[i]))
            .env("RUST_LOG", "pgmesh=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn pgmesh agent");
        self.agents[i] = Some(AgentProc { child, log });
    }

    pub fn agent(&self, node: &str) -> &AgentProc {
        self.agents[Lab::index(node)]
            .as_ref()
            .expect("agent running")
    }

    /// Kills the agent (SIGKILL) and forgets it; its watchdog stays behind.
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(mut a) = self.agents[Lab::index(node)].take() {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
    }

    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{node}.log")))
            .unwrap_or_default()
    }

    pub fn port(&self, node: &str) -> u16 {
        self.ports[Lab::index(node)]
    }

    /// HTTP status of the agent's `path`, or 0 when it does not answer within 300 ms.
    pub fn http(&self, node: &str, path: &str) -> (u16, String) {
        http_get(self.port(node), path, Duration::from_millis(300)).unwrap_or((0, String::new()))
    }

    pub fn serves(&self, node: &str, endpoint: &str) -> bool {
        self.http(node, &format!("/owner/{endpoint}")).0 == 200
    }

    pub fn wait_serving(&self, node: &str, endpoint: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        while !self.serves(node, endpoint) {
            assert!(
                started.elapsed() < timeout,
                "{node} did not serve {endpoint} within {timeout:?}\n--- agent a\n{}\n--- agent b\n{}",
                tail(&self.agent_log("a")),
                tail(&self.agent_log("b"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    /// The app role's DSN on `node`.
    /// Takes etcd's quorum away (two of three members), waits until both regions are
    /// fenced, then forces `endpoint` onto `to` (`pgmesh failover --force`) and waits
    /// until `to` takes writes. Returns how long the fencing took.
    pub fn lose_quorum_and_force(&mut self, endpoint: &str, to: &str) -> Duration {
        let t0 = Instant::now();
        self.etcd.kill_member(1).unwrap();
        self.etcd.kill_member(2).unwrap();
        self.wait_db_writable("a", false, Duration::from_secs(10));
        self.wait_db_writable("b", false, Duration::from_secs(10));
        let fenced = t0.elapsed();
        let out = pgmesh(
            &["failover", endpoint, "--to", to, "--force", "--json"],
            &self.cfg,
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        self.wait_db_writable(to, true, Duration::from_secs(10));
        fenced
    }

    /// Brings the two etcd members back.
    pub fn restore_quorum(&mut self) {
        self.etcd.restart_member(1).unwrap();
        self.etcd.restart_member(2).unwrap();
    }

    /// Waits until `node`'s agent holds a lease with etcd answering and says `why`
    /// contains `needle`; returns its `/health`.
    pub fn wait_why(&self, node: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body) = self.http(node, "/health");
            if body.contains("\"etcd_ok\":true")
                && !body.contains("\"lease\":null")
                && body.contains(needle)
            {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{node} never said {needle:?} with a lease: {body}\n{}",
                tail(&self.agent_log(node))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn app_dsn(&self, node: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=app dbname=postgres connect_timeout=2",
            self.cluster(node).port()
        )
    }

    /// Whether `node`'s database takes a write from the app role now (rolled back).
    pub fn db_writable(&self, node: &str) -> bool {
        let out = Command::new(self.cluster(node).bin_dir().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.app_dsn(node))
            .args([
                "-c",
                "BEGIN; INSERT INTO acked VALUES (-1, 'probe'); ROLLBACK;",
            ])
            .output();
        out.is_ok_and(|o| o.status.success())
    }

    pub fn wait_db_writable(&self, node: &str, want: bool, timeout: Duration) -> Duration {
        let started = Instant::now();
        while self.db_writable(node) != want {
            assert!(
                started.elapsed() < timeout,
                "{node}'s database writable={} for {timeout:?}, wanted {want}\n--- agent {node}\n{}",
                !want,
                tail(&self.agent_log(node))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    /// `pgmesh status --json`'s control section.
    pub fn status(&self) -> serde_json::Value {
        let out = pgmesh(&["status", "--json"], &self.cfg);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status json: {e}: {}", text(&out)));
        v["control"].clone()
    }

    /// The owner of `endpoint` per `pgmesh status`.
    pub fn owner(&self, endpoint: &str) -> Option<String> {
        let s = self.status();
        s["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["endpoint"] == endpoint)?["owner"]
            .as_str()
            .map(str::to_string)
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.status()["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn cfg_path(&self) -> &Path {
        &self.cfg
    }

    /// The acknowledged-write logger, writing into `acked` wherever `endpoint` is served
    /// (asking both agents' `/owner/ENDPOINT`, as a health-checking proxy would).
    pub fn writer_following(&self, endpoint: &str, first_id: i64) -> AckWriter {
        let ports = self.ports;
        let dsns = [self.app_dsn("a"), self.app_dsn("b")];
        let path = format!("/owner/{endpoint}");
        let router = Box::new(move || {
            (0..2)
                .find(|&i| {
                    http_get(ports[i], &path, Duration::from_millis(200))
                        .is_some_and(|(c, _)| c == 200)
                })
                .map(|i| dsns[i].clone())
        });
        AckWriter::start("acked", first_id, Duration::from_millis(2), router)
    }

    /// Acknowledged rows of `report` that `node` does not hold (call after convergence).
    pub fn lost_writes(&self, node: &str, report: &WriterReport) -> Vec<i64> {
        let held: std::collections::BTreeSet<i64> = self
            .cluster(node)
            .psql("SELECT id FROM acked")
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        report
            .acked
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !held.contains(id))
            .collect()
    }
}

/// Waits until `writer` acknowledged at least `n` commits.
pub fn wait_acked(writer: &AckWriter, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while writer.report().acked.len() < n {
        assert!(
            Instant::now() < deadline,
            "the writer acknowledged fewer than {n} commits: {:?}",
            writer.report().errors
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Samples, every few ms until stopped, whether a region's database takes writes while
/// the other region's agent serves an endpoint homed at the first: a moment with two
/// writable owners of one endpoint. The serving check comes first, so a sample cannot
/// blame a takeover that happened between the two checks.
pub struct DualOwnerSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl DualOwnerSampler {
    pub fn start(lab: &Lab) -> DualOwnerSampler {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let ports = lab.ports;
        let dsns = [lab.app_dsn("a"), lab.app_dsn("b")];
        let psql = lab.a.bin_dir().join("psql");
        let thread = std::thread::spawn(move || {
            let mut samples = 0;
            let mut violations = Vec::new();
            let writable = |i: usize| {
                Command::new(&psql)
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &dsns[i], "-c"])
                    .arg("BEGIN; INSERT INTO acked VALUES (-2, 'sampler'); ROLLBACK;")
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            while !s.load(Ordering::Relaxed) {
                // (serving region, other region, endpoint homed at the other region)
                for (srv, other, endpoint) in [(1, 0, "app-eu"), (0, 1, "app-us")] {
                    let serves = || {
                        http_get(
                            ports[srv],
                            &format!("/owner/{endpoint}"),
                            Duration::from_millis(300),
                        )
                        .is_some_and(|(c, _)| c == 200)
                    };
                    // Served before and after the write: served while the other region
                    // took it. (Only before would count a move that finished in between:
                    // a switchover can now complete within the write's 30-50 ms.)
                    if serves() && writable(other) && serves() {
                        violations.push(format!(
                            "{} {} serves {endpoint} while {}'s database takes writes",
                            utc_clock(),
                            ["a", "b"][srv],
                            ["a", "b"][other]
                        ));
                    }
                }
                samples += 1;
            }
            (samples, violations)
        });
        DualOwnerSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// (samples taken, violations seen).
    pub fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

/// A TCP forwarder to one etcd member that can be cut (every connection closed, new
/// ones closed at once) and healed: "pause the agent's etcd traffic" without touching
/// etcd or the other agent.
pub struct CutProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CutProxy {
    pub fn start(target: &str) -> CutProxy {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, k, target) = (cut.clone(), conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::Relaxed) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ];
                if let Ok(mut list) = k.lock() {
                    list.push(client);
                    list.push(server);
                }
                for (mut from, mut to) in pipes {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutProxy { port, cut, conns }
    }

    /// Closes every connection and refuses new ones until [`CutProxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut list) = self.conns.lock() {
            for s in list.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Lab {
    /// Cuts agent a off etcd (its region and database stay up).
    pub fn isolate_a(&self) {
        for p in &self.proxies {
            p.cut();
        }
    }

    pub fn heal_a(&self) {
        for p in &self.proxies {
            p.heal();
        }
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The wall clock as `HH:MM:SS.mmm` UTC, the way the agents' logs print it, so a
/// sampled violation can be found in them.
pub fn utc_clock() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
