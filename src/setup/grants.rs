//! The least privileges of the role that runs `pgmesh run`, as SQL an operator runs as a
//! superuser on every node (`pgmesh setup --print-grants ROLE`).
//!
//! Pure: the script names no table. The replicated tables are whatever publication
//! `pgmesh` holds when it runs, so it needs no config, and running it again after tables
//! were added grants those too. Every statement is idempotent.
//!
//! Why each grant (checked against the default ACLs of PostgreSQL 15–18 by
//! `tests/privileges_live.rs`):
//! - `LOGIN REPLICATION`: the walsender connection to the peer's slot.
//! - DML on the replicated tables: the apply session writes them and locks their rows
//!   (`SELECT … FOR UPDATE` needs UPDATE); the peer read session SELECTs them on the peer.
//! - schema `pgmesh`: the ledger, tombstones (upserted: SELECT + INSERT + UPDATE) and the
//!   outbox (filled and emptied), and the two `bigserial` sequences.
//! - `pgmesh.guardrail_drops`: the WAL guardrail records a slot it dropped (the drop
//!   itself needs REPLICATION), and the peer's sidecar reads why its slot is gone.
//! - `pgmesh.schema_changes` (read): a sidecar whose peer's stream still carries columns
//!   both nodes dropped checks that `pgmesh ddl` dropped them (not renamed them).
//! - `pgmesh.clock_skew` (upserted): the sidecar records its clock skew estimate for
//!   `pgmesh status`.
//! - `SET ON PARAMETER session_replication_role` (PostgreSQL 15+; the parameter is
//!   superuser-only otherwise): the apply session runs as replica so user triggers and
//!   foreign-key checks do not fire for changes already checked on the peer.
//! - `pg_replication_origin_*`: revoked from PUBLIC by PostgreSQL (grantable since 14).
//!
//! The control plane's agent (`pgmesh::control`) runs as the same role by default and
//! fences its node ([`crate::control::fence`]):
//! - `SELECT, UPDATE ON pgmesh.fence`: setting and lifting the flag (`SELECT … FOR
//!   UPDATE` of the row needs UPDATE) and reading it for `status`.
//! - `SELECT ON pgmesh.nodes`: the node's own name, for reports.
//! - membership in `pg_signal_backend`: ending the sessions of fenced roles that are
//!   inside a transaction (`pg_terminate_backend` on another role's session). It cannot
//!   end superusers' sessions, which the fence never holds anyway.
//! - membership in `pg_read_all_stats`: without it `pg_stat_activity` shows other roles'
//!   sessions with `xact_start`, `state` and `backend_type` NULL, so the fence could not
//!   tell a session in a transaction from an idle one (it would then end them all).
//!   Narrower than `pg_monitor`, which adds reading every setting and scan functions.
//! - `INHERIT` on the role: the two memberships only give their privileges to a role
//!   that inherits (PostgreSQL 16+ records that per grant, from the role's attribute at
//!   grant time; `GRANT … WITH INHERIT` does not parse on 15).
//!
//! Not granted because PUBLIC has them by default: `pg_logical_emit_message` (whose
//! signature gained a fourth argument in 17), `pg_xact_commit_timestamp_origin(xid)`,
//! `pg_current_xact_id()`, and reading `pg_replication_origin`.

use crate::config::names::PUBLICATION;
use crate::sqlquote;

/// Why a role name cannot be put into the script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantsError {
    #[error("role name must be 1 to 63 bytes, got {0}")]
    Length(usize),
    /// `$` would end the `DO $grants$` body; NUL cannot be sent at all.
    #[error("role name {0:?} contains '$' or a NUL byte; use a plainer role name")]
    Character(String),
}

