//! Health alerts against real Alertmanagers (Debian's 0.25): they appear with pgmesh's
//! labels, are resolved when the region recovers, and every Alertmanager of the set gets
//! them even when another one is unreachable.

use std::collections::BTreeMap;
use std::time::Duration;

use pgmesh::control::health::{HealthState, Signal, SignalStatus};
use pgmesh::testkit::{ActiveAlert, Alertmanager};
use pgmesh::traffic::alert::{
    Alerter, AlertmanagerConfig, REGION_DEGRADED, REGION_FAILED, SIGNAL_FAILING,
};

const WAIT: Duration = Duration::from_secs(10);

/// A runtime whose two workers post while the test thread polls Alertmanager.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(urls: Vec<String>) -> AlertmanagerConfig {
    AlertmanagerConfig {
        urls,
        labels: BTreeMap::from([("env".to_string(), "test".to_string())]),
        resend: Duration::from_secs(30),
        timeout: Duration::from_secs(2),
    }
}

fn signals(slot: SignalStatus, postgres: SignalStatus) -> Vec<Signal> {
    vec![
        Signal::new("postgres", 6.0, postgres, "select 1"),
        Signal::new("slot", 1.0, slot, "slot pgmesh_b inactive for 40 s"),
        Signal::new("etcd", 1.0, SignalStatus::Ok, "member reachable"),
    ]
}

fn find<'a>(alerts: &'a [ActiveAlert], name: &str, cluster: &str) -> Option<&'a ActiveAlert> {
    alerts
        .iter()
        .find(|a| a.label("alertname") == name && a.label("cluster") == cluster)
}

fn ours(alerts: &[ActiveAlert], cluster: &str) -> usize {
    alerts
        .iter()
        .filter(|a| a.label("cluster") == cluster)
        .count()
}

#[test]
fn a_degraded_region_fires_alerts_with_its_labels_and_they_resolve_when_it_recovers() {
    let am = Alertmanager::start().unwrap();
    let rt = runtime();
    let _entered = rt.enter();
    let alerter = Alerter::spawn(config(vec![am.url()]));
    let cluster = "c-degraded";

    alerter.update(
        cluster,
        "a",
        HealthState::Degraded,
        &signals(SignalStatus::Fail, SignalStatus::Ok),
    );
    let alerts = am
        .wait_alerts("the degraded region's two alerts", WAIT, |a| {
            ours(a, cluster) == 2
        })
        .unwrap();
    let region = find(&alerts, REGION_DEGRADED, cluster).expect("region alert");
    assert_eq!(region.label("node"), "a");
    assert_eq!(region.label("severity"), "warning");
    assert_eq!(region.label("state"), "degraded");
    assert_eq!(region.label("env"), "test");
    assert_eq!(region.state, "active");
    assert!(
        region.annotations["description"].contains("slot failing"),
        "{region:?}"
    );
    let signal = find(&alerts, SIGNAL_FAILING, cluster).expect("signal alert");
    assert_eq!(signal.label("signal"), "slot");
    assert_eq!(signal.label("node"), "a");
    assert_eq!(signal.label("severity"), "warning");
    assert!(signal.annotations["description"].contains("inactive for 40 s"));
    let before = am.received().unwrap();

    alerter.update(
        cluster,
        "a",
        HealthState::Healthy,
        &signals(SignalStatus::Ok, SignalStatus::Ok),
    );
    // 0.25 lists no resolved alert: gone means resolved (they were posted active for
    // 4 × 30 s, so they cannot have expired by now) ...
    am.wait_alerts("the alerts resolved", WAIT, |a| ours(a, cluster) == 0)
        .unwrap();
    // ... and Alertmanager counted the two resolves.
    let after = am.received().unwrap();
    assert_eq!(
        after.resolved - before.resolved,
        2,
        "{before:?} -> {after:?}"
    );
    assert!(alerter.status().firing.is_empty());
}

#[test]
fn every_alertmanager_gets_the_alerts_and_an_unreachable_one_is_reported() {
    let am1 = Alertmanager::start().unwrap();
    let am2 = Alertmanager::start().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let rt = runtime();
    let _entered = rt.enter();
    let alerter = Alerter::spawn(config(vec![am1.url(), closed.clone(), am2.url()]));
    let cluster = "c-failed";

    alerter.update(
        cluster,
        "b",
        HealthState::Failed,
        &signals(SignalStatus::Ok, SignalStatus::Fail),
    );
    for am in [&am1, &am2] {
        let alerts = am
            .wait_alerts("the failed region's alerts", WAIT, |a| {
                ours(a, cluster) == 2
            })
            .unwrap();
        let region = find(&alerts, REGION_FAILED, cluster).expect("region alert");
        assert_eq!(
            (region.label("severity"), region.label("node")),
            ("critical", "b")
        );
        let signal = find(&alerts, SIGNAL_FAILING, cluster).expect("signal alert");
        assert_eq!(signal.label("signal"), "postgres");
    }
    assert!(rt.block_on(alerter.settle(WAIT)), "the posts did not end");
    let status = alerter.status();
    let target = |url: &str| status.targets.iter().find(|t| t.url == url).unwrap();
    assert_eq!(target(&am1.url()).ok, Some(true), "{status:?}");
    assert_eq!(target(&am2.url()).ok, Some(true), "{status:?}");
    let down = target(&closed);
    assert_eq!(down.ok, Some(false), "{status:?}");
    let error = down.error.as_deref().unwrap();
    assert!(
        error.contains(&format!("POST {closed}/api/v2/alerts"))
            && error.to_lowercase().contains("connection refused"),
        "{error}"
    );
    let mut firing = status.firing.clone();
    firing.sort();
    assert_eq!(
        firing,
        vec![
            "PgmeshRegionFailed".to_string(),
            "PgmeshSignalFailing signal=postgres".to_string()
        ]
    );

    // Recovery resolves on both, the unreachable one notwithstanding.
    alerter.update(
        cluster,
        "b",
        HealthState::Healthy,
        &signals(SignalStatus::Ok, SignalStatus::Ok),
    );
    for am in [&am1, &am2] {
        am.wait_alerts("the alerts resolved", WAIT, |a| ours(a, cluster) == 0)
            .unwrap();
    }
}
