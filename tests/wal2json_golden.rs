//! Decodes wal2json format-version 2 lines captured from a real PostgreSQL 15.18 with
//! wal2json 2.5 (scripts/capture-wal2json-golden.sh, scenario in
//! tests/golden/wal2json/scenario.sql) and asserts concrete values, so the decoder is held to
//! what the plugin really prints rather than to our reading of its source.

#[path = "golden/wal2json/check.rs"]
mod check;

use check::{check_scenario, decode_all, group, Expect};
use pgmesh::protocol::wal2json::Wal2JsonMessage;

const FULL: &str = include_str!("golden/wal2json/pg15/full.jsonl");
const MINIMAL: &str = include_str!("golden/wal2json/pg15/minimal.jsonl");
const KOLKATA: &str = include_str!("golden/wal2json/pg15/full-kolkata.jsonl");
const FILTERED: &str = include_str!("golden/wal2json/pg15/filter-origins.jsonl");
const FILTERED_BY_NAME: &str = include_str!("golden/wal2json/pg15/filter-origins-by-name.jsonl");
const ADD_TABLES: &str = include_str!("golden/wal2json/pg15/add-tables.jsonl");
const CAPTURED_FROM: &str = include_str!("golden/wal2json/pg15/CAPTURED_FROM.txt");

/// roident of `peer_x` on the capturing server, recorded by the script.
fn peer_x() -> u16 {
    CAPTURED_FROM
        .split_whitespace()
        .find_map(|w| w.strip_prefix("peer_x_roident="))
        .expect("CAPTURED_FROM.txt names peer_x's roident")
        .parse()
        .unwrap()
}

fn expect() -> Expect {
    Expect {
        full: true,
        origin_txn: true,
        only_full_ident: false,
        peer_x: peer_x(),
    }
}

#[test]
fn every_line_of_every_capture_decodes() {
    for (name, text) in [
        ("full", FULL),
        ("minimal", MINIMAL),
        ("full-kolkata", KOLKATA),
        ("filter-origins", FILTERED),
        ("filter-origins-by-name", FILTERED_BY_NAME),
        ("add-tables", ADD_TABLES),
    ] {
        let n = decode_all(text).len();
        assert_eq!(n, text.lines().count(), "{name}");
        assert!(n > 40, "{name}: {n} lines");
    }
}

#[test]
fn full_options() {
    check_scenario(FULL, expect());
}

#[test]
fn full_options_concrete_metadata() {
    let msgs = decode_all(FULL);
    let Wal2JsonMessage::Begin(b) = &msgs[0] else {
        panic!("{:?}", msgs[0])
    };
    assert_eq!(b.xid, Some(724));
    assert_eq!(b.lsn, Some("0/1527260".parse().unwrap()));
    assert_eq!(b.next_lsn, Some("0/1527998".parse().unwrap()));
    let ts = b.timestamp.as_ref().unwrap();
    assert!(ts.text.ends_with("+00"), "{}", ts.text);
    assert!(ts.unix_micros.unwrap() > 1_700_000_000_000_000);
}

#[test]
fn default_options_print_no_metadata() {
    check_scenario(
        MINIMAL,
        Expect {
            full: false,
            ..expect()
        },
    );
}

#[test]
fn timestamps_follow_the_session_time_zone_but_mean_the_same_instant() {
    check_scenario(KOLKATA, expect());
    let (utc, _) = group(decode_all(FULL));
    let (ist, _) = group(decode_all(KOLKATA));
    assert_eq!(utc.len(), ist.len());
    for (u, i) in utc.iter().zip(&ist) {
        let (u, i) = (
            u.begin.timestamp.as_ref().unwrap(),
            i.begin.timestamp.as_ref().unwrap(),
        );
        assert!(i.text.ends_with("+05:30"), "{}", i.text);
        assert_ne!(u.text, i.text);
        assert_eq!(u.unix_micros, i.unix_micros);
    }
}

#[test]
fn filter_origins_with_the_numeric_id_drops_the_peer_transaction() {
    check_scenario(
        FILTERED,
        Expect {
            origin_txn: false,
            ..expect()
        },
    );
}

#[test]
fn filter_origins_with_a_name_filters_nothing() {
    // wal2json atoi()s each entry: "peer_x" becomes origin 0, which is never filtered.
    check_scenario(FILTERED_BY_NAME, expect());
    assert_eq!(FILTERED_BY_NAME, FULL);
}

#[test]
fn add_tables_limits_changes_and_truncates_but_not_messages() {
    check_scenario(
        ADD_TABLES,
        Expect {
            only_full_ident: true,
            ..expect()
        },
    );
}
