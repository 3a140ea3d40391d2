//! The control plane decides in one place: `decide(observation) -> Decision`, pure, so every
//! case (lease lost, peer dead, witness lost, flapping probe, frozen agent, switchover,
//! maintenance, failback, forced failover) is a row in a table of tests.
//!
//! The rule that prevents split brain: a region may take application writes only while it
//! owns at least one endpoint under a live lease (and is neither failed nor in
//! maintenance). Everything else follows from it:
//! - no live lease → fence (the other side takes the endpoints only after etcd expired
//!   the lease, which is later than our deadline by the safety margin);
//! - local primary failed → release every endpoint at once, so the peer need not wait for
//!   the lease to expire;
//! - an endpoint without an owner is taken by its home region, or by another region when
//!   the home region is gone (no member key: its lease expired), failed or in maintenance;
//! - a planned move (switchover, maintenance, failback) is a *drain*: the old owner stops
//!   writes, waits until the new owner applied everything it committed, then moves the key
//!   with a compare-and-swap on the epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::health::HealthState;
use crate::config::{ControlConfig, Failback};

/// The owner of an endpoint, as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub lease: i64,
    /// The owner key's mod revision.
    pub epoch: i64,
}

/// A live agent (its `member/<node>` key exists, so its lease does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub lease: i64,
    pub health: HealthState,
}

/// A planned move of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switchover {
    pub from: String,
    pub to: String,
    pub epoch: i64,
    pub deadline_ms: i64,
    /// Writes stop only once the target has nearly caught up (state `draining`); before
    /// that (state `requested`) the old owner keeps serving while it waits.
    pub stopping: bool,
}

/// The cluster as one etcd read saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub owners: BTreeMap<String, Owner>,
    pub members: BTreeMap<String, Member>,
    pub maintenance: BTreeSet<String>,
    pub switchovers: BTreeMap<String, Switchover>,
}

/// Everything one decision needs.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub me: &'a str,
    pub config: &'a ControlConfig,
    /// Our lease id while it is live by our own clock (before the fence deadline).
    pub lease: Option<i64>,
    /// We lost a lease less than one TTL ago: take nothing new yet (a forced failover or
    /// the peer's takeover may still be landing).
    pub quarantine: bool,
    /// The last etcd read; `fresh` is false when this tick's read failed.
    pub view: &'a ClusterView,
    pub fresh: bool,
    /// The region's confirmed health (see [`super::health::HealthTracker`]).
    pub health: HealthState,
    /// The local primary's fence flag; `None` when it cannot be read.
    pub db_fenced: Option<bool>,
    /// Endpoints an operator forced onto this region (`pgmesh failover --force`) that
    /// etcd does not show as ours yet.
    pub forced: &'a [String],
    /// Endpoints a peer's database lists as forced onto that peer (endpoint → peer), as
    /// last read. The peer takes writes for them without a lease until its agent records
    /// the move in etcd, which can be late (or never, while it cannot reach etcd): this
    /// region must neither take nor keep them meanwhile.
    pub forced_elsewhere: &'a BTreeMap<String, String>,
    /// Auto failback: our lag stayed under the bound long enough.
    pub caught_up: bool,
    /// Regions without a live agent, and how long this agent has seen them so.
    pub absent_for: &'a BTreeMap<String, Duration>,
    /// Endpoints whose owner this agent saw disappear (lease expired or released).
    pub vanished: &'a BTreeSet<String>,
    /// The primary may still hold a write permit we gave it (it is not known fenced and
    /// the permit has not run out): handing an endpoint over now could let both write.
    pub permit_outstanding: bool,
    /// Endpoints whose traffic layer (pgbouncer) has not yet paused their clients for the
    /// planned move in progress: writes stop only once it has, so no transaction is cut.
    pub traffic_unheld: &'a BTreeSet<String>,
    pub now_ms: i64,
}

/// Why an endpoint is being moved away in a planned way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainCause {
    Switchover,
    Maintenance,
}

