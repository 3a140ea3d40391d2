//! The assembler: decoded pgoutput messages in, steps for the writer out.
//!
//! It follows the upstream transaction being read, turns its row changes into per-key
//! changes of the batch's [`Chunk`] (splitting an update that moves a row to another key),
//! and decides when a chunk must be written and when a batch of upstream transactions
//! must commit. It does no I/O and reads no clock: the stream passes in what it knows
//! ([`Context`]) and carries out the [`Step`]s, so every rule is testable without
//! PostgreSQL.

use std::sync::Arc;

use tokio::time::Instant;

use super::relations::RelationCache;
use super::step::{Batch, Context, Step};
use crate::apply::kill::{Kill, KILL_PREFIX};
use crate::apply::ApplyError;
use crate::batch::{BatchLimits, ChangeOp, Chunk, KeylessChange};
use crate::protocol::pgoutput::{Message, Oid, OldTuple, PgTimestamp, Xid};
use crate::table::local::TableMap;
use crate::table::row::Row;
use crate::Lsn;

/// The upstream transaction being read.
#[derive(Debug)]
struct OpenTxn {
    commit_lsn: Lsn,
    commit_ts: PgTimestamp,
    /// Already applied before (resent after a reconnect): read past it.
    skip: bool,
    /// It wrote a table with unique constraints besides the key.
    touches_uniques: bool,
}

/// Upstream transactions complete in the batch being built.
#[derive(Debug)]
struct Committed {
    /// The last one's end and commit time.
    end: Lsn,
    ts: PgTimestamp,
    first_ts: PgTimestamp,
    max_ts: PgTimestamp,
    txns: u64,
}

/// A big upstream transaction the peer streams while it is still open (pgoutput
/// `streaming`): written as it comes by the stream session, committed at Stream Commit.
#[derive(Debug)]
struct Streamed {
    xid: Xid,
    /// Between one of its Stream Starts and the Stream Stop after it.
    in_block: bool,
    /// Subtransactions met so far, in the order their savepoints were made downstream.
    subxacts: Vec<Xid>,
    /// Its changes not yet handed out (a block's, bounded like any chunk).
    chunk: Chunk,
}

/// Commit time and LSN of a streamed transaction's changes until its Stream Commit says
/// (what the stream session writes before needs neither; see `apply::streamed`).
const STREAMED_TS: PgTimestamp = PgTimestamp(0);
const STREAMED_LSN: Lsn = Lsn(0);

#[derive(Debug)]
pub struct Assembler {
    limits: BatchLimits,
    /// Named in errors.
    peer: String,
    relations: RelationCache,
    open: Option<OpenTxn>,
    chunk: Chunk,
    committed: Option<Committed>,
    batch_started: Option<Instant>,
    /// The peer has sent everything it had while this batch waited (a keepalive between
    /// transactions): waiting longer gathers nothing, so the batch is due now.
    sender_idle: bool,
    streamed: Option<Streamed>,
}

impl Assembler {
    #[must_use]
    pub fn new(limits: BatchLimits, peer: &str) -> Self {
        Assembler {
            limits,
            peer: peer.to_string(),
            relations: RelationCache::default(),
            open: None,
            chunk: Chunk::default(),
            committed: None,
            batch_started: None,
            sender_idle: false,
            streamed: None,
        }
    }

    #[must_use]
    pub fn relations(&self) -> &RelationCache {
        &self.relations
    }

    pub fn relations_mut(&mut self) -> &mut RelationCache {
        &mut self.relations
    }

    /// Relations `msg` changes that must be mapped to local tables before it is handed
    /// over: those of a transaction being applied that have no map yet.
    #[must_use]
    pub fn unmapped(&self, msg: &Message) -> Vec<Oid> {
        if !self.in_stream_block() && self.open.as_ref().is_none_or(|o| o.skip) {
            return Vec::new();
        }
        let oids = match msg {
            Message::Insert(i) => std::slice::from_ref(&i.relation_oid),
            Message::Update(u) => std::slice::from_ref(&u.relation_oid),
            Message::Delete(d) => std::slice::from_ref(&d.relation_oid),
            Message::Truncate(t) => &t.relation_oids[..],
            _ => &[],
        };
        oids.iter()
            .copied()
            .filter(|oid| self.relations.unmapped(*oid).is_some())
            .collect()
    }

