//! What this direction may tell the peer it is done with.
//!
//! The peer's slot keeps WAL until we confirm a flush position. We confirm the durable
//! origin progress (which moves in the same local transaction as the applied rows, so it
//! never runs ahead of data a crash could lose), and, once nothing is in flight, also what
//! was read past without needing anything (skipped or origin-filtered transactions, idle
//! WAL behind a keepalive), so an idle or loop-filtered direction retains no WAL.

use std::collections::VecDeque;

use crate::protocol::pgoutput::PgTimestamp;
use crate::Lsn;

#[derive(Debug)]
pub(super) struct Acks {
    /// The last commit handed to the writer.
    sent: Lsn,
    /// Everything up to here was read and needs nothing more: applied, or skipped (an
    /// origin-filtered transaction, a keepalive while idle).
    passed: Lsn,
    /// Batches handed to the writer and not yet committed: (end, first commit time), for
    /// the lag in seconds. Pruned as the writer commits, so it holds about as many as the
    /// writer's bounded queue.
    in_flight: VecDeque<(Lsn, PgTimestamp)>,
}

impl Acks {
    /// Starting from `applied`, the durable origin progress the stream resumes at.
    pub(super) fn new(applied: Lsn) -> Self {
        Acks {
            sent: applied,
            passed: applied,
            in_flight: VecDeque::new(),
        }
    }

    /// The last commit handed to the writer.
    pub(super) fn sent(&self) -> Lsn {
        self.sent
    }

    pub(super) fn passed(&self) -> Lsn {
        self.passed
    }

    /// The writer has committed everything handed to it (`applied` is its last commit).
    pub(super) fn writer_idle(&self, applied: Lsn) -> bool {
        applied >= self.sent
    }

    /// Everything up to `lsn` was read and needs nothing here.
    pub(super) fn read_past(&mut self, lsn: Lsn) {
        self.passed = self.passed.max(lsn);
    }

    /// A batch ending at `end` went to the writer, whose last commit is `applied`.
    pub(super) fn batch_sent(&mut self, end: Lsn, first_ts: PgTimestamp, applied: Lsn) {
        self.sent = self.sent.max(end);
        self.passed = self.passed.max(end);
        self.prune(applied);
        self.in_flight.push_back((end, first_ts));
    }

    /// Forgets the in-flight batches the writer has committed (up to `applied`).
    fn prune(&mut self, applied: Lsn) {
        while self
            .in_flight
            .front()
            .is_some_and(|(end, _)| *end <= applied)
        {
            self.in_flight.pop_front();
        }
    }

    /// The flush position to confirm: `durable` origin progress; and when the reader is
    /// `idle` (nothing open, nothing in flight) and every local commit is on disk, also
    /// what was read past.
    pub(super) fn acknowledgeable(&self, durable: Lsn, applied: Lsn, idle: bool) -> Lsn {
        if idle && durable >= applied {
            durable.max(self.passed)
        } else {
            durable
        }
    }

    /// What is done (applied, and while `idle` also read past), and the commit time of the
    /// oldest transaction not yet applied: in flight, else `unsent` (read but not handed
    /// to the writer yet).
    pub(super) fn progress(
        &mut self,
        applied: Lsn,
        idle: bool,
        unsent: Option<PgTimestamp>,
    ) -> (Lsn, Option<PgTimestamp>) {
        self.prune(applied);
        let oldest = self.in_flight.front().map(|(_, ts)| *ts).or(unsent);
        let done = if idle {
            applied.max(self.passed)
        } else {
            applied
        };
        (done, oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_durable_progress_is_confirmed_while_busy() {
        let mut acks = Acks::new(Lsn(100));
        acks.batch_sent(Lsn(200), PgTimestamp(1), Lsn(100));
        acks.read_past(Lsn(300));
        // The writer committed 200 but it is not durable yet.
        assert_eq!(acks.acknowledgeable(Lsn(100), Lsn(200), true), Lsn(100));
        // Durable, but the reader holds an open transaction.
        assert_eq!(acks.acknowledgeable(Lsn(200), Lsn(200), false), Lsn(200));
    }

    #[test]
    fn what_was_read_past_is_confirmed_once_idle_and_durable() {
        let mut acks = Acks::new(Lsn(100));
        acks.batch_sent(Lsn(200), PgTimestamp(1), Lsn(100));
        acks.read_past(Lsn(300));
        assert_eq!(acks.acknowledgeable(Lsn(200), Lsn(200), true), Lsn(300));
        // Durable progress ahead of what was passed (another session advanced it).
        assert_eq!(acks.acknowledgeable(Lsn(400), Lsn(200), true), Lsn(400));
    }

    #[test]
    fn positions_never_move_back() {
        let mut acks = Acks::new(Lsn(500));
        acks.read_past(Lsn(100));
        acks.batch_sent(Lsn(300), PgTimestamp(1), Lsn(500));
        assert_eq!((acks.sent(), acks.passed()), (Lsn(500), Lsn(500)));
    }

    #[test]
    fn the_writer_is_idle_once_it_committed_the_last_batch_sent() {
        let mut acks = Acks::new(Lsn(100));
        assert!(acks.writer_idle(Lsn(100)));
        acks.batch_sent(Lsn(200), PgTimestamp(1), Lsn(100));
        assert!(!acks.writer_idle(Lsn(150)));
        assert!(acks.writer_idle(Lsn(200)));
    }

    #[test]
    fn lag_counts_from_the_oldest_batch_not_applied() {
        let mut acks = Acks::new(Lsn(100));
        acks.batch_sent(Lsn(200), PgTimestamp(10), Lsn(100));
        acks.batch_sent(Lsn(300), PgTimestamp(20), Lsn(100));
        let unsent = Some(PgTimestamp(30));
        assert_eq!(
            acks.progress(Lsn(100), false, unsent),
            (Lsn(100), Some(PgTimestamp(10)))
        );
        assert_eq!(
            acks.progress(Lsn(200), false, unsent),
            (Lsn(200), Some(PgTimestamp(20)))
        );
        assert_eq!(
            acks.progress(Lsn(300), false, unsent),
            (Lsn(300), Some(PgTimestamp(30)))
        );
        assert_eq!(acks.progress(Lsn(300), false, None), (Lsn(300), None));
    }

    #[test]
    fn done_includes_what_was_read_past_only_while_idle() {
        let mut acks = Acks::new(Lsn(100));
        acks.read_past(Lsn(250));
        assert_eq!(acks.progress(Lsn(100), false, None).0, Lsn(100));
        assert_eq!(acks.progress(Lsn(100), true, None).0, Lsn(250));
    }
}
