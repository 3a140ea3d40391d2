//! Keeps the etcd leader on one chosen member (`[control] etcd_leader`: in two regions
//! with a witness site, the witness's member).
//!
//! Why: when the leader's member dies with its region, etcd first elects a new leader
//! (one to two election timeouts), and the new leader restarts every lease at its full
//! TTL plus one election timeout (etcd's lessor `Promote`) — so the dead region's lease,
//! and with it its endpoints, is held 2-3 s longer than when the leader survives. A leader
//! on the witness never dies with a region; either region's writes to etcd cross the WAN
//! once either way.
//!
//! How: each agent surveys every member every [`CHECK_EVERY`]; when all of them answer
//! and agree that another member has led for [`SETTLE`], it asks the leader to hand over
//! (etcd's `MoveLeader`, which waits for the chosen member to catch up). Only a whole,
//! agreeing cluster moves: during a partition or an election nothing is touched. The
//! settle time keeps a leader that just changed (an election, an operator's or a drill's
//! `etcdctl move-leader`) where it is for a while. Both agents may ask at once; etcd
//! handles one transfer and refuses the other, which is harmless.
//!
//! Leadership is not safety here: lease deadlines are kept by quorum-confirmed renewals
//! in whatever term (`lease_keeper`), and a transfer only extends every lease once more.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the members are surveyed.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long another member must have led, in a whole and agreeing cluster, before the
/// leader is asked to hand over.
pub const SETTLE: Duration = Duration::from_secs(30);

/// What one member answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub endpoint: String,
    pub id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
}

/// The survey of every configured member; `None` entries did not answer.
#[derive(Clone, Debug, Default)]
pub struct Survey {
    pub members: Vec<Option<Seen>>,
    /// The id of the member named in `[control] etcd_leader`, if the member list has it.
    pub preferred: Option<u64>,
}

/// What to do after a survey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the leader is where it should be, or the cluster is not whole.
    Stay,
    /// Another member leads; it is asked to hand over once it has led for [`SETTLE`].
    Wait,
    /// Ask the leader at `via` to hand over to member `to`.
    Move { via: String, to: u64 },
}

/// The pure rule. `away_since` is when another member was first seen leading a whole
/// cluster (kept by the caller; updated here); it leads `settle` ([`SETTLE`]) before a
/// move.
#[must_use]
pub fn decide(
    survey: &Survey,
    away_since: &mut Option<Instant>,
    now: Instant,
    settle: Duration,
) -> Step {
    let Some(preferred) = survey.preferred else {
        *away_since = None;
        return Step::Stay;
    };
    let all: Option<Vec<&Seen>> = survey.members.iter().map(Option::as_ref).collect();
    let Some(all) = all else {
        // A member did not answer: not now, and the clock starts again once whole.
        *away_since = None;
        return Step::Stay;
    };
    let Some(first) = all.first() else {
        return Step::Stay;
    };
    let leader = first.leader;
    let agreed = leader != 0 && all.iter().all(|s| s.leader == leader);
    let via = all.iter().find(|s| s.id == leader);
    let has_preferred = all.iter().any(|s| s.id == preferred);
    let (true, Some(via), true) = (agreed, via, has_preferred) else {
        *away_since = None;
        return Step::Stay;
    };
    if leader == preferred {
        *away_since = None;
        return Step::Stay;
    }
    let since = *away_since.get_or_insert(now);
    if now.duration_since(since) < settle {
        return Step::Wait;
    }
    *away_since = None;
    Step::Move {
        via: via.endpoint.clone(),
        to: preferred,
    }
}

/// Surveys and moves until `stop` flips. `name` is the member to keep the leader on;
/// `settle` is [`SETTLE`] but in tests.
pub async fn keep_leader(
    endpoints: Vec<String>,
    name: String,
    timeout: Duration,
    settle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut away_since = None;
    let mut missing_warned = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let survey = survey(&endpoints, &name, timeout).await;
        if survey.preferred.is_none() && survey.members.iter().all(Option::is_some) {
            if !missing_warned {
                tracing::warn!(member = %name, "[control] etcd_leader names no etcd member (etcdctl member list shows their names); the etcd leader stays wherever etcd elects it");
                missing_warned = true;
            }
            continue;
        }
        missing_warned = false;
        if let Step::Move { via, to } = decide(&survey, &mut away_since, Instant::now(), settle) {
            match move_leader(&via, to, timeout).await {
                Ok(()) => {
                    tracing::info!(member = %name, from = %via, "moved the etcd leader to the member [control] etcd_leader names, so that it never dies with a region")
                }
                Err(e) => {
                    tracing::debug!(member = %name, from = %via, error = %e, "could not move the etcd leader (the other region's agent may have just done it)")
                }
            }
        }
    }
}

