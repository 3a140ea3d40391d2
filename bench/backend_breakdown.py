#!/usr/bin/env python3
"""Where the CPU of a pgmesh drain goes (issue 15): reads `perf script` output of a
system-wide recording with call graphs and breaks down
 - node B's apply backend (the node-B postgres process that used the most CPU in
   procwatch.py's record: pgmesh's apply session), and
 - node A's walsender (the one that used the most CPU: the one feeding the drain),
putting each sample in the first category (in the order below) that names a function on
its stack: a commit-time read inside an UPDATE counts as a commit-time read, a b-tree
search inside an index insert as an index insert. The sidecar's samples are counted too.

usage: backend_breakdown.py PERF_SCRIPT_TXT PROCS_JSON [node] [--json OUT] [--backend-pid PID]

The apply backend is the busiest node-B postgres process with a sample in a replication
origin function (only pgmesh's apply session calls them; in a lag run the probe's poller
on B is busier than the apply backend), else the busiest; --backend-pid names it.

Apply backend categories, in order:
"""
import collections, json, sys

# (category, function names), by priority.
CATEGORIES = [
    ("commit time/origin reads", {"pg_xact_commit_timestamp_origin", "pg_xact_commit_timestamp",
                                  "TransactionIdGetCommitTsData"}),
    ("row images (to_jsonb)", {"to_jsonb", "datum_to_jsonb", "datum_to_jsonb_internal",
                               "composite_to_jsonb", "jsonb_out", "JsonbToCString"}),
    ("row locks (FOR UPDATE)", {"ExecLockRows", "heap_lock_tuple"}),
    ("planning", {"pg_plan_queries", "standard_planner", "planner", "GetCachedPlan",
                  "BuildCachedPlan"}),
    ("parse/bind", {"exec_parse_message", "exec_bind_message", "pg_parse_query",
                    "parse_analyze_fixedparams", "RevalidateCachedQuery"}),
    ("commit (WAL flush, origin)", {"CommitTransaction", "CommitTransactionCommand",
                                    "PrepareTransaction", "replorigin_session_advance"}),
    ("COPY", {"DoCopy", "CopyFrom"}),
    ("index inserts", {"ExecInsertIndexTuples", "btinsert", "_bt_doinsert"}),
    ("heap writes", {"heap_insert", "heap_update", "heap_delete", "heap_multi_insert",
                     "simple_heap_insert"}),
    ("conflict checks (ON CONFLICT)", {"ExecCheckIndexConstraints", "ExecOnConflictUpdate",
                                       "check_exclusion_or_unique_constraint"}),
    ("triggers", {"ExecARInsertTriggers", "ExecARUpdateTriggers", "ExecARDeleteTriggers",
                  "AfterTriggerEndQuery", "afterTriggerInvokeEvents"}),
    ("key lookups (index scans)", {"ExecIndexScan", "IndexNext", "index_getnext_slot",
                                   "ExecIndexOnlyScan", "_bt_search", "_bt_first"}),
    ("unnest / casts / expressions", {"ExecFunctionScan", "FunctionNext", "array_unnest",
                                      "ExecInterpExpr", "InputFunctionCall"}),
    ("other executor", {"ExecutorRun", "standard_ExecutorRun", "ExecModifyTable", "PortalRun"}),
    ("protocol / network", {"pq_getbyte", "pq_recvbuf", "secure_read", "pq_flush",
                            "internal_flush", "secure_write", "socket_flush", "ReadCommand"}),
]
# The walsender's work is the same for every engine; what differs is how often it sends
# (one send() per output message while the client keeps up) and polls for replies (one
# recv() per WAL record read).
WALSENDER = [
    ("send() of each message", {"socket_flush_if_writable", "internal_flush_buffer",
                                "internal_flush", "secure_write"}),
    ("recv() polling for replies", {"ProcessRepliesIfAny"}),
    ("values as text (output functions)", {"OidOutputFunctionCall", "OutputFunctionCall"}),
    ("pgoutput (other)", {"pgoutput_change", "pgoutput_commit_txn", "pgoutput_begin_txn",
                          "logicalrep_write_tuple"}),
    ("decoding and reassembling WAL", {"XLogSendLogical", "LogicalDecodingProcessRecord",
                                       "ReorderBufferProcessTXN", "XLogReadRecord"}),
]
__doc__ += "\n".join(f"  {c}: {', '.join(sorted(fs))}" for c, fs in CATEGORIES)
__doc__ += "\nWalsender categories, in order:\n"
__doc__ += "\n".join(f"  {c}: {', '.join(sorted(fs))}" for c, fs in WALSENDER)


def busiest_postgres(procs, node, walsender=False):
    cands = [p for p in procs if p["kind"] == "postgres" and p.get("node") == node
             and ("walsender" in p["cmd"]) == walsender]
    cands.sort(key=lambda p: p["cpu_s"], reverse=True)
    return cands[0] if cands else None


