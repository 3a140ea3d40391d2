//! Two-node test meshes: two throwaway clusters with pgmesh objects and two in-process
//! sidecar directions (a → b and b → a), plus convergence checks that wait for facts.

#![allow(dead_code)]

pub mod cli;
pub mod control;
pub mod live;
pub mod tls;

use std::time::{Duration, Instant};

use pgmesh::observe::state::{DirectionReport, DirectionState};
use pgmesh::sidecar::{run_direction, BatchLimits, PeerLink};
use pgmesh::source::{BackoffPolicy, SourceConfig};
use pgmesh::sqlconn::SqlConfig;
use pgmesh::testkit::Cluster;
use tokio::sync::watch;

/// The pgmesh schema for tests that set nodes up by hand (the same objects `pgmesh setup`
/// creates).
pub const PGMESH_SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS pgmesh;
CREATE TABLE IF NOT EXISTS pgmesh.conflicts (
  id bigserial PRIMARY KEY, detected_at timestamptz NOT NULL DEFAULT now(),
  kind text NOT NULL, table_name text NOT NULL, key jsonb NOT NULL,
  local_row jsonb, remote_row jsonb, local_commit_ts timestamptz, remote_commit_ts timestamptz,
  local_origin text, remote_origin text, winner text NOT NULL, resolution text NOT NULL,
  remote_lsn pg_lsn);
CREATE TABLE IF NOT EXISTS pgmesh.tombstones (
  table_name text NOT NULL, key text[] NOT NULL, deleted_at timestamptz NOT NULL DEFAULT now(),
  decided_ts timestamptz, decided_node text, PRIMARY KEY (table_name, key));
CREATE TABLE IF NOT EXISTS pgmesh.outbox (
  id bigserial PRIMARY KEY, prefix text NOT NULL, body jsonb NOT NULL);
CREATE UNLOGGED TABLE IF NOT EXISTS pgmesh.clock_skew (
  peer text PRIMARY KEY, skew_us bigint NOT NULL, uncertainty_us bigint NOT NULL,
  samples integer NOT NULL, measured_at timestamptz NOT NULL);
";

pub struct Node {
    pub name: &'static str,
    pub cluster: Cluster,
}

pub struct Mesh {
    pub a: Node,
    pub b: Node,
    pub rt: tokio::runtime::Runtime,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The state each running direction reports into, by the node it applies into: what
    /// a test waits on to know a direction stopped, and why.
    states: std::collections::HashMap<String, std::sync::Arc<DirectionState>>,
    pub limits: BatchLimits,
    /// Backoff of the directions started from now on.
    pub reconnect: BackoffPolicy,
    /// `[apply] stream_after` of the directions started from now on.
    pub stream_after: Option<u64>,
}

