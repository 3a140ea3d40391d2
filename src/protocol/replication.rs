//! The CopyData envelopes of the streaming replication protocol (pure, no I/O).
//!
//! Inside `START_REPLICATION`'s CopyBoth mode the walsender sends CopyData messages whose
//! payload starts with a one-byte tag:
//!
//! - `'w'` XLogData: `wal_start` (u64), `wal_end` (u64), server send time (i64 µs since
//!   2000-01-01), then the output plugin's bytes (pgoutput here);
//! - `'k'` primary keepalive: `wal_end` (u64), send time (i64), reply requested (u8).
//!
//! The client answers with `'r'` standby status updates: write, flush and apply LSNs,
//! client time, reply requested. See PostgreSQL's "Streaming Replication Protocol".
//!
//! Parsing is zero-copy over [`bytes::Bytes`] (the XLogData payload is a slice of the
//! received frame) and returns a typed error for any malformed input; it never panics.

use bytes::{BufMut, Bytes, BytesMut};

use crate::Lsn;

/// Timestamps on the wire are PostgreSQL `TimestampTz` values, the same type pgoutput uses.
pub use super::pgoutput::PgTimestamp;

/// One `'w'` message: a chunk of output-plugin data starting at `wal_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// WAL position of the data in this message.
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// When the server sent the message.
    pub send_time: PgTimestamp,
    /// The output plugin's message (pgoutput), a zero-copy slice of the frame.
    pub data: Bytes,
}

/// One `'k'` message: the server's position and whether it wants an immediate reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The server's current end of WAL (for logical: everything before it was sent).
    pub wal_end: Lsn,
    /// When the server sent the message.
    pub send_time: PgTimestamp,
    /// The server asks for a status update now (else it disconnects at
    /// `wal_sender_timeout`).
    pub reply_requested: bool,
}

/// A CopyData payload received from the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationMessage {
    XLogData(XLogData),
    PrimaryKeepalive(PrimaryKeepalive),
}

/// A CopyData payload that is not a well-formed walsender message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationParseError {
    #[error("empty CopyData payload from the walsender")]
    Empty,
    #[error("unknown walsender message tag {tag:#04x} ({len} bytes)")]
    UnknownTag { tag: u8, len: usize },
    #[error(
        "truncated walsender message '{}': {len} bytes, need at least {need}",
        char::from(*tag)
    )]
    Truncated { tag: u8, len: usize, need: usize },
    #[error("keepalive message has {len} bytes, expected exactly {expected}")]
    TrailingBytes { len: usize, expected: usize },
}

const XLOG_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Length of an encoded standby status update.
pub const STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    // Callers check lengths first; `get` keeps this panic-free regardless.
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

/// Parses one CopyData payload from the walsender.
pub fn parse_copy_data(payload: Bytes) -> Result<ReplicationMessage, ReplicationParseError> {
    let tag = *payload.first().ok_or(ReplicationParseError::Empty)?;
    let len = payload.len();
    match tag {
        b'w' => {
            if len < XLOG_HEADER {
                return Err(ReplicationParseError::Truncated {
                    tag,
                    len,
                    need: XLOG_HEADER,
                });
            }
            Ok(ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(be_u64(&payload, 1)),
                wal_end: Lsn(be_u64(&payload, 9)),
                send_time: PgTimestamp(be_u64(&payload, 17) as i64),
                data: payload.slice(XLOG_HEADER..),
            }))
        }
        b'k' => {
            if len < KEEPALIVE_LEN {
                return Err(ReplicationParseError::Truncated {
                    tag,
                    len,
                    need: KEEPALIVE_LEN,
                });
            }
            if len > KEEPALIVE_LEN {
                return Err(ReplicationParseError::TrailingBytes {
                    len,
                    expected: KEEPALIVE_LEN,
                });
            }
            Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(be_u64(&payload, 1)),
                send_time: PgTimestamp(be_u64(&payload, 9) as i64),
                reply_requested: payload.get(17).copied().unwrap_or(0) != 0,
            }))
        }
        _ => Err(ReplicationParseError::UnknownTag { tag, len }),
    }
}

