//! The loop of one direction: stream the peer's slot, decode, drop what has an origin,
//! assemble changes into chunks and batches ([`crate::txn`], carried out by
//! [`super::direction`]) and hand them to the writing half ([`super::applier`]), which
//! applies them in coalesced transactions bound to the peer's origin while this half
//! reads on; acknowledge to the peer only what is durably applied ([`super::ack`]).

use std::sync::Arc;
use tokio::time::Instant;

use tokio::sync::watch;
use tracing::Instrument;

use super::ack::Acks;
use super::applier::{Applier, StreamTarget};
use super::clock::ClockWatch;
use super::direction::{Direction, DropAbort};
use super::link::{PeerLink, SidecarError};
use super::scheduling::CatchUpVote;
use super::stall::{DirectionActivity, Waiting};
use crate::apply::{ApplyError, ApplySession};
use crate::filter::OriginFilter;
use crate::observe::{DirectionState, Phase};
use crate::protocol::pgoutput::Decoder;
use crate::source::{
    connect_and_start, Backoff, OutputPlugin, PgoutputOptions, ReplicationEvent, ReplicationStream,
    StreamConfig, Streaming,
};
use crate::txn::spool::SPOOL_MEMORY;
use crate::txn::{Assembler, Route, Spools};

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
    // Since when big transactions are read whole after one could not be applied streamed.
    let mut unstreamed_since: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            state.set_phase(Phase::Stopped);
            return Ok(());
        }
        backoff.connected(Instant::now());
        let stream_again = unstreamed_since.map(|t| t + STREAM_AGAIN_AFTER);
        match run_once(&link, &mut stop, &state, &mut clock, stream_again).await {
            Ok(Ended::Stopped) => {
                state.set_phase(Phase::Stopped);
                return Ok(());
            }
            Ok(Ended::StreamAgain) => {
                tracing::info!("streaming big transactions again");
                unstreamed_since = None;
            }
            Err(SidecarError::Unstreamable(u)) => {
                // Nothing is lost: the stream restarts from the applied position, and the
                // transaction arrives whole at its commit, like any other.
                tracing::warn!(reason = %u, again_after = ?STREAM_AGAIN_AFTER, "big transactions are read whole for a while");
                unstreamed_since = Some(Instant::now());
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

/// After a streamed transaction had to be read whole, how long big transactions arrive
/// whole before streaming is asked for again (and only once the direction is idle).
const STREAM_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How one connection's run ended without an error.
enum Ended {
    /// The direction was told to stop.
    Stopped,
    /// Big transactions were read whole; time to reconnect asking for streaming again.
    StreamAgain,
}

/// One connection to the peer, until an error or a stop. `stream_again`: streaming is off
/// (a streamed transaction had to be read whole) until then.
async fn run_once(
    link: &PeerLink,
    stop: &mut watch::Receiver<bool>,
    state: &Arc<DirectionState>,
    clock: &mut ClockWatch,
    stream_again: Option<Instant>,
) -> Result<Ended, SidecarError> {
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
    let stream_after = match link.stream_after {
        Some(bytes) if stream_again.is_none() => {
            stream_origin_ready(&catalog, link).await?.then_some(bytes)
        }
        _ => None,
    };
    let mut cfg = StreamConfig::with_plugin(
        &link.slot,
        OutputPlugin::Pgoutput(PgoutputOptions {
            publications: vec![link.publication.clone()],
            origin_none: true,
            // Unique-constraint decisions of the peer's sidecar (apply::kill).
            messages: true,
            // Big transactions while they are open (PG16+ peers: see `Streaming`).
            streaming: if stream_after.is_some() {
                Streaming::On
            } else {
                Streaming::Off
            },
            ..PgoutputOptions::default()
        }),
    );
    cfg.status_interval = std::time::Duration::from_secs(1);
    let mut source = link.peer_source.clone();
    if let Some(bytes) = stream_after {
        // The peer's walsender streams a transaction once it holds this much of it.
        source.settings.push((
            "logical_decoding_work_mem".into(),
            format!("{}kB", (bytes >> 10).max(64)),
        ));
    }
    let mut stream = connect_and_start(&source, &cfg, applied).await?;
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
            StreamTarget {
                local: link.local.clone(),
                peer_sql: link.peer_sql.clone(),
                local_node: link.local_node.clone(),
                max_deferred: link.limits.max_bytes,
            },
        ),
        catalog: Arc::new(catalog),
        _catalog_task: DropAbort(catalog_task),
        assembler: Assembler::new(link.limits, &link.peer),
        spools: Spools::new(SPOOL_MEMORY, std::env::temp_dir()),
        acks: Acks::new(applied),
        state,
        clock_noted: None,
        cpu: CatchUpVote::default(),
        keeping_up: true,
    };
    state.applied(applied);
    state.set_phase(Phase::Streaming);
    let mut commits = d.applier.commits();
    let mut ack_tick = tokio::time::interval(std::time::Duration::from_millis(200));
    // The durable progress being read for the next acknowledgement, beside the loop.
    let mut progress_read: Option<super::direction::ProgressRead> = None;
    // One timer for the batch deadline, moved only when the deadline does (a new timer
    // per pass of the loop registered and cleared one with the runtime every time).
    let batch_timer = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(batch_timer);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = d.assembler.batch_deadline();
        if deadline != armed {
            if let Some(t) = deadline {
                batch_timer.as_mut().reset(t);
            }
            armed = deadline;
        }
        tokio::select! {
            ev = stream.next_event() => {
                let mut ev = ev?;
                // Frames already read from the socket are handled here, up to
                // DRAIN_MAX, rather than one pass of this select! each: every pass arms
                // the batch timer and the commit watch again.
                let mut handled = 0;
                loop {
                    let Some(e) = ev else {
                        return Err(SidecarError::Source(crate::source::SourceError::Closed { target: stream.target().to_string() }));
                    };
                    if let Some(c) = stream.take_clock_sample() {
                        clock.observe(c);
                    }
                    let arrived = stream.last_arrival();
                    on_event(&mut d, e, arrived, &mut decoder, &mut filter, &mut stream).await?;
                    handled += 1;
                    if handled == DRAIN_MAX || !stream.frame_buffered() {
                        break;
                    }
                    ev = stream.next_event().await?;
                }
            }
            // The batch is due; it closes now if the writer is free, else as soon as the
            // writer commits the previous one (meanwhile it keeps growing).
            _ = &mut batch_timer, if deadline.is_some() && !d.assembler.in_txn() && d.writer_idle() => {
                d.commit_batch().await?;
            }
            // A batch waits behind a busy writer: its commit is the next thing to look
            // at, whether the batch is due already (it goes now) or not yet (the next
            // pass arms the timer above, enabled once the writer is idle). Waiting here
            // only while the batch is due let one that fell due *during* this select!
            // wait for the next message or progress tick: 165 ms for the last
            // transaction of a lag run (BENCHMARKS.md).
            _ = commits.changed(), if !d.writer_idle() && d.assembler.batch_waiting() => {
                if d.writer_idle() && d.assembler.batch_due(Instant::now()) {
                    d.commit_batch().await?;
                }
            }
            _ = ack_tick.tick() => {
                if progress_read.is_none() {
                    progress_read = Some(d.durable_progress_read());
                }
                d.report_progress(filter.dropped_changes());
                if stream_again.is_some_and(|t| Instant::now() >= t) && d.idle() {
                    d.applier.finish().await?;
                    let _ = stream.shutdown().await;
                    return Ok(Ended::StreamAgain);
                }
                let _step = activity.reader.enter(Waiting::StoringClockSkew);
                clock.tick(&link.local_node, &link.peer, state, &d.catalog).await;
            }
            durable = async {
                match progress_read.as_mut() {
                    Some(read) => read.await,
                    None => std::future::pending().await,
                }
            }, if progress_read.is_some() => {
                progress_read = None;
                let ack = d.acknowledgeable(durable?);
                tracing::trace!(%ack, applied = %d.applier.applied(), passed = %d.acks.passed(), idle = d.idle(), "acknowledging");
                let before = stream.flushed();
                stream.set_flushed(ack);
                // Caught up with a quiet peer: say so now, not at the next status interval
                // or keepalive (up to a second later). A planned switchover waits for this
                // position on the slot, with the endpoint's clients paused.
                if stream.flushed() > before && d.idle() {
                    let _step = activity.reader.enter(Waiting::SendingStatus);
                    stream.send_status(false).await?;
                }
            }
            e = d.applier.failure() => return Err(e),
            _ = stop.changed() => {
                // A complete batch is committed; a transaction still being read is not
                // (the writer rolls back what follows its last commit).
                if !d.assembler.in_txn() && d.assembler.holds_commits() {
                    d.commit_batch().await?;
                }
                d.applier.finish().await?;
                let durable = d.durable_progress().await?;
                stream.set_flushed(durable);
                let _ = stream.shutdown().await;
                tracing::info!(applied = %d.applier.applied(), acknowledged = %durable, "stream from peer stopped");
                return Ok(Ended::Stopped);
            }
        }
    }
}

