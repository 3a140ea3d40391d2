#!/usr/bin/env python3
"""Median / p99 / max per measure of control-plane trial files (tests/control_trials.rs
writes one JSON line per trial to $PGMESH_TRIALS_OUT). Usage: trials-summary.py FILE..."""
import json, math, sys

def summary(paths):
    samples = {}
    for p in paths:
        for line in open(p):
            t = json.loads(line)
            for k, v in t.items():
                if k != "trial" and isinstance(v, (int, float)) and not math.isnan(v):
                    samples.setdefault(k, []).append(v)
    print("| measure | n | median | p99 | max |\n|---|---:|---:|---:|---:|")
    for k in sorted(samples):
        v = sorted(samples[k])
        q = lambda p: v[round((len(v) - 1) * p)]
        print(f"| {k} | {len(v)} | {q(0.5):.3f} | {q(0.99):.3f} | {v[-1]:.3f} |")

if __name__ == "__main__":
    summary(sys.argv[1:])
