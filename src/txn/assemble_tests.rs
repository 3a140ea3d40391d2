//! The assembler's rules, one test each, fed decoded messages without PostgreSQL.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::protocol::pgoutput::{LogicalMessage, Type, MESSAGE_TRANSACTIONAL};
use crate::txn::testing::{
    begin, commit, delete, insert, relation, table_map, truncate, tuple, update,
};

const T: Oid = 7;

fn limits(max_rows: usize) -> BatchLimits {
    BatchLimits {
        max_rows,
        max_bytes: 1 << 20,
        max_delay: Duration::from_millis(10),
    }
}

/// An assembler that knows table `T` (columns id, v; key id) mapped with `uniques`.
fn assembler(limits: BatchLimits, uniques: &[Vec<usize>]) -> Assembler {
    let mut a = Assembler::new(limits, "a");
    a.relations_mut().define(relation(T, &["id", "v"]));
    a.relations_mut()
        .insert_map(T, table_map(&["id", "v"], &[0], uniques));
    a
}

fn cx(now: Instant) -> Context {
    Context {
        origin_dropped: false,
        handed_out: Lsn(0),
        writer_idle: false,
        now,
    }
}

/// Feeds `msgs` at one instant; the steps that are not [`Step::Continue`].
fn feed(a: &mut Assembler, msgs: Vec<Message>, cx: Context) -> Vec<Step> {
    msgs.into_iter()
        .map(|m| a.on_message(m, cx).unwrap())
        .filter(|s| !matches!(s, Step::Continue))
        .collect()
}

/// The chunk's changes to `T` as (key, op).
fn changes(chunk: &Chunk) -> Vec<(String, ChangeOp)> {
    chunk.tables[0]
        .changes
        .iter()
        .map(|(k, p)| (String::from_utf8_lossy(&k.0[0]).into_owned(), p.op))
        .collect()
}

#[test]
fn a_key_changing_update_deletes_the_old_key_and_inserts_the_new() {
    let now = Instant::now();
    let mut a = assembler(limits(100), &[]);
    let old = Some(OldTuple::Key(tuple(&["1", "x"])));
    let msgs = vec![begin(100, 1), update(T, old, &["2", "x"]), commit(108, 1)];
    assert!(matches!(
        feed(&mut a, msgs, cx(now))[..],
        [Step::Began { .. }]
    ));
    let batch = a.take_batch().unwrap();
    let chunk = batch.chunk.unwrap();
    assert_eq!(
        changes(&chunk),
        vec![
            ("1".into(), ChangeOp::Delete),
            ("2".into(), ChangeOp::Insert)
        ]
    );
}

#[test]
fn an_update_in_place_stays_an_update() {
    let mut a = assembler(limits(100), &[]);
    let old = Some(OldTuple::Key(tuple(&["1", "x"])));
    let msgs = vec![
        begin(100, 1),
        update(T, old, &["1", "y"]),
        update(T, None, &["1", "z"]),
        commit(108, 1),
    ];
    let _ = feed(&mut a, msgs, cx(Instant::now()));
    let chunk = a.take_batch().unwrap().chunk.unwrap();
    assert_eq!(changes(&chunk), vec![("1".into(), ChangeOp::Update)]);
}

#[test]
fn a_change_to_an_unknown_relation_or_outside_a_transaction_fails() {
    let mut a = assembler(limits(100), &[]);
    let err = a
        .on_message(insert(T, &["1", "x"]), cx(Instant::now()))
        .unwrap_err();
    assert!(err.to_string().contains("outside a transaction"), "{err}");
    let _ = a.on_message(begin(100, 1), cx(Instant::now())).unwrap();
    let err = a
        .on_message(insert(99, &["1"]), cx(Instant::now()))
        .unwrap_err();
    assert!(
        err.to_string().contains("before its Relation message"),
        "{err}"
    );
}

