//! A test-only pgoutput encoder (the writer side, after PostgreSQL's proto.c), used to
//! round-trip arbitrary messages through the decoder.

use pgmesh::protocol::pgoutput::{DecodeContext, Message, OldTuple, Tuple};

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
    }
    fn xid(&mut self, xid: Option<u32>) {
        if let Some(x) = xid {
            self.u32(x);
        }
    }
    fn tuple(&mut self, t: &Tuple) {
        self.u16(u16::try_from(t.len()).expect("column count"));
        self.0.extend_from_slice(t.raw());
    }
    fn old(&mut self, o: &OldTuple) {
        self.u8(o.marker());
        self.tuple(o.tuple());
    }
}

/// Encodes `m` as PostgreSQL would. `ctx.abort_info` must match whether Stream Abort
/// carries abort info; xids of changes are written when present.
pub fn encode(m: &Message, ctx: DecodeContext) -> Vec<u8> {
    let mut w = W(vec![m.kind().tag()]);
    match m {
        Message::Begin(b) => {
            w.u64(b.final_lsn.0);
            w.i64(b.commit_time.0);
            w.u32(b.xid);
        }
        Message::Commit(c) => {
            w.u8(c.flags);
            w.u64(c.commit_lsn.0);
            w.u64(c.end_lsn.0);
            w.i64(c.commit_time.0);
        }
        Message::Origin(o) => {
            w.u64(o.lsn.0);
            w.str(&o.name);
        }
        Message::Relation(r) => {
            w.xid(r.xid);
            w.u32(r.oid);
            w.str(&r.namespace);
            w.str(&r.name);
            w.u8(r.replica_identity.as_byte());
            w.u16(u16::try_from(r.columns.len()).expect("columns"));
            for c in &r.columns {
                w.u8(c.flags);
                w.str(&c.name);
                w.u32(c.type_oid);
                w.i32(c.type_modifier);
            }
        }
        Message::Type(t) => {
            w.xid(t.xid);
            w.u32(t.oid);
            w.str(&t.namespace);
            w.str(&t.name);
        }
        Message::Insert(i) => {
            w.xid(i.xid);
            w.u32(i.relation_oid);
            w.u8(b'N');
            w.tuple(&i.new);
        }
        Message::Update(u) => {
            w.xid(u.xid);
            w.u32(u.relation_oid);
            if let Some(o) = &u.old {
                w.old(o);
            }
            w.u8(b'N');
            w.tuple(&u.new);
        }
        Message::Delete(d) => {
            w.xid(d.xid);
            w.u32(d.relation_oid);
            w.old(&d.old);
        }
        Message::Truncate(t) => {
            w.xid(t.xid);
            w.u32(u32::try_from(t.relation_oids.len()).expect("count"));
            w.u8(t.options);
            for oid in &t.relation_oids {
                w.u32(*oid);
            }
        }
        Message::Message(l) => {
            w.xid(l.xid);
            w.u8(l.flags);
            w.u64(l.lsn.0);
            w.str(&l.prefix);
            w.i32(i32::try_from(l.content.len()).expect("content length"));
            w.0.extend_from_slice(&l.content);
        }
        Message::StreamStart(s) => {
            w.u32(s.xid);
            w.u8(u8::from(s.first_segment));
        }
        Message::StreamStop => {}
        Message::StreamCommit(c) => {
            w.u32(c.xid);
            w.u8(c.flags);
            w.u64(c.commit_lsn.0);
            w.u64(c.end_lsn.0);
            w.i64(c.commit_time.0);
        }
        Message::StreamAbort(a) => {
            w.u32(a.xid);
            w.u32(a.subxid);
            assert_eq!(a.abort_info.is_some(), ctx.abort_info);
            if let Some(info) = a.abort_info {
                w.u64(info.abort_lsn.0);
                w.i64(info.abort_time.0);
            }
        }
        Message::BeginPrepare(b) => {
            w.u64(b.prepare_lsn.0);
            w.u64(b.end_lsn.0);
            w.i64(b.prepare_time.0);
            w.u32(b.xid);
            w.str(&b.gid);
        }
        Message::Prepare(p) | Message::StreamPrepare(p) => {
            w.u8(p.flags);
            w.u64(p.prepare_lsn.0);
            w.u64(p.end_lsn.0);
            w.i64(p.prepare_time.0);
            w.u32(p.xid);
            w.str(&p.gid);
        }
        Message::CommitPrepared(c) => {
            w.u8(c.flags);
            w.u64(c.commit_lsn.0);
            w.u64(c.end_lsn.0);
            w.i64(c.commit_time.0);
            w.u32(c.xid);
            w.str(&c.gid);
        }
        Message::RollbackPrepared(r) => {
            w.u8(r.flags);
            w.u64(r.prepare_end_lsn.0);
            w.u64(r.rollback_end_lsn.0);
            w.i64(r.prepare_time.0);
            w.i64(r.rollback_time.0);
            w.u32(r.xid);
            w.str(&r.gid);
        }
        other => panic!("encoder does not know {:?}", other.kind()),
    }
    w.0
}
