//! `pgmesh drill`: break the cross-region lab on purpose under load and measure what a
//! user would see. Each drill writes through the client site and the regions' HAProxies
//! with the acknowledged-write logger, samples who serves `app-eu` and which database
//! takes writes, injects its fault, holds it, heals it, waits for convergence, runs
//! `pgmesh verify`, and reports detection, fence, takeover, client RTO, RPO, lost and
//! in-doubt writes, two-owner moments, divergent rows and recorded conflicts.
//!
//! Correctness expectations are checks (a failed one fails the drill); timing targets
//! are reported beside them and summarized over trials.

pub mod hot_rows;
pub mod report;
pub mod sampler;
pub mod scenarios;
mod slot_loss;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use report::DrillReport;
use sampler::{read_timeline, Sampler, Targets};
pub use scenarios::{Failover, Scenario};

use super::regions::{LabError, RegionsLab};
use super::topology::{Service, Site};
use crate::testkit::{AckWriter, WriterReport};

/// The targets (RELIABILITY.md).
pub const TARGET_DETECTION: Duration = Duration::from_secs(3);
pub const TARGET_FENCE: Duration = Duration::from_secs(4);
pub const TARGET_RTO: Duration = Duration::from_secs(10);

/// How a drill runs.
#[derive(Clone, Debug, Default)]
pub struct DrillOptions {
    /// Shorter holds (CI): every scenario in a few seconds.
    pub short: bool,
    pub trial: u32,
}

/// How long the lab may take to settle before and after a drill.
const SETTLE: Duration = Duration::from_secs(90);
/// How long replication may take to bring both nodes together after healing.
const CONVERGE: Duration = Duration::from_secs(90);

/// Runs one drill on `lab` (left healed and serving from home for the next one).
pub fn run(lab: &mut RegionsLab, s: Scenario, o: &DrillOptions) -> DrillReport {
    let mut r = DrillReport {
        scenario: s.name().to_string(),
        trial: o.trial,
        postgres: lab.postgres(Site::A).major(),
        passed: true,
        ..DrillReport::default()
    };
    if let Err(e) = drill(lab, s, o, &mut r) {
        r.fail(e.to_string());
    }
    r
}

