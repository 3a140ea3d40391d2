//! TLS on the SQL sessions (setup, apply, peer reads) against real servers with their own
//! CA, per sslmode, and a whole mesh (`pgmesh setup` + `pgmesh run` on both nodes) over
//! `sslmode=verify-full` to servers that refuse connections without TLS.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgmesh::source::ErrorKind;
use pgmesh::sqlconn::{connect_sql, SqlConfig, SqlConnectError};
use pgmesh::testkit::{versions_under_test, Cluster};
use support::tls::{enable_tls, Certs, CERT_HOST};

/// At most two clusters at a time on the shared machine: tests take turns.
static CLUSTERS: Mutex<()> = Mutex::new(());

const DEADLINE: Duration = Duration::from_secs(60);

fn turn() -> std::sync::MutexGuard<'static, ()> {
    CLUSTERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects as node "a" and says whether the session is encrypted (per the server).
async fn tls_in_use(dsn: &str) -> Result<bool, SqlConnectError> {
    let cfg = SqlConfig::from_dsn("a", dsn)?;
    let (client, task) = connect_sql(&cfg).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    task.abort();
    Ok(row.get(0))
}

/// The DSN of `c` reached by the certificate's name (`host` checked, 127.0.0.1 dialled).
fn named(c: &Cluster, host: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user=postgres dbname=postgres",
        c.port()
    )
}

