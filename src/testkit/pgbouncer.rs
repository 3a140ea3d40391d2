//! A throwaway pgbouncer (Debian's 1.18, `/usr/sbin/pgbouncer`) on loopback, in
//! transaction pooling, with its `[databases]` lines in a separate file that its ini
//! `%include`s — the layout the agent's repointing expects (see
//! [`crate::traffic::pgbouncer`]).
//!
//! pgbouncer refuses to run as root: as root it runs as `postgres` through `setpriv`, like
//! the clusters, in a scratch directory owned by that user. Users `pgmesh` (admin
//! console), `app`, `postgres` and `root` log in without a password (`auth_type = trust`
//! still wants them listed in the `auth_file`); pgbouncer logs in to PostgreSQL as the
//! client's user. There is no unix socket (`unix_socket_dir =`), and
//! `ignore_startup_parameters = extra_float_digits,options`: tokio-postgres sends only
//! `client_encoding`, `user`, `database` and, when set, `application_name` (which
//! pgbouncer knows) and `options` (which it refuses unless ignored).

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

/// Where a testkit pgbouncer listens and keeps its files: what a caller's own ini (see
/// [`Pgbouncer::start_with_ini`]) needs to know.
#[derive(Clone, Debug)]
pub struct PgbouncerPaths {
    pub port: u16,
    /// The scratch directory (owned by pgbouncer's OS user).
    pub dir: PathBuf,
    /// The `[databases]` file to `%include`.
    pub databases_file: PathBuf,
    /// An `auth_file` listing the test users with empty passwords.
    pub auth_file: PathBuf,
}

/// A running pgbouncer; killed and its directory removed on drop.
#[derive(Debug)]
pub struct Pgbouncer {
    port: u16,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

impl Pgbouncer {
    /// Starts pgbouncer with `databases` (name → connection string) in its databases file
    /// and waits until its admin console answers `SHOW VERSION`.
    pub fn start(databases: &BTreeMap<String, String>) -> Result<Pgbouncer, TestkitError> {
        Self::start_with_ini(databases, default_ini)
    }

    /// Like [`Pgbouncer::start`] with the ini `ini` renders (e.g. a user's example with
    /// its port, files and auth pointed at the scratch directory). The ini must listen on
    /// 127.0.0.1 at `port`, and let [`PGBOUNCER_ADMIN`] in without a password.
    pub fn start_with_ini(
        databases: &BTreeMap<String, String>,
        ini: impl Fn(&PgbouncerPaths) -> String,
    ) -> Result<Pgbouncer, TestkitError> {
        if !Path::new(PGBOUNCER).exists() {
            return Err(TestkitError::ProgramMissing {
                program: PGBOUNCER.into(),
                script: "scripts/install-control.sh",
            });
        }
        let dir = scratch_dir("pgbouncer")?;
        let mut me = Pgbouncer {
            port: 0,
            dir,
            daemon: None,
        };
        let dbs = me.databases_file();
        write(&dbs, &render_databases_file(databases))?;
        let users = me.dir.join("users.txt");
        write(
            &users,
            "\"pgmesh\" \"\"\n\"app\" \"\"\n\"postgres\" \"\"\n\"root\" \"\"\n",
        )?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            me.port = free_ports(1)?[0];
            let paths = PgbouncerPaths {
                port: me.port,
                dir: me.dir.clone(),
                databases_file: dbs.clone(),
                auth_file: users.clone(),
            };
            let ini_path = me.dir.join("pgbouncer.ini");
            write(&ini_path, &ini(&paths))?;
            let log = me.dir.join("pgbouncer.log");
            let _ = std::fs::remove_file(&log);
            let mut cmd = if running_as_root() {
                chown_to_postgres(&me.dir)?;
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
            cmd.arg(&ini_path);
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

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_DEADLINE;
        let mut last = String::from("not tried");
        loop {
            if self.log().contains("process up") {
                match admin_answers(&self.admin_dsn()) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e,
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
                    what: format!(
                        "pgbouncer's admin console on port {} did not answer SHOW VERSION in time ({last})",
                        self.port
                    ),
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

    /// pgbouncer's output (it logs to stderr).
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

/// The testkit's own ini: transaction pooling, trust auth, the databases file included in
/// `[databases]` (the form `examples/pgbouncer.ini` shows users).
fn default_ini(p: &PgbouncerPaths) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "[databases]\n%include {dbs}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
         unix_socket_dir =\nauth_type = trust\nauth_file = {users}\nadmin_users = {PGBOUNCER_ADMIN}\n\
         pool_mode = transaction\ndefault_pool_size = 5\nmax_client_conn = 200\n\
         server_login_retry = 1\nserver_connect_timeout = 2\nquery_wait_timeout = 60\n\
         ignore_startup_parameters = extra_float_digits,options\n",
        dbs = p.databases_file.display(),
        port = p.port,
        users = p.auth_file.display(),
    );
    s
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(|source| TestkitError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn chown_to_postgres(dir: &Path) -> Result<(), TestkitError> {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .output()
        .map_err(|source| TestkitError::Spawn {
            program: "chown".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestkitError::Failed {
            what: format!("chown -R postgres:postgres {}", dir.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// `SHOW VERSION` on the admin console, on a thread of its own (callers may be inside a
/// tokio runtime, where another one cannot block).
fn admin_answers(dsn: &str) -> Result<String, String> {
    let dsn = dsn.to_string();
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let admin = crate::traffic::pgbouncer::Admin::connect(&dsn, Duration::from_secs(2))
                    .await
                    .map_err(|e| e.to_string())?;
                admin.version().await.map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the SHOW VERSION thread panicked".into()))
    })
}
