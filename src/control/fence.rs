//! Fencing at the database: a region that may not take writes (its agent lost the etcd
//! lease, or owns no endpoint) stops its own primary from accepting application writes,
//! while the sidecar's apply keeps bringing in the peer's changes.
//!
//! **Mechanism.** A flag row, `pgmesh.fence` (migration V6), and the statement-level
//! trigger `pgmesh_fence` (`BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE`) that setup
//! installs on every replicated table ([`crate::setup::fence_trigger`]). While the flag is
//! set, the trigger function `pgmesh.fence_guard()` raises SQLSTATE 25006
//! (`read_only_sql_transaction`) for the session's login role (`session_user`) unless it is
//! a superuser, exempt, or outside the fenced roles.
//!
//! Why not the obvious alternatives:
//! - `default_transaction_read_only = on` is only a default: any client runs
//!   `SET default_transaction_read_only = off` (or `BEGIN READ WRITE`) and writes.
//! - Revoking INSERT/UPDATE/DELETE from application roles rewrites the user's ACLs, which
//!   must later be restored exactly, table by table, on a path that must be fast and
//!   survive crashes half-way; it does not hold table owners, and a grant made by someone
//!   else meanwhile reopens a hole.
//! - Stopping PostgreSQL or making it a standby would stop the sidecar's apply: the
//!   fenced region must keep catching up so it can take traffic back later.
//!
//! The trigger holds whatever the client sets, costs one read of a one-row table per
//! write statement, and does not fire for `session_replication_role = replica` (the
//! sidecar's apply, table sync, repair), which a non-superuser cannot set without
//! `GRANT SET ON PARAMETER`. Superusers are never held (they could drop the trigger
//! anyway): applications must not run as superusers.
//!
//! **Sessions already in a transaction.** The guard reads the flag under the statement's
//! snapshot, so a REPEATABLE READ transaction that began before the fence never sees it,
//! and a statement that passed its guard before the flag committed (a long `INSERT …
//! SELECT`, or an uncommitted insert waiting for its COMMIT) would land after the fence.
//! [`fence`] therefore commits the flag first and then ends every session of a fenced
//! role that is inside a transaction. Idle sessions stay: they can still read, and their
//! next write starts a new snapshot that sees the flag and meets the trigger; ending them
//! would turn a fence into an outage for read traffic and reconnect storms.
//!
//! The state is a row, so it survives restarts and crashes of PostgreSQL and of the agent;
//! only [`unfence`] (a decision: the region owns an endpoint again) lifts it.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

/// Which roles the fence holds, by login role name exactly as stored in `pg_roles`
/// (case-sensitive, unquoted). When the agent runs as another role than the sidecar, put
/// the sidecar's role in `exempt`: [`fence`] spares only the sessions of its own role, and
/// ending the apply session would stop the fenced region from catching up.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FencePolicy {
    /// The fenced login roles; `None` = every role that can log in.
    pub roles: Option<Vec<String>>,
    /// Roles never held (besides superusers, which never are).
    pub exempt: Vec<String>,
}

/// One call of [`fence`]: why, at which ownership epoch, by whom, for which roles.
#[derive(Clone, Copy, Debug)]
pub struct FenceRequest<'a> {
    /// Why ("lease lost", "owns no endpoint"): shown in the error applications get.
    pub reason: &'a str,
    pub epoch: i64,
    /// Who ("agent a", "watchdog a", "operator").
    pub by: &'a str,
    pub policy: &'a FencePolicy,
}

/// What [`fence`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[must_use]
pub struct FenceReport {
    /// The flag was already set before this call.
    pub was_fenced: bool,
    /// Sessions ended (they were inside a transaction), by pid.
    pub terminated: Vec<i32>,
    /// Of those, the ones still present when [`fence`] stopped waiting for them to exit
    /// (normally empty; a backend stuck in uninterruptible I/O can linger).
    pub still_running: Vec<i32>,
}

