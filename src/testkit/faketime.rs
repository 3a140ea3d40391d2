//! A shifted clock for one node: libfaketime (Debian `faketime`, installed by
//! `scripts/install-control.sh`) preloaded into its programs, reading the offset from a
//! file, so a test or drill moves the node's clock while it runs — the way an NTP step
//! or a drifting host does — without restarting anything.
//!
//! Only the wall clock moves (`FAKETIME_DONT_FAKE_MONOTONIC`): timers and the agent's
//! lease arithmetic run on the monotonic clock, as on a real host whose time is wrong.
//! Go programs (etcd) read the clock without libc and are not shifted.

use std::path::{Path, PathBuf};

use super::TestkitError;

/// Where Debian's package puts the libraries (multiarch directories).
const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime",
    "/usr/lib/aarch64-linux-gnu/faketime",
    "/usr/lib/faketime",
];

/// The offset file of one node's clock.
#[derive(Debug, Clone)]
pub struct FakeClock {
    file: PathBuf,
    /// Single-threaded programs (PostgreSQL) and threaded ones (pgmesh) take different
    /// builds of the library.
    lib: PathBuf,
    lib_mt: PathBuf,
}

impl FakeClock {
    /// A clock at offset 0 whose file is `file` (created, readable by the server user).
    pub fn new(file: &Path) -> Result<FakeClock, TestkitError> {
        let dir = LIB_DIRS
            .iter()
            .map(Path::new)
            .find(|d| d.join("libfaketime.so.1").exists())
            .ok_or(TestkitError::ProgramMissing {
                program: PathBuf::from("libfaketime.so.1"),
                script: "scripts/install-control.sh (Debian package faketime)",
            })?;
        let clock = FakeClock {
            file: file.to_path_buf(),
            lib: dir.join("libfaketime.so.1"),
            lib_mt: dir.join("libfaketimeMT.so.1"),
        };
        clock.set_offset_ms(0)?;
        Ok(clock)
    }

    /// Whether libfaketime is installed.
    #[must_use]
    pub fn available() -> bool {
        LIB_DIRS
            .iter()
            .any(|d| Path::new(d).join("libfaketime.so.1").exists())
    }

    /// Shifts the clock by `ms` (signed) from real time; every process started with
    /// [`FakeClock::env`] follows at once.
    pub fn set_offset_ms(&self, ms: i64) -> Result<(), TestkitError> {
        // libfaketime's relative format: "+3.5" is seconds; write it whole and then
        // rename so that no reader sees a half-written file.
        let text = format!(
            "{}{:.3}\n",
            if ms < 0 { "-" } else { "+" },
            ms.abs() as f64 / 1e3
        );
        let tmp = self.file.with_extension("tmp");
        let io = |e| TestkitError::Io {
            path: self.file.clone(),
            source: e,
        };
        std::fs::write(&tmp, text).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
        std::fs::rename(&tmp, &self.file).map_err(io)
    }

    /// The environment that puts a program on this clock (`threaded`: it uses threads).
    #[must_use]
    pub fn env(&self, threaded: bool) -> Vec<(String, String)> {
        let lib = if threaded { &self.lib_mt } else { &self.lib };
        vec![
            ("LD_PRELOAD".into(), lib.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file.display().to_string(),
            ),
            // Read at every call, not cached for a second per process: a host's clock
            // steps for all its programs at once, and an agent a second behind its
            // database on the step lets the write permit lapse (or stretch).
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }
}
