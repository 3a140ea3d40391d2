//! The reading half of one direction: feeds decoded messages to the assembler
//! ([`crate::txn::Assembler`]), maps the tables they name against the local catalog, and
//! carries out the assembler's steps: writing chunks, committing batches once this
//! node's clock passed their commit times, and keeping the positions to acknowledge
//! ([`super::ack`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ack::Acks;
use super::applier::{Applier, Work};
use super::link::{PeerLink, SidecarError};
use super::scheduling::CatchUpVote;
use crate::apply::session::applied_progress;
use crate::apply::shape_io::{map_relation, Sides};
use crate::conflict::causality::{clock_wait, ClockWait};
use crate::filter::{OriginFilter, Verdict};
use crate::observe::DirectionState;
use crate::protocol::pgoutput::{Message, PgTimestamp};
use crate::source::ReplicationStream;
use crate::txn::spool::Committed;
use crate::txn::{Assembler, Context, Spools, Step};
use crate::Lsn;

/// A wait for the local clock up to this long is left to the batch's commit
/// ([`Direction::commit_batch`]) instead of ending the batch at the transaction's Begin.
const SHORT_CLOCK_WAIT: Duration = Duration::from_millis(20);

/// How often a replay of a kept transaction tells the peer it is still there.
const REPLAY_STATUS_EVERY: Duration = Duration::from_secs(1);

/// A durable-progress read in flight ([`Direction::durable_progress_read`]).
pub(super) type ProgressRead =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Lsn, SidecarError>> + Send>>;

pub(super) struct Direction<'l> {
    pub(super) link: &'l PeerLink,
    pub(super) applier: Applier,
    /// A plain session on the local node: table definitions and origin progress (shared
    /// with the progress read that runs beside the reading loop).
    pub(super) catalog: Arc<tokio_postgres::Client>,
    pub(super) _catalog_task: DropAbort,
    pub(super) assembler: Assembler,
    /// Streamed transactions kept whole while another one is applied open.
    pub(super) spools: Spools,
    pub(super) acks: Acks,
    pub(super) state: &'l DirectionState,
    /// When the log last said that changes wait for this node's clock.
    pub(super) clock_noted: Option<Instant>,
    /// This direction's say in the threads' CPU policy (`[apply] cpu_policy = "auto"`).
    pub(super) cpu: CatchUpVote,
    /// The oldest transaction not yet applied was younger than [`KEEPING_UP_LAG`] at the
    /// last progress report: a batch may then go as soon as the peer has sent all it had.
    pub(super) keeping_up: bool,
}

/// Below this lag (beyond the batch delay) a batch is not held for its delay once the
/// peer has sent everything (lower latency for a few more commits); above it, batches
/// grow for throughput: in lag runs at 20,000 txn/s the extra commits made a saturated
/// machine fall further behind.
const KEEPING_UP_LAG: Duration = Duration::from_millis(50);

/// Whether a direction whose oldest unapplied transaction is `lag` old keeps up. Lag its
/// batches' own delay explains is not falling behind: with a delay above
/// [`KEEPING_UP_LAG`], one batch that waited out its delay would otherwise turn the
/// hurry off, and every later batch, waiting its delay in turn, would keep it off for
/// as long as transactions kept coming.
fn keeps_up(lag: Option<Duration>, max_delay: Duration) -> bool {
    lag.is_none_or(|l| l < max_delay + KEEPING_UP_LAG)
}

