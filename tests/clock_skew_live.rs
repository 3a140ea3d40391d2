//! Last-writer-wins with one node's clock seconds ahead (libfaketime on node b's
//! PostgreSQL and sidecar, moved while they run): the nodes must end identical, each row
//! as the write with the latest commit time left it, and a write made on top of a peer's
//! "future" version must not lose to it (the apply waits for its clock,
//! `pgmesh::conflict::causality`).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgmesh::testkit::{versions_under_test, Cluster};
use support::cli::{pgmesh, text, write_config};
use support::live::{cluster_on, shiftable_clock, turn, wait_converged_or_show, wait_for, Sidecar};

const DDL: &str = "CREATE TABLE hot (id int PRIMARY KEY, v text NOT NULL)";
const ROWS: i32 = 20;
const SKEW_MS: i64 = 3_000;

/// One acknowledged update: row, value, commit time (Unix µs by its node's clock), node.
type Write = (i32, String, i64, &'static str);

#[test]
fn a_node_seconds_ahead_converges_and_keeps_overwrites_of_its_future_versions() {
    let _turn = turn();
    for major in versions_under_test() {
        run(major);
    }
}

/// Nodes a and b (b's server on a shiftable clock) with `hot` set up for replication;
/// the directory holds the clock's file and the config.
struct Pair {
    dir: tempfile::TempDir,
    clock: pgmesh::testkit::faketime::FakeClock,
    a: Cluster,
    b: Cluster,
    cfg: std::path::PathBuf,
}

fn pair(major: u32) -> Pair {
    let (dir, clock) = shiftable_clock();
    let a = Cluster::start(major).unwrap();
    let b = cluster_on(major, &clock);
    a.psql(DDL).unwrap();
    b.psql(DDL).unwrap();
    let cfg = write_config(dir.path(), &a, &b, "\"public.hot\"");
    let out = pgmesh(&["setup"], &cfg);
    assert_eq!(out.status.code(), Some(0), "setup: {}", text(&out));
    Pair {
        dir,
        clock,
        a,
        b,
        cfg,
    }
}

fn run(major: u32) {
    let Pair {
        dir,
        clock,
        a,
        b,
        cfg,
    } = pair(major);
    let sa = Sidecar::spawn(&cfg, "a", dir.path().join("a.log"));
    let sb = Sidecar::spawn_with_env(&cfg, "b", dir.path().join("b.log"), &clock.env(true));
    a.psql(&format!(
        "INSERT INTO hot SELECT g, 'start' FROM generate_series(1, {ROWS}) g"
    ))
    .unwrap();
    wait_for(
        &b,
        "SELECT count(*) FROM hot",
        &ROWS.to_string(),
        "the rows on b",
        Duration::from_secs(60),
    );

    clock.set_offset_ms(SKEW_MS).unwrap();
    wait_clock_ahead(&b, Duration::from_millis(2_500));

    // b writes a row; a sees b's version and writes on top of it. a's write came
    // second, on top of b's: it must be the one both nodes keep.
    b.psql("UPDATE hot SET v = 'b-first' WHERE id = 1").unwrap();
    wait_for(
        &a,
        "SELECT v FROM hot WHERE id = 1",
        "b-first",
        "b's write on a",
        Duration::from_secs(30),
    );
    a.psql("UPDATE hot SET v = 'a-on-top' WHERE id = 1")
        .unwrap();
    wait_converged_or_show(&a, &b, &["hot"], Duration::from_secs(60), &[&sa, &sb]);
    assert_eq!(
        a.psql("SELECT v FROM hot WHERE id = 1").unwrap(),
        "a-on-top"
    );
    sa.wait_log("ahead of this node's clock", Duration::from_secs(10));

    // Both write the same rows at once with b's clock ahead. Then b's clock is stepped
    // back, once every version it stamped is in the past of real time (a applied them
    // all, and it waits for its clock): a step back while b's "future" versions are
    // still ahead of real time makes b's next writes older than its own earlier ones
    // (README: what last-writer-wins does under clock skew).
    let mut writes = concurrent_writes(&a, &b, "skewed", Duration::from_secs(4));
    wait_converged_or_show(&a, &b, &["hot"], Duration::from_secs(90), &[&sa, &sb]);
    clock.set_offset_ms(0).unwrap();
    wait_clock_ahead(&b, Duration::ZERO);
    writes.extend(concurrent_writes(&a, &b, "healed", Duration::from_secs(2)));
    wait_converged_or_show(&a, &b, &["hot"], Duration::from_secs(90), &[&sa, &sb]);
    assert_rows_hold_the_latest_commit(&a, &writes, major);
    drop((sa, sb));
}

/// Waits until b's server clock is at least `ahead` ahead of this machine's (or, for
/// zero, back within half a second of it).
fn wait_clock_ahead(b: &Cluster, ahead: Duration) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let server: f64 = b
            .psql("SELECT extract(epoch FROM clock_timestamp())")
            .unwrap()
            .parse()
            .unwrap();
        let here = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let off = server - here;
        let there = if ahead.is_zero() {
            off.abs() < 0.5
        } else {
            off >= ahead.as_secs_f64()
        };
        if there {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "b's clock is {off:.3} s off, want {ahead:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Updates random rows (2..=ROWS) on both nodes at once for `how_long`, logging every
/// acknowledged write with its commit time.
fn concurrent_writes(a: &Cluster, b: &Cluster, tag: &str, how_long: Duration) -> Vec<Write> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (wa, wb) = tokio::join!(
            writer(a.dsn(), "a", tag, how_long, 7),
            writer(b.dsn(), "b", tag, how_long, 13)
        );
        wa.into_iter().chain(wb).collect()
    })
}