ORIGIN_CALLS = {"pg_replication_origin_xact_setup", "replorigin_session_advance",
                "pg_replication_origin_session_setup", "replorigin_session_setup"}


def apply_backend(perf_txt, procs, node):
    """The node's postgres process that calls replication origin functions, the busiest
    such; else the busiest of the node."""
    cands = [p for p in procs if p["kind"] == "postgres" and p.get("node") == node
             and "walsender" not in p["cmd"]]
    cands.sort(key=lambda p: p["cpu_s"], reverse=True)
    for p in cands[:4]:
        if any(ORIGIN_CALLS & set(st) for st in samples(perf_txt, p["pid"])):
            return p
    return cands[0] if cands else None


def samples(path, pid):
    """Stacks (innermost first) of the samples of `pid` in `perf script` text."""
    stack, keep = [], False
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if keep and stack:
                    yield stack
                stack, keep = [], False
                continue
            if not line.startswith("\t"):  # a sample's header: "comm pid/tid"
                parts = line.split()
                # "comm pid/tid ..." or "comm pid ..."
                try:
                    keep = int(parts[1].split("/")[0]) == pid
                except (IndexError, ValueError):
                    keep = False
                continue
            if keep:
                fields = line.split()
                if len(fields) >= 2:
                    stack.append(fields[1].split("+")[0])
    if keep and stack:
        yield stack


def per_process(path):
    """Samples per (comm, pid) of the recording."""
    counts = collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            if line.strip() and not line.startswith("\t"):
                parts = line.split()
                if len(parts) >= 2:
                    counts[(parts[0], parts[1].split("/")[0])] += 1
    return counts


def busiest(counts, top=5):
    """(comm, pid) of the processes with the most samples: the sidecar (tokio threads),
    the walsender and the apply backend side by side."""
    return [(k, n) for k, n in counts.most_common(top + 1) if k[0] != "swapper"][:top]


def sidecar_samples(counts):
    """Samples of pgmesh's threads (the main thread and the tokio workers)."""
    return sum(n for (comm, _), n in counts.items() if comm == "pgmesh" or comm.startswith("tokio-"))


def breakdown(perf_txt, proc, categories):
    """{category: share} of `proc`'s samples, and the sample count."""
    counts = collections.Counter()
    total = 0
    for stack in samples(perf_txt, proc["pid"]):
        total += 1
        frames = set(stack)
        counts[next((c for c, fs in categories if frames & fs), "other")] += 1
    return total, [(cat, n / total) for cat, n in counts.most_common()] if total else []


def main():
    args = sys.argv[1:]
    out_json = None
    if "--json" in args:
        i = args.index("--json")
        out_json = args[i + 1]
        del args[i:i + 2]
    backend_pid = None
    if "--backend-pid" in args:
        i = args.index("--backend-pid")
        backend_pid = int(args[i + 1])
        del args[i:i + 2]
    perf_txt, procs_json = args[0], args[1]
    node = args[2] if len(args) > 2 else "b"
    other = "a" if node == "b" else "b"
    procs = json.load(open(procs_json))
    if backend_pid is not None:
        backend = next((p for p in procs if p["pid"] == backend_pid), None)
    else:
        backend = apply_backend(perf_txt, procs, node)
    if backend is None:
        sys.exit(f"no postgres process of node {node} in {procs_json}")
    total, shares = breakdown(perf_txt, backend, CATEGORIES)
    if not total:
        sys.exit(f"no samples of pid {backend['pid']}")
    counts = per_process(perf_txt)
    top = busiest(counts)
    result = {"sidecar_samples": sidecar_samples(counts),
              "apply_backend": {"pid": backend["pid"], "cpu_s": backend["cpu_s"], "samples": total,
                                "shares": dict(shares)},
              "busiest": [{"comm": c, "pid": int(p), "samples": n} for (c, p), n in top]}
    print(f"apply backend pid {backend['pid']} (node {node}): {backend['cpu_s']:.2f} s CPU, {total} samples")
    print("  busiest processes of the recording (samples; ~1 ms each at 999 Hz):",
          ", ".join(f"{c} {p}: {n}" for (c, p), n in top))
    print(f"  pgmesh sidecar: {result['sidecar_samples']} samples")
    for cat, share in shares:
        print(f"  {100 * share:5.1f} %  {backend['cpu_s'] * share:6.2f} s  {cat}")
    sender = busiest_postgres(procs, other, walsender=True)
    if sender is not None:
        wtotal, wshares = breakdown(perf_txt, sender, WALSENDER)
        if wtotal:
            result["walsender"] = {"pid": sender["pid"], "cpu_s": sender["cpu_s"], "samples": wtotal,
                                   "shares": dict(wshares)}
            print(f"walsender pid {sender['pid']} (node {other}): {sender['cpu_s']:.2f} s CPU, {wtotal} samples")
            for cat, share in wshares:
                print(f"  {100 * share:5.1f} %  {sender['cpu_s'] * share:6.2f} s  {cat}")
    if out_json:
        with open(out_json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
