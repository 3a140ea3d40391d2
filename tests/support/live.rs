//! Operating real clusters through the binary for schema and sequence tests: setup,
//! sidecar processes with their logs, and waits for facts (rows, logs, convergence).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgmesh::testkit::Cluster;

use super::cli::{pgmesh, text, write_config};
use super::{dump, slots_caught_up, wal_marks};

/// At most two clusters per test file at a time on the shared machine: tests take turns.
static CLUSTERS: Mutex<()> = Mutex::new(());

pub fn turn() -> std::sync::MutexGuard<'static, ()> {
    CLUSTERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two clusters of `major` with `ddl` on both, set up by `pgmesh setup` for `tables`
/// (TOML list items).
pub fn nodes_with_setup(
    major: u32,
    ddl: &str,
    tables: &str,
) -> (Cluster, Cluster, tempfile::TempDir, PathBuf) {
    let a = Cluster::start(major).unwrap();
    let b = Cluster::start(major).unwrap();
    a.psql(ddl).unwrap();
    b.psql(ddl).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &a, &b, tables);
    let out = pgmesh(&["setup"], &cfg);
    assert_eq!(
        out.status.code(),
        Some(0),
        "PG{major} setup: {}",
        text(&out)
    );
    (a, b, dir, cfg)
}

/// A scratch directory the server user can read (for a [`FakeClock`]'s file) and a
/// clock there at offset 0.
pub fn shiftable_clock() -> (tempfile::TempDir, pgmesh::testkit::faketime::FakeClock) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let clock = pgmesh::testkit::faketime::FakeClock::new(&dir.path().join("clock"))
        .expect("libfaketime (scripts/install-control.sh)");
    (dir, clock)
}

/// A cluster of `major` whose server runs on `clock`.
pub fn cluster_on(major: u32, clock: &pgmesh::testkit::faketime::FakeClock) -> Cluster {
    let mut builder = Cluster::builder(major);
    for (k, v) in clock.env(false) {
        builder = builder.env(&k, &v);
    }
    builder.start().unwrap()
}

/// A `pgmesh run` process; its log (stderr) goes to a file. Killed when dropped.
pub struct Sidecar {
    child: Child,
    pub log: PathBuf,
}

impl Sidecar {
    pub fn spawn(cfg: &Path, node: &str, log: PathBuf) -> Sidecar {
        Sidecar::spawn_with_env(cfg, node, log, &[])
    }

    /// [`Sidecar::spawn`] with `env` added (a shifted clock, another `RUST_LOG`).
    pub fn spawn_with_env(
        cfg: &Path,
        node: &str,
        log: PathBuf,
        env: &[(String, String)],
    ) -> Sidecar {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .env("RUST_LOG", "pgmesh=info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["--log-format", "text", "run", "-c"])
            .arg(cfg)
            .args(["--node", node])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn pgmesh run");
        Sidecar { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.log_text();
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in the log of {}:\n{t}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `sql` on `c` returns `want`.
pub fn wait_for(c: &Cluster, sql: &str, want: &str, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = c.psql(sql);
        if got.as_deref().ok() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {sql} gave {got:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until one of `c`'s pgmesh apply sessions waits for a lock (a local transaction
/// holds a row it is about to write): the fact a test needs before it lets that
/// transaction go.
pub fn wait_apply_blocked(c: &Cluster, what: &str, timeout: Duration) {
    wait_for(
        c,
        "SELECT count(*) FROM pg_stat_activity
          WHERE application_name = 'pgmesh apply' AND wait_event_type = 'Lock'",
        "1",
        what,
        timeout,
    );
}

/// Waits until both slots confirmed the WAL written so far and `tables` hold the same
/// rows on both nodes.
pub fn wait_converged(a: &Cluster, b: &Cluster, tables: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let marks = wal_marks(a, b);
    loop {
        let caught_up = slots_caught_up(&marks);
        let same = caught_up && tables.iter().all(|t| dump(a, t) == dump(b, t));
        if same {
            return;
        }
        if Instant::now() > deadline {
            let mut msg = format!("nodes did not converge (slots caught up: {caught_up})\n");
            for t in tables {
                let (da, db) = (dump(a, t), dump(b, t));
                if da != db {
                    let la: std::collections::BTreeSet<&str> = da.lines().collect();
                    let lb: std::collections::BTreeSet<&str> = db.lines().collect();
                    for l in la.difference(&lb).take(10) {
                        msg.push_str(&format!("{t} only on a: {l}\n"));
                    }
                    for l in lb.difference(&la).take(10) {
                        msg.push_str(&format!("{t} only on b: {l}\n"));
                    }
                }
            }
            panic!("{msg}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// [`wait_converged`], printing the warnings and errors of `sidecars`' logs if it fails.
pub fn wait_converged_or_show(
    a: &Cluster,
    b: &Cluster,
    tables: &[&str],
    timeout: Duration,
    sidecars: &[&Sidecar],
) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_converged(a, b, tables, timeout)
    }));
    if let Err(e) = r {
        for (n, c) in [("a", a), ("b", b)] {
            eprintln!(
                "--- ledger of {n}:\n{}",
                c.psql("SELECT id, kind, key, winner, resolution, local_origin, remote_lsn, left(remote_row::text, 60), left(local_row::text, 60) FROM pgmesh.conflicts ORDER BY id DESC LIMIT 30")
                    .unwrap_or_default()
            );
        }
        for s in sidecars {
            eprintln!("--- {}", s.log.display());
            for l in s
                .log_text()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                eprintln!("{l}");
            }
        }
        std::panic::resume_unwind(e);
    }
}
