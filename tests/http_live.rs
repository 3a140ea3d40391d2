//! The sidecar's HTTP endpoint and WAL guardrail, through the binary as an operator runs
//! it: `pgmesh setup`, then `pgmesh run` per node with `[http]` and `[guardrail]`.
//! `/healthz`, `/readyz` (200 while streaming, 503 with the reason while the peer is
//! down), `/metrics` (applied rows, a conflict counted by kind, every metric name the
//! alert rules and the dashboard use), the guardrail's warning, and `drop_slot` dropping
//! an inactive slot after which the peer's sidecar stops with the way to recover.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::cli::{pgmesh, text};

use pgmesh::testkit::{versions_under_test, Cluster};

const DEADLINE: Duration = Duration::from_secs(60);

/// At most two clusters at a time on the shared machine: tests take turns.
static CLUSTERS: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    CLUSTERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config for nodes a and b replicating `public.items`, plus `extra` sections.
fn write_config(dir: &Path, name: &str, a: &Cluster, b: &Cluster, extra: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[nodes.a]\ndsn = \"{}\"\n[nodes.b]\ndsn = \"{}\"\n[replication]\ntables = [\"public.items\"]\n{extra}\n",
            a.dsn(),
            b.dsn()
        ),
    )
    .unwrap();
    path
}

