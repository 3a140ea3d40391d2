//! The commit time of the oldest change a slot still holds for its reader, from peeking
//! the slot (pgoutput, proto 1): the first transaction's Begin carries it. On PostgreSQL
//! 15 the walsender cannot drop transactions that carry a replication origin (changes the
//! reader applied here, which it would skip), so those are passed over here too.

use bytes::Bytes;

use crate::protocol::pgoutput::{Decoder, Message, PgTimestamp};

/// Transactions' messages as the peek returns them, in order. The commit time of the
/// first transaction without an Origin message; `None` when there is none among them.
#[must_use]
pub fn first_local_commit(messages: &[Bytes]) -> Option<PgTimestamp> {
    let mut decoder = Decoder::new(1);
    let mut candidate: Option<PgTimestamp> = None;
    for m in messages {
        match decoder.decode_ref(m) {
            Ok(Message::Begin(b)) => candidate = Some(b.commit_time),
            Ok(Message::Origin(_)) => candidate = None,
            // Anything else inside a transaction that had no Origin right after Begin.
            Ok(_) if candidate.is_some() => return candidate,
            Ok(_) => {}
            // A message this decoder does not know cannot decide anything; keep looking.
            Err(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(ts: i64) -> Bytes {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x1_0000u64.to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        Bytes::from(b)
    }

    fn origin() -> Bytes {
        let mut b = vec![b'O'];
        b.extend_from_slice(&0x10u64.to_be_bytes());
        b.extend_from_slice(b"pgmesh_a\0");
        Bytes::from(b)
    }

    fn commit() -> Bytes {
        let mut b = vec![b'C', 0];
        b.extend_from_slice(&[0u8; 24]);
        Bytes::from(b)
    }

    fn relation_like() -> Bytes {
        // Any non-Origin message after Begin; a Commit serves.
        commit()
    }

    #[test]
    fn skips_transactions_with_an_origin() {
        let msgs = vec![
            begin(100),
            origin(),
            commit(),
            begin(200),
            relation_like(),
            commit(),
        ];
        assert_eq!(first_local_commit(&msgs), Some(PgTimestamp(200)));
        assert_eq!(first_local_commit(&msgs[..3]), None);
        assert_eq!(first_local_commit(&[]), None);
        assert_eq!(
            first_local_commit(&[begin(5), commit()]),
            Some(PgTimestamp(5))
        );
        // Garbage never panics.
        assert_eq!(first_local_commit(&[Bytes::from_static(b"\xff\x00")]), None);
    }
}
