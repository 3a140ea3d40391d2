//! The loop of one direction: stream the peer's slot, decode, drop what has an origin,
//! collect changes into chunks and hand them to the writing half ([`super::applier`]),
//! which applies them in coalesced transactions bound to the peer's origin while this
//! half reads on; acknowledge to the peer only what is durably applied.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

use tokio::sync::watch;
use tracing::Instrument;

use super::applier::{Applier, Work};
use super::clock::ClockWatch;
use super::link::{PeerLink, SidecarError};
use super::stall::{DirectionActivity, Step};
use crate::apply::kill::{Kill, KILL_PREFIX};
use crate::apply::session::origin_progress;
use crate::apply::shape_io::{map_relation, Sides};
use crate::apply::{ApplyError, ApplySession};
use crate::batch::{ChangeOp, Chunk, KeylessChange};
use crate::conflict::causality::{clock_wait, ClockWait};
use crate::filter::{OriginFilter, Verdict};
use crate::observe::{DirectionState, Phase};
use crate::protocol::pgoutput::{Decoder, Message, Oid, OldTuple, PgTimestamp, Relation, Type};
use crate::source::{
    connect_and_start, Backoff, OutputPlugin, PgoutputOptions, ReplicationEvent, StreamConfig,
};
use crate::table::local::TableMap;
use crate::table::row::Row;
use crate::Lsn;

/// Runs one direction until `stop` flips; transient failures restart it from the durable
/// origin progress after a backoff, those that need an operator are logged with their fix
/// and retried slowly (so the stream resumes by itself once the cause is fixed), and a bug
/// stops it with its position kept. Nothing is ever skipped.
pub async fn run_peer(link: PeerLink, stop: watch::Receiver<bool>) {
    let state = DirectionState::new(&link.peer);
    let _ = run_direction(link, stop, state).await;
}

/// [`run_peer`], reporting into `state` (phase, positions, lag, metrics). Returns an
/// error only when retrying is pointless: its slot on the peer was dropped by the peer's
/// WAL guardrail, or invalidated by PostgreSQL (`max_slot_wal_keep_size`), or a bug
/// ([`crate::ErrorKind::Bug`]: undecodable data, a panicked apply task).
pub async fn run_direction(
    link: PeerLink,
    stop: watch::Receiver<bool>,
    state: Arc<DirectionState>,
) -> Result<(), SidecarError> {
    // Every line this direction logs (its tasks' too) names the node and the peer.
    let span = tracing::info_span!("direction", node = %link.local_node, peer = %link.peer);
    direction_loop(link, stop, state).instrument(span).await
}

