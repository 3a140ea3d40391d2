//! Randomized convergence: seeded concurrent workloads on both nodes over overlapping keys
//! (TOAST-sized values, a table with two extra unique constraints, primary-key changes,
//! multi-statement transactions) while both sidecar directions run; afterwards the nodes
//! must hold identical rows and every ledger row must be complete.
//!
//! Convergence alone passes when both nodes pick the same wrong winner, so table `kv` has
//! a last-writer-wins oracle: every write on either node is logged (a trigger, not
//! replicated) with its transaction, whose commit time PostgreSQL keeps. Each `kv` row
//! must end as the latest write to its key left it (latest commit time; equal times: the
//! greater node name; within a transaction the last statement), and each node's last
//! write to a key must have reached the other node: applied there (its image in the
//! other node's log as an applied write) or recorded in its ledger with that commit time;
//! a delete may also meet a key the other node deleted too or had not written before it
//! (nothing discarded there).
//!
//! A second run streams big transactions (`[apply] stream_after`, PG16+): one worker per
//! node sometimes opens its transaction with a bulk insert, so the peer streams it and
//! the random statements after it (colliding keys, subtransactions rolled back) are
//! applied while it is open; the oracle is the same.
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
CREATE TABLE filler(id bigint PRIMARY KEY, pad text);
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
/// Every write to `kv` on a node, local or applied (the oracle's log).
const KV_LOG: &str = "
CREATE TABLE kv_log(seq bigserial PRIMARY KEY, xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  applied bool NOT NULL, old_id int, new_id int, new_row jsonb);
CREATE FUNCTION log_kv() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO kv_log(applied, old_id, new_id, new_row) VALUES (
    current_setting('session_replication_role') = 'replica',
    CASE WHEN TG_OP <> 'INSERT' THEN OLD.id END,
    CASE WHEN TG_OP <> 'DELETE' THEN NEW.id END,
    CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
  RETURN NULL;
END $f$;
CREATE TRIGGER log_kv AFTER INSERT OR UPDATE OR DELETE ON kv
  FOR EACH ROW EXECUTE FUNCTION log_kv();
ALTER TABLE kv ENABLE ALWAYS TRIGGER log_kv;
";
const TABLES: &[(&str, &[&str])] = &[
    ("public.kv", &["id"]),
    ("public.big", &["id"]),
    ("public.uniq", &["id"]),
    ("public.filler", &["id"]),
];
const NAMES: &[&str] = &["kv", "big", "uniq", "filler"];

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

/// `big`: this worker sometimes writes a transaction large enough to be streamed (a
/// bulk insert of ~150 kB into `filler` from this first id on, random statements and a
/// rolled-back subtransaction after it). Two such workers on one node open big
/// transactions at the same time now and then: the peer streams both, one is applied
/// open and the other kept whole until its commit (`txn::spool`).
async fn worker(dsn: String, node: &'static str, seed: u64, ops: usize, big: Option<u64>) {
    let client = support::client(&dsn).await;
    let mut r = Rng(seed | 1);
    let mut filler = 0u64;
    for _ in 0..ops {
        let mut sql = String::from("BEGIN;");
        let streamed = big.is_some() && r.below(6) == 0;
        if let Some(base) = big.filter(|_| streamed) {
            // Ids of their own per worker: filler rows never collide.
            let from = base + filler * 1000;
            filler += 1;
            sql.push_str(&format!(
                "INSERT INTO filler SELECT g, repeat(md5(g::text), 4) FROM generate_series({from}, {}) g;",
                from + 999
            ));
        }
        // Mostly single statements, sometimes a transaction of a few.
        let n = if streamed || r.below(4) == 0 {
            2 + r.below(3)
        } else {
            1
        };
        for i in 0..n {
            if streamed && i == 1 {
                sql.push_str("SAVEPOINT s;");
                sql.push_str(&statement(&mut r, node));
                sql.push_str("; ROLLBACK TO SAVEPOINT s;");
            }
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
    for major in versions_under_test() {
        random_runs(major, false);
    }
}

#[test]
fn random_concurrent_workloads_with_streamed_transactions_converge() {
    for major in versions_under_test().into_iter().filter(|v| *v >= 16) {
        random_runs(major, true);
    }
}

fn random_runs(major: u32, streamed: bool) {
    let seeds = env_num("PGMESH_SEEDS", 2);
    let ops = env_num("PGMESH_SOAK_OPS", 150) as usize;
    {
        for s in 0..seeds {
            let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(s + 1)
                ^ u64::from(major)
                ^ u64::from(streamed);
            let mut m = Mesh::new(major, &format!("{DDL}{AUDIT}{KV_LOG}"), TABLES);
            if streamed {
                m.stream_after = Some(64 << 10);
            }
            m.start_sidecars();
            let (da, db) = (m.a.cluster.dsn(), m.b.cluster.dsn());
            m.rt.block_on(async {
                let big = |base: u64| streamed.then_some(base);
                let w = vec![
                    tokio::spawn(worker(da.clone(), "a", seed, ops, big(1))),
                    tokio::spawn(worker(da, "a", seed ^ 0xA5A5, ops, big(250_000_001))),
                    tokio::spawn(worker(
                        db.clone(),
                        "b",
                        seed ^ 0x5A5A,
                        ops,
                        big(500_000_001),
                    )),
                    tokio::spawn(worker(db, "b", seed ^ 0xFFFF, ops, big(750_000_001))),
                ];
                for h in w {
                    h.await.expect("worker");
                }
            });
            m.wait_converged(NAMES, Duration::from_secs(90));
            let what = format!(
                "PG{major} seed {s}{}",
                if streamed { " streamed" } else { "" }
            );
            check_last_writer_wins(&m, &what);
            if streamed {
                for (node, peer) in [(&m.a.cluster, "b"), (&m.b.cluster, "a")] {
                    let progress = node
                        .psql(&format!(
                            "SELECT pg_replication_origin_progress('pgmesh__stream_{peer}', false)"
                        ))
                        .unwrap();
                    assert!(
                        !progress.is_empty() && progress != "0/0",
                        "{what}: no transaction from {peer} was applied streamed"
                    );
                }
            }
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

/// One write to one key of `kv`, from a node's log.
#[derive(Clone, Debug)]
struct Write {
    /// Commit time, µs since the Unix epoch.
    ts: i64,
    node: &'static str,
    seq: i64,
    key: i32,
    /// The row it left (`to_jsonb` text); `None`: the key was deleted (or moved away).
    row: Option<String>,
}

/// Each node's `kv_log`: (local writes, applied writes), a key change split into a
/// delete of the old key and a write of the new one.
fn read_log(c: &pgmesh::testkit::Cluster, node: &'static str) -> (Vec<Write>, Vec<Write>) {
    let text = c
        .psql(
            "SELECT seq, (extract(epoch FROM pg_xact_commit_timestamp(xid::text::xid)) * 1000000)::bigint,
                    applied, coalesce(old_id::text, ''), coalesce(new_id::text, ''),
                    coalesce(new_row::text, '')
               FROM kv_log ORDER BY seq",
        )
        .unwrap();
    let (mut local, mut applied) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.splitn(6, '|').collect();
        let seq: i64 = f[0].parse().unwrap();
        let ts: i64 = f[1].parse().unwrap();
        let into = if f[2] == "t" {
            &mut applied
        } else {
            &mut local
        };
        let new_id: Option<i32> = f[4].parse().ok();
        if let Ok(old) = f[3].parse::<i32>() {
            if new_id != Some(old) {
                into.push(Write {
                    ts,
                    node,
                    seq,
                    key: old,
                    row: None,
                });
            }
        }
        if let Some(key) = new_id {
            into.push(Write {
                ts,
                node,
                seq,
                key,
                row: Some(f[5].to_string()),
            });
        }
    }
    (local, applied)
}

fn check_last_writer_wins(m: &Mesh, what: &str) {
    let (a_local, a_applied) = read_log(&m.a.cluster, "a");
    let (b_local, b_applied) = read_log(&m.b.cluster, "b");
    let order = |w: &Write| (w.ts, w.node, w.seq);
    // The oracle: the latest write of each key, over both nodes.
    let mut last: std::collections::BTreeMap<i32, &Write> = std::collections::BTreeMap::new();
    for w in a_local.iter().chain(&b_local) {
        let e = last.entry(w.key).or_insert(w);
        if order(w) > order(e) {
            *e = w;
        }
    }
    let expected: std::collections::BTreeMap<i32, &str> = last
        .iter()
        .filter_map(|(k, w)| w.row.as_deref().map(|r| (*k, r)))
        .collect();
    let actual_text =
        m.a.cluster
            .psql("SELECT id, to_jsonb(kv)::text FROM kv ORDER BY id")
            .unwrap();
    let actual: std::collections::BTreeMap<i32, &str> = actual_text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, row) = l.split_once('|').unwrap();
            (id.parse().unwrap(), row)
        })
        .collect();
    let wrong: Vec<String> = expected
        .keys()
        .chain(actual.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| expected.get(k) != actual.get(k))
        .map(|k| {
            format!(
                "key {k}: expected {:?} (latest write {:?}), found {:?}",
                expected.get(k),
                last.get(k),
                actual.get(k)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: kv differs from last-writer-wins:\n{}",
        wrong.join("\n")
    );
    // Each node's last write to each key reached the other node: applied, or recorded.
    for (from, local, other, other_local, applied) in [
        ("a", &a_local, &m.b.cluster, &b_local, &b_applied),
        ("b", &b_local, &m.a.cluster, &a_local, &a_applied),
    ] {
        let ledger_text = other
            .psql(
                "SELECT key->>'id', (extract(epoch FROM remote_commit_ts) * 1000000)::bigint
                   FROM pgmesh.conflicts WHERE table_name = 'public.kv'",
            )
            .unwrap();
        let ledger: std::collections::BTreeSet<(i32, i64)> = ledger_text
            .lines()
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let (k, ts) = l.split_once('|')?;
                Some((k.parse().ok()?, ts.parse().ok()?))
            })
            .collect();
        let mut last_of: std::collections::BTreeMap<i32, &Write> =
            std::collections::BTreeMap::new();
        for w in local.iter() {
            last_of.insert(w.key, w);
        }
        for (k, w) in last_of {
            let reached = ledger.contains(&(k, w.ts))
                || applied
                    .iter()
                    .any(|x| x.key == k && x.row == w.row && x.ts >= w.ts)
                || (w.row.is_none() && delete_can_have_met_no_row(w, other_local, applied));
            if !reached {
                let story = |c: &pgmesh::testkit::Cluster| {
                    c.psql(&format!(
                        "SELECT seq, pg_xact_commit_timestamp(xid::text::xid), applied, old_id, new_id, new_row
                           FROM kv_log WHERE {k} IN (old_id, new_id) ORDER BY seq"
                    ))
                    .unwrap()
                        + "\n  ledger:\n"
                        + &c.psql(&format!(
                            "SELECT kind, winner, resolution, local_commit_ts, remote_commit_ts, local_origin
                               FROM pgmesh.conflicts WHERE table_name = 'public.kv' AND key->>'id' = '{k}'"
                        ))
                        .unwrap()
                };
                panic!(
                    "{what}: node {from}'s last write to kv key {k} ({w:?}) was neither applied on the other node nor recorded in its ledger\nnode a:\n{}\nnode b:\n{}",
                    story(&m.a.cluster),
                    story(&m.b.cluster)
                );
            }
        }
    }
    eprintln!(
        "{what}: kv matches last-writer-wins over {} writes ({} keys)",
        a_local.len() + b_local.len(),
        last.len()
    );
}

/// Whether a delete `w` can have met no row on the other node (whose log is `local` and
/// `applied`), so that it discarded nothing and is rightly in no ledger: the row was gone
/// already (deleted there too: the later tombstone stays, `conflict::decide`), or the key
/// never held one there.
///
/// What certainly happened there before `w` arrived: every applied write of the key (all
/// are the sender's earlier writes, applied in order; a write that met no row, or was
/// folded into `w` in one chunk, is not logged) and every local write committed before
/// `w`. If the last of those left no row, `w` met none — unless a local insert came between
/// (then it lost to a newer row and belongs in the ledger; which came first is unknown, so
/// this does not insist). If a row was there, a local delete after it may have come first.
fn delete_can_have_met_no_row(w: &Write, local: &[Write], applied: &[Write]) -> bool {
    let certain = applied
        .iter()
        .filter(|x| x.key == w.key)
        .chain(local.iter().filter(|x| x.key == w.key && x.ts < w.ts))
        .max_by_key(|x| x.seq);
    let after = certain.map_or(0, |x| x.seq);
    certain.is_none_or(|x| x.row.is_none())
        || local
            .iter()
            .any(|x| x.key == w.key && x.row.is_none() && x.seq > after)
}

/// The story CI met (PG17 seed 0, key 18): b inserted the key; a moved it away (applied
/// on b as a delete), inserted it again and moved it away again in one chunk, so a's last
/// write met no row on b. And the opposite: had b still held its own row, a's delete must
/// have been applied or recorded.
#[test]
fn the_oracle_knows_a_delete_that_met_no_row() {
    let w = |ts, node, seq, row: Option<&str>| Write {
        ts,
        node,
        seq,
        key: 18,
        row: row.map(str::to_string),
    };
    let a_last = w(212_718, "a", 90, None);
    let b_local = [w(143_743, "b", 38, Some("b3500"))];
    let b_applied = [w(185_418, "b", 89, None)];
    assert!(delete_can_have_met_no_row(&a_last, &b_local, &b_applied));
    assert!(!delete_can_have_met_no_row(&a_last, &b_local, &[]));
    // b deleted its row itself after a's delete committed: either may have come first.
    let b_deleted_later = [b_local[0].clone(), w(300_000, "b", 95, None)];
    assert!(delete_can_have_met_no_row(&a_last, &b_deleted_later, &[]));
}