impl Direction<'_> {
    /// Nothing read waits here or in the writer.
    pub(super) fn idle(&self) -> bool {
        self.assembler.is_drained() && self.spools.is_empty() && self.writer_idle()
    }

    /// The writer has committed everything handed to it. While it has not, a batch that
    /// is due keeps growing (up to its size limits) instead of queueing behind it: small
    /// batches behind a busy writer would each pay a commit, and the writer would never
    /// catch up.
    pub(super) fn writer_idle(&self) -> bool {
        self.acks.writer_idle(self.applier.applied())
    }

    /// Publishes what is done and how old the oldest transaction not yet applied is;
    /// `discarded`: the changes from elsewhere the origin filter dropped so far.
    pub(super) fn report_progress(&mut self, discarded: u64) {
        let idle = self.idle();
        let unsent = self.assembler.oldest_unsent();
        let (done, oldest) = self.acks.progress(self.applier.applied(), idle, unsent);
        let lag = oldest.and_then(crate::observe::state::age);
        self.keeping_up = keeps_up(lag, self.assembler.max_delay());
        self.cpu.observe(lag, discarded);
        self.state.progress(done, lag);
    }

    pub(super) async fn durable_progress(&self) -> Result<Lsn, SidecarError> {
        Ok(applied_progress(&self.catalog, &self.link.peer, true).await?)
    }

    /// A read of the durable progress that borrows nothing, so the reading loop goes on
    /// reading and committing batches while it runs: awaited in the loop, the round trip
    /// to the local node five times a second held up the transactions that arrived
    /// meanwhile (no gain beyond the noise in lag runs, BENCHMARKS.md, sixteenth
    /// session; a reader that never waits for a side task is the shape wanted).
    pub(super) fn durable_progress_read(&self) -> ProgressRead {
        let catalog = self.catalog.clone();
        let peer = self.link.peer.clone();
        Box::pin(async move { Ok(applied_progress(&catalog, &peer, true).await?) })
    }

    /// What the peer may forget ([`Acks::acknowledgeable`]), given a durable progress
    /// read a moment ago: a position read earlier is only lower, and what was read past
    /// counts only once that position covers every commit, so a stale read never confirms
    /// more than is on disk.
    pub(super) fn acknowledgeable(&self, durable: Lsn) -> Lsn {
        self.acks
            .acknowledgeable(durable, self.applier.applied(), self.idle())
    }

    pub(super) async fn on_message(
        &mut self,
        msg: Message,
        origin_dropped: bool,
        arrived: Instant,
    ) -> Result<(), SidecarError> {
        // Tables are mapped against the local catalog before the (pure) assembler sees
        // the change.
        for oid in self.assembler.unmapped(&msg) {
            let Some(rel) = self.assembler.relations().unmapped(oid) else {
                continue;
            };
            let sides = Sides {
                node: &self.link.local_node,
                peer: &self.link.peer,
                peer_sql: &self.link.peer_sql,
            };
            let types = self.assembler.relations().types();
            let map = map_relation(&self.catalog, rel, types, sides).await?;
            self.assembler
                .relations_mut()
                .insert_map(oid, std::sync::Arc::new(map));
        }
        let cx = Context {
            origin_dropped,
            handed_out: self.acks.sent(),
            // Read only for a Commit, the one message the assembler asks it for (a
            // borrow of the writer's watch per message was 2.5 % of the sidecar's CPU
            // in catch-up).
            writer_idle: matches!(msg, Message::Commit(_)) && self.writer_idle(),
            // The message's arrival, read once by the stream (a clock read per message
            // was a tenth of the sidecar's CPU in catch-up).
            now: arrived,
        };
        match self.assembler.on_message(msg, cx)? {
            Step::Continue => {}
            Step::Began {
                commit_ts,
                before_batch,
            } => {
                // Rows keep the downstream commit's time: a transaction that committed
                // before one already batched starts a batch of its own, or its rows and
                // those before it would carry a time earlier than some of their own
                // (converge_random's oracle saw a write applied under an earlier time).
                if before_batch && self.assembler.holds_commits() {
                    self.commit_batch().await?;
                }
                // A long wait happens here, with what is batched committed first: the
                // wait then holds no row locks. A short one (a peer clock a few ms
                // ahead) is left to the batch's commit, the only step that must come
                // after our clock passed the commit time: ending the batch at every
                // such Begin would cost the batching itself.
                if let Some(wait) = self.clock_wait(commit_ts) {
                    if wait > SHORT_CLOCK_WAIT {
                        if self.assembler.holds_commits() {
                            self.commit_batch().await?;
                        }
                        self.state.metrics.clock_waits.increment(1);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            // Queued chunks carry their own table maps; this is for later lookups.
            Step::TablesChanged => self.applier.send(Work::ForgetTables).await?,
            Step::ReadPast(lsn) => self.acks.read_past(lsn),
            Step::Write(chunk) => self.applier.send(Work::Chunk(chunk)).await?,
            Step::Truncate {
                before,
                tables,
                ts,
                lsn,
            } => {
                if let Some(chunk) = before {
                    self.applier.send(Work::Chunk(chunk)).await?;
                }
                for map in tables {
                    self.applier.send(Work::Truncate { map, ts, lsn }).await?;
                }
            }
            Step::Kill { before, kill, lsn } => {
                if let Some(chunk) = before {
                    self.applier.send(Work::Chunk(chunk)).await?;
                }
                self.applier.send(Work::Kill { kill, lsn }).await?;
            }
            Step::EndBatch => self.commit_batch().await?,
            Step::StreamStart { first } => {
                // The stream session must not wait for rows an open batch holds.
                if self.assembler.holds_commits() {
                    self.commit_batch().await?;
                }
                if first {
                    self.applier.send(Work::StreamBegin).await?;
                }
            }
            Step::StreamWrite(chunk) => self.applier.send(Work::StreamChunk(chunk)).await?,
            Step::StreamSavepoint { before, subxid } => {
                if let Some(chunk) = before {
                    self.applier.send(Work::StreamChunk(chunk)).await?;
                }
                self.applier.send(Work::StreamSavepoint(subxid)).await?;
            }
            Step::StreamRollback { to } => self.applier.send(Work::StreamRollback(to)).await?,
            Step::StreamCommit { end, ts } => {
                // In upstream commit order: what committed before it commits first.
                if self.assembler.holds_commits() {
                    self.commit_batch().await?;
                }
                if let Some(wait) = self.clock_wait(ts) {
                    self.state.metrics.clock_waits.increment(1);
                    tokio::time::sleep(wait).await;
                }
                self.applier.send(Work::StreamCommit { end, ts }).await?;
                self.acks.batch_sent(end, ts, self.applier.applied());
            }
            Step::Unstreamable(why) => {
                return Err(crate::apply::streamed::Unstreamable(why.into()).into());
            }
        }
        Ok(())
    }

    /// Applies a streamed transaction kept whole ([`crate::txn::spool`]) as the whole
    /// transaction it is, in its place in the commit order, through the origin filter
    /// like any other.
    ///
    /// The stream is not read meanwhile: a status update goes out every
    /// [`REPLAY_STATUS_EVERY`], or the walsender would end the connection after
    /// `wal_sender_timeout` of silence during a long replay (and the peer would send the
    /// transaction again, to be replayed again).
    pub(super) async fn replay(
        &mut self,
        mut kept: Committed,
        filter: &mut OriginFilter,
        stream: &mut ReplicationStream,
    ) -> Result<(), SidecarError> {
        tracing::debug!(
            xid = kept.xid(),
            bytes = kept.bytes(),
            "applying a kept streamed transaction whole"
        );
        let arrived = Instant::now();
        let mut status_at = arrived;
        let (begin, commit) = (kept.begin(), kept.commit());
        self.feed(begin, filter, arrived).await?;
        let mut messages = kept.messages()?;
        while let Some(msg) = messages.next_message()? {
            self.feed(msg, filter, arrived).await?;
            if status_at.elapsed() >= REPLAY_STATUS_EVERY {
                stream.send_status(false).await?;
                status_at = Instant::now();
            }
        }
        self.feed(commit, filter, arrived).await
    }

    /// One message for the assembler, through the origin filter.
    pub(super) async fn feed(
        &mut self,
        msg: Message,
        filter: &mut OriginFilter,
        arrived: Instant,
    ) -> Result<(), SidecarError> {
        if filter.observe(&msg) == Verdict::Drop {
            // PG16+ drops changes with an origin on the server (streaming is asked for
            // only there); a streamed transaction still marked with one is not applied
            // streamed.
            if matches!(msg, Message::Origin(_)) && self.assembler.in_stream_block() {
                return Err(crate::apply::streamed::Unstreamable(
                    "it carries a replication origin".into(),
                )
                .into());
            }
            return Ok(());
        }
        let dropped = filter.txn_dropped();
        self.on_message(msg, dropped, arrived).await
    }

    /// Writes what is pending and commits the downstream transaction with the last
    /// upstream commit's position and time.
    pub(super) async fn commit_batch(&mut self) -> Result<(), SidecarError> {
        let batch = match self.assembler.take_batch() {
            Ok(batch) => batch,
            Err(Some(chunk)) => return self.applier.send(Work::Chunk(chunk)).await,
            Err(None) => return Ok(()),
        };
        // Nothing of the batch becomes visible before our clock passed its latest
        // commit time (long waits happened at Begin; this covers the short ones).
        if let Some(wait) = self.clock_wait(batch.latest_ts) {
            self.state.metrics.clock_waits.increment(1);
            tokio::time::sleep(wait).await;
        }
        self.applier
            .send(Work::Commit {
                chunk: batch.chunk,
                end: batch.end,
                ts: batch.ts,
                txns: batch.txns,
            })
            .await?;
        self.acks
            .batch_sent(batch.end, batch.first_ts, self.applier.applied());
        self.cpu
            .observe_handed_out(crate::observe::state::age(batch.first_ts));
        Ok(())
    }

    /// How long to hold back what was committed at `ts` so that it is applied only once
    /// this node's clock passed it ([`crate::conflict::causality`]).
    fn clock_wait(&mut self, ts: PgTimestamp) -> Option<Duration> {
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
        if wait >= Duration::from_millis(100) && self.note_clock() {
            tracing::warn!(wait_s = wait.as_secs_f64(),
                "the peer's commits are ahead of this node's clock: each is applied once this clock passed its commit time, so that a local write made after it is stamped later (last-writer-wins stays causal); the direction lags by the skew; sync both clocks (chrony/NTP)");
        }
        Some(wait)
    }

    /// Whether to log about the clock now (at most once a minute).
    fn note_clock(&mut self) -> bool {
        let due = self
            .clock_noted
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            self.clock_noted = Some(Instant::now());
        }
        due
    }
}

/// Aborts a connection task when dropped (the session ends with the direction).
pub(super) struct DropAbort(pub(super) tokio::task::JoinHandle<()>);

impl Drop for DropAbort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_the_batch_delay_explains_is_keeping_up() {
        let ms = Duration::from_millis;
        assert!(keeps_up(None, ms(1)));
        assert!(keeps_up(Some(ms(30)), ms(1)));
        assert!(!keeps_up(Some(ms(80)), ms(1)));
        // A batch that waited out a 100 ms delay is not a direction falling behind.
        assert!(keeps_up(Some(ms(120)), ms(100)));
        assert!(!keeps_up(Some(ms(200)), ms(100)));
    }
}
