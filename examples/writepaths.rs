//! How fast the apply backend writes new rows through each statement shape pgmesh could
//! use (issue 5, finding 3): `cargo run --release --example writepaths -- DSN [ROWS] [CHUNK]`.
//! Creates `writepaths_t` (the bench table's shape), inserts ROWS rows in CHUNK-row
//! chunks through each path, one transaction per chunk, and prints rows/s per path.

use std::time::Instant;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

const CREATE: &str = "DROP TABLE IF EXISTS writepaths_t; \
    CREATE TABLE writepaths_t(id bigint PRIMARY KEY, k bigint NOT NULL, v text, node text, ts timestamptz)";

fn rows(from: usize, n: usize) -> Vec<[String; 5]> {
    (from..from + n)
        .map(|i| {
            [
                i.to_string(),
                (i * 7).to_string(),
                format!("value {i} with some text"),
                "a".to_string(),
                "2026-11-26 04:00:00.123456+00".to_string(),
            ]
        })
        .collect()
}

async fn unnest(c: &Client, sql: &str, chunk: &[[String; 5]]) -> Result<(), tokio_postgres::Error> {
    let cols: Vec<Vec<&str>> = (0..5)
        .map(|j| chunk.iter().map(|r| r[j].as_str()).collect())
        .collect();
    let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    c.query(sql, &params).await.map(|_| ())
}

async fn copy(c: &Client, chunk: &[[String; 5]]) -> Result<(), tokio_postgres::Error> {
    let mut buf = String::with_capacity(chunk.len() * 64);
    for r in chunk {
        buf.push_str(&r.join("\t"));
        buf.push('\n');
    }
    let sink = c
        .copy_in("COPY writepaths_t (id, k, v, node, ts) FROM STDIN")
        .await?;
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(buf)).await?;
    sink.finish().await.map(|_| ())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dsn = args.get(1).ok_or("usage: writepaths DSN [ROWS] [CHUNK]")?;
    let total: usize = args.get(2).map_or(Ok(300_000), |s| s.parse())?;
    let chunk: usize = args.get(3).map_or(Ok(5000), |s| s.parse())?;
    let (c, conn) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute("SET synchronous_commit = off").await?;
    let casts = "u.v0::bigint, u.v1::bigint, u.v2::text, u.v3::text, u.v4::timestamptz";
    let from = "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(v0, v1, v2, v3, v4)";
    let returning = format!(
        "WITH i AS (INSERT INTO writepaths_t SELECT {casts} FROM {from} ON CONFLICT DO NOTHING RETURNING id) \
         SELECT u.ord FROM unnest($1::text[]) WITH ORDINALITY AS u(v0, ord) JOIN i ON i.id = u.v0::bigint"
    );
    let counted =
        format!("INSERT INTO writepaths_t SELECT {casts} FROM {from} ON CONFLICT DO NOTHING");
    let plain = format!("INSERT INTO writepaths_t SELECT {casts} FROM {from}");
    for path in [
        "returning",
        "on_conflict",
        "plain",
        "copy",
        "savepoint_copy",
    ] {
        c.batch_execute(CREATE).await?;
        let data = rows(0, total);
        let t0 = Instant::now();
        for part in data.chunks(chunk) {
            c.batch_execute("BEGIN").await?;
            match path {
                "returning" => unnest(&c, &returning, part).await?,
                "on_conflict" => unnest(&c, &counted, part).await?,
                "plain" => unnest(&c, &plain, part).await?,
                "copy" => copy(&c, part).await?,
                _ => {
                    c.batch_execute("SAVEPOINT s").await?;
                    copy(&c, part).await?;
                    c.batch_execute("RELEASE SAVEPOINT s").await?;
                }
            }
            c.batch_execute("COMMIT").await?;
        }
        let s = t0.elapsed().as_secs_f64();
        println!("{path:>15}: {:>9.0} rows/s ({s:.2} s)", total as f64 / s);
    }
    c.batch_execute("DROP TABLE writepaths_t").await?;
    Ok(())
}
