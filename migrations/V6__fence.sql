-- The fence (control plane, ARCHITECTURE §4): while `fenced` is true, application roles
-- cannot write the replicated tables of this node. Set and lifted by the region's agent
-- (or its watchdog, or an operator) through `pgmesh::control::fence`; enforced by the
-- statement-level trigger `pgmesh_fence` that setup installs on every replicated table,
-- which calls pgmesh.fence_guard() below. The state is a row, so it survives restarts
-- and crashes of PostgreSQL and of the agent. Exactly one row (id is always true).
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

-- The trigger function. SECURITY DEFINER (owned by the setup role, search_path pinned) so
-- application roles need no grant on schema pgmesh. When not fenced it reads one row and
-- returns: that is the whole cost of the guard on a write. It judges `session_user`, the
-- role that logged in: SET ROLE cannot move a session out of (or into) the fence, and
-- SECURITY DEFINER changes current_user, not session_user. The flag is read under the
-- statement's snapshot: a REPEATABLE READ transaction that began before the fence does
-- not see it, which is why the fence also ends every fenced session that is inside a
-- transaction after the flag has committed.
CREATE FUNCTION pgmesh.fence_guard() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $fence$
DECLARE
  f record;
  node text;
BEGIN
  SELECT fenced, reason, epoch, changed_at, changed_by, roles, exempt
    INTO f FROM pgmesh.fence WHERE id;
  IF f.fenced IS NOT TRUE THEN
    RETURN NULL;
  END IF;
  IF session_user::text = ANY (f.exempt)
     OR (f.roles IS NOT NULL AND NOT session_user::text = ANY (f.roles))
     OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = session_user AND rolsuper) THEN
    RETURN NULL;
  END IF;
  SELECT name INTO node FROM pgmesh.nodes WHERE is_local LIMIT 1;
  RAISE EXCEPTION USING
    ERRCODE = 'read_only_sql_transaction',
    MESSAGE = format(
      'pgmesh: node %s is fenced (%s, since %s): this region does not own a write endpoint; write through the endpoint''s current owner',
      coalesce(node, '(unregistered)'),
      coalesce(f.reason, 'no reason given'),
      coalesce(to_char(f.changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), 'unknown')),
    DETAIL = format('%s on %I.%I by role %s refused; fenced by %s at epoch %s',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, session_user,
      coalesce(f.changed_by, 'unknown'), coalesce(f.epoch::text, 'unknown')),
    HINT = 'Reads still work on this node. The fence is lifted when this region owns an endpoint again.';
END
$fence$;
