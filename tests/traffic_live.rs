//! The agents moving real traffic, end to end: a two-region lab (etcd ×3, two primaries,
//! sidecars, agents) with a real pgbouncer the agents drive (PAUSE, repoint, RESUME), a
//! real HAProxy checking the agents' `/owner/ENDPOINT`, two real Knot DNS servers updated
//! by RFC 2136 with TSIG, a command hook and a real Alertmanager.
//!
//! Two acknowledged-write loggers write all the time, one through pgbouncer and one
//! through HAProxy; planned switchovers must lose none of their acknowledged writes, and
//! the pgbouncer client must see no error at all. `PGMESH_TRAFFIC_TRIALS` sets the number
//! of switchovers (default 4; the RELIABILITY.md runs use 20+), `PGMESH_TRAFFIC_OUT` a
//! file that gets one JSON line per switchover.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pgmesh::testkit::{
    versions_under_test, AckWriter, Alertmanager, Cluster, Haproxy, HaproxyServer, KnotDns,
    Pgbouncer, KNOT_KEY_NAME,
};
use pgmesh::traffic::dns::{answer, RecordSet};
use support::cli::{pgmesh, text};
use support::control::{tail, wait_acked, Lab};
use support::live::turn;

const ZONE: &str = "db.test.";
const A_ADDR: &str = "127.0.0.11";
const B_ADDR: &str = "127.0.0.12";

fn version(i: usize) -> u32 {
    let v = versions_under_test();
    v[i % v.len()]
}

