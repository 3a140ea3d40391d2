//! The faults a drill injects and heals, and what each must (not) cause.

use std::time::Duration;

use super::super::regions::{LabError, RegionsLab};
use super::super::topology::Site;
use super::super::wan::WanSettings;

/// Whether the fault must move `app-eu` off region a.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    /// Region a cannot keep it: region b must take it.
    Required,
    /// Region a is fine for its clients and etcd: the endpoint must stay.
    Forbidden,
    /// Either is correct (the partition leaves a's fate to etcd's quorum).
    Either,
    /// An operator moves it (planned switchover).
    Planned,
}

/// A drill's fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    RegionKilled,
    LeaderRegionKilled,
    RegionIsolated,
    WanCut,
    AsymmetricPartition,
    WitnessLost,
    AgentFrozenShort,
    AgentFrozenLong,
    OldOwnerReturns,
    DegradedWan,
    Switchover,
    SidecarKilled,
    SlotInvalidated,
    ClockSkew,
}

impl Scenario {
    pub const ALL: [Scenario; 14] = [
        Scenario::RegionKilled,
        Scenario::LeaderRegionKilled,
        Scenario::RegionIsolated,
        Scenario::WanCut,
        Scenario::AsymmetricPartition,
        Scenario::WitnessLost,
        Scenario::AgentFrozenShort,
        Scenario::AgentFrozenLong,
        Scenario::OldOwnerReturns,
        Scenario::DegradedWan,
        Scenario::Switchover,
        Scenario::SidecarKilled,
        Scenario::SlotInvalidated,
        Scenario::ClockSkew,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Scenario::RegionKilled => "region-killed",
            Scenario::LeaderRegionKilled => "leader-region-killed",
            Scenario::RegionIsolated => "region-isolated",
            Scenario::WanCut => "wan-cut",
            Scenario::AsymmetricPartition => "asymmetric-partition",
            Scenario::WitnessLost => "witness-lost",
            Scenario::AgentFrozenShort => "agent-frozen-short",
            Scenario::AgentFrozenLong => "agent-frozen-long",
            Scenario::OldOwnerReturns => "old-owner-returns",
            Scenario::DegradedWan => "degraded-wan",
            Scenario::Switchover => "switchover",
            Scenario::SidecarKilled => "sidecar-killed",
            Scenario::SlotInvalidated => "slot-invalidated",
            Scenario::ClockSkew => "clock-skew",
        }
    }

    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::RegionKilled => "every process of region a killed at once and its WAN cut; region b must take app-eu; a comes back and rejoins",
            Scenario::LeaderRegionKilled => "region-killed with the etcd leader in region a (moved there just before): an etcd election, then the new leader's lease extension, before b can take app-eu",
            Scenario::RegionIsolated => "region a cut from b and the witness while its clients still reach it; a must refuse writes, b take over",
            Scenario::WanCut => "the WAN between a and b cut, the witness visible to both; nothing may move, replication resumes after",
            Scenario::AsymmetricPartition => "region a cannot open connections to b or the witness, they still reach a; at most one owner, nothing lost",
            Scenario::WitnessLost => "the witness site dies; two of three etcd members remain: nothing may move",
            Scenario::AgentFrozenShort => "region a's agent SIGSTOPped for 1 s (shorter than the lease): nothing may move",
            Scenario::AgentFrozenLong => "region a's agent SIGSTOPped for 8 s (longer than the lease): its watchdog fences a, b takes over",
            Scenario::OldOwnerReturns => "region a isolated until b took over, then healed: a returns fenced, catches up, gets app-eu back (auto failback) with never two owners",
            Scenario::DegradedWan => "every WAN path at 300 ms round trip with 5 % loss for minutes: nothing may move, writes go on",
            Scenario::Switchover => "pgmesh switchover app-eu --to b under load: no acknowledged write lost, a short pause",
            Scenario::SidecarKilled => "region a's sidecar SIGKILLed and restarted repeatedly under load: nothing lost or applied twice",
            Scenario::SlotInvalidated => "region b's sidecar down while a's WAL passes max_slot_wal_keep_size: the slot is invalidated, b's sidecar stops saying how to recover, and `pgmesh setup` + `pgmesh repair` bring every acknowledged write back",
            Scenario::ClockSkew => "region b's host clock (PostgreSQL, sidecar, agent) 3 s ahead while both regions' applications update the same rows: nothing moves, every row ends at its latest commit on both nodes",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    #[must_use]
    pub fn failover(self) -> Failover {
        match self {
            Scenario::RegionKilled
            | Scenario::LeaderRegionKilled
            | Scenario::RegionIsolated
            | Scenario::AgentFrozenLong
            | Scenario::OldOwnerReturns => Failover::Required,
            Scenario::AsymmetricPartition => Failover::Either,
            Scenario::Switchover => Failover::Planned,
            Scenario::WanCut
            | Scenario::WitnessLost
            | Scenario::AgentFrozenShort
            | Scenario::DegradedWan
            | Scenario::SidecarKilled
            | Scenario::SlotInvalidated
            | Scenario::ClockSkew => Failover::Forbidden,
        }
    }

    /// Whether region a stays alive to be fenced (its database must refuse writes).
    #[must_use]
    pub fn old_owner_must_fence(self) -> bool {
        matches!(
            self,
            Scenario::RegionIsolated | Scenario::AgentFrozenLong | Scenario::OldOwnerReturns
        )
    }

    /// Where the etcd leader is put before the fault: the harder place for it, or where
    /// the lab's agents keep it (`[control] etcd_leader = "witness"`).
    #[must_use]
    pub fn etcd_leader(self) -> Option<Site> {
        match self {
            // Where it is kept: a region dies without it.
            Scenario::RegionKilled => Some(Site::Witness),
            // Region a's member loses the leader; a must keep its lease via the witness.
            Scenario::WanCut | Scenario::DegradedWan | Scenario::AsymmetricPartition => {
                Some(Site::B)
            }
            // The leader goes with the region: an election first, then the lease expiry.
            Scenario::LeaderRegionKilled | Scenario::RegionIsolated | Scenario::OldOwnerReturns => {
                Some(Site::A)
            }
            Scenario::WitnessLost => Some(Site::Witness),
            _ => None,
        }
    }

    /// How long the fault is held at least (the drill also waits for the takeover).
    #[must_use]
    pub fn hold(self, short: bool) -> Duration {
        let s = |full: u64, short_s: u64| Duration::from_secs(if short { short_s } else { full });
        match self {
            Scenario::DegradedWan => s(180, 20),
            Scenario::WanCut | Scenario::WitnessLost | Scenario::AsymmetricPartition => s(15, 8),
            Scenario::AgentFrozenShort => Duration::from_secs(1),
            Scenario::AgentFrozenLong => Duration::from_secs(8),
            Scenario::SidecarKilled => s(20, 8),
            Scenario::ClockSkew => s(20, 8),
            _ => s(5, 2),
        }
    }
}

