-- pgmesh's own objects on every node. Applied by `pgmesh setup` (refinery; history in
-- pgmesh.refinery_schema_history). Never edit an applied migration: add V2, V3, ...
CREATE SCHEMA IF NOT EXISTS pgmesh;

-- Every conflict, written in the same transaction as its resolution.
CREATE TABLE pgmesh.conflicts (
  id bigserial PRIMARY KEY,
  detected_at timestamptz NOT NULL DEFAULT now(),
  kind text NOT NULL,            -- insert_exists, update_origin_differs, update_missing, delete_origin_differs, delete_missing, update_deleted, delete_deleted, ...
  table_name text NOT NULL,      -- schema.table, quote_ident rules (pgmesh::config::names::qualified_table)
  key jsonb NOT NULL,            -- {"col": "text value", ...}
  local_row jsonb,
  remote_row jsonb,
  local_commit_ts timestamptz,
  remote_commit_ts timestamptz,
  local_origin text,             -- node names; NULL local origin = a local write
  remote_origin text,
  winner text NOT NULL,          -- 'remote' | 'local'
  resolution text NOT NULL,      -- 'applied' | 'skipped' | 'applied_as_insert' | ...
  remote_lsn pg_lsn
);
CREATE INDEX ON pgmesh.conflicts (detected_at);
CREATE INDEX ON pgmesh.conflicts (table_name, detected_at);

-- Rows deleted on this node, to decide update-vs-delete races. The commit time and origin
-- of the delete come from the tombstone row's own xmin (pg_xact_commit_timestamp_origin).
-- Local deletes are written by the per-table trigger functions pgmesh.tomb_<oid>() that
-- setup generates; remote deletes by the apply session (which runs with
-- session_replication_role = replica, so the triggers do not fire for it).
CREATE TABLE pgmesh.tombstones (
  table_name text NOT NULL,
  key text[] NOT NULL,           -- key values as text, key-column order, canonical settings
  deleted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (table_name, key)
);

CREATE TABLE pgmesh.nodes (
  name text PRIMARY KEY,
  is_local boolean NOT NULL,
  added_at timestamptz NOT NULL DEFAULT now()
);
