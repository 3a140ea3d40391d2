//! The control plane's test support itself, against the real programs: an etcd cluster
//! keeps quorum with one member down, loses it with two, recovers on restart, survives a
//! frozen member and vanishes on drop; Prometheus scrapes a target and answers queries.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pgmesh::testkit::{EtcdCluster, Prometheus};

/// Runs `etcdctl` (v3 API) against `endpoints` with short timeouts, so a request to a cluster
/// without quorum fails within seconds instead of hanging.
fn etcdctl(endpoints: &[String], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--dial-timeout=2s", "--command-timeout=2s"])
        .args(args)
        .output()
        .expect("run etcdctl (scripts/install-control.sh installs it)")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Retries `f` until it returns `Ok`, or panics after `timeout` with `what` and the last error.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn put(endpoint: &str, key: &str, value: &str) -> Result<(), String> {
    let o = etcdctl(&[endpoint.to_string()], &["put", key, value]);
    if o.status.success() {
        Ok(())
    } else {
        Err(text(&o))
    }
}

fn get(endpoint: &str, key: &str) -> Result<String, String> {
    let o = etcdctl(&[endpoint.to_string()], &["get", key, "--print-value-only"]);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(text(&o))
    }
}

fn all_healthy(c: &EtcdCluster) -> Result<(), String> {
    let o = etcdctl(&c.endpoints(), &["endpoint", "health"]);
    if o.status.success() {
        Ok(())
    } else {
        Err(text(&o))
    }
}

#[test]
fn etcd_cluster_keeps_quorum_loses_it_and_recovers() {
    let mut c = EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let eps = c.endpoints();
    assert_eq!(eps.len(), 3);
    assert_eq!(eps[1], c.endpoint(1));
    let mut distinct = eps.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{eps:?}");
    all_healthy(&c).unwrap_or_else(|e| panic!("fresh cluster healthy: {e}"));

    // A write through one member is readable through another.
    put(&eps[0], "k", "v1").unwrap();
    assert_eq!(get(&eps[2], "k").unwrap(), "v1");

    // One member down: two of three are a quorum (after an election if it led).
    c.kill_member(0).unwrap();
    wait_until("put with one member down", Duration::from_secs(15), || {
        put(&eps[1], "k", "v2")
    });
    assert_eq!(get(&eps[2], "k").unwrap(), "v2");

    // Two down: the survivor cannot commit anything.
    c.kill_member(1).unwrap();
    let lonely = put(&eps[2], "k", "v3");
    assert!(
        lonely.is_err(),
        "a put without quorum must fail; log of m2:\n{}",
        c.log(2)
    );

    // Back to two: writes work again, and the restarted member has the earlier ones.
    c.restart_member(1)
        .unwrap_or_else(|e| panic!("restart m1: {e}"));
    wait_until("put after restarting m1", Duration::from_secs(15), || {
        put(&eps[2], "k", "v4")
    });
    wait_until("m1 reads v4", Duration::from_secs(15), || {
        match get(&eps[1], "k")? {
            v if v == "v4" => Ok(()),
            v => Err(v),
        }
    });
    c.restart_member(0)
        .unwrap_or_else(|e| panic!("restart m0: {e}"));
    all_healthy(&c).unwrap_or_else(|e| panic!("all healthy after restarts: {e}"));
    assert!(c.log(0).contains("\"level\""), "zap JSON log kept");

    let dir = c.dir().to_path_buf();
    assert!(dir.exists());
    drop(c);
    assert!(!dir.exists(), "{} removed on drop", dir.display());
}

#[test]
fn etcd_paused_member_times_out_and_comes_back() {
    let c = EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let eps = c.endpoints();
    c.pause_member(2).unwrap();

    // The frozen member answers nothing; the other two still commit.
    let frozen = etcdctl(&[eps[2].clone()], &["endpoint", "health"]);
    assert!(!frozen.status.success(), "{}", text(&frozen));
    wait_until("put while m2 is frozen", Duration::from_secs(15), || {
        put(&eps[0], "p", "1")
    });

    c.resume_member(2).unwrap();
    wait_until(
        "m2 catches up after SIGCONT",
        Duration::from_secs(15),
        || match get(&eps[2], "p")? {
            v if v == "1" => Ok(()),
            v => Err(v),
        },
    );

    // Dropping a cluster with a frozen member still kills it and frees its port.
    c.pause_member(1).unwrap();
    let dir = c.dir().to_path_buf();
    let port: u16 = eps[1].rsplit(':').next().unwrap().parse().unwrap();
    drop(c);
    assert!(!dir.exists(), "{} removed on drop", dir.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "frozen member m1 still listens on {port} after drop"
    );
}

/// Serves `/metrics` with `demo_metric 42` on a free port from a background thread (it
/// outlives the test, which is fine: the process ends with the test binary).
fn serve_demo_metrics() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Read the request head fully before answering, so closing does not reset it.
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" || line == "\n" {
                    break;
                }
                line.clear();
            }
            let body = "# TYPE demo_metric gauge\ndemo_metric 42\n";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn prometheus_scrapes_a_target() {
    let target = serve_demo_metrics();
    let prom =
        Prometheus::start("demo", std::slice::from_ref(&target)).unwrap_or_else(|e| panic!("{e}"));
    assert!(prom.url().starts_with("http://127.0.0.1:"));
    prom.wait_target_up(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));

    let samples = prom.query("demo_metric").unwrap();
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].value, 42.0);
    assert_eq!(samples[0].labels["job"], "demo");
    assert_eq!(samples[0].labels["instance"], target);

    // A bad query is an error that carries Prometheus' reason.
    let err = prom.query("demo_metric{").unwrap_err().to_string();
    assert!(err.contains("parse error"), "{err}");

    let dir = prom.dir().to_path_buf();
    drop(prom);
    assert!(!dir.exists(), "{} removed on drop", dir.display());
}

#[test]
fn prometheus_reports_a_down_target() {
    // Nothing listens on a port we held and released: the scrape fails.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prom =
        Prometheus::start("gone", &[format!("127.0.0.1:{port}")]).unwrap_or_else(|e| panic!("{e}"));
    // Wait for the fact "scraped and found down" (discovery alone takes up to ~5 s).
    wait_until(
        "target scraped as down",
        Duration::from_secs(20),
        || match prom.query(r#"up{job="gone"} == 0"#) {
            Ok(v) if v.len() == 1 => Ok(()),
            Ok(v) => Err(format!("{v:?}")),
            Err(e) => Err(e.to_string()),
        },
    );
    let err = prom
        .wait_target_up(Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert!(err.contains("connection refused"), "{err}");
}
