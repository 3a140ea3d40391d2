#!/usr/bin/env python3
"""Where node B's apply backend spends its CPU (issue 15): reads `perf script` output of a
system-wide recording with call graphs, keeps the samples of one postgres process (the
node-B backend that used the most CPU in procwatch.py's record: pgmesh's apply session)
and puts each sample in the first category (in the order below) that names a function on
its stack: a commit-time read inside an UPDATE counts as a commit-time read, a b-tree
search inside an index insert as an index insert.

usage: backend_breakdown.py PERF_SCRIPT_TXT PROCS_JSON [node]

Categories, in order:
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
__doc__ += "\n".join(f"  {c}: {', '.join(sorted(fs))}" for c, fs in CATEGORIES)


def apply_backend(procs, node):
    cands = [p for p in procs if p["kind"] == "postgres" and p.get("node") == node]
    cands.sort(key=lambda p: p["cpu_s"], reverse=True)
    return cands[0]["pid"] if cands else None


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


def busiest(path, top=5):
    """(comm, pid) of the processes with the most samples: the sidecar (tokio threads),
    the walsender and the apply backend side by side."""
    counts = collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            if line.strip() and not line.startswith("\t"):
                parts = line.split()
                if len(parts) >= 2:
                    counts[(parts[0], parts[1].split("/")[0])] += 1
    return [(k, n) for k, n in counts.most_common(top + 1) if k[0] != "swapper"][:top]


def main():
    perf_txt, procs_json = sys.argv[1], sys.argv[2]
    node = sys.argv[3] if len(sys.argv) > 3 else "b"
    procs = json.load(open(procs_json))
    pid = apply_backend(procs, node)
    if pid is None:
        sys.exit(f"no postgres process of node {node} in {procs_json}")
    cpu = next(p["cpu_s"] for p in procs if p["pid"] == pid)
    counts = collections.Counter()
    total = 0
    for stack in samples(perf_txt, pid):
        total += 1
        frames = set(stack)
        counts[next((c for c, fs in CATEGORIES if frames & fs), "other")] += 1
    if not total:
        sys.exit(f"no samples of pid {pid}")
    print(f"apply backend pid {pid} (node {node}): {cpu:.2f} s CPU, {total} samples")
    print("  busiest processes of the recording (samples; ~1 ms each at 999 Hz):",
          ", ".join(f"{c} {p}: {n}" for (c, p), n in busiest(perf_txt)))
    for cat, n in counts.most_common():
        print(f"  {100 * n / total:5.1f} %  {cpu * n / total:6.2f} s  {cat}")


if __name__ == "__main__":
    main()
