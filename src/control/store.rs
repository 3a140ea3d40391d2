//! etcd as the control plane's store: leases, the cluster view, and the compare-and-swap
//! transactions that move ownership. Every call has a timeout: an agent must never hang
//! past its fence deadline waiting for etcd.
//!
//! Requests require a leader (`require_leader`): a member cut off from the quorum refuses
//! at once instead of answering from a stale state, so a partitioned agent notices.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp,
};

use super::decide::{ClusterView, Member, Owner, Switchover};
use super::health::HealthState;
use super::keys::{Keys, MemberValue, OwnerValue, SwitchoverValue};

/// An etcd call failed: etcd unreachable, no quorum, or a timeout. Always transient for
/// the agent (it retries every tick and fences by its deadline meanwhile).
#[derive(Debug, thiserror::Error)]
#[error("etcd: {op}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub message: String,
}

fn err(op: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |e| StoreError {
        op,
        message: e.to_string(),
    }
}

/// One whole read of the cluster's keys.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub view: ClusterView,
    /// `status/<node>`: the last thing each agent published (also of dead ones).
    pub status: Vec<MemberValue>,
    /// `member/<node>` values of live agents.
    pub members: Vec<MemberValue>,
    pub switchovers: Vec<(String, SwitchoverValue)>,
    pub maintenance: Vec<(String, super::keys::MaintenanceValue)>,
    pub events: Vec<super::event::Event>,
    /// etcd's revision at the read.
    pub revision: i64,
    /// The raft term of the leader that served the (linearizable, so quorum-confirmed)
    /// read: it confirms lease renewals made in the same term ([`super::lease`]).
    pub raft_term: u64,
}

/// A connection to the etcd cluster of one pgmesh cluster.
#[derive(Clone)]
pub struct Store {
    client: Client,
    pub keys: Keys,
    timeout: Duration,
}

impl Store {
    /// Connects (lazily: the first request may still fail) with a per-request `timeout`.
    pub async fn connect(
        endpoints: &[String],
        cluster: &str,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        Store::connect_with(endpoints, cluster, timeout, Leader::Required).await
    }

    async fn connect_with(
        endpoints: &[String],
        cluster: &str,
        timeout: Duration,
        leader: Leader,
    ) -> Result<Store, StoreError> {
        let options = options(timeout, leader);
        let client = tokio::time::timeout(timeout * 3, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| StoreError {
                op: "connect",
                message: format!("no member of {} answered", endpoints.join(", ")),
            })?
            .map_err(err("connect"))?;
        Ok(Store {
            client,
            keys: Keys::new(cluster),
            timeout,
        })
    }

    /// One store per member that proved it reaches the etcd leader, the leader first,
    /// then in the order they answered (at most `want`). Over a WAN a client spread over
    /// every member sends most calls through another region and then on to the leader;
    /// the lease keeper renews through the leader and one more member at once, so that
    /// one stalled connection (a lost packet on a lossy WAN, a member cut off) never
    /// decides alone whether the lease lives. With one endpoint: that endpoint.
    ///
    /// [`Leader::Required`]: every call fails at once where the member has no leader
    /// (the agent's client, which then looks for another member). [`Leader::Awaited`]: a
    /// call waits there for the election to end (the lease keeper's paths): etcd cancels
    /// a leader-requiring keep-alive stream after three election timeouts without a
    /// leader, and with 500 ms timeouts that closed the stream of a member still in the
    /// quorum 2 s into an election that ended 0.4 s later, with the renewal queued on it
    /// that would have been answered at once (`witness-lost`: the region fenced).
    pub async fn connect_ranked(
        endpoints: &[String],
        cluster: &str,
        timeout: Duration,
        (want, leader): (usize, Leader),
    ) -> Vec<RankedStore> {
        if endpoints.len() < 2 {
            return match Store::connect_with(endpoints, cluster, timeout, leader).await {
                Ok(store) => vec![RankedStore {
                    member: endpoints.join(","),
                    leader: false,
                    store,
                }],
                Err(_) => Vec::new(),
            };
        }
        ranked(endpoints, options(timeout, leader), timeout, want)
            .await
            .into_iter()
            .take(want)
            .map(|(member, leader, client)| RankedStore {
                member,
                leader,
                store: Store {
                    client,
                    keys: Keys::new(cluster),
                    timeout,
                },
            })
            .collect()
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(err(op)),
            Err(_) => Err(StoreError {
                op,
                message: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    /// A new lease of `ttl`; returns its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let mut c = self.client.clone();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        Ok(self
            .bounded("lease grant", c.lease_grant(ttl, None))
            .await?
            .id())
    }

    /// Revokes a lease (its keys go at once); errors are reported, not fatal.
    pub async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        self.bounded("lease revoke", c.lease_revoke(lease)).await?;
        Ok(())
    }

