//! The apply connection to the local primary: one per peer stream, bound to the peer's
//! replication origin, with `session_replication_role = replica` (no user triggers, no
//! FK checks, and the tombstone trigger stays quiet: remote deletes record their own
//! tombstones) and `synchronous_commit = off` (safe: the peer is only told what is
//! durably applied, through the origin's flushed progress).

use std::collections::HashMap;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::db::{Db, Statements};
use super::error::ApplyError;
use super::kill::{Kill, KILL_PREFIX};
use super::ledger::ConflictRecord;
use super::one_message::{self, Prepared};
use super::origins::Origins;
use super::peer_read::PeerReader;
use super::plan::Sides;
use super::resolve::Resolver;
use super::sql::{FLUSH_OUTBOX, INSERT_CONFLICTS, INSERT_OUTBOX};
use super::stats::ApplyStats;
use crate::batch::Chunk;
use crate::protocol::pgoutput::PgTimestamp;
use crate::sqlconn::{connect_sql, SqlConfig};
use crate::table::local::LocalTable;
use crate::Lsn;

/// Settings that make text forms canonical on this session: key text written to and
/// compared with tombstones must not depend on who wrote it. And a bound on lock waits
/// ([`APPLY_LOCK_TIMEOUT`]).
const SESSION_SETUP: &str = "SET session_replication_role = replica;
SET lock_timeout = '30s';
SET synchronous_commit = off;
SET DateStyle = 'ISO, MDY';
SET TimeZone = 'UTC';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 3;
SET bytea_output = 'hex';
SET application_name = 'pgmesh apply';";

/// Planner settings of the apply session. No nested loops where another join exists:
/// every statement joins a chunk's unnested keys onto its table, and with the row counts
/// a plan assumes (an unnest of a parameter: 10 rows; a key index condition
/// `= ANY($1)`: 10 rows) PostgreSQL picks a nested loop that re-reads the whole unnest for
/// each matching row — quadratic in the chunk: 4 s instead of 20 ms for 5,000 keys under a
/// generic plan, 15 ms instead of 1.3 for 256 under a custom one (PostgreSQL 18,
/// `examples/autoplan.rs`). A hash join over the key index's matches is linear. Joins that
/// can only be nested loops (the tombstone lookup's `LATERAL` probe per key) stay so.
///
/// And no JIT: up to PostgreSQL 17 a disabled nested loop still costs 10^10, which puts
/// such a plan past `jit_above_cost`, and compiling it took 300 ms per execution of the
/// tombstone lookup (PostgreSQL 15: a bulk catch-up at 13k rows/s instead of 200k). JIT
/// never pays off for an apply statement.
pub const PLANNER_SETTINGS: &str = "SET enable_nestloop = off; SET jit = off";

/// How long one statement of the apply waits for a lock (a row a local transaction holds,
/// a table `ALTER TABLE` holds) before it fails with SQLSTATE 55P03: a transient error,
/// so the direction rolls back and retries from its kept position. Without it a local
/// session left idle in a transaction stops the direction for good, and silently: the
/// reader waits for the writer and reads nothing more. The stall watch
/// (`sidecar::stall`) names the blocker well before this. Written in [`SESSION_SETUP`].
pub const APPLY_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens a downstream transaction. Deferred constraints are checked at statement time, so
/// nothing can fail at COMMIT (a failing commit after xact_setup would still advance the
/// origin).
const BEGIN: &str = "BEGIN; SET CONSTRAINTS ALL IMMEDIATE";

/// Chunks up to this many rows run on generic plans (see `ApplySession::plan_for`).
const GENERIC_PLAN_MAX_ROWS: usize = 500;

