//! One throwaway cluster: initdb, configure, start, stop, remove.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use super::binaries::bin_dir;

/// Why a test cluster could not be created or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    #[error("PostgreSQL {0} is not supported by pgmesh (15-18)")]
    UnsupportedVersion(u32),
    #[error(
        "PostgreSQL {major} is not installed (no {dir}/postgres): run scripts/install-postgres.sh"
    )]
    NotInstalled { major: u32, dir: PathBuf },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A control-plane program (etcd, etcdctl, prometheus) is not installed.
    #[error("{program} is not installed: run {script}")]
    ProgramMissing {
        program: PathBuf,
        script: &'static str,
    },
    /// A daemon did not become ready before its deadline; `log` is the tail of its output.
    #[error("{what}\n--- log tail ---\n{log}")]
    NotReady { what: String, log: String },
}

/// Settings every pgmesh node needs, plus test-speed settings (no fsync).
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("wal_level", "logical"),
    ("track_commit_timestamp", "on"),
    ("max_replication_slots", "20"),
    ("max_wal_senders", "20"),
    ("max_worker_processes", "16"),
    ("max_connections", "60"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "'64MB'"),
    ("log_min_messages", "warning"),
    ("log_line_prefix", "'%m [%p] %q%a '"),
];

/// Builder for a [`Cluster`] with extra settings or pg_hba.conf lines.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    major: u32,
    settings: Vec<(String, String)>,
    hba_lines: Vec<String>,
    port: Option<u16>,
    netns: Option<(String, String)>,
    data_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl ClusterBuilder {
    /// Keeps the cluster in `dir` (which must not exist) instead of a fresh temp dir: the
    /// lab puts everything of one run under one directory it can remove after a crash.
    #[must_use]
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Adds `key = value` to postgresql.conf (value as PostgreSQL expects it, quoted if text).
    #[must_use]
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    /// Puts a line at the top of pg_hba.conf (first match wins, so it overrides `trust`).
    #[must_use]
    pub fn hba_line(mut self, line: &str) -> Self {
        self.hba_lines.push(line.to_string());
        self
    }

    /// Listens on `port` instead of a free one (the lab's well-known ports).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Runs the server inside network namespace `netns` (the cross-region lab's sites),
    /// listening on every address there; [`Cluster::dsn`] then names `host`, the address
    /// the caller reaches it by.
    #[must_use]
    pub fn netns(mut self, netns: &str, host: &str) -> Self {
        self.netns = Some((netns.to_string(), host.to_string()));
        self.settings
            .push(("listen_addresses".to_string(), "'*'".to_string()));
        self
    }

    /// Starts the server (every later start too) with `key=value` in its environment:
    /// a clock shifted by libfaketime ([`super::faketime`]).
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// initdb, configure and start the cluster on a free port.
    pub fn start(self) -> Result<Cluster, TestkitError> {
        let bin = bin_dir(self.major)?;
        let data_dir = self.data_dir.clone().unwrap_or_else(fresh_data_dir);
        let run_as_pg = running_as_root();
        let cluster = Cluster {
            major: self.major,
            port: 0,
            bin,
            data_dir,
            run_as_pg,
            netns: self.netns.clone(),
            env: self.env.clone(),
        };
        cluster.initdb()?;
        let mut cluster = cluster;
        cluster.write_hba(&self.hba_lines)?;
        // A free port can be taken by a parallel test between probing and binding:
        // retry with another port when the server cannot bind.
        let mut last_err = None;
        let attempts = if self.port.is_some() { 1 } else { 5 };
        for _ in 0..attempts {
            cluster.port = match self.port {
                Some(p) => p,
                None => free_port()?,
            };
            cluster.write_conf(&self.settings)?;
            match cluster.pg_ctl(&["start", "-w", "-t", "60"]) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let log = cluster.server_log();
                    if !log.contains("could not bind") && !log.contains("could not create") {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| failed("pg_ctl start", "no attempt", "")))
    }
}

