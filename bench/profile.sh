#!/usr/bin/env bash
# Where pgmesh's time goes during catch-up and bulk (issue 5): runs peers.py's `cmd` peer
# scenario by scenario (each with a fresh pair of clusters, so the A->B sidecar process
# lives through exactly one drain) and
#  - samples CPU seconds and peak RSS of every pgmesh and postgres process (procwatch.py);
#  - with PROFILE_PERF=1 (default) records the A->B sidecar with `perf record -e cpu-clock`
#    (software clock: hardware counters are not exposed on this VM) and writes
#    `perf report` summaries;
#  - with PROFILE_PERF=backend records the whole machine while the A->B sidecar runs and
#    breaks node B's apply backend's CPU down by what it does (bench/backend_breakdown.py:
#    commit-time reads, row locks, writes, planning, commit, ...).
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
mkdir -p "$OUT"
chmod 755 "$OUT"
CONF=$ROOT/bench/pgmesh-peers.toml
WRAP=$ROOT/bench/pgmesh-wrap.sh

one() { # name, peers.py args...
  local name=$1; shift
  mkdir -p "$OUT/$name.pids"
  python3 bench/procwatch.py "$OUT/$name.pids" "$OUT/$name.procs.json" 0.1 &
  local w=$!
  local ab="$WRAP run -c $CONF --node b"
  if [ "$PERF" = backend ]; then
    ab="perf record -q -a -e cpu-clock -F 999 --call-graph dwarf,8192 -o $OUT/$name.backend.data -- $PGMESH_BIN run -c $CONF --node b"
  elif [ "$PERF" = 1 ]; then
    ab="perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -o $OUT/$name.perf.data -- $PGMESH_BIN run -c $CONF --node b"
  fi
  PGMESH_WATCH_DIR=$OUT/$name.pids python3 "$PEERS_DIR/peers.py" cmd --ver "$PG" \
    --setup "$WRAP setup -c $CONF" --ab "$ab" --ba "$WRAP run -c $CONF --node a" "$@" | tee "$OUT/$name.out"
  kill -TERM $w; wait $w || true
  for f in ab ba; do [ -f /tmp/pglab/$f.log ] && mv /tmp/pglab/$f.log "$OUT/$name.$f.log"; done
  if [ "$PERF" = backend ] && [ -f "$OUT/$name.backend.data" ]; then
    perf script -i "$OUT/$name.backend.data" -F comm,pid,tid,ip,sym 2>/dev/null > "$OUT/$name.backend.txt" || true
    python3 bench/backend_breakdown.py "$OUT/$name.backend.txt" "$OUT/$name.procs.json" b \
      --json "$OUT/$name.breakdown.json" \
      | tee "$OUT/$name.breakdown.txt" || true
    rm -f "$OUT/$name.backend.txt"
  fi
  if [ "$PERF" = 1 ] && [ -f "$OUT/$name.perf.data" ]; then
    # the A->B process that drained (the last one recorded: pause/resume restarts it)
    { echo "samples (cpu-clock, 499 Hz => ~2 ms each): $(perf script -i "$OUT/$name.perf.data" -F comm 2>/dev/null | wc -l)"
      perf report -i "$OUT/$name.perf.data" --no-children --sort dso,sym -g none --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40
      echo; echo "inclusive (children), top 40:"
      perf report -i "$OUT/$name.perf.data" --children --sort sym -g none --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40
    } > "$OUT/$name.perf.txt" || true
  fi
}

one catchup --only catchup --n "$N"
for b in $BULKS; do
  one "bulk$b" --only bulk --bulk-txns "${b%x*}" --bulk-rows "${b#*x}"
done
# CPU seconds per process while each scenario ran (pgmesh A->B: see the perf sample counts)
for f in "$OUT"/*.procs.json; do
  echo "== $(basename "$f" .procs.json)"
  python3 - "$f" <<'PY'
import json, sys
for p in json.load(open(sys.argv[1]))[:8]:
    print(f"{p['cpu_s']:6.2f} s  {p['hwm_kb'] // 1024:4d} MB  {p['kind']:8s} {p['node'] or '-':2s} {(p['role'] or p['cmd'])[:80]}")
PY
done | tee "$OUT/cpu.txt"
echo "profile: results in $OUT" >&2
