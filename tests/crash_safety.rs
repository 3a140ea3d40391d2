//! Crash safety of the real binaries: `pgmesh setup`, then two `pgmesh run` processes
//! killed with SIGKILL at random moments (and each PostgreSQL stopped with `-m immediate`)
//! while both nodes write uniquely numbered events. Afterwards every event is on both
//! nodes, and an audit trigger that fires only for the sidecar's writes shows each event
//! was applied exactly once.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgmesh::testkit::{versions_under_test, Cluster};

const DDL: &str = "
CREATE TABLE events(id bigint PRIMARY KEY, node text NOT NULL, payload text);
-- Not replicated: records every write the sidecar applies (replica role), so a second
-- application of one event shows as a second row.
CREATE TABLE audit(event_id bigint NOT NULL, op text NOT NULL);
CREATE FUNCTION audit_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('session_replication_role') = 'replica' THEN
    INSERT INTO audit VALUES (NEW.id, TG_OP);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER audit_apply AFTER INSERT OR UPDATE ON events
  FOR EACH ROW EXECUTE FUNCTION audit_apply();
ALTER TABLE events ENABLE ALWAYS TRIGGER audit_apply;
";

struct Sidecar {
    node: &'static str,
    child: Child,
}

fn spawn_sidecar(cfg: &Path, node: &'static str, log: &Path) -> Sidecar {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
        .args(["run", "-c"])
        .arg(cfg)
        .args(["--node", node])
        .env(
            "RUST_LOG",
            std::env::var("PGMESH_CRASH_LOG").unwrap_or_else(|_| "pgmesh=info".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn pgmesh run");
    Sidecar { node, child }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Inserts events `base+1 ..= base+n` on `dsn`, surviving server restarts (an insert
/// whose commit was cut off is retried; `ON CONFLICT DO NOTHING` keeps that idempotent).
async fn writer(dsn: String, node: &'static str, base: i64, n: i64) {
    let mut i = 1;
    let mut client = None;
    while i <= n {
        if client.is_none() {
            match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client = Some(c);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        // Up to three events per transaction.
        let upto = (i + (i % 3)).min(n);
        let values: Vec<String> = (i..=upto)
            .map(|k| format!("({}, '{node}', repeat('x', {}))", base + k, k % 50))
            .collect();
        let sql = format!(
            "INSERT INTO events VALUES {} ON CONFLICT (id) DO NOTHING",
            values.join(", ")
        );
        match c.batch_execute(&sql).await {
            Ok(()) => i = upto + 1,
            Err(_) => {
                client = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Spread the writes over several seconds so the chaos hits them mid-stream.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(c: &Cluster, sql: &str) -> i64 {
    c.psql(sql)
        .unwrap_or_else(|_| "-1".into())
        .parse()
        .unwrap_or(-1)
}

#[test]
fn killed_sidecars_and_crashed_servers_lose_nothing_and_apply_once() {
    let per_node: i64 = std::env::var("PGMESH_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql(DDL).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("pgmesh.toml");
        let mut f = std::fs::File::create(&cfg).unwrap();
        writeln!(
            f,
            "[nodes.a]\ndsn = \"{}\"\n[nodes.b]\ndsn = \"{}\"\n[replication]\ntables = [\"public.events\"]\n",
            a.dsn(),
            b.dsn()
        )
        .unwrap();
        let setup = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .args(["setup", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            setup.status.success(),
            "PG{major} setup: {}{}",
            String::from_utf8_lossy(&setup.stdout),
            String::from_utf8_lossy(&setup.stderr)
        );
        let log = dir.path().join("sidecars.log");
        let mut sidecars = vec![
            spawn_sidecar(&cfg, "a", &log),
            spawn_sidecar(&cfg, "b", &log),
        ];
        let rt = tokio::runtime::Runtime::new().unwrap();
        let writers = vec![
            rt.spawn(writer(a.dsn(), "a", 1_000_000, per_node)),
            rt.spawn(writer(b.dsn(), "b", 2_000_000, per_node)),
        ];
        // Chaos while the writers run.
        let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ u64::from(major));
        let mut kills = 0;
        let mut server_crashes = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(150 + rng.below(450)));
            match rng.below(8) {
                0 if server_crashes < 2 => {
                    let node = if rng.below(2) == 0 { &a } else { &b };
                    node.restart_immediate().unwrap();
                    server_crashes += 1;
                }
                _ => {
                    let i = rng.below(2) as usize;
                    let node = sidecars[i].node;
                    let _ = sidecars[i].child.kill(); // SIGKILL
                    let _ = sidecars[i].child.wait();
                    sidecars[i] = spawn_sidecar(&cfg, node, &log);
                    kills += 1;
                }
            }
        }
        for w in writers {
            rt.block_on(w).unwrap();
        }
        // Everything arrives, on both nodes.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (na, nb) = (
                count(&a, "SELECT count(*) FROM events"),
                count(&b, "SELECT count(*) FROM events"),
            );
            if na == 2 * per_node && nb == 2 * per_node {
                break;
            }
            if Instant::now() > deadline {
                let ids = |c: &Cluster| -> std::collections::BTreeSet<String> {
                    c.psql("SELECT id FROM events")
                        .unwrap_or_default()
                        .lines()
                        .map(String::from)
                        .collect()
                };
                let (ia, ib) = (ids(&a), ids(&b));
                let keep = std::env::temp_dir().join(format!("pgmesh-crash-{major}.log"));
                let _ = std::fs::copy(&log, &keep);
                panic!(
                    "PG{major}: events a={na} b={nb}, want {} each; only on a: {:?}; only on b: {:?}; sidecar log kept in {}",
                    2 * per_node,
                    ia.difference(&ib).collect::<Vec<_>>(),
                    ib.difference(&ia).collect::<Vec<_>>(),
                    keep.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Each event applied exactly once on the node that did not write it.
        for (c, peer) in [(&a, "b"), (&b, "a")] {
            let applied = count(c, "SELECT count(*) FROM audit");
            let distinct = count(
                c,
                &format!("SELECT count(DISTINCT event_id) FROM audit JOIN events ON id = event_id AND node = '{peer}'"),
            );
            assert_eq!(
                (applied, distinct),
                (per_node, per_node),
                "PG{major}: on the node receiving {peer}'s events: {applied} applications of {distinct} distinct events ({kills} sidecar kills, {server_crashes} server crashes)"
            );
            assert_eq!(
                count(c, "SELECT count(*) FROM pgmesh.conflicts"),
                0,
                "PG{major}"
            );
        }
        eprintln!("PG{major}: {} events each way exactly once across {kills} sidecar kills and {server_crashes} server crashes", per_node);
        drop(sidecars);
    }
}
