//! Conflicting writes for the clock-skew drill: each region's own application updates
//! the same few rows at once, straight into its region's database, and logs every
//! acknowledged update with its commit time (by that database's clock). After healing,
//! every row must hold the write with the latest commit time on both nodes — what
//! last-writer-wins promises, skew or not — and the report counts the rows where that
//! was not the write acknowledged last in real time (the skew's bias, README "What
//! last-writer-wins does under clock skew").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::super::regions::{LabError, RegionsLab};
use super::super::topology::Site;
use crate::testkit::spawn_with_runtime;

/// How many rows both regions fight over: ids FIRST_ID - 1 down to FIRST_ID - ROWS, below
/// every logger id and clear of the sampler's probe row (-1).
pub const ROWS: i64 = 20;
const FIRST_ID: i64 = -1_000;
/// Pause between one writer's updates.
const PACE: Duration = Duration::from_millis(15);

/// One acknowledged update.
#[derive(Clone, Debug)]
pub struct HotWrite {
    pub id: i64,
    pub payload: String,
    /// Commit time, Unix µs by the writing node's clock.
    pub commit_us: i64,
    pub node: Site,
    pub acked_at: Instant,
}

/// What the writers saw.
#[derive(Debug, Default)]
pub struct HotLog {
    pub writes: Vec<HotWrite>,
    /// Updates that failed: where and when (a refused write permit among them).
    pub failed: Vec<(Site, Instant)>,
    pub last_error: Option<String>,
}

/// Creates the rows on region a (superuser) and waits until b has them too.
pub fn prepare(lab: &RegionsLab) -> Result<(), LabError> {
    lab.postgres(Site::A).psql(&format!(
        "INSERT INTO orders SELECT {FIRST_ID} - g, 'hot' FROM generate_series(1, {ROWS}) g ON CONFLICT DO NOTHING"
    ))?;
    let count = format!("SELECT count(*) FROM orders WHERE {}", id_range());
    lab.wait_for("the hot rows on b", Duration::from_secs(60), |l| {
        l.postgres(Site::B)
            .psql(&count)
            .is_ok_and(|n| n.trim() == ROWS.to_string())
    })
    .map(|_| ())
}

/// Both regions' writers, running until [`HotWriters::stop`].
pub struct HotWriters {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Option<HotLog>>>,
}

impl HotWriters {
    /// Starts one writer per `(region, dsn)`; `tag` makes this trial's payloads unique.
    #[must_use]
    pub fn start(dsns: &[(Site, String)], tag: &str) -> HotWriters {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = dsns
            .iter()
            .enumerate()
            .map(|(i, (site, dsn))| {
                let (stop, site, dsn) = (stop.clone(), *site, dsn.clone());
                let tag = format!("{site}-{tag}");
                let seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1);
                spawn_with_runtime(move || async move {
                    write_loop(&stop, site, &dsn, &tag, seed).await
                })
            })
            .collect();
        HotWriters { stop, threads }
    }

    /// Stops the writers and merges what they logged.
    #[must_use]
    pub fn stop(self) -> HotLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = HotLog::default();
        for t in self.threads {
            if let Ok(Some(log)) = t.join() {
                all.writes.extend(log.writes);
                all.failed.extend(log.failed);
                all.last_error = log.last_error.or(all.last_error);
            }
        }
        all
    }
}

async fn write_loop(stop: &AtomicBool, site: Site, dsn: &str, tag: &str, seed: u64) -> HotLog {
    let mut log = HotLog::default();
    let mut rng = seed;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            match tokio_postgres::connect(dsn, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client = Some(c);
                }
                Err(e) => {
                    fail(&mut log, site, format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let id = FIRST_ID - 1 - i64::try_from((rng >> 33) % ROWS.unsigned_abs()).unwrap_or(0);
        n += 1;
        let payload = format!("{tag}-{n}");
        match update(c, id, &payload).await {
            Ok(commit_us) => log.writes.push(HotWrite {
                id,
                payload,
                commit_us,
                node: site,
                acked_at: Instant::now(),
            }),
            Err(e) => fail(&mut log, site, super::sampler::db_text(&e)),
        }
        tokio::time::sleep(PACE).await;
    }
    log
}

/// Updates row `id` and returns its commit time (asked after the commit: the
/// transaction's id is known before, its commit time only after).
async fn update(
    c: &tokio_postgres::Client,
    id: i64,
    payload: &str,
) -> Result<i64, tokio_postgres::Error> {
    let xid: i64 = c
        .query_one(
            "UPDATE orders SET payload = $1 WHERE id = $2 RETURNING txid_current()",
            &[&payload, &id],
        )
        .await?
        .get(0);
    Ok(c.query_one(
        "SELECT (extract(epoch FROM pg_xact_commit_timestamp($1::text::xid)) * 1000000)::int8",
        &[&xid.to_string()],
    )
    .await?
    .get(0))
}

fn fail(log: &mut HotLog, site: Site, e: String) {
    log.failed.push((site, Instant::now()));
    log.last_error = Some(format!("{site}: {e}"));
}

/// How the rows ended against the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HotVerdict {
    /// Rows written during the drill.
    pub rows_written: u64,
    /// Rows not holding the write with the latest commit time (ties: the greater node
    /// name, as the conflict rule breaks them).
    pub not_latest: Vec<String>,
    /// Rows whose latest-commit write was not the one acknowledged last: the clocks
    /// decided, not the order the clients saw.
    pub decided_by_skew: u64,
}