fn cut(wan: WanSettings) -> WanSettings {
    WanSettings { cut: true, ..wan }
}

/// The skew the clock-skew drill puts on region b's host.
pub const SKEW_MS: i64 = 3_000;

/// Injects the fault. Long-running faults (repeated kills) run until `until`.
pub fn inject(
    lab: &mut RegionsLab,
    s: Scenario,
    until: std::time::Instant,
) -> Result<(), LabError> {
    let wan = lab.wan();
    match s {
        Scenario::RegionKilled | Scenario::LeaderRegionKilled => lab.kill_region(Site::A)?,
        Scenario::RegionIsolated | Scenario::OldOwnerReturns => {
            for other in [Site::B, Site::Witness] {
                lab.hub().set_both(Site::A, other, cut(wan));
            }
        }
        Scenario::WanCut => lab.hub().set_both(Site::A, Site::B, cut(wan)),
        Scenario::AsymmetricPartition => {
            lab.hub().set(Site::A, Site::B, cut(wan));
            lab.hub().set(Site::A, Site::Witness, cut(wan));
        }
        Scenario::WitnessLost => lab.kill_region(Site::Witness)?,
        Scenario::AgentFrozenShort | Scenario::AgentFrozenLong => lab.freeze_agent(Site::A)?,
        Scenario::DegradedWan => {
            let degraded = WanSettings {
                delay: Duration::from_millis(150),
                jitter: Duration::from_millis(10),
                loss: 0.05,
                ..wan
            };
            lab.hub().heal(degraded);
        }
        Scenario::Switchover => {
            let out =
                lab.pgmesh_here(&["switchover", "app-eu", "--to", "b", "--timeout", "30s"])?;
            if !out.status.success() {
                return Err(LabError::Setup(format!(
                    "pgmesh switchover failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        Scenario::SlotInvalidated => super::slot_loss::invalidate(lab)?,
        Scenario::ClockSkew => lab.set_clock_offset(Site::B, SKEW_MS)?,
        Scenario::SidecarKilled => {
            while std::time::Instant::now() < until {
                lab.kill_sidecar(Site::A)?;
                std::thread::sleep(Duration::from_millis(300));
                lab.start_sidecar(Site::A)?;
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    Ok(())
}

/// Undoes the fault.
pub fn heal(lab: &mut RegionsLab, s: Scenario) -> Result<(), LabError> {
    let wan = lab.wan();
    match s {
        Scenario::RegionKilled | Scenario::LeaderRegionKilled => lab.restore_region(Site::A)?,
        Scenario::WitnessLost => lab.restore_region(Site::Witness)?,
        Scenario::AgentFrozenShort | Scenario::AgentFrozenLong => lab.thaw_agent(Site::A)?,
        Scenario::SidecarKilled => {
            if !lab.sidecar_running(Site::A) {
                lab.start_sidecar(Site::A)?;
            }
        }
        Scenario::SlotInvalidated => super::slot_loss::recover(lab)?,
        Scenario::ClockSkew => lab.set_clock_offset(Site::B, 0)?,
        _ => lab.hub().heal(wan),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_a_unique_name_that_parses_back() {
        let mut names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
            assert!(!s.describe().is_empty());
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Scenario::ALL.len());
        assert_eq!(Scenario::parse("nope"), None);
    }

    #[test]
    fn scenarios_that_fence_the_old_owner_require_a_failover() {
        for s in Scenario::ALL {
            if s.old_owner_must_fence() {
                assert_eq!(s.failover(), Failover::Required, "{}", s.name());
            }
        }
        assert!(Scenario::DegradedWan.hold(false) >= Duration::from_secs(120));
    }
}
