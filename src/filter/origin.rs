//! Dropping transactions that carry a replication origin (loop prevention on PG15).
//!
//! On PostgreSQL 16+ the server drops them (`origin 'none'`). On 15, pgoutput sends an
//! Origin message right after Begin for every transaction that has one; everything of such
//! a transaction is dropped here, except:
//! - Begin and Commit, so the consumer still sees the transaction end and can acknowledge
//!   its position (otherwise the slot would retain WAL for it forever);
//! - Relation and Type messages: pgoutput sends a relation's description once per
//!   connection, inside whichever transaction first touches it; dropping it would leave
//!   later, kept transactions referring to a relation the consumer never learned.

use crate::protocol::pgoutput::Message;

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Drop,
}

/// Per-stream origin filter; feed it every message in stream order.
#[derive(Debug, Clone, Default)]
pub struct OriginFilter {
    drop_origins: bool,
    in_dropped_txn: bool,
    dropped_txns: u64,
    dropped_changes: u64,
}

impl OriginFilter {
    /// `drop_origins = false` keeps everything (the filter only observes).
    #[must_use]
    pub fn new(drop_origins: bool) -> Self {
        OriginFilter {
            drop_origins,
            ..Default::default()
        }
    }

    /// Decides on `msg`; call for every message in order.
    pub fn observe(&mut self, msg: &Message) -> Verdict {
        match msg {
            Message::Begin(_) | Message::BeginPrepare(_) | Message::StreamStart(_) => {
                self.in_dropped_txn = false;
                Verdict::Keep
            }
            Message::Origin(_) if self.drop_origins => {
                self.in_dropped_txn = true;
                Verdict::Drop
            }
            Message::Commit(_) | Message::Prepare(_) => {
                if self.in_dropped_txn {
                    self.dropped_txns += 1;
                }
                Verdict::Keep
            }
            // The ends of streamed blocks and transactions always reach the consumer: it
            // decides what an Origin inside a streamed transaction means.
            Message::Relation(_)
            | Message::Type(_)
            | Message::StreamStop
            | Message::StreamCommit(_)
            | Message::StreamAbort(_) => Verdict::Keep,
            Message::Insert(_) | Message::Update(_) | Message::Delete(_) | Message::Truncate(_)
                if self.in_dropped_txn =>
            {
                self.dropped_changes += 1;
                Verdict::Drop
            }
            _ if self.in_dropped_txn => Verdict::Drop,
            _ => Verdict::Keep,
        }
    }

    /// Whether the current (or just committed) transaction is being dropped: the consumer
    /// checks this at Commit to acknowledge the position without emitting anything.
    #[must_use]
    pub fn txn_dropped(&self) -> bool {
        self.in_dropped_txn
    }

    /// Transactions dropped so far (for metrics and logs).
    #[must_use]
    pub fn dropped_txns(&self) -> u64 {
        self.dropped_txns
    }

    /// Row changes (and truncates) dropped so far: how busy the stream is with work that
    /// waits for no one (the CPU policy, `crate::sidecar::scheduling`).
    #[must_use]
    pub fn dropped_changes(&self) -> u64 {
        self.dropped_changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pgoutput::{Origin, StreamCommit, StreamStart};
    use crate::txn::testing::{begin, commit, insert};
    use crate::Lsn;

    fn origin() -> Message {
        Message::Origin(Origin {
            lsn: Lsn(1),
            name: "pgmesh_b".into(),
        })
    }

    #[test]
    fn a_transaction_with_an_origin_is_dropped_but_its_ends_are_kept() {
        let mut f = OriginFilter::new(true);
        let verdicts: Vec<Verdict> = [begin(100, 1), origin(), insert(7, &["1"]), commit(108, 1)]
            .iter()
            .map(|m| f.observe(m))
            .collect();
        use Verdict::{Drop, Keep};
        assert_eq!(verdicts, vec![Keep, Drop, Drop, Keep]);
        assert_eq!(f.dropped_txns(), 1);
        assert_eq!(f.dropped_changes(), 1);
        // A kept transaction's changes are not counted.
        for m in [begin(110, 2), insert(7, &["2"]), commit(118, 2)] {
            assert_eq!(f.observe(&m), Keep);
        }
        assert_eq!(f.dropped_changes(), 1);
    }

    #[test]
    fn a_stream_block_starts_clean_and_its_ends_always_pass() {
        let mut f = OriginFilter::new(true);
        let _ = f.observe(&begin(100, 1));
        let _ = f.observe(&origin());
        let _ = f.observe(&commit(108, 1));
        // The dropped transaction's flag does not leak into the next streamed block.
        let start = Message::StreamStart(StreamStart {
            xid: 7,
            first_segment: true,
        });
        assert_eq!(f.observe(&start), Verdict::Keep);
        assert_eq!(f.observe(&insert(7, &["1"])), Verdict::Keep);
        // Marked inside a block: its changes go, the block's and transaction's ends stay.
        let _ = f.observe(&origin());
        assert_eq!(f.observe(&insert(7, &["2"])), Verdict::Drop);
        assert_eq!(f.observe(&Message::StreamStop), Verdict::Keep);
        let end = Message::StreamCommit(StreamCommit {
            xid: 7,
            flags: 0,
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            commit_time: crate::protocol::pgoutput::PgTimestamp(1),
        });
        assert_eq!(f.observe(&end), Verdict::Keep);
    }
}