/// An open apply session into the local node for changes from one peer.
pub struct ApplySession {
    client: Client,
    statements: Statements,
    origins: Origins,
    origin_name: String,
    peer: String,
    in_txn: bool,
    /// Whether statements run on their generic plans (see `plan_for`); `None` when
    /// unknown (a rollback undoes a SET made inside the transaction).
    generic_plans: Option<bool>,
    /// The open transaction queued messages for the peer (sent after it commits).
    outbox_pending: bool,
    tables: HashMap<(String, String), std::sync::Arc<LocalTable>>,
    /// Ledger rows of the open transaction by kind (few kinds: a short list), for the
    /// metrics once it commits ([`ApplySession::take_conflict_counts`]).
    txn_conflicts: Vec<(crate::conflict::LedgerKind, u64)>,
    conn_task: tokio::task::JoinHandle<()>,
    peer_reader: PeerReader,
    /// The session's backend on the local node (what the stall watch looks at).
    backend_pid: i32,
    /// Statements prepared with `PREPARE` for transactions sent in one message.
    prepared: Prepared,
}

impl Drop for ApplySession {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

impl ApplySession {
    /// Connects to the local node and binds the session to origin `pgmesh_<peer>`.
    /// `peer_sql` reaches the peer over plain SQL (opened only when a partial update must
    /// be completed with the peer's values). Both use their dsn's sslmode.
    pub async fn connect(
        config: &SqlConfig,
        peer_sql: &SqlConfig,
        local_node: &str,
        peer: &str,
    ) -> Result<ApplySession, ApplyError> {
        let origin_name = crate::config::names::origin_name(peer);
        Self::connect_as(config, peer_sql, local_node, peer, origin_name).await
    }

    /// [`ApplySession::connect`], bound to `origin_name` (one of the peer's origins).
    pub(super) async fn connect_as(
        config: &SqlConfig,
        peer_sql: &SqlConfig,
        local_node: &str,
        peer: &str,
        origin_name: String,
    ) -> Result<ApplySession, ApplyError> {
        let (client, conn_task) = connect_sql(config).await?;
        client.batch_execute(SESSION_SETUP).await?;
        client.batch_execute(PLANNER_SETTINGS).await?;
        let backend_pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        // Decisions a killed predecessor committed but did not get to send.
        flush_outbox(&client).await?;
        client
            .query(
                "SELECT pg_replication_origin_session_setup($1)",
                &[&origin_name],
            )
            .await?;
        let mut s = ApplySession {
            client,
            statements: Statements::default(),
            origins: Origins {
                local_node: local_node.to_string(),
                by_roident: HashMap::new(),
            },
            origin_name,
            peer: peer.to_string(),
            in_txn: false,
            generic_plans: None,
            outbox_pending: false,
            tables: HashMap::new(),
            txn_conflicts: Vec::new(),
            conn_task,
            peer_reader: PeerReader::new(peer_sql.clone()),
            backend_pid,
            prepared: Prepared::default(),
        };
        s.refresh_origins().await?;
        Ok(s)
    }

    /// The session's backend process on the local node.
    #[must_use]
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Reloads the origin id → node map (`pgmesh_<node>` → `<node>`).
    pub async fn refresh_origins(&mut self) -> Result<(), ApplyError> {
        self.origins = Origins::load(&self.client, &self.origins.local_node).await?;
        // Rows this transaction wrote came from the peer's stream.
        self.origins
            .by_roident
            .insert(super::sql::OWN_TRANSACTION, self.peer.clone());
        Ok(())
    }

    /// The origin's progress that is flushed to disk: everything up to it is durably
    /// applied and may be acknowledged to the peer.
    pub async fn durable_progress(&self) -> Result<Lsn, ApplyError> {
        self.progress(true).await
    }

    /// The origin's progress including commits not yet flushed (where to resume reading).
    pub async fn progress(&self, flushed: bool) -> Result<Lsn, ApplyError> {
        applied_progress(&self.client, &self.peer, flushed).await
    }

    /// The local table for a peer relation (cached; [`ApplySession::forget_tables`]
    /// clears the cache when the peer re-describes relations).
    pub async fn local_table(
        &mut self,
        schema: &str,
        table: &str,
    ) -> Result<std::sync::Arc<LocalTable>, ApplyError> {
        let key = (schema.to_string(), table.to_string());
        if let Some(t) = self.tables.get(&key) {
            return Ok(t.clone());
        }
        let t = std::sync::Arc::new(LocalTable::load(&self.client, schema, table).await?);
        self.tables.insert(key, t.clone());
        Ok(t)
    }