/// What the executors do, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Fence {
        reason: String,
    },
    Release {
        endpoint: String,
        epoch: i64,
        reason: String,
    },
    /// Before a switchover stops writes: wait (serving) until `to` is nearly caught up,
    /// so the write pause holds only the last moments of replication, not a backlog.
    CatchUp {
        endpoint: String,
        to: String,
    },
    /// Before a switchover stops writes: have the traffic layer pause the endpoint's
    /// clients (pgbouncer PAUSE waits for running transactions), still serving.
    HoldTraffic {
        endpoint: String,
        epoch: i64,
    },
    /// Stop writes for `endpoint`, wait until `to` applied them, move it (CAS on `epoch`).
    Drain {
        endpoint: String,
        epoch: i64,
        to: String,
        to_lease: i64,
        cause: DrainCause,
    },
    AbortSwitchover {
        endpoint: String,
        reason: String,
    },
    /// The switchover intent is finished (or stale): remove it.
    ClearSwitchover {
        endpoint: String,
    },
    Acquire {
        endpoint: String,
        /// The region it is taken from (failover), `None` for a home endpoint.
        takeover_from: Option<String>,
        reason: String,
    },
    /// Put the endpoint on our lease whoever owns it: the operator forced it.
    ClaimForced {
        endpoint: String,
    },
    /// etcd shows the forced endpoint as ours: the operator's decision is recorded, so
    /// the database forgets it (else it would keep the region writable without a lease).
    ClearForced {
        endpoint: String,
    },
    /// Ask the current owner to hand our home endpoint back (auto failback).
    RequestFailback {
        endpoint: String,
        from: String,
        epoch: i64,
    },
    Unfence {
        reason: String,
    },
}

/// The decision of one tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Whether this region may take application writes now.
    pub writable: bool,
    /// Endpoints this region owns and serves (not draining), for `/owner/<endpoint>`.
    pub serving: Vec<String>,
    /// One sentence: why the region is (not) writable.
    pub why: String,
}

/// The operator's forced failovers as this region sees them: its own rows (`here`) and
/// what its peers' databases say (`elsewhere`, endpoint → (peer, when)). An endpoint
/// forced both here and onto a peer (the command could not reach the other database)
/// goes to the later decision. Returns the endpoints forced here, those forced onto a
/// peer (endpoint → peer), and this region's rows a later decision superseded.
#[must_use]
pub fn resolve_forced(
    here: &[(String, i64)],
    elsewhere: &BTreeMap<String, (String, i64)>,
) -> (Vec<String>, BTreeMap<String, String>, Vec<String>) {
    let mut forced = Vec::new();
    let mut stale = Vec::new();
    let mut away: BTreeMap<String, String> = elsewhere
        .iter()
        .map(|(e, (n, _))| (e.clone(), n.clone()))
        .collect();
    for (endpoint, at) in here {
        match elsewhere.get(endpoint) {
            Some((_, there)) if there > at => stale.push(endpoint.clone()),
            _ => {
                away.remove(endpoint);
                forced.push(endpoint.clone());
            }
        }
    }
    (forced, away, stale)
}

