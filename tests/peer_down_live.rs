//! A peer down for a long time: node b's PostgreSQL is stopped long enough for both
//! directions' backoff to reach its cap (shortened to 2 s here so the cap is reached in
//! seconds, not minutes), while node a keeps taking thousands of writes. a's slot for b
//! keeps the WAL meanwhile; when b comes back both directions resume by themselves and the
//! nodes end identical, nothing lost or applied twice. The sidecar's log says what is
//! happening: one warning per retry, numbered, with its delay, and no errors or panics.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgmesh::source::BackoffPolicy;
use pgmesh::testkit::{versions_under_test, Cluster};
use support::Mesh;

const TABLES: &[(&str, &[&str])] = &[("public.items", &["id"])];

/// Not replicated: every insert the sidecar applies on b (replica role), so an event
/// applied twice shows as two rows.
const AUDIT: &str = "
CREATE TABLE audit(item_id int NOT NULL, op text NOT NULL);
CREATE FUNCTION audit_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('session_replication_role') = 'replica' THEN
    INSERT INTO audit VALUES (NEW.id, TG_OP);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER audit_apply AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION audit_apply();
ALTER TABLE items ENABLE ALWAYS TRIGGER audit_apply;
";

const CAP: Duration = Duration::from_secs(2);

/// The sidecars' log, captured for assertions.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn take(&self) -> String {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&std::mem::take(&mut *g)).into_owned()
    }
    fn text(&self) -> String {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&g).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// One retry warning of a direction: attempt number and delay.
#[derive(Debug)]
struct Retry {
    attempt: u32,
    delay: Duration,
}

/// The value of `field=` in a log line (up to the next space).
fn field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    // The event's own fields (` name=value`) or its span's (`direction{node=a peer=b}:`).
    let start = [format!(" {name}="), format!("{{{name}=")]
        .iter()
        .find_map(|pat| line.find(pat.as_str()).map(|i| i + pat.len()))?;
    line[start..].split([' ', '}']).next()
}

/// A `Duration`'s Debug form (`1.234s`, `812.5ms`, `40µs`).
fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic() || c == 'µ')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Retry warnings of the direction applying into `node`.
fn retries(log: &str, node: &str) -> Vec<Retry> {
    log.lines()
        .filter(|l| l.contains(" WARN ") && field(l, "node") == Some(node))
        .filter_map(|l| {
            Some(Retry {
                attempt: field(l, "attempt")?.parse().ok()?,
                delay: parse_duration(field(l, "delay")?)?,
            })
        })
        .collect()
}