/// The fence as stored on the node (for `status`, health and the agent's decisions).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceState {
    /// Writes are held: fenced deliberately, or the write permit ran out.
    pub fenced: bool,
    /// Milliseconds the write permit has left (negative: ran out); `None` when it is
    /// open for good (no control plane).
    #[serde(default)]
    pub permit_left_ms: Option<i64>,
    pub reason: Option<String>,
    pub epoch: Option<i64>,
    /// RFC 3339, UTC, microseconds (`2026-12-04T10:00:00.123456Z`).
    pub changed_at: Option<String>,
    pub changed_by: Option<String>,
    /// The server's clock when it answered, Unix ms.
    #[serde(default)]
    pub server_now_ms: i64,
}

/// Why a fence operation failed; each says what to do. [`FenceError::is_transient`]
/// separates "retry" from "needs an operator".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// Schema pgmesh lacks the fence (migration V6).
    #[error("{what}: the fence is not installed ({message}): run `pgmesh setup` (migration V6 creates pgmesh.fence and pgmesh.fence_guard())")]
    NotInstalled { what: &'static str, message: String },
    /// The one row of `pgmesh.fence` was deleted, so there is no flag to set.
    #[error("{what}: pgmesh.fence has no row: run `pgmesh setup`, which restores it")]
    NoRow { what: &'static str },
    #[error("{what}: permission denied ({message}): grant the agent's role what `pgmesh setup --print-grants ROLE` prints")]
    Permission { what: &'static str, message: String },
    /// The connection broke or the server refused for a passing reason (shutdown,
    /// serialization, lock timeout): retry, on a new connection if it is closed.
    #[error("{what}: {message} (transient: retry)")]
    Transient { what: &'static str, message: String },
    /// Anything else the server refused (e.g. the node is a standby).
    #[error("{what}: {message}")]
    Query { what: &'static str, message: String },
    /// An argument PostgreSQL text cannot hold.
    #[error("{0} contains a NUL byte, which PostgreSQL text cannot hold")]
    Nul(&'static str),
    /// The server answered something this code does not expect (a bug).
    #[error("{what}: unexpected answer: {message}")]
    Unexpected { what: &'static str, message: String },
}

impl FenceError {
    /// Whether retrying the same call may succeed without anyone changing anything.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, FenceError::Transient { .. })
    }

    fn from_pg(what: &'static str, e: &tokio_postgres::Error) -> FenceError {
        let message = crate::sqlconn::pg_message(e);
        let Some(code) = e.code().map(|c| c.code()) else {
            return FenceError::Transient { what, message };
        };
        match code {
            // undefined_table, undefined_function, invalid_schema_name
            "42P01" | "42883" | "3F000" => FenceError::NotInstalled { what, message },
            "42501" => FenceError::Permission { what, message },
            // serialization_failure, deadlock, lock_not_available, query_canceled,
            // admin_shutdown, crash_shutdown, cannot_connect_now
            "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" => {
                FenceError::Transient { what, message }
            }
            _ if e.is_closed() => FenceError::Transient { what, message },
            _ => FenceError::Query { what, message },
        }
    }
}

/// How long [`fence`] waits for the sessions it ended to be gone.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Sets the fence and ends the fenced sessions that are inside a transaction.
///
/// One round trip in the common case: a single simple-protocol message carries the flag's
/// transaction (`BEGIN … COMMIT`, `synchronous_commit = local` so the flag is on disk when
/// COMMIT returns — `local`, not `on`, so that a synchronous standby that is unreachable
/// cannot hold the fence back: with `on` the flag would stay invisible until the standby
/// confirmed) and, after the COMMIT, the statement that signals the sessions, so the
/// server runs them in this order. When it ended sessions, it then waits (up to 2 s,
/// polling `pg_stat_activity`) until they are gone, so no transaction that began before
/// the fence is still running when this returns.
///
/// Ended are client backends in this database of a fenced role (the trigger's rule: not
/// superuser, not exempt, in `roles` when set) that are inside a transaction
/// (`xact_start` set; a session whose activity cannot be seen, for want of
/// `pg_read_all_stats` or with `track_activities` off, counts as in one). Never this
/// session, and never a session of this session's login role: that is the agent's role,
/// which the sidecar's apply shares by default, and ending the apply would stop the data
/// path the fenced region needs to catch up (the apply writes under
/// `session_replication_role = replica`, which the trigger lets through).
///
/// Idempotent; every call ends the sessions again, so callers repeat it while the region
/// must stay fenced. The client must not be inside a transaction block. Bound the call
/// with a timeout: the flag's row lock waits for a concurrent fence or unfence. An error
/// while ending sessions (e.g. [`FenceError::Permission`] without `pg_signal_backend`)
/// comes after the flag committed: the node is fenced, [`fence_state`] says so, and the
/// sessions it should have ended are not.
pub async fn fence(client: &Client, req: &FenceRequest<'_>) -> Result<FenceReport, FenceError> {
    const WHAT: &str = "setting the fence";
    let sql = fence_sql(req)?;
    let messages = match client.simple_query(&sql).await {
        Ok(m) => m,
        Err(e) => {
            rollback(client).await;
            return Err(FenceError::from_pg(WHAT, &e));
        }
    };
    let was = column(&messages, "was_fenced");
    let Some(was) = was else {
        return Err(FenceError::NoRow { what: WHAT });
    };
    let terminated = match column(&messages, "terminated") {
        Some(Some(list)) => parse_pids(list).map_err(|message| FenceError::Unexpected {
            what: "ending fenced sessions",
            message,
        })?,
        _ => Vec::new(),
    };
    let still_running = if terminated.is_empty() {
        Vec::new()
    } else {
        wait_gone(client, &terminated).await?
    };
    Ok(FenceReport {
        was_fenced: was == Some("t"),
        terminated,
        still_running,
    })
}

/// Lifts the fence and grants a write permit; returns whether it was fenced (by the flag
/// or by a permit that ran out). Sessions are left alone. The decision (the region owns
/// an endpoint again) is the caller's.
pub async fn unfence(
    client: &Client,
    reason: &str,
    epoch: i64,
    by: &str,
    permit: Permit,
) -> Result<bool, FenceError> {
    const WHAT: &str = "lifting the fence";
    let sql = unfence_sql(reason, epoch, by, permit)?;
    let messages = match client.simple_query(&sql).await {
        Ok(m) => m,
        Err(e) => {
            rollback(client).await;
            return Err(FenceError::from_pg(WHAT, &e));
        }
    };
    match column(&messages, "was_fenced") {
        Some(was) => Ok(was == Some("t")),
        None => Err(FenceError::NoRow { what: WHAT }),
    }
}

/// The fence as stored on the node.
pub async fn fence_state(client: &Client) -> Result<FenceState, FenceError> {
    const WHAT: &str = "reading the fence";
    let row = client
        .query_opt(
            &format!(
                "SELECT fenced OR {PERMIT_LEFT} <= 0, reason, epoch,
                    to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    changed_by, {PERMIT_LEFT}, {NOW_MS}
               FROM pgmesh.fence WHERE id"
            ),
            &[],
        )
        .await
        .map_err(|e| FenceError::from_pg(WHAT, &e))?
        .ok_or(FenceError::NoRow { what: WHAT })?;
    Ok(FenceState {
        fenced: row.get(0),
        reason: row.get(1),
        epoch: row.get(2),
        changed_at: row.get(3),
        changed_by: row.get(4),
        permit_left_ms: Some(row.get::<_, i64>(5)).filter(|ms| *ms < i64::MAX / 2),
        server_now_ms: row.get(6),
    })
}

/// How far the database server's clock is ahead of ours (ms; negative: behind), from its
/// clock as it answered (`server_ms`) and ours when the answer arrived: a lower bound,
/// short by at most the round trip. A permit end carried over with it
/// ([`Permit::until`]) is never later in the server's clock than meant, however far the
/// two clocks are apart: an agent on another host than its database (a managed service)
/// neither lets the permit lapse early when the server's clock is ahead nor stretches
/// it when it is behind.
#[must_use]
pub fn clock_offset_ms(server_ms: i64, received_ms: i64) -> i64 {
    server_ms.saturating_sub(received_ms)
}

/// Replicated tables (publication `pgmesh`) without an enabled, well-formed
/// `pgmesh_fence` trigger, as `schema.table`: the fence does not hold writes to them.
/// The agent reports them as a health problem whose fix is `pgmesh setup`.
pub async fn unguarded_tables(client: &Client) -> Result<Vec<String>, FenceError> {
    const WHAT: &str = "listing tables without a fence trigger";
    let rows = client
        .query(&crate::setup::fence_trigger::unguarded_sql(), &[])
        .await
        .map_err(|e| FenceError::from_pg(WHAT, &e))?;
    Ok(rows
        .iter()
        .map(|r| crate::config::names::qualified_table(r.get(0), r.get(1)))
        .collect())
}

/// Milliseconds the write permit has left by the server's clock (negative: ran out;
/// huge: open for good, no control plane).
const PERMIT_LEFT: &str =
    "(pg_catalog.pg_sequence_last_value('pgmesh.write_permit'::pg_catalog.regclass) \
     - (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint)";

/// The server's clock in Unix milliseconds.
const NOW_MS: &str = "(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint";

/// How long a lifted fence lets writes in (see migration V6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Until the agent's lease deadline: `ms` from now by the server's clock, and never
    /// past `not_after_ms` (Unix ms in the server's clock: the agent's clock when it
    /// computed `ms`, plus `ms`, plus the measured offset, so a request delayed in flight
    /// — an agent frozen between deciding and sending — cannot stretch the permit).
    /// Build it with [`Permit::until`].
    For { ms: u64, not_after_ms: i64 },
    /// For good: no control plane (`pgmesh setup` without `[control]`), or an operator's
    /// forced failover while etcd has no quorum.
    Unlimited,
}

impl Permit {
    /// A permit for `ms` from now, bounded by now + `ms` on our clock carried into the
    /// server's with `offset_ms` ([`clock_offset_ms`]; 0 before one was measured).
    #[must_use]
    pub fn until(ms: u64, offset_ms: i64) -> Permit {
        let not_after = crate::control::keys::now_ms()
            .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
            .saturating_add(offset_ms);
        Permit::For {
            ms,
            not_after_ms: not_after,
        }
    }

    fn value_sql(self) -> String {
        match self {
            Permit::For { ms, not_after_ms } => {
                format!("greatest(0, least({NOW_MS} + {ms}, {not_after_ms}))")
            }
            Permit::Unlimited => i64::MAX.to_string(),
        }
    }
}

/// Moves the permit on while the region stays writable; does nothing (returns false)
/// when the fence is set. Takes the fence row's lock before writing the permit, so it
/// serializes with [`fence`]: a renewal computed before a fence can never land after it.
pub async fn renew_permit(client: &Client, permit: Permit) -> Result<bool, FenceError> {
    let sql = format!(
        "SELECT pg_catalog.setval('pgmesh.write_permit', {}) \
           FROM (SELECT 1 FROM pgmesh.fence WHERE id AND NOT fenced FOR UPDATE) AS unfenced",
        permit.value_sql()
    );
    client
        .query(&sql, &[])
        .await
        .map(|rows| !rows.is_empty())
        .map_err(|e| FenceError::from_pg("renewing the write permit", &e))
}

/// The ending statement: client backends of fenced roles in this database that are (or
/// may be) inside a transaction, signalled all at once. The CTE is materialized so that
/// `pg_terminate_backend` only ever sees the rows the filter kept.
const TERMINATE_SQL: &str = "\
WITH f AS (SELECT roles, exempt FROM pgmesh.fence WHERE id AND fenced),
victims AS MATERIALIZED (
  SELECT a.pid
    FROM pg_stat_activity a
    JOIN pg_roles r ON r.oid = a.usesysid
    CROSS JOIN f
   WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND a.pid <> pg_backend_pid()
     AND r.rolname <> session_user
     AND NOT r.rolsuper
     AND NOT r.rolname::text = ANY (f.exempt)
     AND (f.roles IS NULL OR r.rolname::text = ANY (f.roles))
     AND coalesce(a.backend_type, 'client backend') = 'client backend'
     AND (a.xact_start IS NOT NULL OR a.state IS DISTINCT FROM 'idle'))
SELECT coalesce(array_agg(pid ORDER BY pid), '{}')::text AS terminated
  FROM victims WHERE pg_terminate_backend(pid)";

/// The whole message [`fence`] sends. Values are literals (the simple protocol has no
/// parameters), written by [`crate::sqlquote::literal`], which reads the same whatever
/// `standard_conforming_strings` says.
fn fence_sql(req: &FenceRequest<'_>) -> Result<String, FenceError> {
    let roles = match &req.policy.roles {
        None => "NULL".to_string(),
        Some(r) => text_array(r, "a fenced role name")?,
    };
    Ok(format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE;
SET LOCAL synchronous_commit = local;
SELECT fenced OR {PERMIT_LEFT} <= 0 AS was_fenced FROM pgmesh.fence WHERE id FOR UPDATE;
UPDATE pgmesh.fence SET fenced = true, reason = {}, epoch = {}, changed_by = {},
       changed_at = now(), roles = {roles}, exempt = {} WHERE id;
SELECT pg_catalog.setval('pgmesh.write_permit', 0);
COMMIT;
{TERMINATE_SQL}",
        literal(req.reason, "the reason")?,
        req.epoch,
        literal(req.by, "the fencer's name")?,
        text_array(&req.policy.exempt, "an exempt role name")?,
    ))
}

fn unfence_sql(reason: &str, epoch: i64, by: &str, permit: Permit) -> Result<String, FenceError> {
    Ok(format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE;
SELECT fenced OR {PERMIT_LEFT} <= 0 AS was_fenced FROM pgmesh.fence WHERE id FOR UPDATE;
UPDATE pgmesh.fence SET fenced = false, reason = {}, epoch = {epoch}, changed_by = {},
       changed_at = now() WHERE id;
SELECT pg_catalog.setval('pgmesh.write_permit', {});
COMMIT",
        literal(reason, "the reason")?,
        literal(by, "the name of who lifts it")?,
        permit.value_sql(),
    ))
}

/// A string literal ([`crate::sqlquote::literal`]); a NUL (which text cannot hold) is
/// refused with the name of what carried it.
fn literal(s: &str, what: &'static str) -> Result<String, FenceError> {
    if s.contains('\0') {
        return Err(FenceError::Nul(what));
    }
    Ok(crate::sqlquote::literal(s))
}

fn text_array(items: &[String], what: &'static str) -> Result<String, FenceError> {
    if items.is_empty() {
        return Ok("'{}'::text[]".to_string());
    }
    let lits = items
        .iter()
        .map(|s| literal(s, what))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("ARRAY[{}]::text[]", lits.join(", ")))
}

/// The value of the first row whose first column is named `name`: `None` when no such
/// row came back, `Some(None)` for SQL NULL.
fn column<'m>(messages: &'m [SimpleQueryMessage], name: &str) -> Option<Option<&'m str>> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.columns().first().map(|c| c.name()) == Some(name) => {
            Some(r.get(0))
        }
        _ => None,
    })
}