#[must_use]
pub fn decide(o: &Observation<'_>) -> Decision {
    let view = o.view;
    let in_maintenance = view.maintenance.contains(o.me);
    let owned: Vec<(&String, &Owner)> = match o.lease {
        Some(lease) => view
            .owners
            .iter()
            .filter(|(_, w)| w.node == o.me && w.lease == lease)
            .collect(),
        None => Vec::new(),
    };
    let mut actions = Vec::new();
    let mut draining = BTreeSet::new();

    // Planned moves of what we own.
    for (endpoint, owner) in &owned {
        let Some(sw) = view.switchovers.get(endpoint.as_str()) else {
            continue;
        };
        if sw.from != o.me || sw.epoch != owner.epoch {
            continue;
        }
        let target = view.members.get(&sw.to);
        let refusal = if o.now_ms > sw.deadline_ms {
            Some(format!("switchover to {} timed out", sw.to))
        } else if sw.to == o.me {
            Some("the endpoint is already here".to_string())
        } else {
            match target {
                None => Some(format!("{} is not alive (no lease)", sw.to)),
                Some(m) if m.health == HealthState::Failed => Some(format!("{} is failed", sw.to)),
                Some(_) if view.maintenance.contains(&sw.to) => {
                    Some(format!("{} is in maintenance", sw.to))
                }
                Some(_) => None,
            }
        };
        match (refusal, target) {
            (Some(reason), _) => actions.push(Action::AbortSwitchover {
                endpoint: endpoint.to_string(),
                reason,
            }),
            (None, Some(_)) if !sw.stopping => actions.push(Action::CatchUp {
                endpoint: endpoint.to_string(),
                to: sw.to.clone(),
            }),
            (None, Some(_)) if o.traffic_unheld.contains(endpoint.as_str()) => {
                actions.push(Action::HoldTraffic {
                    endpoint: endpoint.to_string(),
                    epoch: owner.epoch,
                });
            }
            (None, Some(m)) => {
                draining.insert(endpoint.to_string());
                actions.push(Action::Drain {
                    endpoint: endpoint.to_string(),
                    epoch: owner.epoch,
                    to: sw.to.clone(),
                    to_lease: m.lease,
                    cause: DrainCause::Switchover,
                });
            }
            (None, None) => {}
        }
    }
    if in_maintenance {
        let target = view.members.iter().find(|(n, m)| {
            n.as_str() != o.me && m.health != HealthState::Failed && !view.maintenance.contains(*n)
        });
        for (endpoint, owner) in &owned {
            if draining.contains(endpoint.as_str()) {
                continue;
            }
            draining.insert(endpoint.to_string());
            if let Some((to, m)) = target {
                actions.push(Action::Drain {
                    endpoint: endpoint.to_string(),
                    epoch: owner.epoch,
                    to: to.clone(),
                    to_lease: m.lease,
                    cause: DrainCause::Maintenance,
                });
            }
        }
    }
    // Intents that are done or stale: the current owner (or the target) clears them.
    for (endpoint, sw) in &view.switchovers {
        match view.owners.get(endpoint) {
            Some(w) if w.node == sw.to && w.node == o.me && o.lease == Some(w.lease) => actions
                .push(Action::ClearSwitchover {
                    endpoint: endpoint.clone(),
                }),
            Some(w) if w.node == o.me && o.lease == Some(w.lease) && w.epoch != sw.epoch => actions
                .push(Action::ClearSwitchover {
                    endpoint: endpoint.clone(),
                }),
            _ => {}
        }
    }

    let forced_away: Vec<(&String, &Owner)> = owned
        .iter()
        .filter(|(e, _)| o.forced_elsewhere.contains_key(e.as_str()))
        .copied()
        .collect();
    let serving: Vec<String> = owned
        .iter()
        .map(|(e, _)| e.to_string())
        .filter(|e| !draining.contains(e) && !o.forced_elsewhere.contains_key(e))
        .collect();
    let forced_here = !o.forced.is_empty();
    let (writable, why) = if forced_here && (o.lease.is_none() || !o.fresh) {
        (
            true,
            format!(
                "forced writable by the operator (pgmesh failover --force {})",
                o.forced.join(", ")
            ),
        )
    } else if o.lease.is_none() {
        (false, "no live lease in etcd".to_string())
    } else if o.health == HealthState::Failed {
        (
            false,
            "the local primary failed its health probes".to_string(),
        )
    } else if in_maintenance {
        (false, "in maintenance (pgmesh fence)".to_string())
    } else if serving.is_empty() && !forced_here {
        let forced_note = o.forced_elsewhere.iter().next().map(|(e, n)| {
            format!("an operator forced {e} onto {n} (pgmesh failover --force), which takes writes without a lease until its agent records it")
        });
        let why = if let (true, Some(note)) = (owned.is_empty(), forced_note) {
            format!("owns no endpoint; {note}")
        } else if owned.is_empty() {
            "owns no endpoint".to_string()
        } else if !forced_away.is_empty() {
            let (e, _) = forced_away[0];
            format!(
                "an operator forced {e} onto {} (pgmesh failover --force)",
                o.forced_elsewhere[e.as_str()]
            )
        } else {
            "every endpoint it owns is being moved away".to_string()
        };
        (false, why)
    } else if serving.is_empty() {
        (
            true,
            format!("claiming forced endpoints {}", o.forced.join(", ")),
        )
    } else {
        (true, format!("owns {}", serving.join(", ")))
    };

    if !writable && o.db_fenced != Some(true) {
        actions.insert(
            0,
            Action::Fence {
                reason: why.clone(),
            },
        );
    }

    // A failed primary with a live agent hands its endpoints over at once — once it is
    // fenced, or its write permit ran out (a primary we cannot reach may come back
    // before that, with the permit still good).
    if o.health == HealthState::Failed && !o.permit_outstanding {
        for (endpoint, owner) in &owned {
            actions.push(Action::Release {
                endpoint: endpoint.to_string(),
                epoch: owner.epoch,
                reason: "the local primary failed its health probes".into(),
            });
        }
    }

    // An endpoint an operator forced onto a peer: hand the key over once our writes
    // stopped (the peer's agent claims it whoever holds it, but may not reach etcd).
    if !o.permit_outstanding && o.health != HealthState::Failed {
        for (endpoint, owner) in &forced_away {
            actions.push(Action::Release {
                endpoint: endpoint.to_string(),
                epoch: owner.epoch,
                reason: format!(
                    "an operator forced it onto {} (pgmesh failover --force)",
                    o.forced_elsewhere[endpoint.as_str()]
                ),
            });
        }
    }

    let may_take =
        o.lease.is_some() && o.fresh && o.health != HealthState::Failed && !in_maintenance;
    if may_take {
        for endpoint in o.forced {
            let ours = view
                .owners
                .get(endpoint)
                .is_some_and(|w| w.node == o.me && Some(w.lease) == o.lease);
            let endpoint = endpoint.clone();
            actions.push(if ours {
                Action::ClearForced { endpoint }
            } else {
                Action::ClaimForced { endpoint }
            });
        }
    }
    if may_take && !o.quarantine {
        for e in o.config.endpoints.values() {
            if view.owners.contains_key(&e.name)
                || o.forced.contains(&e.name)
                || o.forced_elsewhere.contains_key(&e.name)
            {
                continue;
            }
            if e.home == o.me {
                actions.push(Action::Acquire {
                    endpoint: e.name.clone(),
                    takeover_from: None,
                    reason: "home endpoint without an owner".into(),
                });
                continue;
            }
            // A home region without a live agent has lost its endpoint when we saw the
            // owner key go (its lease expired), or when it has not shown up for a whole
            // lease period (a cluster starting: the other agent may just be slower).
            // A region an operator forced an endpoint onto takes writes without a lease:
            // its own endpoints are not taken from it either (its clients may still come).
            let forced_writable = o.forced_elsewhere.values().any(|n| *n == e.home);
            let home_gone = match view.members.get(&e.home) {
                _ if forced_writable => None,
                None if o.vanished.contains(&e.name) => {
                    Some(format!("{} has no live lease", e.home))
                }
                None if o
                    .absent_for
                    .get(&e.home)
                    .is_some_and(|d| *d >= o.config.lease_ttl) =>
                {
                    Some(format!(
                        "{} has had no live agent for {:?}",
                        e.home, o.absent_for[&e.home]
                    ))
                }
                None => None,
                Some(m) if m.health == HealthState::Failed => {
                    Some(format!("{} reports its primary failed", e.home))
                }
                Some(_) if view.maintenance.contains(&e.home) => {
                    Some(format!("{} is in maintenance", e.home))
                }
                Some(_) => None,
            };
            if let Some(reason) = home_gone {
                actions.push(Action::Acquire {
                    endpoint: e.name.clone(),
                    takeover_from: Some(e.home.clone()),
                    reason: format!("failover: {reason}"),
                });
            }
        }
    }

    // Auto failback of our home endpoints once we caught up.
    if let Failback::Auto { .. } = o.config.failback {
        if may_take && o.caught_up && o.health == HealthState::Healthy {
            for e in o.config.homed_at(o.me) {
                if view.switchovers.contains_key(&e.name)
                    || o.forced_elsewhere.contains_key(&e.name)
                {
                    continue;
                }
                if let Some(w) = view.owners.get(&e.name) {
                    if w.node != o.me {
                        actions.push(Action::RequestFailback {
                            endpoint: e.name.clone(),
                            from: w.node.clone(),
                            epoch: w.epoch,
                        });
                    }
                }
            }
        }
    }

    if writable && o.db_fenced == Some(true) {
        actions.push(Action::Unfence {
            reason: why.clone(),
        });
    }
    Decision {
        actions,
        writable,
        serving,
        why,
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