    /// An upstream transaction is being read.
    #[must_use]
    pub fn in_txn(&self) -> bool {
        self.open.is_some()
    }

    /// Complete upstream transactions wait in the batch.
    #[must_use]
    pub fn holds_commits(&self) -> bool {
        self.committed.is_some()
    }

    /// Nothing read is left here: no transaction open, nothing batched, no streamed
    /// transaction open.
    #[must_use]
    pub fn is_drained(&self) -> bool {
        self.open.is_none()
            && self.committed.is_none()
            && self.chunk.is_empty()
            && self.streamed.is_none()
    }

    /// A streamed transaction is open (its Stream Commit or Abort not read yet).
    #[must_use]
    pub fn streaming(&self) -> bool {
        self.streamed.is_some()
    }

    /// The streamed transaction the stream session applies while it is open.
    #[must_use]
    pub fn streamed_xid(&self) -> Option<Xid> {
        self.streamed.as_ref().map(|s| s.xid)
    }

    /// Between a streamed transaction's Stream Start and Stream Stop.
    #[must_use]
    pub fn in_stream_block(&self) -> bool {
        self.streamed.as_ref().is_some_and(|s| s.in_block)
    }

    /// When the batch being built is due to commit.
    #[must_use]
    pub fn batch_deadline(&self) -> Option<Instant> {
        self.batch_started.map(|t| {
            if self.sender_idle {
                t
            } else {
                t + self.limits.max_delay
            }
        })
    }

    /// The peer's walsender says it has sent all it had (a keepalive, which it sends
    /// when it has caught up and is about to wait for WAL): a complete batch waiting
    /// now is due at once, since its delay would gather nothing more.
    pub fn sender_idle(&mut self) {
        if self.batch_waiting() {
            self.sender_idle = true;
        }
    }

    /// How long a batch may wait for more transactions.
    #[must_use]
    pub fn max_delay(&self) -> std::time::Duration {
        self.limits.max_delay
    }

    /// A complete batch waits and its delay has passed.
    #[must_use]
    pub fn batch_due(&self, now: Instant) -> bool {
        self.batch_waiting() && self.batch_deadline().is_some_and(|t| now >= t)
    }

    /// Whether complete upstream transactions wait to be handed out as a batch (and no
    /// transaction is open): the part of [`Assembler::batch_due`] that needs no clock.
    #[must_use]
    pub fn batch_waiting(&self) -> bool {
        self.open.is_none() && self.committed.is_some()
    }

    /// Commit time of the oldest upstream transaction read and not handed out as a batch.
    #[must_use]
    pub fn oldest_unsent(&self) -> Option<PgTimestamp> {
        self.committed.as_ref().map(|c| c.first_ts).or(self
            .open
            .as_ref()
            .filter(|o| !o.skip)
            .map(|o| o.commit_ts))
    }

    /// Ends the batch being built: `Ok` with what to commit, or `Err` with what to write
    /// without committing when no upstream transaction is complete in it.
    pub fn take_batch(&mut self) -> Result<Batch, Option<Chunk>> {
        self.batch_started = None;
        self.sender_idle = false;
        let Some(c) = self.committed.take() else {
            return Err(self.take_chunk());
        };
        Ok(Batch {
            chunk: self.take_chunk(),
            end: c.end,
            ts: c.ts,
            latest_ts: c.max_ts.max(c.ts),
            first_ts: c.first_ts,
            txns: c.txns,
        })
    }

    fn take_chunk(&mut self) -> Option<Chunk> {
        take_nonempty(&mut self.chunk)
    }

