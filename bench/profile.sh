#!/usr/bin/env bash
# Where pgmesh's time goes during catch-up and bulk (issue 5): runs peers.py's `cmd` peer
# scenario by scenario (each with a fresh pair of clusters, so the A->B sidecar process
# lives through exactly one drain) and
#  - samples CPU seconds and peak RSS of every pgmesh and postgres process (procwatch.py);
#  - with PROFILE_PERF=1 (default) records the A->B sidecar with `perf record -e cpu-clock`
#    (software clock: hardware counters are not exposed on this VM) and writes
#    `perf report` summaries.
# Env: PROFILE_PG (default 18), PROFILE_N (100000), PROFILE_BULK ("3x100000 1x1000000").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PEERS_DIR=${PGMESH_PEERS_DIR:-$ROOT/../shared/bench}
[ -f "$PEERS_DIR/peers.py" ] || { echo "profile: set PGMESH_PEERS_DIR (peers.py not in $PEERS_DIR)" >&2; exit 2; }
export PGPEERS_CACHE=${PGPEERS_CACHE:-/var/cache/pgmesh}
export PGMESH_BIN=$CARGO_TARGET_DIR/release/pgmesh
[ -x "$PGMESH_BIN" ] || cargo build --release --locked --bin pgmesh
PG=${PROFILE_PG:-18}
N=${PROFILE_N:-100000}
BULKS=${PROFILE_BULK:-3x100000 1x1000000}
PERF=${PROFILE_PERF:-1}
OUT=${PROFILE_OUT:-$(mktemp -d /tmp/pgmesh-profile.XXXXXX)}
chmod 755 "$OUT"
CONF=$ROOT/bench/pgmesh-peers.toml
WRAP=$ROOT/bench/pgmesh-wrap.sh

one() { # name, peers.py args...
  local name=$1; shift
  mkdir -p "$OUT/$name.pids"
  python3 bench/procwatch.py "$OUT/$name.pids" "$OUT/$name.procs.json" 0.1 &
  local w=$!
  local ab="$WRAP run -c $CONF --node b"
  if [ "$PERF" = 1 ]; then
    ab="perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -o $OUT/$name.perf.data -- $PGMESH_BIN run -c $CONF --node b"
  fi
  PGMESH_WATCH_DIR=$OUT/$name.pids python3 "$PEERS_DIR/peers.py" cmd --ver "$PG" \
    --setup "$WRAP setup -c $CONF" --ab "$ab" --ba "$WRAP run -c $CONF --node a" "$@" | tee "$OUT/$name.out"
  kill -TERM $w; wait $w || true
  for f in ab ba; do [ -f /tmp/pglab/$f.log ] && mv /tmp/pglab/$f.log "$OUT/$name.$f.log"; done
  if [ "$PERF" = 1 ] && [ -f "$OUT/$name.perf.data" ]; then
    # the A->B process that drained (the last one recorded: pause/resume restarts it)
    perf report -i "$OUT/$name.perf.data" --no-children --sort dso,sym --stdio 2>/dev/null \
      | grep -v '^$' | head -80 > "$OUT/$name.perf.txt" || true
  fi
}

one catchup --only catchup --n "$N"
for b in $BULKS; do
  one "bulk$b" --only bulk --bulk-txns "${b%x*}" --bulk-rows "${b#*x}"
done
echo "profile: results in $OUT" >&2