fn options(timeout: Duration) -> ConnectOptions {
    ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout)
}

/// Asks every member for its status (each on its own connection, at once) and one of
/// them for the member list.
async fn survey(endpoints: &[String], name: &str, timeout: Duration) -> Survey {
    let asks = endpoints.iter().map(|e| async move {
        let ask = async {
            let mut c = Client::connect([e.as_str()], Some(options(timeout)))
                .await
                .ok()?;
            let status = c.status().await.ok()?;
            let id = status.header()?.member_id();
            let seen = Seen {
                endpoint: e.clone(),
                id,
                leader: status.leader(),
            };
            Some((seen, c))
        };
        tokio::time::timeout(timeout, ask).await.ok().flatten()
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut preferred = None;
    for (_, c) in answers.iter().flatten() {
        let mut c = c.clone();
        if let Ok(Ok(list)) = tokio::time::timeout(timeout, c.member_list()).await {
            preferred = list
                .members()
                .iter()
                .find(|m| m.name() == name)
                .map(etcd_client::Member::id);
            break;
        }
    }
    Survey {
        members: answers.into_iter().map(|a| a.map(|(s, _)| s)).collect(),
        preferred,
    }
}

async fn move_leader(via: &str, to: u64, timeout: Duration) -> Result<(), String> {
    let work = async {
        let mut c = Client::connect([via], Some(options(timeout)))
            .await
            .map_err(|e| e.to_string())?;
        c.move_leader(to).await.map_err(|e| e.to_string())?;
        Ok(())
    };
    // A transfer waits for the chosen member to catch up: give it a few timeouts.
    match tokio::time::timeout(timeout * 3, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", timeout * 3)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: u64, leader: u64) -> Option<Seen> {
        Some(Seen {
            endpoint: format!("http://m{id}:2379"),
            id,
            leader,
        })
    }

    fn survey(members: Vec<Option<Seen>>) -> Survey {
        Survey {
            members,
            preferred: Some(3),
        }
    }

    #[test]
    fn a_leader_elsewhere_moves_to_the_preferred_member_after_settling() {
        let t0 = Instant::now();
        let mut away = None;
        let s = survey(vec![seen(1, 1), seen(2, 1), seen(3, 1)]);
        assert_eq!(decide(&s, &mut away, t0, SETTLE), Step::Wait);
        assert_eq!(decide(&s, &mut away, t0 + SETTLE / 2, SETTLE), Step::Wait);
        assert_eq!(
            decide(&s, &mut away, t0 + SETTLE, SETTLE),
            Step::Move {
                via: "http://m1:2379".into(),
                to: 3
            }
        );
        // The clock starts again after a move.
        assert_eq!(decide(&s, &mut away, t0 + SETTLE * 2, SETTLE), Step::Wait);
    }

    #[test]
    fn nothing_moves_unless_the_whole_cluster_answers_and_agrees() {
        let t0 = Instant::now();
        let late = t0 + SETTLE * 10;
        let cases = [
            // Already there.
            vec![seen(1, 3), seen(2, 3), seen(3, 3)],
            // A member is down (or cut off from us).
            vec![seen(1, 1), seen(2, 1), None],
            // An election: no leader, or members that disagree.
            vec![seen(1, 0), seen(2, 0), seen(3, 0)],
            vec![seen(1, 1), seen(2, 2), seen(3, 1)],
            // The leader named is not among the members that answered.
            vec![seen(1, 9), seen(2, 9), seen(3, 9)],
        ];
        for members in cases {
            let mut away = Some(t0);
            let s = survey(members.clone());
            assert_eq!(
                decide(&s, &mut away, late, SETTLE),
                Step::Stay,
                "{members:?}"
            );
            assert_eq!(away, None, "{members:?}");
        }
        // No preferred member in the list.
        let mut away = Some(t0);
        let s = Survey {
            members: vec![seen(1, 1), seen(2, 1), seen(3, 1)],
            preferred: None,
        };
        assert_eq!(decide(&s, &mut away, late, SETTLE), Step::Stay);
    }

    #[test]
    fn a_gap_in_the_survey_restarts_the_settle_time() {
        let t0 = Instant::now();
        let mut away = None;
        let whole = survey(vec![seen(1, 1), seen(2, 1), seen(3, 1)]);
        let gap = survey(vec![seen(1, 1), None, seen(3, 1)]);
        assert_eq!(decide(&whole, &mut away, t0, SETTLE), Step::Wait);
        assert_eq!(decide(&gap, &mut away, t0 + SETTLE / 2, SETTLE), Step::Stay);
        assert_eq!(decide(&whole, &mut away, t0 + SETTLE, SETTLE), Step::Wait);
        assert!(matches!(
            decide(&whole, &mut away, t0 + SETTLE * 2, SETTLE),
            Step::Move { .. }
        ));
    }
}
