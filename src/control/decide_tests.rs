//! Table of cases for [`decide`]: each names the situation and what must happen.

use super::*;
use crate::config::{Config, Env};

const CONFIG: &str = r#"
[nodes.a]
dsn = "host=127.0.0.1 port=1 user=postgres"
[nodes.b]
dsn = "host=127.0.0.1 port=2 user=postgres"
[replication]
tables = ["public.*"]
[control]
etcd = ["http://127.0.0.1:2379"]
[endpoints.app-eu]
home = "a"
[endpoints.app-us]
home = "b"
"#;

fn config() -> ControlConfig {
    static PARSED: std::sync::OnceLock<ControlConfig> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            Config::parse(CONFIG, "t.toml", &Env::from_pairs::<&str, &str>([]))
                .unwrap()
                .control
                .unwrap()
        })
        .clone()
}

const A_LEASE: i64 = 100;
const B_LEASE: i64 = 200;

fn member(lease: i64) -> Member {
    Member {
        lease,
        health: HealthState::Healthy,
    }
}

fn owner(node: &str, lease: i64, epoch: i64) -> Owner {
    Owner {
        node: node.into(),
        lease,
        epoch,
    }
}

/// Both alive and healthy, each owning its home endpoint.
fn steady() -> ClusterView {
    let mut v = ClusterView::default();
    v.members.insert("a".into(), member(A_LEASE));
    v.members.insert("b".into(), member(B_LEASE));
    v.owners.insert("app-eu".into(), owner("a", A_LEASE, 10));
    v.owners.insert("app-us".into(), owner("b", B_LEASE, 11));
    v
}

struct Case {
    view: ClusterView,
    me: &'static str,
    lease: Option<i64>,
    fresh: bool,
    quarantine: bool,
    health: HealthState,
    db_fenced: Option<bool>,
    forced: Vec<String>,
    forced_elsewhere: BTreeMap<String, String>,
    caught_up: bool,
    now_ms: i64,
    cfg: ControlConfig,
    absent_for: BTreeMap<String, Duration>,
    vanished: BTreeSet<String>,
    permit_outstanding: bool,
    traffic_unheld: BTreeSet<String>,
}

impl Case {
    fn on(me: &'static str, view: ClusterView) -> Case {
        Case {
            view,
            me,
            lease: Some(if me == "a" { A_LEASE } else { B_LEASE }),
            fresh: true,
            quarantine: false,
            health: HealthState::Healthy,
            db_fenced: Some(false),
            forced: Vec::new(),
            forced_elsewhere: BTreeMap::new(),
            caught_up: false,
            now_ms: 1_000,
            cfg: config(),
            absent_for: BTreeMap::new(),
            vanished: BTreeSet::new(),
            permit_outstanding: false,
            traffic_unheld: BTreeSet::new(),
        }
    }

    fn run(&self) -> Decision {
        decide(&Observation {
            me: self.me,
            config: &self.cfg,
            lease: self.lease,
            quarantine: self.quarantine,
            view: &self.view,
            fresh: self.fresh,
            health: self.health,
            db_fenced: self.db_fenced,
            forced: &self.forced,
            forced_elsewhere: &self.forced_elsewhere,
            caught_up: self.caught_up,
            now_ms: self.now_ms,
            absent_for: &self.absent_for,
            vanished: &self.vanished,
            permit_outstanding: self.permit_outstanding,
            traffic_unheld: &self.traffic_unheld,
        })
    }
}

fn fences(d: &Decision) -> bool {
    d.actions.iter().any(|a| matches!(a, Action::Fence { .. }))
}

