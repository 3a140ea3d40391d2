-- Rows removed by a unique-constraint decision (a row that lost to another row holding the
-- same value) are deleted "at" the winning write: their tombstone carries that version
-- explicitly, so a later change of the loser is compared with the write that displaced it,
-- not with whoever happened to apply the decision. NULL: the tombstone row's own xmin
-- gives the delete's time and origin, as before.
ALTER TABLE pgmesh.tombstones
  ADD COLUMN decided_ts timestamptz,
  ADD COLUMN decided_node text;

-- Unique-constraint decisions the peer must hear about. Written in the apply transaction
-- that made the decision (which carries the peer's replication origin, so none of it is
-- replicated back); moved right after its commit into a transactional logical message
-- (`pgmesh.kill`) by an origin-less transaction, which the peer's sidecar applies. A crash
-- in between leaves the row here; the next apply session sends it.
CREATE TABLE pgmesh.outbox (
  id bigserial PRIMARY KEY,
  prefix text NOT NULL,
  body jsonb NOT NULL
);