#[test]
fn only_relations_without_a_map_are_asked_for() {
    let mut a = assembler(limits(100), &[]);
    a.relations_mut().define(relation(8, &["id"]));
    let msg = truncate(&[T, 8, 99]);
    // Outside a transaction nothing is mapped.
    assert!(a.unmapped(&msg).is_empty());
    let _ = a.on_message(begin(100, 1), cx(Instant::now())).unwrap();
    assert_eq!(a.unmapped(&msg), vec![8]);
    assert_eq!(a.unmapped(&insert(8, &["1"])), vec![8]);
    assert!(a.unmapped(&insert(T, &["1", "x"])).is_empty());
}

#[test]
fn a_relation_message_drops_the_map_and_tells_the_writer() {
    let mut a = assembler(limits(100), &[]);
    let step = a.on_message(
        Message::Relation(relation(T, &["id", "v"])),
        cx(Instant::now()),
    );
    assert!(matches!(step, Ok(Step::TablesChanged)));
    assert!(a.relations().unmapped(T).is_some());
    let t = Message::Type(Type {
        xid: None,
        oid: 16400,
        namespace: "public".into(),
        name: "mood".into(),
    });
    assert!(matches!(
        a.on_message(t, cx(Instant::now())),
        Ok(Step::Continue)
    ));
    assert!(a.relations().types().contains_key(&16400));
}

#[test]
fn a_transaction_applied_before_is_read_past() {
    let mut a = assembler(limits(1), &[]);
    let mut c = cx(Instant::now());
    c.handed_out = Lsn(200);
    let msgs = vec![begin(100, 1), insert(T, &["1", "x"]), commit(108, 1)];
    assert!(matches!(
        feed(&mut a, msgs, c)[..],
        [Step::ReadPast(Lsn(108))]
    ));
    assert!(a.is_drained());
}

#[test]
fn an_origin_filtered_transaction_is_read_past() {
    let mut a = assembler(limits(100), &[]);
    let mut c = cx(Instant::now());
    let _ = feed(&mut a, vec![begin(100, 1)], c);
    c.origin_dropped = true;
    let steps = feed(&mut a, vec![commit(108, 1)], c);
    assert!(matches!(steps[..], [Step::ReadPast(Lsn(108))]));
    assert!(!a.holds_commits());
}

#[test]
fn small_transactions_collect_into_one_batch() {
    let now = Instant::now();
    let mut a = assembler(limits(100), &[]);
    for (i, lsn) in [(1, 100), (2, 200), (3, 300)] {
        let msgs = vec![
            begin(lsn, i),
            insert(T, &[&i.to_string(), "x"]),
            commit(lsn + 8, i),
        ];
        assert!(matches!(
            feed(&mut a, msgs, cx(now))[..],
            [Step::Began { .. }]
        ));
    }
    assert!(a.holds_commits() && !a.in_txn());
    let batch = a.take_batch().unwrap();
    assert_eq!(
        (batch.end, batch.ts, batch.txns),
        (Lsn(308), PgTimestamp(3), 3)
    );
    assert_eq!(
        (batch.first_ts, batch.latest_ts),
        (PgTimestamp(1), PgTimestamp(3))
    );
    assert_eq!(batch.chunk.unwrap().rows(), 3);
    assert!(a.is_drained());
}

#[test]
fn the_latest_commit_time_is_kept_when_an_earlier_one_is_later() {
    let mut a = assembler(limits(100), &[]);
    let msgs = vec![begin(100, 9), commit(108, 9), begin(200, 5), commit(208, 5)];
    let steps = feed(&mut a, msgs, cx(Instant::now()));
    // The second began before the first, batched already: the caller commits that one
    // first (`before_batch`); fed on regardless, the batch still knows its latest time.
    assert!(matches!(
        steps[..],
        [
            Step::Began {
                before_batch: false,
                ..
            },
            Step::Began {
                before_batch: true,
                ..
            }
        ]
    ));
    let batch = a.take_batch().unwrap();
    assert_eq!(
        (batch.ts, batch.latest_ts),
        (PgTimestamp(5), PgTimestamp(9))
    );
    assert!(batch.chunk.is_none());
}

