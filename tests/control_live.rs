//! The control plane against the real programs: a 3-member etcd, two PostgreSQL
//! primaries (15 and 18), both sidecars and both agents (with watchdogs) as processes.
//! Every test waits for facts (an endpoint served, a database refusing app writes) and a
//! sampler checks throughout that no region takes writes while the other serves one of
//! its endpoints.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgmesh::testkit::{versions_under_test, Prometheus};
use support::cli::{pgmesh, text};
use support::control::{tail, wait_acked, DualOwnerSampler, Lab, TTL};
use support::live::turn;

fn version(i: usize) -> u32 {
    let v = versions_under_test();
    v[i % v.len()]
}

fn assert_no_dual_owner(lab: &Lab, sampler: DualOwnerSampler) {
    let (samples, violations) = sampler.stop();
    assert!(samples > 10, "the sampler took only {samples} samples");
    assert!(
        violations.is_empty(),
        "two writable owners: {violations:?}\n--- agent a\n{}\n--- agent b\n{}",
        lab.agent_log("a"),
        lab.agent_log("b")
    );
    eprintln!("sampler: {samples} samples, no moment with two writable owners");
}

fn event_kinds(lab: &Lab) -> Vec<String> {
    lab.events()
        .iter()
        .map(|e| {
            format!(
                "{}:{}:{}",
                e["node"].as_str().unwrap_or(""),
                e["kind"].as_str().unwrap_or(""),
                e["endpoint"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Waits until every one of `kinds` is recorded (agents record events beside their
/// decisions, a moment after acting on them); returns all recorded.
fn wait_events(lab: &Lab, kinds: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = event_kinds(lab);
        if kinds.iter().all(|k| got.iter().any(|g| g == k)) {
            return got;
        }
        assert!(Instant::now() < deadline, "waited for {kinds:?}: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn primary_killed_with_agent_alive_releases_at_once_and_returns_fenced_until_switchover() {
    let _t = turn();
    let major = version(0);
    let lab = Lab::start(major, "");
    assert!(
        lab.db_writable("a") && lab.db_writable("b"),
        "both regions write"
    );
    let st = lab.status();
    assert_eq!(lab.owner("app-eu").as_deref(), Some("a"), "{st}");
    assert!(st["endpoints"][0]["epoch"].as_i64().unwrap() > 0, "{st}");

    let sampler = DualOwnerSampler::start(&lab);
    let killed = Instant::now();
    lab.a.stop_immediate().unwrap();
    lab.wait_serving("b", "app-eu", Duration::from_secs(20));
    let takeover = killed.elapsed();
    eprintln!("PG{major}: primary a killed -> b serves app-eu after {takeover:?}");
    // "At once" is a fact here, not a time: a released it itself (timings: RELIABILITY.md).
    if takeover > TTL {
        let _ = std::fs::copy(lab.dir.path().join("agent-b.log"), "/tmp/slow-agent-b.log");
        let _ = std::fs::copy(lab.dir.path().join("agent-a.log"), "/tmp/slow-agent-a.log");
        eprintln!("slow takeover; logs in /tmp/slow-agent-*.log");
    }
    wait_events(&lab, &["a:released:app-eu", "b:failover:app-eu"]);
    let failover = lab
        .events()
        .into_iter()
        .find(|e| e["kind"] == "failover")
        .unwrap();
    assert!(
        failover["rpo"].is_object(),
        "failover records an RPO estimate: {failover}"
    );

    // The old primary returns: its agent fences it (it owns nothing), replication catches up.
    lab.a.start_again().unwrap();
    lab.wait_db_writable("a", false, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.status()["regions"][0]["health"] != "healthy" {
        assert!(
            Instant::now() < deadline,
            "a never became healthy again: {}",
            tail(&lab.agent_log("a"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!lab.serves("a", "app-eu"));
    // It gets its endpoint back only by a decision.
    let out = pgmesh(
        &["switchover", "app-eu", "--to", "a", "--json"],
        lab.cfg_path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "switchover back: {}\n--- agent b\n{}",
        text(&out),
        tail(&lab.agent_log("b"))
    );
    lab.wait_serving("a", "app-eu", Duration::from_secs(10));
    lab.wait_db_writable("a", true, Duration::from_secs(10));
    assert_no_dual_owner(&lab, sampler);
}

#[test]
fn lease_lost_without_quorum_fences_both_and_forced_failover_is_recorded() {
    let _t = turn();
    let major = version(1);
    let mut lab = Lab::start(major, "");
    let sampler = DualOwnerSampler::start(&lab);
    let cut = Instant::now();
    lab.etcd.kill_member(1).unwrap();
    lab.etcd.kill_member(2).unwrap();
    let fa = lab.wait_db_writable("a", false, Duration::from_secs(10));
    let fb = lab.wait_db_writable("b", false, Duration::from_secs(10));
    eprintln!(
        "PG{major}: quorum lost -> a fenced after {fa:?}, b after {:?}",
        cut.elapsed()
    );
    let _ = fb;
    // Nothing moves without quorum: for two lease periods neither region serves anything.
    let watch_until = Instant::now() + TTL * 2;
    while Instant::now() < watch_until {
        for (n, e) in [
            ("a", "app-eu"),
            ("a", "app-us"),
            ("b", "app-eu"),
            ("b", "app-us"),
        ] {
            assert!(!lab.serves(n, e), "{n} serves {e} without quorum");
        }
        for n in ["a", "b"] {
            assert!(
                !lab.db_writable(n),
                "{n} writable without quorum\n--- agent {n}\n{}\n--- fence\n{:?}",
                tail(&lab.agent_log(n)),
                lab.cluster(n).psql("SELECT fenced, reason, changed_by, changed_at, pg_sequence_last_value('pgmesh.write_permit') - (extract(epoch from clock_timestamp())*1000)::bigint FROM pgmesh.fence")
            );
        }
    }
    let (code, body) = lab.http("b", "/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"etcd_ok\":false"), "{body}");

    // The operator decides: app-eu goes to b.
    let out = pgmesh(&["failover", "app-eu", "--to", "b"], lab.cfg_path());
    assert_ne!(
        out.status.code(),
        Some(0),
        "failover without --force is refused: {}",
        text(&out)
    );
    let out = pgmesh(
        &["failover", "app-eu", "--to", "b", "--force", "--json"],
        lab.cfg_path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.wait_db_writable("b", true, Duration::from_secs(10));
    assert!(!lab.db_writable("a"));
    // `pgmesh status` shows the decision while etcd cannot.
    let out = pgmesh(&["status"], lab.cfg_path());
    assert!(
        text(&out).contains("forced app-eu onto b"),
        "{}",
        text(&out)
    );

    // Quorum returns: b records the decision in etcd; a stays fenced (it owns nothing).
    lab.etcd.restart_member(1).unwrap();
    lab.etcd.restart_member(2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kinds = event_kinds(&lab);
        if lab.owner("app-eu").as_deref() == Some("b")
            && kinds.iter().any(|k| k == "b:forced_failover:app-eu")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forced failover not recorded: {kinds:?}\n{}",
            tail(&lab.agent_log("b"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.wait_serving("b", "app-eu", Duration::from_secs(10));
    lab.wait_serving("b", "app-us", Duration::from_secs(20));
    assert!(!lab.db_writable("a"));
    // Recorded in etcd, the decision is gone from b's database.
    let forced = lab.status()["forced"].clone();
    assert_eq!(forced, serde_json::json!([]), "{forced}");
    assert_no_dual_owner(&lab, sampler);
}

#[test]
fn a_region_forced_writable_and_cut_off_from_etcd_keeps_the_peer_from_taking_anything() {
    // The operator's forced failover is recorded in etcd only by the target's agent. Here
    // that agent cannot reach etcd when quorum returns; the other region can, and with
    // its lease back it would take its home endpoint and (the target has no member key)
    // the target's too, while the target takes writes by the operator's decision.
    let _t = turn();
    let major = version(0);
    let mut lab = Lab::start(major, "");
    let sampler = DualOwnerSampler::start(&lab);
    lab.lose_quorum_and_force("app-us", "a");
    lab.isolate_a();
    lab.restore_quorum();

    // b has its lease back and says why it takes nothing.
    lab.wait_why("b", "forced app-us onto a", Duration::from_secs(30));
    let watch_until = Instant::now() + TTL * 2;
    while Instant::now() < watch_until {
        for e in ["app-eu", "app-us"] {
            assert!(
                !lab.serves("b", e),
                "b serves {e} while a is forced writable"
            );
        }
        assert!(!lab.db_writable("b"), "{}", tail(&lab.agent_log("b")));
        assert!(lab.db_writable("a"), "{}", tail(&lab.agent_log("a")));
    }

    // a back in touch: it records the decision and takes its home endpoint back.
    lab.heal_a();
    wait_events(&lab, &["a:forced_failover:app-us"]);
    lab.wait_serving("a", "app-us", Duration::from_secs(20));
    lab.wait_serving("a", "app-eu", Duration::from_secs(20));
    assert!(!lab.db_writable("b"));
    assert_no_dual_owner(&lab, sampler);
}

#[test]
fn frozen_or_killed_agent_is_fenced_by_its_watchdog_before_the_peer_takes_over() {
    let _t = turn();
    for (i, major) in versions_under_test().into_iter().enumerate() {
        let mut lab = Lab::start(major, "");
        let sampler = DualOwnerSampler::start(&lab);
        // SIGSTOP longer than the lease.
        let frozen = Instant::now();
        lab.agent("a").signal("-STOP");
        let fenced = lab.wait_db_writable("a", false, Duration::from_secs(10));
        let taken = lab.wait_serving("b", "app-eu", Duration::from_secs(20)) + fenced;
        eprintln!("PG{major}: agent a frozen -> fenced by its watchdog after {fenced:?}, b serves app-eu after {taken:?}");
        assert!(
            frozen.elapsed() >= TTL - Duration::from_secs(1),
            "no takeover before the lease could expire"
        );
        lab.agent("a").signal("-CONT");
        // Back, it finds its lease gone and stays fenced.
        let back = Instant::now();
        while back.elapsed() < Duration::from_secs(2) {
            assert!(!lab.db_writable("a"), "a unfenced after its lease expired");
        }
        assert!(
            lab.agent_log("a").contains("lease"),
            "{}",
            tail(&lab.agent_log("a"))
        );

        // SIGKILL of b's agent: its watchdog fences b, a takes app-us after expiry.
        if i == 0 {
            lab.kill_agent("b");
            let f = lab.wait_db_writable("b", false, Duration::from_secs(10));
            let t = lab.wait_serving("a", "app-us", Duration::from_secs(30)) + f;
            eprintln!(
                "PG{major}: agent b killed -> fenced after {f:?}, a serves app-us after {t:?}"
            );
        }
        assert_no_dual_owner(&lab, sampler);
    }
}

#[test]
fn switchover_under_load_loses_no_acknowledged_write() {
    let _t = turn();
    let major = version(1);
    let lab = Lab::start(major, "");
    let writer = lab.writer_following("app-eu", 1);
    wait_acked(&writer, 200, Duration::from_secs(10));
    let out = pgmesh(
        &["switchover", "app-eu", "--to", "b", "--json"],
        lab.cfg_path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- agent a\n{}",
        text(&out),
        tail(&lab.agent_log("a"))
    );
    let moved: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let before = writer.report().acked.len();
    wait_acked(&writer, before + 200, Duration::from_secs(20));
    let report = writer.stop();
    let b_port = lab.b.port().to_string();
    assert!(
        report.acked.iter().any(|(_, d)| d.contains(&b_port)),
        "writes went to b after the move"
    );
    support::live::wait_converged(&lab.a, &lab.b, &["acked"], Duration::from_secs(60));
    let lost = lab.lost_writes("b", &report);
    eprintln!(
        "PG{major}: switchover {}: {} acknowledged, {} lost, {} failed statements, longest pause {:?}",
        moved["detail"], report.acked.len(), lost.len(), report.failures, report.max_gap
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        !lab.db_writable("a"),
        "a owns nothing after the move: fenced"
    );
}

/// /a/readyz fails every other request, /b/readyz is always ready, /metrics exposes
/// `app_latency_p95` from `p95` (thousandths).
fn serve_flapper(p95: Arc<AtomicU64>, requests_a: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = match path {
                "/a/readyz" => {
                    let n = requests_a.fetch_add(1, Ordering::Relaxed);
                    if n.is_multiple_of(2) {
                        (503, "flap".to_string())
                    } else {
                        (200, "ok".to_string())
                    }
                }
                "/b/readyz" => (200, "ok".into()),
                "/metrics" => (
                    200,
                    format!(
                        "app_latency_p95 {}\n",
                        p95.load(Ordering::Relaxed) as f64 / 1000.0
                    ),
                ),
                _ => (404, String::new()),
            };
            let _ = write!(
                s,
                "HTTP/1.0 {code} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn flapping_probe_never_moves_an_endpoint_and_promql_reads_a_real_prometheus() {
    let _t = turn();
    let major = version(0);
    let (p95, requests, stop) = (
        Arc::new(AtomicU64::new(100)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let port = serve_flapper(p95.clone(), requests.clone(), stop.clone());
    let prom = Prometheus::start("app", &[format!("127.0.0.1:{port}")]).unwrap();
    prom.wait_target_up(Duration::from_secs(30)).unwrap();
    let extra = format!(
        "failed_after = 2\n[control.health]\nweight_sidecar = 20.0\nsidecar_url = \"http://127.0.0.1:{port}/{{node}}\"\n[[control.health.promql]]\nname = \"app_p95\"\nurl = \"{}\"\nquery = \"app_latency_p95\"\nmax = 0.5\n",
        prom.url()
    );
    let lab = Lab::start(major, &extra);
    let epoch = lab.status()["endpoints"][0]["epoch"].as_i64().unwrap();
    // Twenty probes of a, every other one failing (each below failed_below on its own).
    let seen = requests.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_failed_probe = false;
    while requests.load(Ordering::Relaxed) < seen + 20 {
        assert!(Instant::now() < deadline, "a's agent stopped probing");
        let (_, body) = lab.http("a", "/health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        saw_failed_probe |= h["failed_probes_in_a_row"] == 1;
        assert_ne!(
            h["health"], "failed",
            "a flapping probe failed the region: {body}"
        );
        assert!(
            lab.serves("a", "app-eu") || h["failed_probes_in_a_row"] == 1 || h.is_null(),
            "{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        saw_failed_probe,
        "the flapping signal was never seen failing"
    );
    let st = lab.status();
    assert_eq!(st["endpoints"][0]["owner"], "a", "{st}");
    assert_eq!(
        st["endpoints"][0]["epoch"].as_i64(),
        Some(epoch),
        "app-eu never moved: {st}"
    );
    let kinds = event_kinds(&lab);
    assert!(
        !kinds
            .iter()
            .any(|k| k.contains("failover") || k.contains("released")),
        "{kinds:?}"
    );

    // The business signal, through the real Prometheus: fine, then bad.
    let signal = |node: &str| -> serde_json::Value {
        let (_, body) = lab.http(node, "/health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        h["signals"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "app_p95")
            .cloned()
            .unwrap_or_default()
    };
    let wait_signal = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = signal("b");
            if s["status"] == want {
                return s;
            }
            assert!(Instant::now() < deadline, "app_p95 never {want}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let ok = wait_signal("ok");
    assert!(ok["detail"].as_str().unwrap().starts_with("0.1"), "{ok}");
    p95.store(900, Ordering::Relaxed);
    let bad = wait_signal("fail");
    assert!(bad["detail"].as_str().unwrap().starts_with("0.9"), "{bad}");
    let (_, body) = lab.http("b", "/health");
    assert!(
        body.contains("\"health\":\"degraded\""),
        "one business signal degrades, never fails: {body}"
    );
    assert!(lab.serves("b", "app-us"), "degraded moves nothing");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn isolated_region_fences_itself_before_the_peer_takes_over_and_stays_fenced_after() {
    let _t = turn();
    let major = version(1);
    let lab = Lab::start(major, "");
    let sampler = DualOwnerSampler::start(&lab);
    let cut = Instant::now();
    lab.isolate_a();
    let fenced = lab.wait_db_writable("a", false, Duration::from_secs(10));
    let taken = lab.wait_serving("b", "app-eu", Duration::from_secs(20)) + fenced;
    eprintln!(
        "PG{major}: a cut off etcd -> fenced after {fenced:?}, b serves app-eu after {taken:?}"
    );
    assert!(
        cut.elapsed() >= TTL - Duration::from_secs(1),
        "no takeover before the lease could expire"
    );
    let (_, body) = lab.http("a", "/writable");
    assert!(body.contains("\"writable\":false"), "{body}");
    lab.heal_a();
    // Back in touch, a finds app-eu with b and stays fenced until a switchover.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = lab.http("a", "/health");
        if body.contains("\"etcd_ok\":true")
            && body.contains("\"lease\":")
            && !body.contains("\"lease\":null")
        {
            break;
        }
        assert!(Instant::now() < deadline, "a never got a new lease: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!lab.db_writable("a"));
    assert!(!lab.serves("a", "app-eu"));
    assert_no_dual_owner(&lab, sampler);
}

#[test]
fn maintenance_fence_moves_the_endpoints_and_unfence_waits_for_a_decision() {
    let _t = turn();
    let major = version(0);
    let lab = Lab::start(major, "");
    let sampler = DualOwnerSampler::start(&lab);
    let out = pgmesh(
        &[
            "fence",
            "--node",
            "a",
            "--reason",
            "kernel upgrade",
            "--json",
        ],
        lab.cfg_path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !lab.db_writable("a"),
        "fenced at the database by the command itself"
    );
    lab.wait_serving("b", "app-eu", Duration::from_secs(15));
    let st = lab.status();
    assert_eq!(st["regions"][0]["maintenance"], true, "{st}");
    // Drained like a switchover.
    wait_events(&lab, &["a:switchover:app-eu"]);
    // Lifting maintenance does not lift the fence: a owns nothing.
    let out = pgmesh(&["unfence", "--node", "a"], lab.cfg_path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.status()["regions"][0]["maintenance"] != false {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!lab.db_writable("a"));
    let out = pgmesh(&["switchover", "app-eu", "--to", "a"], lab.cfg_path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.wait_db_writable("a", true, Duration::from_secs(10));
    // A switchover to a region that is not there is refused and changes nothing.
    let out = pgmesh(&["switchover", "app-eu", "--to", "zz"], lab.cfg_path());
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("known nodes"), "{}", text(&out));
    assert_no_dual_owner(&lab, sampler);
}

#[test]
fn auto_failback_returns_the_home_endpoint_once_the_region_caught_up() {
    let _t = turn();
    let major = version(1);
    let lab = Lab::start(
        major,
        "failback = \"auto\"\nfailback_after = \"2s\"\nfailback_max_lag = \"64kB\"",
    );
    let sampler = DualOwnerSampler::start(&lab);
    lab.a.stop_immediate().unwrap();
    lab.wait_serving("b", "app-eu", Duration::from_secs(20));
    // b takes writes for both endpoints meanwhile; a must receive them before it returns.
    lab.b
        .psql("INSERT INTO acked SELECT g, 'while a was down' FROM generate_series(1, 500) g")
        .unwrap();
    lab.a.start_again().unwrap();
    let back = lab.wait_serving("a", "app-eu", Duration::from_secs(60));
    eprintln!("PG{major}: a restarted -> serves app-eu again after {back:?} (auto failback)");
    wait_events(&lab, &["b:switchover:app-eu"]);
    assert_eq!(
        lab.a
            .psql("SELECT count(*) FROM acked WHERE payload = 'while a was down'")
            .unwrap(),
        "500"
    );
    assert_no_dual_owner(&lab, sampler);
}
