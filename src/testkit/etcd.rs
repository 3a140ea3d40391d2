//! A throwaway n-member etcd cluster on loopback, for the control plane's tests.
//!
//! Real etcd (Debian's `etcd-server` 3.4, `/usr/bin/etcd`), not a mock: leases, elections and
//! quorum loss are exactly what the control plane must survive, and only the real program
//! shows them. Members listen on free 127.0.0.1 ports, keep their data under one scratch
//! directory, and use short Raft timers (100 ms heartbeat, 1 s election) so a leader change
//! takes about a second. Tests crash (`kill_member`), freeze (`pause_member`) and bring back
//! (`restart_member`, `resume_member`) single members; dropping the cluster kills every member
//! and deletes the directory, also when a test panics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::{lost_port_race, scratch_dir, tail, Daemon};
use super::loopback::{free_ports, http_get};
use super::TestkitError;

/// The etcd server from Debian's `etcd-server` package.
const ETCD: &str = "/usr/bin/etcd";
/// How long a member may take to answer `/health` with `true`.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Whole-cluster start attempts when a member loses its free port to another process.
const START_ATTEMPTS: usize = 5;
/// Log lines quoted in errors.
const LOG_TAIL: usize = 30;

/// One member: its fixed identity (name, ports, data dir) and its current process, if any.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    daemon: Option<Daemon>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A running etcd cluster of n members on 127.0.0.1; killed and deleted on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `members` fresh members as one new cluster and waits until every one of them
    /// reports itself healthy (it has a leader and serves reads), at most 30 s.
    ///
    /// Ports are probed free and then handed to etcd, so another process can take one in
    /// between; when a member then fails to bind, the whole cluster is started again on new
    /// ports (a half-formed cluster cannot change a member's URLs).
    pub fn start(members: usize) -> Result<EtcdCluster, TestkitError> {
        if members == 0 {
            return Err(TestkitError::Failed {
                what: "start etcd cluster".to_string(),
                status: "0 members requested".to_string(),
                stderr: "an etcd cluster needs at least one member".to_string(),
            });
        }
        etcd_binary()?;
        let dir = scratch_dir("etcd")?;
        let mut cluster = EtcdCluster {
            token: String::new(),
            members: Vec::new(),
            dir,
        };
        let mut last_err = None;
        for attempt in 0..START_ATTEMPTS {
            cluster.configure(members, attempt)?;
            let all: Vec<usize> = (0..members).collect();
            let started = all
                .iter()
                .try_for_each(|&i| cluster.spawn(i, "new"))
                .and_then(|()| cluster.wait_healthy(&all));
            match started {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    if !cluster.members.iter().any(|m| lost_port_race(&m.log())) {
                        return Err(e);
                    }
                    last_err = Some(e);
                    cluster.discard_members()?;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| TestkitError::NotReady {
            what: "etcd cluster did not start".to_string(),
            log: String::new(),
        }))
    }

    /// Client URLs (`http://127.0.0.1:PORT`) in member order, for `--endpoints` or a client.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The client URL of member `i`.
    ///
    /// # Panics
    /// If `i` is not a member index (like indexing a slice: a bug in the test).
    #[must_use]
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// How many members the cluster was started with (killed ones included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never true for a started cluster).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The scratch directory holding every member's data dir and log; gone after drop.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Crashes member `i` (SIGKILL) and reaps it; its data dir stays for
    /// [`EtcdCluster::restart_member`]. Killing a member that is not running is a no-op.
    pub fn kill_member(&mut self, i: usize) -> Result<(), TestkitError> {
        self.check_index(i)?;
        match self.members[i].daemon.as_mut() {
            Some(d) => d.kill(),
            None => Ok(()),
        }
    }

    /// Starts member `i` again on its data dir and ports (killing it first if it still runs)
    /// and waits until it is healthy, which needs a quorum of members running.
    pub fn restart_member(&mut self, i: usize) -> Result<(), TestkitError> {
        self.kill_member(i)?;
        self.spawn(i, "existing")?;
        self.wait_healthy(&[i])
    }

    /// Freezes member `i` (SIGSTOP): it keeps its sockets but answers nothing, like a hung VM
    /// or a long GC pause; peers see it as unreachable and clients see timeouts.
    pub fn pause_member(&self, i: usize) -> Result<(), TestkitError> {
        self.daemon(i)?.pause()
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume_member(&self, i: usize) -> Result<(), TestkitError> {
        self.daemon(i)?.resume()
    }

    /// Everything member `i` logged so far, across restarts (zap JSON lines); empty for an
    /// unknown member.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        self.members.get(i).map(Member::log).unwrap_or_default()
    }

    /// Chooses names, ports, data dirs and a cluster token for a (new) start attempt.
    fn configure(&mut self, n: usize, attempt: usize) -> Result<(), TestkitError> {
        let ports = free_ports(2 * n)?;
        let dir_name = self
            .dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A unique token keeps members of different clusters (or of an earlier attempt)
        // from joining each other should a port be reused.
        self.token = format!("{dir_name}-{attempt}");
        self.members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: self.dir.join(format!("a{attempt}-m{i}.data")),
                log_path: self.dir.join(format!("a{attempt}-m{i}.log")),
                daemon: None,
            })
            .collect();
        Ok(())
    }

    /// Launches member `i` with `--initial-cluster-state` `state` (`new` or `existing`).
    fn spawn(&mut self, i: usize, state: &str) -> Result<(), TestkitError> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let mut cmd = Command::new(etcd_binary()?);
        // etcd 3.4 refuses to start when an ETCD_* variable repeats a flag, and would quietly
        // apply any other one: the test's cluster must not depend on the caller's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let daemon = Daemon::spawn(&format!("etcd {}", m.name), cmd, &m.log_path)?;
        self.members[i].daemon = Some(daemon);
        Ok(())
    }

    /// Polls `/health` of each member in `which` until all answer `{"health":"true"}`; fails
    /// early when a member exits, or after [`READY_DEADLINE`], quoting that member's log.
    fn wait_healthy(&mut self, which: &[usize]) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_DEADLINE;
        let mut pending: Vec<usize> = which.to_vec();
        let mut last_answer = vec![String::from("no answer yet"); self.members.len()];
        loop {
            let mut still = Vec::new();
            for &i in &pending {
                let m = &mut self.members[i];
                if let Some(status) = m.daemon.as_mut().and_then(Daemon::exit_status) {
                    return Err(TestkitError::NotReady {
                        what: format!(
                            "etcd member {} ({}) exited ({status}) before it was healthy",
                            m.name,
                            m.client_url()
                        ),
                        log: tail(&m.log(), LOG_TAIL),
                    });
                }
                match http_get(m.client_port, "/health", Duration::from_secs(1)) {
                    Ok(r) if r.status == 200 && r.body.contains(r#""health":"true""#) => {}
                    Ok(r) => {
                        last_answer[i] = format!("HTTP {}: {}", r.status, r.body.trim());
                        still.push(i);
                    }
                    Err(e) => {
                        last_answer[i] = e.to_string();
                        still.push(i);
                    }
                }
            }
            pending = still;
            let Some(&first) = pending.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let m = &self.members[first];
                return Err(TestkitError::NotReady {
                    what: format!(
                        "etcd member {} ({}) not healthy after {:?}; last /health answer: {}",
                        m.name,
                        m.client_url(),
                        READY_DEADLINE,
                        last_answer[first]
                    ),
                    log: tail(&m.log(), LOG_TAIL),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills every member of a failed start attempt and deletes their files (the logs of a
    /// port race are not worth keeping).
    fn discard_members(&mut self) -> Result<(), TestkitError> {
        for m in &mut self.members {
            if let Some(mut d) = m.daemon.take() {
                d.kill()?;
            }
            let _ = std::fs::remove_dir_all(&m.data_dir);
            let _ = std::fs::remove_file(&m.log_path);
        }
        self.members.clear();
        Ok(())
    }

    fn check_index(&self, i: usize) -> Result<(), TestkitError> {
        if i < self.members.len() {
            Ok(())
        } else {
            Err(TestkitError::Failed {
                what: format!("etcd member {i}"),
                status: "no such member".to_string(),
                stderr: format!("the cluster has members 0..{}", self.members.len()),
            })
        }
    }

    fn daemon(&self, i: usize) -> Result<&Daemon, TestkitError> {
        self.check_index(i)?;
        self.members[i]
            .daemon
            .as_ref()
            .ok_or_else(|| TestkitError::Failed {
                what: format!("etcd member {i}"),
                status: "not running".to_string(),
                stderr: "the member was never started".to_string(),
            })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut d) = m.daemon.take() {
                let _ = d.kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/usr/bin/etcd`, or an error that names the install script.
fn etcd_binary() -> Result<&'static Path, TestkitError> {
    let path = Path::new(ETCD);
    if path.exists() {
        Ok(path)
    } else {
        Err(TestkitError::ProgramMissing {
            program: path.to_path_buf(),
            script: "scripts/install-control.sh",
        })
    }
}