fn acquires(d: &Decision) -> Vec<(String, Option<String>)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Acquire {
                endpoint,
                takeover_from,
                ..
            } => Some((endpoint.clone(), takeover_from.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn steady_state_both_regions_write_and_nothing_moves() {
    for me in ["a", "b"] {
        let d = Case::on(me, steady()).run();
        assert!(d.writable, "{me}: {d:?}");
        assert_eq!(d.actions, vec![], "{me}");
        assert_eq!(d.serving.len(), 1);
    }
}

#[test]
fn a_fenced_primary_that_owns_its_endpoint_is_unfenced() {
    let mut c = Case::on("a", steady());
    c.db_fenced = Some(true);
    let d = c.run();
    assert!(
        matches!(d.actions.last(), Some(Action::Unfence { .. })),
        "{d:?}"
    );
}

#[test]
fn lease_lost_fences_and_takes_nothing_even_when_endpoints_look_free() {
    let mut view = steady();
    view.owners.clear();
    let mut c = Case::on("a", view);
    c.lease = None;
    let d = c.run();
    assert!(!d.writable);
    assert_eq!(d.why, "no live lease in etcd");
    assert!(fences(&d));
    assert!(acquires(&d).is_empty());
}

#[test]
fn lease_lost_while_already_fenced_changes_nothing() {
    let mut c = Case::on("a", steady());
    c.lease = None;
    c.db_fenced = Some(true);
    assert_eq!(c.run().actions, vec![]);
}

#[test]
fn an_unreadable_primary_is_fenced_again_when_not_writable() {
    let mut c = Case::on("a", steady());
    c.lease = None;
    c.db_fenced = None;
    assert!(fences(&c.run()));
}

#[test]
fn keys_of_an_old_lease_are_not_ownership() {
    // The agent restarted with a new lease; etcd still shows app-eu on the old one.
    let mut c = Case::on("a", steady());
    c.lease = Some(999);
    let d = c.run();
    assert!(!d.writable);
    assert!(fences(&d));
    assert!(
        acquires(&d).is_empty(),
        "the old key still exists: wait for it"
    );
}

#[test]
fn peer_lease_expired_survivor_takes_its_endpoint_and_says_from_whom() {
    let mut view = steady();
    view.members.remove("a");
    view.owners.remove("app-eu");
    let mut c = Case::on("b", view);
    c.vanished.insert("app-eu".into());
    c.absent_for.insert("a".into(), Duration::ZERO);
    let d = c.run();
    assert_eq!(acquires(&d), vec![("app-eu".into(), Some("a".into()))]);
    assert!(d.writable);
}

#[test]
fn at_start_a_slower_home_region_gets_a_lease_period_to_show_up() {
    let mut view = steady();
    view.members.remove("a");
    view.owners.remove("app-eu");
    let mut c = Case::on("b", view);
    c.absent_for.insert("a".into(), Duration::from_millis(200));
    assert!(acquires(&c.run()).is_empty(), "a may still be starting");
    c.absent_for.insert("a".into(), Duration::from_secs(3));
    assert_eq!(
        acquires(&c.run()),
        vec![("app-eu".into(), Some("a".into()))]
    );
}

#[test]
fn an_unowned_endpoint_whose_home_is_alive_is_left_to_the_home() {
    let mut view = steady();
    view.owners.remove("app-eu");
    let d = Case::on("b", view.clone()).run();
    assert!(acquires(&d).is_empty(), "{d:?}");
    let d = Case::on("a", view).run();
    assert_eq!(acquires(&d), vec![("app-eu".into(), None)]);
}

#[test]
fn a_peer_reporting_a_failed_primary_loses_its_endpoint_before_its_lease_ends() {
    let mut view = steady();
    view.members.get_mut("a").unwrap().health = HealthState::Failed;
    view.owners.remove("app-eu"); // a released it
    let d = Case::on("b", view).run();
    assert_eq!(acquires(&d), vec![("app-eu".into(), Some("a".into()))]);
}

#[test]
fn failed_local_primary_releases_everything_at_once_and_fences() {
    let mut c = Case::on("a", steady());
    c.health = HealthState::Failed;
    let d = c.run();
    assert!(!d.writable);
    assert!(fences(&d));
    assert!(d.actions.iter().any(|a| matches!(
        a,
        Action::Release { endpoint, epoch: 10, .. } if endpoint == "app-eu"
    )));
    assert!(acquires(&d).is_empty());
}

#[test]
fn an_unreachable_failed_primary_keeps_its_endpoint_until_its_write_permit_ran_out() {
    let mut c = Case::on("a", steady());
    c.health = HealthState::Failed;
    c.db_fenced = None;
    c.permit_outstanding = true;
    let d = c.run();
    assert!(fences(&d), "tries to fence");
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::Release { .. })),
        "{d:?}"
    );
    c.permit_outstanding = false;
    assert!(c
        .run()
        .actions
        .iter()
        .any(|a| matches!(a, Action::Release { .. })));
}