#[test]
fn a_full_chunk_is_written_mid_transaction() {
    let mut a = assembler(limits(2), &[]);
    let c = cx(Instant::now());
    let steps = feed(
        &mut a,
        vec![
            begin(100, 1),
            insert(T, &["1", "x"]),
            insert(T, &["2", "x"]),
        ],
        c,
    );
    assert!(matches!(&steps[..], [Step::Began { .. }, Step::Write(chunk)] if chunk.rows() == 2));
    let steps = feed(
        &mut a,
        vec![insert(T, &["3", "x"]), insert(T, &["4", "x"])],
        c,
    );
    assert!(matches!(steps[..], [Step::Write(_)]));
    let steps = feed(
        &mut a,
        vec![insert(T, &["5", "x"]), insert(T, &["6", "x"])],
        c,
    );
    assert!(matches!(steps[..], [Step::Write(_)]));
    let steps = feed(&mut a, vec![commit(108, 1)], c);
    assert!(steps.is_empty(), "an emptied chunk does not end the batch");
    let mut a = assembler(limits(2), &[]);
    let msgs = vec![begin(100, 1), insert(T, &["1", "x"])];
    let _ = feed(&mut a, msgs, c);
    let _ = feed(&mut a, vec![commit(108, 1)], c);
    let steps = feed(&mut a, vec![begin(200, 2), insert(T, &["2", "x"])], c);
    assert!(matches!(steps[..], [Step::Began { .. }, Step::Write(_)]));
}

#[test]
fn a_commit_with_the_chunk_at_its_bound_ends_the_batch() {
    // Changes are written as soon as the chunk is full, so only a zero bound is met at
    // a commit.
    let c = cx(Instant::now());
    let mut a = assembler(limits(0), &[]);
    let steps = feed(&mut a, vec![begin(100, 1), commit(108, 1)], c);
    assert!(matches!(steps[..], [Step::Began { .. }, Step::EndBatch]));
    let mut l = limits(100);
    l.max_bytes = 1;
    let mut a = assembler(l, &[]);
    let msgs = vec![begin(100, 1), delete(T, OldTuple::Key(tuple(&["1", ""])))];
    // Each change passes the byte bound, so it is written at once.
    assert!(matches!(
        feed(&mut a, msgs, c)[..],
        [Step::Began { .. }, Step::Write(_)]
    ));
}

#[test]
fn a_transaction_on_a_table_with_other_uniques_ends_its_batch() {
    let mut a = assembler(limits(100), &[vec![1]]);
    let msgs = vec![begin(100, 1), insert(T, &["1", "x"]), commit(108, 1)];
    let steps = feed(&mut a, msgs, cx(Instant::now()));
    assert!(matches!(steps[..], [Step::Began { .. }, Step::EndBatch]));
}

#[test]
fn an_old_batch_ends_at_a_commit_only_when_the_writer_is_idle() {
    let start = Instant::now();
    let mut a = assembler(limits(100), &[]);
    let _ = feed(&mut a, vec![begin(100, 1), commit(108, 1)], cx(start));
    assert_eq!(a.batch_deadline(), Some(start + Duration::from_millis(10)));
    let later = start + Duration::from_millis(10);
    assert!(a.batch_due(later) && !a.batch_due(start));
    let busy = cx(later);
    let steps = feed(&mut a, vec![begin(200, 2), commit(208, 2)], busy);
    assert!(
        matches!(steps[..], [Step::Began { .. }]),
        "the batch grows behind a busy writer"
    );
    let idle = Context {
        writer_idle: true,
        ..busy
    };
    let steps = feed(&mut a, vec![begin(300, 3), commit(308, 3)], idle);
    assert!(matches!(steps[..], [Step::Began { .. }, Step::EndBatch]));
    let _ = a.take_batch().unwrap();
    assert_eq!(a.batch_deadline(), None);
}

