//! The decoded pgoutput messages, one type per message.
//!
//! Field names follow PostgreSQL's "Logical Replication Message Formats" page. Fields
//! that only exist inside a streamed block (`xid` of changes) or only with an option
//! (abort info with `streaming 'parallel'`) are `Option`s, so one type covers protocol
//! versions 1–4.

use bytes::Bytes;

use super::timestamp::PgTimestamp;
use super::tuple::Tuple;
use crate::Lsn;

/// A transaction id (32-bit, as on the wire).
pub type Xid = u32;
/// A PostgreSQL object id (relation, type).
pub type Oid = u32;

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(BeginPrepare),
    Prepare(Prepare),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    StreamPrepare(Prepare),
}

/// The kind of a [`Message`] without its contents, e.g. for counters and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    Begin,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
    StreamStart,
    StreamStop,
    StreamCommit,
    StreamAbort,
    BeginPrepare,
    Prepare,
    CommitPrepared,
    RollbackPrepared,
    StreamPrepare,
}

impl MessageKind {
    /// Every kind, in protocol-document order.
    pub const ALL: [MessageKind; 19] = [
        MessageKind::Begin,
        MessageKind::Commit,
        MessageKind::Origin,
        MessageKind::Relation,
        MessageKind::Type,
        MessageKind::Insert,
        MessageKind::Update,
        MessageKind::Delete,
        MessageKind::Truncate,
        MessageKind::Message,
        MessageKind::StreamStart,
        MessageKind::StreamStop,
        MessageKind::StreamCommit,
        MessageKind::StreamAbort,
        MessageKind::BeginPrepare,
        MessageKind::Prepare,
        MessageKind::CommitPrepared,
        MessageKind::RollbackPrepared,
        MessageKind::StreamPrepare,
    ];

    /// The tag byte that starts messages of this kind.
    #[must_use]
    pub fn tag(self) -> u8 {
        match self {
            MessageKind::Begin => b'B',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
            MessageKind::Message => b'M',
            MessageKind::StreamStart => b'S',
            MessageKind::StreamStop => b'E',
            MessageKind::StreamCommit => b'c',
            MessageKind::StreamAbort => b'A',
            MessageKind::BeginPrepare => b'b',
            MessageKind::Prepare => b'P',
            MessageKind::CommitPrepared => b'K',
            MessageKind::RollbackPrepared => b'r',
            MessageKind::StreamPrepare => b'p',
        }
    }

    /// The kind a tag byte announces, if any.
    #[must_use]
    pub fn from_tag(tag: u8) -> Option<MessageKind> {
        MessageKind::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// Human-readable name as in PostgreSQL's documentation.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Begin => "Begin",
            MessageKind::Commit => "Commit",
            MessageKind::Origin => "Origin",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
            MessageKind::Message => "Message",
            MessageKind::StreamStart => "Stream Start",
            MessageKind::StreamStop => "Stream Stop",
            MessageKind::StreamCommit => "Stream Commit",
            MessageKind::StreamAbort => "Stream Abort",
            MessageKind::BeginPrepare => "Begin Prepare",
            MessageKind::Prepare => "Prepare",
            MessageKind::CommitPrepared => "Commit Prepared",
            MessageKind::RollbackPrepared => "Rollback Prepared",
            MessageKind::StreamPrepare => "Stream Prepare",
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Message {
    #[must_use]
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Begin(_) => MessageKind::Begin,
            Message::Commit(_) => MessageKind::Commit,
            Message::Origin(_) => MessageKind::Origin,
            Message::Relation(_) => MessageKind::Relation,
            Message::Type(_) => MessageKind::Type,
            Message::Insert(_) => MessageKind::Insert,
            Message::Update(_) => MessageKind::Update,
            Message::Delete(_) => MessageKind::Delete,
            Message::Truncate(_) => MessageKind::Truncate,
            Message::Message(_) => MessageKind::Message,
            Message::StreamStart(_) => MessageKind::StreamStart,
            Message::StreamStop => MessageKind::StreamStop,
            Message::StreamCommit(_) => MessageKind::StreamCommit,
            Message::StreamAbort(_) => MessageKind::StreamAbort,
            Message::BeginPrepare(_) => MessageKind::BeginPrepare,
            Message::Prepare(_) => MessageKind::Prepare,
            Message::CommitPrepared(_) => MessageKind::CommitPrepared,
            Message::RollbackPrepared(_) => MessageKind::RollbackPrepared,
            Message::StreamPrepare(_) => MessageKind::StreamPrepare,
        }
    }

    /// The (sub)transaction a message inside a streamed block belongs to: the xid those
    /// messages carry there (`None` outside a block and for the other kinds).
    #[must_use]
    pub fn stream_xid(&self) -> Option<Xid> {
        match self {
            Message::Relation(m) => m.xid,
            Message::Type(m) => m.xid,
            Message::Insert(m) => m.xid,
            Message::Update(m) => m.xid,
            Message::Delete(m) => m.xid,
            Message::Truncate(m) => m.xid,
            Message::Message(m) => m.xid,
            _ => None,
        }
    }
}

/// 'B': start of a (non-streamed) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: Xid,
}

/// 'C': end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0; kept so a future flag is visible instead of dropped.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once applied.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// 'O': the transaction carries a replication origin (it was itself replicated).
/// pgmesh drops such transactions on PG15 to prevent replication loops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub lsn: Lsn,
    pub name: String,
}