#[test]
fn degraded_moves_nothing() {
    let mut c = Case::on("a", steady());
    c.health = HealthState::Degraded;
    let d = c.run();
    assert!(d.writable);
    assert_eq!(d.actions, vec![]);
    let mut view = steady();
    view.members.get_mut("a").unwrap().health = HealthState::Degraded;
    view.owners.remove("app-eu");
    assert!(acquires(&Case::on("b", view).run()).is_empty());
}

#[test]
fn a_stale_view_takes_nothing_but_keeps_what_the_lease_holds() {
    let mut view = steady();
    view.members.remove("a");
    view.owners.remove("app-eu");
    let mut c = Case::on("b", view);
    c.fresh = false;
    let d = c.run();
    assert!(acquires(&d).is_empty());
    assert!(d.writable, "still owns app-us under a live lease");
}

#[test]
fn quarantine_after_a_lost_lease_takes_nothing_new() {
    let mut view = steady();
    view.owners.clear();
    let mut c = Case::on("a", view);
    c.quarantine = true;
    let d = c.run();
    assert!(acquires(&d).is_empty());
    assert!(!d.writable);
}

/// A switchover of app-eu from a in its stopping phase (the target caught up).
fn with_switchover(mut view: ClusterView, to: &str, epoch: i64, deadline_ms: i64) -> ClusterView {
    view.switchovers.insert(
        "app-eu".into(),
        Switchover {
            from: "a".into(),
            to: to.into(),
            epoch,
            deadline_ms,
            stopping: true,
        },
    );
    view
}

#[test]
fn a_requested_switchover_keeps_serving_until_the_target_caught_up() {
    let mut view = with_switchover(steady(), "b", 10, 5_000);
    view.switchovers.get_mut("app-eu").unwrap().stopping = false;
    let d = Case::on("a", view).run();
    assert!(d.writable);
    assert_eq!(d.serving, vec!["app-eu".to_string()]);
    assert_eq!(
        d.actions,
        vec![Action::CatchUp {
            endpoint: "app-eu".into(),
            to: "b".into()
        }]
    );
}

#[test]
fn switchover_of_the_only_endpoint_fences_and_drains_to_the_target() {
    let d = Case::on("a", with_switchover(steady(), "b", 10, 5_000)).run();
    assert!(!d.writable);
    assert!(
        matches!(d.actions.first(), Some(Action::Fence { .. })),
        "fence first: {d:?}"
    );
    assert!(d.actions.contains(&Action::Drain {
        endpoint: "app-eu".into(),
        epoch: 10,
        to: "b".into(),
        to_lease: B_LEASE,
        cause: DrainCause::Switchover,
    }));
    assert!(d.serving.is_empty());
}

#[test]
fn switchover_of_one_of_two_endpoints_keeps_writing_for_the_other() {
    let mut view = steady();
    view.owners.insert("app-us".into(), owner("a", A_LEASE, 12));
    let d = Case::on("a", with_switchover(view, "b", 10, 5_000)).run();
    assert!(d.writable);
    assert_eq!(d.serving, vec!["app-us".to_string()]);
    assert!(!fences(&d));
}

