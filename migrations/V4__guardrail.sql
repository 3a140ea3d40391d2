-- Slots the WAL guardrail dropped (`[guardrail] policy = "drop_slot"`): each row says that
-- the direction the slot fed (changes of this node applied on `peer`) lost changes and
-- needs a re-sync. The peer's sidecar reads it when it finds the slot missing and stops
-- with that message instead of retrying. Rows are history: they stay after recovery,
-- marked resolved when `pgmesh setup` creates the slot again.
CREATE TABLE pgmesh.guardrail_drops (
  slot_name text NOT NULL,
  peer text NOT NULL,              -- the node whose sidecar read the slot
  dropped_at timestamptz NOT NULL DEFAULT now(),
  retained_bytes bigint,           -- WAL the slot held back when it was dropped
  limit_bytes bigint NOT NULL,     -- [guardrail] limit_retained at the time
  wal_status text,
  resolved_at timestamptz,         -- when setup created the slot again
  PRIMARY KEY (slot_name, dropped_at)
);
