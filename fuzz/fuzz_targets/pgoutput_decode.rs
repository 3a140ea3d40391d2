//! Fuzzes the pgoutput decoder. The first input byte picks the decode context (bit 0:
//! inside a stream block, bit 1: Stream Abort carries abort info); the rest is one
//! message. The decoder must return Ok or Err, never panic, and a decoded tuple must
//! walk to exactly its column count.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgmesh::protocol::pgoutput::{decode_message, DecodeContext, Message, Tuple};

fn walk(t: &Tuple) {
    assert_eq!(t.iter().count(), t.len());
    assert_eq!(t.iter_borrowed().count(), t.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, msg)) = data.split_first() else {
        return;
    };
    let ctx = DecodeContext {
        in_stream: flags & 1 != 0,
        abort_info: flags & 2 != 0,
    };
    if let Ok(m) = decode_message(&Bytes::copy_from_slice(msg), ctx) {
        match &m {
            Message::Insert(i) => walk(&i.new),
            Message::Update(u) => {
                walk(&u.new);
                if let Some(o) = &u.old {
                    walk(o.tuple());
                }
            }
            Message::Delete(d) => walk(d.old.tuple()),
            _ => {}
        }
    }
});
