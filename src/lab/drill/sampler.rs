//! Watches the endpoint while a drill runs: every 50 ms, which regions' agents say they
//! serve `app-eu` (what HAProxy asks) and whether each region's database takes an
//! application write (rolled back). The timeline gives detection, fence and takeover
//! times and counts moments with two owners.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::testkit::spawn_with_runtime;

use crate::testkit::http_get_at;

/// One look at both regions.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    /// Region a, region b: the agent answered 200 on `/owner/app-eu`.
    pub serves: [bool; 2],
    /// Region a, region b: the database took the application's write.
    pub writable: [bool; 2],
}

/// What to sample: each region's agent address and application DSN.
#[derive(Clone, Debug)]
pub struct Targets {
    pub agents: [SocketAddr; 2],
    pub app_dsns: [String; 2],
    pub endpoint: String,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Per region, why its database last refused the probe (for the report).
    refusals: Arc<Mutex<[Option<String>; 2]>>,
    thread: Option<JoinHandle<Option<()>>>,
}

const EVERY: Duration = Duration::from_millis(50);

impl Sampler {
    #[must_use]
    pub fn start(t: Targets) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(Mutex::new([None, None]));
        let (s, out, why) = (stop.clone(), samples.clone(), refusals.clone());
        let thread = spawn_with_runtime(move || async move {
            let mut clients: [Option<tokio_postgres::Client>; 2] = [None, None];
            let path = format!("/owner/{}", t.endpoint);
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let mut serves = [false; 2];
                let mut writable = [false; 2];
                for i in 0..2 {
                    serves[i] = http_get_at(t.agents[i], &path, Duration::from_millis(200))
                        .is_ok_and(|r| r.status == 200);
                    match probe_write(&mut clients[i], &t.app_dsns[i]).await {
                        Ok(()) => writable[i] = true,
                        Err(e) => {
                            if let Ok(mut w) = why.lock() {
                                w[i] = Some(e);
                            }
                        }
                    }
                }
                if let Ok(mut v) = out.lock() {
                    v.push(Sample {
                        at,
                        serves,
                        writable,
                    });
                }
                tokio::time::sleep_until((at + EVERY).into()).await;
            }
        });
        Sampler {
            stop,
            samples,
            refusals,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the timeline, and per region why its database last
    /// refused the probe.
    pub fn stop(mut self) -> (Vec<Sample>, [Option<String>; 2]) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let samples = self.samples.lock().map(|v| v.clone()).unwrap_or_default();
        let why = self.refusals.lock().map(|w| w.clone()).unwrap_or_default();
        (samples, why)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An application write, rolled back, on a kept session (reconnected after an error);
/// why it failed otherwise.
async fn probe_write(client: &mut Option<tokio_postgres::Client>, dsn: &str) -> Result<(), String> {
    let limit = Duration::from_millis(400);
    if client
        .as_ref()
        .is_none_or(tokio_postgres::Client::is_closed)
    {
        *client = None;
        match tokio::time::timeout(limit, tokio_postgres::connect(dsn, tokio_postgres::NoTls)).await
        {
            Ok(Ok((c, conn))) => {
                tokio::spawn(conn);
                *client = Some(c);
            }
            Ok(Err(e)) => return Err(format!("connect: {}", db_text(&e))),
            Err(_) => return Err(format!("connect: no answer within {limit:?}")),
        }
    }
    let Some(c) = client.as_ref() else {
        return Err("no session".into());
    };
    let r = tokio::time::timeout(
        limit,
        c.batch_execute("BEGIN; INSERT INTO orders VALUES (-1, 'probe'); ROLLBACK"),
    )
    .await;
    let why = match r {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => db_text(&e),
        Err(_) => format!("no answer within {limit:?}"),
    };
    *client = None;
    Err(why)
}

/// A server error's message and SQLSTATE, else the client's description.
pub fn db_text(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(
        || e.to_string(),
        |d| format!("{} ({})", d.message(), d.code().code()),
    )
}

/// What the timeline says, in seconds from `fault`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// The first sample from `fault` on where the owner stopped serving or the other
    /// region began to.
    pub detection_s: Option<f64>,
    /// The first sample from `fault` on from which the old owner's database refused
    /// writes until the heal.
    pub fence_s: Option<f64>,
    /// The first sample from `fault` on where the other region served the endpoint.
    pub takeover_s: Option<f64>,
    pub dual_owner_samples: u64,
    pub samples: u64,
    /// Samples during the fault in which the old owner's database refused the write.
    pub refused_samples: u64,
}

/// Reads the timeline: `owner` is the region index that served before the fault.
#[must_use]
pub fn read_timeline(samples: &[Sample], owner: usize, fault: Instant, heal: Instant) -> Timeline {
    let other = 1 - owner;
    let secs = |s: &Sample| s.at.saturating_duration_since(fault).as_secs_f64();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= fault && s.at <= heal)
        .collect();
    let detection_s = during
        .iter()
        .find(|s| !s.serves[owner] || s.serves[other])
        .map(|s| secs(s));
    let takeover_s = during.iter().find(|s| s.serves[other]).map(|s| secs(s));
    // Fenced: refused from this sample on, through the heal.
    let fence_s = during
        .iter()
        .rposition(|s| s.writable[owner])
        .map_or(during.first().map(|s| secs(s)), |i| {
            during.get(i + 1).map(|s| secs(s))
        });
    Timeline {
        detection_s,
        fence_s,
        takeover_s,
        dual_owner_samples: samples
            .iter()
            .filter(|s| s.serves[0] && s.serves[1])
            .count() as u64,
        samples: samples.len() as u64,
        refused_samples: during.iter().filter(|s| !s.writable[owner]).count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(rows: &[(u64, [bool; 2], [bool; 2])]) -> (Vec<Sample>, Instant) {
        let t0 = Instant::now();
        let v = rows
            .iter()
            .map(|&(ms, serves, writable)| Sample {
                at: t0 + Duration::from_millis(ms),
                serves,
                writable,
            })
            .collect();
        (v, t0)
    }

    #[test]
    fn failover_times_come_from_the_first_samples_that_show_them() {
        let (s, t0) = timeline(&[
            (0, [true, false], [true, true]),
            (1000, [true, false], [true, true]),
            (2000, [false, false], [false, true]),
            (3000, [false, true], [false, true]),
            (4000, [false, true], [false, true]),
        ]);
        let t = read_timeline(
            &s,
            0,
            t0 + Duration::from_millis(500),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(t.detection_s, Some(1.5));
        assert_eq!(t.fence_s, Some(1.5));
        assert_eq!(t.takeover_s, Some(2.5));
        assert_eq!(t.dual_owner_samples, 0);
        assert_eq!(t.refused_samples, 3);
    }

    #[test]
    fn a_region_writable_again_before_the_heal_was_not_fenced_yet() {
        let (s, t0) = timeline(&[
            (0, [true, false], [false, true]),
            (100, [true, true], [true, true]),
            (200, [true, false], [true, true]),
        ]);
        let t = read_timeline(&s, 0, t0, t0 + Duration::from_secs(1));
        assert_eq!(t.fence_s, None);
        assert_eq!(t.dual_owner_samples, 1);
        assert_eq!(t.detection_s, Some(0.1));
        // Never writable during the fault: fenced from the first sample.
        let (s, t0) = timeline(&[(0, [false, true], [false, true])]);
        assert_eq!(read_timeline(&s, 0, t0, t0).fence_s, Some(0.0));
    }
}
