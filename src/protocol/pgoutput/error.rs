//! Why a pgoutput message could not be decoded, and where.
//!
//! Every variant carries the byte offset (from the start of the message, the tag byte
//! being offset 0) at which decoding stopped, so a bad message from a server can be
//! matched against a hex dump without guessing.

/// A pgoutput message that does not follow the protocol.
///
/// A decode error means the stream and the decoder disagree about the protocol (a bug,
/// a corrupted stream or a protocol version / option mismatch); retrying the same bytes
/// gives the same error, so callers stop the stream, keep the position and report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a field was complete.
    #[error(
        "pgoutput message truncated at byte {offset}: expected {expected} ({needed} bytes), \
         only {remaining} left"
    )]
    Truncated {
        offset: usize,
        expected: &'static str,
        needed: usize,
        remaining: usize,
    },
    /// The first byte is not a pgoutput message tag.
    #[error("unknown pgoutput message tag {tag:#04x} ({}) at byte {offset}", printable(*tag))]
    UnknownTag { offset: usize, tag: u8 },
    /// A tuple column kind other than 'n', 'u', 't' or 'b'.
    #[error(
        "unknown tuple column kind {kind:#04x} ({}) at byte {offset}: expected 'n', 'u', 't' or 'b'",
        printable(*kind)
    )]
    UnknownColumnKind { offset: usize, kind: u8 },
    /// A byte with a fixed set of allowed values (tuple marker, replica identity) had
    /// another value.
    #[error("unexpected byte {found:#04x} ({}) at byte {offset}: expected {expected}", printable(*found))]
    UnexpectedByte {
        offset: usize,
        expected: &'static str,
        found: u8,
    },
    /// A name (relation, namespace, column, type, origin, prefix, GID) is not UTF-8.
    #[error("invalid UTF-8 in {what} at byte {offset}")]
    InvalidUtf8 { offset: usize, what: &'static str },
    /// A NUL-terminated string has no terminator before the end of the message.
    #[error("unterminated {what} starting at byte {offset}: no NUL before the end of the message")]
    UnterminatedString { offset: usize, what: &'static str },
    /// A length field is negative where only a length is allowed.
    #[error("negative length {length} for {what} at byte {offset}")]
    NegativeLength {
        offset: usize,
        what: &'static str,
        length: i32,
    },
    /// A count (columns, relations) claims more entries than the rest of the message can
    /// hold even at the smallest size per entry; checked before anything is allocated.
    #[error(
        "{what} count {count} at byte {offset} does not fit the remaining {remaining} bytes \
         (at least {min_each} bytes each)"
    )]
    CountTooLarge {
        offset: usize,
        what: &'static str,
        count: usize,
        min_each: usize,
        remaining: usize,
    },
    /// The message was decoded completely but bytes are left over.
    #[error("{remaining} trailing bytes after a complete {message} message at byte {offset}")]
    TrailingBytes {
        offset: usize,
        message: &'static str,
        remaining: usize,
    },
    /// Stream Start inside a streamed block, or Stream Stop outside one: the decoder's
    /// idea of "inside a stream block" (which decides whether changes carry an xid) no
    /// longer matches the server's.
    #[error("{message} at byte {offset} while {state}")]
    StreamState {
        offset: usize,
        message: &'static str,
        state: &'static str,
    },
}

impl DecodeError {
    /// Byte offset in the message at which decoding failed.
    #[must_use]
    pub fn offset(&self) -> usize {
        match self {
            DecodeError::Truncated { offset, .. }
            | DecodeError::UnknownTag { offset, .. }
            | DecodeError::UnknownColumnKind { offset, .. }
            | DecodeError::UnexpectedByte { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::NegativeLength { offset, .. }
            | DecodeError::CountTooLarge { offset, .. }
            | DecodeError::TrailingBytes { offset, .. }
            | DecodeError::StreamState { offset, .. } => *offset,
        }
    }
}

/// Shows a byte as a character when it is printable ASCII, since tags are letters.
fn printable(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", char::from(b))
    } else {
        "non-printable".to_string()
    }
}