#[test]
fn switchover_for_an_older_epoch_or_past_its_deadline_or_to_a_dead_target_is_not_drained() {
    let stale = Case::on("a", with_switchover(steady(), "b", 9, 5_000)).run();
    assert!(stale.writable);
    assert!(stale.actions.contains(&Action::ClearSwitchover {
        endpoint: "app-eu".into()
    }));
    let late = Case::on("a", with_switchover(steady(), "b", 10, 500)).run();
    assert!(late.writable);
    assert!(matches!(late.actions[..], [Action::AbortSwitchover { .. }]));
    let mut view = with_switchover(steady(), "b", 10, 5_000);
    view.members.remove("b");
    let dead = Case::on("a", view).run();
    assert!(dead.writable);
    assert!(
        matches!(&dead.actions[..], [Action::AbortSwitchover { reason, .. }] if reason.contains("not alive"))
    );
}

#[test]
fn the_new_owner_clears_a_finished_switchover() {
    let mut view = with_switchover(steady(), "b", 10, 5_000);
    view.owners.insert("app-eu".into(), owner("b", B_LEASE, 13));
    let d = Case::on("b", view).run();
    assert!(d.writable);
    assert!(d.actions.contains(&Action::ClearSwitchover {
        endpoint: "app-eu".into()
    }));
}

#[test]
fn maintenance_fences_and_drains_everything_to_a_healthy_peer() {
    let mut view = steady();
    view.maintenance.insert("a".into());
    let d = Case::on("a", view.clone()).run();
    assert!(!d.writable);
    assert!(fences(&d));
    assert!(d.actions.iter().any(|a| matches!(
        a,
        Action::Drain { to, cause: DrainCause::Maintenance, .. } if to == "b"
    )));
    // With no healthy peer the endpoint stays (nobody could take it) but a is fenced.
    view.members.get_mut("b").unwrap().health = HealthState::Failed;
    let d = Case::on("a", view).run();
    assert!(fences(&d));
    assert!(!d.actions.iter().any(|a| matches!(a, Action::Drain { .. })));
}

#[test]
fn a_region_in_maintenance_gives_its_unowned_endpoints_to_the_peer() {
    let mut view = steady();
    view.maintenance.insert("a".into());
    view.owners.remove("app-eu");
    assert_eq!(
        acquires(&Case::on("b", view.clone()).run()),
        vec![("app-eu".into(), Some("a".into()))]
    );
    assert!(acquires(&Case::on("a", view).run()).is_empty());
}

#[test]
fn a_returning_region_stays_fenced_while_the_peer_holds_its_endpoint() {
    let mut view = steady();
    view.owners.insert("app-eu".into(), owner("b", B_LEASE, 20));
    let mut c = Case::on("a", view);
    c.db_fenced = Some(true);
    c.caught_up = true;
    let d = c.run();
    assert!(!d.writable);
    assert_eq!(
        d.actions,
        vec![],
        "manual failback: nothing happens by itself"
    );
}

#[test]
fn auto_failback_asks_for_the_home_endpoint_only_once_caught_up() {
    let mut view = steady();
    view.owners.insert("app-eu".into(), owner("b", B_LEASE, 20));
    let mut c = Case::on("a", view);
    c.cfg = Config::parse(
        &CONFIG.replace("[control]\n", "[control]\nfailback = \"auto\"\n"),
        "t.toml",
        &Env::from_pairs::<&str, &str>([]),
    )
    .unwrap()
    .control
    .unwrap();
    c.db_fenced = Some(true);
    assert_eq!(c.run().actions, vec![]);
    c.caught_up = true;
    assert_eq!(
        c.run().actions,
        vec![Action::RequestFailback {
            endpoint: "app-eu".into(),
            from: "b".into(),
            epoch: 20
        }]
    );
}

#[test]
fn forced_failover_holds_without_quorum_and_is_claimed_once_etcd_is_back() {
    let mut view = steady();
    view.members.remove("a");
    let mut c = Case::on("b", view);
    c.forced = vec!["app-eu".into()];
    c.lease = None;
    c.db_fenced = Some(true);
    let d = c.run();
    assert!(d.writable, "{d:?}");
    assert!(matches!(d.actions[..], [Action::Unfence { .. }]));
    c.lease = Some(B_LEASE);
    c.db_fenced = Some(false);
    let d = c.run();
    assert!(d.writable);
    assert_eq!(
        d.actions,
        vec![Action::ClaimForced {
            endpoint: "app-eu".into()
        }]
    );
}

