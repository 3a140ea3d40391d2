//! The golden scenario against a fresh PostgreSQL with wal2json, through the options pgmesh
//! itself builds ([`wal2json_options`]), so a wal2json or server update that changes the
//! output fails here. Skipped (with a message) when the server has no wal2json: only
//! Debian's PostgreSQL 15 ships it on these machines.

#[path = "golden/wal2json/check.rs"]
mod check;

use check::{check_scenario, Expect};
use pgmesh::protocol::wal2json::{sql_option_args, wal2json_options, Wal2JsonOptions};
use pgmesh::testkit::Cluster;

const SCENARIO: &str = include_str!("golden/wal2json/scenario.sql");

fn has_wal2json(c: &Cluster) -> bool {
    let libdir = c.bin_dir().parent().map(|p| p.join("lib"));
    let so = libdir.map(|d| d.join("wal2json.so"));
    so.is_some_and(|p| p.exists())
}

#[test]
fn scenario_decodes_from_a_live_server() {
    let c = match Cluster::start(15) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping: no PostgreSQL 15 cluster: {e}");
            return;
        }
    };
    if !has_wal2json(&c) {
        eprintln!("skipping: PostgreSQL {} here has no wal2json", c.major());
        return;
    }
    c.psql("SELECT pg_create_logical_replication_slot('w2j', 'wal2json')")
        .unwrap();
    // One session, exactly like the capture script's `psql -f`.
    c.write_file("scenario.sql", SCENARIO.as_bytes(), 0o644)
        .unwrap();
    let path = c.data_dir().join("scenario.sql");
    c.psql(&format!("\\i {}", path.display())).unwrap();
    let peer_x: u16 = c
        .psql("SELECT roident FROM pg_replication_origin WHERE roname = 'peer_x'")
        .unwrap()
        .parse()
        .unwrap();

    let peek = |opts: &Wal2JsonOptions| -> String {
        let args = sql_option_args(&wal2json_options(opts));
        c.psql(&format!(
            "SET timezone = 'UTC'; \
             SELECT data FROM pg_logical_slot_peek_changes('w2j', NULL, NULL, {args})"
        ))
        .unwrap()
    };
    let base = Expect {
        full: true,
        origin_txn: true,
        only_full_ident: false,
        peer_x,
    };

    check_scenario(&peek(&Wal2JsonOptions::default()), base);
    check_scenario(
        &peek(&Wal2JsonOptions {
            filter_origin_ids: vec![peer_x],
            ..Default::default()
        }),
        Expect {
            origin_txn: false,
            ..base
        },
    );
    check_scenario(
        &peek(&Wal2JsonOptions {
            add_tables: Some(vec![("public".into(), "full_ident".into())]),
            ..Default::default()
        }),
        Expect {
            only_full_ident: true,
            ..base
        },
    );
}
