#!/usr/bin/env bash
# Regenerates tests/golden/wal2json/pg15/*.jsonl from a throwaway PostgreSQL 15 cluster with
# wal2json: runs tests/golden/wal2json/scenario.sql once, then peeks (does not consume) the
# slot with several option sets, one JSON document per line.
# Needs root (initdb/postgres run as the `postgres` user) and postgresql-15-wal2json.
# Usage: scripts/capture-wal2json-golden.sh [PGBIN]   (default /usr/lib/postgresql/15/bin)
set -euo pipefail

PGBIN="${1:-/usr/lib/postgresql/15/bin}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/tests/golden/wal2json/pg15"
SCENARIO="$ROOT/tests/golden/wal2json/scenario.sql"

[ -x "$PGBIN/initdb" ] || { echo "no initdb in $PGBIN" >&2; exit 1; }
[ -f "$("$PGBIN/pg_config" --pkglibdir 2>/dev/null || echo /usr/lib/postgresql/15/lib)/wal2json.so" ] \
  || [ -f /usr/lib/postgresql/15/lib/wal2json.so ] || { echo "wal2json.so not installed" >&2; exit 1; }

# A free port: the first of a range nobody listens on.
PORT=""
for p in $(seq 55432 55532); do
  if ! ss -Hltn "sport = :$p" | grep -q .; then PORT=$p; break; fi
done
[ -n "$PORT" ] || { echo "no free port" >&2; exit 1; }

TMP="$(mktemp -d /tmp/pgmesh-w2j-golden.XXXXXX)"
chmod 755 "$TMP"; chown postgres:postgres "$TMP"
DATA="$TMP/data"
install -d -o postgres -g postgres -m 700 "$DATA"
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
cat >> "$DATA/postgresql.conf" <<CONF
wal_level = logical
track_commit_timestamp = on
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
max_replication_slots = 4
max_wal_senders = 4
fsync = off
timezone = 'UTC'
CONF
# 15.19+ only allows listed output plugins; older minors reject the unknown GUC, so probe.
if as_pg "$PGBIN/postgres" --describe-config 2>/dev/null | grep -q '^output_plugin_libraries'; then
  echo "output_plugin_libraries = 'pgoutput, test_decoding, wal2json'" >> "$DATA/postgresql.conf"
fi
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$TMP/log" -w start >/dev/null

PSQL=("$PGBIN/psql" -h "$DATA" -p "$PORT" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1)
as_pg "${PSQL[@]}" -c "SELECT pg_create_logical_replication_slot('w2j', 'wal2json')" >/dev/null
as_pg "${PSQL[@]}" -f "$SCENARIO" >/dev/null
ORIGIN_ID="$(as_pg "${PSQL[@]}" -c "SELECT roident FROM pg_replication_origin WHERE roname = 'peer_x'")"

FULL="'format-version','2','include-xids','1','include-timestamp','1','include-lsn','1',
      'include-origin','1','include-pk','1','include-type-oids','1','include-not-null','1'"
peek() { # name, [pre-statement;] options
  local name=$1 pre=$2 opts=$3
  as_pg "${PSQL[@]}" -c "$pre" \
    -c "SELECT data FROM pg_logical_slot_peek_changes('w2j', NULL, NULL, $opts)" > "$OUT/$name.jsonl"
  echo "captured $(wc -l < "$OUT/$name.jsonl") lines into pg15/$name.jsonl"
}
mkdir -p "$OUT"
peek full           "SET application_name = capture" "$FULL"
peek minimal        "SET application_name = capture" "'format-version','2'"
peek full-kolkata   "SET timezone = 'Asia/Kolkata'" "$FULL"
peek filter-origins "SET application_name = capture" "$FULL, 'filter-origins', '$ORIGIN_ID'"
# wal2json reads filter-origins with atoi(): a name counts as origin 0 and filters nothing.
peek filter-origins-by-name "SET application_name = capture" "$FULL, 'filter-origins', 'peer_x'"
peek add-tables     "SET application_name = capture" "$FULL, 'add-tables', 'public.full_ident'"
as_pg "${PSQL[@]}" -c "SELECT 'server_version=' || current_setting('server_version') || ' peer_x_roident=$ORIGIN_ID'" \
  > "$OUT/CAPTURED_FROM.txt"
echo "wal2json_package=$(dpkg-query -W -f='${Version}' postgresql-15-wal2json 2>/dev/null || echo unknown)" \
  >> "$OUT/CAPTURED_FROM.txt"
