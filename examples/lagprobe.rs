//! Steady-state replication lag at a fixed offered rate (issue 5), for any engine that
//! replicates `bench` (the ../shared/bench/peers.py table) from node A to node B.
//!
//! Writers on A run an open-loop schedule of single-statement transactions at `--rate`
//! per second: 60 % inserts of new rows, 30 % updates of recent rows, 10 % deletes. Every
//! insert and update stamps the row with a global sequence number (`k`) and its write
//! time (`ts = clock_timestamp()`, i.e. just before its commit, which is synchronous so
//! the walsender may send it at once). A poller on B reads the rows
//! whose `k` it has not seen yet, about every millisecond, and records for each one the
//! time from its write on A to the moment it was seen on B (same machine, same clock).
//! Prints one JSON line: offered and achieved rate, samples, lag p50/p90/p99/max in ms.
//!
//! `cargo run --release --example lagprobe -- --a DSN --b DSN [--rate 5000] [--seconds 15]`

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;

/// Sequence numbers start here, far above anything the other scenarios write.
const K_BASE: i64 = 1_000_000_000_000;
/// Row ids of this probe (bench ids from other scenarios stay below).
const ID_BASE: i64 = 2_000_000_000;

struct Args {
    a: String,
    b: String,
    rate: u64,
    seconds: u64,
    clients: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        a: String::new(),
        b: String::new(),
        rate: 5000,
        seconds: 15,
        clients: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--a" => args.a = value.clone(),
            "--b" => args.b = value.clone(),
            "--rate" => args.rate = num()?,
            "--seconds" => args.seconds = num()?,
            "--clients" => args.clients = num()?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.a.is_empty() || args.b.is_empty() {
        return Err(
            "usage: lagprobe --a DSN --b DSN [--rate N] [--seconds N] [--clients N]".into(),
        );
    }
    Ok(args)
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .map_err(|e| format!("connect {dsn}: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// xorshift: a cheap, seedable choice of operation and row.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn writer(
    dsn: String,
    id: u64,
    args: Arc<Args>,
    start: Instant,
    seq: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
) -> Result<(), String> {
    let c = connect(&dsn).await?;
    // A logical walsender sends only WAL that is flushed. With asynchronous commit (the
    // harness's clusters default to it) a commit waits for the WAL writer, up to
    // wal_writer_delay (200 ms), before any engine can see it; that would dominate every
    // engine's lag. Committing synchronously is what OLTP applications do anyway.
    c.batch_execute("SET synchronous_commit = on")
        .await
        .map_err(|e| e.to_string())?;
    let ins = c
        .prepare("INSERT INTO bench(id, k, v, node, ts) VALUES ($1::int8, $2::int8, md5($2::int8::text), 'a', clock_timestamp())")
        .await
        .map_err(|e| e.to_string())?;
    let upd = c
        .prepare("UPDATE bench SET k = $2::int8, v = md5($2::int8::text), ts = clock_timestamp() WHERE id = $1::int8")
        .await
        .map_err(|e| e.to_string())?;
    let del = c
        .prepare("DELETE FROM bench WHERE id = $1")
        .await
        .map_err(|e| e.to_string())?;
    let total = args.rate * args.seconds;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (id + 1);
    let mut mine: Vec<i64> = Vec::new();
    let mut n = id;
    while n < total {
        // Open loop: transaction n is due at n / rate, whoever is late.
        let due = start + Duration::from_secs_f64(n as f64 / args.rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let roll = xorshift(&mut rng) % 10;
        let k = K_BASE + seq.fetch_add(1, Ordering::Relaxed) as i64;
        if roll < 6 || mine.is_empty() {
            let row = ID_BASE + k - K_BASE;
            c.execute(&ins, &[&row, &k])
                .await
                .map_err(|e| e.to_string())?;
            mine.push(row);
        } else {
            // Recent rows: the hot end of a real table.
            let pick = mine.len() - 1 - (xorshift(&mut rng) as usize % mine.len().min(200));
            if roll < 9 {
                c.execute(&upd, &[&mine[pick], &k])
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                let row = mine.swap_remove(pick);
                c.execute(&del, &[&row]).await.map_err(|e| e.to_string())?;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
        n += args.clients;
    }
    Ok(())
}

async fn poller(
    dsn: String,
    stop: Arc<AtomicU64>,
    lags: Arc<Mutex<Vec<f64>>>,
) -> Result<(), String> {
    let c = connect(&dsn).await?;
    let q = c
        .prepare("SELECT k, extract(epoch FROM ts)::float8 FROM bench WHERE k > $1")
        .await
        .map_err(|e| e.to_string())?;
    let mut seen: HashSet<i64> = HashSet::new();
    let mut high = K_BASE - 1;
    while stop.load(Ordering::Relaxed) == 0 {
        // Commits finish slightly out of order across writers: look back a little.
        let rows = c
            .query(&q, &[&(high - 2000).max(K_BASE - 1)])
            .await
            .map_err(|e| e.to_string())?;
        let at = now_epoch();
        let mut lag = Vec::new();
        for r in rows {
            let k: i64 = r.get(0);
            if seen.insert(k) {
                let ts: f64 = r.get(1);
                lag.push((at - ts) * 1000.0);
                high = high.max(k);
            }
        }
        lags.lock().map_err(|e| e.to_string())?.extend(lag);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("lagprobe: {e}");
            std::process::exit(2);
        }
    };
    let stop = Arc::new(AtomicU64::new(0));
    let lags = Arc::new(Mutex::new(Vec::new()));
    let poll = tokio::spawn(poller(args.b.clone(), stop.clone(), lags.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seq = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let writers: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(writer(
                args.a.clone(),
                i,
                args.clone(),
                start,
                seq.clone(),
                done.clone(),
            ))
        })
        .collect();
    for w in writers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("lagprobe: writer: {e}"),
            Err(e) => eprintln!("lagprobe: writer: {e}"),
        }
    }
    let wrote_s = start.elapsed().as_secs_f64();
    // Let the tail arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(1, Ordering::Relaxed);
    if let Ok(Err(e)) = poll.await {
        eprintln!("lagprobe: poller: {e}");
    }
    let mut v = lags.lock().map(|l| l.clone()).unwrap_or_default();
    v.sort_by(|a, b| a.total_cmp(b));
    let done = done.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "offered_txn_per_s": args.rate,
            "achieved_txn_per_s": (done as f64 / wrote_s).round(),
            "seconds": args.seconds,
            "samples": v.len(),
            "lag_ms_p50": (percentile(&v, 0.50) * 10.0).round() / 10.0,
            "lag_ms_p90": (percentile(&v, 0.90) * 10.0).round() / 10.0,
            "lag_ms_p99": (percentile(&v, 0.99) * 10.0).round() / 10.0,
            "lag_ms_max": (percentile(&v, 1.0) * 10.0).round() / 10.0,
        })
    );
}