    /// The raft term of a linearizable read (which needs a quorum): confirms that the
    /// leader that answered a renewal still led then. Counts keys only, so it is cheap.
    pub async fn term(&self) -> Result<u64, StoreError> {
        let mut c = self.client.clone();
        let resp = self
            .bounded(
                "read",
                c.get(
                    self.keys.prefix(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.raft_term()))
    }

    /// Opens a keep-alive stream for `lease`: its sending and its answering end. etcd
    /// answers a stream's renewals one at a time, in the order sent.
    pub async fn keep_alive(&self, lease: i64) -> Result<(RenewSender, RenewAnswers), StoreError> {
        let mut c = self.client.clone();
        let (keeper, stream) = self
            .bounded("lease keep-alive", c.lease_keep_alive(lease))
            .await?;
        Ok((RenewSender { keeper }, RenewAnswers { stream }))
    }

    /// Reads every key of the cluster (linearizable) and builds the view.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut c = self.client.clone();
        let resp = self
            .bounded(
                "read",
                c.get(self.keys.prefix(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut snap = Snapshot {
            revision: resp.header().map_or(0, |h| h.revision()),
            raft_term: resp.header().map_or(0, |h| h.raft_term()),
            ..Snapshot::default()
        };
        for kv in resp.kvs() {
            let (Ok(key), value) = (kv.key_str(), kv.value()) else {
                continue;
            };
            let Some((kind, name)) = self.keys.classify(key) else {
                continue;
            };
            // A value this version cannot read is skipped, never a panic: another
            // version of pgmesh (or a person with etcdctl) may have written it.
            match kind {
                "owner" => {
                    if let Ok(v) = serde_json::from_slice::<OwnerValue>(value) {
                        snap.view.owners.insert(
                            name.to_string(),
                            Owner {
                                node: v.node,
                                lease: kv.lease(),
                                epoch: kv.mod_revision(),
                            },
                        );
                    }
                }
                "member" => {
                    if let Ok(v) = serde_json::from_slice::<MemberValue>(value) {
                        snap.view.members.insert(
                            name.to_string(),
                            Member {
                                lease: kv.lease(),
                                health: HealthState::parse(&v.health)
                                    .unwrap_or(HealthState::Degraded),
                            },
                        );
                        snap.members.push(v);
                    }
                }
                "status" => {
                    if let Ok(v) = serde_json::from_slice::<MemberValue>(value) {
                        snap.status.push(v);
                    }
                }
                "maintenance" => {
                    snap.view.maintenance.insert(name.to_string());
                    if let Ok(v) = serde_json::from_slice(value) {
                        snap.maintenance.push((name.to_string(), v));
                    }
                }
                "switchover" => {
                    if let Ok(v) = serde_json::from_slice::<SwitchoverValue>(value) {
                        if v.state == "requested" || v.state == "draining" {
                            snap.view.switchovers.insert(
                                name.to_string(),
                                Switchover {
                                    from: v.from.clone(),
                                    to: v.to.clone(),
                                    epoch: v.epoch,
                                    deadline_ms: v.deadline_ms,
                                    stopping: v.state == "draining",
                                },
                            );
                        }
                        snap.switchovers.push((name.to_string(), v));
                    }
                }
                "events" => {
                    if let Ok(v) = serde_json::from_slice(value) {
                        snap.events.push(v);
                    }
                }
                _ => {}
            }
        }
        Ok(snap)
    }

    async fn txn(&self, op: &'static str, txn: Txn) -> Result<bool, StoreError> {
        let mut c = self.client.clone();
        Ok(self.bounded(op, c.txn(txn)).await?.succeeded())
    }

    async fn put(
        &self,
        op: &'static str,
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.bounded(op, c.put(key, value, opts)).await?;
        Ok(())
    }

    /// Takes an endpoint nobody owns; false when someone was faster.
    pub async fn acquire(
        &self,
        endpoint: &str,
        lease: i64,
        value: &OwnerValue,
    ) -> Result<bool, StoreError> {
        let key = self.keys.owner(endpoint);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                json(value),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.txn("acquire endpoint", txn).await
    }

    /// Gives up an endpoint we own at `epoch`; false when it had moved already.
    pub async fn release(&self, endpoint: &str, epoch: i64) -> Result<bool, StoreError> {
        let key = self.keys.owner(endpoint);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, epoch)])
            .and_then([TxnOp::delete(key, None)]);
        self.txn("release endpoint", txn).await
    }

