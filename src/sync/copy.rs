//! Moving one table's rows from a source snapshot into a target, in chunks.
//!
//! Rows travel as COPY text (the same type on both sides parses what the other printed:
//! both sessions use pgmesh's canonical text settings). Each chunk is one target
//! transaction: COPY into a temporary table, lock the table against writes, insert the
//! keys the target holds neither as a row nor as a tombstone, commit. The lock is held for
//! one chunk's insert only; it makes the tombstone check exact against the sidecar
//! applying deletes at the same time.

use super::error::query_err;
use super::plan::{CopyJob, CopyMode};
use super::progress::Progress;
use super::snapshot::PinnedSnapshot;
use super::SyncError;
use crate::config::names;
use crate::config::NodeConfig;
use crate::sqlquote;
use crate::Lsn;
use bytes::{Bytes, BytesMut};
use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::Client;

/// Rows and bytes per target transaction.
const CHUNK_ROWS: usize = 20_000;
const CHUNK_BYTES: usize = 8 << 20;

/// Commit time of every copied row: the earliest a commit can carry (0 means "now" to
/// PostgreSQL). Any real write of the same row, streamed or local, is newer, so it wins
/// over the copy whichever arrives first.
pub const COPY_COMMIT_TS: &str = "2000-01-01 00:00:00.000001+00";

/// What a copy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyStats {
    /// Rows inserted into the target.
    pub copied: u64,
    /// Rows the target already held (by key) or had deleted meanwhile: left as they are.
    pub kept: u64,
    pub bytes: u64,
}

/// The source side: one REPEATABLE READ transaction under the pinned snapshot.
pub struct SourceSession {
    client: Client,
    pub node: String,
}

impl SourceSession {
    pub async fn open(
        node: &NodeConfig,
        snap: &PinnedSnapshot,
    ) -> Result<SourceSession, SyncError> {
        let client = connect(node).await?;
        let q = |what| query_err(&node.name, what);
        client
            .batch_execute(&format!(
                "{}BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {};",
                canonical_settings(),
                sqlquote::literal(&snap.name)
            ))
            .await
            .map_err(q("importing the slot's snapshot"))?;
        Ok(SourceSession {
            client,
            node: node.name.clone(),
        })
    }

    /// The planner's row estimate of `table`, for the progress line (0 when unknown).
    pub async fn estimated_rows(&self, table: &str) -> Result<u64, SyncError> {
        let n: i64 = self
            .client
            .query_one(
                "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass",
                &[&table],
            )
            .await
            .map_err(query_err(&self.node, "estimating the table's rows"))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Ends the snapshot's transaction.
    pub async fn finish(self) -> Result<(), SyncError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(query_err(&self.node, "ending the snapshot transaction"))
    }
}

/// The target side: writes as the apply session does (replica role: no user or pgmesh
/// triggers), under the replication origin `pgmesh__copy_<source>` so its rows are never
/// streamed back.
pub struct TargetSession {
    client: Client,
    pub node: String,
}

impl TargetSession {
    pub async fn open(node: &NodeConfig) -> Result<TargetSession, SyncError> {
        let client = connect(node).await?;
        client
            .batch_execute(&format!(
                "{}SET session_replication_role = replica;",
                canonical_settings()
            ))
            .await
            .map_err(query_err(&node.name, "preparing the copy session"))?;
        Ok(TargetSession {
            client,
            node: node.name.clone(),
        })
    }

    async fn use_origin(&self, source: &str) -> Result<(), SyncError> {
        let origin = names::copy_origin_name(source);
        self.client
            .batch_execute(&format!(
                "SELECT pg_replication_origin_create({o}) \
                  WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = {o}); \
                 SELECT pg_replication_origin_session_reset() \
                  WHERE pg_replication_origin_session_is_setup(); \
                 SELECT pg_replication_origin_session_setup({o});",
                o = sqlquote::literal(&origin)
            ))
            .await
            .map_err(query_err(
                &self.node,
                "setting up the copy's replication origin",
            ))
    }
}

/// Records that a copy is about to start (before the table joins the publication, so a
/// crash from here on is resumed by the next setup) and drops tombstones older than the
/// copy: they stem from before this table replicated and would hide the source's rows.
pub async fn announce(client: &Client, node: &str, job: &CopyJob) -> Result<(), SyncError> {
    let q = |what| query_err(node, what);
    client
        .execute(
            "INSERT INTO pgmesh.table_sync (table_name, source_node, state, mode)
             VALUES ($1, $2, 'copying', $3)
             ON CONFLICT (table_name) DO UPDATE SET source_node = EXCLUDED.source_node,
               state = 'copying', mode = EXCLUDED.mode, rows_copied = 0, rows_kept = 0,
               started_at = now(), finished_at = NULL",
            &[&job.table, &job.source, &job.mode.as_str()],
        )
        .await
        .map_err(q("recording the copy in pgmesh.table_sync"))?;
    client
        .execute(
            "DELETE FROM pgmesh.tombstones WHERE table_name = $1",
            &[&job.table],
        )
        .await
        .map_err(q("removing stale tombstones"))?;
    Ok(())
}