#[test]
fn sql_sessions_follow_sslmode() {
    let _t = turn();
    let certs = Certs::new("/CN=pgmesh test CA");
    let other = Certs::new("/CN=some other CA");
    let (ca, other_ca) = (
        certs.ca().display().to_string(),
        other.ca().display().to_string(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    for major in versions_under_test() {
        let c = Cluster::start(major).unwrap();
        let base = c.dsn();
        let good = named(&c, CERT_HOST);
        rt.block_on(async {
            // TLS still off: require fails with the fix, prefer connects plain.
            let e = tls_in_use(&format!("{base} sslmode=require"))
                .await
                .unwrap_err();
            assert!(matches!(e, SqlConnectError::TlsNotSupported { .. }), "{e}");
            let msg = e.to_string();
            for needle in ["node a", "127.0.0.1", "sslmode=require", "ssl = on"] {
                assert!(msg.contains(needle), "PG{major}: {needle:?} not in {msg}");
            }
            assert!(!tls_in_use(&base).await.unwrap());
        });

        c.psql("CREATE ROLE scramtls LOGIN PASSWORD 'pw'").unwrap();
        enable_tls(
            &c,
            &certs,
            true,
            &["hostssl all scramtls 127.0.0.1/32 scram-sha-256"],
        );
        rt.block_on(async {
            let ok = [
                format!("{base} sslmode=prefer"),
                format!("{base} sslmode=require"),
                format!("{base} sslmode=require sslrootcert={ca}"),
                format!("{base} sslmode=verify-full sslrootcert={ca}"),
                format!("{good} sslmode=verify-full sslrootcert={ca}"),
                format!(
                    "{} sslmode=verify-ca sslrootcert={ca}",
                    named(&c, "wrong.pgmesh.test")
                ),
                // SCRAM over TLS (the driver may bind the channel to the certificate).
                format!(
                    "host={CERT_HOST} hostaddr=127.0.0.1 port={} user=scramtls password=pw \
                     dbname=postgres sslmode=verify-full sslrootcert={ca}",
                    c.port()
                ),
                format!(
                    "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
                    c.port()
                ),
            ];
            for dsn in &ok {
                let tls = tls_in_use(dsn)
                    .await
                    .unwrap_or_else(|e| panic!("PG{major} {dsn}: {e}"));
                assert!(tls, "PG{major} {dsn}: not encrypted");
            }

            // A certificate from another CA: named, with the mode and the fix.
            for mode in ["verify-full", "verify-ca", "require"] {
                let e = tls_in_use(&format!("{good} sslmode={mode} sslrootcert={other_ca}"))
                    .await
                    .unwrap_err();
                assert!(matches!(e, SqlConnectError::Tls { .. }), "{mode}: {e}");
                assert_eq!(e.kind(), ErrorKind::NeedsOperator);
                let msg = e.to_string();
                for needle in [
                    "TLS to node a",
                    &format!("{CERT_HOST}:{}/postgres", c.port()),
                    &format!("sslmode={mode}"),
                    "not signed by a CA in sslrootcert",
                    "point sslrootcert at the CA",
                ] {
                    assert!(msg.contains(needle), "PG{major}: {needle:?} not in {msg}");
                }
            }

            let e = tls_in_use(&format!(
                "{} sslmode=verify-full sslrootcert={ca}",
                named(&c, "wrong.pgmesh.test")
            ))
            .await
            .unwrap_err();
            assert!(
                e.to_string().contains("not valid for this host name"),
                "{e}"
            );

            // verify-full without sslrootcert trusts the public roots only.
            let e = tls_in_use(&format!("{good} sslmode=verify-full"))
                .await
                .unwrap_err();
            assert!(matches!(e, SqlConnectError::Tls { .. }), "{e}");

            // The server takes TLS only: disable is refused, and the message says so.
            let e = tls_in_use(&format!("{base} sslmode=disable"))
                .await
                .unwrap_err();
            assert!(matches!(e, SqlConnectError::TlsRequired { .. }), "{e}");
            assert_eq!(e.kind(), ErrorKind::NeedsOperator);
            let msg = e.to_string();
            for needle in [
                "node a (127.0.0.1:",
                "refused a connection without TLS (sslmode=disable)",
                "no encryption",
                "set sslmode=verify-full",
            ] {
                assert!(msg.contains(needle), "PG{major}: {needle:?} not in {msg}");
            }
        });
    }
}

fn write_config(dir: &Path, a: &str, b: &str) -> std::path::PathBuf {
    let path = dir.join("pgmesh.toml");
    std::fs::write(
        &path,
        format!("[nodes.a]\ndsn = \"{a}\"\n[nodes.b]\ndsn = \"{b}\"\n[replication]\ntables = [\"public.*\"]\n"),
    )
    .unwrap();
    path
}

fn pgmesh(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgmesh"))
        .args(args)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A `pgmesh run` child, stopped with SIGTERM (as an init system would) when dropped.
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_sidecar(config: &Path, node: &str) -> Sidecar {
    Sidecar(
        Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .args(["run", "--node", node, "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
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

#[test]
fn setup_and_replicate_over_verify_full() {
    let _t = turn();
    let certs = Certs::new("/CN=pgmesh test CA");
    let other = Certs::new("/CN=some other CA");
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            // docs.doc is stored out of line uncompressed, so an update that leaves it alone
            // sends it as unchanged TOAST.
            c.psql(
                "CREATE TABLE items (id int PRIMARY KEY, v text);
                 CREATE TABLE docs (id int PRIMARY KEY, small int, doc text);
                 ALTER TABLE docs ALTER COLUMN doc SET STORAGE EXTERNAL",
            )
            .unwrap();
            enable_tls(c, &certs, true, &[]);
        }
        let dsn = |c: &Cluster, ca: &Path| {
            format!(
                "{} sslmode=verify-full sslrootcert={}",
                named(c, CERT_HOST),
                ca.display()
            )
        };
        let dir = tempfile::tempdir().unwrap();

        // The wrong CA: setup names the node, the mode and where to fix it.
        let bad = write_config(dir.path(), &dsn(&a, &other.ca()), &dsn(&b, &certs.ca()));
        let out = pgmesh(&["setup", "--check"], &bad);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        for needle in [
            "TLS to node a",
            "sslmode=verify-full",
            "not signed by a CA in sslrootcert",
        ] {
            assert!(text(&out).contains(needle), "PG{major}: {}", text(&out));
        }

        let cfg = write_config(dir.path(), &dsn(&a, &certs.ca()), &dsn(&b, &certs.ca()));
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));

        let _sa = run_sidecar(&cfg, "a");
        let _sb = run_sidecar(&cfg, "b");
        a.psql("INSERT INTO items VALUES (1, 'from a')").unwrap();
        b.psql("INSERT INTO items VALUES (2, 'from b')").unwrap();
        let all = "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM items";
        wait_for(&a, all, "1=from a,2=from b");
        wait_for(&b, all, "1=from a,2=from b");
        b.psql("UPDATE items SET v = 'changed on b' WHERE id = 1")
            .unwrap();
        wait_for(&a, all, "1=changed on b,2=from b");

        // Peer reads: a row last written here gets an update that leaves doc out
        // (unchanged TOAST), so the apply completes doc from the peer over a SQL session:
        // a reads from b at the second step, b from a at the third.
        let doc = "SELECT small || ':' || (doc = repeat('x', 10000)) FROM docs WHERE id = 1";
        a.psql("INSERT INTO docs VALUES (1, 1, repeat('x', 10000))")
            .unwrap();
        wait_for(&b, doc, "1:true");
        b.psql("UPDATE docs SET small = 2 WHERE id = 1").unwrap();
        wait_for(&a, doc, "2:true");
        a.psql("UPDATE docs SET small = 3 WHERE id = 1").unwrap();
        wait_for(&b, doc, "3:true");

        // Every pgmesh session on each node is encrypted: the apply and catalog sessions
        // (SQL), the peer's walsender (replication connection), the peer's peer read and
        // lag probe sessions and the local guardrail (SQL); maintenance passes come and go.
        for c in [&a, &b] {
            assert_eq!(
                c.psql(
                    "SELECT count(*) FILTER (WHERE NOT s.ssl) || ' ' || \
                            string_agg(DISTINCT a.application_name, ',' ORDER BY a.application_name) \
                              FILTER (WHERE a.application_name <> 'pgmesh maintenance') \
                     FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                     WHERE a.application_name LIKE 'pgmesh%'"
                )
                .unwrap(),
                "0 pgmesh,pgmesh apply,pgmesh catalog,pgmesh guardrail,pgmesh lag probe,pgmesh peer read",
                "PG{major}"
            );
        }
    }
}
