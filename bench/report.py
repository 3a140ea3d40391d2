#!/usr/bin/env python3
"""Collects scripts/bench.sh results into one JSON file and prints the markdown table.

  report.py add RESULTS NAME PEERS_LOG PROCS_JSON RC SECONDS CMD
  report.py decoder RESULTS CRITERION_DIR
  report.py decode_only RESULTS PG OUTPUT
  report.py finish RESULTS OUT WORKDIR
  report.py table OUT
"""
import glob, json, os, platform, subprocess, sys


def load(p):
    with open(p) as f:
        return json.load(f)


def save(p, d):
    with open(p, "w") as f:
        json.dump(d, f, indent=1)
        f.write("\n")


def last_json(path, key):
    found = None
    try:
        for line in open(path):
            line = line.strip()
            if line.startswith("{") and key in line:
                try:
                    found = json.loads(line)
                except ValueError:
                    pass
    except OSError:
        pass
    return found


def add(res_p, name, log, procs_p, rc, secs, cmd, load_p=None):
    res = load(res_p)
    r = last_json(log, '"peer"') or {}
    if not r:  # peers.py died before its summary: keep the per-scenario lines
        for line in open(log):
            k, _, rest = line.partition(" ")
            if k in ("catchup", "bulk", "converge", "lag") and rest.startswith("{"):
                r[k] = json.loads(rest)
    r["exit_code"] = int(rc)
    r["wall_s"] = int(secs)
    r["command"] = cmd
    if load_p:
        try:
            b0, t0, b1, t1, la = open(load_p).read().split()
            r["machine_busy_pct"] = round(100 * (float(b1) - float(b0)) / (float(t1) - float(t0)), 1)
            r["loadavg_1m_end"] = float(la)
        except (OSError, ValueError, ZeroDivisionError):
            pass
    # CPU used by processes that are not part of this benchmark (e.g. someone else's build)
    try:
        ours = sum(p["cpu_s"] for p in load(procs_p))
        r["cpu_s_pgmesh_and_postgres"] = round(ours, 1)
    except (OSError, ValueError):
        pass
    try:
        procs = load(procs_p)
    except (OSError, ValueError):
        procs = []
    mesh = sorted((p for p in procs if p["kind"] == "pgmesh" and " run " in " " + p["role"] + " "),
                  key=lambda p: p["first_t"])
    r["pgmesh_procs"] = [{"role": "run --node " + p["role"].split()[-1],
                          "cpu_s": p["cpu_s"], "peak_rss_mb": round(p["hwm_kb"] / 1024, 1),
                          "started_s": round(p["first_t"], 1), "alive_s": round(p["last_t"] - p["first_t"], 1)} for p in mesh]
    r["postgres_top_cpu"] = [{"node": p.get("node", ""), "cmd": p["cmd"][:90], "cpu_s": p["cpu_s"]}
                             for p in procs if p["kind"] == "postgres"][:6]
    res[name] = r
    save(res_p, res)


def decoder(res_p, crit):
    res = load(res_p)
    out = {}
    for est in sorted(glob.glob(f"{crit}/pgoutput_*/*/new/estimates.json")):
        d = os.path.dirname(est)
        group, bench = d.split(os.sep)[-3], d.split(os.sep)[-2]
        e = load(est)
        b = load(os.path.join(d, "benchmark.json"))
        ns = e["mean"]["point_estimate"]
        tp = b.get("throughput") or {}
        row = out.setdefault(group, {})
        if "Bytes" in tp:
            row["bytes_per_iter"] = tp["Bytes"]
            row["time_ns_bytes"] = round(ns, 1)
            row["MB_per_s"] = round(tp["Bytes"] / ns * 1e3, 1)
        if "Elements" in tp:
            row["msgs_per_iter"] = tp["Elements"]
            row["time_ns_messages"] = round(ns, 1)
            row["Mmsgs_per_s"] = round(tp["Elements"] / ns * 1e3, 2)
    res["decoder"] = out
    save(res_p, res)


def batcher(res_p, crit):
    """Criterion results of benches/batcher.rs: mean time and elements per second."""
    res = load(res_p)
    out = {}
    for est in sorted(glob.glob(f"{crit}/batcher/*/new/estimates.json")
                      + glob.glob(f"{crit}/statement_text_*/new/estimates.json")):
        d = os.path.dirname(est)
        parts = d.split(os.sep)
        name = parts[-3] + "/" + parts[-2] if parts[-3] == "batcher" else parts[-2]
        ns = load(est)["mean"]["point_estimate"]
        tp = load(os.path.join(d, "benchmark.json")).get("throughput") or {}
        row = {"time_us": round(ns / 1e3, 2)}
        if "Elements" in tp:
            row["M_per_s"] = round(tp["Elements"] / ns * 1e3, 2)
        out[name] = row
    res["batcher"] = out
    save(res_p, res)


