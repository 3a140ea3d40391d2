#!/usr/bin/env bash
# Runs pgmesh with the same pid (exec), after recording that pid and the command in
# $PGMESH_WATCH_DIR so bench/procwatch.py can sample its CPU time and peak RSS.
if [ -n "${PGMESH_WATCH_DIR:-}" ]; then
  echo "$*" > "$PGMESH_WATCH_DIR/$$"
fi
exec "${PGMESH_BIN:?PGMESH_BIN must point at the pgmesh binary}" "$@"
