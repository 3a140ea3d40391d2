//! Assertions about wal2json's output for tests/golden/wal2json/scenario.sql, shared by the
//! golden test (checked-in captures) and the live test (a fresh cluster). Included with
//! `#[path]`, so it is not a test target of its own.

use pgmesh::protocol::wal2json::{
    decode_line, Column, LogicalMessage, RowChange, Timestamp, TxnBoundary, Wal2JsonMessage,
};
use pgmesh::Lsn;
use serde_json::{json, Value};

/// Decodes every line, naming the line that fails.
pub fn decode_all(text: &str) -> Vec<Wal2JsonMessage> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| decode_line(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1)))
        .collect()
}

/// A transaction: Begin, what came between, Commit.
#[derive(Debug)]
pub struct Txn {
    pub begin: TxnBoundary,
    pub body: Vec<Wal2JsonMessage>,
    pub commit: TxnBoundary,
}

/// Groups lines into transactions (dropping empty ones, e.g. DDL) and non-transactional
/// messages; panics on a B/C structure that does not nest.
pub fn group(msgs: Vec<Wal2JsonMessage>) -> (Vec<Txn>, Vec<LogicalMessage>) {
    let mut txns = Vec::new();
    let mut loose = Vec::new();
    let mut open: Option<(TxnBoundary, Vec<Wal2JsonMessage>)> = None;
    for m in msgs {
        match (m, open.as_mut()) {
            (Wal2JsonMessage::Begin(b), None) => open = Some((b, Vec::new())),
            (Wal2JsonMessage::Begin(b), Some(_)) => panic!("nested Begin {b:?}"),
            (Wal2JsonMessage::Commit(c), Some(_)) => {
                let (begin, body) = open.take().unwrap();
                if !body.is_empty() {
                    txns.push(Txn {
                        begin,
                        body,
                        commit: c,
                    });
                }
            }
            (Wal2JsonMessage::Commit(c), None) => panic!("Commit without Begin {c:?}"),
            (Wal2JsonMessage::Message(m), None) if !m.transactional => loose.push(m),
            (m, Some((_, body))) => body.push(m),
            (m, None) => panic!("change outside a transaction: {m:?}"),
        }
    }
    assert!(open.is_none(), "unterminated transaction");
    (txns, loose)
}

/// What the option set used for a capture implies.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// include-xids/timestamp/lsn/origin/pk/type-oids/not-null were on.
    pub full: bool,
    /// The peer_x transaction is present (no effective filter-origins).
    pub origin_txn: bool,
    /// add-tables public.full_ident was set.
    pub only_full_ident: bool,
    /// roident of peer_x on the capturing server.
    pub peer_x: u16,
}

fn summary(m: &Wal2JsonMessage) -> String {
    let rel = |c: &RowChange| format!("{}.{}", c.schema.as_deref().unwrap_or("?"), c.table);
    match m {
        Wal2JsonMessage::Insert(c) => format!("I {}", rel(c)),
        Wal2JsonMessage::Update(c) => format!("U {}", rel(c)),
        Wal2JsonMessage::Delete(c) => format!("D {}", rel(c)),
        Wal2JsonMessage::Truncate(t) => {
            format!("T {}.{}", t.schema.as_deref().unwrap_or("?"), t.table)
        }
        Wal2JsonMessage::Message(m) => format!("M {}", m.prefix),
        other => format!("{other:?}"),
    }
}

fn col<'a>(cols: &'a [Column], name: &str) -> &'a Column {
    cols.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name} in {cols:?}"))
}

fn values(cols: &[Column]) -> Vec<(String, Value)> {
    cols.iter()
        .map(|c| (c.name.clone(), c.value.clone()))
        .collect()
}

fn change(m: &Wal2JsonMessage) -> &RowChange {
    match m {
        Wal2JsonMessage::Insert(c) | Wal2JsonMessage::Update(c) | Wal2JsonMessage::Delete(c) => c,
        other => panic!("not a row change: {other:?}"),
    }
}