/// The client's `'r'` message: how far it has received, durably stored and applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL position received (written) by the client.
    pub write: Lsn,
    /// Last position durably stored; the slot's `confirmed_flush_lsn` follows this.
    pub flush: Lsn,
    /// Last position applied.
    pub apply: Lsn,
    /// The client's clock when sending.
    pub client_time: PgTimestamp,
    /// Ask the server to answer with a keepalive right away (liveness probe).
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Appends the CopyData payload (not the CopyData frame) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(STATUS_UPDATE_LEN);
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(self.client_time.0);
        out.put_u8(u8::from(self.reply_requested));
    }

    /// The CopyData payload as bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(STATUS_UPDATE_LEN);
        self.encode(&mut b);
        b.freeze()
    }

    /// Parses an encoded update (used by tests and by fake servers).
    pub fn decode(b: &[u8]) -> Result<StandbyStatusUpdate, ReplicationParseError> {
        let tag = *b.first().ok_or(ReplicationParseError::Empty)?;
        if tag != b'r' {
            return Err(ReplicationParseError::UnknownTag { tag, len: b.len() });
        }
        if b.len() < STATUS_UPDATE_LEN {
            return Err(ReplicationParseError::Truncated {
                tag,
                len: b.len(),
                need: STATUS_UPDATE_LEN,
            });
        }
        if b.len() > STATUS_UPDATE_LEN {
            return Err(ReplicationParseError::TrailingBytes {
                len: b.len(),
                expected: STATUS_UPDATE_LEN,
            });
        }
        Ok(StandbyStatusUpdate {
            write: Lsn(be_u64(b, 1)),
            flush: Lsn(be_u64(b, 9)),
            apply: Lsn(be_u64(b, 17)),
            client_time: PgTimestamp(be_u64(b, 25) as i64),
            reply_requested: b[33] != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn xlog(start: u64, end: u64, time: i64, data: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(time);
        b.put_slice(data);
        b.freeze()
    }

    #[test]
    fn parses_xlogdata_zero_copy() {
        let frame = xlog(0x16_B374_D848, 0x17_0000_0000, 42, b"Bhello");
        let m = parse_copy_data(frame.clone()).unwrap();
        let ReplicationMessage::XLogData(x) = m else {
            panic!("not xlogdata: {m:?}")
        };
        assert_eq!(x.wal_start, Lsn(0x16_B374_D848));
        assert_eq!(x.wal_end, Lsn(0x17_0000_0000));
        assert_eq!(x.send_time, PgTimestamp(42));
        assert_eq!(&x.data[..], b"Bhello");
        // Same allocation: the payload points into the frame.
        assert_eq!(x.data.as_ptr(), frame[XLOG_HEADER..].as_ptr());
    }

    #[test]
    fn parses_xlogdata_with_empty_payload() {
        let m = parse_copy_data(xlog(1, 2, -3, b"")).unwrap();
        assert!(matches!(m, ReplicationMessage::XLogData(x) if x.data.is_empty()));
    }

    #[test]
    fn parses_keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0xABCD);
        b.put_i64(7);
        b.put_u8(1);
        let m = parse_copy_data(b.freeze()).unwrap();
        assert_eq!(
            m,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0xABCD),
                send_time: PgTimestamp(7),
                reply_requested: true
            })
        );
    }

    #[test]
    fn rejects_malformed() {
        use ReplicationParseError as E;
        assert_eq!(parse_copy_data(Bytes::new()), Err(E::Empty));
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"w123")),
            Err(E::Truncated {
                tag: b'w',
                len: 4,
                need: 25
            })
        );
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"k")),
            Err(E::Truncated {
                tag: b'k',
                len: 1,
                need: 18
            })
        );
        assert!(matches!(
            parse_copy_data(Bytes::from(vec![b'k'; 19])),
            Err(E::TrailingBytes { .. })
        ));
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"zzz")),
            Err(E::UnknownTag { tag: b'z', len: 3 })
        ));
    }

    #[test]
    fn encodes_status_update_exactly() {
        let u = StandbyStatusUpdate {
            write: Lsn(0x0102_0304_0506_0708),
            flush: Lsn(1),
            apply: Lsn(2),
            client_time: PgTimestamp(-1),
            reply_requested: true,
        };
        let b = u.to_bytes();
        assert_eq!(b.len(), STATUS_UPDATE_LEN);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[9..17], &[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&b[25..33], &[0xff; 8]);
        assert_eq!(b[33], 1);
        assert_eq!(StandbyStatusUpdate::decode(&b), Ok(u));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_input(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_copy_data(Bytes::from(data.clone()));
            let _ = StandbyStatusUpdate::decode(&data);
        }

        #[test]
        fn xlogdata_round_trips(start: u64, end: u64, time: i64,
                                data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let m = parse_copy_data(xlog(start, end, time, &data)).unwrap();
            prop_assert_eq!(m, ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(start), wal_end: Lsn(end), send_time: PgTimestamp(time),
                data: Bytes::from(data),
            }));
        }

        #[test]
        fn status_update_round_trips(w: u64, f: u64, a: u64, t: i64, r: bool) {
            let u = StandbyStatusUpdate {
                write: Lsn(w), flush: Lsn(f), apply: Lsn(a),
                client_time: PgTimestamp(t), reply_requested: r,
            };
            prop_assert_eq!(StandbyStatusUpdate::decode(&u.to_bytes()), Ok(u));
        }
    }
}