async fn connect(node: &NodeConfig) -> Result<Client, SyncError> {
    let cfg = node.sql_config().map_err(SyncError::Config)?;
    let (client, _task) = crate::sqlconn::connect_sql(&cfg).await?;
    Ok(client)
}

fn canonical_settings() -> String {
    names::CANONICAL_TEXT_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = {};", sqlquote::literal(v)))
        .collect()
}

/// The columns a copy moves and the key that identifies a row on the target.
struct Shape {
    /// Quoted, comma-separated: the source's stored (not generated) columns.
    columns: String,
    /// Quoted primary-key columns on the target; empty for a key-less table.
    key: Vec<String>,
}

const COLUMNS_SQL: &str = "SELECT a.attname::text FROM pg_attribute a \
    WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
      AND a.attgenerated = '' ORDER BY a.attnum";
const KEY_SQL: &str = "SELECT a.attname::text \
    FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a \
    WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
      AND a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord";

async fn shape(src: &SourceSession, dst: &TargetSession, table: &str) -> Result<Shape, SyncError> {
    let names_of =
        |rows: Vec<tokio_postgres::Row>| -> Vec<String> { rows.iter().map(|r| r.get(0)).collect() };
    let src_cols = names_of(
        src.client
            .query(COLUMNS_SQL, &[&table])
            .await
            .map_err(query_err(&src.node, "reading the table's columns"))?,
    );
    let dst_cols = names_of(
        dst.client
            .query(COLUMNS_SQL, &[&table])
            .await
            .map_err(query_err(&dst.node, "reading the table's columns"))?,
    );
    let missing: Vec<&String> = src_cols.iter().filter(|c| !dst_cols.contains(c)).collect();
    if !missing.is_empty() {
        return Err(SyncError::Refused {
            table: table.to_string(),
            message: format!(
                "columns {missing:?} exist on {} but not on {}; make the table's columns the same on every node and run setup again",
                src.node, dst.node
            ),
        });
    }
    let key = names_of(
        dst.client
            .query(KEY_SQL, &[&table])
            .await
            .map_err(query_err(&dst.node, "reading the table's primary key"))?,
    );
    Ok(Shape {
        columns: src_cols
            .iter()
            .map(|c| sqlquote::ident(c))
            .collect::<Vec<_>>()
            .join(", "),
        key: key.iter().map(|c| sqlquote::ident(c)).collect(),
    })
}

/// Copies `job.table` from `src` (under its snapshot) into `dst`. `at` is the snapshot's
/// position, recorded as the copy transactions' origin LSN.
pub async fn copy_table(
    src: &SourceSession,
    dst: &TargetSession,
    job: &CopyJob,
    at: Lsn,
    progress: &mut Progress,
) -> Result<CopyStats, SyncError> {
    let table = job.table.as_str();
    let shape = shape(src, dst, table).await?;
    if shape.key.is_empty() && (job.mode == CopyMode::Merge || job.resume) {
        return Err(SyncError::Refused {
            table: table.to_string(),
            message: format!(
                "has no primary key, so rows the target already holds cannot be told apart from the source's; empty it on {} (e.g. TRUNCATE) and run setup again",
                dst.node
            ),
        });
    }
    dst.use_origin(&job.source).await?;
    let q = |what| query_err(&dst.node, what);
    if job.mode == CopyMode::Replace && !job.resume {
        dst.client
            .batch_execute(&format!(
                "BEGIN; {xact} DELETE FROM ONLY {table}; COMMIT;",
                xact = xact_setup(at)
            ))
            .await
            .map_err(q("deleting the rows the copy replaces"))?;
    }
    dst.client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS pg_temp.pgmesh_copy; \
             CREATE TEMP TABLE pgmesh_copy ON COMMIT DELETE ROWS AS SELECT {} FROM ONLY {table} WITH NO DATA;",
            shape.columns
        ))
        .await
        .map_err(q("creating the copy's staging table"))?;
    let insert = insert_sql(table, &shape);
    let out = src
        .client
        .copy_out(&format!(
            "COPY (SELECT {} FROM ONLY {table}) TO STDOUT",
            shape.columns
        ))
        .await
        .map_err(query_err(&src.node, "starting COPY TO"))?;
    pin_mut!(out);
    let mut stats = CopyStats::default();
    let mut buf = BytesMut::new();
    let mut rows_in_buf = 0usize;
    let mut done = false;
    while !done {
        match out.next().await {
            Some(data) => {
                let data = data.map_err(query_err(&src.node, "reading the table's rows"))?;
                rows_in_buf += bytecount(&data);
                buf.extend_from_slice(&data);
                if rows_in_buf < CHUNK_ROWS && buf.len() < CHUNK_BYTES {
                    continue;
                }
            }
            None => done = true,
        }
        // Only whole lines go: a chunk of COPY output may end inside a row.
        let cut = match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if done && buf.is_empty() => break,
            None if done => {
                return Err(SyncError::Protocol {
                    node: src.node.clone(),
                    message: format!("COPY output of {table} ended inside a row"),
                })
            }
            None => continue,
        };
        let chunk = buf.split_to(cut).freeze();
        rows_in_buf = bytecount(&buf);
        let (rows, inserted) = write_chunk(dst, table, &insert, chunk.clone(), at).await?;
        stats.copied += inserted;
        stats.kept += rows.saturating_sub(inserted);
        stats.bytes += chunk.len() as u64;
        progress.advance(rows, chunk.len() as u64);
    }
    dst.client
        .execute(
            "UPDATE pgmesh.table_sync SET state = 'done', finished_at = now(),
                    rows_copied = rows_copied + $2, rows_kept = rows_kept + $3
              WHERE table_name = $1",
            &[&job.table, &(stats.copied as i64), &(stats.kept as i64)],
        )
        .await
        .map_err(q("recording the finished copy"))?;
    dst.client
        .batch_execute("DROP TABLE IF EXISTS pg_temp.pgmesh_copy; SELECT pg_replication_origin_session_reset();")
        .await
        .map_err(q("dropping the copy's staging table"))?;
    Ok(stats)
}

