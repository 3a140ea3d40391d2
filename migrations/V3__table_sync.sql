-- Initial copies of existing rows (`pgmesh setup` on tables new to replication), kept on
-- the node that receives the rows. A row in state 'copying' means the copy has not finished:
-- the next `pgmesh setup` resumes it (the copy only inserts rows the target lacks, so doing
-- part of it twice is harmless).
CREATE TABLE pgmesh.table_sync (
  table_name text PRIMARY KEY,   -- schema.table, quote_ident rules, as in the ledger
  source_node text NOT NULL,
  state text NOT NULL CHECK (state IN ('copying', 'done')),
  mode text NOT NULL,            -- 'copy' | 'merge' | 'replace'
  rows_copied bigint NOT NULL DEFAULT 0,
  rows_kept bigint NOT NULL DEFAULT 0,   -- rows the target already held (newer or its own)
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);
