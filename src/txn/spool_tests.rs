use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::protocol::pgoutput::{Decoder, Message};

/// pgoutput bytes of the messages these tests need (protocol 2, inside or around blocks).
fn start(xid: u32, first: bool) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'S');
    b.put_u32(xid);
    b.put_u8(u8::from(first));
    b.freeze()
}

fn stop() -> Bytes {
    Bytes::from_static(b"E")
}

/// An insert of one text value into relation 16384, by (sub)transaction `xid`.
fn insert(xid: u32, value: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(xid);
    b.put_u32(16384);
    b.put_u8(b'N');
    b.put_u16(1);
    b.put_u8(b't');
    b.put_u32(value.len() as u32);
    b.put_slice(value.as_bytes());
    b.freeze()
}

fn abort(xid: u32, subxid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'A');
    b.put_u32(xid);
    b.put_u32(subxid);
    b.freeze()
}

fn commit(xid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'c');
    b.put_u32(xid);
    b.put_u8(0);
    b.put_u64(0x100);
    b.put_u64(0x180);
    b.put_i64(7);
    b.freeze()
}

/// Feeds `raw` through a decoder and the spools, as the direction does.
struct Feed {
    decoder: Decoder,
    spools: Spools,
    applying_open: Option<u32>,
}

impl Feed {
    fn new(budget: usize) -> Feed {
        Feed {
            decoder: Decoder::new(2),
            spools: Spools::new(budget, std::env::temp_dir()),
            applying_open: Some(1),
        }
    }

    fn send(&mut self, raw: Bytes) -> Route {
        let msg = self.decoder.decode_ref(&raw).unwrap();
        self.spools.route(&msg, &raw, self.applying_open).unwrap()
    }

    fn kept(&mut self, raw: Bytes) {
        assert!(matches!(self.send(raw), Route::Kept));
    }

    /// The first block of a transaction kept from now on.
    fn began(&mut self, raw: Bytes) {
        assert!(matches!(self.send(raw), Route::Began));
    }

    fn passed_on(&mut self, raw: Bytes) {
        assert!(matches!(self.send(raw), Route::Assembler));
    }
}

/// The values the replay inserts, in order.
fn replayed(c: &mut Committed) -> Vec<String> {
    let mut out = Vec::new();
    let mut r = c.messages().unwrap();
    while let Some(m) = r.next_message().unwrap() {
        match m {
            Message::Insert(i) => {
                let v = i.new.iter().next().unwrap();
                out.push(String::from_utf8(v.value().unwrap().to_vec()).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn committed(route: Route) -> Box<Committed> {
    match route {
        Route::Commit(c) => c,
        other => panic!("expected a commit, got {other:?}"),
    }
}

#[test]
fn a_second_streamed_transaction_is_kept_and_replayed_whole_at_its_commit() {
    for budget in [SPOOL_MEMORY, 16] {
        let mut f = Feed::new(budget);
        // Transaction 1 is the one applied open: its blocks go to the assembler.
        f.passed_on(start(1, true));
        f.passed_on(insert(1, "a1"));
        f.passed_on(stop());
        // Transaction 2 begins while 1 is open: kept, blocks interleaved with 1's.
        f.began(start(2, true));
        f.kept(insert(2, "b1"));
        f.kept(stop());
        f.passed_on(start(1, false));
        f.passed_on(insert(1, "a2"));
        f.passed_on(stop());
        f.kept(start(2, false));
        f.kept(insert(2, "b2"));
        f.kept(stop());
        assert!(!f.spools.is_empty());
        let mut c = committed(f.send(commit(2)));
        assert!(f.spools.is_empty());
        assert_eq!(c.xid(), 2);
        assert_eq!(replayed(&mut c), ["b1", "b2"], "budget {budget}");
        assert!(
            matches!(c.begin(), Message::Begin(b) if b.xid == 2 && b.final_lsn == crate::Lsn(0x100))
        );
        assert!(
            matches!(c.commit(), Message::Commit(m) if m.end_lsn == crate::Lsn(0x180) && m.commit_time.0 == 7)
        );
        // Transaction 1's own commit is the assembler's.
        f.passed_on(commit(1));
    }
}

#[test]
fn a_rolled_back_subtransaction_cuts_what_came_from_its_first_change_on() {
    for budget in [SPOOL_MEMORY, 16] {
        let mut f = Feed::new(budget);
        f.began(start(2, true));
        f.kept(insert(2, "top"));
        f.kept(insert(20, "sub20"));
        f.kept(insert(21, "sub21 inside 20"));
        f.kept(stop());
        f.kept(abort(2, 20));
        f.kept(start(2, false));
        f.kept(insert(2, "after"));
        f.kept(insert(22, "sub22"));
        f.kept(stop());
        // A subtransaction with nothing kept: nothing to cut.
        f.kept(abort(2, 99));
        let mut c = committed(f.send(commit(2)));
        assert_eq!(
            replayed(&mut c),
            ["top", "after", "sub22"],
            "budget {budget}"
        );
    }
}

#[test]
fn an_aborted_kept_transaction_leaves_nothing_and_unknown_ones_go_to_the_assembler() {
    let mut f = Feed::new(SPOOL_MEMORY);
    f.began(start(2, true));
    f.kept(insert(2, "x"));
    f.kept(stop());
    f.kept(abort(2, 2));
    assert!(f.spools.is_empty());
    // Its commit would now be the assembler's to judge (it cannot come after an abort).
    f.passed_on(commit(2));
    // A transaction resumed without its first block, or streamed while none is applied
    // open: the assembler decides.
    f.passed_on(start(3, false));
    f.passed_on(stop());
    f.applying_open = None;
    f.passed_on(start(4, true));
}
