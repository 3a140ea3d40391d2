"""What bench/lag.py and bench/visible.py share: the peer arguments of
../shared/bench/peers.py and starting its two nodes with the peer's settings."""
import os, sys


def add_peer_args(ap):
    """The arguments that pick and set up a peer, as peers.py takes them."""
    ap.add_argument("peer", choices=["native", "pglogical", "cmd"])
    ap.add_argument("--ver", default=None)
    ap.add_argument("--durable", action="store_true")
    ap.add_argument("--peers-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))
    ap.add_argument("--pg-setting", action="append", default=[], help="extra server setting (repeatable)")
    ap.add_argument("--setup"); ap.add_argument("--ab"); ap.add_argument("--ba")


def start(a, cmd_ver):
    """Starts nodes A and B for the peer `a` names; returns (peers, pglab, peer).
    `cmd_ver`: the PostgreSQL version of a `cmd` peer when --ver is not given."""
    sys.path.insert(0, os.path.abspath(a.peers_dir))
    import peers, pglab  # noqa: E402  (the harness's own classes: the same setups)

    cls = {"native": peers.Native, "pglogical": peers.Pglogical, "cmd": peers.Cmd}[a.peer]
    peer = cls(a.ver or {"native": "18", "pglogical": "15", "cmd": cmd_ver}[a.peer], a)
    extra = (list(peers.DURABLE) if a.durable else []) + a.pg_setting
    if a.peer == "pglogical":
        extra += ["shared_preload_libraries='pglogical'", "pglogical.conflict_resolution='last_update_wins'"]
    pglab.start("a", peers.A, peer.ver, extra); pglab.start("b", peers.B, peer.ver, extra)
    return peers, pglab, peer
