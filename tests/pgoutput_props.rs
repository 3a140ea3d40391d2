//! Property tests for the pgoutput decoder: arbitrary bytes never panic, and arbitrary
//! valid messages (built by a test-only encoder) decode to the values they were built
//! from. Plus the exact error (kind and offset) for each class of malformed input.

mod common;

use bytes::Bytes;
use pgmesh::protocol::pgoutput::{
    decode_message, AbortInfo, Begin, BeginPrepare, Column, Commit, CommitPrepared, DecodeContext,
    DecodeError, Decoder, Delete, Insert, LogicalMessage, Message, OldTuple, Origin, PgTimestamp,
    Prepare, Relation, RelationColumn, ReplicaIdentity, RollbackPrepared, StreamAbort,
    StreamCommit, StreamStart, Truncate, Tuple, Type, Update,
};
use pgmesh::Lsn;
use proptest::prelude::*;

use common::encode::encode;

fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn ts() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

fn column() -> impl Strategy<Value = Column<Vec<u8>>> {
    prop_oneof![
        Just(Column::Null),
        Just(Column::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Column::Text),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Column::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    proptest::collection::vec(column(), 0..12)
        .prop_map(|c| Tuple::from_columns(&c).expect("representable"))
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

/// A message valid in `ctx`: changes carry an xid exactly inside a stream block and
/// Stream Abort carries abort info exactly when the context says so.
fn message(ctx: DecodeContext) -> BoxedStrategy<Message> {
    let xid = if ctx.in_stream {
        any::<u32>().prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    };
    let abort_info = if ctx.abort_info {
        (lsn(), ts())
            .prop_map(|(abort_lsn, abort_time)| {
                Some(AbortInfo {
                    abort_lsn,
                    abort_time,
                })
            })
            .boxed()
    } else {
        Just(None).boxed()
    };
    let rel_col = (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| RelationColumn {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    );
    let prepare = (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), name())
        .prop_map(
            |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| Prepare {
                flags,
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid,
            },
        )
        .boxed();
    prop_oneof![
        (lsn(), ts(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), lsn(), lsn(), ts()).prop_map(|(flags, commit_lsn, end_lsn, commit_time)| {
            Message::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        }),
        (lsn(), name()).prop_map(|(lsn, name)| Message::Origin(Origin { lsn, name })),
        (
            xid.clone(),
            any::<u32>(),
            name(),
            name(),
            identity(),
            proptest::collection::vec(rel_col, 0..8)
        )
            .prop_map(|(xid, oid, namespace, name, replica_identity, columns)| {
                Message::Relation(Relation {
                    xid,
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (xid.clone(), any::<u32>(), name(), name()).prop_map(|(xid, oid, namespace, name)| {
            Message::Type(Type {
                xid,
                oid,
                namespace,
                name,
            })
        }),
        (xid.clone(), any::<u32>(), tuple()).prop_map(|(xid, relation_oid, new)| {
            Message::Insert(Insert {
                xid,
                relation_oid,
                new,
            })
        }),
        (
            xid.clone(),
            any::<u32>(),
            proptest::option::of(old_tuple()),
            tuple()
        )
            .prop_map(|(xid, relation_oid, old, new)| Message::Update(Update {
                xid,
                relation_oid,
                old,
                new,
            })),
        (xid.clone(), any::<u32>(), old_tuple()).prop_map(|(xid, relation_oid, old)| {
            Message::Delete(Delete {
                xid,
                relation_oid,
                old,
            })
        }),
        (
            xid.clone(),
            any::<u8>(),
            proptest::collection::vec(any::<u32>(), 0..10)
        )
            .prop_map(|(xid, options, relation_oids)| Message::Truncate(Truncate {
                xid,
                options,
                relation_oids,
            })),
        (
            xid,
            any::<u8>(),
            lsn(),
            name(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(xid, flags, lsn, prefix, content)| {
                Message::Message(LogicalMessage {
                    xid,
                    flags,
                    lsn,
                    prefix,
                    content: Bytes::from(content),
                })
            }),
        (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| {
            Message::StreamStart(StreamStart { xid, first_segment })
        }),
        Just(Message::StreamStop),
        (any::<u32>(), any::<u8>(), lsn(), lsn(), ts()).prop_map(
            |(xid, flags, commit_lsn, end_lsn, commit_time)| Message::StreamCommit(StreamCommit {
                xid,
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        ),
        (any::<u32>(), any::<u32>(), abort_info).prop_map(|(xid, subxid, abort_info)| {
            Message::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort_info,
            })
        }),
        (lsn(), lsn(), ts(), any::<u32>(), name()).prop_map(
            |(prepare_lsn, end_lsn, prepare_time, xid, gid)| Message::BeginPrepare(BeginPrepare {
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid,
            })
        ),
        prepare.clone().prop_map(Message::Prepare),
        prepare.prop_map(Message::StreamPrepare),
        (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), name()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time, xid, gid)| {
                Message::CommitPrepared(CommitPrepared {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                    xid,
                    gid,
                })
            }
        ),
        (any::<u8>(), lsn(), lsn(), ts(), ts(), any::<u32>(), name()).prop_map(
            |(flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid, gid)| {
                Message::RollbackPrepared(RollbackPrepared {
                    flags,
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_time,
                    rollback_time,
                    xid,
                    gid,
                })
            }
        ),
    ]
    .boxed()
}

fn ctx() -> impl Strategy<Value = DecodeContext> {
    (any::<bool>(), any::<bool>()).prop_map(|(in_stream, abort_info)| DecodeContext {
        in_stream,
        abort_info,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), c in ctx()) {
        let buf = Bytes::from(data);
        // Whatever decodes must walk its tuples without trouble too.
        if let Ok(Message::Insert(i)) = decode_message(&buf, c) {
            prop_assert_eq!(i.new.iter().count(), i.new.len());
        }
    }

    /// Tagged garbage reaches every message parser, not just the tag check.
    #[test]
    fn tagged_bytes_never_panic(tag in proptest::sample::select(b"BCORYIUDTMSEcAbPKrp".to_vec()),
                                data in proptest::collection::vec(any::<u8>(), 0..128), c in ctx()) {
        let mut v = vec![tag];
        v.extend(data);
        let _ = decode_message(&Bytes::from(v), c);
    }

    #[test]
    fn round_trips((c, m) in ctx().prop_flat_map(|c| (Just(c), message(c)))) {
        let bytes = Bytes::from(encode(&m, c));
        let decoded = decode_message(&bytes, c).expect("valid message decodes");
        prop_assert_eq!(&decoded, &m);
        // Every proper prefix is an error (truncated), never a panic or a wrong value.
        for cut in 0..bytes.len() {
            prop_assert!(decode_message(&bytes.slice(..cut), c).is_err());
        }
        // A trailing byte is reported.
        let mut longer = bytes.to_vec();
        longer.push(0);
        let trailing = matches!(
            decode_message(&Bytes::from(longer), c),
            Err(DecodeError::TrailingBytes { .. })
        );
        prop_assert!(trailing);
    }

    #[test]
    fn tuple_columns_round_trip(cols in proptest::collection::vec(column(), 0..30)) {
        let t = Tuple::from_columns(&cols).expect("representable");
        let back: Vec<Column<Vec<u8>>> = t
            .iter_borrowed()
            .map(|c| match c {
                Column::Null => Column::Null,
                Column::UnchangedToast => Column::UnchangedToast,
                Column::Text(v) => Column::Text(v.to_vec()),
                Column::Binary(v) => Column::Binary(v.to_vec()),
            })
            .collect();
        prop_assert_eq!(back, cols);
    }
}

fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode_message(&Bytes::copy_from_slice(bytes), DecodeContext::default())
}

#[test]
fn errors_name_offset_and_expectation() {
    assert!(matches!(
        decode(b""),
        Err(DecodeError::Truncated {
            offset: 0,
            expected: "message tag",
            ..
        })
    ));
    assert_eq!(
        decode(b"Z"),
        Err(DecodeError::UnknownTag {
            offset: 0,
            tag: b'Z'
        })
    );
    // Begin cut inside the commit timestamp.
    let e = decode(&[b'B', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap_err();
    assert_eq!(e.offset(), 9);
    assert!(matches!(
        e,
        DecodeError::Truncated {
            expected: "commit timestamp",
            needed: 8,
            remaining: 2,
            ..
        }
    ));
    // Insert with an unknown column kind 'x' at byte 8.
    let e = decode(b"I\0\0\0\x01N\0\x01x").unwrap_err();
    assert_eq!(
        e,
        DecodeError::UnknownColumnKind {
            offset: 8,
            kind: b'x'
        }
    );
    // Insert without the 'N' marker.
    assert!(matches!(
        decode(b"I\0\0\0\x01Q\0\0"),
        Err(DecodeError::UnexpectedByte {
            offset: 5,
            found: b'Q',
            ..
        })
    ));
    // A column count that cannot fit: 65535 columns in 1 byte.
    assert!(matches!(
        decode(b"I\0\0\0\x01N\xff\xffn"),
        Err(DecodeError::CountTooLarge {
            offset: 6,
            count: 65535,
            remaining: 1,
            ..
        })
    ));
    // Negative and oversized value lengths.
    assert!(matches!(
        decode(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff"),
        Err(DecodeError::NegativeLength {
            offset: 9,
            length: -1,
            ..
        })
    ));
    assert!(matches!(
        decode(b"I\0\0\0\x01N\0\x01t\0\0\0\x05ab"),
        Err(DecodeError::Truncated {
            offset: 13,
            needed: 5,
            remaining: 2,
            ..
        })
    ));
    // Truncate claiming 2^32-1 relations.
    assert!(matches!(
        decode(b"T\xff\xff\xff\xff\0"),
        Err(DecodeError::CountTooLarge { offset: 1, .. })
    ));
    // Origin name: invalid UTF-8, missing NUL.
    assert_eq!(
        decode(b"O\0\0\0\0\0\0\0\x01ab\xffc\0"),
        Err(DecodeError::InvalidUtf8 {
            offset: 11,
            what: "origin name"
        })
    );
    assert_eq!(
        decode(b"O\0\0\0\0\0\0\0\x01abc"),
        Err(DecodeError::UnterminatedString {
            offset: 9,
            what: "origin name"
        })
    );
    // Unknown replica identity.
    assert!(matches!(
        decode(b"R\0\0\0\x01\0t\0z\0\0"),
        Err(DecodeError::UnexpectedByte {
            offset: 8,
            found: b'z',
            ..
        })
    ));
    // Trailing bytes after Stream Stop.
    assert_eq!(
        decode(b"E!"),
        Err(DecodeError::TrailingBytes {
            offset: 1,
            message: "Stream Stop",
            remaining: 1
        })
    );
}

#[test]
fn decoder_tracks_stream_blocks() {
    let mut d = Decoder::new(2);
    let insert_in_stream = Bytes::from_static(b"I\0\0\0\x09\0\0\0\x01N\0\x01n");
    // Outside a block the xid would be read as the relation OID: trailing bytes.
    assert!(d.decode(insert_in_stream.clone()).is_err());
    assert!(
        d.decode(Bytes::from_static(b"E")).is_err(),
        "Stop outside a block"
    );
    d.decode(Bytes::from_static(b"S\0\0\0\x09\x01"))
        .expect("start");
    assert!(d.in_stream());
    assert!(
        d.decode(Bytes::from_static(b"S\0\0\0\x09\0")).is_err(),
        "nested Start"
    );
    assert!(d.in_stream(), "a failed message leaves the state alone");
    match d.decode(insert_in_stream).expect("insert") {
        Message::Insert(i) => {
            assert_eq!((i.xid, i.relation_oid), (Some(9), 1));
            assert_eq!(i.new.to_vec(), [Column::Null]);
        }
        other => panic!("{other:?}"),
    }
    d.decode(Bytes::from_static(b"E")).expect("stop");
    assert!(!d.in_stream());
    // Abort info only with parallel streaming on protocol 4.
    let abort = Bytes::from_static(b"A\0\0\0\x09\0\0\0\x0a");
    assert!(
        matches!(d.decode(abort.clone()), Ok(Message::StreamAbort(a)) if a.abort_info.is_none())
    );
    let mut p = Decoder::new(4).with_parallel_streaming(true);
    assert!(matches!(
        p.decode(abort),
        Err(DecodeError::Truncated {
            expected: "abort LSN",
            ..
        })
    ));
    let mut v3 = Decoder::new(3).with_parallel_streaming(true);
    assert!(!v3.context().abort_info);
    let _ = v3.decode(Bytes::from_static(b"E"));
}