#[test]
fn an_endpoint_forced_onto_the_peer_is_neither_taken_nor_kept() {
    // etcd came back before the peer's agent recorded the operator's decision: our old
    // lease was revoked, app-eu has no owner, and we are past the quarantine.
    let mut view = steady();
    view.owners.remove("app-eu");
    let mut c = Case::on("a", view);
    c.forced_elsewhere.insert("app-eu".into(), "b".into());
    let d = c.run();
    assert!(acquires(&d).is_empty(), "{d:?}");
    assert!(!d.writable && fences(&d), "{d:?}");

    // We took it back before we read the peer's database: stop writing, then hand it over.
    let mut c = Case::on("a", steady());
    c.forced_elsewhere.insert("app-eu".into(), "b".into());
    c.permit_outstanding = true;
    let d = c.run();
    assert!(!d.writable && d.serving.is_empty(), "{d:?}");
    assert!(d.why.contains("forced app-eu onto b"), "{}", d.why);
    assert!(matches!(d.actions[..], [Action::Fence { .. }]), "{d:?}");
    c.permit_outstanding = false;
    c.db_fenced = Some(true);
    let d = c.run();
    assert!(
        matches!(&d.actions[..], [Action::Release { endpoint, epoch: 10, .. }] if endpoint == "app-eu"),
        "{d:?}"
    );

    // Nor asked back by auto failback while the peer holds it by force.
    let mut view = steady();
    view.owners.insert("app-eu".into(), owner("b", B_LEASE, 12));
    let mut c = Case::on("a", view);
    c.cfg.failback = Failback::Auto {
        max_lag: crate::config::ByteSize(1024),
        after: Duration::from_secs(1),
    };
    c.caught_up = true;
    c.forced_elsewhere.insert("app-eu".into(), "b".into());
    let d = c.run();
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::RequestFailback { .. })),
        "{d:?}"
    );
}

#[test]
fn a_region_forced_writable_keeps_its_own_endpoints_too() {
    // app-us was forced onto a, which cannot reach etcd: its member key and its lease's
    // owner keys went, but it takes writes, for app-eu's clients too.
    let mut view = steady();
    view.members.remove("a");
    view.owners.clear();
    let mut c = Case::on("b", view);
    c.vanished.insert("app-eu".into());
    c.absent_for.insert("a".into(), Duration::from_secs(60));
    c.forced_elsewhere.insert("app-us".into(), "a".into());
    let d = c.run();
    assert!(acquires(&d).is_empty(), "{d:?}");
    assert!(!d.writable, "{d:?}");
    assert!(d.why.contains("forced app-us onto a"), "{}", d.why);
}

#[test]
fn a_forced_endpoint_etcd_shows_as_ours_is_forgotten() {
    // `pgmesh failover --force` with quorum claims in etcd itself; left in the database,
    // the row would keep this region writable without a lease the next time it lost one.
    let mut view = steady();
    view.owners.insert("app-eu".into(), owner("b", B_LEASE, 12));
    let mut c = Case::on("b", view);
    c.forced = vec!["app-eu".into()];
    let d = c.run();
    assert!(d.writable);
    assert_eq!(
        d.actions,
        vec![Action::ClearForced {
            endpoint: "app-eu".into()
        }]
    );
}