/// A tombstone trigger for `table` keyed by `key_cols` (what setup installs); without
/// key columns (a table without a primary key) only the TRUNCATE tombstone.
pub fn tombstone_trigger(table: &str, key_cols: &[&str]) -> String {
    let fname = format!("pgmesh.tomb_{}", table.replace('.', "_"));
    if key_cols.is_empty() {
        return format!(
            "CREATE OR REPLACE FUNCTION {fname}() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
               INSERT INTO pgmesh.tombstones(table_name, key) VALUES ('{table}', '{{}}')
                 ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = now(), decided_ts = NULL, decided_node = NULL;
               RETURN NULL;
             END $f$;
             CREATE TRIGGER pgmesh_truncate AFTER TRUNCATE ON {table}
               FOR EACH STATEMENT EXECUTE FUNCTION {fname}();"
        );
    }
    let arr = key_cols
        .iter()
        .map(|c| format!("OLD.{c}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    let old = key_cols
        .iter()
        .map(|c| format!("OLD.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let new = key_cols
        .iter()
        .map(|c| format!("NEW.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "CREATE OR REPLACE FUNCTION {fname}() RETURNS trigger LANGUAGE plpgsql
           SET DateStyle = 'ISO, MDY' SET TimeZone = 'UTC' SET extra_float_digits = 3
           SET IntervalStyle = 'postgres' SET bytea_output = 'hex' AS $f$
         BEGIN
           IF TG_OP = 'TRUNCATE' THEN
             INSERT INTO pgmesh.tombstones(table_name, key) VALUES ('{table}', '{{}}')
               ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = now(), decided_ts = NULL, decided_node = NULL;
             RETURN NULL;
           END IF;
           IF TG_OP = 'UPDATE' AND ROW({old}) IS NOT DISTINCT FROM ROW({new}) THEN RETURN NULL; END IF;
           INSERT INTO pgmesh.tombstones(table_name, key) VALUES ('{table}', ARRAY[{arr}])
             ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = now(), decided_ts = NULL, decided_node = NULL;
           RETURN NULL;
         END $f$;
         CREATE TRIGGER pgmesh_tombstone AFTER DELETE OR UPDATE OF {} ON {table}
           FOR EACH ROW EXECUTE FUNCTION {fname}();
         CREATE TRIGGER pgmesh_truncate AFTER TRUNCATE ON {table}
           FOR EACH STATEMENT EXECUTE FUNCTION {fname}();",
        key_cols.join(", ")
    )
}

/// A single-threaded runtime for a test's own SQL sessions.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime")
}

/// A plain SQL session on `dsn` (its connection driven by a task of the current runtime).
pub async fn client(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .expect("connect to a test node");
    tokio::spawn(conn);
    client
}

impl Mesh {
    /// Two nodes of `major` with `ddl` run on both, the publication over `tables`
    /// (`(name, key columns)`), slots, origins and triggers; sidecars not started yet.
    pub fn new(major: u32, ddl: &str, tables: &[(&str, &[&str])]) -> Mesh {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "pgmesh=info".into()),
            )
            .with_test_writer()
            .try_init();
        let a = Cluster::start(major).expect("start node a");
        let b = Cluster::start(major).expect("start node b");
        let names: Vec<&str> = tables.iter().map(|(t, _)| *t).collect();
        for (c, me, peer) in [(&a, "a", "b"), (&b, "b", "a")] {
            c.psql(PGMESH_SCHEMA).unwrap();
            c.psql(ddl).unwrap();
            for (t, keys) in tables {
                c.psql(&tombstone_trigger(t, keys)).unwrap();
            }
            c.psql(&format!(
                "CREATE PUBLICATION pgmesh FOR TABLE {};
                 SELECT pg_replication_origin_create('pgmesh_{peer}');
                 SELECT pg_replication_origin_create('pgmesh__stream_{peer}');",
                names.join(", ")
            ))
            .unwrap();
            // A slot cannot be created in a transaction that wrote: its own statement.
            c.psql(&format!(
                "SELECT pg_create_logical_replication_slot('pgmesh_{peer}', 'pgoutput')"
            ))
            .unwrap();
            let _ = me;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Mesh {
            a: Node {
                name: "a",
                cluster: a,
            },
            b: Node {
                name: "b",
                cluster: b,
            },
            rt,
            stop: None,
            tasks: Vec::new(),
            states: std::collections::HashMap::new(),
            limits: BatchLimits::default(),
            reconnect: BackoffPolicy::default(),
            stream_after: None,
        }
    }

    /// Starts both directions.
    pub fn start_sidecars(&mut self) {
        self.start_direction("b");
        self.start_direction("a");
    }

    /// Starts the direction that applies into node `into` ("a" or "b").
    pub fn start_direction(&mut self, into: &str) {
        let (local, peer) = if into == "a" {
            (&self.a, &self.b)
        } else {
            (&self.b, &self.a)
        };
        let link = PeerLink {
            local_node: local.name.to_string(),
            peer: peer.name.to_string(),
            local: SqlConfig::from_dsn(local.name, &local.cluster.dsn()).unwrap(),
            peer_source: SourceConfig::from_dsn(&peer.cluster.dsn()).unwrap(),
            peer_sql: SqlConfig::from_dsn(peer.name, &peer.cluster.dsn()).unwrap(),
            slot: format!("pgmesh_{}", local.name),
            publication: "pgmesh".to_string(),
            limits: self.limits,
            reconnect: self.reconnect,
            clock_skew_warn: pgmesh::config::DEFAULT_CLOCK_SKEW_WARN,
            clock_wait_max: pgmesh::config::DEFAULT_CLOCK_WAIT_MAX,
            stream_after: self.stream_after,
        };
        let rx = self
            .stop
            .get_or_insert_with(|| watch::channel(false).0)
            .subscribe();
        let state = DirectionState::new(&link.peer);
        self.states.insert(into.to_string(), state.clone());
        self.tasks.push(self.rt.spawn(async move {
            let _ = run_direction(link, rx, state).await;
        }));
    }

    /// Waits until the direction applying into `into` reports what `ok` looks for
    /// (e.g. the error it stopped on); panics with its last report after `timeout`.
    pub fn wait_direction(
        &self,
        into: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&DirectionReport) -> bool,
    ) -> DirectionReport {
        let state = self
            .states
            .get(into)
            .unwrap_or_else(|| panic!("no direction into {into} was started"));
        let deadline = Instant::now() + timeout;
        loop {
            let r = state.report();
            if ok(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until the direction into {into} {what}: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens a session on b (`application_name` 'forgotten') that runs `sql` in a
    /// transaction it leaves open; returns the session and its backend pid.
    pub fn forgotten_transaction_on_b(&self, sql: &str) -> (tokio_postgres::Client, i32) {
        let dsn = self.b.cluster.dsn();
        self.rt.block_on(async {
            let c = client(&dsn).await;
            c.batch_execute(&format!("SET application_name = 'forgotten'; BEGIN; {sql}"))
                .await
                .unwrap();
            let pid: i32 = c
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            (c, pid)
        })
    }

    /// Waits until the direction into b names the 'forgotten' session `pid` as what
    /// blocks it (the stall watch's report, after 10 s).
    pub fn wait_blocked_by_forgotten(&self, pid: i32) -> DirectionReport {
        let blocked_by = format!("blocked by pid {pid} (forgotten");
        self.wait_direction(
            "b",
            "named the blocking session",
            Duration::from_secs(40),
            |r| {
                r.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains(&blocked_by))
            },
        )
    }

    /// Stops both directions cleanly and waits for them.
    pub fn stop_sidecars(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        for t in self.tasks.drain(..) {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(20), t).await });
        }
    }

    /// How many started directions are still running (a panicked or returned task is not).
    pub fn running(&self) -> usize {
        self.tasks.iter().filter(|t| !t.is_finished()).count()
    }

    /// Aborts both directions at once (as a crash of the sidecar process would).
    pub fn kill_sidecars(&mut self) {
        self.stop = None;
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Waits until both nodes hold the same rows in `tables` and every slot has
    /// confirmed the WAL written so far; panics with the difference after `timeout`.
    pub fn wait_converged(&self, tables: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // Every change written so far must be confirmed by the peer's sidecar: the WAL
        // position now on each node, against the slot the other node reads.
        let marks = wal_marks(&self.a.cluster, &self.b.cluster);
        loop {
            let caught_up = slots_caught_up(&marks);
            let same = caught_up
                && tables
                    .iter()
                    .all(|t| dump(&self.a.cluster, t) == dump(&self.b.cluster, t));
            if same {
                return;
            }
            if Instant::now() > deadline {
                let mut msg = format!("nodes did not converge (slots caught up: {caught_up}):\n");
                for (c, slot, mark) in &marks {
                    msg.push_str(&format!(
                        "slot {slot}: wanted {mark}, {}\n",
                        c.psql(&format!(
                            "SELECT confirmed_flush_lsn, restart_lsn, active, pg_current_wal_lsn() \
                             FROM pg_replication_slots WHERE slot_name = '{slot}'"
                        ))
                        .unwrap_or_default()
                    ));
                }
                for t in tables {
                    let (da, db) = (dump(&self.a.cluster, t), dump(&self.b.cluster, t));
                    if da != db {
                        let la: std::collections::BTreeSet<&str> = da.lines().collect();
                        let lb: std::collections::BTreeSet<&str> = db.lines().collect();
                        msg.push_str(&format!("table {t}:\n"));
                        for l in la.difference(&lb) {
                            msg.push_str(&format!("  only on a: {}\n", shorten(l)));
                        }
                        for l in lb.difference(&la) {
                            msg.push_str(&format!("  only on b: {}\n", shorten(l)));
                        }
                        // The ledger's story of those keys, on both nodes.
                        let ids: Vec<String> = la
                            .symmetric_difference(&lb)
                            .filter_map(|l| l.trim_start_matches('(').split(',').next())
                            .map(|id| format!("'{id}'"))
                            .collect();
                        for (n, c) in [("a", &self.a.cluster), ("b", &self.b.cluster)] {
                            let q = format!(
                                "SELECT id, kind, key, winner, resolution, local_origin, \
                                 local_commit_ts, remote_commit_ts, left(remote_row::text, 80) \
                                 FROM pgmesh.conflicts WHERE key->>'id' IN ({}) \
                                 AND table_name = 'public.{t}' ORDER BY id",
                                ids.join(",")
                            );
                            if let Ok(rows) = c.psql(&q) {
                                for r in rows.lines() {
                                    msg.push_str(&format!("  ledger {n}: {r}\n"));
                                }
                            }
                        }
                        msg.push_str(&audit_story(self, t, &ids));
                    }
                }
                panic!("{msg}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ledger rows of `kind` on a node.
    pub fn conflicts(&self, node: &Cluster, kind: &str) -> usize {
        node.psql(&format!(
            "SELECT count(*) FROM pgmesh.conflicts WHERE kind = '{kind}'"
        ))
        .unwrap()
        .parse()
        .unwrap()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.kill_sidecars();
    }
}

/// When the test keeps an `audit` table of `table`'s writes (see converge_random.rs): every
/// write on either node, in commit-time order, that touched the keys `ids` or any unique
/// value those rows ever held.
fn audit_story(m: &Mesh, table: &str, ids: &[String]) -> String {
    let exists =
        m.a.cluster
            .psql("SELECT to_regclass('public.audit') IS NOT NULL")
            .unwrap_or_default();
    if exists != "t" || ids.is_empty() || table != "uniq" {
        return String::new();
    }
    let rows_of = |c: &Cluster| {
        c.psql(&format!(
            "WITH a AS (SELECT seq, applied, op, old_row, new_row,
                    pg_xact_commit_timestamp(xid::text::xid) AS ts, xid FROM audit),
                  touched AS (SELECT coalesce(new_row, old_row) AS r FROM a
                    WHERE coalesce(new_row->>'id', old_row->>'id') IN ({ids})
                       OR old_row->>'id' IN ({ids})),
                  vals AS (SELECT r->>'email' AS email, r->>'code' AS code FROM touched
                    UNION SELECT old_row->>'email', old_row->>'code' FROM a
                    WHERE old_row->>'id' IN ({ids}))
             SELECT to_char(ts, 'MI:SS.US'), xid, seq, CASE WHEN applied THEN 'APPLIED' ELSE 'local' END,
                    op, old_row::text, new_row::text FROM a
              WHERE coalesce(new_row->>'id', old_row->>'id') IN ({ids}) OR old_row->>'id' IN ({ids})
                 OR coalesce(new_row->>'email', '') IN (SELECT email FROM vals)
                 OR coalesce(new_row->>'code', '') IN (SELECT code FROM vals)
                 OR coalesce(old_row->>'email', '') IN (SELECT email FROM vals)
                 OR coalesce(old_row->>'code', '') IN (SELECT code FROM vals)
              ORDER BY ts, seq",
            ids = ids.join(",")
        ))
        .unwrap_or_else(|e| format!("<audit error {e}>"))
    };
    let mut out = format!("  audit of {table} (commit time, xid, seq, how, op, old, new):\n");
    for (n, c) in [("a", &m.a.cluster), ("b", &m.b.cluster)] {
        for l in rows_of(c).lines() {
            out.push_str(&format!("  {n}: {l}\n"));
        }
    }
    out
}

/// Each node's current WAL position, with the slot through which the other node's sidecar
/// reads it: what "everything written so far" means for [`slots_caught_up`].
pub fn wal_marks<'c>(a: &'c Cluster, b: &'c Cluster) -> Vec<(&'c Cluster, &'static str, String)> {
    [(a, "pgmesh_b"), (b, "pgmesh_a")]
        .into_iter()
        .map(|(c, slot)| (c, slot, c.psql("SELECT pg_current_wal_lsn()").unwrap()))
        .collect()
}

/// Whether every slot of `marks` confirmed its node's WAL up to the mark.
pub fn slots_caught_up(marks: &[(&Cluster, &str, String)]) -> bool {
    marks.iter().all(|(c, slot, mark)| {
        c.psql(&format!(
            "SELECT confirmed_flush_lsn >= '{mark}' FROM pg_replication_slots \
             WHERE slot_name = '{slot}'"
        ))
        .is_ok_and(|s| s == "t")
    })
}

/// A table's rows in key order, as one comparable string.
pub fn dump(c: &Cluster, table: &str) -> String {
    c.psql(&format!(
        "SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM {table} x"
    ))
    .unwrap_or_else(|e| format!("<error {e}>"))
}

fn shorten(s: &str) -> String {
    if s.len() > 160 {
        format!("{}… ({} bytes)", &s[..160], s.len())
    } else {
        s.to_string()
    }
}

/// xorshift64*: small, seedable, no dependency (the randomized workloads).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
