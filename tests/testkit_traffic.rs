//! The traffic layers the agents drive, against the real programs (pgbouncer 1.18,
//! HAProxy 2.6) and real PostgreSQL clusters, without the agents: what
//! `pgmesh::traffic::pgbouncer` does to pgbouncer's admin console, what HAProxy does when
//! an `/owner/ENDPOINT` check flips, and that the examples users copy are accepted.
//!
//! Timings (pause per switch, HAProxy's detection and session shutdown) are printed, not
//! asserted: a busy 2-core machine stretches them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use pgmesh::testkit::{
    haproxy_config_with, versions_under_test, Cluster, Haproxy, HaproxyServer, HealthChecks,
    Pgbouncer, PgbouncerPaths,
};
use pgmesh::traffic::pgbouncer::{
    parse_databases_file, render_databases_file, switch, Admin, PgbouncerConfig, PgbouncerError,
};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Tests with clusters take turns: two clusters at a time on the shared machine.
static HEAVY: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn major() -> u32 {
    versions_under_test()[0]
}

/// The `[databases]` connection part for a cluster.
fn target(c: &Cluster) -> String {
    format!("host=127.0.0.1 port={} dbname=postgres", c.port())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(dsn: &str) -> Result<Client, String> {
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(dsn, NoTls))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

/// The first column of the first row of a simple query.
async fn one(client: &Client, sql: &str) -> Result<String, String> {
    let rows = tokio::time::timeout(Duration::from_secs(10), client.simple_query(sql))
        .await
        .map_err(|_| format!("{sql}: no answer within 10 s"))?
        .map_err(|e| format!("{sql}: {e}"))?;
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

/// Polls `probe` until it returns `Some`, at most `timeout`; panics saying `what`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------
// pgbouncer

const ACKED: &str =
    "CREATE TABLE acked (id bigint PRIMARY KEY, txn bigint NOT NULL, port int NOT NULL)";

/// One acknowledged transaction of the writer.
#[derive(Clone, Debug)]
struct Ack {
    ids: Vec<i64>,
    /// The server port its first statement reported (`inet_server_port()`).
    port: u16,
    began: Instant,
    acked: Instant,
}

#[derive(Default)]
struct Seen {
    acks: Vec<Ack>,
    errors: Vec<String>,
}

/// Inserts through `dsn` until `stop`, in transactions of 1 to 3 statements sent one by one
/// (BEGIN, INSERT..., COMMIT), a few ms apart; ids from `first_id` up.
async fn write_loop(dsn: String, first_id: i64, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut id = first_id;
    let mut client: Option<Client> = None;
    let mut txn: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(Client::is_closed) {
            match connect(&dsn).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    seen.lock().unwrap().errors.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        txn += 1;
        let statements = 1 + (txn % 3) as usize;
        let began = Instant::now();
        let mut ids = Vec::new();
        let result: Result<u16, String> = async {
            one(c, "BEGIN; SELECT 1").await?;
            let mut port = 0;
            for _ in 0..statements {
                let p = one(
                    c,
                    &format!(
                        "INSERT INTO acked VALUES ({id}, {txn}, inet_server_port()) RETURNING port"
                    ),
                )
                .await?;
                ids.push(id);
                id += 1;
                port = p.parse().map_err(|e| format!("port {p:?}: {e}"))?;
            }
            tokio::time::timeout(Duration::from_secs(10), c.simple_query("COMMIT"))
                .await
                .map_err(|_| "COMMIT: no answer".to_string())?
                .map_err(|e| format!("COMMIT: {e}"))?;
            Ok(port)
        }
        .await;
        match result {
            Ok(port) => seen.lock().unwrap().acks.push(Ack {
                ids,
                port,
                began,
                acked: Instant::now(),
            }),
            Err(e) => {
                seen.lock().unwrap().errors.push(e);
                client = None;
                id += 3;
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

fn ids_on(c: &Cluster) -> BTreeMap<i64, u16> {
    c.psql("SELECT id, port FROM acked ORDER BY id")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(i, p)| (i.parse().unwrap(), p.parse().unwrap()))
        .collect()
}

#[test]
fn switching_pgbouncer_between_primaries_pauses_writers_without_errors_or_loss() {
    let _t = turn();
    let major = major();
    let c1 = Cluster::start(major).expect("cluster 1");
    let c2 = Cluster::start(major).expect("cluster 2");
    for c in [&c1, &c2] {
        c.psql(ACKED).unwrap();
    }
    let bouncer =
        Pgbouncer::start(&BTreeMap::from([("app".to_string(), target(&c1))])).expect("pgbouncer");
    let cfg = PgbouncerConfig {
        name: "bouncer-a".into(),
        node: "a".into(),
        admin: bouncer.admin_dsn(),
        databases_file: bouncer.databases_file(),
        endpoints: vec!["app".into()],
        targets: BTreeMap::from([("a".into(), target(&c1)), ("b".into(), target(&c2))]),
        pause_timeout: Duration::from_secs(10),
    };
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            rt.spawn(write_loop(
                bouncer.dsn("app", "postgres"),
                1 + w * 1_000_000_000,
                stop.clone(),
                seen.clone(),
            ))
        })
        .collect();
    let acks = |seen: &Mutex<Seen>| seen.lock().unwrap().acks.len();

    let mut pauses = Vec::new();
    let mut switches: Vec<(Instant, u16)> = vec![(Instant::now(), c1.port())];
    for i in 0..10 {
        let (to, to_port) = if i % 2 == 0 {
            (target(&c2), c2.port())
        } else {
            (target(&c1), c1.port())
        };
        let before = acks(&seen);
        rt.block_on(wait_for(
            "the writers commit through pgbouncer",
            Duration::from_secs(20),
            || async { (acks(&seen) >= before + 20).then_some(()) },
        ));
        let paused = rt
            .block_on(switch(&cfg, "app", &to))
            .unwrap_or_else(|e| panic!("switch {i}: {e}\n{}", bouncer.log()));
        let done = Instant::now();
        switches.push((done, to_port));
        pauses.push(paused);
        // A transaction begun after the switch returned lands on the new primary.
        let landed = rt.block_on(wait_for(
            "a transaction begun after the switch",
            Duration::from_secs(20),
            || async {
                let s = seen.lock().unwrap();
                s.acks.iter().find(|a| a.began > done).map(|a| a.port)
            },
        ));
        assert_eq!(
            landed, to_port,
            "switch {i}: a new transaction went elsewhere"
        );
        let s = seen.lock().unwrap();
        let gap = s
            .acks
            .windows(2)
            .filter(|w| w[1].acked > done - paused && w[0].acked < done + paused)
            .map(|w| w[1].acked.saturating_duration_since(w[0].acked))
            .max()
            .unwrap_or_default();
        eprintln!(
            "PG{major} switch {i} to port {to_port}: paused {paused:?} (PAUSE to RESUME), largest gap between commits around it {gap:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.errors.is_empty(),
        "clients through pgbouncer saw errors: {:?}",
        seen.errors
    );

    // Every acknowledged id exactly once, on the primary its transaction reported; each
    // transaction begun after a switch returned went to that switch's target.
    let (on1, on2) = (ids_on(&c1), ids_on(&c2));
    let both: BTreeSet<_> = on1.keys().filter(|k| on2.contains_key(k)).collect();
    assert!(both.is_empty(), "ids on both primaries: {both:?}");
    let mut acked = 0;
    for a in &seen.acks {
        let expected = switches
            .iter()
            .rev()
            .find(|(at, _)| *at < a.began)
            .map(|(_, p)| *p);
        if switches
            .iter()
            .all(|(at, _)| *at < a.began || *at > a.acked)
        {
            assert_eq!(Some(a.port), expected, "transaction {a:?}");
        }
        for id in &a.ids {
            let port = on1.get(id).or_else(|| on2.get(id));
            assert_eq!(port, Some(&a.port), "acknowledged id {id} of {a:?}");
            acked += 1;
        }
    }
    assert_eq!(
        acked,
        on1.len() + on2.len(),
        "rows nobody acknowledged (writers stopped cleanly, so there should be none)"
    );

    pauses.sort();
    eprintln!(
        "PG{major} pgbouncer switch: {} switches, {acked} rows in {} transactions, 0 errors; pause p50 {:?}, max {:?}",
        pauses.len(),
        seen.acks.len(),
        percentile(&pauses, 0.5),
        pauses[pauses.len() - 1]
    );
}

#[test]
fn pause_waits_for_open_transactions_and_a_timeout_leaves_the_database_resumed() {
    let _t = turn();
    let c1 = Cluster::start(major()).expect("cluster");
    c1.psql(ACKED).unwrap();
    let bouncer =
        Pgbouncer::start(&BTreeMap::from([("app".to_string(), target(&c1))])).expect("pgbouncer");
    let rt = runtime();
    rt.block_on(async {
        let admin_dsn = bouncer.admin_dsn();
        let admin = Admin::connect(&admin_dsn, Duration::from_secs(5))
            .await
            .unwrap();
        let paused = |rows: Vec<pgmesh::traffic::pgbouncer::DatabaseRow>| {
            rows.iter().find(|r| r.name == "app").map(|r| r.paused)
        };

        // Idempotent both ways.
        admin.pause("app", Duration::from_secs(5)).await.unwrap();
        admin.pause("app", Duration::from_secs(5)).await.unwrap();
        assert_eq!(paused(admin.databases().await.unwrap()), Some(true));
        admin.resume("app").await.unwrap();
        admin.resume("app").await.unwrap();
        assert_eq!(paused(admin.databases().await.unwrap()), Some(false));
        let e = admin
            .pause("nosuch", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no such database: nosuch"), "{e}");

        // PAUSE waits for a transaction that is open, and holds new ones.
        let dsn = bouncer.dsn("app", "postgres");
        let holder = connect(&dsn).await.unwrap();
        one(&holder, "BEGIN; SELECT 1").await.unwrap();
        let pid = one(&holder, "SELECT pg_backend_pid()").await.unwrap();
        let pausing = {
            let admin_dsn = admin_dsn.clone();
            tokio::spawn(async move {
                let a = Admin::connect(&admin_dsn, Duration::from_secs(5)).await?;
                a.pause("app", Duration::from_secs(20)).await?;
                Ok::<_, PgbouncerError>(Instant::now())
            })
        };
        wait_for(
            "pgbouncer shows app paused",
            Duration::from_secs(10),
            || async { (paused(admin.databases().await.unwrap()) == Some(true)).then_some(()) },
        )
        .await;
        let running = admin.running_transactions("app").await.unwrap();
        assert!(
            running.iter().any(|r| r.backend_pid == pid),
            "the open transaction (pid {pid}) among {running:?}"
        );
        let newcomer = connect(&dsn).await.unwrap();
        let waiting =
            tokio::spawn(async move { one(&newcomer, "SELECT inet_server_port()").await });
        wait_for(
            "a new query waits in pgbouncer",
            Duration::from_secs(10),
            || async {
                let pools = admin_rows(&admin_dsn, "SHOW POOLS").await;
                pools
                    .iter()
                    .any(|p| p["database"] == "app" && p["cl_waiting"] != "0")
                    .then_some(())
            },
        )
        .await;
        assert!(
            !pausing.is_finished(),
            "PAUSE returned while a transaction was open"
        );
        one(&holder, "INSERT INTO acked VALUES (1, 1, 1) RETURNING id")
            .await
            .unwrap();
        let commit = Instant::now();
        holder.simple_query("COMMIT").await.unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(10), pausing)
            .await
            .expect("PAUSE answers once the transaction ended")
            .unwrap()
            .unwrap();
        eprintln!(
            "PAUSE answered {:?} after the open transaction's COMMIT was sent",
            answered.saturating_duration_since(commit)
        );
        assert!(
            !waiting.is_finished(),
            "a query ran while the database was paused"
        );
        admin.resume("app").await.unwrap();
        let port = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the held query runs after RESUME")
            .unwrap()
            .unwrap();
        assert_eq!(port, c1.port().to_string());

        // A transaction that outlives pause_timeout: a clear error, and nobody left hanging.
        one(&holder, "BEGIN; SELECT 1").await.unwrap();
        let pid = one(&holder, "SELECT pg_backend_pid()").await.unwrap();
        let short = Admin::connect(&admin_dsn, Duration::from_secs(5))
            .await
            .unwrap();
        let started = Instant::now();
        let err = short
            .pause("app", Duration::from_millis(300))
            .await
            .unwrap_err();
        eprintln!(
            "pause with a 300 ms timeout failed after {:?}: {err}",
            started.elapsed()
        );
        match &err {
            PgbouncerError::PauseTimedOut {
                running, resumed, ..
            } => {
                assert!(
                    running
                        .iter()
                        .any(|r| r.contains(&format!("backend pid {pid} "))),
                    "{err}"
                );
                assert_eq!(resumed, "resumed it again", "{err}");
            }
            other => panic!("expected PauseTimedOut, got {other}"),
        }
        assert!(matches!(
            short.databases().await,
            Err(PgbouncerError::Abandoned)
        ));
        assert_eq!(paused(admin.databases().await.unwrap()), Some(false));
        let other = connect(&dsn).await.unwrap();
        assert_eq!(
            one(&other, "SELECT inet_server_port()").await.unwrap(),
            c1.port().to_string(),
            "a new client is not held"
        );
        // The long transaction itself was never disturbed.
        one(&holder, "INSERT INTO acked VALUES (2, 2, 2) RETURNING id")
            .await
            .unwrap();
        holder.simple_query("COMMIT").await.unwrap();
    });
    assert_eq!(c1.psql("SELECT count(*) FROM acked").unwrap(), "2");
}

#[test]
fn a_switch_that_pgbouncer_does_not_take_fails_with_the_fix_and_resumes() {
    // An ini without the `%include`: the agent's file changes, pgbouncer does not follow.
    let dbs = BTreeMap::from([(
        "app".to_string(),
        "host=127.0.0.1 port=1 dbname=postgres".to_string(),
    )]);
    let bouncer = Pgbouncer::start_with_ini(&dbs, |p| {
        format!(
            "[databases]\napp = host=127.0.0.1 port=1 dbname=postgres\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir =\nauth_type = trust\n\
             auth_file = {}\nadmin_users = pgmesh\npool_mode = transaction\n",
            p.port,
            p.auth_file.display()
        )
    })
    .expect("pgbouncer");
    let cfg = PgbouncerConfig {
        name: "bouncer-a".into(),
        node: "a".into(),
        admin: bouncer.admin_dsn(),
        databases_file: bouncer.databases_file(),
        endpoints: vec![],
        targets: BTreeMap::new(),
        pause_timeout: Duration::from_secs(5),
    };
    let rt = runtime();
    rt.block_on(async {
        let err = switch(&cfg, "app", "host=127.0.0.1 port=2 dbname=postgres")
            .await
            .unwrap_err();
        eprintln!("switch without the include: {err}");
        assert!(matches!(err, PgbouncerError::NotRepointed { .. }), "{err}");
        assert!(err.needs_operator());
        let msg = err.to_string();
        assert!(
            msg.contains("127.0.0.1:1 instead of 127.0.0.1:2")
                && msg.contains(&format!("%include {}", bouncer.databases_file().display())),
            "{msg}"
        );
        let admin = Admin::connect(&bouncer.admin_dsn(), Duration::from_secs(5))
            .await
            .unwrap();
        let app = admin
            .databases()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.name == "app")
            .unwrap();
        assert!(!app.paused, "left paused: {app:?}");
    });
}

/// Rows of an admin console `SHOW`, by column name.
async fn admin_rows(dsn: &str, sql: &str) -> Vec<BTreeMap<String, String>> {
    let c = connect(dsn).await.unwrap();
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// HAProxy

/// Which server's agent says it owns "app": 0 = a, 1 = b.
#[derive(Clone)]
struct FakeAgent {
    me: u8,
    owner: Arc<AtomicU8>,
}

async fn owner(State(agent): State<FakeAgent>, UrlPath(endpoint): UrlPath<String>) -> StatusCode {
    if endpoint == "app" && agent.owner.load(Ordering::SeqCst) == agent.me {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// An agent's `/owner/{endpoint}` on a free port.
async fn fake_agent(me: u8, owner_flag: Arc<AtomicU8>) -> u16 {
    let app = Router::new()
        .route("/owner/{endpoint}", get(owner))
        .with_state(FakeAgent {
            me,
            owner: owner_flag,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[test]
fn haproxy_follows_the_owner_check_and_closes_the_old_owners_sessions() {
    let _t = turn();
    let major = major();
    let c1 = Cluster::start(major).expect("cluster 1");
    let c2 = Cluster::start(major).expect("cluster 2");
    let rt = runtime();
    let owner_flag = Arc::new(AtomicU8::new(0));
    let (agent_a, agent_b) = rt.block_on(async {
        (
            fake_agent(0, owner_flag.clone()).await,
            fake_agent(1, owner_flag.clone()).await,
        )
    });
    let endpoints = BTreeMap::from([(
        "app".to_string(),
        vec![
            HaproxyServer {
                name: "a".into(),
                pg_port: c1.port(),
                agent_port: agent_a,
            },
            HaproxyServer {
                name: "b".into(),
                pg_port: c2.port(),
                agent_port: agent_b,
            },
        ],
    )]);
    let checks = HealthChecks::EXAMPLE;
    let haproxy = Haproxy::start_config(&["app".to_string()], |ports, stats| {
        haproxy_config_with(&endpoints, ports, stats, checks)
    })
    .expect("haproxy");
    // HAProxy starts with both servers UP until b's first checks fail.
    haproxy
        .wait_state("app", "b", "DOWN", Duration::from_secs(10))
        .unwrap();
    haproxy
        .wait_state("app", "a", "UP", Duration::from_secs(10))
        .unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
        haproxy.port_of("app").unwrap()
    );
    let reached = |dsn: String| async move {
        let c = connect(&dsn).await.ok()?;
        one(&c, "SELECT inet_server_port()")
            .await
            .ok()?
            .parse::<u16>()
            .ok()
    };

    let old = rt.block_on(async {
        let old = connect(&dsn).await.unwrap();
        assert_eq!(
            one(&old, "SELECT inet_server_port()").await.unwrap(),
            c1.port().to_string()
        );
        old
    });

    let flipped = Instant::now();
    owner_flag.store(1, Ordering::SeqCst);
    let (mut states_at, mut new_at, mut old_closed_at) = (None, None, None);
    let deadline = flipped + Duration::from_secs(20);
    while states_at.is_none() || new_at.is_none() || old_closed_at.is_none() {
        assert!(
            Instant::now() < deadline,
            "after the flip: states {:?} at {states_at:?}, new connection on b at {new_at:?}, old session closed at {old_closed_at:?}\n{}",
            haproxy.server_states(),
            haproxy.log()
        );
        if states_at.is_none() {
            let s = haproxy.server_states().unwrap();
            let st = |srv: &str| s.get(&("app".to_string(), srv.to_string())).cloned();
            if st("a").as_deref() == Some("DOWN") && st("b").as_deref() == Some("UP") {
                states_at = Some(flipped.elapsed());
            }
        }
        if old_closed_at.is_none() && old.is_closed() {
            old_closed_at = Some(flipped.elapsed());
        }
        if new_at.is_none() && rt.block_on(reached(dsn.clone())) == Some(c2.port()) {
            new_at = Some(flipped.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client sees its session closed: its next query fails without a server error.
    let err = rt
        .block_on(old.simple_query("SELECT 1"))
        .expect_err("the old session was closed");
    assert!(err.as_db_error().is_none(), "{err}");
    eprintln!(
        "PG{major} HAProxy (inter {:?} fall {} rise {}): a DOWN and b UP {:?} after the flip, new connections reach b after {:?}, the old session to a closed after {:?} (client sees: {err})",
        checks.inter,
        checks.fall,
        checks.rise,
        states_at.unwrap(),
        new_at.unwrap(),
        old_closed_at.unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Examples

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn the_haproxy_example_is_a_valid_config() {
    let out = Haproxy::check_config(&example("haproxy.cfg")).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("haproxy -c: {}", out.trim());
    // The testkit's own config too, with both check timings.
    let dir = tempfile::tempdir().unwrap();
    let endpoints = BTreeMap::from([(
        "app-eu".to_string(),
        vec![HaproxyServer {
            name: "a".into(),
            pg_port: 5432,
            agent_port: 9188,
        }],
    )]);
    let ports = BTreeMap::from([("app-eu".to_string(), 15433)]);
    for checks in [HealthChecks::FAST, HealthChecks::EXAMPLE] {
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(
            &path,
            haproxy_config_with(&endpoints, &ports, 18404, checks),
        )
        .unwrap();
        Haproxy::check_config(&path).unwrap_or_else(|e| panic!("{checks:?}: {e}"));
    }
}

/// `examples/pgbouncer.ini` with what must differ on a test machine (port, files, auth)
/// pointed at the scratch directory; every other setting as users get it.
fn adapted(ini: &str, p: &PgbouncerPaths) -> String {
    let mut out = String::new();
    for line in ini.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        let replaced = if line.trim_start().starts_with("%include") {
            Some(format!("%include {}", p.databases_file.display()))
        } else {
            match key {
                Some("listen_addr") => Some("listen_addr = 127.0.0.1".to_string()),
                Some("listen_port") => Some(format!("listen_port = {}", p.port)),
                Some("unix_socket_dir") => Some("unix_socket_dir =".to_string()),
                Some("logfile") | Some("pidfile") => Some(String::new()),
                Some("auth_type") => Some("auth_type = trust".to_string()),
                Some("auth_file") => Some(format!("auth_file = {}", p.auth_file.display())),
                _ => None,
            }
        };
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[test]
fn the_pgbouncer_example_loads_with_the_agents_databases_file() {
    let ini = std::fs::read_to_string(example("pgbouncer.ini")).unwrap();
    let dbs_text = std::fs::read_to_string(example("pgmesh-databases.ini")).unwrap();
    let dbs = parse_databases_file(&dbs_text);
    assert!(
        !dbs.is_empty(),
        "no entries in examples/pgmesh-databases.ini"
    );
    assert_eq!(
        render_databases_file(&dbs),
        dbs_text,
        "examples/pgmesh-databases.ini is not what the agent writes"
    );
    let bouncer = Pgbouncer::start_with_ini(&dbs, |p| adapted(&ini, p))
        .unwrap_or_else(|e| panic!("the example does not start: {e}"));
    let rt = runtime();
    rt.block_on(async {
        let admin = Admin::connect(&bouncer.admin_dsn(), Duration::from_secs(5))
            .await
            .unwrap();
        let shown = admin.databases().await.unwrap();
        for (db, conn) in &dbs {
            let (host, port) = pgmesh::traffic::pgbouncer::host_port(conn);
            assert!(
                shown
                    .iter()
                    .any(|r| &r.name == db && r.host == host && r.port == port),
                "{db} not at {host}:{port} in {shown:?}"
            );
        }
        let config: BTreeMap<String, String> = admin_rows(&bouncer.admin_dsn(), "SHOW CONFIG")
            .await
            .into_iter()
            .map(|r| (r["key"].clone(), r["value"].clone()))
            .collect();
        assert_eq!(config["pool_mode"], "transaction");
        assert_eq!(config["admin_users"], "pgmesh");
        eprintln!(
            "example pgbouncer.ini: pool_mode {}, server_login_retry {}, query_wait_timeout {}, ignore_startup_parameters {:?}",
            config["pool_mode"],
            config["server_login_retry"],
            config["query_wait_timeout"],
            config["ignore_startup_parameters"]
        );
    });
    let log = bouncer.log();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARNING ") || l.contains(" ERROR "))
        .collect();
    assert!(complaints.is_empty(), "pgbouncer complains: {complaints:?}");
}

/// A pgbouncer started from an ini as it is (not through the testkit, whose admin logs
/// in without a password): killed on drop. Its stderr goes to `log`; pgbouncer in the
/// foreground logs there, config errors included (they come before it opens its
/// logfile).
struct OwnPgbouncer {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl OwnPgbouncer {
    fn spawn(ini: &std::path::Path, log: &std::path::Path) -> OwnPgbouncer {
        use std::os::unix::fs::MetadataExt as _;
        let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let mut cmd = if as_root {
            // pgbouncer refuses to run as root; setpriv execs, so the child is pgbouncer.
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "/usr/sbin/pgbouncer",
            ]);
            c
        } else {
            std::process::Command::new("/usr/sbin/pgbouncer")
        };
        let child = cmd
            .arg(ini)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("pgbouncer: {e} (scripts/install-control.sh)"));
        OwnPgbouncer {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until pgbouncer says "process up" (Ok) or exits (Err with its status).
    fn up_or_exited(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            if self.log().contains("process up") {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer neither came up nor exited in 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnPgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `examples/pgbouncer.ini` with only its paths and port moved into `dir` (auth as the
/// example has it); each replaced line must be there exactly once.
fn example_ini_in(dir: &std::path::Path, port: u16) -> String {
    let ini = std::fs::read_to_string(example("pgbouncer.ini")).unwrap();
    let at = |f: &str| dir.join(f).display().to_string();
    let replacements = [
        (
            "%include ",
            format!("%include {}", at("pgmesh-databases.ini")),
        ),
        ("listen_addr =", "listen_addr = 127.0.0.1".to_string()),
        ("listen_port =", format!("listen_port = {port}")),
        (
            "unix_socket_dir =",
            format!("unix_socket_dir = {}", dir.display()),
        ),
        ("logfile =", format!("logfile = {}", at("pgbouncer.log"))),
        ("pidfile =", format!("pidfile = {}", at("pgbouncer.pid"))),
        ("auth_file =", format!("auth_file = {}", at("userlist.txt"))),
    ];
    let mut seen = [0; 7];
    let mut out = String::new();
    for line in ini.lines() {
        match replacements.iter().position(|(s, _)| line.starts_with(s)) {
            Some(i) => {
                seen[i] += 1;
                out.push_str(&replacements[i].1);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    for ((start, _), n) in replacements.iter().zip(seen) {
        assert_eq!(
            n, 1,
            "examples/pgbouncer.ini: {n} lines start with {start:?}"
        );
    }
    out
}

#[test]
fn the_pgbouncer_example_keeps_its_auth_and_pgbouncer_refuses_a_typo_in_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // pgbouncer runs as postgres: it writes its log, pid and socket here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let put = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    };
    put(
        "pgmesh-databases.ini",
        &std::fs::read_to_string(example("pgmesh-databases.ini")).unwrap(),
    );
    put(
        "userlist.txt",
        "\"pgmesh\" \"admin-secret\"\n\"app\" \"app-secret\"\n",
    );
    let log = dir.path().join("stderr.log");

    // A misspelt parameter: pgbouncer 1.18 logs "unknown parameter", then "FATAL cannot
    // load config file", and exits 1. So the example coming up below means every line of
    // it was taken.
    let typo_ini = example_ini_in(dir.path(), 1).replacen(
        "\nserver_login_retry = 1\n",
        "\nserver_login_retyr = 1\n",
        1,
    );
    assert!(typo_ini.contains("\nserver_login_retyr = 1\n"));
    let ini = put("typo.ini", &typo_ini);
    let mut typo = OwnPgbouncer::spawn(&ini, &log);
    let status = typo
        .up_or_exited()
        .expect_err("pgbouncer started with an unknown parameter");
    let typo_log = typo.log();
    assert_eq!(status.code(), Some(1), "{typo_log}");
    assert!(
        typo_log.contains("unknown parameter: pgbouncer/server_login_retyr")
            && typo_log.contains("FATAL cannot load config file"),
        "{typo_log}"
    );
    drop(typo);

    let (bouncer, port) = (1..=5)
        .find_map(|attempt| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let ini = put("pgbouncer.ini", &example_ini_in(dir.path(), port));
            let mut b = OwnPgbouncer::spawn(&ini, &log);
            match b.up_or_exited() {
                Ok(()) => Some((b, port)),
                Err(_)
                    if attempt < 5 && b.log().to_lowercase().contains("address already in use") =>
                {
                    None
                }
                Err(status) => panic!(
                    "examples/pgbouncer.ini: pgbouncer exited ({status}):\n{}",
                    b.log()
                ),
            }
        })
        .expect("pgbouncer on a free port");
    let console = |password: &str| {
        format!("host=127.0.0.1 port={port} dbname=pgbouncer user=pgmesh password={password} connect_timeout=5")
    };
    runtime().block_on(async {
        // auth_type = scram-sha-256 with the auth_file: the agent's user logs in with its
        // password in the admin DSN, and only with it.
        let admin = Admin::connect(&console("admin-secret"), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", bouncer.log()));
        match Admin::connect(&console("wrong"), Duration::from_secs(5)).await {
            Err(PgbouncerError::Connect(m)) => assert!(m.contains("authentication"), "{m}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("the console let a wrong password in"),
        }
        let shown: BTreeMap<String, (String, bool)> = admin
            .databases()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.name.starts_with("app-"))
            .map(|r| (r.name, (format!("{}:{}", r.host, r.port), r.paused)))
            .collect();
        assert_eq!(
            shown,
            BTreeMap::from([
                ("app-eu".to_string(), ("10.0.1.5:5432".to_string(), false)),
                ("app-us".to_string(), ("10.0.2.5:5432".to_string(), false)),
            ])
        );
        let config: BTreeMap<String, String> = admin_rows(&console("admin-secret"), "SHOW CONFIG")
            .await
            .into_iter()
            .map(|r| (r["key"].clone(), r["value"].clone()))
            .collect();
        for (key, want) in [
            ("auth_type", "scram-sha-256"),
            ("pool_mode", "transaction"),
            ("admin_users", "pgmesh"),
            ("server_login_retry", "1"),
            ("query_wait_timeout", "120"),
        ] {
            assert_eq!(config.get(key).map(String::as_str), Some(want), "{key}");
        }
    });
    // Loading the config (everything up to "process up") drew no complaint; the wrong
    // password above is logged as an ERROR later.
    let log = bouncer.log();
    let startup: Vec<&str> = log
        .lines()
        .take_while(|l| !l.contains("process up"))
        .filter(|l| l.contains(" WARNING ") || l.contains(" ERROR "))
        .collect();
    assert!(startup.is_empty(), "pgbouncer complains:\n{log}");
}

#[test]
fn repoint_sends_new_connections_to_the_new_cluster_and_names_the_include() {
    let _t = turn();
    let (c1, c2) = (
        Cluster::start(major()).expect("cluster 1"),
        Cluster::start(major()).expect("cluster 2"),
    );
    for c in [&c1, &c2] {
        c.psql("CREATE ROLE app LOGIN").unwrap();
    }
    let bouncer =
        Pgbouncer::start(&BTreeMap::from([("app".to_string(), target(&c1))])).expect("pgbouncer");
    let dsn = bouncer.dsn("app", "app");
    let reached = |dsn: String| async move {
        let c = connect(&dsn).await.unwrap();
        one(&c, "SELECT inet_server_port()").await.unwrap()
    };
    runtime().block_on(async {
        assert_eq!(reached(dsn.clone()).await, c1.port().to_string());
        let admin = Admin::connect(&bouncer.admin_dsn(), Duration::from_secs(5))
            .await
            .unwrap();
        let to_c2 = BTreeMap::from([("app".to_string(), target(&c2))]);
        let file = bouncer.databases_file();
        let changed = pgmesh::traffic::pgbouncer::repoint(&admin, &file, &to_c2)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", bouncer.log()));
        assert!(changed);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            render_databases_file(&to_c2)
        );
        assert_eq!(reached(dsn.clone()).await, c2.port().to_string());
        // The same entries again: nothing to write, and pgbouncer already agrees.
        assert!(!pgmesh::traffic::pgbouncer::repoint(&admin, &file, &to_c2)
            .await
            .unwrap());

        // A file pgbouncer does not include: written and reloaded, but pgbouncer still
        // shows the database at c2, and the error says what to check.
        let elsewhere = tempfile::tempdir().unwrap();
        let stray = elsewhere.path().join("pgmesh-databases.ini");
        let back = BTreeMap::from([("app".to_string(), target(&c1))]);
        let err = pgmesh::traffic::pgbouncer::repoint(&admin, &stray, &back)
            .await
            .expect_err("repoint through a file pgbouncer does not read");
        assert!(
            matches!(err, PgbouncerError::NotRepointed { .. }),
            "{err:?}"
        );
        assert!(err.needs_operator());
        let m = err.to_string();
        assert!(
            m.contains(&format!(
                "127.0.0.1:{} instead of 127.0.0.1:{}",
                c2.port(),
                c1.port()
            )) && m.contains(&format!("%include {}", stray.display())),
            "{m}"
        );
        assert_eq!(reached(dsn.clone()).await, c2.port().to_string());
    });
}