fn q(c: &Cluster, sql: &str) -> String {
    c.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn count(c: &Cluster, sql: &str) -> i64 {
    q(c, sql).parse().unwrap()
}

#[test]
fn a_peer_down_past_the_backoff_cap_catches_up_by_itself() {
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .with_env_filter("pgmesh=info")
        .with_ansi(false)
        .with_writer(logs.clone())
        .init();
    for major in versions_under_test() {
        let mut m = Mesh::new(
            major,
            "CREATE TABLE items(id int PRIMARY KEY, v text)",
            TABLES,
        );
        m.b.cluster.psql(AUDIT).unwrap();
        m.reconnect = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: CAP,
            healthy_after: Duration::from_secs(60),
        };
        m.start_sidecars();
        q(&m.a.cluster, "INSERT INTO items VALUES (1, 'a before')");
        q(&m.b.cluster, "INSERT INTO items VALUES (2, 'b before')");
        m.wait_converged(&["items"], Duration::from_secs(30));
        logs.take();

        // b goes away; a keeps writing: inserts in batches, some updated, some deleted.
        m.b.cluster.stop().unwrap();
        let down_at = Instant::now();
        let lsn_at_stop = q(&m.a.cluster, "SELECT pg_current_wal_lsn()");
        let mut next_id = 1000;
        let mut batches = 0;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            q(
                &m.a.cluster,
                &format!(
                    "INSERT INTO items SELECT g, 'a ' || g FROM generate_series({next_id}, {}) g",
                    next_id + 99
                ),
            );
            if batches % 5 == 4 {
                q(
                    &m.a.cluster,
                    &format!(
                        "UPDATE items SET v = v || ' updated' WHERE id BETWEEN {next_id} AND {}",
                        next_id + 19
                    ),
                );
            }
            if batches % 10 == 9 {
                q(
                    &m.a.cluster,
                    &format!(
                        "DELETE FROM items WHERE id BETWEEN {} AND {}",
                        next_id + 90,
                        next_id + 99
                    ),
                );
            }
            next_id += 100;
            batches += 1;
            // Both directions past the cap: the 2 s base delay is reached at attempt 6.
            let log = logs.text();
            let at_cap = |node| retries(&log, node).iter().any(|r| r.attempt >= 8);
            if batches >= 50 && at_cap("a") && at_cap("b") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PG{major}: backoff did not reach attempt 8 in both directions; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The slot b reads keeps a's WAL from where b stopped, also across a checkpoint.
        q(&m.a.cluster, "CHECKPOINT");
        let slot = q(
            &m.a.cluster,
            &format!(
                "SELECT wal_status, active, restart_lsn <= '{lsn_at_stop}',
                        pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) > 100000
                   FROM pg_replication_slots WHERE slot_name = 'pgmesh_b'"
            ),
        );
        let status = slot.split('|').next().unwrap_or_default();
        assert!(
            status == "reserved" || status == "extended",
            "PG{major}: slot pgmesh_b on a: {slot}"
        );
        assert!(
            slot.ends_with("|f|t|t"),
            "PG{major}: slot pgmesh_b on a: {slot}"
        );
        assert_eq!(
            m.running(),
            2,
            "PG{major}: a direction ended while b was down"
        );

        // b comes back: both directions resume without help.
        m.b.cluster.start_again().unwrap();
        let down_for = down_at.elapsed();
        q(&m.b.cluster, "INSERT INTO items VALUES (3, 'b after')");
        q(&m.a.cluster, "INSERT INTO items VALUES (4, 'a after')");
        m.wait_converged(&["items"], Duration::from_secs(60));
        let expected = 2 + 2 + i64::from(batches) * 100 - i64::from(batches / 10) * 10;
        for c in [&m.a.cluster, &m.b.cluster] {
            assert_eq!(
                count(c, "SELECT count(*) FROM items"),
                expected,
                "PG{major}"
            );
            assert_eq!(
                count(c, "SELECT count(*) FROM items WHERE v LIKE '% updated'"),
                i64::from(batches / 5) * 20,
                "PG{major}"
            );
        }
        // Nothing applied twice on b.
        assert_eq!(
            count(
                &m.b.cluster,
                "SELECT count(*) - count(DISTINCT item_id) FROM audit"
            ),
            0,
            "PG{major}: an insert was applied twice on b"
        );
        assert_eq!(
            count(&m.b.cluster, "SELECT count(*) FROM pgmesh.conflicts"),
            0,
            "PG{major}"
        );
        assert_eq!(m.running(), 2, "PG{major}");

        // The log: one numbered warning per retry with its delay, growing to the cap and
        // staying there; no errors, no panics; streaming announced again afterwards.
        let log = logs.take();
        // To read what an operator would see: PGMESH_PEER_DOWN_LOG=/tmp/log keeps it.
        if let Ok(path) = std::env::var("PGMESH_PEER_DOWN_LOG") {
            let _ = std::fs::write(format!("{path}.pg{major}"), &log);
        }
        assert!(!log.contains("panicked"), "PG{major}: {log}");
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(errors.is_empty(), "PG{major}: errors logged: {errors:#?}");
        for node in ["a", "b"] {
            let r = retries(&log, node);
            let attempts: Vec<u32> = r.iter().map(|r| r.attempt).collect();
            // Consecutive: one warning per attempt (numbering continues from any retry
            // before b went down, as the backoff had not been healthy for long).
            let first = attempts.first().copied().unwrap_or(1);
            let want: Vec<u32> = (first..first + u32::try_from(r.len()).unwrap()).collect();
            assert_eq!(
                attempts, want,
                "PG{major}: retries into {node} are not one warning per attempt"
            );
            for x in &r {
                let base = (Duration::from_millis(100) * 2u32.pow(x.attempt.min(20) - 1)).min(CAP);
                assert!(
                    x.delay >= base / 2 && x.delay <= base,
                    "PG{major}: into {node}: attempt {} waited {:?}, base {base:?}",
                    x.attempt,
                    x.delay
                );
            }
            let warned = log
                .lines()
                .filter(|l| l.contains(" WARN ") && field(l, "node") == Some(node))
                .count();
            assert_eq!(
                warned,
                r.len(),
                "PG{major}: a warning without attempt/delay:\n{log}"
            );
            assert!(
                log.lines()
                    .any(|l| l.contains("streaming from peer") && field(l, "node") == Some(node)),
                "PG{major}: direction into {node} did not announce it resumed:\n{log}"
            );
            eprintln!(
                "PG{major}: into {node}: {} retries during {down_for:?} down, last delay {:?}",
                r.len(),
                r.last().map(|x| x.delay)
            );
        }
        m.stop_sidecars();
    }
}
