//! The writing half of a direction, in a task of its own: while it writes one chunk into
//! the local node, the reading half (stream_apply.rs, direction.rs) keeps reading the
//! peer's stream and builds the next one, so neither the local apply backend nor the
//! stream waits for the other. Work arrives in stream order through a small bounded
//! queue (memory stays bounded: the chunk being built, the queued ones and the one being
//! written).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::link::SidecarError;
use super::stall::{DirectionActivity, Waiting};
use crate::apply::kill::Kill;
use crate::apply::ledger::ConflictRecord;
use crate::apply::streamed::StreamSession;
use crate::apply::ApplySession;
use crate::batch::Chunk;
use crate::observe::DirectionState;
use crate::protocol::pgoutput::{PgTimestamp, Xid};
use crate::sqlconn::SqlConfig;
use crate::table::local::TableMap;
use crate::Lsn;

/// Chunks that may wait while one is written.
const QUEUE_DEPTH: usize = 2;

/// One step for the writing half, in stream order.
#[derive(Debug)]
pub enum Work {
    /// Changes to write in the open downstream transaction.
    Chunk(Chunk),
    /// A peer's TRUNCATE of one table, committed there at `ts`.
    Truncate {
        map: Arc<TableMap>,
        ts: PgTimestamp,
        lsn: Lsn,
    },
    /// A peer's unique-constraint decision.
    Kill { kill: Kill, lsn: Lsn },
    /// Write `chunk` (the batch's last), then commit the downstream transaction: the
    /// peer's changes up to `end` (`txns` upstream transactions) are applied.
    Commit {
        chunk: Option<Chunk>,
        end: Lsn,
        ts: PgTimestamp,
        txns: u64,
    },
    /// The peer re-described a relation: drop cached table definitions.
    ForgetTables,
    /// A big transaction the peer streams while it is open: its first block begins.
    StreamBegin,
    /// Changes of the streamed transaction (`apply::streamed`).
    StreamChunk(Chunk),
    /// A subtransaction of the streamed transaction begins.
    StreamSavepoint(Xid),
    /// The streamed transaction aborted, all of it (`None`) or back to a subtransaction.
    StreamRollback(Option<Xid>),
    /// The streamed transaction committed on the peer (everything before it is committed
    /// here already): commit it, then move the main origin to it.
    StreamCommit { end: Lsn, ts: PgTimestamp },
}

/// What the writer needs to open the stream session when a streamed transaction begins.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    pub local: SqlConfig,
    pub peer_sql: SqlConfig,
    pub local_node: String,
    /// Deferred changes beyond this many bytes: the transaction is read again whole.
    pub max_deferred: usize,
}

/// Handle on the writing task.
pub struct Applier {
    /// `None` once [`Applier::finish`] closed the queue.
    tx: Option<mpsc::Sender<Work>>,
    applied: watch::Receiver<Lsn>,
    task: JoinHandle<Result<(), SidecarError>>,
    activity: Arc<DirectionActivity>,
}

impl Applier {
    /// Starts writing with `apply`; `applied` is what is committed locally already.
    pub fn spawn(
        apply: ApplySession,
        peer: String,
        applied: Lsn,
        state: Arc<DirectionState>,
        activity: Arc<DirectionActivity>,
        stream: StreamTarget,
    ) -> Applier {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (applied_tx, applied_rx) = watch::channel(applied);
        let writer = Writer {
            apply,
            stream: None,
            target: stream,
            applied: applied_tx,
            peer,
            state,
        };
        let task = tokio::spawn(writer.run(rx, activity.clone()).in_current_span());
        Applier {
            tx: Some(tx),
            applied: applied_rx,
            task,
            activity,
        }
    }

