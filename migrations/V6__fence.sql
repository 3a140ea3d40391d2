-- The fence (control plane, ARCHITECTURE §4). Application roles may write the replicated
-- tables of this node only while it holds a *write permit*: pgmesh.write_permit, a
-- sequence whose value is the Unix time in milliseconds until which writes are allowed
-- (by this server's clock). The region's agent keeps it a little ahead of its etcd lease
-- deadline while the region owns an endpoint; fencing sets it to 0. So the database
-- itself stops writes when the lease would run out, even if the agent and its watchdog
-- are both frozen, and after a restart of PostgreSQL during which nobody could fence it.
--
-- A sequence, not a column: its value is read outside MVCC, so every statement sees the
-- newest permit whatever its snapshot (a REPEATABLE READ transaction that began before
-- the fence still meets it), and reading it costs no table scan. setval is WAL-logged;
-- fencing commits with a flush after it, so a crash can only bring back an older,
-- earlier-expiring permit, never a later one.
--
-- Without a control plane (no [control] in the config) setup opens the permit for good
-- (its largest value). Enforced by the statement-level trigger `pgmesh_fence` that setup
-- installs on every replicated table (pgmesh.fence_guard() below).
CREATE SEQUENCE pgmesh.write_permit AS bigint MINVALUE 0 NO CYCLE;
SELECT pg_catalog.setval('pgmesh.write_permit', 9223372036854775807);

-- Who fenced, why, and which roles the fence holds. Exactly one row (id is always true).
-- `fenced` records a deliberate fence (agent, watchdog, operator): while it is set, the
-- agent's permit renewals do nothing, so a renewal computed before a fence can never
-- reopen writes after it.
CREATE TABLE pgmesh.fence (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  fenced boolean NOT NULL DEFAULT false,
  reason text,                     -- why it was set or lifted last ("lease lost", ...)
  epoch bigint,                    -- the ownership epoch the decision was made at
  changed_at timestamptz,
  changed_by text,                 -- "agent a", "watchdog a", "operator"
  roles text[],                    -- roles the fence holds; NULL = every role that can log in
  exempt text[] NOT NULL DEFAULT '{}'  -- roles it never holds (besides superusers)
);
INSERT INTO pgmesh.fence DEFAULT VALUES;

-- The refusal: runs only when the permit has run out. SECURITY DEFINER with a pinned
-- search_path so application roles need no grant on schema pgmesh. It judges
-- `session_user`, the role that logged in: SET ROLE cannot move a session out of (or
-- into) the fence, and SECURITY DEFINER changes current_user, not session_user.
CREATE FUNCTION pgmesh.fence_refuse(op text, tschema text, tname text) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $fence$
DECLARE
  f record;
  node text;
BEGIN
  SELECT fenced, reason, epoch, changed_at, changed_by, roles, exempt
    INTO f FROM pgmesh.fence WHERE id;
  IF session_user::text = ANY (coalesce(f.exempt, '{}'))
     OR (f.roles IS NOT NULL AND NOT session_user::text = ANY (f.roles))
     OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = session_user AND rolsuper) THEN
    RETURN;
  END IF;
  SELECT name INTO node FROM pgmesh.nodes WHERE is_local LIMIT 1;
  RAISE EXCEPTION USING
    ERRCODE = 'read_only_sql_transaction',
    MESSAGE = format(
      'pgmesh: node %s is fenced (%s, since %s): this region does not own a write endpoint; write through the endpoint''s current owner',
      coalesce(node, '(unregistered)'),
      CASE WHEN f.fenced IS TRUE THEN coalesce(f.reason, 'no reason given')
           ELSE 'its write permit ran out: the agent did not renew it in time' END,
      coalesce(to_char(f.changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), 'unknown')),
    DETAIL = format('%s on %I.%I by role %s refused; fenced by %s at epoch %s',
      op, tschema, tname, session_user,
      coalesce(f.changed_by, 'unknown'), coalesce(f.epoch::text, 'unknown')),
    HINT = 'Reads still work on this node. The fence is lifted when this region owns an endpoint again.';
END
$fence$;

-- The guard, on the path of every application write statement: one sequence read and a
-- clock read while the permit holds. SECURITY DEFINER (the sequence needs no grant to
-- application roles) but no SET clause, which would cost a configuration save and
-- restore per call; every name and operator is schema-qualified instead, so the caller's
-- search_path cannot change what it runs.
CREATE FUNCTION pgmesh.fence_guard() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
AS $fence$
BEGIN
  -- OPERATOR() forms all share one precedence: the parentheses are needed.
  IF pg_catalog.pg_sequence_last_value('pgmesh.write_permit'::pg_catalog.regclass)::pg_catalog.float8
       OPERATOR(pg_catalog.>)
     (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000::pg_catalog.float8) THEN
    RETURN NULL;
  END IF;
  PERFORM pgmesh.fence_refuse(TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME);
  RETURN NULL;
END
$fence$;