    pub fn on_message(&mut self, msg: Message, cx: Context) -> Result<Step, ApplyError> {
        match msg {
            Message::Begin(b) => {
                // The server does not resend what committed before the start position;
                // this guards the same rule on our side.
                let skip = b.final_lsn < cx.handed_out;
                if skip {
                    tracing::debug!(xid = b.xid, final_lsn = %b.final_lsn,
                        applied = %cx.handed_out, "reading past a transaction applied before");
                }
                self.open = Some(OpenTxn {
                    commit_lsn: b.final_lsn,
                    commit_ts: b.commit_time,
                    skip,
                    touches_uniques: false,
                });
                if skip {
                    return Ok(Step::Continue);
                }
                Ok(Step::Began {
                    commit_ts: b.commit_time,
                    before_batch: self
                        .committed
                        .as_ref()
                        .is_some_and(|c| c.max_ts > b.commit_time),
                })
            }
            Message::Relation(r) => {
                self.relations.define(r);
                Ok(Step::TablesChanged)
            }
            Message::Type(t) => {
                self.relations.define_type(t);
                Ok(Step::Continue)
            }
            Message::Commit(c) => {
                let open = self.open.take();
                if cx.origin_dropped || open.as_ref().is_none_or(|o| o.skip) {
                    return Ok(Step::ReadPast(c.end_lsn));
                }
                let batch = self.committed.get_or_insert(Committed {
                    end: c.end_lsn,
                    ts: c.commit_time,
                    first_ts: c.commit_time,
                    max_ts: c.commit_time,
                    txns: 0,
                });
                batch.end = c.end_lsn;
                batch.ts = c.commit_time;
                batch.max_ts = batch.max_ts.max(c.commit_time);
                batch.txns += 1;
                self.batch_started.get_or_insert(cx.now);
                let l = &self.limits;
                // Rows keep the downstream commit's time, which is the last upstream
                // commit of the batch and its latest (see `Step::Began`). Rows of tables
                // with other unique constraints are compared with *other* rows' times
                // (which row holds a value), so they must keep their own: such a
                // transaction ends its batch.
                let ends = open.is_some_and(|o| o.touches_uniques)
                    || self.chunk.rows() >= l.max_rows
                    || self.chunk.bytes() >= l.max_bytes
                    || (self.batch_deadline().is_some_and(|due| cx.now >= due) && cx.writer_idle);
                Ok(if ends { Step::EndBatch } else { Step::Continue })
            }
            Message::Insert(i) => {
                let Some((map, ts, lsn)) = self.target(i.relation_oid)? else {
                    return Ok(Step::Continue);
                };
                let sub = self.subxact(i.xid);
                let row = Row::from_tuple(&map, &i.new)?;
                if map.local.is_keyless() {
                    self.push_keyless(&map, ChangeOp::Insert, None, Some(row), ts, lsn);
                    return Ok(self.pushed(sub));
                }
                let key = row.key(&map)?;
                self.current()
                    .push(&map, ChangeOp::Insert, key, Some(row), ts, lsn);
                Ok(self.pushed(sub))
            }
            Message::Update(u) => {
                let Some((map, ts, lsn)) = self.target(u.relation_oid)? else {
                    return Ok(Step::Continue);
                };
                let sub = self.subxact(u.xid);
                let row = Row::from_tuple(&map, &u.new)?;
                if map.local.is_keyless() {
                    let old = keyless_old(&map, u.old.as_ref())?;
                    self.push_keyless(&map, ChangeOp::Update, old, Some(row), ts, lsn);
                    return Ok(self.pushed(sub));
                }
                let key = row.key(&map)?;
                let old_key = match &u.old {
                    Some(OldTuple::Key(old) | OldTuple::Full(old)) => {
                        Some(Row::from_tuple(&map, old)?.key(&map)?)
                    }
                    None => None,
                };
                let op = match old_key {
                    // A key change: the old key goes away, and the row arrives at the new
                    // key as an insert there (its unchanged-TOAST columns are completed
                    // from the peer when applied).
                    Some(old_key) if old_key != key => {
                        self.current()
                            .push(&map, ChangeOp::Delete, old_key, None, ts, lsn);
                        ChangeOp::Insert
                    }
                    _ => ChangeOp::Update,
                };
                self.current().push(&map, op, key, Some(row), ts, lsn);
                Ok(self.pushed(sub))
            }
            Message::Delete(del) => {
                let Some((map, ts, lsn)) = self.target(del.relation_oid)? else {
                    return Ok(Step::Continue);
                };
                let sub = self.subxact(del.xid);
                if map.local.is_keyless() {
                    let old = keyless_old(&map, Some(&del.old))?;
                    self.push_keyless(&map, ChangeOp::Delete, old, None, ts, lsn);
                    return Ok(self.pushed(sub));
                }
                let key = Row::from_tuple(&map, del.old.tuple())?.key(&map)?;
                self.current()
                    .push(&map, ChangeOp::Delete, key, None, ts, lsn);
                Ok(self.pushed(sub))
            }
            // Streamed transactions hold no truncate or unique-constraint decision: each
            // must come in its place among whole transactions.
            Message::Truncate(_) if self.in_stream_block() => Ok(Step::Unstreamable(
                "it truncates a table (applied in its place among whole transactions)",
            )),
            Message::Message(m)
                if m.prefix == KILL_PREFIX && m.transactional() && self.in_stream_block() =>
            {
                Ok(Step::Unstreamable(
                    "it carries a unique-constraint decision of the peer",
                ))
            }
            Message::StreamStart(st) => Ok(self.stream_start(st.xid, st.first_segment)),
            Message::StreamStop => {
                let Some(st) = self.streamed.as_mut() else {
                    return Ok(Step::Continue);
                };
                st.in_block = false;
                Ok(take_nonempty(&mut st.chunk).map_or(Step::Continue, Step::StreamWrite))
            }
            Message::StreamCommit(c) => match self.streamed.take() {
                Some(st) if st.xid == c.xid && st.chunk.is_empty() && !st.in_block => {
                    Ok(Step::StreamCommit {
                        end: c.end_lsn,
                        ts: c.commit_time,
                    })
                }
                _ => Ok(Step::Unstreamable(
                    "its commit came without the stream that led to it",
                )),
            },
            Message::StreamAbort(a) => Ok(self.stream_abort(a.xid, a.subxid)),
            Message::Truncate(t) => {
                let Some(open) = self.open.as_ref().filter(|o| !o.skip) else {
                    return Ok(Step::Continue);
                };
                let (ts, lsn) = (open.commit_ts, open.commit_lsn);
                let mut tables = Vec::with_capacity(t.relation_oids.len());
                for oid in &t.relation_oids {
                    if let Some((map, _, _)) = self.target(*oid)? {
                        tables.push(map);
                    }
                }
                Ok(Step::Truncate {
                    before: self.take_chunk(),
                    tables,
                    ts,
                    lsn,
                })
            }
            Message::Message(m) if m.prefix == KILL_PREFIX && m.transactional() => {
                if cx.origin_dropped || self.open.as_ref().is_none_or(|o| o.skip) {
                    return Ok(Step::Continue);
                }
                let kill = Kill::parse(&m.content).map_err(|e| {
                    ApplyError::Protocol(format!(
                        "unreadable unique-constraint decision from {} at {}: {e}",
                        self.peer, m.lsn
                    ))
                })?;
                // In stream order: what came before it is written first.
                Ok(Step::Kill {
                    before: self.take_chunk(),
                    kill,
                    lsn: m.lsn,
                })
            }
            // Origin messages are the origin filter's (before this); other messages
            // belong to applications; two-phase is not requested on apply streams.
            _ => Ok(Step::Continue),
        }
    }