def decode_only(res_p, pg, outp):
    res = load(res_p)
    res.setdefault("decode_only", {})[pg] = last_json(outp, "ratio_pgmesh_over_pg_recvlogical") or {"error": "no result line"}
    save(res_p, res)


def profile(res_p, work, changes_json):
    """bench/profile.sh's breakdowns (PROFILE_PERF=backend): per scenario, CPU seconds per
    100k changes of the walsender on A, the apply backend on B and the sidecar, and the
    share of each category in the first two."""
    res = load(res_p)
    out = {}
    for scen, changes in json.loads(changes_json).items():
        p = os.path.join(work, f"{scen}.breakdown.json")
        if not os.path.exists(p):
            out[scen] = {"error": f"no breakdown ({p})"}
            continue
        b = load(p)
        per = 100000 / changes
        row = {"changes": changes,
               "sidecar_cpu_s_per_100k": round(b["sidecar_samples"] / 999 * per, 3)}
        for proc in ("apply_backend", "walsender"):
            if proc in b:
                row[proc] = {"cpu_s_per_100k": round(b[proc]["cpu_s"] * per, 3),
                             "shares": {k: round(v, 3) for k, v in b[proc]["shares"].items()}}
        out[scen] = row
    res["profile"] = out
    save(res_p, res)


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def finish(res_p, out, work):
    res = load(res_p)
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.1f\", $2/1048576}' /proc/meminfo")
    res["machine"] = {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": float(mem or 0),
                      "kernel": platform.release(), "rustc": sh("rustc --version")}
    res["git"] = sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -uno") else "")
    res["date_utc"] = os.path.basename(out).removesuffix(".json")
    res["logs"] = work
    save(out, res)


def fmt(x):
    return f"{x:,}" if isinstance(x, (int, float)) else str(x)


def cell(r, scen, key):
    s = (r or {}).get(scen)
    if s is None:
        return "–"
    if "error" in s:
        e = s["error"]
        return "no: timed out (" + e + ")" if "never arrived" in e else "FAILED: " + e[:80]
    if key == "converged":
        return "yes" if s["converged"] else f"NO ({s['rows_differing']} rows differ)"
    return fmt(s.get(key, "?"))


def ratio(a, b, scen, key):
    try:
        return f"{a[scen][key] / b[scen][key]:.2f}×"
    except (KeyError, TypeError, ZeroDivisionError):
        return "–"


def runs(res, name):
    """The main runs of one peer: `name`, `name_run2`, `name_run3`, ..."""
    out = [res[name]] if name in res else []
    i = 2
    while f"{name}_run{i}" in res:
        out.append(res[f"{name}_run{i}"])
        i += 1
    return out


def spread(vals, digits=0):
    """median [min-max] of the numbers in `vals`."""
    vals = sorted(v for v in vals if isinstance(v, (int, float)))
    if not vals:
        return "–", None
    n = len(vals)
    med = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    f = (lambda x: f"{x:,.{digits}f}")
    text = f(med) if n == 1 else f"{f(med)} [{f(vals[0])}–{f(vals[-1])}]"
    return text, med