/// The GRANT script for `role` (as given: `pgmesh_run`, or a mixed-case name that gets
/// quoted like PostgreSQL's `quote_ident`).
pub fn grants_sql(role: &str) -> Result<String, GrantsError> {
    if role.is_empty() || role.len() > 63 {
        return Err(GrantsError::Length(role.len()));
    }
    if role.contains(['$', '\0']) {
        return Err(GrantsError::Character(role.to_string()));
    }
    let r = sqlquote::ident(role);
    let lit = sqlquote::literal(role);
    let publication = sqlquote::literal(PUBLICATION);
    Ok(format!(
        "\
-- Least privileges for `pgmesh run` as role {r}. Run as a superuser on every node after
-- `pgmesh setup`, and again whenever tables join the replication set.
ALTER ROLE {r} WITH LOGIN REPLICATION INHERIT;
GRANT USAGE ON SCHEMA pgmesh TO {r};
GRANT SELECT, INSERT, UPDATE, DELETE ON pgmesh.conflicts, pgmesh.tombstones, pgmesh.outbox TO {r};
GRANT SELECT, INSERT ON pgmesh.guardrail_drops TO {r};
GRANT SELECT ON pgmesh.schema_changes TO {r};
GRANT SELECT, INSERT, UPDATE ON pgmesh.clock_skew TO {r};
GRANT USAGE ON SEQUENCE pgmesh.conflicts_id_seq, pgmesh.outbox_id_seq TO {r};
GRANT SET ON PARAMETER session_replication_role TO {r};
GRANT EXECUTE ON FUNCTION
  pg_replication_origin_session_setup(text),
  pg_replication_origin_session_reset(),
  pg_replication_origin_xact_setup(pg_lsn, timestamptz),
  pg_replication_origin_progress(text, boolean)
  TO {r};
-- The agent (same role by default): set and lift the fence and the write permit, read
-- the node's name, end fenced sessions that are inside a transaction, see which sessions
-- those are, prove the node takes a write, read and clear operators' forced failovers.
GRANT SELECT, UPDATE ON pgmesh.fence TO {r};
GRANT SELECT, UPDATE ON SEQUENCE pgmesh.write_permit TO {r};
GRANT SELECT ON pgmesh.nodes TO {r};
GRANT SELECT, INSERT, UPDATE ON pgmesh.agent_probe TO {r};
GRANT SELECT, DELETE ON pgmesh.forced TO {r};
GRANT pg_signal_backend, pg_read_all_stats TO {r};
-- The replicated tables: every table of publication pgmesh.
DO $grants$
DECLARE t record;
BEGIN
  FOR t IN SELECT DISTINCT schemaname, tablename FROM pg_publication_tables
            WHERE pubname = {publication} LOOP
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', t.schemaname, {lit});
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO %I',
                   t.schemaname, t.tablename, {lit});
  END LOOP;
END $grants$;
-- Also used, and executable by PUBLIC unless you revoked it (then grant it too):
-- pg_logical_emit_message(boolean, text, text) on 15-16, (boolean, text, text, boolean)
-- on 17+; pg_xact_commit_timestamp_origin(xid).
"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_role_where_postgres_would() {
        let plain = grants_sql("pgmesh_run").unwrap();
        assert!(plain.contains("ALTER ROLE pgmesh_run WITH LOGIN REPLICATION INHERIT;"));
        assert!(plain.contains("GRANT pg_signal_backend, pg_read_all_stats TO pgmesh_run;"));
        assert!(plain.contains("t.tablename, 'pgmesh_run');"));
        let mixed = grants_sql("Sync O'Brien").unwrap();
        assert!(mixed.contains("GRANT USAGE ON SCHEMA pgmesh TO \"Sync O'Brien\";"));
        assert!(mixed.contains("t.schemaname, 'Sync O''Brien');"));
    }

    #[test]
    fn refuses_names_that_would_break_the_script() {
        assert_eq!(grants_sql(""), Err(GrantsError::Length(0)));
        assert_eq!(grants_sql(&"x".repeat(64)), Err(GrantsError::Length(64)));
        assert!(matches!(
            grants_sql("a$grants$b"),
            Err(GrantsError::Character(_))
        ));
    }
}