    /// The table map and the open transaction's time and LSN for a change, or `None` when
    /// the change belongs to a transaction that is being skipped.
    fn target(
        &mut self,
        oid: Oid,
    ) -> Result<Option<(Arc<TableMap>, PgTimestamp, Lsn)>, ApplyError> {
        if self.in_stream_block() {
            return Ok(Some((self.relations.map(oid)?, STREAMED_TS, STREAMED_LSN)));
        }
        let Some(open) = self.open.as_mut() else {
            return Err(ApplyError::Protocol(
                "row change outside a transaction".into(),
            ));
        };
        if open.skip {
            return Ok(None);
        }
        let map = self.relations.map(oid)?;
        open.touches_uniques |= !map.local.uniques.is_empty();
        Ok(Some((map, open.commit_ts, open.commit_lsn)))
    }

    /// Queues a change to a table without a primary key: kept in order, never collapsed
    /// (rows have no key; see [`crate::apply::keyless`]).
    fn push_keyless(
        &mut self,
        map: &Arc<TableMap>,
        op: ChangeOp,
        old: Option<Row>,
        new: Option<Row>,
        commit_ts: PgTimestamp,
        lsn: Lsn,
    ) {
        self.current().push_keyless(
            map,
            KeylessChange {
                op,
                old,
                new,
                commit_ts,
                lsn,
            },
        );
    }

