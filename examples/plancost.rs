//! What planning costs the apply statements of a small (steady-state) chunk: each
//! statement of `apply/sql.rs` executed with KEYS keys under `force_custom_plan` (what
//! pgmesh uses for chunks of up to 500 rows) and `force_generic_plan`.
//! `cargo run --release --example plancost -- DSN [KEYS] [ROUNDS]`; creates
//! `plancost_t` (the bench table's shape, 200k rows) and the `pgmesh` tombstone table
//! if missing.

use std::time::Instant;

use pgmesh::apply::sql;
use pgmesh::table::local::LocalTable;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

const SETUP: &str = "DROP TABLE IF EXISTS plancost_t;
CREATE TABLE plancost_t(id bigint PRIMARY KEY, k bigint NOT NULL, v text, node text, ts timestamptz);
INSERT INTO plancost_t SELECT g, g, md5(g::text), 'a', now() FROM generate_series(1, 200000) g;
CREATE SCHEMA IF NOT EXISTS pgmesh;
CREATE TABLE IF NOT EXISTS pgmesh.tombstones(table_name text, key text[], deleted_at timestamptz,
  decided_ts timestamptz, decided_node text, PRIMARY KEY (table_name, key));
";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dsn = args.get(1).ok_or("usage: plancost DSN [KEYS] [ROUNDS]")?;
    let keys: usize = args.get(2).map_or(Ok(40), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(300), |s| s.parse())?;
    let (c, conn) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute(SETUP).await?;
    c.batch_execute("VACUUM ANALYZE plancost_t").await?;
    let t = LocalTable::load(&c, "public", "plancost_t").await?;
    let all: Vec<usize> = (0..t.columns.len()).collect();
    let statements = [
        ("select_rows", sql::select_rows(&t), 1),
        ("select_tombstones", sql::select_tombstones(&t), 1),
        ("update_rows", sql::update_rows(&t, &[1, 2]), 3),
        ("delete_rows", sql::delete_rows(&t), 1),
        ("insert_rows", sql::insert_rows(&t, &all[..4]), 4),
    ];
    for mode in ["force_custom_plan", "force_generic_plan"] {
        c.batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .await?;
        for (name, text, arrays) in &statements {
            let stmt = c.prepare(text).await?;
            let mut total = std::time::Duration::ZERO;
            for r in 0..rounds {
                // Keys spread over the table; inserts get keys past its end.
                let base = if *name == "insert_rows" { 1_000_000 } else { 0 };
                let ks: Vec<String> = (0..keys)
                    .map(|i| (base + (r * keys + i) * 37 % 200_000 + 1).to_string())
                    .collect();
                let cols: Vec<Vec<String>> = (0..*arrays).map(|_| ks.clone()).collect();
                let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
                if *name == "select_tombstones" {
                    params.push(&t.name);
                }
                params.extend(cols.iter().map(|c| c as &(dyn ToSql + Sync)));
                c.batch_execute("BEGIN").await?;
                let t0 = Instant::now();
                c.query(&stmt, &params).await?;
                total += t0.elapsed();
                c.batch_execute("ROLLBACK").await?;
            }
            println!(
                "{mode:>18} {name:>18}: {:>7.0} µs per execution ({keys} keys)",
                total.as_secs_f64() * 1e6 / rounds as f64
            );
        }
    }
    c.batch_execute("DROP TABLE plancost_t").await?;
    Ok(())
}
