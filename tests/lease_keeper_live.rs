//! The lease keeper against a real three-member etcd: a keep-alive stream takes renewals
//! without waiting for answers and pairs each answer with its own send time; the lease
//! lives through the leader's death (renewals queued at a follower during the election are
//! answered in the new term and confirmed there); the keeper's streams outlast an
//! election that etcd would cut short for a client that requires a leader.

use std::time::{Duration, Instant};

use pgmesh::control::lease::LeaseChange;
use pgmesh::control::lease_keeper::{EtcdTarget, LeaseKeeper};
use pgmesh::control::lease_stream::{Answer, KeepAliveStream};
use pgmesh::control::store::{Leader, Store};
use pgmesh::testkit::EtcdCluster;

const TIMEOUT: Duration = Duration::from_millis(1500);

#[test]
fn renewals_sent_back_to_back_are_answered_in_order_each_with_its_own_send_time() {
    let etcd = EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::connect(&etcd.endpoints(), "keeper", TIMEOUT)
            .await
            .unwrap();
        let lease = grant(&store, Duration::from_secs(10)).await;
        let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = KeepAliveStream::start(
            lease,
            Duration::from_secs(1),
            TIMEOUT,
            store.keep_alive(lease).await.unwrap(),
            move |a| {
                let _ = tx.send(a);
            },
        );
        let mut sent = Vec::new();
        for _ in 0..4 {
            sent.push(Instant::now());
            stream.renew().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(stream.unanswered() <= 4);
        for (i, before) in sent.iter().enumerate() {
            let a = tokio::time::timeout(Duration::from_secs(10), answers.recv())
                .await
                .expect("an answer within 10 s")
                .expect("the stream's reader is alive");
            let Answer::Renewed(r) = a else {
                panic!("renewal {i}: {a:?}");
            };
            assert_eq!(r.lease, lease);
            assert!(
                r.ttl >= Duration::from_secs(9),
                "renewal {i}: ttl {:?}",
                r.ttl
            );
            // Paired with its own request: sent after the call began, before the next.
            assert!(r.sent >= *before, "renewal {i} paired with an earlier send");
            if let Some(next) = sent.get(i + 1) {
                assert!(r.sent <= *next, "renewal {i} paired with a later send");
            }
        }
        assert_eq!(stream.unanswered(), 0);
    });
}

#[test]
fn the_lease_lives_through_the_leaders_death() {
    let mut etcd = EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let endpoints = etcd.endpoints();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut keeper = LeaseKeeper::spawn(
            Duration::from_secs(4),
            Duration::from_millis(1200),
            EtcdTarget {
                endpoints: endpoints.clone(),
                cluster: "keeper".into(),
                timeout: TIMEOUT,
            },
        );
        let granted = Instant::now() + Duration::from_secs(30);
        let lease = loop {
            if let Some(id) = keeper.view().live(Instant::now()) {
                break id;
            }
            assert!(Instant::now() < granted, "no lease within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Renewing for a while first: both paths open.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = leader_index(&endpoints).await;
        etcd.kill_member(leader).unwrap();
        let killed = Instant::now();
        // The fact to wait for: a renewal sent after the election confirmed, i.e. the
        // deadline more than a TTL minus margin past the kill plus the longest election.
        let confirmed_after = killed + Duration::from_millis(2800 + 2500);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let v = keeper.view();
            assert_eq!(
                v.live(Instant::now()),
                Some(lease),
                "the lease lapsed {:?} after the leader died",
                killed.elapsed()
            );
            if v.deadline().is_some_and(|d| d > confirmed_after) {
                break;
            }
            assert!(
                Instant::now() < until,
                "no renewal confirmed after the election"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let changes = keeper.changes();
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, LeaseChange::Lost { .. })),
            "{changes:?}"
        );
        keeper.revoke().await;
    });
}

/// etcd cancels a leader-requiring stream after three election timeouts without a
/// leader; the keeper's (`Leader::Awaited`) stays open and its renewal queued during the
/// election is answered once a leader is back. The same renewal on a leader-requiring
/// stream in the same run must fail, or the member never went long enough without one.
#[test]
fn a_keepers_stream_waits_out_a_long_election_where_a_leader_requiring_one_is_cut() {
    let etcd = EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let member = etcd.endpoint(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let long = Duration::from_secs(30);
        let awaited = Store::connect_ranked(
            std::slice::from_ref(&member),
            "keeper",
            long,
            (1, Leader::Awaited),
        )
        .await
        .pop()
        .expect("member 0 answers");
        let required = Store::connect(&[member], "keeper", long).await.unwrap();
        let lease = grant(&awaited.store, Duration::from_secs(60)).await;
        let open = |store: Store| async move {
            let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
            let stream = KeepAliveStream::start(
                lease,
                Duration::from_secs(1),
                long,
                store.keep_alive(lease).await.unwrap(),
                move |a| {
                    let _ = tx.send(a);
                },
            );
            (stream, answers)
        };
        let (mut kept, mut kept_answers) = open(awaited.store.clone()).await;
        let (mut cut, mut cut_answers) = open(required).await;
        // Member 0 alone: no leader until the others run again.
        etcd.pause_member(1).unwrap();
        etcd.pause_member(2).unwrap();
        wait_leaderless(&etcd.endpoint(0)).await;
        cut.renew().await.unwrap();
        // The fact that the leaderless time was long enough: the leader-requiring
        // stream is cancelled (three election timeouts of 1 s after member 0 lost it).
        let cut_answer = tokio::time::timeout(Duration::from_secs(20), cut_answers.recv())
            .await
            .expect("etcd cancels the leader-requiring stream within 20 s");
        assert!(
            matches!(&cut_answer, Some(Answer::Failed(why)) if why.contains("leader")),
            "{cut_answer:?}"
        );
        // Still no leader: a renewal on the keeper's stream, which outlived the cut, waits
        // at member 0 (etcd gives a renewal 7 s to find a leader, so it is sent only now).
        kept.renew().await.unwrap();
        etcd.resume_member(1).unwrap();
        etcd.resume_member(2).unwrap();
        let kept_answer = tokio::time::timeout(Duration::from_secs(20), kept_answers.recv())
            .await
            .expect("the keeper's stream answers once a leader is back");
        assert!(
            matches!(&kept_answer, Some(Answer::Renewed(r)) if r.lease == lease),
            "{kept_answer:?}"
        );
        assert_eq!(kept.unanswered(), 0);
    });
}

/// A lease of `ttl`, once the cluster has a leader to grant it (within 30 s).
async fn grant(store: &Store, ttl: Duration) -> i64 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match store.grant(ttl).await {
            Ok(id) => return id,
            Err(e) => assert!(Instant::now() < until, "no lease within 30 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the member at `endpoint` names no leader (within 30 s).
async fn wait_leaderless(endpoint: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    loop {
        if c.status().await.is_ok_and(|s| s.leader() == 0) {
            return;
        }
        assert!(
            Instant::now() < until,
            "member 0 still names a leader after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which endpoint is the leader now.
async fn leader_index(endpoints: &[String]) -> usize {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, e) in endpoints.iter().enumerate() {
            if let Ok(mut c) = etcd_client::Client::connect([e.as_str()], None).await {
                if let Ok(s) = c.status().await {
                    if s.header().is_some_and(|h| h.member_id() == s.leader()) {
                        return i;
                    }
                }
            }
        }
        assert!(Instant::now() < until, "no leader within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