/// Replica identity of a relation (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': nothing (updates/deletes cannot be replicated).
    Nothing,
    /// 'f': all columns; old rows arrive as full tuples ('O').
    Full,
    /// 'i': a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The `relreplident` byte.
    #[must_use]
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    #[must_use]
    pub fn from_byte(b: u8) -> Option<ReplicaIdentity> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// Column flag bit: the column is part of the replica identity key.
pub const COLUMN_FLAG_KEY: u8 = 1;

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Raw flags; bit [`COLUMN_FLAG_KEY`] marks key columns.
    pub flags: u8,
    pub name: String,
    pub type_oid: Oid,
    /// `atttypmod` (e.g. varchar length + 4), -1 when none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Part of the replica identity (every column under REPLICA IDENTITY FULL).
    #[must_use]
    pub fn is_key(&self) -> bool {
        self.flags & COLUMN_FLAG_KEY != 0
    }
}

/// 'R': the shape of a relation, sent before its first change (and after it changes).
/// Columns are the live, non-generated ones, in the order tuples carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Present inside a streamed block.
    pub xid: Option<Xid>,
    pub oid: Oid,
    /// As sent: empty means `pg_catalog` (see [`Relation::schema`]).
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// The schema name, with the wire's empty string resolved to `pg_catalog`.
    #[must_use]
    pub fn schema(&self) -> &str {
        if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        }
    }
}

/// 'Y': a non-built-in data type used by a following Relation's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub xid: Option<Xid>,
    pub oid: Oid,
    /// As sent: empty means `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

/// 'I': a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<Xid>,
    pub relation_oid: Oid,
    pub new: Tuple,
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': the replica identity key columns (other columns are null).
    Key(Tuple),
    /// 'O': the full old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

impl OldTuple {
    #[must_use]
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }

    /// The marker byte ('K' or 'O').
    #[must_use]
    pub fn marker(&self) -> u8 {
        match self {
            OldTuple::Key(_) => b'K',
            OldTuple::Full(_) => b'O',
        }
    }
}

/// 'U': a changed row. `old` is present when the key changed ('K') or the relation has
/// REPLICA IDENTITY FULL ('O'); otherwise the key is read from `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<Xid>,
    pub relation_oid: Oid,
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

/// 'D': a removed row, identified by its key or its full old image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<Xid>,
    pub relation_oid: Oid,
    pub old: OldTuple,
}

/// Truncate option bit: CASCADE.
pub const TRUNCATE_CASCADE: u8 = 1;
/// Truncate option bit: RESTART IDENTITY.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// 'T': one TRUNCATE statement over one or more relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<Xid>,
    /// Raw option bits ([`TRUNCATE_CASCADE`], [`TRUNCATE_RESTART_IDENTITY`]).
    pub options: u8,
    pub relation_oids: Vec<Oid>,
}

impl Truncate {
    #[must_use]
    pub fn cascade(&self) -> bool {
        self.options & TRUNCATE_CASCADE != 0
    }

    #[must_use]
    pub fn restart_identity(&self) -> bool {
        self.options & TRUNCATE_RESTART_IDENTITY != 0
    }
}

/// Message flag bit: the message is transactional.
pub const MESSAGE_TRANSACTIONAL: u8 = 1;

/// 'M': a `pg_logical_emit_message` payload (needs `messages 'true'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Present inside a streamed block (transactional messages only).
    pub xid: Option<Xid>,
    /// Raw flags; see [`LogicalMessage::transactional`].
    pub flags: u8,
    /// LSN of the message record.
    pub lsn: Lsn,
    pub prefix: String,
    /// Arbitrary bytes, zero-copy.
    pub content: Bytes,
}

impl LogicalMessage {
    /// Transactional messages belong to the surrounding transaction; others were
    /// emitted immediately and arrive outside any Begin/Commit.
    #[must_use]
    pub fn transactional(&self) -> bool {
        self.flags & MESSAGE_TRANSACTIONAL != 0
    }
}

/// 'S': the changes up to the next Stream Stop belong to in-progress transaction `xid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: Xid,
    /// First block of this transaction (it may be preceded by nothing about it).
    pub first_segment: bool,
}

/// 'c': a streamed transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: Xid,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// Where and when a streamed (sub)transaction aborted; sent only with
/// `streaming 'parallel'` (protocol 4), so an apply worker can record the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortInfo {
    pub abort_lsn: Lsn,
    pub abort_time: PgTimestamp,
}

/// 'A': a streamed transaction (`subxid == xid`) or one of its subtransactions aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: Xid,
    pub subxid: Xid,
    pub abort_info: Option<AbortInfo>,
}

impl StreamAbort {
    /// The whole transaction aborted, not just a subtransaction.
    #[must_use]
    pub fn is_toplevel(&self) -> bool {
        self.xid == self.subxid
    }
}

/// 'b': start of a prepared transaction (two-phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: Xid,
    /// The transaction's global identifier (`PREPARE TRANSACTION 'gid'`).
    pub gid: String,
}

/// 'P' (Prepare) and 'p' (Stream Prepare): the transaction was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}

/// 'K': a prepared transaction was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}

/// 'r': a prepared transaction was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    /// End of the PREPARE record.
    pub prepare_end_lsn: Lsn,
    /// End of the ROLLBACK PREPARED record.
    pub rollback_end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub rollback_time: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}
