//! The acknowledged-write logger: a client that inserts rows one transaction at a time
//! through whatever node a router names, and logs every commit the server acknowledged.
//! After a failover or switchover, every logged row must exist on the surviving nodes:
//! that is what "no acknowledged write lost" means, and the log proves it.
//!
//! It also measures what a client sees: the longest gap between two acknowledged commits
//! (the write pause) and the statements that failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::spawn_with_runtime;

/// Where the next write should go: a DSN, or `None` while no node takes writes.
pub type Router = Box<dyn FnMut() -> Option<String> + Send>;

/// What the writer saw.
#[derive(Clone, Debug, Default)]
pub struct WriterReport {
    /// Ids whose commit was acknowledged, in order, with the DSN that acknowledged them.
    pub acked: Vec<(i64, String)>,
    /// When each of `acked` was acknowledged (same order).
    pub acked_at: Vec<Instant>,
    /// Statements or connections that failed (each retried with the next id).
    pub failures: u64,
    /// The last few failure messages (for test output).
    pub errors: Vec<String>,
    /// The longest time between two acknowledged commits, and when it began.
    pub max_gap: Duration,
    pub max_gap_started: Option<Instant>,
}

/// A running writer; [`AckWriter::stop`] ends it and returns the report.
pub struct AckWriter {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<WriterReport>>,
    thread: Option<JoinHandle<Option<()>>>,
}

impl AckWriter {
    /// Starts inserting `(id, payload)` into `table` (it must have `id bigint primary
    /// key` and a text column `payload`), ids from `first_id` up, pausing `pace` between
    /// commits.
    pub fn start(table: &str, first_id: i64, pace: Duration, mut router: Router) -> AckWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(WriterReport::default()));
        let (s, r, table) = (stop.clone(), report.clone(), table.to_string());
        let thread = spawn_with_runtime(move || async move {
            let mut id = first_id;
            let mut session: Option<(String, tokio_postgres::Client)> = None;
            let mut last_ack = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let Some(dsn) = router() else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                if session
                    .as_ref()
                    .is_none_or(|(d, c)| *d != dsn || c.is_closed())
                {
                    session = None;
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio_postgres::connect(&dsn, tokio_postgres::NoTls),
                    )
                    .await
                    {
                        Ok(Ok((c, conn))) => {
                            tokio::spawn(conn);
                            session = Some((dsn.clone(), c));
                        }
                        Ok(Err(e)) => {
                            fail(&r, format!("connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        Err(_) => {
                            fail(&r, "connect timed out".into());
                            continue;
                        }
                    }
                }
                let Some((_, client)) = session.as_ref() else {
                    continue;
                };
                // The simple protocol, values inline: what works through pgbouncer's
                // transaction pooling (no server-side prepared statements).
                let sql = format!(
                    "INSERT INTO {table} (id, payload) VALUES ({id}, '{}')",
                    format!("written via {dsn}").replace('\'', "''")
                );
                let result =
                    tokio::time::timeout(Duration::from_secs(5), client.simple_query(&sql)).await;
                match result {
                    Ok(Ok(_)) => {
                        let now = Instant::now();
                        if let Ok(mut rep) = r.lock() {
                            let gap = now.duration_since(last_ack);
                            if gap > rep.max_gap {
                                rep.max_gap = gap;
                                rep.max_gap_started = Some(last_ack);
                            }
                            rep.acked.push((id, dsn.clone()));
                            rep.acked_at.push(now);
                        }
                        last_ack = now;
                    }
                    Ok(Err(e)) => {
                        fail(&r, crate::sqlconn::pg_message(&e));
                        session = None;
                    }
                    Err(_) => {
                        fail(&r, "insert timed out".into());
                        session = None;
                    }
                }
                id += 1;
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
        });
        AckWriter {
            stop,
            report,
            thread: Some(thread),
        }
    }

    /// What the writer saw so far.
    #[must_use]
    pub fn report(&self) -> WriterReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Stops it and returns the final report.
    pub fn stop(mut self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.report()
    }
}

impl WriterReport {
    /// The longest time between two acknowledged commits within `[from, to]` (the write
    /// pause a client saw around an event in that window); counts from `from` when the
    /// first commit after it came later.
    #[must_use]
    pub fn max_gap_within(&self, from: Instant, to: Instant) -> Duration {
        let mut prev = from;
        let mut max = Duration::ZERO;
        for &t in self.acked_at.iter().filter(|&&t| t > from) {
            max = max.max(t.duration_since(prev));
            prev = t;
            if t > to {
                break;
            }
        }
        max
    }
}

impl Drop for AckWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fail(r: &Mutex<WriterReport>, message: String) {
    if let Ok(mut rep) = r.lock() {
        rep.failures += 1;
        if rep.errors.len() >= 20 {
            rep.errors.remove(0);
        }
        rep.errors.push(message);
    }
}
