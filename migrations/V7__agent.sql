-- The control plane's own rows on this node (never replicated: not in the publication).
-- agent_probe: the health orchestrator proves the primary takes a write by upserting its
-- row every probe. forced: endpoints an operator forced onto this region with
-- `pgmesh failover --force` while etcd had no quorum; the agent keeps the region writable
-- for them until it can record the decision in etcd, then deletes the row.
CREATE TABLE pgmesh.agent_probe (
  node text PRIMARY KEY,
  at timestamptz NOT NULL
);
CREATE TABLE pgmesh.forced (
  endpoint text PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  by_whom text NOT NULL,
  note text
);
