#!/usr/bin/env python3
"""Median / p99 / max per measure of trial files: tests/control_trials.rs
($PGMESH_TRIALS_OUT) and tests/traffic_live.rs ($PGMESH_TRAFFIC_OUT) write one JSON line
per trial. Usage: trials-summary.py [--by FIELD] FILE...  (--by pg: one table per
PostgreSQL major)."""
import json, math, sys

SKIP = {"trial", "pg"}

def table(rows):
    samples = {}
    for t in rows:
        for k, v in t.items():
            if k not in SKIP and isinstance(v, (int, float)) and not math.isnan(v):
                samples.setdefault(k, []).append(v)
    print("| measure | n | median | p99 | max |\n|---|---:|---:|---:|---:|")
    for k in sorted(samples):
        v = sorted(samples[k])
        q = lambda p: v[round((len(v) - 1) * p)]
        print(f"| {k} | {len(v)} | {q(0.5):.3f} | {q(0.99):.3f} | {v[-1]:.3f} |")

def main(args):
    by = None
    if args[:1] == ["--by"]:
        by, args = args[1], args[2:]
    rows = [json.loads(line) for p in args for line in open(p) if line.strip()]
    if by is None:
        table(rows)
        return
    for key in sorted({r.get(by) for r in rows}, key=str):
        print(f"\n{by} = {key}\n")
        table([r for r in rows if r.get(by) == key])

if __name__ == "__main__":
    main(sys.argv[1:])