async fn direction_loop(
    link: PeerLink,
    mut stop: watch::Receiver<bool>,
    state: Arc<DirectionState>,
) -> Result<(), SidecarError> {
    let _probe = super::peer_probe::spawn_wal_probe(&link, state.clone());
    let mut backoff = Backoff::new(link.reconnect);
    let mut clock = ClockWatch::new(link.clock_skew_warn);
    loop {
        if *stop.borrow() {
            state.set_phase(Phase::Stopped);
            return Ok(());
        }
        backoff.connected(Instant::now());
        match run_once(&link, &mut stop, &state, &mut clock).await {
            Ok(()) => {
                state.set_phase(Phase::Stopped);
                return Ok(());
            }
            Err(e) => {
                let fatal = match e.invalidated_slot(&link) {
                    Some(f) => Some(f),
                    None => super::peer_probe::dropped_by_guardrail(&link, &e).await,
                };
                if let Some(fatal) = fatal {
                    tracing::error!(error = %fatal, "stream from peer stopped for good");
                    state.failed(&fatal.to_string());
                    return Err(fatal);
                }
                if e.kind() == crate::ErrorKind::Bug {
                    let bug = SidecarError::Bug {
                        local: link.local_node.clone(),
                        peer: link.peer.clone(),
                        applied: state.report().applied_lsn,
                        source: Box::new(e),
                    };
                    tracing::error!(error = %bug, "stream from peer stopped");
                    state.failed(&bug.to_string());
                    return Err(bug);
                }
                if let Some(m) = e.schema_mismatch() {
                    state.failed(&m.to_string());
                    if super::schema_stop::wait_for_fix(&link, m, &mut stop).await {
                        continue;
                    }
                    state.set_phase(Phase::Stopped);
                    return Ok(());
                }
                state.retrying(&e.to_string());
                let mut delay = backoff.next_delay(Instant::now());
                // One line per attempt, with the attempt number and the wait, so an
                // operator sees a peer that stays down (and for how long) at a glance.
                let attempt = backoff.failures();
                if e.is_transient() {
                    tracing::warn!(error = %e, ?delay, attempt, "stream from peer interrupted; retrying after `delay` from the applied position");
                } else {
                    delay = delay.max(std::time::Duration::from_secs(5));
                    tracing::error!(error = %e, ?delay, attempt, "stream from peer stopped; position kept, retrying until the cause is fixed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {
                        state.set_phase(Phase::Stopped);
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The upstream transaction being read.
struct OpenTxn {
    commit_lsn: Lsn,
    commit_ts: PgTimestamp,
    /// Already applied before (resent after a reconnect): read past it.
    skip: bool,
    /// It wrote a table with unique constraints besides the key.
    touches_uniques: bool,
}

struct Direction<'l> {
    link: &'l PeerLink,
    applier: Applier,
    /// A plain session on the local node: table definitions and origin progress.
    catalog: tokio_postgres::Client,
    _catalog_task: DropAbort,
    origin: String,
    relations: HashMap<Oid, Relation>,
    /// Non-built-in types the peer named (Type messages), to compare tables by type name.
    types: HashMap<Oid, Type>,
    maps: HashMap<Oid, Arc<TableMap>>,
    chunk: Chunk,
    open: Option<OpenTxn>,
    /// Last upstream commit folded into the open downstream transaction.
    pending_commit: Option<(Lsn, PgTimestamp)>,
    batch_started: Option<Instant>,
    /// The last commit handed to the writer.
    sent_commit: Lsn,
    /// Everything up to here was read and needs nothing more: applied, or skipped (an
    /// origin-filtered transaction, a keepalive while idle).
    passed: Lsn,
    state: &'l DirectionState,
    /// Upstream transactions in the batch being built.
    pending_txns: u64,
    /// Commit time of the batch's first upstream transaction.
    batch_first_ts: Option<PgTimestamp>,
    /// The latest commit time in the batch: its downstream commit waits until this
    /// node's clock passed it ([`crate::conflict::causality`]).
    batch_max_ts: Option<PgTimestamp>,
    /// Batches handed to the writer and not yet committed: (end, first commit time), for
    /// the lag in seconds. Pruned as the writer commits, so it holds about as many as the
    /// writer's bounded queue.
    in_flight: VecDeque<(Lsn, PgTimestamp)>,
    /// When the log last said that changes wait for this node's clock.
    clock_noted: Option<Instant>,
}

async fn run_once(
    link: &PeerLink,
    stop: &mut watch::Receiver<bool>,
    state: &Arc<DirectionState>,
    clock: &mut ClockWatch,
) -> Result<(), SidecarError> {
    let apply =
        ApplySession::connect(&link.local, &link.peer_sql, &link.local_node, &link.peer).await?;
    // Resume from the *durable* progress (reading it flushes the WAL up to it): a commit a
    // killed predecessor left unflushed could still vanish in a crash of this node, and
    // the peer must never be told, even by the start position, that it is done.
    let applied = apply.durable_progress().await?;
    let (catalog, catalog_task) = crate::sqlconn::connect_sql(&link.local)
        .await
        .map_err(ApplyError::from)?;
    catalog
        // Bounded waits: this session's queries run inside the reading loop, which must
        // not stop silently behind a lock (a failure restarts the direction instead).
        .batch_execute(
            "SET application_name = 'pgmesh catalog'; SET lock_timeout = '10s'; \
             SET statement_timeout = '30s'",
        )
        .await
        .map_err(ApplyError::from)?;
    // Loop prevention: PG16+ drops changes that carry an origin on the server
    // (`origin 'none'`); PG15 has no such option and sends an Origin message instead,
    // dropped by the client-side filter (kept on everywhere as a second guard).
    let mut cfg = StreamConfig::with_plugin(
        &link.slot,
        OutputPlugin::Pgoutput(PgoutputOptions {
            publications: vec![link.publication.clone()],
            origin_none: true,
            // Unique-constraint decisions of the peer's sidecar (apply::kill).
            messages: true,
            ..PgoutputOptions::default()
        }),
    );
    cfg.status_interval = std::time::Duration::from_secs(1);
    let mut stream = connect_and_start(&link.peer_source, &cfg, applied).await?;
    stream.set_flushed(applied);
    let major = stream.server_major();
    let proto = crate::source::stream::max_proto_version(major);
    let mut decoder = Decoder::new(proto);
    let mut filter = OriginFilter::new(true);
    tracing::info!(slot = %link.slot, from = %applied, server = major, "streaming from peer");
    let activity = Arc::new(DirectionActivity::default());
    let _stall_watch = DropAbort(tokio::spawn(
        super::stall::watch(
            activity.clone(),
            link.local.clone(),
            apply.backend_pid(),
            link.peer.clone(),
            state.clone(),
        )
        .in_current_span(),
    ));
    let mut d = Direction {
        link,
        applier: Applier::spawn(
            apply,
            link.peer.clone(),
            applied,
            state.clone(),
            activity.clone(),
        ),
        catalog,
        _catalog_task: DropAbort(catalog_task),
        origin: format!("pgmesh_{}", link.peer),
        relations: HashMap::new(),
        types: HashMap::new(),
        maps: HashMap::new(),
        chunk: Chunk::default(),
        open: None,
        pending_commit: None,
        batch_started: None,
        sent_commit: applied,
        passed: applied,
        state,
        pending_txns: 0,
        batch_first_ts: None,
        batch_max_ts: None,
        in_flight: VecDeque::new(),
        clock_noted: None,
    };
    state.applied(applied);
    state.set_phase(Phase::Streaming);
    let mut commits = d.applier.commits();
    let mut ack_tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        let deadline = d.batch_started.map(|t| t + link.limits.max_delay);
        tokio::select! {
            ev = stream.next_event() => {
                let Some(ev) = ev? else {
                    return Err(SidecarError::Source(crate::source::SourceError::Closed { target: stream.target().to_string() }));
                };
                if let Some(c) = stream.take_clock_sample() {
                    clock.observe(c);
                }
                match ev {
                    ReplicationEvent::XLogData(x) => {
                        let msg = decoder.decode(x.data)?;
                        if filter.observe(&msg) == Verdict::Drop {
                            continue;
                        }
                        let dropped = filter.txn_dropped();
                        d.on_message(msg, dropped).await?;
                    }
                    // Between upstream transactions the server has sent everything that
                    // committed before its send position: remember it; the next tick
                    // acknowledges it once what is pending here is committed and durable.
                    // (A busy walsender sends a keepalive after nearly every transaction;
                    // asking the local node for progress each time stalled the reader.)
                    ReplicationEvent::Keepalive { wal_end, send_time } if d.open.is_none() => {
                        d.passed = d.passed.max(wal_end);
                        // Idle and all applied: whatever the peer commits next, it
                        // commits after this keepalive left it.
                        if d.idle() {
                            d.state.passed_peer_time(send_time);
                        }
                    }
                    _ => {}
                }
            }
            // The batch is due; it closes now if the writer is free, else as soon as the
            // writer commits the previous one (meanwhile it keeps growing).
            _ = sleep_until(deadline), if deadline.is_some() && d.open.is_none() && d.writer_idle() => {
                d.commit_batch().await?;
            }
            _ = commits.changed(), if d.batch_due() && !d.writer_idle() => {
                if d.writer_idle() {
                    d.commit_batch().await?;
                }
            }
            _ = ack_tick.tick() => {
                let ack = {
                    let _step = activity.reader.enter(Step::ReadingLocalProgress);
                    d.acknowledgeable().await?
                };
                tracing::trace!(%ack, applied = %d.applier.applied(), passed = %d.passed, idle = d.idle(), "acknowledging");
                let before = stream.flushed();
                stream.set_flushed(ack);
                // Caught up with a quiet peer: say so now, not at the next status interval
                // or keepalive (up to a second later). A planned switchover waits for this
                // position on the slot, with the endpoint's clients paused.
                if stream.flushed() > before && d.idle() {
                    let _step = activity.reader.enter(Step::SendingStatus);
                    stream.send_status(false).await?;
                }
                d.report_progress();
                let _step = activity.reader.enter(Step::StoringClockSkew);
                clock.tick(&link.local_node, &link.peer, state, &d.catalog).await;
            }
            e = d.applier.failure() => return Err(e),
            _ = stop.changed() => {
                // A complete batch is committed; a transaction still being read is not
                // (the writer rolls back what follows its last commit).
                if d.open.is_none() && d.pending_commit.is_some() {
                    d.commit_batch().await?;
                }
                d.applier.finish().await?;
                let durable = d.durable_progress().await?;
                stream.set_flushed(durable);
                let _ = stream.shutdown().await;
                tracing::info!(applied = %d.applier.applied(), acknowledged = %durable, "stream from peer stopped");
                return Ok(());
            }
        }
    }
}

/// The old image of a change to a key-less table: only a full one ('O') names its row;
/// a key-only one means the peer's table has a key (or another identity) that this
/// node's lacks.
fn keyless_old(map: &TableMap, old: Option<&OldTuple>) -> Result<Option<Row>, ApplyError> {
    match old {
        Some(OldTuple::Full(t)) => Ok(Some(Row::from_tuple(map, t)?)),
        Some(OldTuple::Key(_)) => Err(ApplyError::KeylessWithoutFullImage {
            table: map.local.name.clone(),
            what: "only the key of the old row",
        }),
        None => Err(ApplyError::KeylessWithoutFullImage {
            table: map.local.name.clone(),
            what: "a change without the old row",
        }),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Direction<'_> {
    fn idle(&self) -> bool {
        self.open.is_none()
            && self.pending_commit.is_none()
            && self.chunk.is_empty()
            && self.applier.applied() >= self.sent_commit
    }

    /// The writer has committed everything handed to it. While it has not, a batch that
    /// is due keeps growing (up to its size limits) instead of queueing behind it: small
    /// batches behind a busy writer would each pay a commit, and the writer would never
    /// catch up.
    fn writer_idle(&self) -> bool {
        self.applier.applied() >= self.sent_commit
    }

    /// A complete batch waits and its delay has passed.
    fn batch_due(&self) -> bool {
        self.open.is_none()
            && self.pending_commit.is_some()
            && self
                .batch_started
                .is_some_and(|t| t.elapsed() >= self.link.limits.max_delay)
    }

    /// Forgets the in-flight batches the writer has committed.
    fn prune_in_flight(&mut self) -> Lsn {
        let applied = self.applier.applied();
        while self
            .in_flight
            .front()
            .is_some_and(|(end, _)| *end <= applied)
        {
            self.in_flight.pop_front();
        }
        applied
    }

    /// Publishes what is done and how old the oldest transaction not yet applied is.
    fn report_progress(&mut self) {
        let applied = self.prune_in_flight();
        let oldest = self
            .in_flight
            .front()
            .map(|(_, ts)| *ts)
            .or(self.batch_first_ts)
            .or(self.open.as_ref().filter(|o| !o.skip).map(|o| o.commit_ts));
        let lag = oldest.and_then(crate::observe::state::age);
        let done = if self.idle() {
            applied.max(self.passed)
        } else {
            applied
        };
        self.state.progress(done, lag);
    }

    async fn durable_progress(&self) -> Result<Lsn, SidecarError> {
        Ok(origin_progress(&self.catalog, &self.origin, true).await?)
    }

    /// What the peer may forget: the durable origin progress; and when nothing is in
    /// flight and every local commit is on disk, also what was read past (skipped
    /// transactions, idle WAL), so an idle or loop-filtered direction retains no WAL.
    async fn acknowledgeable(&self) -> Result<Lsn, SidecarError> {
        let durable = self.durable_progress().await?;
        if self.idle() && durable >= self.applier.applied() {
            Ok(durable.max(self.passed))
        } else {
            Ok(durable)
        }
    }

    async fn on_message(&mut self, msg: Message, origin_dropped: bool) -> Result<(), SidecarError> {
        match msg {
            Message::Begin(b) => {
                // The server does not resend what committed before the start position;
                // this guards the same rule on our side.
                let skip = b.final_lsn < self.sent_commit;
                if skip {
                    tracing::debug!(xid = b.xid, final_lsn = %b.final_lsn,
                        applied = %self.sent_commit, "reading past a transaction applied before");
                }
                // A long wait happens here, with what is batched committed first: the
                // wait then holds no row locks. A short one (a peer clock a few ms
                // ahead) is left to the batch's commit, the only step that must come
                // after our clock passed the commit time: ending the batch at every
                // such Begin would cost the batching itself.
                if let Some(wait) = self.clock_wait(b.commit_time).filter(|_| !skip) {
                    if wait > SHORT_CLOCK_WAIT {
                        if self.pending_commit.is_some() {
                            self.commit_batch().await?;
                        }
                        self.state.metrics.clock_waits.increment(1);
                        tokio::time::sleep(wait).await;
                    }
                }
                self.open = Some(OpenTxn {
                    commit_lsn: b.final_lsn,
                    commit_ts: b.commit_time,
                    skip,
                    touches_uniques: false,
                });
            }
            Message::Relation(r) => {
                self.maps.remove(&r.oid);
                // Queued chunks carry their own table maps; this is for later lookups.
                self.applier.send(Work::ForgetTables).await?;
                self.relations.insert(r.oid, r);
            }
            Message::Type(t) => {
                self.types.insert(t.oid, t);
            }
            Message::Commit(c) => {
                let open = self.open.take();
                let skip = origin_dropped || open.as_ref().is_none_or(|o| o.skip);
                if skip {
                    self.passed = self.passed.max(c.end_lsn);
                    return Ok(());
                }
                self.pending_commit = Some((c.end_lsn, c.commit_time));
                self.pending_txns += 1;
                self.batch_first_ts.get_or_insert(c.commit_time);
                self.batch_max_ts = self.batch_max_ts.max(Some(c.commit_time));
                let started = *self.batch_started.get_or_insert_with(Instant::now);
                let l = &self.link.limits;
                // Rows keep the downstream commit's time, which is the last upstream
                // commit of the batch. Rows of tables with other unique constraints are
                // compared with *other* rows' times (which row holds a value), so they
                // must keep their own: such a transaction ends its batch.
                if open.is_some_and(|o| o.touches_uniques)
                    || self.chunk.rows() >= l.max_rows
                    || self.chunk.bytes() >= l.max_bytes
                    || (started.elapsed() >= l.max_delay && self.writer_idle())
                {
                    self.commit_batch().await?;
                }
            }
            Message::Insert(i) => {
                let Some((map, ts, lsn)) = self.target(i.relation_oid).await? else {
                    return Ok(());
                };
                let row = Row::from_tuple(&map, &i.new)?;
                if map.local.is_keyless() {
                    self.push_keyless(&map, ChangeOp::Insert, None, Some(row), ts, lsn)
                        .await?;
                    return Ok(());
                }
                let key = row.key(&map)?;
                self.chunk
                    .push(&map, ChangeOp::Insert, key, Some(row), ts, lsn);
                self.maybe_flush().await?;
            }
            Message::Update(u) => {
                let Some((map, ts, lsn)) = self.target(u.relation_oid).await? else {
                    return Ok(());
                };
                let row = Row::from_tuple(&map, &u.new)?;
                if map.local.is_keyless() {
                    let old = keyless_old(&map, u.old.as_ref())?;
                    self.push_keyless(&map, ChangeOp::Update, old, Some(row), ts, lsn)
                        .await?;
                    return Ok(());
                }
                let key = row.key(&map)?;
                if let Some(OldTuple::Key(old) | OldTuple::Full(old)) = &u.old {
                    let old_key = Row::from_tuple(&map, old)?.key(&map)?;
                    if old_key != key {
                        // A key change: the old key goes away, the new one gets the row.
                        self.chunk
                            .push(&map, ChangeOp::Delete, old_key, None, ts, lsn);
                    }
                }
                // After a key change the row arrives at a new key: an insert there
                // (its unchanged-TOAST columns are completed from the peer when applied).
                let op = match &u.old {
                    Some(OldTuple::Key(old) | OldTuple::Full(old))
                        if Row::from_tuple(&map, old)?.key(&map)? != key =>
                    {
                        ChangeOp::Insert
                    }
                    _ => ChangeOp::Update,
                };
                self.chunk.push(&map, op, key, Some(row), ts, lsn);
                self.maybe_flush().await?;
            }
            Message::Delete(del) => {
                let Some((map, ts, lsn)) = self.target(del.relation_oid).await? else {
                    return Ok(());
                };
                if map.local.is_keyless() {
                    let old = keyless_old(&map, Some(&del.old))?;
                    self.push_keyless(&map, ChangeOp::Delete, old, None, ts, lsn)
                        .await?;
                    return Ok(());
                }
                let key = Row::from_tuple(&map, del.old.tuple())?.key(&map)?;
                self.chunk.push(&map, ChangeOp::Delete, key, None, ts, lsn);
                self.maybe_flush().await?;
            }
            Message::Truncate(t) => {
                let Some(open) = self.open.as_ref().filter(|o| !o.skip) else {
                    return Ok(());
                };
                let (ts, lsn) = (open.commit_ts, open.commit_lsn);
                self.flush_chunk().await?;
                for oid in &t.relation_oids {
                    let Some((map, _, _)) = self.target(*oid).await? else {
                        continue;
                    };
                    self.applier.send(Work::Truncate { map, ts, lsn }).await?;
                }
            }
            Message::Message(m) if m.prefix == KILL_PREFIX && m.transactional() => {
                if origin_dropped || self.open.as_ref().is_none_or(|o| o.skip) {
                    return Ok(());
                }
                let kill = Kill::parse(&m.content).map_err(|e| {
                    ApplyError::Protocol(format!(
                        "unreadable unique-constraint decision from {} at {}: {e}",
                        self.link.peer, m.lsn
                    ))
                })?;
                // In stream order: what came before it is written first.
                self.flush_chunk().await?;
                self.applier.send(Work::Kill { kill, lsn: m.lsn }).await?;
            }
            // Types are mapped by name on the local side; other messages belong to
            // applications; two-phase is not requested on apply streams.
            _ => {}
        }
        Ok(())
    }

    /// The table map and the open transaction's time and LSN for a change, or `None` when
    /// the change belongs to a transaction that is being skipped.
    async fn target(
        &mut self,
        oid: Oid,
    ) -> Result<Option<(Arc<TableMap>, PgTimestamp, Lsn)>, SidecarError> {
        let Some(open) = self.open.as_mut() else {
            return Err(ApplyError::Protocol("row change outside a transaction".into()).into());
        };
        if open.skip {
            return Ok(None);
        }
        let (ts, lsn) = (open.commit_ts, open.commit_lsn);
        if let Some(m) = self.maps.get(&oid) {
            open.touches_uniques |= !m.local.uniques.is_empty();
            return Ok(Some((m.clone(), ts, lsn)));
        }
        let rel = self.relations.get(&oid).ok_or_else(|| {
            ApplyError::Protocol(format!(
                "change for relation {oid} before its Relation message"
            ))
        })?;
        let sides = Sides {
            node: &self.link.local_node,
            peer: &self.link.peer,
            peer_sql: &self.link.peer_sql,
        };
        let map = Arc::new(map_relation(&self.catalog, rel, &self.types, sides).await?);
        self.maps.insert(oid, map.clone());
        if let Some(open) = self.open.as_mut() {
            open.touches_uniques |= !map.local.uniques.is_empty();
        }
        Ok(Some((map, ts, lsn)))
    }

    /// Queues a change to a table without a primary key: kept in order, never collapsed
    /// (rows have no key; see [`crate::apply::keyless`]).
    async fn push_keyless(
        &mut self,
        map: &Arc<TableMap>,
        op: ChangeOp,
        old: Option<Row>,
        new: Option<Row>,
        commit_ts: PgTimestamp,
        lsn: Lsn,
    ) -> Result<(), SidecarError> {
        self.chunk.push_keyless(
            map,
            KeylessChange {
                op,
                old,
                new,
                commit_ts,
                lsn,
            },
        );
        self.maybe_flush().await
    }

    /// Writes the chunk (without committing) once it reaches its bounds, so a large
    /// upstream transaction never sits whole in memory.
    async fn maybe_flush(&mut self) -> Result<(), SidecarError> {
        let l = &self.link.limits;
        if self.chunk.rows() >= l.max_rows || self.chunk.bytes() >= l.max_bytes {
            self.flush_chunk().await?;
        }
        Ok(())
    }

    async fn flush_chunk(&mut self) -> Result<(), SidecarError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = self.chunk.take();
        self.applier.send(Work::Chunk(chunk)).await
    }

    /// Writes what is pending and commits the downstream transaction with the last
    /// upstream commit's position and time.
    async fn commit_batch(&mut self) -> Result<(), SidecarError> {
        self.batch_started = None;
        let Some((end, ts)) = self.pending_commit.take() else {
            return self.flush_chunk().await;
        };
        // Nothing of the batch becomes visible before our clock passed its latest
        // commit time (long waits happened at Begin; this covers the short ones).
        let latest = self.batch_max_ts.take().max(Some(ts)).unwrap_or(ts);
        if let Some(wait) = self.clock_wait(latest) {
            self.state.metrics.clock_waits.increment(1);
            tokio::time::sleep(wait).await;
        }
        // The last chunk goes with the commit, so the writer can send both at once.
        let chunk = (!self.chunk.is_empty()).then(|| self.chunk.take());
        let txns = std::mem::take(&mut self.pending_txns);
        self.applier
            .send(Work::Commit {
                chunk,
                end,
                ts,
                txns,
            })
            .await?;
        self.sent_commit = self.sent_commit.max(end);
        self.passed = self.passed.max(end);
        if let Some(first) = self.batch_first_ts.take() {
            self.prune_in_flight();
            self.in_flight.push_back((end, first));
        }
        Ok(())
    }
}

/// A wait for the local clock up to this long is left to the batch's commit
/// ([`Direction::commit_batch`]) instead of ending the batch at the transaction's Begin.
const SHORT_CLOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

impl Direction<'_> {
    /// How long to hold back what was committed at `ts` so that it is applied only once
    /// this node's clock passed it ([`crate::conflict::causality`]).
    fn clock_wait(&mut self, ts: PgTimestamp) -> Option<std::time::Duration> {
        let now = crate::pgtime::unix_micros_now();
        let wait = match clock_wait(ts, now, self.link.clock_wait_max) {
            ClockWait::Ready => return None,
            ClockWait::Wait(d) => d,
            ClockWait::TooFar(ahead) => {
                if self.note_clock() {
                    tracing::warn!(
                        ahead_s = ahead.as_secs_f64(), max_s = self.link.clock_wait_max.as_secs_f64(),
                        "a change from the peer is committed further ahead of this node's clock than [replication] clock_wait_max; applied at once: a local write made on top of it in the next `ahead_s` can lose to it on the peer and the nodes then differ in that row (pgmesh verify / repair); sync both clocks (chrony/NTP)");
                }
                return None;
            }
        };
        if wait >= std::time::Duration::from_millis(100) && self.note_clock() {
            tracing::warn!(wait_s = wait.as_secs_f64(),
                "the peer's commits are ahead of this node's clock: each is applied once this clock passed its commit time, so that a local write made after it is stamped later (last-writer-wins stays causal); the direction lags by the skew; sync both clocks (chrony/NTP)");
        }
        Some(wait)
    }

    /// Whether to log about the clock now (at most once a minute).
    fn note_clock(&mut self) -> bool {
        let due = self
            .clock_noted
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
        if due {
            self.clock_noted = Some(Instant::now());
        }
        due
    }
}

/// Aborts a connection task when dropped (the session ends with the direction).
struct DropAbort(tokio::task::JoinHandle<()>);

impl Drop for DropAbort {
    fn drop(&mut self) {
        self.0.abort();
    }
}
