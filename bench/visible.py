#!/usr/bin/env python3
"""Big-transaction visibility for one peer, on the same clusters and setups as
../shared/bench/peers.py: with replication running both ways, one transaction on A
inserts --rows rows (and a marker row last); the time from the moment its COMMIT returned
on A until the marker is visible on B is what a reader on B waits for the transaction.
An engine that applies a transaction only after its commit pays decoding and applying
all of it in that time; one that streams it (native `streaming = parallel`, pgmesh's
`[apply] stream_after`) has applied most of it by then.

  python3 bench/visible.py native --ver 18
  python3 bench/visible.py cmd --ver 18 --setup "..." --ab "..." --ba "..."
Options: --rows (default 1000000), --repeat (3, on the same clusters), --durable,
--pg-setting (extra server setting, repeatable), --peers-dir (where peers.py lives). Prints `visible {json}` per transaction and a
summary line.
"""
import argparse, json, os, subprocess, sys, time

import peerlab


class Session:
    """One psql session on A: statements go in, a line comes back when they are done."""
    def __init__(s, port):
        s.p = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                "-d", "postgres", "-v", "ON_ERROR_STOP=1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(s, sql):
        s.p.stdin.write(sql + "\nselect 'done';\n"); s.p.stdin.flush()
        while True:
            line = s.p.stdout.readline()
            if not line:
                raise RuntimeError("psql on A ended: " + sql[:80])
            if line.strip() == "done":
                return

    def close(s):
        s.p.stdin.close(); s.p.wait(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    peerlab.add_peer_args(ap)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    peers, pglab, peer = peerlab.start(a, "18")
    runs = []
    try:
        peer.setup()
        poll = peers._Poller(peers.B)
        sess = Session(peers.A)
        for i in range(a.repeat):
            lo, mid = 20_000_000 + i * a.rows, 100 + i
            t0 = time.time()
            sess.run(f"BEGIN; INSERT INTO bench(id, k, v, node) SELECT g, g, md5(g::text), 'a' "
                     f"FROM generate_series({lo}, {lo + a.rows - 1}) g; "
                     f"INSERT INTO marker(id) VALUES ({mid});")
            t1 = time.time()
            sess.run("COMMIT;")
            t2 = time.time()
            while not poll.has(mid):
                if time.time() - t2 > 900:
                    raise RuntimeError("the marker never reached B")
                time.sleep(0.005)
            t3 = time.time()
            r = {"rows": a.rows, "write_s": round(t1 - t0, 3), "commit_s": round(t2 - t1, 3),
                 "visible_after_commit_s": round(t3 - t2, 3)}
            print("visible", json.dumps(r), flush=True)
            runs.append(r)
        poll.close(); sess.close()
    finally:
        peer.close()
        pglab.stop("a", peer.ver); pglab.stop("b", peer.ver)
    vis = sorted(r["visible_after_commit_s"] for r in runs)
    print(json.dumps({"peer": a.peer, "pg": peer.ver, "durable": a.durable, "rows": a.rows,
                      "visible_after_commit_s": vis, "median_s": vis[len(vis) // 2] if vis else None}))


if __name__ == "__main__":
    main()