/// `{12,34}` → `[12, 34]`.
fn parse_pids(text: &str) -> Result<Vec<i32>, String> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| format!("{text:?} is not an array of pids"))?;
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<i32>()
                .map_err(|_| format!("{text:?} is not an array of pids"))
        })
        .collect()
}

/// Polls until none of `pids` is in `pg_stat_activity` (a backend leaves it after its
/// transaction was rolled back) or [`EXIT_WAIT`] passed; returns those still there.
async fn wait_gone(client: &Client, pids: &[i32]) -> Result<Vec<i32>, FenceError> {
    const WHAT: &str = "waiting for ended sessions to exit";
    let deadline = Instant::now() + EXIT_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        let left: Vec<i32> = client
            .query_one(
                "SELECT coalesce(array_agg(pid ORDER BY pid), '{}') FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .map_err(|e| FenceError::from_pg(WHAT, &e))?
            .get(0);
        if left.is_empty() || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// After a failed message that began a transaction block, the session sits in an aborted
/// block until ROLLBACK; best effort (the connection may be gone).
async fn rollback(client: &Client) {
    let _ = client.batch_execute("ROLLBACK").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permit_end_is_carried_into_the_servers_clock() {
        // The server answered with 10_000 (its clock) and the answer arrived at 7_000
        // (ours): it is at least 3 s ahead.
        assert_eq!(clock_offset_ms(10_000, 7_000), 3_000);
        assert_eq!(clock_offset_ms(7_000, 10_050), -3_050);
        let before = crate::control::keys::now_ms();
        let Permit::For { ms, not_after_ms } = Permit::until(4_000, 3_000) else {
            panic!("a bounded permit");
        };
        let after = crate::control::keys::now_ms();
        assert_eq!(ms, 4_000);
        assert!((before + 7_000..=after + 7_000).contains(&not_after_ms));
    }

    #[test]
    fn literals_hold_any_text() {
        assert_eq!(literal("it's a\\b", "x").unwrap(), "E'it''s a\\\\b'");
        assert!(matches!(literal("a\0b", "x"), Err(FenceError::Nul("x"))));
        assert_eq!(text_array(&[], "x").unwrap(), "'{}'::text[]");
        assert_eq!(
            text_array(&["app".into(), "O'Brien".into()], "x").unwrap(),
            "ARRAY['app', 'O''Brien']::text[]"
        );
    }

    #[test]
    fn fence_commits_the_flag_before_ending_sessions() {
        let policy = FencePolicy {
            roles: Some(vec!["app".into()]),
            exempt: vec!["ops".into()],
        };
        let sql = fence_sql(&FenceRequest {
            reason: "lease lost",
            epoch: 42,
            by: "agent a",
            policy: &policy,
        })
        .unwrap();
        let commit = sql.find("COMMIT;").unwrap();
        let update = sql.find("UPDATE pgmesh.fence SET fenced = true").unwrap();
        let end = sql.find("pg_terminate_backend").unwrap();
        assert!(update < commit && commit < end, "{sql}");
        assert!(
            sql.contains("SET LOCAL synchronous_commit = local;"),
            "{sql}"
        );
        assert!(
            sql.contains("reason = 'lease lost', epoch = 42, changed_by = 'agent a'"),
            "{sql}"
        );
        assert!(
            sql.contains("roles = ARRAY['app']::text[], exempt = ARRAY['ops']::text[]"),
            "{sql}"
        );
        let every = fence_sql(&FenceRequest {
            policy: &FencePolicy::default(),
            ..FenceRequest {
                reason: "r",
                epoch: 1,
                by: "b",
                policy: &policy,
            }
        })
        .unwrap();
        assert!(
            every.contains("roles = NULL, exempt = '{}'::text[]"),
            "{every}"
        );
    }

    #[test]
    fn pid_lists_parse() {
        assert_eq!(parse_pids("{}").unwrap(), Vec::<i32>::new());
        assert_eq!(parse_pids("{12,345}").unwrap(), vec![12, 345]);
        assert!(parse_pids("12").is_err());
        assert!(parse_pids("{x}").is_err());
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = FenceError::NotInstalled {
            what: "setting the fence",
            message: "relation \"pgmesh.fence\" does not exist (42P01)".into(),
        };
        assert!(e.to_string().contains("run `pgmesh setup`"), "{e}");
        let e = FenceError::Permission {
            what: "setting the fence",
            message: "permission denied for table fence (42501)".into(),
        };
        assert!(
            e.to_string().contains("pgmesh setup --print-grants ROLE"),
            "{e}"
        );
        assert!(!e.is_transient());
    }
}
