-- The writes whose wal2json format-version 2 output is captured into pg15/*.jsonl.
-- Run in ONE session (psql -f) right after the slot `w2j` was created: the last part binds
-- the session to replication origin `peer_x`, which only lasts for this session.
-- Shared by scripts/capture-wal2json-golden.sh and tests/wal2json_live.rs.
CREATE TABLE t (
  id   int PRIMARY KEY,
  i2   smallint NOT NULL DEFAULT 0,
  i8   bigint,
  n    numeric,
  f4   real,
  f8   double precision,
  b    boolean,
  tx   text,
  j    json,
  jb   jsonb,
  arr  int[],
  tarr text[],
  ts   timestamptz,
  by   bytea,
  u    uuid,
  big  text
);
-- EXTERNAL = out-of-line without compression, so a few kB are enough to be TOASTed.
ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE full_ident (a int, b text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
CREATE TABLE "Quoted ""Name""" (id int PRIMARY KEY, "Col ""x""" text);

-- 1. insert with every kind of value
INSERT INTO t VALUES (1, -32768, 9223372036854775807, 12345678901234567890.123456789,
  1.5, 0.1, true, E'tab\there "quote" back\\slash ünï', '{"k": [1, 2.50, null]}',
  '{"k": [1, 2.50, null]}', '{1,NULL,3}', '{"a b","c,d",NULL}',
  '2020-01-02 03:04:05.678+00', '\xdeadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  repeat('0123456789', 1000));
-- 2. NULLs and non-finite numbers
INSERT INTO t (id, n, f4, f8) VALUES (2, 'NaN', '-Infinity', 'Infinity');
-- 3. update that leaves the TOASTed `big` unchanged (wal2json omits it)
UPDATE t SET i2 = 7, tx = NULL WHERE id = 1;
-- 4. key-changing update (identity carries the old key)
UPDATE t SET id = 20 WHERE id = 2;
-- 5. delete
DELETE FROM t WHERE id = 20;
-- 6. REPLICA IDENTITY FULL: identity carries the whole old row
INSERT INTO full_ident VALUES (1, 'one');
UPDATE full_ident SET b = 'uno' WHERE a = 1;
DELETE FROM full_ident WHERE a = 1;
-- 7. quoted identifiers, several changes in one transaction
BEGIN;
INSERT INTO "Quoted ""Name""" VALUES (1, 'x');
INSERT INTO "Quoted ""Name""" VALUES (2, 'y');
COMMIT;
-- 8. logical messages, transactional and not
BEGIN;
SELECT pg_logical_emit_message(true, 'pgmesh', 'in txn "quoted"') IS NOT NULL;
INSERT INTO full_ident VALUES (2, 'two');
COMMIT;
SELECT pg_logical_emit_message(false, 'pgmesh', 'outside') IS NOT NULL;
-- 9. truncate of two tables in one statement (one "T" line per table)
TRUNCATE t, full_ident;
-- 10. a transaction committed under replication origin peer_x
SELECT pg_replication_origin_create('peer_x') IS NOT NULL;
SELECT pg_replication_origin_session_setup('peer_x');
INSERT INTO full_ident VALUES (3, 'from peer_x');
SELECT pg_replication_origin_session_reset();
-- 11. a local transaction after it, so filtering is seen to drop only the origin one
INSERT INTO full_ident VALUES (4, 'local again');