/// Frames handled in a row without returning to the direction's `select!` (a few
/// hundred microseconds of work at most, so the batch deadline, acknowledgements and a
/// stop are never held up noticeably).
const DRAIN_MAX: usize = 64;

/// One event of the peer's stream: a pgoutput message goes through the origin filter
/// into the assembler; a keepalive between transactions marks how far the peer sent.
async fn on_event(
    d: &mut Direction<'_>,
    ev: ReplicationEvent,
    arrived: Instant,
    decoder: &mut Decoder,
    filter: &mut OriginFilter,
    stream: &mut ReplicationStream,
) -> Result<(), SidecarError> {
    match ev {
        ReplicationEvent::XLogData(x) => {
            let msg = decoder.decode_ref(&x.data)?;
            // A second big transaction streamed while one is applied open is kept whole
            // until its commit (txn::spool).
            match d.spools.route(&msg, &x.data, d.assembler.streamed_xid())? {
                Route::Assembler => d.feed(msg, filter, arrived).await?,
                Route::Kept => {}
                Route::Began => d.state.metrics.streamed_kept.increment(1),
                Route::Commit(kept) => d.replay(*kept, filter, stream).await?,
            }
        }
        // Between upstream transactions the server has sent everything that committed
        // before its send position: remember it; the next tick acknowledges it once
        // what is pending here is committed and durable. (A busy walsender sends a
        // keepalive after nearly every transaction; asking the local node for progress
        // each time stalled the reader.)
        ReplicationEvent::Keepalive { wal_end, send_time } if !d.assembler.in_txn() => {
            d.acks.read_past(wal_end);
            // The walsender sends such a keepalive when it has sent all it had and is
            // about to wait for WAL: a batch waiting out its delay would gather nothing
            // more (BENCHMARKS.md, seventeenth session). Not when more came behind it (a
            // reader that is behind meets keepalives that are old news), nor while this
            // direction lags: then fewer, bigger batches help it catch up.
            if d.keeping_up && !stream.more_arrived()? {
                d.assembler.sender_idle();
            }
            // Idle and all applied: whatever the peer commits next, it commits after
            // this keepalive left it.
            if d.idle() {
                d.state.passed_peer_time(send_time);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether the origin that streamed transactions commit under exists (`pgmesh setup`
/// creates it; a node set up by an older version lacks it until setup runs again).
async fn stream_origin_ready(
    catalog: &tokio_postgres::Client,
    link: &PeerLink,
) -> Result<bool, SidecarError> {
    let origin = crate::config::names::stream_origin_name(&link.peer);
    let ready: bool = catalog
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
            &[&origin],
        )
        .await
        .map_err(ApplyError::from)?
        .get(0);
    if !ready {
        tracing::warn!(%origin, "[apply] stream_after is set but replication origin `origin` is missing on this node: big transactions are applied whole; run `pgmesh setup -c <config>` once to create it");
    }
    Ok(ready)
}