#[test]
fn never_two_writable_owners_of_one_endpoint_over_random_views() {
    // Random views and observations; for every endpoint, at most one of the two regions'
    // decisions may serve it — given the invariant etcd gives us: one owner key per
    // endpoint, bound to one lease.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let healths = [
        HealthState::Healthy,
        HealthState::Degraded,
        HealthState::Failed,
    ];
    for _ in 0..20_000 {
        let mut view = ClusterView::default();
        for (n, l) in [("a", A_LEASE), ("b", B_LEASE)] {
            if rnd(4) != 0 {
                view.members.insert(
                    n.into(),
                    Member {
                        lease: l,
                        health: healths[rnd(3) as usize],
                    },
                );
            }
            if rnd(5) == 0 {
                view.maintenance.insert(n.into());
            }
        }
        for e in ["app-eu", "app-us"] {
            match rnd(3) {
                0 => {}
                1 => {
                    view.owners.insert(e.into(), owner("a", A_LEASE, 5));
                }
                _ => {
                    view.owners.insert(e.into(), owner("b", B_LEASE, 6));
                }
            }
        }
        // An operator may have forced app-eu onto one region (its database says so, and
        // the other region read that from it).
        let forced_onto = ["", "a", "b"][rnd(3) as usize];
        let decisions: Vec<Decision> = ["a", "b"]
            .iter()
            .map(|me| {
                let mut c = Case::on(me, view.clone());
                if forced_onto == *me {
                    c.forced = vec!["app-eu".into()];
                } else if !forced_onto.is_empty() {
                    c.forced_elsewhere
                        .insert("app-eu".into(), forced_onto.to_string());
                }
                if rnd(4) == 0 {
                    c.lease = None;
                }
                c.health = healths[rnd(3) as usize];
                c.fresh = rnd(5) != 0;
                for e in ["app-eu", "app-us"] {
                    if rnd(2) == 0 {
                        c.vanished.insert(e.into());
                    }
                }
                for e in ["app-eu", "app-us"] {
                    if rnd(2) == 0 {
                        c.traffic_unheld.insert(e.into());
                    }
                }
                for n in ["a", "b"] {
                    if rnd(2) == 0 {
                        c.absent_for.insert(n.into(), Duration::from_secs(rnd(6)));
                    }
                }
                c.run()
            })
            .collect();
        for e in ["app-eu", "app-us"] {
            let servers = decisions
                .iter()
                .zip(["a", "b"])
                .filter(|(d, me)| {
                    d.writable
                        && (d.serving.iter().any(|s| s == e)
                            || (e == "app-eu" && forced_onto == *me))
                })
                .count();
            assert!(servers <= 1, "{e} served twice in {view:?}: {decisions:?}");
        }
    }
}

#[test]
fn a_switchover_stops_writes_only_after_the_traffic_layer_holds_the_clients() {
    let mut case = Case::on("a", with_switchover(steady(), "b", 10, 5_000));
    case.traffic_unheld.insert("app-eu".into());
    let d = case.run();
    assert!(d.writable, "still serving while pgbouncer pauses: {d:?}");
    assert_eq!(d.serving, vec!["app-eu".to_string()]);
    assert_eq!(
        d.actions,
        vec![Action::HoldTraffic {
            endpoint: "app-eu".into(),
            epoch: 10
        }]
    );
    // Held: the drain goes on as without a traffic layer.
    case.traffic_unheld.clear();
    let d = case.run();
    assert!(!d.writable);
    assert!(matches!(d.actions.first(), Some(Action::Fence { .. })));
    assert!(d
        .actions
        .iter()
        .any(|a| matches!(a, Action::Drain { endpoint, .. } if endpoint == "app-eu")));
}

#[test]
fn an_endpoint_forced_twice_goes_to_the_later_decision() {
    // app-eu forced onto a at 1000, then onto b at 2000 (a's database was not reached);
    // app-us forced onto a only.
    let here = vec![("app-eu".to_string(), 1_000), ("app-us".to_string(), 1_500)];
    let mut elsewhere = BTreeMap::new();
    elsewhere.insert("app-eu".to_string(), ("b".to_string(), 2_000));
    let (forced, away, stale) = resolve_forced(&here, &elsewhere);
    assert_eq!(forced, vec!["app-us".to_string()]);
    assert_eq!(away.get("app-eu").map(String::as_str), Some("b"));
    assert_eq!(stale, vec!["app-eu".to_string()]);

    // The other way round: ours is the later one, the peer's row is ignored.
    elsewhere.insert("app-eu".to_string(), ("b".to_string(), 500));
    let (forced, away, stale) = resolve_forced(&here, &elsewhere);
    assert_eq!(forced, vec!["app-eu".to_string(), "app-us".to_string()]);
    assert!(away.is_empty() && stale.is_empty());
}