    /// Where a change goes: the streamed transaction's chunk inside a stream block, else
    /// the batch's.
    fn current(&mut self) -> &mut Chunk {
        match self.streamed.as_mut().filter(|s| s.in_block) {
            Some(st) => &mut st.chunk,
            None => &mut self.chunk,
        }
    }

    /// A change of subtransaction `xid` of the streamed transaction, met for the first
    /// time: the changes before it are handed out ahead of its savepoint.
    fn subxact(&mut self, xid: Option<Xid>) -> Option<(Option<Chunk>, Xid)> {
        let st = self.streamed.as_mut().filter(|s| s.in_block)?;
        let xid = xid.filter(|x| *x != st.xid && !st.subxacts.contains(x))?;
        st.subxacts.push(xid);
        Some((take_nonempty(&mut st.chunk), xid))
    }

    /// The step after a change was added: a savepoint it began, or a full chunk.
    fn pushed(&mut self, sub: Option<(Option<Chunk>, Xid)>) -> Step {
        if let Some((before, subxid)) = sub {
            return Step::StreamSavepoint { before, subxid };
        }
        let l = self.limits;
        let streaming = self.in_stream_block();
        let chunk = self.current();
        if chunk.rows() < l.max_rows && chunk.bytes() < l.max_bytes {
            return Step::Continue;
        }
        let full = chunk.take();
        if streaming {
            Step::StreamWrite(full)
        } else {
            Step::Write(full)
        }
    }

    fn stream_start(&mut self, xid: Xid, first: bool) -> Step {
        match self.streamed.as_mut() {
            Some(st) if st.xid == xid => {
                st.in_block = true;
                Step::StreamStart { first: false }
            }
            Some(_) => Step::Unstreamable("a second big transaction streams while one is open"),
            None if first => {
                self.streamed = Some(Streamed {
                    xid,
                    in_block: true,
                    subxacts: Vec::new(),
                    chunk: Chunk::default(),
                });
                Step::StreamStart { first: true }
            }
            None => Step::Unstreamable("its stream resumed without its first block"),
        }
    }

    fn stream_abort(&mut self, xid: Xid, subxid: Xid) -> Step {
        let Some(st) = self.streamed.as_mut().filter(|s| s.xid == xid) else {
            return Step::Continue;
        };
        // Aborts come between blocks, after Stream Stop handed the block out; a chunk
        // left here would be of the aborted part only.
        st.chunk = Chunk::default();
        if subxid == xid {
            self.streamed = None;
            return Step::StreamRollback { to: None };
        }
        // Rolling back to a savepoint drops the ones made after it.
        match st.subxacts.iter().position(|x| *x == subxid) {
            Some(i) => {
                st.subxacts.truncate(i + 1);
                Step::StreamRollback { to: Some(subxid) }
            }
            // Nothing of it was written (or it went with an earlier savepoint's rollback).
            None => Step::Continue,
        }
    }
}

fn take_nonempty(chunk: &mut Chunk) -> Option<Chunk> {
    (!chunk.is_empty()).then(|| chunk.take())
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

#[cfg(test)]
#[path = "assemble_tests.rs"]
mod tests;
