//! The pgoutput decoder against real servers: every scenario of `common` runs on a
//! throwaway cluster of each version under test (`PGMESH_TEST_PG`), every message that
//! pgoutput produces decodes, and together they cover every message kind.
//!
//! The ignored test `regenerate_golden_files` rewrites `tests/golden/pgoutput/pgNN/`
//! from the same scenarios.

mod common;

use std::collections::BTreeSet;

use pgmesh::protocol::pgoutput::{Message, MessageKind};
use pgmesh::testkit::versions_under_test;

use common::{capture, start_cluster, write_golden, SCENARIOS};

#[test]
fn decodes_everything_real_servers_send() {
    for major in versions_under_test() {
        let c = start_cluster(major);
        let mut seen = BTreeSet::new();
        for s in SCENARIOS.iter().filter(|s| major >= s.min_major) {
            let msgs = capture(&c, s);
            assert!(!msgs.is_empty(), "PG{major} {}: no messages", s.name);
            let mut decoder = pgmesh::protocol::pgoutput::Decoder::new(s.proto_version)
                .with_parallel_streaming(s.parallel);
            for (i, m) in msgs.iter().enumerate() {
                let msg = decoder.decode_ref(&m.data).unwrap_or_else(|e| {
                    panic!(
                        "PG{major} {} message {i} at {}: {e}\n{}",
                        s.name,
                        m.lsn,
                        common::hex_encode(&m.data)
                    )
                });
                if let Message::StreamAbort(a) = &msg {
                    assert_eq!(a.abort_info.is_some(), s.parallel, "PG{major} {}", s.name);
                }
                seen.insert(msg.kind());
            }
            assert!(
                !decoder.in_stream(),
                "PG{major} {}: stream left open",
                s.name
            );
        }
        let missing: Vec<_> = MessageKind::ALL
            .iter()
            .filter(|k| !seen.contains(k))
            .collect();
        assert!(missing.is_empty(), "PG{major}: never saw {missing:?}");
    }
}

/// Rewrites the golden files from live servers of every version under test.
#[test]
#[ignore = "rewrites tests/golden/pgoutput; run on purpose"]
fn regenerate_golden_files() {
    for major in versions_under_test() {
        let c = start_cluster(major);
        let version = c.psql("SHOW server_version").expect("server_version");
        for s in SCENARIOS.iter().filter(|s| major >= s.min_major) {
            write_golden(major, &version, s, &capture(&c, s));
        }
    }
}