    /// Queues `work`, waiting while the queue is full. When the writer has failed, its
    /// error is returned instead.
    pub async fn send(&mut self, work: Work) -> Result<(), SidecarError> {
        let sent = match &self.tx {
            Some(tx) => match tx.try_send(work) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(work)) => {
                    let _waiting = self.activity.reader.enter(Waiting::QueueingForWriter);
                    tx.send(work).await.is_ok()
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure().await)
        }
    }

    /// Everything up to here is committed locally.
    #[must_use]
    pub fn applied(&self) -> Lsn {
        *self.applied.borrow()
    }

    /// A receiver that sees each commit of the writer.
    #[must_use]
    pub fn commits(&self) -> watch::Receiver<Lsn> {
        self.applied.clone()
    }

    /// Resolves when the writer stops on its own, which only happens on an error.
    pub async fn failure(&mut self) -> SidecarError {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => SidecarError::TaskFailed("it ended while the stream was running".into()),
            Err(join) => SidecarError::TaskFailed(join.to_string()),
        }
    }

    /// Lets the writer finish what is queued (work after the last commit is rolled back)
    /// and waits for it.
    pub async fn finish(&mut self) -> Result<(), SidecarError> {
        self.tx = None;
        match (&mut self.task).await {
            Ok(r) => r,
            Err(join) => Err(SidecarError::TaskFailed(join.to_string())),
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Dropping the session closes its connection: the server rolls back whatever was
        // not committed, and the origin keeps the last committed position.
        self.task.abort();
    }
}

