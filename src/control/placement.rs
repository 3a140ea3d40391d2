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
//! How: each agent surveys every member every [`CHECK_EVERY`]; when all of them answer,
//! quickly, and agree that another member has led for [`SETTLE`], it asks the leader to
//! hand over (etcd's `MoveLeader`, which waits for the chosen member to catch up). Only a
//! whole, agreeing, healthy cluster moves: during a partition or an election nothing is
//! touched, and neither on a slow or lossy WAN (a member slower to answer than a
//! sixteenth of the lease): there a change of leader fails the renewals in flight, and
//! reconnecting across such a WAN took both regions past their lease's slack (the
//! `degraded-wan` drill, 300 ms round trips with 5 % loss, fenced both when the leader
//! was moved in the middle of it). The
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
    /// How long its status call took.
    pub round_trip: Duration,
}

/// The survey of every configured member; `None` entries did not answer.
#[derive(Clone, Debug, Default)]
pub struct Survey {
    pub members: Vec<Option<Seen>>,
    /// The id of the member named in `[control] etcd_leader`, if the member list has it.
    pub preferred: Option<u64>,
}

/// When a move is allowed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long another member must have led a whole, quick cluster ([`SETTLE`]).
    pub settle: Duration,
    /// Every member's status round trip must be at most this (`lease_ttl / 16`).
    pub max_round_trip: Duration,
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
    limits: Limits,
) -> Step {
    let Some(preferred) = survey.preferred else {
        *away_since = None;
        return Step::Stay;
    };
    let all: Option<Vec<&Seen>> = survey
        .members
        .iter()
        .map(|m| m.as_ref().filter(|s| s.round_trip <= limits.max_round_trip))
        .collect();
    let Some(all) = all else {
        // A member did not answer, or slowly: not now, and the clock starts again once
        // the cluster is whole and quick.
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
    if now.duration_since(since) < limits.settle {
        return Step::Wait;
    }
    *away_since = None;
    Step::Move {
        via: via.endpoint.clone(),
        to: preferred,
    }
}

/// Surveys and moves until `stop` flips. `name` is the member to keep the leader on.
pub async fn keep_leader(
    endpoints: Vec<String>,
    name: String,
    timeout: Duration,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut away_since = None;
    let mut clients: Vec<Option<Client>> = vec![None; endpoints.len()];
    let mut missing_warned = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let survey = survey(&endpoints, &mut clients, &name, timeout).await;
        if survey.preferred.is_none() && survey.members.iter().all(Option::is_some) {
            if !missing_warned {
                tracing::warn!(member = %name, "[control] etcd_leader names no etcd member (etcdctl member list shows their names); the etcd leader stays wherever etcd elects it");
                missing_warned = true;
            }
            continue;
        }
        missing_warned = false;
        if let Step::Move { via, to } = decide(&survey, &mut away_since, Instant::now(), limits) {
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

/// Asks every member for its status (each on its own connection, kept between surveys,
/// all at once) and one of them for the member list.
async fn survey(
    endpoints: &[String],
    clients: &mut [Option<Client>],
    name: &str,
    timeout: Duration,
) -> Survey {
    let asks = endpoints
        .iter()
        .zip(clients.iter_mut())
        .map(|(e, slot)| async move {
            let ask = async {
                if slot.is_none() {
                    *slot = Client::connect([e.as_str()], Some(options(timeout)))
                        .await
                        .ok();
                }
                let c = slot.as_mut()?;
                let began = Instant::now();
                let status = c.status().await.ok()?;
                Some(Seen {
                    endpoint: e.clone(),
                    id: status.header()?.member_id(),
                    leader: status.leader(),
                    round_trip: began.elapsed(),
                })
            };
            let seen = tokio::time::timeout(timeout, ask).await.ok().flatten();
            if seen.is_none() {
                *slot = None;
            }
            seen
        });
    let members = futures_util::future::join_all(asks).await;
    let mut preferred = None;
    for c in clients.iter_mut().flatten() {
        if let Ok(Ok(list)) = tokio::time::timeout(timeout, c.member_list()).await {
            preferred = list
                .members()
                .iter()
                .find(|m| m.name() == name)
                .map(etcd_client::Member::id);
            break;
        }
    }
    Survey { members, preferred }
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

    const LIMITS: Limits = Limits {
        settle: SETTLE,
        max_round_trip: Duration::from_millis(250),
    };

    fn seen(id: u64, leader: u64) -> Option<Seen> {
        Some(Seen {
            endpoint: format!("http://m{id}:2379"),
            id,
            leader,
            round_trip: Duration::from_millis(80),
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
        assert_eq!(decide(&s, &mut away, t0, LIMITS), Step::Wait);
        assert_eq!(decide(&s, &mut away, t0 + SETTLE / 2, LIMITS), Step::Wait);
        assert_eq!(
            decide(&s, &mut away, t0 + SETTLE, LIMITS),
            Step::Move {
                via: "http://m1:2379".into(),
                to: 3
            }
        );
        // The clock starts again after a move.
        assert_eq!(decide(&s, &mut away, t0 + SETTLE * 2, LIMITS), Step::Wait);
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
            // A member answers, but slower than the limit (a degraded WAN).
            vec![
                seen(1, 1),
                seen(2, 1),
                Some(Seen {
                    round_trip: Duration::from_millis(400),
                    ..seen(3, 1).unwrap()
                }),
            ],
            // The leader named is not among the members that answered.
            vec![seen(1, 9), seen(2, 9), seen(3, 9)],
        ];
        for members in cases {
            let mut away = Some(t0);
            let s = survey(members.clone());
            assert_eq!(
                decide(&s, &mut away, late, LIMITS),
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
        assert_eq!(decide(&s, &mut away, late, LIMITS), Step::Stay);
    }

    #[test]
    fn a_gap_in_the_survey_restarts_the_settle_time() {
        let t0 = Instant::now();
        let mut away = None;
        let whole = survey(vec![seen(1, 1), seen(2, 1), seen(3, 1)]);
        let gap = survey(vec![seen(1, 1), None, seen(3, 1)]);
        assert_eq!(decide(&whole, &mut away, t0, LIMITS), Step::Wait);
        assert_eq!(decide(&gap, &mut away, t0 + SETTLE / 2, LIMITS), Step::Stay);
        assert_eq!(decide(&whole, &mut away, t0 + SETTLE, LIMITS), Step::Wait);
        assert!(matches!(
            decide(&whole, &mut away, t0 + SETTLE * 2, LIMITS),
            Step::Move { .. }
        ));
    }
}
