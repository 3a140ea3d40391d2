//! Which plan `plan_cache_mode = auto` runs a large chunk's statements on when each was
//! first planned generically while its table was empty (a small chunk first).
//! `cargo run --release --example autoplan -- DSN [KEYS] [MODE]` (MODE: the
//! `plan_cache_mode` of the large executions, `auto` by default; AUTOPLAN_SHOW=1 prints
//! the plans). The rows are written by this session (origin 0), which the statements
//! are told is the peer.

use std::time::Instant;

use pgmesh::apply::{sql, uncontested_sql as u};
use pgmesh::table::local::LocalTable;
use tokio_postgres::types::Type;
use tokio_postgres::NoTls;

const SETUP: &str = "DROP TABLE IF EXISTS autoplan_t;
CREATE TABLE autoplan_t(id bigint PRIMARY KEY, k bigint NOT NULL, v text, node text, ts timestamptz);
CREATE SCHEMA IF NOT EXISTS pgmesh;
CREATE TABLE IF NOT EXISTS pgmesh.tombstones(table_name text, key text[], deleted_at timestamptz,
  decided_ts timestamptz, decided_node text, PRIMARY KEY (table_name, key));
";

fn arr(keys: std::ops::Range<usize>) -> String {
    let v: Vec<String> = keys.map(|k| k.to_string()).collect();
    format!("'{{{}}}'", v.join(","))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dsn = args.get(1).ok_or("usage: autoplan DSN [KEYS]")?;
    let keys: usize = args.get(2).map_or(Ok(5000), |s| s.parse())?;
    let (c, conn) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute(SETUP).await?;
    if let Ok(extra) = std::env::var("AUTOPLAN_SET") {
        c.batch_execute(&extra).await?;
    }
    let t = LocalTable::load(&c, "public", "autoplan_t").await?;
    let statements = [
        ("select_rows", sql::select_rows(&t)),
        ("select_tombstones", sql::select_tombstones(&t)),
        ("update_peers_rows", u::update_peers_rows(&t, &[1, 2])),
        (
            "update_all_peers_rows",
            u::update_all_peers_rows(&t, &[1, 2]),
        ),
        ("delete_peers_rows", u::delete_peers_rows(&t)),
        ("no_tombstones", u::no_tombstones(&t)),
        ("insert_new_rows", sql::insert_new_rows(&t, &[0, 1, 2])),
    ];
    c.batch_execute("SET plan_cache_mode = force_generic_plan")
        .await?;
    let mut small = Vec::new();
    let mut large = Vec::new();
    for (name, text) in &statements {
        let types = c.prepare(text).await?.params().to_vec();
        let args = |n: usize, first: usize| -> Vec<String> {
            types
                .iter()
                .map(|ty| match *ty {
                    Type::TEXT_ARRAY => arr(first..first + n),
                    Type::TEXT => "'public.autoplan_t'".into(),
                    Type::OID_ARRAY => "'{0}'".into(),
                    _ => n.to_string(),
                })
                .collect()
        };
        c.batch_execute(&format!("PREPARE {name} AS {text}"))
            .await?;
        small.push((name, format!("EXECUTE {name}({})", args(2, 1).join(", "))));
        large.push((
            name,
            format!("EXECUTE {name}({})", args(keys, 1).join(", ")),
        ));
    }
    for (name, exec) in &small {
        // The guarded ones fail on an empty table (nothing to update): planned all the same.
        if c.batch_execute(&format!("BEGIN; {exec}; ROLLBACK"))
            .await
            .is_err()
        {
            c.batch_execute("ROLLBACK").await?;
            println!("{name}: small execution failed (as expected for a guarded statement)");
        }
    }
    c.batch_execute("INSERT INTO autoplan_t SELECT g, g, md5(g::text), 'a', now() FROM generate_series(1, 100000) g")
        .await?;
    let mode = args.get(3).map_or("auto", String::as_str);
    c.batch_execute(&format!("SET plan_cache_mode = {mode}"))
        .await?;
    for (name, exec) in &large {
        let mut times = Vec::new();
        for _ in 0..8 {
            let t0 = Instant::now();
            let r = c.batch_execute(&format!("BEGIN; {exec}; ROLLBACK")).await;
            if let Err(e) = r {
                let _ = c.batch_execute("ROLLBACK").await;
                times.push(format!(
                    "err {}",
                    e.as_db_error()
                        .map_or(e.to_string(), |d| d.code().code().to_string())
                ));
                continue;
            }
            times.push(format!("{:.1}", t0.elapsed().as_secs_f64() * 1000.0));
        }
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN {exec}"), &[])
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        println!("{name}: ms per execution {}", times.join(" "));
        if std::env::var_os("AUTOPLAN_SHOW").is_some() {
            println!("  {}", plan.join("\n  "));
        }
    }
    Ok(())
}