    pub fn forget_tables(&mut self) {
        self.tables.clear();
    }

    /// Makes savepoint `name` in the open transaction.
    pub(super) async fn savepoint(&mut self, name: &str) -> Result<(), ApplyError> {
        self.begin().await?;
        Ok(self
            .client
            .batch_execute(&format!("SAVEPOINT {name}"))
            .await?)
    }

    /// Rolls the open transaction back to savepoint `name`.
    pub(super) async fn rollback_to(&mut self, name: &str) -> Result<(), ApplyError> {
        // A plan mode set after the savepoint is undone with it.
        self.generic_plans = None;
        Ok(self
            .client
            .batch_execute(&format!("ROLLBACK TO SAVEPOINT {name}"))
            .await?)
    }

    /// The statement runner, the origins and the peer, borrowed together.
    pub(super) fn parts(&mut self) -> (Db<'_>, &Origins, &str) {
        (
            Db {
                client: &self.client,
                statements: &mut self.statements,
            },
            &self.origins,
            &self.peer,
        )
    }

    /// Opens the downstream transaction if none is open.
    pub async fn begin(&mut self) -> Result<(), ApplyError> {
        if !self.in_txn {
            self.client.batch_execute(BEGIN).await?;
            self.in_txn = true;
        }
        Ok(())
    }

    /// Small chunks (steady state) run on each statement's generic plan, made once per
    /// session: planning them for every execution was over a quarter of the apply
    /// backend's CPU at a steady 5,000 txn/s. Every statement joins on its keys through
    /// `first_key = ANY($n)`, so a plan cached while a table was empty still probes the
    /// key after it grew (`tests/apply_live.rs`,
    /// `every_apply_statement_probes_keys_with_a_plan_cached_while_its_table_was_empty`).
    /// Large chunks (catch-up, bulk) are planned for every execution, where planning
    /// costs nothing next to thousands of rows: under `auto` PostgreSQL compares the cost
    /// of a cached generic plan, estimated for an array of a few keys (and possibly while
    /// the table was empty), with that of plans for thousands, and would keep the generic
    /// one for every later large chunk.
    pub(super) async fn plan_for(&mut self, rows: usize) -> Result<(), ApplyError> {
        let generic = rows <= GENERIC_PLAN_MAX_ROWS;
        if Some(generic) != self.generic_plans {
            let mode = if generic {
                "force_generic_plan"
            } else {
                "force_custom_plan"
            };
            self.client
                .batch_execute(&format!("SET plan_cache_mode = {mode}"))
                .await?;
            self.generic_plans = Some(generic);
        }
        Ok(())
    }

    /// Applies a chunk inside the open transaction and writes its ledger rows.
    pub async fn apply(&mut self, chunk: &Chunk) -> Result<ApplyStats, ApplyError> {
        self.apply_then(chunk, None).await.map(|(stats, _)| stats)
    }

