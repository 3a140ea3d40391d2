//! Parsing of each message body. Layouts follow PostgreSQL's
//! `src/backend/replication/logical/proto.c` (the writer side).

use bytes::Bytes;

use super::error::DecodeError;
use super::message::{
    AbortInfo, Begin, BeginPrepare, Commit, CommitPrepared, Delete, Insert, LogicalMessage,
    Message, MessageKind, OldTuple, Origin, Prepare, Relation, RelationColumn, ReplicaIdentity,
    RollbackPrepared, StreamAbort, StreamCommit, StreamStart, Truncate, Type, Update, Xid,
};
use super::reader::Reader;
use super::timestamp::PgTimestamp;
use super::tuple::Tuple;
use crate::Lsn;

/// What the decoder must know beyond the bytes: the layout of some messages depends
/// on where they occur in the stream and on the options the stream was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeContext {
    /// Between Stream Start and Stream Stop: Relation, Type, Insert, Update, Delete,
    /// Truncate and Message then start with the xid of the streamed transaction.
    pub in_stream: bool,
    /// Stream Abort carries abort LSN and time (protocol 4 with `streaming 'parallel'`).
    pub abort_info: bool,
}

/// Decodes one message (exactly one; trailing bytes are an error) without tracking
/// stream state; [`super::Decoder`] tracks it for a whole stream.
pub fn decode_message(buf: &Bytes, ctx: DecodeContext) -> Result<Message, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r.u8("message tag")?;
    let kind = MessageKind::from_tag(tag).ok_or(DecodeError::UnknownTag { offset: 0, tag })?;
    let msg = body(&mut r, kind, ctx)?;
    r.finish(kind.name())?;
    Ok(msg)
}

fn lsn(r: &mut Reader<'_>, what: &'static str) -> Result<Lsn, DecodeError> {
    r.u64(what).map(Lsn)
}

fn ts(r: &mut Reader<'_>, what: &'static str) -> Result<PgTimestamp, DecodeError> {
    r.i64(what).map(PgTimestamp)
}

/// The xid that changes carry inside a streamed block.
fn stream_xid(r: &mut Reader<'_>, ctx: DecodeContext) -> Result<Option<Xid>, DecodeError> {
    if ctx.in_stream {
        r.u32("xid of streamed transaction").map(Some)
    } else {
        Ok(None)
    }
}