async fn writer(
    dsn: String,
    node: &'static str,
    tag: &str,
    how_long: Duration,
    seed: u64,
) -> Vec<Write> {
    let c = support::client(&dsn).await;
    let mut rng = seed;
    let mut out = Vec::new();
    let end = Instant::now() + how_long;
    let mut n = 0;
    while Instant::now() < end {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let id = 2 + i32::try_from((rng >> 33) % (ROWS as u64 - 1)).unwrap();
        n += 1;
        let v = format!("{node}-{tag}-{n}");
        let row = c
            .query_one(
                "UPDATE hot SET v = $1 WHERE id = $2 RETURNING txid_current()",
                &[&v, &id],
            )
            .await
            .unwrap();
        let xid: i64 = row.get(0);
        let ts: i64 = c
            .query_one(
                "SELECT (extract(epoch FROM pg_xact_commit_timestamp($1::text::xid)) * 1000000)::int8",
                &[&xid.to_string()],
            )
            .await
            .unwrap()
            .get(0);
        out.push((id, v, ts, node));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    out
}

/// Every written row holds the write with the latest commit time (ties: the greater
/// node name), as last-writer-wins promises.
fn assert_rows_hold_the_latest_commit(a: &Cluster, writes: &[Write], major: u32) {
    let mut winner: BTreeMap<i32, &Write> = BTreeMap::new();
    for w in writes {
        let e = winner.entry(w.0).or_insert(w);
        if (w.2, w.3) > (e.2, e.3) {
            *e = w;
        }
    }
    let got: BTreeMap<i32, String> = a
        .psql("SELECT id || '=' || v FROM hot WHERE id > 1")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(id, v)| (id.parse().unwrap(), v.to_string()))
        .collect();
    let wrong: Vec<String> = winner
        .iter()
        .filter(|(id, w)| got.get(id) != Some(&w.1))
        .map(|(id, w)| {
            format!(
                "row {id}: holds {:?}, latest commit was {:?}",
                got.get(id),
                w
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "PG{major}: rows not at their latest write:\n{}",
        wrong.join("\n")
    );
    assert!(
        writes.len() > 100,
        "too few writes to mean anything: {}",
        writes.len()
    );
}

/// A peer's commit times are not quite in WAL order: a backend takes its commit time
/// before it inserts its commit record, so under load a transaction can follow one that
/// committed later. Rows keep their downstream transaction's commit time, so one that
/// committed earlier than a transaction already batched must start a batch of its own
/// (`txn::Step::Began::before_batch`): every row must keep a commit time no earlier than
/// its own. Here b's clock steps back before each of five transactions written while a's
/// sidecar is down, which a then reads in one go. converge_random's oracle caught a
/// write applied under an earlier time once in CI before this rule.
#[test]
fn rows_keep_commit_times_no_earlier_than_their_own_when_the_peer_commits_out_of_order() {
    let _turn = turn();
    for major in versions_under_test() {
        let Pair {
            dir,
            clock,
            a,
            b,
            cfg,
        } = pair(major);
        for i in 1..=5i64 {
            clock.set_offset_ms(-300 * i).unwrap();
            b.psql(&format!("INSERT INTO hot VALUES ({i}, 'b{i}')"))
                .unwrap();
        }
        let times = |c: &Cluster| -> Vec<i64> {
            c.psql(
                "SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint
                   FROM hot ORDER BY id",
            )
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
        };
        let on_b = times(&b);
        assert!(
            on_b.windows(2).all(|w| w[1] < w[0]),
            "PG{major}: b's commit times should fall in WAL order: {on_b:?}"
        );
        let sa = Sidecar::spawn(&cfg, "a", dir.path().join("a.log"));
        wait_for(
            &a,
            "SELECT count(*) FROM hot",
            "5",
            "b's rows on a",
            Duration::from_secs(60),
        );
        let on_a = times(&a);
        assert!(
            on_a.iter().zip(&on_b).all(|(a, b)| a >= b),
            "PG{major}: a row applied on a carries a commit time earlier than its own on b:\n a: {on_a:?}\n b: {on_b:?}"
        );
        drop(sa);
    }
}
