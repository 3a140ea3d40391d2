//! The cross-region lab and its drills, as CI runs them (issue 14's short form):
//! `pgmesh lab --regions` comes up, a lab whose process was SIGKILLed is cleaned by the
//! next start, Ctrl-C leaves nothing behind (also in the middle of a drill); `pgmesh
//! drill --all --short` runs every scenario once and every correctness check of every
//! drill holds.
//!
//! The tests use the lab's one default layout (namespaces `pgmL-*`, ports 77xx), so
//! they take turns. Needs root (network namespaces), as CI has.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgmesh::testkit::{running_as_root, versions_under_test};

static ONE_LAB: Mutex<()> = Mutex::new(());

fn pg() -> String {
    versions_under_test()[0].to_string()
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("pgmL-"))
        .map(str::to_string)
        .collect()
}

fn hub_address_up() -> bool {
    let out = Command::new("ip")
        .args(["addr", "show", "lo"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("10.77.0.1/32")
}

/// The lab process, stopped if the test panics (a lab left running holds the next one's
/// ports).
struct LabProcess(Child);

impl Drop for LabProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let started = Instant::now();
            while matches!(self.0.try_wait(), Ok(None))
                && started.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `pgmesh lab --regions` and returns once it printed that it is up (its whole
/// output so far, for failures).
fn start_lab() -> (LabProcess, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
        .args(["lab", "--regions", "--pg", &pg()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let child = LabProcess(child);
    let out = read_until(lines, "Press Ctrl-C", "the lab exited before it was up");
    (child, out)
}

/// Reads a child's output up to the line containing `marker` (within 2 minutes) and
/// returns it; the rest is drained in the background so the child never blocks on a full
/// pipe.
fn read_until(
    mut lines: std::io::Lines<impl BufRead + Send + 'static>,
    marker: &str,
    ended: &str,
) -> String {
    let mut out = String::new();
    let started = Instant::now();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{ended}:\n{out}"))
            .unwrap();
        out.push_str(&line);
        out.push('\n');
        if line.contains(marker) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{out}");
    }
    std::thread::spawn(move || for _ in lines {});
    out
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            started.elapsed() < within,
            "the lab did not stop within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_lab_starts_cleans_a_crashed_one_and_leaves_nothing_behind() {
    if !running_as_root() {
        eprintln!("skipped: the cross-region lab needs root (network namespaces)");
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let (mut first, out) = start_lab();
    assert!(out.contains("the cross-region lab is up in"), "{out}");
    assert_eq!(namespaces().len(), 4, "{:?}", namespaces());
    // A crash of the lab process leaves its sites (and their programs) behind ...
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert_eq!(namespaces().len(), 4, "a killed lab cannot clean up");
    // ... which the next start removes before it builds its own.
    let (mut second, out) = start_lab();
    assert!(
        out.contains("removed the leftovers of an earlier lab"),
        "{out}"
    );
    // Writes reach both regions through the client site and HAProxy.
    let dsn = out
        .lines()
        .find_map(|l| l.split('\'').nth(1).filter(|d| d.starts_with("host=")))
        .expect("the lab prints the application's DSN")
        .to_string();
    let psql = format!("/usr/lib/postgresql/{}/bin/psql", pg());
    let psql = if std::path::Path::new(&psql).exists() {
        psql
    } else {
        pgmesh::testkit::bin_dir(versions_under_test()[0])
            .unwrap()
            .join("psql")
            .display()
            .to_string()
    };
    let wrote = Command::new(&psql)
        .args([
            "-X",
            "-d",
            &dsn,
            "-c",
            "INSERT INTO orders VALUES (42, 'hello')",
        ])
        .output()
        .unwrap();
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    let on_b = "host=10.77.2.2 port=7702 user=postgres dbname=postgres";
    let started = Instant::now();
    loop {
        let got = Command::new(&psql)
            .args([
                "-X",
                "-A",
                "-t",
                "-d",
                on_b,
                "-c",
                "SELECT payload FROM orders WHERE id = 42",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&got.stdout).trim() == "hello" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the row did not reach b"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-C: everything goes.
    Command::new("kill")
        .args(["-INT", &second.0.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut second.0, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert!(namespaces().is_empty(), "{:?}", namespaces());
    assert!(!hub_address_up(), "the hub address stayed on lo");
    assert!(!std::env::temp_dir().join("pgmesh-lab-pgmL").exists());
}

#[test]
fn every_drill_runs_in_its_short_form_and_holds_its_checks() {
    if !running_as_root() {
        eprintln!("skipped: the cross-region lab needs root (network namespaces)");
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
        .args(["drill", "--all", "--short", "--pg", &pg(), "--out"])
        .arg(out_dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out_dir.path().join("summary.json")).unwrap_or_else(|e| {
            panic!(
                "no summary ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        }),
    )
    .unwrap();
    let scenarios = summary["scenarios"].as_object().unwrap();
    assert_eq!(
        scenarios.len(),
        pgmesh::lab::drill::Scenario::ALL.len(),
        "{stdout}"
    );
    let failed: Vec<String> = scenarios
        .iter()
        .filter(|(_, s)| s["passed"] != s["trials"])
        .map(|(n, s)| format!("{n}: {}", s["failed_checks"]))
        .collect();
    if !failed.is_empty() {
        // The failed drills' logs, for the CI output.
        for e in std::fs::read_dir(out_dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with("-logs") {
                for log in std::fs::read_dir(e.path()).unwrap().flatten() {
                    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!(
                        "--- {}\n{}",
                        log.path().display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed drills: {failed:?}\n{stdout}");
    assert!(out.status.success(), "{stdout}");
    // Every correctness measure of the summary, over all drills.
    for (n, s) in scenarios {
        assert_eq!(s["lost_writes"], 0, "{n}");
        assert_eq!(s["dual_owner_samples"], 0, "{n}");
        assert_eq!(s["divergent_rows"], 0, "{n}");
    }
}

/// Ctrl-C in the middle of a drill removes the lab too (it left the namespaces and their
/// programs to the next start) and exits 130.
#[test]
fn an_interrupted_drill_leaves_nothing_behind() {
    if !running_as_root() {
        eprintln!("skipped: the cross-region lab needs root (network namespaces)");
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
        .args(["drill", "degraded-wan", "--short", "--pg", &pg(), "--out"])
        .arg(out_dir.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut drill = LabProcess(child);
    // The fact to wait for: the drill itself began (the lab is up, its load running).
    let seen = read_until(
        lines,
        "drill degraded-wan (trial 1)",
        "the drill ended before it began",
    );
    assert_eq!(namespaces().len(), 4, "{:?}", namespaces());
    Command::new("kill")
        .args(["-INT", &drill.0.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut drill.0, Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{status}\n{seen}");
    assert!(namespaces().is_empty(), "{:?}", namespaces());
    assert!(!hub_address_up(), "the hub address stayed on lo");
    assert!(!std::env::temp_dir().join("pgmesh-lab-pgmL").exists());
}
