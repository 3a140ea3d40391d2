//! One long-running child program (an etcd member, a Prometheus) with its output in a file.
//!
//! The testkit drives real daemons to their failure modes: SIGKILL (crash), SIGSTOP (a frozen
//! process that holds its sockets but answers nothing) and SIGCONT. Signals other than KILL go
//! through `/usr/bin/kill`, because the crate denies `unsafe_code` and so cannot call
//! `libc::kill`. A [`Daemon`] is killed and reaped when dropped, also when a test panics, so no
//! orphan keeps ports or data directories busy.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::TestkitError;

/// A spawned program whose stdout and stderr are appended to `log_path`.
#[derive(Debug)]
pub struct Daemon {
    what: String,
    child: Option<Child>,
    paused: AtomicBool,
}

impl Daemon {
    /// Spawns `cmd` with stdin closed and both output streams appended to `log_path` (append,
    /// so a restarted daemon's log follows its previous life's).
    pub fn spawn(what: &str, mut cmd: Command, log_path: &Path) -> Result<Daemon, TestkitError> {
        let io = |source| TestkitError::Io {
            path: log_path.to_path_buf(),
            source,
        };
        let out: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| TestkitError::Spawn {
                program: format!("{:?}", cmd.get_program()),
                source,
            })?;
        Ok(Daemon {
            what: what.to_string(),
            child: Some(child),
            paused: AtomicBool::new(false),
        })
    }

    /// Whether the process is still running; `Some(status)` once it exited on its own.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("killed".to_string()),
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("unknown ({e})")),
        }
    }

    /// SIGKILL and reap. A stopped (SIGSTOPped) process dies from SIGKILL too; it is continued
    /// first anyway so nothing depends on that corner of signal semantics.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if self.paused.swap(false, Ordering::SeqCst) {
            let _ = send_signal(child.id(), "CONT", &self.what);
        }
        let pid = child.id();
        let spawn_err = |source| TestkitError::Spawn {
            program: format!("kill -KILL {pid} ({})", self.what),
            source,
        };
        // kill() fails only when the process is gone already; then wait() reaps it at once.
        if let Err(source) = child.kill() {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                self.child = Some(child);
                return Err(spawn_err(source));
            }
        }
        child.wait().map(|_| ()).map_err(spawn_err)
    }

    /// SIGSTOP: the process keeps its sockets open but runs no code, like a frozen VM.
    pub fn pause(&self) -> Result<(), TestkitError> {
        let pid = self.running_pid()?;
        send_signal(pid, "STOP", &self.what)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// SIGCONT after [`Daemon::pause`].
    pub fn resume(&self) -> Result<(), TestkitError> {
        let pid = self.running_pid()?;
        send_signal(pid, "CONT", &self.what)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn running_pid(&self) -> Result<u32, TestkitError> {
        self.child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| TestkitError::Failed {
                what: format!("signal {}", self.what),
                status: "not running".to_string(),
                stderr: "the process was killed; restart it first".to_string(),
            })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn send_signal(pid: u32, signal: &str, what: &str) -> Result<(), TestkitError> {
    let program = format!("kill -{signal} {pid} ({what})");
    let out = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .map_err(|source| TestkitError::Spawn {
            program: program.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestkitError::Failed {
            what: program,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A new, empty directory named `pgmesh-<kind>-<pid>-<n>-<nanos>`, unique across parallel
/// tests and test binaries: in memory (/dev/shm) when the machine has it, else under the
/// system temp dir. etcd fsyncs every write; on a busy 2-core disk that alone can take
/// longer than a lease renewal may, and tests are about pgmesh, not about the disk (the
/// same reason test clusters run with fsync off).
pub(super) fn scratch_dir(kind: &str) -> Result<PathBuf, TestkitError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "pgmesh-{kind}-{}-{n}-{nanos:x}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|source| TestkitError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// The last `n` lines of a log, for error messages.
pub(super) fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a daemon's log says it could not bind its port (a race with another process that
/// took the free port first), which is worth a retry with new ports.
pub(super) fn lost_port_race(log: &str) -> bool {
    log.contains("address already in use")
}
