//! What the assembler is told with each message ([`Context`]) and what it asks the
//! stream to do ([`Step`], [`Batch`]).

use std::sync::Arc;

use tokio::time::Instant;

use crate::apply::kill::Kill;
use crate::batch::Chunk;
use crate::protocol::pgoutput::{PgTimestamp, Xid};
use crate::table::local::TableMap;
use crate::Lsn;

/// What the stream knows when it hands over a message.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The origin filter drops the transaction this message belongs to (PG15 loops).
    pub origin_dropped: bool,
    /// The last commit handed to the writer: a transaction ending before it was
    /// applied already (resent after a reconnect).
    pub handed_out: Lsn,
    /// The writer has committed everything handed to it.
    pub writer_idle: bool,
    pub now: Instant,
}

/// What the stream does next for one message.
#[derive(Debug)]
#[must_use]
pub enum Step {
    /// Nothing for the writer yet.
    Continue,
    /// A transaction to apply began; it committed on the peer at `commit_ts`.
    /// `before_batch`: earlier than a transaction already in the batch being built (the
    /// peer's commit times are not quite in WAL order: a backend takes its commit time
    /// before it inserts the commit record). What is batched then commits first, so that
    /// every batch's commit times rise and its last one is its latest: rows keep the
    /// downstream commit's time, which must be no earlier than their own.
    Began {
        commit_ts: PgTimestamp,
        before_batch: bool,
    },
    /// A table was (re)described: the writer forgets the table definitions it cached.
    TablesChanged,
    /// A transaction that needs nothing here (skipped, origin-filtered) ended at this
    /// position.
    ReadPast(Lsn),
    /// The chunk reached its bounds mid-batch: write it without committing, so a large
    /// upstream transaction never sits whole in memory.
    Write(Chunk),
    /// The peer truncated these tables; what came before is written first.
    Truncate {
        before: Option<Chunk>,
        tables: Vec<Arc<TableMap>>,
        ts: PgTimestamp,
        lsn: Lsn,
    },
    /// A peer's unique-constraint decision; what came before is written first.
    Kill {
        before: Option<Chunk>,
        kill: Kill,
        lsn: Lsn,
    },
    /// The batch must commit now ([`super::Assembler::take_batch`]).
    EndBatch,
    /// A block of a big transaction the peer streams while it is open begins (its first
    /// one: `first`). What is batched commits before the block is written: the stream
    /// session must never wait for rows of an open batch.
    StreamStart { first: bool },
    /// Changes of the streamed transaction, for the stream session's open transaction.
    StreamWrite(Chunk),
    /// A subtransaction of the streamed transaction begins (a savepoint downstream); the
    /// changes before it (`before`) are written first.
    StreamSavepoint { before: Option<Chunk>, subxid: Xid },
    /// The streamed transaction aborted: all of it (`None`) or back to the savepoint of a
    /// subtransaction.
    StreamRollback { to: Option<Xid> },
    /// The streamed transaction committed on the peer: what precedes it commits first, then
    /// it does, with this position and time.
    StreamCommit { end: Lsn, ts: PgTimestamp },
    /// The streamed transaction cannot be applied as it streams (the reason): read it again
    /// whole, with streaming off for a while.
    Unstreamable(&'static str),
}

/// A batch ready to commit downstream as one transaction.
#[derive(Debug)]
pub struct Batch {
    /// What is still unwritten: it goes with the commit, so both are sent at once.
    pub chunk: Option<Chunk>,
    /// The last upstream commit's end and time: the downstream commit's position and
    /// time (a batch's commit times rise: see [`Step::Began`]).
    pub end: Lsn,
    pub ts: PgTimestamp,
    /// The latest upstream commit time (`ts`, unless a batch was built without heeding
    /// `Step::Began::before_batch`): nothing of the batch may become visible before this
    /// node's clock passed it.
    pub latest_ts: PgTimestamp,
    /// Commit time of the batch's first upstream transaction (for the lag).
    pub first_ts: PgTimestamp,
    pub txns: u64,
}