    /// Moves an endpoint owned at `epoch` onto `to_lease` (the new owner's lease, which
    /// must still exist: `member/<to>` is bound to it), and marks the switchover moved.
    pub async fn transfer(
        &self,
        endpoint: &str,
        epoch: i64,
        to: &str,
        to_lease: i64,
        value: &OwnerValue,
        switchover: Option<&SwitchoverValue>,
    ) -> Result<bool, StoreError> {
        let key = self.keys.owner(endpoint);
        let member = self.keys.member(to);
        let mut ops = vec![TxnOp::put(
            key.clone(),
            json(value),
            Some(PutOptions::new().with_lease(to_lease)),
        )];
        if let Some(sw) = switchover {
            ops.push(TxnOp::put(self.keys.switchover(endpoint), json(sw), None));
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, epoch),
                Compare::lease(member, CompareOp::Equal, to_lease),
            ])
            .and_then(ops);
        self.txn("move endpoint", txn).await
    }

    /// Puts an endpoint on `lease` whoever owns it (an operator's forced failover).
    pub async fn claim(
        &self,
        endpoint: &str,
        lease: i64,
        value: &OwnerValue,
    ) -> Result<(), StoreError> {
        self.put(
            "claim endpoint",
            self.keys.owner(endpoint),
            json(value),
            Some(lease),
        )
        .await
    }

    /// Publishes this agent's state: `member/<node>` on the lease, `status/<node>` without.
    pub async fn publish(&self, value: &MemberValue, lease: Option<i64>) -> Result<(), StoreError> {
        let bytes = json(value);
        let mut ops = vec![TxnOp::put(
            self.keys.status(&value.node),
            bytes.clone(),
            None,
        )];
        if let Some(l) = lease {
            ops.push(TxnOp::put(
                self.keys.member(&value.node),
                bytes,
                Some(PutOptions::new().with_lease(l)),
            ));
        }
        self.txn("publish member", Txn::new().and_then(ops)).await?;
        Ok(())
    }

    /// Writes a switchover intent for an endpoint owned at `epoch`, unless one exists.
    pub async fn request_switchover(
        &self,
        endpoint: &str,
        value: &SwitchoverValue,
    ) -> Result<bool, StoreError> {
        let sw = self.keys.switchover(endpoint);
        let owner = self.keys.owner(endpoint);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(owner, CompareOp::Equal, value.epoch),
                Compare::create_revision(sw.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(sw, json(value), None)]);
        self.txn("request switchover", txn).await
    }

    /// Replaces a switchover intent (progress, abort) whatever it held.
    pub async fn put_switchover(
        &self,
        endpoint: &str,
        value: &SwitchoverValue,
    ) -> Result<(), StoreError> {
        self.put(
            "update switchover",
            self.keys.switchover(endpoint),
            json(value),
            None,
        )
        .await
    }

    pub async fn delete_switchover(&self, endpoint: &str) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        self.bounded(
            "clear switchover",
            c.delete(self.keys.switchover(endpoint), None),
        )
        .await?;
        Ok(())
    }

    /// Sets or clears `maintenance/<node>`.
    pub async fn set_maintenance(
        &self,
        node: &str,
        value: Option<&super::keys::MaintenanceValue>,
    ) -> Result<(), StoreError> {
        let key = self.keys.maintenance(node);
        match value {
            Some(v) => self.put("set maintenance", key, json(v), None).await,
            None => {
                let mut c = self.client.clone();
                self.bounded("clear maintenance", c.delete(key, None))
                    .await?;
                Ok(())
            }
        }
    }

    /// Appends an event to the history (`events/<ms>-<node>-<n>`), keeping the newest
    /// [`super::event::KEEP_EVENTS`].
    pub async fn record(&self, event: &super::event::Event) -> Result<(), StoreError> {
        let key = format!(
            "{}{:015}-{}-{}",
            self.keys.events(),
            event.at_ms,
            event.node,
            event.seq
        );
        self.put("record event", key, json(event), None).await?;
        let mut c = self.client.clone();
        let resp = self
            .bounded(
                "list events",
                c.get(
                    self.keys.events(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            )
            .await?;
        let keys: Vec<Vec<u8>> = resp.kvs().iter().map(|kv| kv.key().to_vec()).collect();
        if keys.len() > super::event::KEEP_EVENTS {
            let cut = keys.len() - super::event::KEEP_EVENTS;
            // Keys sort by time: delete the oldest range in one request.
            let end = keys[cut].clone();
            self.bounded(
                "prune events",
                c.delete(
                    keys[0].clone(),
                    Some(etcd_client::DeleteOptions::new().with_range(end)),
                ),
            )
            .await?;
        }
        Ok(())
    }
}

/// Whether a member's calls need it to have a leader (see [`Store::connect_ranked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leader {
    Required,
    Awaited,
}

