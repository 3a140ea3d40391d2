//! Randomized convergence: seeded concurrent workloads on both nodes over overlapping keys
//! (TOAST-sized values, a table with two extra unique constraints, primary-key changes,
//! multi-statement transactions) while both sidecar directions run; afterwards the nodes
//! must hold identical rows and every conflict must be in both ledgers.
//!
//! `PGMESH_SEEDS` picks how many seeds run per PostgreSQL version (default 2);
//! `PGMESH_SOAK_OPS` the operations per worker (default 150).

mod support;

use std::time::Duration;

use pgmesh::testkit::versions_under_test;
use support::{Mesh, Rng};

const DDL: &str = "
CREATE TABLE kv(id int PRIMARY KEY, v text, n int);
CREATE TABLE big(id int PRIMARY KEY, small int, doc text);
CREATE TABLE uniq(id int PRIMARY KEY, email text UNIQUE, code int UNIQUE, v int);
";
/// Every write to `uniq` on a node, local or applied, for the story of a divergence
/// (not published: each node keeps its own).
const AUDIT: &str = "
CREATE TABLE audit(seq bigserial PRIMARY KEY, xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  applied bool NOT NULL, op text NOT NULL, old_row jsonb, new_row jsonb);
CREATE FUNCTION audit_uniq() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO audit(applied, op, old_row, new_row) VALUES (
    current_setting('session_replication_role') = 'replica', TG_OP,
    CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
    CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
  RETURN NULL;
END $f$;
CREATE TRIGGER audit_uniq AFTER INSERT OR UPDATE OR DELETE ON uniq
  FOR EACH ROW EXECUTE FUNCTION audit_uniq();
ALTER TABLE uniq ENABLE ALWAYS TRIGGER audit_uniq;
";
const TABLES: &[(&str, &[&str])] = &[
    ("public.kv", &["id"]),
    ("public.big", &["id"]),
    ("public.uniq", &["id"]),
];
const NAMES: &[&str] = &["kv", "big", "uniq"];

/// One random statement; keys come from a small space so both nodes collide often.
fn statement(r: &mut Rng, node: &str) -> String {
    let k = r.below(40) + 1;
    let v = r.next() % 100_000;
    match r.below(15) {
        0..=2 => format!("INSERT INTO kv VALUES ({k}, '{node}{v}', {v}) ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = kv.n + 1"),
        3 => format!("UPDATE kv SET v = '{node}{v}', n = n + 1 WHERE id = {k}"),
        4 => format!("DELETE FROM kv WHERE id = {k}"),
        // Primary-key change, into a range of its own so it rarely collides locally.
        5 => format!("UPDATE kv SET id = {} WHERE id = {k}", k + 1000 + r.below(20)),
        // A large incompressible value (stored out of line), then small updates that
        // leave it unchanged (pgoutput sends it as unchanged TOAST).
        6 => format!(
            "INSERT INTO big VALUES ({k}, {v}, (SELECT string_agg(md5('{node}{v}' || g), '') FROM generate_series(1, 200) g)) \
             ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, small = excluded.small"
        ),
        7 | 8 => format!("UPDATE big SET small = {v} WHERE id = {k}"),
        9 => format!("DELETE FROM big WHERE id = {k}"),
        // Two unique constraints besides the key: emails and codes collide across keys.
        10 | 11 => format!(
            "INSERT INTO uniq VALUES ({k}, 'u{}@x', {}, {v}) ON CONFLICT DO NOTHING",
            r.below(25),
            r.below(25)
        ),
        12 => format!("UPDATE uniq SET email = 'u{}@x', v = {v} WHERE id = {k}", r.below(25)),
        // A primary-key change of a row that holds unique values.
        13 => format!("UPDATE uniq SET id = {}, v = {v} WHERE id = {k}", r.below(40) + 1),
        _ => format!("DELETE FROM uniq WHERE id = {k}"),
    }
}

async fn worker(dsn: String, node: &'static str, seed: u64, ops: usize) {
    let client = support::client(&dsn).await;
    let mut r = Rng(seed | 1);
    for _ in 0..ops {
        // Mostly single statements, sometimes a transaction of a few.
        let n = if r.below(4) == 0 { 2 + r.below(3) } else { 1 };
        let mut sql = String::from("BEGIN;");
        for _ in 0..n {
            sql.push_str(&statement(&mut r, node));
            sql.push(';');
        }
        sql.push_str("COMMIT;");
        // Local unique violations are the application's business: roll back and go on.
        if client.batch_execute(&sql).await.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        if r.below(8) == 0 {
            tokio::time::sleep(Duration::from_millis(r.below(15))).await;
        }
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_concurrent_workloads_converge() {
    let seeds = env_num("PGMESH_SEEDS", 2);
    let ops = env_num("PGMESH_SOAK_OPS", 150) as usize;
    for major in versions_under_test() {
        for s in 0..seeds {
            let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(s + 1) ^ u64::from(major);
            let mut m = Mesh::new(major, &format!("{DDL}{AUDIT}"), TABLES);
            m.start_sidecars();
            let (da, db) = (m.a.cluster.dsn(), m.b.cluster.dsn());
            m.rt.block_on(async {
                let w = vec![
                    tokio::spawn(worker(da.clone(), "a", seed, ops)),
                    tokio::spawn(worker(da, "a", seed ^ 0xA5A5, ops)),
                    tokio::spawn(worker(db.clone(), "b", seed ^ 0x5A5A, ops)),
                    tokio::spawn(worker(db, "b", seed ^ 0xFFFF, ops)),
                ];
                for h in w {
                    h.await.expect("worker");
                }
            });
            m.wait_converged(NAMES, Duration::from_secs(90));
            // Conflicts happened (the key space is tiny) and each is fully recorded.
            for node in [&m.a.cluster, &m.b.cluster] {
                let bad = node
                    .psql(
                        "SELECT count(*) FROM pgmesh.conflicts
                          WHERE kind IS NULL OR winner NOT IN ('local', 'remote')
                             OR remote_commit_ts IS NULL OR remote_lsn IS NULL",
                    )
                    .unwrap();
                assert_eq!(bad, "0", "PG{major} seed {s}: incomplete ledger rows");
            }
            let total: u64 = [&m.a.cluster, &m.b.cluster]
                .iter()
                .map(|c| {
                    c.psql("SELECT count(*) FROM pgmesh.conflicts")
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
                .sum();
            assert!(
                total > 0,
                "PG{major} seed {s}: a colliding workload recorded no conflict"
            );
            eprintln!("PG{major} seed {s}: converged; {total} conflicts in the ledgers");
            m.stop_sidecars();
        }
    }
}