#[test]
fn a_waiting_batch_is_due_at_once_when_the_sender_has_sent_all_it_had() {
    let start = Instant::now();
    let mut a = assembler(limits(100), &[]);
    // Mid-transaction the keepalive says nothing about the batch.
    let _ = feed(&mut a, vec![begin(100, 1)], cx(start));
    a.sender_idle();
    let _ = feed(&mut a, vec![commit(108, 1)], cx(start));
    assert!(
        !a.batch_due(start),
        "a keepalive before the commit does not hurry"
    );
    a.sender_idle();
    assert!(a.batch_due(start), "nothing more is coming: no delay");
    // A transaction that arrived meanwhile ends the hurried batch at its commit, once
    // the writer is idle.
    let idle = Context {
        writer_idle: true,
        ..cx(start)
    };
    let steps = feed(&mut a, vec![begin(200, 2), commit(208, 2)], idle);
    assert!(matches!(steps[..], [Step::Began { .. }, Step::EndBatch]));
    let _ = a.take_batch().unwrap();
    // The next batch waits its delay again.
    let _ = feed(&mut a, vec![begin(300, 3), commit(308, 3)], cx(start));
    assert!(!a.batch_due(start));
}

#[test]
fn a_batch_is_not_due_while_a_transaction_is_open() {
    let start = Instant::now();
    let mut a = assembler(limits(100), &[]);
    let _ = feed(
        &mut a,
        vec![begin(100, 1), commit(108, 1), begin(200, 2)],
        cx(start),
    );
    assert!(!a.batch_due(start + Duration::from_secs(1)));
    assert_eq!(a.oldest_unsent(), Some(PgTimestamp(1)));
}