fn bytecount(data: &[u8]) -> usize {
    data.iter().filter(|b| **b == b'\n').count()
}

/// Gives the transaction the copy's origin position and commit time (see
/// [`COPY_COMMIT_TS`]).
fn xact_setup(at: Lsn) -> String {
    format!("SELECT pg_replication_origin_xact_setup('{at}', '{COPY_COMMIT_TS}');")
}

/// Inserts the staged rows whose key the target holds neither as a row (`ON CONFLICT DO
/// NOTHING`) nor as a row or table tombstone (a delete or TRUNCATE applied after the copy
/// began, which a stale copy must not undo). Param: $1 the table's name.
fn insert_sql(table: &str, shape: &Shape) -> String {
    let cols = &shape.columns;
    if shape.key.is_empty() {
        return format!("INSERT INTO {table} ({cols}) SELECT {cols} FROM pgmesh_copy");
    }
    let key = shape
        .key
        .iter()
        .map(|k| format!("s.{k}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM pgmesh_copy s \
         WHERE NOT EXISTS (SELECT 1 FROM pgmesh.tombstones tb WHERE tb.table_name = $1 AND tb.key = ARRAY[{key}]) \
           AND NOT EXISTS (SELECT 1 FROM pgmesh.tombstones tb WHERE tb.table_name = $1 AND tb.key = '{{}}') \
         ON CONFLICT DO NOTHING"
    )
}

/// One chunk in one transaction; returns (rows staged, rows inserted).
async fn write_chunk(
    dst: &TargetSession,
    table: &str,
    insert: &str,
    chunk: Bytes,
    at: Lsn,
) -> Result<(u64, u64), SyncError> {
    let node = dst.node.clone();
    let q = |what| query_err(&node, what);
    let c = &dst.client;
    c.batch_execute(&format!("BEGIN; {}", xact_setup(at)))
        .await
        .map_err(q("starting a copy transaction"))?;
    let sink = c
        .copy_in("COPY pgmesh_copy FROM STDIN")
        .await
        .map_err(q("starting COPY FROM"))?;
    pin_mut!(sink);
    sink.send(chunk).await.map_err(q("sending rows"))?;
    let staged = sink.finish().await.map_err(q("staging rows"))?;
    // EXCLUSIVE, not just against writers: the sidecar decides a streamed delete of a row
    // that is not here yet after reading it `FOR UPDATE` (ROW SHARE), then writes its
    // tombstone. Waiting for that transaction makes its tombstone visible to the insert
    // below; a sidecar transaction starting later sees the copied row and deletes it.
    c.batch_execute(&format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))
        .await
        .map_err(q("locking the table for the copy"))?;
    // Statements of a key-less table take no parameter.
    let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = if insert.contains("$1") {
        &[&table]
    } else {
        &[]
    };
    let inserted = c
        .execute(insert, params)
        .await
        .map_err(q("inserting copied rows"))?;
    c.batch_execute("COMMIT")
        .await
        .map_err(q("committing copied rows"))?;
    Ok((staged, inserted))
}
