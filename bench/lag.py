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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer", choices=["native", "pglogical", "cmd"])
    ap.add_argument("--ver", default=None)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--durable", action="store_true")
    ap.add_argument("--probe", required=True, help="the lagprobe binary")
    ap.add_argument("--peers-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))
    ap.add_argument("--pg-setting", action="append", default=[], help="extra server setting (repeatable)")
    ap.add_argument("--setup"); ap.add_argument("--ab"); ap.add_argument("--ba")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.peers_dir))
    import peers, pglab  # noqa: E402  (the harness's own classes: the same setups)

    cls = {"native": peers.Native, "pglogical": peers.Pglogical, "cmd": peers.Cmd}[a.peer]
    peer = cls(a.ver or {"native": "18", "pglogical": "15", "cmd": "15"}[a.peer], a)
    extra = (list(peers.DURABLE) if a.durable else []) + a.pg_setting
    if a.peer == "pglogical":
        extra += ["shared_preload_libraries='pglogical'", "pglogical.conflict_resolution='last_update_wins'"]
    pglab.start("a", peers.A, peer.ver, extra); pglab.start("b", peers.B, peer.ver, extra)
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
