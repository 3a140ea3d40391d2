//! Pure decoder for PostgreSQL's pgoutput logical replication protocol, versions 1–4.
//!
//! Input is one pgoutput message (the payload of an XLogData CopyData message, or one
//! `data` row of `pg_logical_slot_get_binary_changes`); output is a typed [`Message`].
//! No I/O, no clock, no globals: the only state is [`Decoder`]'s "inside a streamed
//! block" flag, because inside one the change messages carry an extra xid field that
//! cannot be told apart from the bytes alone.
//!
//! Decoding is zero-copy over [`bytes::Bytes`]: column values and message contents are
//! slices of the input; row images are validated once and walked lazily (see
//! [`Tuple`]). It never panics: every read is bounds-checked, every count is checked
//! against the remaining input before anything is allocated, and any malformed input
//! yields a [`DecodeError`] with the byte offset where it went wrong.
//!
//! ```
//! use bytes::Bytes;
//! use pgmesh::protocol::pgoutput::{Decoder, Message};
//!
//! let mut decoder = Decoder::new(4);
//! // Stream Start for xid 7, first segment.
//! let msg = decoder.decode(Bytes::from_static(b"S\0\0\0\x07\x01")).unwrap();
//! assert!(matches!(msg, Message::StreamStart(s) if s.xid == 7 && s.first_segment));
//! assert!(decoder.in_stream());
//! ```

mod decode;
mod error;
mod message;
mod reader;
mod timestamp;
mod tuple;

use bytes::Bytes;

pub use decode::{decode_message, DecodeContext};
pub use error::DecodeError;
pub use message::{
    AbortInfo, Begin, BeginPrepare, Commit, CommitPrepared, Delete, Insert, LogicalMessage,
    Message, MessageKind, Oid, OldTuple, Origin, Prepare, Relation, RelationColumn,
    ReplicaIdentity, RollbackPrepared, StreamAbort, StreamCommit, StreamStart, Truncate, Type,
    Update, Xid, COLUMN_FLAG_KEY, MESSAGE_TRANSACTIONAL, TRUNCATE_CASCADE,
    TRUNCATE_RESTART_IDENTITY,
};
pub use timestamp::{PgTimestamp, PG_EPOCH_UNIX_MICROS};
pub use tuple::{
    Column, Columns, ColumnsBorrowed, Tuple, COLUMN_BINARY, COLUMN_NULL, COLUMN_TEXT,
    COLUMN_UNCHANGED_TOAST,
};

/// Lowest protocol version that has streaming of in-progress transactions (PG14+).
pub const PROTO_STREAMING: u32 = 2;
/// Lowest protocol version that has two-phase commit messages (PG15+).
pub const PROTO_TWO_PHASE: u32 = 3;
/// Lowest protocol version that has parallel streaming (PG16+).
pub const PROTO_PARALLEL_STREAMING: u32 = 4;

/// Decodes the messages of one replication stream in order.
///
/// Tracks whether the stream is between Stream Start and Stream Stop, and knows the
/// options the stream was started with. A message that fails to decode leaves the
/// state unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    protocol_version: u32,
    parallel_streaming: bool,
    in_stream: bool,
}

impl Decoder {
    /// A decoder for a stream started with `proto_version` and streaming off or `on`.
    #[must_use]
    pub fn new(protocol_version: u32) -> Decoder {
        Decoder {
            protocol_version,
            parallel_streaming: false,
            in_stream: false,
        }
    }

    /// The stream was started with `streaming 'parallel'`, so Stream Abort carries the
    /// abort LSN and time. Ignored below protocol 4, where the server rejects it.
    #[must_use]
    pub fn with_parallel_streaming(mut self, parallel: bool) -> Decoder {
        self.parallel_streaming = parallel;
        self
    }

    #[must_use]
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// Between Stream Start and Stream Stop.
    #[must_use]
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// The context the next message is decoded in.
    #[must_use]
    pub fn context(&self) -> DecodeContext {
        DecodeContext {
            in_stream: self.in_stream,
            abort_info: self.parallel_streaming
                && self.protocol_version >= PROTO_PARALLEL_STREAMING,
        }
    }

    /// Decodes one message and advances the stream state.
    ///
    /// Stream Start inside a streamed block and Stream Stop outside one are errors:
    /// they mean the decoder lost track of the stream, and decoding further changes
    /// with the wrong xid layout would misread them.
    pub fn decode(&mut self, buf: Bytes) -> Result<Message, DecodeError> {
        self.decode_ref(&buf)
    }

    /// Like [`Decoder::decode`] for a borrowed buffer (values still share its storage).
    pub fn decode_ref(&mut self, buf: &Bytes) -> Result<Message, DecodeError> {
        let msg = decode_message(buf, self.context())?;
        match (&msg, self.in_stream) {
            (Message::StreamStart(_), true) => {
                return Err(DecodeError::StreamState {
                    offset: 0,
                    message: "Stream Start",
                    state: "already inside a streamed block",
                })
            }
            (Message::StreamStart(_), false) => self.in_stream = true,
            (Message::StreamStop, false) => {
                return Err(DecodeError::StreamState {
                    offset: 0,
                    message: "Stream Stop",
                    state: "not inside a streamed block",
                })
            }
            (Message::StreamStop, true) => self.in_stream = false,
            _ => {}
        }
        Ok(msg)
    }
}