/// A `pgmesh run` child (stderr to a file), stopped with SIGTERM when dropped.
struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn start(config: &Path, node: &str, extra_args: &[&str]) -> Sidecar {
        let log = config.with_file_name(format!("run-{node}-{}.log", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .args(["run", "--node", node, "-c"])
            .arg(config)
            .args(extra_args)
            .env("RUST_LOG", "pgmesh=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Sidecar { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself; its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "pgmesh run did not exit within {within:?}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on 127.0.0.1:port: status code and body; `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Polls `GET path` until `ok(code, body)`; panics with the last answer at the deadline.
fn wait_http(port: u16, path: &str, what: &str, ok: impl Fn(u16, &str) -> bool) -> String {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some((code, body)) = get(port, path) {
            if ok(code, &body) {
                return body;
            }
            last = Some((code, body));
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what} on {path}; last answer: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for(c: &Cluster, sql: &str, want: &str) {
    let start = Instant::now();
    loop {
        let got = c.psql(sql).unwrap_or_default();
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {sql:?} = {want:?} (last: {got:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the first series of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse().ok())?
        })
        .next()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Changes a node's data without replicating it (under a replication origin).
fn silently(c: &Cluster, sql: &str) {
    c.psql(&format!(
        "SELECT pg_replication_origin_create('test_silent')
          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = 'test_silent');
         SELECT pg_replication_origin_session_setup('test_silent');
         SET session_replication_role = replica;
         BEGIN; {sql}; COMMIT;"
    ))
    .unwrap();
}

/// Every `pgmesh_*` name the alert rules and the dashboard query, without the
/// histogram suffixes Prometheus adds.
fn names_in_monitoring_assets() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let mut names = std::collections::BTreeSet::new();
    for file in [
        "prometheus/pgmesh-alerts.yml",
        "grafana/pgmesh-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("pgmesh_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let mut name = &tail[..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                name = name.strip_suffix(suffix).unwrap_or(name);
            }
            // A word before it (e.g. a job or file name) is not a metric.
            let word_before = rest[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
            if !word_before {
                names.insert(name.to_string());
            }
            rest = &tail[end..];
        }
    }
    names.into_iter().collect()
}

#[test]
fn monitoring_assets_name_only_declared_metrics() {
    let names = names_in_monitoring_assets();
    assert!(names.len() >= 8, "{names:?}");
    for n in &names {
        assert!(
            pgmesh::observe::metrics::ALL.contains(&n.as_str()),
            "{n} is used in monitoring/ but not declared in src/observe/metrics.rs"
        );
    }
}

#[test]
fn health_readiness_and_metrics_of_a_running_mesh() {
    let _t = turn();
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql("CREATE TABLE items (id int PRIMARY KEY, v text)")
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(
            dir.path(),
            "pgmesh.toml",
            &a,
            &b,
            "[guardrail]\ncheck_interval_s = 1\n",
        );
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));

        let (pa, pb) = (free_port(), free_port());
        let _sa = Sidecar::start(&cfg, "a", &["--http-listen", &format!("127.0.0.1:{pa}")]);
        let sb = Sidecar::start(&cfg, "b", &["--http-listen", &format!("127.0.0.1:{pb}")]);

        for port in [pa, pb] {
            let body = wait_http(port, "/healthz", "liveness", |c, _| c == 200);
            assert_eq!(json(&body)["status"], "ok");
        }
        for port in [pa, pb] {
            let body = wait_http(port, "/readyz", "readiness", |c, _| c == 200);
            let v = json(&body);
            assert_eq!(v["ready"], true, "{v:#}");
            assert_eq!(v["directions"][0]["state"], "streaming", "{v:#}");
        }

        // Rows replicated a -> b show as applied rows and transactions on b.
        a.psql("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 10) g")
            .unwrap();
        wait_for(&b, "SELECT count(*) FROM items", "10");
        wait_http(pb, "/metrics", "10 applied rows", |_, m| {
            metric(m, "pgmesh_applied_rows_total", &["peer=\"a\""]) >= Some(10.0)
        });

        // A row b has (silently) and a then inserts: insert_exists on b.
        silently(&b, "INSERT INTO items VALUES (500, 'b')");
        a.psql("INSERT INTO items VALUES (500, 'a')").unwrap();
        wait_for(&b, "SELECT v FROM items WHERE id = 500", "a");
        let m = wait_http(pb, "/metrics", "a conflict by kind", |_, m| {
            metric(
                m,
                "pgmesh_conflicts_total",
                &["peer=\"a\"", "kind=\"insert_exists\""],
            ) == Some(1.0)
        });
        for (name, labels) in [
            (
                "pgmesh_applied_transactions_total",
                &["peer=\"a\"", "node=\"b\""][..],
            ),
            ("pgmesh_batch_rows_count", &["peer=\"a\""]),
            ("pgmesh_apply_batch_seconds_count", &["peer=\"a\""]),
            ("pgmesh_direction_streaming", &["peer=\"a\""]),
        ] {
            assert!(
                metric(&m, name, labels).is_some_and(|v| v >= 1.0),
                "PG{major}: {name} {labels:?} in\n{m}"
            );
        }
        assert!(m.contains("pgmesh_apply_batch_seconds_bucket{"), "{m}");
        // The guardrail's view of slot pgmesh_a on b (read by a's sidecar).
        // The clock skew gauges appear once the stream measured a round trip (the
        // sidecar asks for one at least every 10 s): wait for that too.
        let m = wait_http(pb, "/metrics", "slot and clock skew metrics", |_, m| {
            metric(m, "pgmesh_slot_active", &["peer=\"a\""]) == Some(1.0)
                && m.contains("pgmesh_clock_skew_seconds{")
        });
        assert!(
            metric(
                &m,
                "pgmesh_slot_wal_status",
                &["peer=\"a\"", "wal_status=\"reserved\""]
            ) == Some(1.0),
            "{m}"
        );
        // Everything the alert rules and the dashboard query is exported.
        for n in names_in_monitoring_assets() {
            assert!(
                m.lines().any(|l| l.starts_with(&format!("{n}{{"))
                    || l.starts_with(&format!("{n}_bucket{{"))
                    || l.starts_with(&format!("{n} "))),
                "PG{major}: {n} is used in monitoring/ but not exported:\n{m}"
            );
        }

        // Node b goes down: a's direction from b is not ready, and says why.
        drop(sb);
        b.stop().unwrap();
        let body = wait_http(pa, "/readyz", "503 while b is down", |c, _| c == 503);
        let v = json(&body);
        assert_eq!(v["ready"], false, "{v:#}");
        let d = &v["directions"][0];
        assert_eq!(d["peer"], "b");
        assert!(
            d["state"] == "reconnecting" || d["state"] == "connecting",
            "{v:#}"
        );
        let err = d["last_error"].as_str().unwrap_or_default();
        assert!(!err.is_empty(), "{v:#}");
        assert!(!err.contains("password"), "{err}");
        assert!(
            v["warnings"].to_string().contains("direction from b is"),
            "{v:#}"
        );
        let m = get(pa, "/metrics").unwrap().1;
        assert_eq!(
            metric(&m, "pgmesh_direction_streaming", &["peer=\"b\""]),
            Some(0.0),
            "{m}"
        );
        assert!(
            metric(&m, "pgmesh_reconnects_total", &["peer=\"b\""]).is_some_and(|v| v >= 1.0),
            "{m}"
        );
        b.start_again().unwrap();
        wait_http(pa, "/readyz", "ready again after b is back", |c, _| {
            c == 200
        });
    }
}

#[test]
fn guardrail_warns_then_drops_an_inactive_slot_and_the_peer_stops() {
    let _t = turn();
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql("CREATE TABLE items (id int PRIMARY KEY, v text)")
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let pa = free_port();
        let http = format!("[http]\nlisten = \"127.0.0.1:{pa}\"\n");
        let warn = write_config(
            dir.path(),
            "warn.toml",
            &a,
            &b,
            &format!("{http}[guardrail]\nwarn_retained = \"1kB\"\ncheck_interval_s = 1\n"),
        );
        let out = pgmesh(&["setup"], &warn);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));

        // b's sidecar is down: slot pgmesh_b on a holds everything a writes.
        a.psql("INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 200) g")
            .unwrap();
        {
            let sa = Sidecar::start(&warn, "a", &[]);
            let body = wait_http(pa, "/readyz", "a guardrail warning", |_, b| {
                json(b)["guardrail"]["slots"][0]["level"] == "warn"
            });
            let v = json(&body);
            let slot = &v["guardrail"]["slots"][0];
            assert_eq!(slot["slot"], "pgmesh_b", "{v:#}");
            assert_eq!(slot["active"], false, "{v:#}");
            assert!(slot["retained_bytes"].as_u64() > Some(1024), "{v:#}");
            assert!(
                v["warnings"]
                    .to_string()
                    .contains("slot pgmesh_b on node a"),
                "{v:#}"
            );
            assert_eq!(v["guardrail"]["policy"], "warn");
            let m = get(pa, "/metrics").unwrap().1;
            assert_eq!(
                metric(&m, "pgmesh_guardrail_state", &["peer=\"b\""]),
                Some(1.0),
                "{m}"
            );
            assert!(
                metric(&m, "pgmesh_slot_retained_wal_bytes", &["peer=\"b\""]) > Some(1024.0),
                "{m}"
            );
            assert!(sa.log().contains("WAL guardrail"), "{}", sa.log());
        }

        // Policy drop_slot, limit below what the slot holds: a drops it and records why.
        let drop_cfg = write_config(
            dir.path(),
            "drop.toml",
            &a,
            &b,
            &format!(
                "{http}[guardrail]\nwarn_retained = \"1kB\"\nlimit_retained = \"2kB\"\npolicy = \"drop_slot\"\ncheck_interval_s = 1\n"
            ),
        );
        let sa = Sidecar::start(&drop_cfg, "a", &[]);
        wait_for(
            &a,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgmesh_b'",
            "0",
        );
        assert_eq!(
            a.psql("SELECT peer || ' ' || (retained_bytes > 2048) || ' ' || limit_bytes FROM pgmesh.guardrail_drops WHERE slot_name = 'pgmesh_b'")
                .unwrap(),
            "b true 2048"
        );
        let body = wait_http(pa, "/readyz", "the drop in readyz", |_, b| {
            json(b)["guardrail"]["slots"][0]["level"] == "missing"
        });
        assert!(body.contains("dropped slot pgmesh_b on node a"), "{body}");
        let m = get(pa, "/metrics").unwrap().1;
        assert_eq!(
            metric(&m, "pgmesh_guardrail_slot_drops_total", &["peer=\"b\""]),
            Some(1.0),
            "{m}"
        );
        assert_eq!(
            metric(&m, "pgmesh_guardrail_state", &["peer=\"b\""]),
            Some(3.0),
            "{m}"
        );
        assert!(sa.log().contains("dropped slot pgmesh_b"), "{}", sa.log());
        // Its own slot on b (read by a, active) is left alone.
        assert_eq!(
            b.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgmesh_a'")
                .unwrap(),
            "1"
        );

        // b's sidecar finds its slot gone and stops with the way to recover.
        let mut sb = Sidecar::start(&drop_cfg, "b", &["--http-listen", "127.0.0.1:0"]);
        assert_eq!(sb.wait_exit(DEADLINE), Some(1), "{}", sb.log());
        let log = sb.log();
        for needle in [
            "slot pgmesh_b on node a was dropped by node a's WAL guardrail",
            "pgmesh setup",
            "pgmesh verify",
            "pgmesh repair",
        ] {
            assert!(log.contains(needle), "PG{major}: {needle:?} not in\n{log}");
        }
        // Recovery: setup creates the slot again and marks the drop resolved, so a slot
        // missing later for another reason is not blamed on this drop.
        drop(sa);
        let out = pgmesh(&["setup", "-q"], &drop_cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert_eq!(
            a.psql("SELECT count(*) FILTER (WHERE resolved_at IS NOT NULL) || ' ' || count(*) FROM pgmesh.guardrail_drops")
                .unwrap(),
            "1 1"
        );
    }
}

#[test]
fn a_taken_http_port_is_a_clear_error_at_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgmesh.toml");
    std::fs::write(
        &cfg,
        format!(
            "[nodes.a]\ndsn = \"host=127.0.0.1 port=1 user=x dbname=x\"\n[nodes.b]\ndsn = \"host=127.0.0.1 port=2 user=x dbname=x\"\n[replication]\ntables = [\"public.*\"]\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let out = pgmesh(&["run", "--node", "a"], &cfg);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("cannot listen for HTTP on 127.0.0.1:{port}"))
            && t.contains("[http] listen"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");

    let out = pgmesh(
        &["run", "--node", "a", "--http-listen", "not-an-address"],
        &cfg,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--http-listen"), "{}", text(&out));
    drop(taken);
}