def per_100k(s, key, count):
    try:
        return s[key] / s[count] * 100_000
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def same_major(res):
    """Medians and spread over the repeated runs, pgmesh against the peer on the same
    PostgreSQL major version (issue 15): throughput and CPU per 100k changes."""
    pairs = [("pgmesh18", "native18"), ("pgmesh15", "pglogical15")]
    rows = []
    for m, base in pairs:
        for n in (base, m):
            rs = runs(res, n)
            if not rs:
                continue
            c = [r.get("catchup", {}) for r in rs]
            b = [r.get("bulk", {}) for r in rs]
            cells = [spread([x.get("txn_per_s") for x in c]),
                     spread([per_100k(x, "apply_cpu_s", "txns") for x in c], 2),
                     spread([per_100k(x, "decode_cpu_s", "txns") for x in c], 2),
                     spread([x.get("rows_per_s") for x in b]),
                     spread([per_100k(x, "apply_cpu_s", "rows") for x in b], 2)]
            rows.append((n, len(rs), cells))
    if not rows:
        return
    print()
    print("| same major, medians [min–max] | runs | catch-up txn/s | catch-up apply CPU s / 100k | "
          "catch-up decode CPU s / 100k | bulk rows/s | bulk apply CPU s / 100k rows |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    med = {}
    for n, k, cells in rows:
        med[n] = [c[1] for c in cells]
        print(f"| {n} | {k} | " + " | ".join(c[0] for c in cells) + " |")
    for m, base in pairs:
        if m in med and base in med:
            q = []
            for a, b in zip(med[m], med[base]):
                q.append(f"{a / b:.2f}×" if a is not None and b else "–")
            print(f"| **{m} / {base}** (ratio of medians) | | " + " | ".join(q) + " |")


def profile_tables(prof):
    scens = [s for s, r in prof.items() if "error" not in r]
    if not scens:
        return
    print()
    print("| profile, PG18 (`bench/profile.sh`), CPU s per 100k changes | " + " | ".join(scens) + " |")
    print("|---|" + "---:|" * len(scens))
    for proc, label in (("walsender", "walsender on A (decoding; the same work for every engine)"),
                        ("apply_backend", "apply backend on B")):
        print(f"| {label} | " + " | ".join(fmt(prof[s].get(proc, {}).get("cpu_s_per_100k")) for s in scens) + " |")
    print("| pgmesh sidecar | " + " | ".join(fmt(prof[s]["sidecar_cpu_s_per_100k"]) for s in scens) + " |")
    for proc, label in (("apply_backend", "apply backend"), ("walsender", "walsender")):
        cats = []
        for s in scens:
            for c in prof[s].get(proc, {}).get("shares", {}):
                if c not in cats:
                    cats.append(c)
        print()
        print(f"| {label}, share of samples | " + " | ".join(scens) + " |")
        print("|---|" + "---:|" * len(scens))
        for c in cats:
            vals = [prof[s].get(proc, {}).get("shares", {}).get(c) for s in scens]
            print(f"| {c} | " + " | ".join("–" if v is None else f"{100 * v:.1f} %" for v in vals) + " |")


def main_tables(res, names):
    print()
    print("| run | PG | catch-up txn/s | bulk rows/s | bulk, one big txn, rows/s | converge | "
          "pgmesh A->B CPU s (catch-up drain / bulk+converge / big txn) | pgmesh peak RSS MB (big txn) | machine busy % |")
    print("|---|---|---:|---:|---:|---|---|---:|---:|")
    for n in names:
        r, big = res.get(n, {}), res.get(n + "_bigtxn", {})
        procs = [p for p in r.get("pgmesh_procs", []) if p["role"].endswith("b")]
        bprocs = [p for p in big.get("pgmesh_procs", []) if p["role"].endswith("b")]
        cpus = [str(p["cpu_s"]) for p in procs[1:]] + [str(p["cpu_s"]) for p in bprocs[1:]]
        cpu = " / ".join(cpus) if cpus else "–"
        rss = max((p["peak_rss_mb"] for p in r.get("pgmesh_procs", [])), default="–")
        brss = max((p["peak_rss_mb"] for p in big.get("pgmesh_procs", [])), default=None)
        if brss is not None:
            rss = f"{rss} ({brss})"
        print(f"| {n} | {r.get('pg', '?')} | {cell(r, 'catchup', 'txn_per_s')} | {cell(r, 'bulk', 'rows_per_s')} | "
              f"{cell(big, 'bulk', 'rows_per_s') if big else '–'} | "
              f"{cell(r, 'converge', 'converged')} | {cpu} | {rss} | {r.get('machine_busy_pct', '?')} |")
    print()
    print("| ratio | catch-up | bulk | bulk, one big txn |")
    print("|---|---:|---:|---:|")
    # Only the same PostgreSQL major version: across versions the ratio measures PostgreSQL.
    for m, base in (("pgmesh18", "native18"), ("pgmesh15", "pglogical15")):
        if m in res and base in res:
            print(f"| {m} / {base} | {ratio(res[m], res[base], 'catchup', 'txn_per_s')} | "
                  f"{ratio(res[m], res[base], 'bulk', 'rows_per_s')} | "
                  f"{ratio(res.get(m + '_bigtxn', {}), res.get(base + '_bigtxn', {}), 'bulk', 'rows_per_s')} |")


def table(out):
    res = load(out)
    same_major(res)
    names = [n for n in ("native18", "pglogical15", "pgmesh15", "pgmesh18")
             if n in res or n + "_bigtxn" in res]
    if names:
        main_tables(res, names)
    dur = [n for n in ("native18", "pglogical15", "pgmesh15", "pgmesh18") if n + "_durable" in res]
    if dur:
        print()
        print("| durable (fsync, synchronous_commit, full_page_writes on) | catch-up txn/s | bulk rows/s |")
        print("|---|---:|---:|")
        for n in dur:
            r = res[n + "_durable"]
            print(f"| {n} | {cell(r, 'catchup', 'txn_per_s')} | {cell(r, 'bulk', 'rows_per_s')} |")
        for m, base in (("pgmesh18", "native18"), ("pgmesh15", "pglogical15")):
            if m in dur and base in dur:
                a, b = res[m + "_durable"], res[base + "_durable"]
                print(f"| ratio {m} / {base} | {ratio(a, b, 'catchup', 'txn_per_s')} | {ratio(a, b, 'bulk', 'rows_per_s')} |")
    lag = sorted(((n, s) for n in ("native18", "pglogical15", "pgmesh15", "pgmesh18")
                  for s in res if s.startswith(n + "_lag")), key=lambda x: x[1])
    lag = [(n, s[len(n):]) for n, s in lag]
    if lag:
        print()
        print("| steady lag (commit on A to visible on B) | offered / achieved txn/s | p50 ms | p90 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for n, suf in lag:
            r = res[n + suf].get("lag", {})
            label = n + (" (durable)" if suf.endswith("_durable") else "")
            if "error" in r:
                print(f"| {label} | FAILED: {r['error'][:80]} | | | | |")
                continue
            print(f"| {label} | {fmt(r.get('offered_txn_per_s'))} / {fmt(r.get('achieved_txn_per_s'))} | "
                  f"{r.get('lag_ms_p50')} | {r.get('lag_ms_p90')} | {r.get('lag_ms_p99')} | {r.get('lag_ms_max')} |")
    vis = [(n, suf) for suf in ("_visible", "_visible8mb")
           for n in ("native18", "pglogical15", "pgmesh15", "pgmesh18") if n + suf in res]
    if vis:
        print()
        print("| big transaction, commit on A to visible on B | streaming from | rows | runs s | median s | pgmesh peak RSS MB |")
        print("|---|---|---:|---|---:|---:|")
        for n, suf in vis:
            r = res[n + suf]
            at = "8MB" if suf == "_visible8mb" else "64MB (default)"
            if n in ("pglogical15", "pgmesh15"):
                at = "– (whole transactions)"
            rss = max((p["peak_rss_mb"] for p in r.get("pgmesh_procs", [])), default="–")
            runs = ", ".join(str(x) for x in r.get("visible_after_commit_s", [])) or f"FAILED (exit {r.get('exit_code')})"
            print(f"| {n} | {at} | {fmt(r.get('rows'))} | {runs} | {r.get('median_s', '–')} | {rss} |")
    if res.get("profile"):
        profile_tables(res["profile"])
    if res.get("decoder"):
        print()
        print("| decoder group | bytes/iter | MB/s | Mmsg/s |")
        print("|---|---:|---:|---:|")
        for g, d in res["decoder"].items():
            print(f"| {g} | {fmt(d.get('bytes_per_iter'))} | {fmt(d.get('MB_per_s'))} | {d.get('Mmsgs_per_s')} |")
    if res.get("batcher"):
        print()
        print("| batcher / statement bench | time µs | M changes/s |")
        print("|---|---:|---:|")
        for n, d in res["batcher"].items():
            print(f"| {n} | {d.get('time_us')} | {d.get('M_per_s', '–')} |")
    if res.get("decode_only"):
        print()
        print("| decode-only drain | txns | pg_recvlogical s | pgmesh tail --output none s | pgmesh / pg_recvlogical speed |")
        print("|---|---:|---:|---:|---:|")
        for pg, d in sorted(res["decode_only"].items()):
            if "error" in d:
                print(f"| PG{pg} | FAILED | | | |")
                continue
            print(f"| PG{pg} | {fmt(d['txns'])} | {d['pg_recvlogical_s']:.2f} | {d['pgmesh_decode_only_s']:.2f} | "
                  f"{d['ratio_pgmesh_over_pg_recvlogical']:.2f}× |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"add": add, "profile": profile, "decoder": decoder, "batcher": batcher, "decode_only": decode_only, "finish": finish,
     "table": table}[cmd](*args)
