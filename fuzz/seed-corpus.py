#!/usr/bin/env python3
"""Writes every golden pgoutput message as a fuzz seed: one context byte + message.

Usage: python3 fuzz/seed-corpus.py   (from the repository root; writes
fuzz/corpus/pgoutput_decode/, which is not committed)."""
import glob, os, re

out = "fuzz/corpus/pgoutput_decode"
os.makedirs(out, exist_ok=True)
n = 0
for path in sorted(glob.glob("tests/golden/pgoutput/pg*/*.txt")):
    parallel = False
    in_stream = False
    seen_tags = {}
    for line in open(path):
        if line.startswith("# decoder:"):
            parallel = "parallel=true" in line
        if line.startswith("#") or not line.strip():
            continue
        data = bytes.fromhex(line.split()[2])
        tag = data[:1]
        ctx = (1 if in_stream else 0) | (2 if parallel else 0)
        if tag == b"S":
            in_stream = True
        elif tag == b"E":
            in_stream = False
        # Keep a few of each kind per file; thousands of near-identical inserts only
        # slow the fuzzer down.
        key = (tag, ctx)
        seen_tags[key] = seen_tags.get(key, 0) + 1
        if seen_tags[key] > 8:
            continue
        with open(os.path.join(out, "golden-%05d" % n), "wb") as f:
            f.write(bytes([ctx]) + data)
        n += 1
print("wrote", n, "seeds to", out)