/// HTTP/2 pings no more often than etcd's gRPC server allows (`--grpc-keepalive-min-time`,
/// 5 s by default): pinged every second, a connection on which nothing came back for a
/// few seconds — a keep-alive stream waiting out an election — was closed by the server
/// ("too many pings", seen as a broken pipe) with the renewal queued on it. Every call
/// has its own timeout; the pings only find connections that died silently.
const H2_PING_EVERY: Duration = Duration::from_secs(10);

fn options(timeout: Duration, leader: Leader) -> ConnectOptions {
    ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout)
        .with_keep_alive(H2_PING_EVERY, timeout)
        .with_require_leader(leader == Leader::Required)
}

/// A store connected to one member, from [`Store::connect_ranked`].
#[derive(Clone)]
pub struct RankedStore {
    pub member: String,
    pub leader: bool,
    pub store: Store,
}

/// The members that answered a linearizable read, with their clients: the leader first
/// (if it answered), then the others in the order they answered. Waits for the leader
/// at most a quarter of `timeout` (400 ms at most) after the first other member
/// answered: a member cut off from us answers only at the timeout, and a WAN cut
/// between a region and the leader would otherwise cost the lease a full timeout before
/// the keeper renews elsewhere.
async fn ranked(
    endpoints: &[String],
    options: ConnectOptions,
    timeout: Duration,
    want: usize,
) -> Vec<(String, bool, Client)> {
    let mut probes = tokio::task::JoinSet::new();
    for e in endpoints {
        let (e, options) = (e.clone(), options.clone());
        probes.spawn(async move {
            let probe = async {
                let mut c = Client::connect([e.as_str()], Some(options)).await.ok()?;
                let status = c.status().await.ok()?;
                let me = status.header().map_or(0, |h| h.member_id());
                if status.leader() == 0 {
                    return None;
                }
                // A member cut off from the leader still names it until its election
                // timeout: a linearizable read proves it reaches the leader now.
                c.get("pgmesh-probe", Some(GetOptions::new().with_count_only()))
                    .await
                    .ok()?;
                Some((e, status.leader() == me, c))
            };
            tokio::time::timeout(timeout, probe).await.ok().flatten()
        });
    }
    let grace = (timeout / 4).min(Duration::from_millis(400));
    let mut found: Vec<(String, bool, Client)> = Vec::new();
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        let next = match until {
            Some(u) => match tokio::time::timeout_at(u, probes.join_next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => probes.join_next().await,
        };
        let Some(done) = next else { break };
        if let Ok(Some(answer)) = done {
            until.get_or_insert_with(|| tokio::time::Instant::now() + grace);
            found.push(answer);
            if found.iter().any(|f| f.1) && found.len() >= want {
                break;
            }
        }
    }
    probes.abort_all();
    // Stable: the leader first, the rest in answer order.
    found.sort_by_key(|f| !f.1);
    found
}

/// The sending end of a keep-alive stream.
pub struct RenewSender {
    keeper: LeaseKeeper,
}

impl RenewSender {
    /// Queues one renewal on the stream (it waits only when 100 are queued unanswered).
    pub async fn send(&mut self) -> Result<(), StoreError> {
        self.keeper
            .keep_alive()
            .await
            .map_err(err("lease keep-alive"))
    }
}

/// The answering end of a keep-alive stream.
pub struct RenewAnswers {
    stream: LeaseKeepAliveStream,
}

impl RenewAnswers {
    /// The next answer, with no time limit (the caller knows what it waits for).
    /// `Ok(Some((ttl, raft_term)))`: renewed for `ttl`, the term as the answering member
    /// saw it when the request arrived; `Ok(None)`: the lease is gone (expired or
    /// revoked) and can never be renewed.
    pub async fn next(&mut self) -> Result<Option<(Duration, u64)>, StoreError> {
        match self.stream.message().await {
            Err(e) => Err(err("lease keep-alive")(e)),
            Ok(None) => Err(StoreError {
                op: "lease keep-alive",
                message: "the stream ended".into(),
            }),
            Ok(Some(resp)) if resp.ttl() <= 0 => Ok(None),
            Ok(Some(resp)) => Ok(Some((
                Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)),
                resp.header().map_or(0, |h| h.raft_term()),
            ))),
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain structs cannot fail; an empty value would be skipped by
    // readers rather than crash anyone.
    serde_json::to_vec(v).unwrap_or_default()
}
