#!/usr/bin/env python3
"""Steady-state lag scenario for one peer, on the same clusters and setups as
../shared/bench/peers.py (which has no such scenario): starts nodes A and B, sets the peer
up (native, pglogical or cmd, exactly as peers.py does), then runs examples/lagprobe
(open-loop writes on A at a fixed rate, per-change visibility on B) and prints its JSON.

  python3 bench/lag.py native --ver 18 --probe target/release/examples/lagprobe
  python3 bench/lag.py cmd --ver 15 --setup "..." --ab "..." --ba "..." --probe ...
Options: --rate (default 5000 txn/s), --seconds (15), --durable (fsync and
synchronous_commit on), --peers-dir (where peers.py lives).
"""
import argparse, json, os, subprocess, sys, time

import peerlab


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    peerlab.add_peer_args(ap)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--probe", required=True, help="the lagprobe binary")
    a = ap.parse_args()
    peers, pglab, peer = peerlab.start(a, "15")
    res = {"peer": a.peer, "pg": peer.ver, "durable": a.durable}
    try:
        peer.setup()
        for p in (peers.A, peers.B):
            pglab.psql(p, "CREATE INDEX IF NOT EXISTS bench_k ON bench(k)")
        time.sleep(1)
        out = subprocess.run([a.probe, "--a", peers.DSN.format(peers.A), "--b", peers.DSN.format(peers.B),
                              "--rate", str(a.rate), "--seconds", str(a.seconds)],
                             capture_output=True, text=True, timeout=a.seconds + 120)
        if out.stderr.strip():
            print(out.stderr.strip()[-2000:], file=sys.stderr)
        if out.returncode:
            res["lag"] = {"error": out.stderr.strip()[-500:]}
        else:
            res["lag"] = json.loads(out.stdout.strip().splitlines()[-1])
        print("lag", json.dumps(res["lag"]), flush=True)
    finally:
        peer.close()
        pglab.stop("a", peer.ver); pglab.stop("b", peer.ver)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
