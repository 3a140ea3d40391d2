-- How far this node's clock is from each peer's, as the sidecar last estimated it from
-- the replication stream (src/observe/skew.rs): our clock minus the peer's, with its
-- uncertainty. Written by the sidecar every few seconds, read by `pgmesh status`.
-- UNLOGGED: a measurement, not state; it is not worth WAL (which the peer's walsender
-- would read through) and a crash only empties it until the next estimate.
CREATE UNLOGGED TABLE pgmesh.clock_skew (
  peer text PRIMARY KEY,             -- the node whose stream this node reads
  skew_us bigint NOT NULL,           -- this node's clock minus the peer's, microseconds
  uncertainty_us bigint NOT NULL,    -- the true skew is within skew_us ± this
  samples integer NOT NULL,          -- message offsets the estimate rests on
  measured_at timestamptz NOT NULL   -- by this node's clock
);
