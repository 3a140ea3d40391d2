//! `[control] etcd_leader` against a real three-member etcd: the agents' placement task
//! moves the leader to the named member, and back after someone moved it away.

use std::time::{Duration, Instant};

use pgmesh::control::placement::keep_leader;
use pgmesh::testkit::EtcdCluster;

/// The leader's member id and each endpoint's member id, as etcd reports them now.
async fn leader_and_ids(endpoints: &[String]) -> Option<(u64, Vec<u64>)> {
    let mut leader = 0;
    let mut ids = Vec::new();
    for e in endpoints {
        let mut c = etcd_client::Client::connect([e.as_str()], None)
            .await
            .ok()?;
        let s = c.status().await.ok()?;
        leader = s.leader();
        ids.push(s.header()?.member_id());
    }
    (leader != 0).then_some((leader, ids))
}

async fn wait_leader(endpoints: &[String], want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((leader, _)) = leader_and_ids(endpoints).await {
            if leader == want {
                return;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_etcd_leader_is_kept_on_the_named_member() {
    let etcd = EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let endpoints = etcd.endpoints();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (leader, ids) = loop {
            if let Some(found) = leader_and_ids(&endpoints).await {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Keep it on a member that does not lead now (the testkit names them m0, m1, m2).
        let target = ids.iter().position(|&id| id != leader).unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(keep_leader(
            endpoints.clone(),
            format!("m{target}"),
            Duration::from_secs(2),
            pgmesh::control::placement::Limits {
                settle: Duration::from_secs(1),
                max_round_trip: Duration::from_millis(250),
            },
            stop,
        ));
        wait_leader(&endpoints, ids[target], "the named member leads").await;
        // Someone moves it away: it comes back.
        let other = (target + 1) % 3;
        let mut c = etcd_client::Client::connect([endpoints[target].as_str()], None)
            .await
            .unwrap();
        c.move_leader(ids[other]).await.unwrap();
        wait_leader(&endpoints, ids[other], "the operator's move took effect").await;
        wait_leader(&endpoints, ids[target], "the named member leads again").await;
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the placement task stops when asked")
            .unwrap();
    });
}