fn target(c: &Cluster) -> String {
    format!("host=127.0.0.1 port={} dbname=postgres", c.port())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A writer that always goes to `dsn` (a pgbouncer or an HAProxy port).
fn writer_via(dsn: String, first_id: i64) -> AckWriter {
    AckWriter::start(
        "acked",
        first_id,
        Duration::from_millis(2),
        Box::new(move || Some(dsn.clone())),
    )
}

/// The PostgreSQL port a new connection through `dsn` reaches.
fn reached_port(dsn: &str) -> Option<u16> {
    runtime().block_on(async {
        let (c, conn) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_postgres::connect(dsn, tokio_postgres::NoTls),
        )
        .await
        .ok()?
        .ok()?;
        tokio::spawn(conn);
        let rows = c.simple_query("SELECT inet_server_port()").await.ok()?;
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
    })
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

fn wall_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn dns_answers(servers: &[&KnotDns], want: &RecordSet) -> bool {
    runtime().block_on(async {
        for s in servers {
            match answer(s.addr(), &format!("app-eu.{ZONE}"), Duration::from_secs(1)).await {
                Ok(Some(got)) if got == *want => {}
                _ => return false,
            }
        }
        true
    })
}

fn record(node: &str) -> RecordSet {
    RecordSet::Addresses(vec![if node == "a" { A_ADDR } else { B_ADDR }
        .parse()
        .unwrap()])
}

/// An HAProxy in front of both primaries for app-eu, checking both agents, and the DSN
/// of a client connecting through it (keep the first value: dropping it stops HAProxy).
fn haproxy_for_app_eu(lab: &Lab) -> (Haproxy, String) {
    let servers = ["a", "b"]
        .iter()
        .map(|n| HaproxyServer {
            name: (*n).into(),
            pg_port: lab.cluster(n).port(),
            agent_port: lab.port(n),
        })
        .collect();
    let haproxy =
        Haproxy::start(&BTreeMap::from([("app-eu".to_string(), servers)])).expect("haproxy");
    let dsn = format!(
        "host=127.0.0.1 port={} user=app dbname=postgres connect_timeout=2",
        haproxy.port_of("app-eu").unwrap()
    );
    (haproxy, dsn)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[test]
fn switchovers_through_pgbouncer_haproxy_and_dns_lose_nothing() {
    let _t = turn();
    let major = version(0);
    let trials: usize = std::env::var("PGMESH_TRAFFIC_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let secret = vec![7u8; 32];
    let dns = [
        KnotDns::start_with_key(ZONE, KNOT_KEY_NAME, &secret).expect("knot 1"),
        KnotDns::start_with_key(ZONE, KNOT_KEY_NAME, &secret).expect("knot 2"),
    ];
    let hooks = tempfile::tempdir().unwrap();
    let hook_file = hooks.path().join("events.jsonl");
    let mut bouncer = None;
    let lab = Lab::start_with(major, |a, b| {
        let dbs = BTreeMap::from([("app-eu".to_string(), target(a))]);
        let p = Pgbouncer::start(&dbs).expect("pgbouncer");
        let text = format!(
            r#"
[[traffic.pgbouncer]]
name = "bouncer"
node = "a"
admin = "{admin}"
databases_file = "{file}"
endpoints = ["app-eu"]
pause_timeout = "5s"
targets.a = "{ta}"
targets.b = "{tb}"
[traffic.dns]
zone = "{ZONE}"
servers = ["{d1}", "{d2}"]
ttl = "5s"
tsig_key = "{KNOT_KEY_NAME}"
tsig_secret = "{key}"
records.a = ["{A_ADDR}"]
records.b = ["{B_ADDR}"]
[[traffic.hook]]
name = "log"
command = ["sh", "-c", "cat >> {hook}; echo >> {hook}"]
"#,
            admin = p.admin_dsn(),
            file = p.databases_file().display(),
            ta = target(a),
            tb = target(b),
            d1 = dns[0].addr(),
            d2 = dns[1].addr(),
            key = base64::engine::general_purpose::STANDARD.encode(&secret),
            hook = hook_file.display(),
        );
        bouncer = Some(p);
        text
    });
    let bouncer = bouncer.unwrap();
    let (_haproxy, via_haproxy) = haproxy_for_app_eu(&lab);
    let via_bouncer = bouncer.dsn("app-eu", "app");

    // Before any move: DNS answers a's address on both servers, both layers reach a.
    wait_for("DNS answers a", Duration::from_secs(20), || {
        dns_answers(&[&dns[0], &dns[1]], &record("a"))
    });
    wait_for("HAProxy reaches a", Duration::from_secs(20), || {
        reached_port(&via_haproxy) == Some(lab.a.port())
    });
    assert_eq!(reached_port(&via_bouncer), Some(lab.a.port()));

    let w_bouncer = writer_via(via_bouncer.clone(), 1);
    let w_haproxy = writer_via(via_haproxy.clone(), 100_000_000);
    wait_acked(&w_bouncer, 100, Duration::from_secs(20));
    wait_acked(&w_haproxy, 100, Duration::from_secs(20));

    let mut lines = Vec::new();
    let (mut pauses_b, mut pauses_h, mut dns_lags) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..trials {
        let to = if trial % 2 == 0 { "b" } else { "a" };
        let to_port = if to == "a" {
            lab.a.port()
        } else {
            lab.b.port()
        };
        let errors_before = (w_bouncer.report().failures, w_haproxy.report().failures);
        let started = Instant::now();
        let out = pgmesh(
            &["switchover", "app-eu", "--to", to, "--json"],
            lab.cfg_path(),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "switchover {trial} to {to}: {}\n--- agent a\n{}\n--- agent b\n{}",
            text(&out),
            tail(&lab.agent_log("a")),
            tail(&lab.agent_log("b"))
        );
        let moved_at = Instant::now();
        let dns_after = wait_for("DNS answers the new owner", Duration::from_secs(20), || {
            dns_answers(&[&dns[0], &dns[1]], &record(to))
        });
        let dns_at_ms = wall_ms();
        wait_for(
            "HAProxy reaches the new owner",
            Duration::from_secs(20),
            || reached_port(&via_haproxy) == Some(to_port),
        );
        wait_for(
            "pgbouncer reaches the new owner",
            Duration::from_secs(20),
            || reached_port(&via_bouncer) == Some(to_port),
        );
        let (nb, nh) = (
            w_bouncer.report().acked.len(),
            w_haproxy.report().acked.len(),
        );
        wait_acked(&w_bouncer, nb + 50, Duration::from_secs(20));
        wait_acked(&w_haproxy, nh + 50, Duration::from_secs(20));
        let ended = Instant::now();
        let (rb, rh) = (w_bouncer.report(), w_haproxy.report());
        // The decision: the switchover event the old owner recorded when the key moved.
        let decided_ms = lab
            .events()
            .iter()
            .filter(|e| e["kind"] == "switchover" && e["to"] == to)
            .filter_map(|e| e["at_ms"].as_i64())
            .max()
            .unwrap_or(dns_at_ms);
        let dns_after_decision =
            Duration::from_millis(u64::try_from(dns_at_ms - decided_ms).unwrap_or(0));
        if std::env::var("PGMESH_TRAFFIC_DEBUG").is_ok() {
            for n in ["a", "b"] {
                for l in lab
                    .agent_log(n)
                    .lines()
                    .filter(|l| {
                        l.contains("dns")
                            || l.contains("pgbouncer")
                            || l.contains("switchover")
                            || l.contains("paused")
                    })
                    .rev()
                    .take(6)
                {
                    eprintln!("  agent {n}: {l}");
                }
            }
        }
        let pause_b = rb.max_gap_within(started, ended);
        let pause_h = rh.max_gap_within(started, ended);
        if pause_b > Duration::from_secs(1) {
            for n in ["a", "b"] {
                let _ =
                    std::fs::write(format!("/tmp/slow-traffic-agent-{n}.log"), lab.agent_log(n));
            }
            let _ = std::fs::write("/tmp/slow-traffic-pgbouncer.log", bouncer.log());
            eprintln!("slow pause through pgbouncer: logs in /tmp/slow-traffic-*.log");
        }
        let errors = (rb.failures - errors_before.0, rh.failures - errors_before.1);
        eprintln!(
            "PG{major} switchover {trial} -> {to}: command {:?}; pause via pgbouncer {pause_b:?} ({} errors), via HAProxy {pause_h:?} ({} errors); DNS on both servers {dns_after_decision:?} after the decision ({dns_after:?} after the command returned)",
            moved_at - started,
            errors.0,
            errors.1
        );
        lines.push(serde_json::json!({
            "kind": "traffic_switchover", "pg": major, "trial": trial, "to": to,
            "command_ms": (moved_at - started).as_millis(),
            "pause_pgbouncer_ms": pause_b.as_millis(), "errors_pgbouncer": errors.0,
            "pause_haproxy_ms": pause_h.as_millis(), "errors_haproxy": errors.1,
            "dns_after_command_ms": dns_after.as_millis(),
            "dns_after_decision_ms": dns_after_decision.as_millis(),
        }));
        pauses_b.push(pause_b);
        pauses_h.push(pause_h);
        dns_lags.push(dns_after_decision);
    }
    let rb = w_bouncer.stop();
    let rh = w_haproxy.stop();
    support::live::wait_converged(&lab.a, &lab.b, &["acked"], Duration::from_secs(60));
    let lost_b = lab.lost_writes("a", &rb);
    let lost_h = lab.lost_writes("a", &rh);
    for v in [&mut pauses_b, &mut pauses_h, &mut dns_lags] {
        v.sort();
    }
    eprintln!(
        "PG{major}: {trials} switchovers; pgbouncer: {} acked, {} lost, {} errors, pause p50 {:?} max {:?}; HAProxy: {} acked, {} lost, {} errors, pause p50 {:?} max {:?}; DNS after the decision p50 {:?} max {:?}",
        rb.acked.len(),
        lost_b.len(),
        rb.failures,
        percentile(&pauses_b, 0.5),
        percentile(&pauses_b, 1.0),
        rh.acked.len(),
        lost_h.len(),
        rh.failures,
        percentile(&pauses_h, 0.5),
        percentile(&pauses_h, 1.0),
        percentile(&dns_lags, 0.5),
        percentile(&dns_lags, 1.0),
    );
    if let Ok(path) = std::env::var("PGMESH_TRAFFIC_OUT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for l in &lines {
            writeln!(f, "{l}").unwrap();
        }
    }
    assert!(lost_b.is_empty(), "lost through pgbouncer: {lost_b:?}");
    assert!(lost_h.is_empty(), "lost through HAProxy: {lost_h:?}");
    assert_eq!(
        rb.failures,
        0,
        "a planned switchover through pgbouncer is a pause, not an error: {:?}\n--- pgbouncer\n{}",
        rb.errors,
        tail(&bouncer.log())
    );

    // `pgmesh status` shows what the traffic layers show, per region.
    wait_for(
        "status shows the traffic layers",
        Duration::from_secs(10),
        || {
            let out = pgmesh(&["status"], lab.cfg_path());
            let t = text(&out);
            t.contains("traffic: pgbouncer bouncer: app-eu ->") && t.contains("confirmed on 2/2")
        },
    );

    // The hook heard every move, with the old and new owner.
    wait_for("hooks delivered", Duration::from_secs(10), || {
        std::fs::read_to_string(&hook_file)
            .unwrap_or_default()
            .matches(r#""kind":"switchover""#)
            .count()
            >= trials
    });
    let hooked = std::fs::read_to_string(&hook_file).unwrap();
    let first = hooked
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "switchover")
        .unwrap();
    assert_eq!(first["event"], "owner_changed", "{first}");
    assert_eq!(first["endpoint"], "app-eu", "{first}");
    assert_eq!(first["old_owner"], "a", "{first}");
    assert_eq!(first["new_owner"], "b", "{first}");
}

#[test]
fn failover_through_pgbouncer_reconnects_and_alertmanager_hears_the_failed_region() {
    let _t = turn();
    let major = version(1);
    let am = Alertmanager::start().expect("alertmanager");
    let mut bouncer = None;
    let lab = Lab::start_with(major, |a, b| {
        let dbs = BTreeMap::from([("app-eu".to_string(), target(a))]);
        let p = Pgbouncer::start(&dbs).expect("pgbouncer");
        // This pgbouncer sits in region b: b's agent keeps it pointed at the owner.
        let text = format!(
            r#"
[[traffic.pgbouncer]]
name = "bouncer-b"
node = "b"
admin = "{admin}"
databases_file = "{file}"
endpoints = ["app-eu"]
targets.a = "{ta}"
targets.b = "{tb}"
[traffic.alertmanager]
urls = ["{am}"]
labels = {{ env = "test" }}
resend = "2s"
"#,
            admin = p.admin_dsn(),
            file = p.databases_file().display(),
            ta = target(a),
            tb = target(b),
            am = am.url(),
        );
        bouncer = Some(p);
        text
    });
    let bouncer = bouncer.unwrap();
    let via_bouncer = bouncer.dsn("app-eu", "app");
    let (_haproxy, via_haproxy) = haproxy_for_app_eu(&lab);
    wait_for("HAProxy reaches a", Duration::from_secs(20), || {
        reached_port(&via_haproxy) == Some(lab.a.port())
    });
    let w = writer_via(via_bouncer.clone(), 1);
    wait_acked(&w, 100, Duration::from_secs(20));

    let killed = Instant::now();
    lab.a.stop_immediate().unwrap();
    lab.wait_serving("b", "app-eu", Duration::from_secs(20));
    wait_for(
        "HAProxy reaches b after the failover",
        Duration::from_secs(20),
        || reached_port(&via_haproxy) == Some(lab.b.port()),
    );
    let haproxy_after = killed.elapsed();
    let n = w.report().acked.len();
    wait_acked(&w, n + 100, Duration::from_secs(20));
    let back = killed.elapsed();
    assert_eq!(reached_port(&via_bouncer), Some(lab.b.port()));
    let alerts = am
        .wait_alerts("region a failed", Duration::from_secs(20), |alerts| {
            alerts
                .iter()
                .any(|a| a.label("alertname") == "PgmeshRegionFailed" && a.label("node") == "a")
        })
        .expect("alert");
    let failed = alerts
        .iter()
        .find(|a| a.label("alertname") == "PgmeshRegionFailed")
        .unwrap();
    assert_eq!(failed.label("env"), "test");
    assert!(!failed.label("cluster").is_empty(), "{failed:?}");
    assert!(
        alerts
            .iter()
            .any(|a| a.label("alertname") == "PgmeshSignalFailing"
                && a.label("signal") == "postgres"
                && a.label("node") == "a"),
        "{alerts:#?}"
    );

    // a's primary returns: its alerts resolve (it stays fenced: b owns app-eu).
    let resolved_before = am.received().unwrap().resolved;
    lab.a.start_again().unwrap();
    am.wait_alerts(
        "region a's alerts resolved",
        Duration::from_secs(30),
        |alerts| {
            !alerts
                .iter()
                .any(|a| a.label("node") == "a" && a.label("alertname") == "PgmeshRegionFailed")
        },
    )
    .expect("resolved");
    assert!(am.received().unwrap().resolved > resolved_before);
    let report = w.stop();
    eprintln!(
        "PG{major}: primary a killed -> new connections through HAProxy reach b after {haproxy_after:?}; writes through pgbouncer acknowledged again after {back:?}; {} failed statements in between: {:?}",
        report.failures,
        report.errors.iter().take(3).collect::<Vec<_>>()
    );
    let mut lines = report.acked.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    lines.dedup();
    assert_eq!(lines.len(), report.acked.len(), "no id acknowledged twice");
}