fn drill(
    lab: &mut RegionsLab,
    s: Scenario,
    o: &DrillOptions,
    r: &mut DrillReport,
) -> Result<(), LabError> {
    if let Some(site) = s.etcd_leader() {
        lab.move_etcd_leader(site)?;
    }
    settle_home(lab)?;
    if s == Scenario::ClockSkew {
        hot_rows::prepare(lab)?;
    }
    let conflicts_before = conflicts(lab);
    let base = next_id(lab)?;
    let sampler = Sampler::start(targets(lab));
    let client = lab.client_dsn();
    let writer = AckWriter::start(
        "orders",
        base,
        Duration::from_millis(5),
        Box::new(move || Some(client.clone())),
    );
    std::thread::sleep(if o.short {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    });
    r.owners.push(owner(lab));
    r.started_at = crate::pgtime::rfc3339_now();
    let fault = Instant::now();
    let hold = s.hold(o.short);
    scenarios::inject(lab, s, fault + hold)?;
    let hot = (s == Scenario::ClockSkew).then(|| {
        let dsns = targets(lab).app_dsns;
        hot_rows::HotWriters::start(
            &[(Site::A, dsns[0].clone()), (Site::B, dsns[1].clone())],
            &format!("t{}", o.trial),
        )
    });
    // Hold the fault; a failover scenario also waits for the takeover (up to 30 s).
    let mut taken_over_at = None;
    loop {
        let elapsed = fault.elapsed();
        if taken_over_at.is_none() && lab.serves(Site::B, "app-eu") {
            taken_over_at = Some(Instant::now());
        }
        let waiting_for_takeover = matches!(s.failover(), Failover::Required | Failover::Planned)
            && taken_over_at.is_none()
            && elapsed < Duration::from_secs(30);
        // The sampler (which can lag a poll behind) must see a takeover before the heal.
        let seen = taken_over_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if elapsed >= hold && !waiting_for_takeover && seen {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(at) = taken_over_at {
        r.rpo_rows = Some(missing_on(
            lab,
            Site::B,
            &acked_before(&writer.report(), at),
        ));
    }
    r.owners.push(owner(lab));
    let hot = hot.map(|w| {
        // Stopped before b's clock is stepped back: a step back while b's "future"
        // versions are still ahead of real time is a hazard of its own (README).
        let log = w.stop();
        r.measure(
            "region b's clock skew as region a measured it",
            skew_seen(lab),
        );
        log
    });
    let healed = Instant::now();
    r.fault_held_s = healed.duration_since(fault).as_secs_f64();
    scenarios::heal(lab, s)?;
    let back = settle_after(lab, s);
    std::thread::sleep(Duration::from_secs(2));
    let report = writer.stop();
    let (samples, refusals) = sampler.stop();
    r.owners.push(owner(lab));
    let t = read_timeline(&samples, 0, fault, healed);
    r.detection_s = t.detection_s;
    r.fence_s = if s.old_owner_must_fence() {
        t.fence_s
    } else {
        None
    };
    // The drill's own poll saw it even if the sampler's slower round did not.
    r.takeover_s = match (t.takeover_s, taken_over_at) {
        (Some(t), _) => Some(t),
        (None, Some(at)) => Some(at.duration_since(fault).as_secs_f64()),
        (None, None) => None,
    };
    r.dual_owner_samples = t.dual_owner_samples;
    r.samples = t.samples;
    r.owner_refused_samples = t.refused_samples;
    r.refusal_a = refusals[0].clone().filter(|_| t.refused_samples > 0);
    r.client_rto_s = report.max_gap_within(fault, Instant::now()).as_secs_f64();
    r.acked_writes = report.acked.len() as u64;
    r.client_errors = report.failures;
    let acked: BTreeSet<i64> = report.acked.iter().map(|(id, _)| *id).collect();
    converge(lab, &acked);
    r.lost_writes = [Site::A, Site::B]
        .iter()
        .map(|&n| missing_on(lab, n, &acked))
        .max()
        .unwrap_or(0);
    let last = report.acked.last().map_or(base, |(id, _)| *id) + report.failures as i64 + 1;
    r.in_doubt_committed = in_doubt(lab, base, last, &acked);
    r.divergent_rows = verify(lab);
    r.conflicts_recorded = conflicts(lab).saturating_sub(conflicts_before);
    if let Some(log) = hot {
        judge_hot_rows(lab, &log, fault, r);
    }
    judge(s, r, back.err());
    Ok(())
}

/// How long after b's clock stepped its writes may be refused: a permit computed just
/// before the step and checked just after it is the step shorter (the safe side), until
/// the agent's next renewal and decision.
const STEP_SETTLES: Duration = Duration::from_secs(5);

/// The clock-skew drill's own checks: every row the two regions fought over holds its
/// latest commit on both nodes, and neither region's application was refused a write
/// once the step settled (each region's write permit is counted on its own clock).
fn judge_hot_rows(lab: &RegionsLab, log: &hot_rows::HotLog, stepped: Instant, r: &mut DrillReport) {
    let writes = log.writes.len();
    r.measure(
        "conflicting updates acknowledged (both regions)",
        writes.to_string(),
    );
    for node in [Site::A, Site::B] {
        match hot_rows::held(lab, node) {
            Ok(held) => {
                let v = hot_rows::judge(&log.writes, &held);
                if node == Site::A {
                    r.measure(
                        "rows won by an earlier write with a later commit time (the skew's bias)",
                        format!("{} of {}", v.decided_by_skew, v.rows_written),
                    );
                }
                r.check(
                    &format!("every contested row on {node} holds its latest commit"),
                    v.not_latest.is_empty() && writes > 0,
                    if v.not_latest.is_empty() {
                        format!("{} rows, {writes} updates", v.rows_written)
                    } else {
                        v.not_latest.join("; ")
                    },
                );
            }
            Err(e) => r.check(
                &format!("every contested row on {node} holds its latest commit"),
                false,
                e.to_string(),
            ),
        }
    }
    let at_step = log
        .failed
        .iter()
        .filter(|(_, at)| at.duration_since(stepped) < STEP_SETTLES)
        .count();
    let later = log.failed.len() - at_step;
    r.measure(
        "updates refused within 5 s of b's clock stepping forward",
        at_step.to_string(),
    );
    r.check(
        "both regions' applications wrote once the step settled",
        later == 0,
        log.last_error.as_ref().map_or_else(
            || "no update failed".to_string(),
            |e| format!("{later} updates failed later, last failure: {e}"),
        ),
    );
}

/// Region a's estimate of its clock minus b's (`pgmesh.clock_skew`), once it shows
/// the drill's skew (or what it shows after 20 s).
fn skew_seen(lab: &RegionsLab) -> String {
    let read = |l: &RegionsLab| {
        l.postgres(Site::A)
            .psql("SELECT skew_us FROM pgmesh.clock_skew WHERE peer = 'b'")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    let want = -scenarios::SKEW_MS * 1_000 * 8 / 10;
    let _ = lab.wait_for(
        "region a to measure b's skew",
        Duration::from_secs(20),
        |l| read(l).is_some_and(|us| us <= want),
    );
    read(lab).map_or("not measured".into(), |us| {
        format!("{:+.3} s", us as f64 / 1e6)
    })
}

/// Correctness checks and timing targets of `s` on the measured report.
fn judge(s: Scenario, r: &mut DrillReport, settle_error: Option<LabError>) {
    let secs = |v: Option<f64>| v.map_or("never".to_string(), |x| format!("{x:.2} s"));
    r.check(
        "never two owners",
        r.dual_owner_samples == 0,
        format!(
            "{} of {} samples had both agents serving app-eu",
            r.dual_owner_samples, r.samples
        ),
    );
    match s.failover() {
        Failover::Required | Failover::Planned => r.check(
            "region b took app-eu over",
            r.takeover_s.is_some(),
            format!("takeover after {}", secs(r.takeover_s)),
        ),
        Failover::Forbidden => {
            // A frozen agent answers no health check, so "who serves" during the fault
            // is not the test: region b never served, a serves after, and a's database
            // never refused a write (no fence, no lost lease).
            r.check(
                "app-eu did not move",
                r.takeover_s.is_none() && r.owners.last().is_some_and(|o| o == "a"),
                format!("owners {}", r.owners.join(" → ")),
            );
            r.check(
                "region a kept its write permission",
                r.owner_refused_samples == 0,
                format!(
                    "a's database refused writes in {} of the fault's samples{}",
                    r.owner_refused_samples,
                    r.refusal_a
                        .as_ref()
                        .map_or(String::new(), |w| format!(" (last: {w})"))
                ),
            );
        }
        Failover::Either => {}
    }
    if s.old_owner_must_fence() {
        r.check(
            "the old owner refused writes",
            r.fence_s.is_some(),
            format!("fenced after {}", secs(r.fence_s)),
        );
        if let Some(f) = r.fence_s {
            r.target(
                "old owner refuses writes ≤ 4 s",
                f <= TARGET_FENCE.as_secs_f64(),
                format!("{f:.2} s"),
            );
        }
    }
    r.check(
        "no acknowledged write lost",
        r.lost_writes == 0,
        format!(
            "{} of {} acknowledged rows missing after healing",
            r.lost_writes, r.acked_writes
        ),
    );
    r.check(
        "no divergent rows after healing",
        r.divergent_rows == Some(0),
        r.divergent_rows
            .map_or("pgmesh verify did not finish".to_string(), |d| {
                format!("{d} rows differ")
            }),
    );
    r.check(
        "the lab recovered",
        settle_error.is_none(),
        settle_error.map_or("both regions serve again".to_string(), |e| e.to_string()),
    );
    if let (Some(d), Failover::Required) = (r.detection_s, s.failover()) {
        r.target(
            "detection ≤ 3 s",
            d <= TARGET_DETECTION.as_secs_f64(),
            format!("{d:.2} s"),
        );
    }
    r.target(
        "client RTO ≤ 10 s",
        r.client_rto_s <= TARGET_RTO.as_secs_f64(),
        format!("{:.2} s", r.client_rto_s),
    );
}

fn targets(lab: &RegionsLab) -> Targets {
    let l = lab.layout();
    let dsn = |r: Site| {
        format!(
            "host={} port={} user=app dbname=postgres connect_timeout=1",
            l.site_addr(r),
            Service::Postgres(r).port(l)
        )
    };
    Targets {
        agents: [
            l.inside(Service::Agent(Site::A)),
            l.inside(Service::Agent(Site::B)),
        ],
        app_dsns: [dsn(Site::A), dsn(Site::B)],
        endpoint: "app-eu".to_string(),
    }
}

/// Who serves `app-eu` now (`-` for nobody, `a+b` for both).
fn owner(lab: &RegionsLab) -> String {
    match (lab.serves(Site::A, "app-eu"), lab.serves(Site::B, "app-eu")) {
        (true, true) => "a+b".into(),
        (true, false) => "a".into(),
        (false, true) => "b".into(),
        (false, false) => "-".into(),
    }
}

/// Waits until app-eu is served from home (a) and app-us from b; moves app-eu home by a
/// switchover when auto failback has not within half the time.
fn settle_home(lab: &RegionsLab) -> Result<(), LabError> {
    let half = SETTLE / 2;
    let home = |l: &RegionsLab| l.serves(Site::A, "app-eu") && l.serves(Site::B, "app-us");
    if lab
        .wait_for("app-eu on a and app-us on b", half, home)
        .is_ok()
    {
        return Ok(());
    }
    let _ = lab.pgmesh_here(&["switchover", "app-eu", "--to", "a", "--timeout", "30s"]);
    lab.wait_for("app-eu back on a (after a switchover)", half, home)
        .map(|_| ())
}

/// After healing: both agents answer and someone serves each endpoint; after
/// old-owner-returns, a has app-eu back (auto failback).
fn settle_after(lab: &RegionsLab, s: Scenario) -> Result<(), LabError> {
    if s == Scenario::OldOwnerReturns {
        return lab
            .wait_for("region a to get app-eu back (auto failback)", SETTLE, |l| {
                l.serves(Site::A, "app-eu") && !l.serves(Site::B, "app-eu")
            })
            .map(|_| ());
    }
    if s.failover() == Failover::Forbidden {
        return lab
            .wait_for("region a to serve app-eu again", SETTLE, |l| {
                l.serves(Site::A, "app-eu") && l.serves(Site::B, "app-us")
            })
            .map(|_| ());
    }
    lab.wait_for("both regions to serve again", SETTLE, |l| {
        l.agent_http(Site::A, "/health").is_some()
            && l.agent_http(Site::B, "/health").is_some()
            && (l.serves(Site::A, "app-eu") || l.serves(Site::B, "app-eu"))
            && (l.serves(Site::A, "app-us") || l.serves(Site::B, "app-us"))
    })
    .map(|_| ())
}

fn next_id(lab: &RegionsLab) -> Result<i64, LabError> {
    let max: i64 = lab
        .postgres(Site::A)
        .psql("SELECT greatest(max(id), 0) FROM orders")?
        .trim()
        .parse()
        .unwrap_or(0);
    // Room for the in-doubt check's range, and distinct from any earlier drill's; above
    // the negative ids of the sampler's probe and the contested rows.
    Ok(max + 1_000)
}

fn acked_before(report: &WriterReport, at: Instant) -> BTreeSet<i64> {
    report
        .acked
        .iter()
        .zip(&report.acked_at)
        .filter(|(_, t)| **t <= at)
        .map(|((id, _), _)| *id)
        .collect()
}

/// How many of `ids` `node` lacks (all of them when it cannot be asked).
fn missing_on(lab: &RegionsLab, node: Site, ids: &BTreeSet<i64>) -> u64 {
    if ids.is_empty() {
        return 0;
    }
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let held: u64 = lab
        .postgres(node)
        .psql(&format!("SELECT count(*) FROM orders WHERE id IN ({list})"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    ids.len() as u64 - held.min(ids.len() as u64)
}

/// Waits until both nodes hold every acknowledged row (or [`CONVERGE`] passed).
fn converge(lab: &RegionsLab, acked: &BTreeSet<i64>) {
    let _ = lab.wait_for("both nodes to hold every acknowledged row", CONVERGE, |l| {
        missing_on(l, Site::A, acked) == 0 && missing_on(l, Site::B, acked) == 0
    });
}

/// Rows in the writer's id range that no acknowledgement covers but that exist.
fn in_doubt(lab: &RegionsLab, first: i64, last: i64, acked: &BTreeSet<i64>) -> u64 {
    let mut found = BTreeSet::new();
    for node in [Site::A, Site::B] {
        if let Ok(out) = lab.postgres(node).psql(&format!(
            "SELECT id FROM orders WHERE id BETWEEN {first} AND {last}"
        )) {
            found.extend(out.lines().filter_map(|l| l.trim().parse::<i64>().ok()));
        }
    }
    found.difference(acked).count() as u64
}

/// `pgmesh verify --json`'s count of differing rows; `None` when it did not finish.
fn verify(lab: &RegionsLab) -> Option<u64> {
    let out = lab
        .pgmesh_here(&["verify", "--json", "--wait-timeout", "60"])
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return None;
    }
    v.get("differences").and_then(serde_json::Value::as_u64)
}

/// Conflicts both ledgers hold.
fn conflicts(lab: &RegionsLab) -> u64 {
    [Site::A, Site::B]
        .iter()
        .filter_map(|&n| {
            lab.postgres(n)
                .psql("SELECT count(*) FROM pgmesh.conflicts")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        })
        .sum()
}