/// Compares what each written row holds (`held`: id → payload) with the log. Pure.
#[must_use]
pub fn judge(writes: &[HotWrite], held: &BTreeMap<i64, String>) -> HotVerdict {
    let mut latest: BTreeMap<i64, &HotWrite> = BTreeMap::new();
    let mut last_acked: BTreeMap<i64, &HotWrite> = BTreeMap::new();
    for w in writes {
        let l = latest.entry(w.id).or_insert(w);
        if (w.commit_us, w.node.name()) > (l.commit_us, l.node.name()) {
            *l = w;
        }
        let a = last_acked.entry(w.id).or_insert(w);
        if w.acked_at > a.acked_at {
            *a = w;
        }
    }
    let mut v = HotVerdict {
        rows_written: latest.len() as u64,
        ..HotVerdict::default()
    };
    for (id, w) in &latest {
        if held.get(id) != Some(&w.payload) {
            v.not_latest.push(format!(
                "row {id} holds {:?}, its latest commit wrote {:?}",
                held.get(id),
                w.payload
            ));
        }
        if last_acked.get(id).is_some_and(|a| a.payload != w.payload) {
            v.decided_by_skew += 1;
        }
    }
    v
}

/// The rows' condition in SQL.
fn id_range() -> String {
    format!("id BETWEEN {} AND {}", FIRST_ID - ROWS, FIRST_ID - 1)
}

/// What the contested rows hold on `node`.
pub fn held(lab: &RegionsLab, node: Site) -> Result<BTreeMap<i64, String>, LabError> {
    let out = lab.postgres(node).psql(&format!(
        "SELECT id || '|' || payload FROM orders WHERE {}",
        id_range()
    ))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('|'))
        .filter_map(|(id, p)| Some((id.trim().parse().ok()?, p.to_string())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: i64, payload: &str, commit_us: i64, node: Site, acked: Instant) -> HotWrite {
        HotWrite {
            id,
            payload: payload.into(),
            commit_us,
            node,
            acked_at: acked,
        }
    }

    #[test]
    fn the_latest_commit_must_hold_and_a_skewed_winner_is_counted() {
        let t = Instant::now();
        let later = t + Duration::from_millis(10);
        // Row -1: b committed "earlier" in real time but 3 s ahead by its clock.
        // Row -2: a's write is both last acknowledged and latest.
        let writes = [
            w(-1, "b1", 3_000_000, Site::B, t),
            w(-1, "a1", 1_000_000, Site::A, later),
            w(-2, "b2", 100, Site::B, t),
            w(-2, "a2", 200, Site::A, later),
        ];
        let held: BTreeMap<i64, String> = [(-1, "b1".into()), (-2, "a2".into())].into();
        let v = judge(&writes, &held);
        assert_eq!(v.rows_written, 2);
        assert!(v.not_latest.is_empty(), "{:?}", v.not_latest);
        assert_eq!(v.decided_by_skew, 1);
        let wrong: BTreeMap<i64, String> = [(-1, "a1".into()), (-2, "a2".into())].into();
        assert_eq!(judge(&writes, &wrong).not_latest.len(), 1);
    }

    #[test]
    fn equal_commit_times_go_to_the_greater_node_name() {
        let t = Instant::now();
        let writes = [w(-1, "a", 5, Site::A, t), w(-1, "b", 5, Site::B, t)];
        let held: BTreeMap<i64, String> = [(-1, "b".into())].into();
        assert!(judge(&writes, &held).not_latest.is_empty());
    }
}