#[inline(always)]
fn body(r: &mut Reader<'_>, kind: MessageKind, ctx: DecodeContext) -> Result<Message, DecodeError> {
    Ok(match kind {
        MessageKind::Begin => Message::Begin(Begin {
            final_lsn: lsn(r, "final LSN")?,
            commit_time: ts(r, "commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        MessageKind::Commit => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: lsn(r, "commit LSN")?,
            end_lsn: lsn(r, "end LSN")?,
            commit_time: ts(r, "commit timestamp")?,
        }),
        MessageKind::Origin => Message::Origin(Origin {
            lsn: lsn(r, "origin LSN")?,
            name: r.cstr("origin name")?,
        }),
        MessageKind::Relation => Message::Relation(relation(r, ctx)?),
        MessageKind::Type => Message::Type(Type {
            xid: stream_xid(r, ctx)?,
            oid: r.u32("type OID")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        }),
        MessageKind::Insert => {
            let xid = stream_xid(r, ctx)?;
            let relation_oid = r.u32("relation OID")?;
            expect_byte(r, b'N', "'N' (new tuple)")?;
            Message::Insert(Insert {
                xid,
                relation_oid,
                new: Tuple::read(r)?,
            })
        }
        MessageKind::Update => {
            let xid = stream_xid(r, ctx)?;
            let relation_oid = r.u32("relation OID")?;
            let at = r.pos();
            let old = match r.u8("tuple marker 'K', 'O' or 'N'")? {
                b'K' => Some(OldTuple::Key(Tuple::read(r)?)),
                b'O' => Some(OldTuple::Full(Tuple::read(r)?)),
                b'N' => None,
                found => {
                    return Err(DecodeError::UnexpectedByte {
                        offset: at,
                        expected: "'K', 'O' or 'N'",
                        found,
                    })
                }
            };
            if old.is_some() {
                expect_byte(r, b'N', "'N' (new tuple)")?;
            }
            Message::Update(Update {
                xid,
                relation_oid,
                old,
                new: Tuple::read(r)?,
            })
        }
        MessageKind::Delete => {
            let xid = stream_xid(r, ctx)?;
            let relation_oid = r.u32("relation OID")?;
            let at = r.pos();
            let old = match r.u8("tuple marker 'K' or 'O'")? {
                b'K' => OldTuple::Key(Tuple::read(r)?),
                b'O' => OldTuple::Full(Tuple::read(r)?),
                found => {
                    return Err(DecodeError::UnexpectedByte {
                        offset: at,
                        expected: "'K' or 'O'",
                        found,
                    })
                }
            };
            Message::Delete(Delete {
                xid,
                relation_oid,
                old,
            })
        }
        MessageKind::Truncate => {
            let xid = stream_xid(r, ctx)?;
            let count_at = r.pos();
            let count = r.u32("relation count")?;
            let options = r.u8("truncate options")?;
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            r.check_count(count, 4, count_at, "truncated relation")?;
            let mut relation_oids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_oids.push(r.u32("relation OID")?);
            }
            Message::Truncate(Truncate {
                xid,
                options,
                relation_oids,
            })
        }
        MessageKind::Message => {
            let xid = stream_xid(r, ctx)?;
            let flags = r.u8("message flags")?;
            let lsn = lsn(r, "message LSN")?;
            let prefix = r.cstr("message prefix")?;
            let len_at = r.pos();
            let len = r.i32("message content length")?;
            let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
                offset: len_at,
                what: "message content",
                length: len,
            })?;
            Message::Message(LogicalMessage {
                xid,
                flags,
                lsn,
                prefix,
                content: r.bytes(len, "message content")?,
            })
        }
        MessageKind::StreamStart => Message::StreamStart(StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment flag")? == 1,
        }),
        MessageKind::StreamStop => Message::StreamStop,
        MessageKind::StreamCommit => Message::StreamCommit(StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: lsn(r, "commit LSN")?,
            end_lsn: lsn(r, "end LSN")?,
            commit_time: ts(r, "commit timestamp")?,
        }),
        MessageKind::StreamAbort => Message::StreamAbort(StreamAbort {
            xid: r.u32("xid")?,
            subxid: r.u32("subtransaction xid")?,
            abort_info: if ctx.abort_info {
                Some(AbortInfo {
                    abort_lsn: lsn(r, "abort LSN")?,
                    abort_time: ts(r, "abort timestamp")?,
                })
            } else {
                None
            },
        }),
        MessageKind::BeginPrepare => Message::BeginPrepare(BeginPrepare {
            prepare_lsn: lsn(r, "prepare LSN")?,
            end_lsn: lsn(r, "end LSN")?,
            prepare_time: ts(r, "prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("GID")?,
        }),
        MessageKind::Prepare => Message::Prepare(prepare(r)?),
        MessageKind::StreamPrepare => Message::StreamPrepare(prepare(r)?),
        MessageKind::CommitPrepared => Message::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: lsn(r, "commit LSN")?,
            end_lsn: lsn(r, "end LSN")?,
            commit_time: ts(r, "commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("GID")?,
        }),
        MessageKind::RollbackPrepared => Message::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: lsn(r, "prepare end LSN")?,
            rollback_end_lsn: lsn(r, "rollback end LSN")?,
            prepare_time: ts(r, "prepare timestamp")?,
            rollback_time: ts(r, "rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("GID")?,
        }),
    })
}

fn expect_byte(r: &mut Reader<'_>, want: u8, expected: &'static str) -> Result<(), DecodeError> {
    let at = r.pos();
    match r.u8(expected)? {
        b if b == want => Ok(()),
        found => Err(DecodeError::UnexpectedByte {
            offset: at,
            expected,
            found,
        }),
    }
}

fn prepare(r: &mut Reader<'_>) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: r.u8("flags")?,
        prepare_lsn: lsn(r, "prepare LSN")?,
        end_lsn: lsn(r, "end LSN")?,
        prepare_time: ts(r, "prepare timestamp")?,
        xid: r.u32("xid")?,
        gid: r.cstr("GID")?,
    })
}

/// Smallest encoding of one relation column: flags, empty name + NUL, type OID, typmod.
const MIN_RELATION_COLUMN: usize = 1 + 1 + 4 + 4;

fn relation(r: &mut Reader<'_>, ctx: DecodeContext) -> Result<Relation, DecodeError> {
    let xid = stream_xid(r, ctx)?;
    let oid = r.u32("relation OID")?;
    let namespace = r.cstr("relation namespace")?;
    let name = r.cstr("relation name")?;
    let ident_at = r.pos();
    let ident = r.u8("replica identity")?;
    let replica_identity =
        ReplicaIdentity::from_byte(ident).ok_or(DecodeError::UnexpectedByte {
            offset: ident_at,
            expected: "replica identity 'd', 'n', 'f' or 'i'",
            found: ident,
        })?;
    let count_at = r.pos();
    let ncols = usize::from(r.u16("relation column count")?);
    r.check_count(ncols, MIN_RELATION_COLUMN, count_at, "relation column")?;
    let mut columns = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        columns.push(RelationColumn {
            flags: r.u8("column flags")?,
            name: r.cstr("column name")?,
            type_oid: r.u32("column type OID")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}
