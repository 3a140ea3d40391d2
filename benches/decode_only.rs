//! Decode-only drain of a real slot backlog: `pgmesh tail --output none` against
//! `pg_recvlogical` (which only writes the raw pgoutput bytes to /dev/null) on the same
//! backlog, each from its own slot created at the same point.
//!
//! `cargo bench --bench decode_only` (env: PGMESH_BENCH_PG=15|18, PGMESH_BENCH_TXNS,
//! PGMESH_BENCH_ROWS_PER_TXN). Prints one JSON line with the rates and the ratio.

use std::process::Command;
use std::time::Instant;

use pgmesh::testkit::Cluster;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let major = env_or("PGMESH_BENCH_PG", 15) as u32;
    let txns = env_or("PGMESH_BENCH_TXNS", 100_000);
    let rows_per_txn = env_or("PGMESH_BENCH_ROWS_PER_TXN", 5);
    let runs = env_or("PGMESH_BENCH_RUNS", 3);

    let c = Cluster::builder(major)
        .setting("max_wal_size", "'4GB'")
        .setting("synchronous_commit", "off")
        .start()
        .expect("start cluster");
    c.psql(
        "CREATE TABLE bench(id bigint primary key, k int, name text, amount numeric, at timestamptz);
         CREATE PUBLICATION bench_pub FOR TABLE bench;",
    )
    .expect("schema");
    let mut slots = Vec::new();
    for r in 0..runs {
        for tool in ["recv", "pgmesh"] {
            let slot = format!("{tool}_{r}");
            c.psql(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
            ))
            .expect("slot");
            slots.push(slot);
        }
    }
    let start_lsn = c.psql("SELECT pg_current_wal_lsn()").unwrap();
    // Many small transactions, like a busy OLTP primary: one pgbench-like script.
    let script = std::env::temp_dir().join(format!("pgmesh-bench-{}.sql", std::process::id()));
    let mut sql = String::from("BEGIN;\n");
    for _ in 0..rows_per_txn {
        sql.push_str(
            "INSERT INTO bench VALUES (nextval('s'), (random()*1000)::int, md5(random()::text), random()*1000, now());\n",
        );
    }
    sql.push_str("COMMIT;\n");
    std::fs::write(&script, sql).unwrap();
    c.psql("CREATE SEQUENCE s").unwrap();
    let clients = 4;
    let status = Command::new(c.bin_dir().join("pgbench"))
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &c.port().to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-t",
            &(txns / clients).to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg("postgres")
        .output()
        .expect("pgbench");
    assert!(
        status.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let end_lsn = c.psql("SELECT pg_current_wal_lsn()").unwrap();
    let wal_bytes: u64 = c
        .psql(&format!(
            "SELECT pg_wal_lsn_diff('{end_lsn}', '{start_lsn}')::bigint"
        ))
        .unwrap()
        .parse()
        .unwrap();

    let mut recv_best = f64::MAX;
    let mut pgmesh_best = f64::MAX;
    for r in 0..runs {
        let t = Instant::now();
        let out = Command::new(c.bin_dir().join("pg_recvlogical"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &c.port().to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "--slot", &format!("recv_{r}"), "--start"])
            .args(["--endpos", &end_lsn, "-f", "/dev/null", "--no-loop"])
            .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"])
            .output()
            .expect("pg_recvlogical");
        assert!(
            out.status.success(),
            "pg_recvlogical: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        recv_best = recv_best.min(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .args(["tail", "--dsn", &c.dsn(), "--slot", &format!("pgmesh_{r}")])
            .args([
                "--publication",
                "bench_pub",
                "--output",
                "none",
                "--proto-version",
                "1",
            ])
            .args(["--endpos", &end_lsn])
            .output()
            .expect("pgmesh tail");
        assert!(
            out.status.success(),
            "pgmesh tail: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pgmesh_best = pgmesh_best.min(t.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_file(&script);
    println!(
        "{}",
        serde_json::json!({
            "pg": major,
            "txns": txns,
            "rows": txns * rows_per_txn,
            "wal_mb": wal_bytes as f64 / 1e6,
            "pg_recvlogical_s": recv_best,
            "pgmesh_decode_only_s": pgmesh_best,
            "pg_recvlogical_txn_per_s": txns as f64 / recv_best,
            "pgmesh_txn_per_s": txns as f64 / pgmesh_best,
            "ratio_pgmesh_over_pg_recvlogical": recv_best / pgmesh_best,
        })
    );
}