/// Checks a whole capture of the scenario.
pub fn check_scenario(text: &str, e: Expect) {
    let (txns, loose) = group(decode_all(text));

    // Shape: which changes, in which transactions, in order.
    let all: Vec<Vec<&str>> = vec![
        vec!["I public.t"],
        vec!["I public.t"],
        vec!["U public.t"],
        vec!["U public.t"],
        vec!["D public.t"],
        vec!["I public.full_ident"],
        vec!["U public.full_ident"],
        vec!["D public.full_ident"],
        vec!["I public.Quoted \"Name\"", "I public.Quoted \"Name\""],
        vec!["M pgmesh", "I public.full_ident"],
        vec!["T public.t", "T public.full_ident"],
        vec!["I public.full_ident"], // under origin peer_x
        vec!["I public.full_ident"],
    ];
    let expected: Vec<Vec<&str>> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| e.origin_txn || *i != 11)
        .map(|(_, t)| {
            t.iter()
                .copied()
                .filter(|s| !e.only_full_ident || s.contains("full_ident") || s.starts_with('M'))
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect();
    let got: Vec<Vec<String>> = txns
        .iter()
        .map(|t| t.body.iter().map(summary).collect())
        .collect();
    assert_eq!(got, expected, "transaction shapes");

    // Non-transactional message: metadata printed as null, lsn kept.
    assert_eq!(loose.len(), 1);
    let nt = &loose[0];
    assert_eq!(
        (nt.prefix.as_str(), nt.content.as_str()),
        ("pgmesh", "outside")
    );
    assert_eq!(
        (nt.meta.xid, &nt.meta.timestamp, nt.meta.origin),
        (None, &None, None)
    );
    assert_eq!(nt.meta.lsn.is_some(), e.full);

    for t in &txns {
        check_meta(t, e);
    }

    let find = |pat: &str| -> Vec<&Txn> {
        txns.iter()
            .filter(|t| t.body.iter().any(|m| summary(m) == pat))
            .collect()
    };

    // Transactional message.
    let msg_txn = find("M pgmesh")[0];
    let Wal2JsonMessage::Message(m) = &msg_txn.body[0] else {
        panic!()
    };
    assert!(m.transactional);
    assert_eq!(m.content, "in txn \"quoted\"");
    if e.full {
        assert_eq!(m.meta.xid, msg_txn.begin.xid);
    }

    // REPLICA IDENTITY FULL: whole old row as identity; no primary key.
    let upd = change(&find("U public.full_ident")[0].body[0]);
    assert_eq!(
        values(&upd.columns),
        vec![("a".into(), json!(1)), ("b".into(), json!("uno"))]
    );
    assert_eq!(
        values(&upd.identity),
        vec![("a".into(), json!(1)), ("b".into(), json!("one"))]
    );
    let del = change(&find("D public.full_ident")[0].body[0]);
    assert!(del.columns.is_empty());
    assert_eq!(
        values(&del.identity),
        vec![("a".into(), json!(1)), ("b".into(), json!("uno"))]
    );
    assert_eq!(upd.pk, if e.full { Some(vec![]) } else { None });

    // Origin: the peer_x transaction, and the local one after it.
    let inserts = find("I public.full_ident");
    let by_a = |a: i64| {
        inserts
            .iter()
            .find(|t| {
                t.body.iter().any(|m| {
                    matches!(m, Wal2JsonMessage::Insert(c) if col(&c.columns, "a").value == json!(a))
                })
            })
            .copied()
    };
    let local = by_a(4).expect("local insert after the origin transaction");
    match by_a(3) {
        Some(t) => {
            assert!(e.origin_txn, "peer_x transaction should have been filtered");
            if e.full {
                assert_eq!(t.begin.origin, Some(e.peer_x));
                assert_eq!(t.commit.origin, Some(e.peer_x));
                assert_eq!(change(&t.body[0]).meta.origin, Some(e.peer_x));
            }
        }
        None => assert!(!e.origin_txn, "peer_x transaction missing"),
    }
    if e.full {
        assert_eq!(local.begin.origin, Some(0));
    }

    // Truncate.
    let tr = find("T public.full_ident")[0];
    let Some(Wal2JsonMessage::Truncate(t)) = tr.body.last() else {
        panic!()
    };
    assert_eq!(t.schema.as_deref(), Some("public"));

    if !e.only_full_ident {
        check_table_t(&txns, e);
    }
}

fn check_meta(t: &Txn, e: Expect) {
    let (b, c) = (&t.begin, &t.commit);
    if !e.full {
        assert_eq!(b, &TxnBoundary::default());
        assert_eq!(c, &TxnBoundary::default());
        return;
    }
    assert!(b.xid.is_some());
    assert_eq!(b.xid, c.xid);
    assert_eq!(b.timestamp, c.timestamp);
    assert!(b.timestamp.as_ref().unwrap().unix_micros.is_some());
    assert_eq!(b.lsn, c.lsn, "B and C both carry the commit LSN");
    assert_eq!(b.next_lsn, c.next_lsn);
    assert!(c.next_lsn.unwrap() > c.lsn.unwrap());
    for m in &t.body {
        let meta = match m {
            Wal2JsonMessage::Insert(x)
            | Wal2JsonMessage::Update(x)
            | Wal2JsonMessage::Delete(x) => &x.meta,
            Wal2JsonMessage::Truncate(x) => &x.meta,
            Wal2JsonMessage::Message(x) => &x.meta,
            other => panic!("{other:?}"),
        };
        assert_eq!(meta.xid, b.xid);
        assert_eq!(meta.timestamp, b.timestamp);
        assert_eq!(meta.origin, b.origin);
        let lsn: Lsn = meta.lsn.unwrap();
        assert!(lsn < c.lsn.unwrap(), "change before its commit");
    }
}

fn check_table_t(txns: &[Txn], e: Expect) {
    let ch = |i: usize| change(&txns[i].body[0]);

    // 1. every kind of value
    let ins = ch(0);
    let v = |n: &str| col(&ins.columns, n).value.clone();
    let text = |n: &str| col(&ins.columns, n).pg_text().map(|s| s.into_owned());
    assert_eq!(v("id"), json!(1));
    assert_eq!(v("i2"), json!(-32768));
    assert_eq!(v("i8"), json!(9_223_372_036_854_775_807_i64));
    assert_eq!(
        text("n").as_deref(),
        Some("12345678901234567890.123456789"),
        "numeric keeps every digit"
    );
    assert_eq!(v("f4"), json!(1.5));
    assert_eq!(v("f8"), json!(0.1));
    assert_eq!(v("b"), json!(true));
    assert_eq!(v("tx"), json!("tab\there \"quote\" back\\slash ünï"));
    assert_eq!(
        v("j"),
        json!(r#"{"k": [1, 2.50, null]}"#),
        "json as its text"
    );
    assert_eq!(v("jb"), json!(r#"{"k": [1, 2.50, null]}"#));
    assert_eq!(v("arr"), json!("{1,NULL,3}"), "arrays as their text");
    assert_eq!(v("tarr"), json!(r#"{"a b","c,d",NULL}"#));
    // timestamptz values are printed in the decoding session's TimeZone, with its offset.
    let ts = v("ts");
    assert_eq!(
        Timestamp::new(ts.as_str().unwrap()).unix_micros,
        Timestamp::new("2020-01-02 03:04:05.678+00").unix_micros,
        "{ts}"
    );
    assert_eq!(v("by"), json!("deadbeef"), "bytea hex without \\x");
    assert_eq!(text("by").as_deref(), Some("\\xdeadbeef"));
    assert_eq!(v("u"), json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    assert_eq!(v("big"), json!("0123456789".repeat(1000)));
    assert_eq!(ins.columns.len(), 16);
    assert!(ins.identity.is_empty());
    if e.full {
        let id = col(&ins.columns, "id");
        assert_eq!(
            (id.type_name.as_deref(), id.type_oid, id.optional),
            (Some("integer"), Some(23), Some(false))
        );
        assert_eq!(col(&ins.columns, "n").type_oid, Some(1700));
        assert_eq!(col(&ins.columns, "tx").optional, Some(true));
        let pk = ins.pk.as_ref().unwrap();
        assert_eq!(pk.len(), 1);
        assert_eq!((pk[0].name.as_str(), pk[0].type_oid), ("id", Some(23)));
    } else {
        let id = col(&ins.columns, "id");
        assert_eq!(
            (id.type_name.as_deref(), id.type_oid, id.optional),
            (Some("integer"), None, None)
        );
        assert_eq!(ins.pk, None);
    }

    // 2. NULLs; NaN and ±Infinity are printed as null too
    let nulls = ch(1);
    for c in &nulls.columns {
        match c.name.as_str() {
            "id" => assert_eq!(c.value, json!(2)),
            "i2" => assert_eq!(c.value, json!(0)),
            _ => assert_eq!(c.value, Value::Null, "{}", c.name),
        }
    }

    // 3. update leaving the TOASTed column unchanged: it is simply absent
    let upd = ch(2);
    assert!(upd.columns.iter().all(|c| c.name != "big"));
    assert_eq!(upd.columns.len(), 15);
    assert_eq!(col(&upd.columns, "i2").value, json!(7));
    assert_eq!(col(&upd.columns, "tx").value, Value::Null);
    assert_eq!(values(&upd.identity), vec![("id".into(), json!(1))]);

    // 4. key-changing update: identity has the old key
    let key = ch(3);
    assert_eq!(col(&key.columns, "id").value, json!(20));
    assert_eq!(values(&key.identity), vec![("id".into(), json!(2))]);

    // 5. delete: key only
    let del = ch(4);
    assert!(del.columns.is_empty());
    assert_eq!(values(&del.identity), vec![("id".into(), json!(20))]);

    // 7. quoted identifiers
    let q = change(&txns[8].body[1]);
    assert_eq!(q.table, "Quoted \"Name\"");
    assert_eq!(col(&q.columns, "Col \"x\"").value, json!("y"));
}
