//! A throwaway pgbouncer (Debian's 1.18, `/usr/sbin/pgbouncer`) on loopback, in
//! transaction pooling, with its `[databases]` lines in a separate file that its ini
//! `%include`s — the layout the agent's repointing expects (see
//! [`crate::traffic::pgbouncer`]).
//!
//! pgbouncer refuses to run as root: as root it runs as `postgres` through `setpriv`, like
//! the clusters. Users `pgmesh` (admin console), `app`, `postgres` and `root` log in without
//! a password (`auth_type = trust`); pgbouncer logs in to PostgreSQL as the client's user.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::cluster::running_as_root;
use super::daemon::{lost_port_race, scratch_dir, tail, Daemon};
use super::loopback::free_ports;
use super::TestkitError;
use crate::traffic::pgbouncer::render_databases_file;

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// The admin console's user.
pub const PGBOUNCER_ADMIN: &str = "pgmesh";
const READY_DEADLINE: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 5;

/// A running pgbouncer; killed and its directory removed on drop.
#[derive(Debug)]
pub struct Pgbouncer {
    port: u16,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

impl Pgbouncer {
    /// Starts pgbouncer with `databases` (name → connection string) in its databases file
    /// and waits until it accepts connections.
    pub fn start(databases: &BTreeMap<String, String>) -> Result<Pgbouncer, TestkitError> {
        if !Path::new(PGBOUNCER).exists() {
            return Err(TestkitError::ProgramMissing {
                program: PGBOUNCER.into(),
                script: "scripts/install-control.sh",
            });
        }
        let dir = scratch_dir("pgbouncer")?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TestkitError::Io { path, source }
        };
        let mut me = Pgbouncer {
            port: 0,
            dir,
            daemon: None,
        };
        let dbs = me.databases_file();
        std::fs::write(&dbs, render_databases_file(databases)).map_err(io(&dbs))?;
        let users = me.dir.join("users.txt");
        std::fs::write(
            &users,
            "\"pgmesh\" \"\"\n\"app\" \"\"\n\"postgres\" \"\"\n\"root\" \"\"\n",
        )
        .map_err(io(&users))?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            me.port = free_ports(1)?[0];
            let ini = me.dir.join("pgbouncer.ini");
            std::fs::write(&ini, me.ini(&users)).map_err(io(&ini))?;
            let log = me.dir.join("pgbouncer.log");
            let _ = std::fs::remove_file(&log);
            let mut cmd = if running_as_root() {
                // setpriv execs (runuser would fork, and killing it would orphan pgbouncer).
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    PGBOUNCER,
                ]);
                c
            } else {
                Command::new(PGBOUNCER)
            };
            cmd.arg(&ini);
            me.daemon = Some(Daemon::spawn("pgbouncer", cmd, &log)?);
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
            what: "pgbouncer did not start".into(),
            log: String::new(),
        }))
    }

    fn ini(&self, users: &Path) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "[databases]\n%include {dbs}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {users}\nadmin_users = {PGBOUNCER_ADMIN}\n\
             pool_mode = transaction\ndefault_pool_size = 5\nmax_client_conn = 200\n\
             server_login_retry = 1\nserver_connect_timeout = 2\nquery_wait_timeout = 60\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            dbs = self.databases_file().display(),
            port = self.port,
            users = users.display(),
        );
        s
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if self.log().contains("process up") {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(());
                }
            }
            if let Some(status) = self.daemon.as_mut().and_then(Daemon::exit_status) {
                return Err(TestkitError::NotReady {
                    what: format!("pgbouncer exited ({status})"),
                    log: tail(&self.log(), 20),
                });
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    what: format!("pgbouncer did not listen on {} in time", self.port),
                    log: tail(&self.log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client's DSN for database `db` as `user`.
    #[must_use]
    pub fn dsn(&self, db: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user={user} connect_timeout=2",
            self.port
        )
    }

    /// The admin console's DSN.
    #[must_use]
    pub fn admin_dsn(&self) -> String {
        self.dsn("pgbouncer", PGBOUNCER_ADMIN)
    }

    /// The file with the `[databases]` lines (the agent rewrites it).
    #[must_use]
    pub fn databases_file(&self) -> PathBuf {
        self.dir.join("databases.ini")
    }

    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