    /// Applies `chunk` as a downstream transaction of its own and commits it like
    /// [`ApplySession::commit`]. When the chunk allows it (steady state: small, no
    /// conflict, no second unique constraint) the commit travels with the chunk's writes,
    /// which saves the commit's round trip; a key a local session inserted meanwhile then
    /// fails that attempt, and the chunk is applied again with the commit apart.
    pub async fn apply_and_commit(
        &mut self,
        chunk: &Chunk,
        end_lsn: Lsn,
        commit_ts: PgTimestamp,
    ) -> Result<ApplyStats, ApplyError> {
        if self.in_txn || self.outbox_pending {
            let stats = self.apply(chunk).await?;
            self.commit(end_lsn, commit_ts).await?;
            return Ok(stats);
        }
        let sql = commit_sql(end_lsn, commit_ts);
        if let Some(stats) = self.commit_in_one_message(chunk, &sql).await? {
            return Ok(stats);
        }
        match self.apply_then(chunk, Some(&sql)).await {
            Ok((stats, true)) => {
                self.in_txn = false;
                Ok(stats)
            }
            Ok((stats, false)) => {
                self.commit(end_lsn, commit_ts).await?;
                Ok(stats)
            }
            // A key a local session took meanwhile, or a row that needs a decision (a
            // guarded statement of the no-conflict path: `uncontested_sql::all_or_fail`).
            Err(ApplyError::Db(e))
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&SqlState::DIVISION_BY_ZERO) =>
            {
                tracing::debug!(peer = %self.peer, "the chunk needs a decision (or a local insert took one of its keys): applying it again the careful way");
                self.rollback().await?;
                let stats = self.apply(chunk).await?;
                self.commit(end_lsn, commit_ts).await?;
                Ok(stats)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes and commits `chunk` in one message ([`super::one_message`]) when guarded
    /// writes can do all of it; `None` when they cannot, or when one of them found a
    /// change that needs a decision (the transaction is then rolled back).
    async fn commit_in_one_message(
        &mut self,
        chunk: &Chunk,
        commit: &str,
    ) -> Result<Option<ApplyStats>, ApplyError> {
        if chunk.rows() > GENERIC_PLAN_MAX_ROWS {
            return Ok(None);
        }
        let sides = Sides {
            origins: &self.origins,
            peer: &self.peer,
        };
        let Some(message) = one_message::build(chunk, sides, &mut self.prepared, BEGIN, commit)?
        else {
            return Ok(None);
        };
        self.plan_for(chunk.rows()).await?;
        if !message.prepare.is_empty() {
            self.client.batch_execute(&message.prepare).await?;
            self.prepared.add(message.new);
        }
        match self.client.batch_execute(&message.text).await {
            Ok(()) => Ok(Some(ApplyStats {
                one_message: true,
                ..message.stats
            })),
            Err(e) => {
                // The message opened a transaction; an error left it aborted.
                self.in_txn = true;
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&SqlState::DIVISION_BY_ZERO)
                {
                    tracing::debug!(peer = %self.peer, "the chunk needs a decision (or a local insert took one of its keys): applying it again the careful way");
                    self.rollback().await?;
                    return Ok(None);
                }
                // An origin we have not seen (a node added later): reload for the retry.
                let _ = self.refresh_origins().await;
                Err(e.into())
            }
        }
    }

    /// [`ApplySession::apply`], with `commit` sent along with the last writes where the
    /// chunk allows; the flag says it was (and the transaction is committed).
    async fn apply_then(
        &mut self,
        chunk: &Chunk,
        commit: Option<&str>,
    ) -> Result<(ApplyStats, bool), ApplyError> {
        self.plan_for(chunk.rows()).await?;
        let opening = !self.in_txn;
        let mut ledger: Vec<ConflictRecord> = Vec::new();
        let mut stats = ApplyStats::default();
        let mut kills: Vec<Kill> = Vec::new();
        let client = &self.client;
        let mut resolver = Resolver {
            db: Db {
                client,
                statements: &mut self.statements,
            },
            origins: &self.origins,
            peer: &self.peer,
            peer_reader: &mut self.peer_reader,
            kills: &mut kills,
            commit,
            committed: false,
        };
        // BEGIN goes out with the chunk's first statement instead of a round trip of its
        // own: it is polled first, so tokio-postgres queues it first, and the server runs
        // requests in order.
        let begin = async move {
            if opening {
                client.batch_execute(BEGIN).await
            } else {
                Ok(())
            }
        };
        let (begun, result) =
            futures_util::future::join(begin, resolver.apply(chunk, &mut ledger, &mut stats)).await;
        let committed = resolver.committed;
        begun?;
        self.in_txn = true;
        if let Err(ApplyError::Db(_)) = &result {
            // An origin we have not seen (a node added later) shows up as unknown; reload
            // so the retry maps it.
            let _ = self.refresh_origins().await;
        }
        result?;
        if committed {
            // Only without conflicts or unique decisions: nothing was left to write.
            return Ok((stats, true));
        }
        self.write_ledger(&ledger).await?;
        self.queue_kills(&kills).await?;
        Ok((stats, false))
    }

    /// Applies a peer's unique-constraint decision (a `pgmesh.kill` message read at
    /// `lsn`) inside the open transaction.
    pub async fn apply_kill(&mut self, kill: &Kill, lsn: Lsn) -> Result<ApplyStats, ApplyError> {
        self.begin().await?;
        let table = self.local_table(&kill.schema, &kill.table).await?;
        let mut ledger: Vec<ConflictRecord> = Vec::new();
        let mut stats = ApplyStats::default();
        let mut db = Db {
            client: &self.client,
            statements: &mut self.statements,
        };
        db.apply_kill(&self.origins, &table, kill, lsn, &mut ledger, &mut stats)
            .await?;
        self.write_ledger(&ledger).await?;
        Ok(stats)
    }

    /// Queues this transaction's unique-constraint decisions for the peer.
    async fn queue_kills(&mut self, kills: &[Kill]) -> Result<(), ApplyError> {
        if kills.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_string(kills)
            .map_err(|e| ApplyError::Protocol(format!("kill encoding: {e}")))?;
        let stmt = self.statements.get(&self.client, INSERT_OUTBOX).await?;
        self.client.execute(&stmt, &[&KILL_PREFIX, &json]).await?;
        self.outbox_pending = true;
        Ok(())
    }

    /// Writes ledger records in the open transaction.
    pub async fn write_ledger(&mut self, ledger: &[ConflictRecord]) -> Result<(), ApplyError> {
        if ledger.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_string(ledger)
            .map_err(|e| ApplyError::Protocol(format!("ledger encoding: {e}")))?;
        let stmt = self.statements.get(&self.client, INSERT_CONFLICTS).await?;
        self.client.execute(&stmt, &[&json]).await?;
        for r in ledger {
            match self.txn_conflicts.iter_mut().find(|(k, _)| *k == r.kind) {
                Some((_, n)) => *n += 1,
                None => self.txn_conflicts.push((r.kind, 1)),
            }
        }
        Ok(())
    }

    /// Applies a peer's TRUNCATE of `table` that committed at `ts`, last-writer-wins (see
    /// [`super::sql::truncate_older`]), and leaves a whole-table tombstone. Returns the
    /// number of rows removed. (Rows newer than the truncate stay; they are not counted:
    /// that would read the whole table a second time inside the apply.)
    pub async fn truncate(
        &mut self,
        table: &LocalTable,
        ts: PgTimestamp,
    ) -> Result<u64, ApplyError> {
        self.begin().await?;
        let ts = crate::pgtime::rfc3339(ts.0);
        let removed = self
            .client
            .execute(&super::sql::truncate_older(table), &[&ts])
            .await?;
        self.client
            .execute(super::sql::UPSERT_TABLE_TOMBSTONE, &[&table.name])
            .await?;
        Ok(removed)
    }

    /// Commits the open transaction, recording that the peer's changes up to `end_lsn`
    /// (committed there at `commit_ts`) are applied, atomically with the data.
    pub async fn commit(&mut self, end_lsn: Lsn, commit_ts: PgTimestamp) -> Result<(), ApplyError> {
        if !self.in_txn {
            self.begin().await?;
        }
        self.client
            .batch_execute(&commit_sql(end_lsn, commit_ts))
            .await?;
        self.in_txn = false;
        if std::mem::take(&mut self.outbox_pending) {
            crate::failpoint::hit(crate::failpoint::COMMITTED_BEFORE_OUTBOX);
            // Sent from a transaction without the peer's origin, so it reaches the peer;
            // if this fails the rows stay queued and the next session sends them.
            self.client
                .batch_execute("SELECT pg_replication_origin_session_reset()")
                .await?;
            flush_outbox(&self.client).await?;
            self.client
                .query(
                    "SELECT pg_replication_origin_session_setup($1)",
                    &[&self.origin_name],
                )
                .await?;
        }
        Ok(())
    }

    /// Conflicts recorded by the transaction just committed, by kind (call after a
    /// successful [`ApplySession::commit`]; a rollback discards them).
    pub fn take_conflict_counts(&mut self) -> Vec<(crate::conflict::LedgerKind, u64)> {
        std::mem::take(&mut self.txn_conflicts)
    }

    /// Rolls back the open transaction (after an error; the peer resends from the
    /// durable progress).
    pub async fn rollback(&mut self) -> Result<(), ApplyError> {
        if self.in_txn {
            self.in_txn = false;
            self.outbox_pending = false;
            self.generic_plans = None;
            self.txn_conflicts.clear();
            self.client.batch_execute("ROLLBACK").await?;
        }
        Ok(())
    }
}

/// The statement that commits a downstream transaction with the peer's progress.
///
/// Both steps go in ONE simple-query message: PostgreSQL advances the session's origin on
/// abort too once xact_setup ran, so a sidecar killed between the two (the backend then
/// aborts) would record progress for changes it never committed. Within one message the
/// backend runs both, and an error in the transaction before it skips both.
/// pg_current_xact_id() gives the transaction an xid even when every change was skipped:
/// without one there is no commit record and the origin would not move. Values are our
/// own LSN and RFC 3339 text, safe to inline.
fn commit_sql(end_lsn: Lsn, commit_ts: PgTimestamp) -> String {
    format!(
        "SELECT pg_current_xact_id(), pg_replication_origin_xact_setup('{end_lsn}', '{}'); COMMIT",
        crate::pgtime::rfc3339(commit_ts.0)
    )
}

/// Sends every queued message to the peer (see migrations/V2), in a transaction of its
/// own; the session must have no replication origin set up.
async fn flush_outbox(client: &Client) -> Result<u64, ApplyError> {
    client.batch_execute("BEGIN").await?;
    let sent = match client.query_one(FLUSH_OUTBOX, &[]).await {
        Ok(row) => row.get::<_, i64>(0),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    };
    client.batch_execute("COMMIT").await?;
    if sent > 0 {
        tracing::debug!(sent, "unique-constraint decisions sent to the peer");
    }
    Ok(u64::try_from(sent).unwrap_or(0))
}

/// How far this node applied `peer`'s changes: the furthest progress of the peer's
/// origin and of its stream origin (a streamed transaction commits under the latter, and
/// the main session's origin catches up right after, in a transaction of its own; a crash
/// in between leaves the stream origin ahead). Origins missing here count as nothing.
pub async fn applied_progress(
    client: &Client,
    peer: &str,
    flushed: bool,
) -> Result<Lsn, ApplyError> {
    let names = [
        crate::config::names::origin_name(peer),
        crate::config::names::stream_origin_name(peer),
    ];
    let row = client
        .query_one(
            "SELECT coalesce(max(pg_replication_origin_progress(roname, $2)), '0/0')::text \
               FROM pg_replication_origin WHERE roname = ANY($1)",
            &[&&names[..], &flushed],
        )
        .await?;
    let text: String = row.get(0);
    text.parse()
        .map_err(|e| ApplyError::Protocol(format!("origin progress {text:?}: {e}")))
}

/// Progress of replication origin `origin` (any session may read it); with `flushed`, only
/// what is on disk (reading it flushes the WAL up to it).
pub async fn origin_progress(
    client: &Client,
    origin: &str,
    flushed: bool,
) -> Result<Lsn, ApplyError> {
    let row = client
        .query_one(
            "SELECT coalesce(pg_replication_origin_progress($1, $2), '0/0')::text",
            &[&origin, &flushed],
        )
        .await?;
    let text: String = row.get(0);
    text.parse()
        .map_err(|e| ApplyError::Protocol(format!("origin progress {text:?}: {e}")))
}
