//! pgoutput decoder throughput on messages captured from PostgreSQL 18 (the golden
//! files): decode each message and walk every column of its row images, as the apply
//! path does. Reported in bytes/s and in messages/s.
//!
//! `cargo bench --bench decoder` (add `-- --quick` for a short run).

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgmesh::protocol::pgoutput::{decode_message, Column, DecodeContext, Message, Tuple};

/// A message with the context the stream put it in.
type Sample = (Bytes, DecodeContext);

/// Replays golden files through a stateful decoder to learn each message's context,
/// keeping the messages `keep` accepts.
fn load(scenarios: &[&str], keep: impl Fn(&Message) -> bool) -> Vec<Sample> {
    let mut out = Vec::new();
    for g in common::read_golden_files()
        .into_iter()
        .filter(|g| g.major == 18 && scenarios.contains(&g.scenario.as_str()))
    {
        let mut d = g.decoder();
        for m in &g.messages {
            let ctx = d.context();
            let msg = d.decode_ref(&m.data).expect("golden message decodes");
            if keep(&msg) {
                out.push((m.data.clone(), ctx));
            }
        }
    }
    out
}

fn walk(t: &Tuple) -> usize {
    t.iter_borrowed()
        .map(|c| match c {
            Column::Text(v) | Column::Binary(v) => v.len(),
            Column::Null | Column::UnchangedToast => 1,
        })
        .sum()
}

fn decode_all(samples: &[Sample]) -> usize {
    let mut acc = 0;
    for (buf, ctx) in samples {
        match decode_message(buf, *ctx) {
            Ok(Message::Insert(i)) => acc += walk(&i.new),
            Ok(Message::Update(u)) => {
                acc += walk(&u.new);
                if let Some(o) = &u.old {
                    acc += walk(o.tuple());
                }
            }
            Ok(Message::Delete(d)) => acc += walk(d.old.tuple()),
            Ok(_) => acc += 1,
            Err(e) => panic!("{e}"),
        }
    }
    acc
}

fn bench_group(c: &mut Criterion, name: &str, samples: &[Sample]) {
    let bytes: usize = samples.iter().map(|(b, _)| b.len()).sum();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("bytes", |b| {
        b.iter(|| black_box(decode_all(black_box(samples))))
    });
    g.throughput(Throughput::Elements(samples.len() as u64));
    g.bench_function("messages", |b| {
        b.iter(|| black_box(decode_all(black_box(samples))))
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let dml = |m: &Message| {
        matches!(
            m,
            Message::Begin(_)
                | Message::Commit(_)
                | Message::Insert(_)
                | Message::Update(_)
                | Message::Delete(_)
        )
    };
    // Transactions of text and binary rows, including one ~10 kB wide row.
    let mix = load(&["dml", "binary"], dml);
    // Many small rows (a bulk insert, streamed): the per-message overhead case.
    let small = load(&["stream"], dml);
    // Both together, weighted as a replication stream would be.
    let mut all = mix.clone();
    all.extend(small.iter().cloned());
    bench_group(c, "pgoutput_mix_wide_rows", &mix);
    bench_group(c, "pgoutput_small_rows", &small);
    bench_group(c, "pgoutput_all", &all);
}

criterion_group!(benches, bench);
criterion_main!(benches);