#[test]
fn a_truncate_writes_what_came_before_then_empties_its_tables() {
    let mut a = assembler(limits(100), &[]);
    let msgs = vec![begin(100, 1), insert(T, &["1", "x"])];
    let _ = feed(&mut a, msgs, cx(Instant::now()));
    let msg = truncate(&[T]);
    match a.on_message(msg, cx(Instant::now())).unwrap() {
        Step::Truncate {
            before,
            tables,
            ts,
            lsn,
        } => {
            assert_eq!(before.unwrap().rows(), 1);
            assert_eq!(tables.len(), 1);
            assert_eq!((ts, lsn), (PgTimestamp(1), Lsn(100)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_truncate_outside_an_applied_transaction_is_ignored() {
    let mut a = assembler(limits(100), &[]);
    let c = cx(Instant::now());
    assert!(matches!(
        a.on_message(truncate(&[T]), c),
        Ok(Step::Continue)
    ));
    let skipping = Context {
        handed_out: Lsn(500),
        ..c
    };
    let _ = a.on_message(begin(100, 1), skipping).unwrap();
    assert!(matches!(
        a.on_message(truncate(&[T]), c),
        Ok(Step::Continue)
    ));
}

#[test]
fn a_keyless_table_keeps_changes_in_order_and_needs_the_full_old_row() {
    let mut a = Assembler::new(limits(100), "a");
    a.relations_mut().define(relation(T, &["a"]));
    a.relations_mut().insert_map(T, table_map(&["a"], &[], &[]));
    let c = cx(Instant::now());
    let msgs = vec![
        begin(100, 1),
        insert(T, &["1"]),
        update(T, Some(OldTuple::Full(tuple(&["1"]))), &["2"]),
        delete(T, OldTuple::Full(tuple(&["2"]))),
    ];
    let _ = feed(&mut a, msgs, c);
    let err = a
        .on_message(update(T, Some(OldTuple::Key(tuple(&["2"]))), &["3"]), c)
        .unwrap_err();
    assert!(
        err.to_string().contains("only the key of the old row"),
        "{err}"
    );
    let _ = a.on_message(commit(108, 1), c).unwrap();
    let chunk = a.take_batch().unwrap().chunk.unwrap();
    let ops: Vec<_> = chunk.tables[0].keyless.iter().map(|k| k.op).collect();
    assert_eq!(
        ops,
        vec![ChangeOp::Insert, ChangeOp::Update, ChangeOp::Delete]
    );
}

#[test]
fn a_kill_message_writes_what_came_before_and_fails_when_unreadable() {
    let kill_msg = |content: &'static [u8]| {
        Message::Message(LogicalMessage {
            xid: None,
            flags: MESSAGE_TRANSACTIONAL,
            lsn: Lsn(150),
            prefix: KILL_PREFIX.into(),
            content: Bytes::from_static(content),
        })
    };
    let mut a = assembler(limits(100), &[]);
    let c = cx(Instant::now());
    // Outside an applied transaction it is not ours to act on.
    assert!(matches!(
        a.on_message(kill_msg(b"{}"), c),
        Ok(Step::Continue)
    ));
    let _ = feed(&mut a, vec![begin(100, 1), insert(T, &["1", "x"])], c);
    let err = a.on_message(kill_msg(b"{}"), c).unwrap_err();
    assert!(
        err.to_string()
            .contains("unreadable unique-constraint decision from a"),
        "{err}"
    );
}

#[test]
fn ending_a_batch_without_a_complete_transaction_only_writes() {
    let mut a = assembler(limits(100), &[]);
    assert!(matches!(a.take_batch(), Err(None)));
    let _ = feed(
        &mut a,
        vec![begin(100, 1), insert(T, &["1", "x"])],
        cx(Instant::now()),
    );
    assert!(matches!(a.take_batch(), Err(Some(chunk)) if chunk.rows() == 1));
    assert!(a.in_txn());
}

/// A change of streamed transaction `xid` (its subtransaction's xid, or its own).
fn streamed_insert(xid: u32, id: &str) -> Message {
    match insert(T, &[id, "x"]) {
        Message::Insert(mut i) => {
            i.xid = Some(xid);
            Message::Insert(i)
        }
        _ => unreachable!(),
    }
}

fn stream_start(xid: u32, first: bool) -> Message {
    Message::StreamStart(crate::protocol::pgoutput::StreamStart {
        xid,
        first_segment: first,
    })
}

fn stream_commit(xid: u32, end: u64, ts: i64) -> Message {
    Message::StreamCommit(crate::protocol::pgoutput::StreamCommit {
        xid,
        flags: 0,
        commit_lsn: Lsn(end - 8),
        end_lsn: Lsn(end),
        commit_time: PgTimestamp(ts),
    })
}

fn stream_abort(xid: u32, subxid: u32) -> Message {
    Message::StreamAbort(crate::protocol::pgoutput::StreamAbort {
        xid,
        subxid,
        abort_info: None,
    })
}

#[test]
fn a_streamed_transaction_is_handed_out_in_blocks_and_commits_with_its_time() {
    let mut a = assembler(limits(100), &[]);
    let steps = feed(
        &mut a,
        vec![
            stream_start(7, true),
            streamed_insert(7, "1"),
            streamed_insert(7, "2"),
            Message::StreamStop,
        ],
        cx(Instant::now()),
    );
    let [Step::StreamStart { first: true }, Step::StreamWrite(chunk)] = &steps[..] else {
        panic!("{steps:?}");
    };
    assert_eq!(changes(chunk).len(), 2);
    // Between blocks a whole transaction is batched as usual; the streamed one stays open.
    let _ = feed(
        &mut a,
        vec![begin(50, 3), insert(T, &["9", "y"]), commit(58, 3)],
        cx(Instant::now()),
    );
    assert!(a.holds_commits() && a.streaming() && !a.is_drained());
    let steps = feed(
        &mut a,
        vec![
            stream_start(7, false),
            streamed_insert(7, "3"),
            Message::StreamStop,
            stream_commit(7, 200, 42),
        ],
        cx(Instant::now()),
    );
    assert!(
        matches!(
            &steps[..],
            [
                Step::StreamStart { first: false },
                Step::StreamWrite(_),
                Step::StreamCommit {
                    end: Lsn(200),
                    ts: PgTimestamp(42)
                }
            ]
        ),
        "{steps:?}"
    );
    assert!(!a.streaming());
    // The whole transaction read in between is untouched by the stream.
    let batch = a.take_batch().unwrap();
    assert_eq!(
        changes(&batch.chunk.unwrap()),
        vec![("9".into(), ChangeOp::Insert)]
    );
}

#[test]
fn a_subtransaction_gets_a_savepoint_after_what_came_before_it_and_aborts_back_to_it() {
    let mut a = assembler(limits(100), &[]);
    let steps = feed(
        &mut a,
        vec![
            stream_start(7, true),
            streamed_insert(7, "1"),
            streamed_insert(8, "2"),
            streamed_insert(9, "3"),
            Message::StreamStop,
        ],
        cx(Instant::now()),
    );
    let [Step::StreamStart { .. }, Step::StreamSavepoint {
        before: Some(before),
        subxid: 8,
    }, Step::StreamSavepoint {
        before: Some(sub8),
        subxid: 9,
    }, Step::StreamWrite(sub9)] = &steps[..]
    else {
        panic!("{steps:?}");
    };
    assert_eq!(changes(before), vec![("1".into(), ChangeOp::Insert)]);
    assert_eq!(changes(sub8), vec![("2".into(), ChangeOp::Insert)]);
    assert_eq!(changes(sub9), vec![("3".into(), ChangeOp::Insert)]);
    // Aborting 8 rolls back to its savepoint (9's goes with it); 9's abort then has no
    // savepoint left; another transaction's abort is not ours.
    let steps = feed(
        &mut a,
        vec![stream_abort(7, 8), stream_abort(7, 9), stream_abort(5, 5)],
        cx(Instant::now()),
    );
    assert!(
        matches!(&steps[..], [Step::StreamRollback { to: Some(8) }]),
        "{steps:?}"
    );
    // A subtransaction met again after its rollback gets its savepoint again.
    let steps = feed(
        &mut a,
        vec![
            stream_start(7, false),
            streamed_insert(9, "4"),
            stream_abort(7, 7),
        ],
        cx(Instant::now()),
    );
    assert!(
        matches!(
            &steps[..],
            [
                Step::StreamStart { first: false },
                Step::StreamSavepoint {
                    before: None,
                    subxid: 9
                },
                Step::StreamRollback { to: None }
            ]
        ),
        "{steps:?}"
    );
    assert!(a.is_drained());
}

#[test]
fn what_cannot_be_applied_streamed_says_so() {
    let cases: Vec<(Vec<Message>, &str)> = vec![
        (
            vec![stream_start(7, true), stream_start(8, true)],
            "second big transaction",
        ),
        (vec![stream_start(7, false)], "without its first block"),
        (vec![stream_start(7, true), truncate(&[T])], "truncates"),
        (
            vec![
                stream_start(7, true),
                Message::StreamStop,
                stream_commit(8, 100, 1),
            ],
            "without the stream",
        ),
    ];
    for (msgs, why) in cases {
        let mut a = assembler(limits(100), &[]);
        let steps = feed(&mut a, msgs, cx(Instant::now()));
        match steps.last() {
            Some(Step::Unstreamable(reason)) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{why}: {other:?}"),
        }
    }
}

#[test]
fn a_full_block_is_handed_out_before_its_stop() {
    let mut a = assembler(limits(2), &[]);
    let steps = feed(
        &mut a,
        vec![
            stream_start(7, true),
            streamed_insert(7, "1"),
            streamed_insert(7, "2"),
            streamed_insert(7, "3"),
            Message::StreamStop,
        ],
        cx(Instant::now()),
    );
    assert!(
        matches!(
            &steps[..],
            [
                Step::StreamStart { .. },
                Step::StreamWrite(_),
                Step::StreamWrite(_)
            ]
        ),
        "{steps:?}"
    );
    // The batch's chunk got nothing of it.
    assert!(a.take_batch().is_err());
}
