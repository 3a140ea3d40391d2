-- Schema changes `pgmesh ddl` made on this node: one row per table and run, written in the
-- same transaction as the change. A sidecar reads it when the peer's stream still carries
-- columns that neither node has any more while both nodes have columns the stream lacks:
-- from the catalogs alone that could be a rename (whose values must not be discarded); a
-- recorded drop says it is not.
CREATE TABLE pgmesh.schema_changes (
  id bigserial PRIMARY KEY,
  changed_at timestamptz NOT NULL DEFAULT now(),
  table_name text NOT NULL,                -- schema.table, quote_ident rules, as in the ledger
  dropped text[] NOT NULL DEFAULT '{}',    -- columns dropped
  added text[] NOT NULL DEFAULT '{}',      -- columns added
  statement text NOT NULL
);
CREATE INDEX schema_changes_table ON pgmesh.schema_changes (table_name);