/// A running throwaway PostgreSQL cluster; stopped (immediate) and deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    major: u32,
    port: u16,
    bin: PathBuf,
    data_dir: PathBuf,
    run_as_pg: bool,
    /// The network namespace the server runs in and the address that reaches it.
    netns: Option<(String, String)>,
    /// Extra environment of the server.
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts a cluster of `major` (15–18) with pgmesh's base settings.
    pub fn start(major: u32) -> Result<Cluster, TestkitError> {
        Self::builder(major).start()
    }

    #[must_use]
    pub fn builder(major: u32) -> ClusterBuilder {
        ClusterBuilder {
            major,
            settings: Vec::new(),
            hba_lines: Vec::new(),
            port: None,
            netns: None,
            data_dir: None,
            env: Vec::new(),
        }
    }

    #[must_use]
    pub fn major(&self) -> u32 {
        self.major
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    #[must_use]
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// key=value DSN over TCP as the `postgres` superuser (trust by default).
    #[must_use]
    pub fn dsn(&self) -> String {
        let host = self.netns.as_ref().map_or("127.0.0.1", |(_, h)| h.as_str());
        format!(
            "host={host} port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Runs SQL through psql (unix socket, superuser) and returns stdout without the
    /// trailing newline; rows one per line, columns separated by `|`.
    pub fn psql(&self, sql: &str) -> Result<String, TestkitError> {
        self.psql_db("postgres", sql)
    }

    /// Like [`Cluster::psql`] in database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        let out = run(Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.data_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ]))?;
        check(&out, &format!("psql on port {}", self.port))?;
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        while s.ends_with('\n') {
            s.pop();
        }
        Ok(s)
    }

    /// Crash-stops the server (`-m immediate`) and starts it again on the same port.
    pub fn restart_immediate(&self) -> Result<(), TestkitError> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])?;
        self.start_again()
    }

    /// Stops the server cleanly (`-m fast`).
    pub fn stop(&self) -> Result<(), TestkitError> {
        self.pg_ctl(&["stop", "-m", "fast", "-w"])
    }

    /// Stops the server as a crash would (`-m immediate`).
    pub fn stop_immediate(&self) -> Result<(), TestkitError> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])
    }

    /// Starts a stopped server again (same port and data).
    pub fn start_again(&self) -> Result<(), TestkitError> {
        self.pg_ctl(&["start", "-w", "-t", "60"])
    }

    /// Re-reads postgresql.conf and pg_hba.conf.
    pub fn reload(&self) -> Result<(), TestkitError> {
        self.pg_ctl(&["reload"])
    }

    /// The server log so far (for failure messages).
    #[must_use]
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// Writes a file into the data directory owned by the server's OS user with `mode`
    /// (e.g. TLS keys must be 0600 and owned by the server user).
    pub fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), TestkitError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir.join(name);
        let io = |source| TestkitError::Io {
            path: path.clone(),
            source,
        };
        std::fs::write(&path, contents).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        if self.run_as_pg {
            check(
                &run(Command::new("chown").arg("postgres:postgres").arg(&path))?,
                "chown",
            )?;
        }
        Ok(())
    }

    fn initdb(&self) -> Result<(), TestkitError> {
        let initdb = self.bin.join("initdb");
        let mut cmd = self.as_server_user(&initdb);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale", "C"]);
        check(&run(&mut cmd)?, "initdb")
    }

    fn write_conf(&self, extra: &[(String, String)]) -> Result<(), TestkitError> {
        let mut conf = String::from("# written by pgmesh testkit\n");
        for (k, v) in BASE_SETTINGS {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        conf.push_str(&format!("port = {}\n", self.port));
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.data_dir.display()
        ));
        if has_setting(&self.bin, "output_plugin_libraries") {
            conf.push_str("output_plugin_libraries = 'pgoutput, test_decoding, wal2json'\n");
        }
        for (k, v) in extra {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        self.write_as_owner("postgresql.auto.conf", &conf)
    }

    fn write_hba(&self, lines: &[String]) -> Result<(), TestkitError> {
        let mut hba = String::new();
        for l in lines {
            hba.push_str(l);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        );
        self.write_as_owner("pg_hba.conf", &hba)
    }

    fn write_as_owner(&self, name: &str, contents: &str) -> Result<(), TestkitError> {
        self.write_file(name, contents.as_bytes(), 0o600)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), TestkitError> {
        // pg_ctl forks the postmaster, which stays in the namespace and keeps the
        // environment (`env` after runuser, which would reset some of it).
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some((ns, _)) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(Into::into));
        }
        if self.run_as_pg {
            argv.extend(["runuser", "-u", "postgres", "--"].map(Into::into));
        }
        if !self.env.is_empty() {
            argv.push("env".into());
            argv.extend(self.env.iter().map(|(k, v)| format!("{k}={v}").into()));
        }
        argv.push(self.bin.join("pg_ctl").into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.arg("-D").arg(&self.data_dir);
        cmd.arg("-l").arg(self.data_dir.join("server.log"));
        cmd.args(args);
        let out = run(&mut cmd)?;
        check(&out, &format!("pg_ctl {}", args.join(" "))).map_err(|e| match e {
            TestkitError::Failed {
                what,
                status,
                stderr,
            } => TestkitError::Failed {
                what,
                status,
                stderr: format!("{stderr}\n--- server log ---\n{}", tail(&self.server_log())),
            },
            other => other,
        })
    }

    fn as_server_user(&self, program: &Path) -> Command {
        if self.run_as_pg {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn fresh_data_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("pgmesh-pg-{}-{n}-{nanos:x}", std::process::id()))
}

fn free_port() -> Result<u16, TestkitError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| TestkitError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| TestkitError::Io {
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })
}

/// The server refuses to run as root, so as root everything runs through `runuser`.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether this server build knows a GUC (e.g. `output_plugin_libraries`, new in 2026 minors).
fn has_setting(bin: &Path, name: &str) -> bool {
    static CACHE: OnceLock<Mutex<Vec<(PathBuf, String)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = match cache.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let described = match guard.iter().find(|(b, _)| b == bin) {
        Some((_, d)) => d.clone(),
        None => {
            let d = Command::new(bin.join("postgres"))
                .arg("--describe-config")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            guard.push((bin.to_path_buf(), d.clone()));
            d
        }
    };
    described
        .lines()
        .any(|l| l.split('\t').next() == Some(name))
}

fn run(cmd: &mut Command) -> Result<Output, TestkitError> {
    cmd.output().map_err(|source| TestkitError::Spawn {
        program: format!("{:?}", cmd.get_program()),
        source,
    })
}

fn check(out: &Output, what: &str) -> Result<(), TestkitError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            what,
            &out.status.to_string(),
            &String::from_utf8_lossy(&out.stderr),
        ))
    }
}

fn failed(what: &str, status: &str, stderr: &str) -> TestkitError {
    TestkitError::Failed {
        what: what.to_string(),
        status: status.to_string(),
        stderr: stderr.trim().to_string(),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
