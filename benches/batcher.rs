//! The batcher and the statement parameters of the apply path, without a database: how fast
//! row images collapse into a chunk (per-key net effect) and how fast a chunk turns into
//! the `text[]` parameters of its set-based statements.
//!
//! `cargo bench --bench batcher` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgmesh::apply::copy::copy_text;
use pgmesh::apply::sql;
use pgmesh::batch::{ChangeOp, Chunk};
use pgmesh::protocol::pgoutput::PgTimestamp;
use pgmesh::table::local::{LocalColumn, LocalTable, TableMap};
use pgmesh::table::row::{Key, Row, Val};
use pgmesh::Lsn;

/// `bench(id bigint PRIMARY KEY, k bigint, v text, node text, ts timestamptz)`, the
/// harness's table.
fn table() -> Arc<TableMap> {
    let col = |n: &str, t: &str| LocalColumn {
        name: n.into(),
        quoted: n.into(),
        type_sql: t.into(),
    };
    let local = LocalTable {
        name: "public.bench".into(),
        schema: "public".into(),
        relname: "bench".into(),
        columns: vec![
            col("id", "bigint"),
            col("k", "bigint"),
            col("v", "text"),
            col("node", "text"),
            col("ts", "timestamp with time zone"),
        ],
        pk: vec![0],
        uniques: vec![],
    };
    Arc::new(TableMap {
        local: Arc::new(local),
        remote_to_local: (0..5).map(Some).collect(),
        local_only: vec![],
    })
}

fn row(id: u64, k: u64) -> (Key, Row) {
    let id = Bytes::from(id.to_string());
    let vals = vec![
        Val::Text(id.clone()),
        Val::Text(Bytes::from(k.to_string())),
        Val::Text(Bytes::from(format!(
            "{:032x}",
            id.len() as u64 * 0x9E37_79B9 + k
        ))),
        Val::Text(Bytes::from_static(b"a")),
        Val::Text(Bytes::from_static(b"2026-11-25 23:59:59.123456+00")),
    ];
    (Key(vec![id]), Row(vals))
}

/// 5000 changes as a catch-up delivers them: inserts of new keys, then updates and
/// deletes that hit keys of the same chunk (they collapse).
fn changes() -> Vec<(ChangeOp, Key, Option<Row>)> {
    let mut out = Vec::with_capacity(5000);
    for i in 0..3500u64 {
        let (k, r) = row(i, 1);
        out.push((ChangeOp::Insert, k, Some(r)));
    }
    for i in 0..1000u64 {
        let (k, r) = row(i * 3, 2);
        out.push((ChangeOp::Update, k, Some(r)));
    }
    for i in 0..500u64 {
        let (k, _) = row(i * 7, 0);
        out.push((ChangeOp::Delete, k, None));
    }
    out
}

fn build(map: &Arc<TableMap>, input: &[(ChangeOp, Key, Option<Row>)]) -> Chunk {
    let mut chunk = Chunk::default();
    for (n, (op, k, r)) in input.iter().enumerate() {
        chunk.push(
            map,
            *op,
            k.clone(),
            r.clone(),
            PgTimestamp(n as i64),
            Lsn(n as u64),
        );
    }
    chunk
}

fn batcher(c: &mut Criterion) {
    let map = table();
    let input = changes();
    let mut g = c.benchmark_group("batcher");
    g.throughput(Throughput::Elements(input.len() as u64));
    g.bench_function("collapse_5000_changes", |b| {
        b.iter(|| black_box(build(&map, black_box(&input))))
    });
    let chunk = build(&map, &input);
    g.bench_function("insert_parameters_5000_changes", |b| {
        // What the insert statement sends: one text[] per column, built from the chunk.
        b.iter(|| {
            let mut cols: Vec<Vec<Option<&str>>> =
                (0..5).map(|_| Vec::with_capacity(4000)).collect();
            for tc in &chunk.tables {
                for p in tc.changes.values() {
                    let Some(r) = &p.row else { continue };
                    for (col, v) in cols.iter_mut().zip(&r.0) {
                        col.push(v.as_text().expect("text"));
                    }
                }
            }
            black_box(cols)
        })
    });
    g.bench_function("copy_text_5000_changes", |b| {
        // What the COPY of new rows sends instead (apply/copy.rs): the rows in COPY text.
        let all: Vec<usize> = (0..map.local.columns.len()).collect();
        b.iter(|| {
            let rows = chunk
                .tables
                .iter()
                .flat_map(|tc| tc.changes.values().filter_map(|p| p.row.as_ref()));
            black_box(copy_text(rows, &all))
        })
    });
    g.finish();

    let t = &map.local;
    let all: Vec<usize> = (0..t.columns.len()).collect();
    c.bench_function("statement_text/insert_rows", |b| {
        b.iter(|| black_box(sql::insert_rows(black_box(t), &all)))
    });
    c.bench_function("statement_text/select_rows", |b| {
        b.iter(|| black_box(sql::select_rows(black_box(t))))
    });
}

criterion_group!(benches, batcher);
criterion_main!(benches);