/// The writing task's state.
struct Writer {
    apply: ApplySession,
    /// Opened at the first streamed transaction, kept for the next.
    stream: Option<StreamSession>,
    target: StreamTarget,
    applied: watch::Sender<Lsn>,
    peer: String,
    state: Arc<DirectionState>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Work>,
        activity: Arc<DirectionActivity>,
    ) -> Result<(), SidecarError> {
        // The open downstream transaction, for the metrics at its commit: rows written and
        // time spent writing (not time spent waiting for the reader).
        let mut rows: u64 = 0;
        let mut busy = std::time::Duration::ZERO;
        while let Some(work) = rx.recv().await {
            let started = std::time::Instant::now();
            let _step = activity.writer.enter(match &work {
                Work::Chunk(_) | Work::StreamChunk(_) => Waiting::WritingChanges,
                Work::Truncate { .. } => Waiting::Truncating,
                Work::Kill { .. } => Waiting::ApplyingDecision,
                Work::Commit { .. } | Work::StreamCommit { .. } => Waiting::Committing,
                Work::ForgetTables
                | Work::StreamBegin
                | Work::StreamSavepoint(_)
                | Work::StreamRollback(_) => Waiting::Free,
            });
            // The stall watch asks about the backend the step waits in.
            activity.writer_in(match (&work, &self.stream) {
                (
                    Work::StreamChunk(_)
                    | Work::StreamSavepoint(_)
                    | Work::StreamRollback(_)
                    | Work::StreamCommit { .. },
                    Some(s),
                ) => s.backend_pid(),
                _ => 0,
            });
            match work {
                Work::Chunk(chunk) => {
                    let stats = self.apply.apply(&chunk).await?;
                    rows += chunk.rows() as u64;
                    tracing::debug!(rows = chunk.rows(), ?stats, took = ?started.elapsed(), "chunk applied");
                }
                Work::Truncate { map, ts, lsn } => self.truncate(&map, ts, lsn).await?,
                Work::Kill { kill, lsn } => {
                    let stats = self.apply.apply_kill(&kill, lsn).await?;
                    tracing::debug!(?kill, ?stats, "applied a peer's unique-constraint decision");
                }
                Work::Commit {
                    chunk,
                    end,
                    ts,
                    txns,
                } => {
                    let in_one_message = match chunk {
                        // A batch of one chunk may commit with its writes (one round trip less).
                        Some(chunk) => {
                            let stats = self.apply.apply_and_commit(&chunk, end, ts).await?;
                            rows += chunk.rows() as u64;
                            tracing::debug!(rows = chunk.rows(), ?stats, took = ?started.elapsed(), "chunk applied");
                            stats.one_message
                        }
                        None => {
                            self.apply.commit(end, ts).await?;
                            false
                        }
                    };
                    self.state.committed(in_one_message);
                    tracing::debug!(%end, took = ?started.elapsed(), "committed");
                    let conflicts = self.apply.take_conflict_counts();
                    self.committed(end, ts, txns, rows, busy + started.elapsed(), conflicts);
                    (rows, busy) = (0, std::time::Duration::ZERO);
                    continue;
                }
                Work::ForgetTables => {
                    self.apply.forget_tables();
                    if let Some(s) = self.stream.as_mut() {
                        s.forget_tables();
                    }
                }
                Work::StreamBegin => match self.stream.as_mut() {
                    Some(s) => s.reset().await?,
                    None => {
                        let t = &self.target;
                        let s = StreamSession::connect(
                            &t.local,
                            &t.peer_sql,
                            &t.local_node,
                            &self.peer,
                            t.max_deferred,
                        )
                        .await?;
                        self.stream = Some(s);
                    }
                },
                Work::StreamChunk(chunk) => self.stream_session()?.write(&chunk).await?,
                Work::StreamSavepoint(subxid) => self.stream_session()?.savepoint(subxid).await?,
                Work::StreamRollback(to) => self.stream_session()?.rollback(to).await?,
                Work::StreamCommit { end, ts } => {
                    let stream = self.stream_session()?;
                    let stats = stream.commit(end, ts).await?;
                    let conflicts = stream.take_conflict_counts();
                    // The main origin moves to it too (in a transaction of its own: what
                    // reads progress, status and switchover waits, reads that origin).
                    self.apply.commit(end, ts).await?;
                    tracing::debug!(%end, ?stats, took = ?started.elapsed(), "streamed transaction committed");
                    let written = stats.inserted + stats.updated + stats.deleted;
                    self.committed(end, ts, 1, written, started.elapsed(), conflicts);
                    continue;
                }
            }
            busy += started.elapsed();
        }
        // The reader stopped: nothing after the last commit is kept.
        self.apply.rollback().await?;
        if let Some(s) = self.stream.as_mut() {
            s.reset().await?;
        }
        Ok(())
    }

    fn stream_session(&mut self) -> Result<&mut StreamSession, crate::apply::ApplyError> {
        self.stream.as_mut().ok_or_else(|| {
            crate::apply::ApplyError::Protocol(
                "a streamed transaction's changes came before its start".into(),
            )
        })
    }

    /// What follows a local commit of the peer's changes up to `end`.
    fn committed(
        &mut self,
        end: Lsn,
        ts: PgTimestamp,
        txns: u64,
        rows: u64,
        busy: std::time::Duration,
        conflicts: Vec<(crate::conflict::LedgerKind, u64)>,
    ) {
        self.state.passed_peer_time(ts);
        self.applied.send_replace(end);
        let m = &self.state.metrics;
        m.applied_transactions.increment(txns);
        m.applied_rows.increment(rows);
        #[allow(clippy::cast_precision_loss)]
        m.batch_rows.record(rows as f64);
        m.apply_seconds.record(busy.as_secs_f64());
        for (kind, n) in conflicts {
            m.conflicts(kind.as_str(), n);
        }
        self.state.applied(end);
    }

    async fn truncate(
        &mut self,
        map: &TableMap,
        ts: PgTimestamp,
        lsn: Lsn,
    ) -> Result<(), SidecarError> {
        let removed = self.apply.truncate(&map.local, ts).await?;
        // Recorded: a truncate discards every local version older than it,
        // including ones that never reached the peer.
        let record = ConflictRecord {
            kind: crate::conflict::LedgerKind::Truncate,
            table_name: map.local.name.clone(),
            key: serde_json::json!({}),
            local_row: Some(serde_json::json!({ "rows_removed": removed })),
            remote_row: None,
            local_commit_ts: None,
            remote_commit_ts: Some(crate::apply::ledger::ts_text(ts)),
            local_origin: None,
            remote_origin: Some(self.peer.clone()),
            winner: crate::conflict::Winner::Remote,
            resolution: crate::conflict::Resolution::AppliedAsDelete,
            remote_lsn: Some(lsn.to_string()),
        };
        self.apply.write_ledger(&[record]).await?;
        Ok(())
    }
}
