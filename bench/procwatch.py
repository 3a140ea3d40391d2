#!/usr/bin/env python3
"""Samples CPU seconds and memory of pgmesh sidecars and postgres backends during a benchmark.

usage: procwatch.py PIDDIR OUT.json [interval_s]

pgmesh processes are the pids written into PIDDIR by bench/pgmesh-wrap.sh (one file per
process: <pid> containing its argv); postgres processes are found by /proc/*/cmdline
starting with "postgres:" (backends, walsenders, logical replication workers). Every
interval it reads utime+stime (/proc/<pid>/stat) and VmRSS/VmHWM (/proc/<pid>/status) and
keeps, per pid, the first and last sample. On SIGTERM/SIGINT it writes OUT.json:
  [{pid, kind, cmd, role, first_t, last_t, cpu_s, rss_kb_last, hwm_kb, rss_kb_max}]
where cpu_s is the CPU used while watched (last - first sample, plus the first sample for
processes born after the watcher started).
"""
import json, os, signal, sys, time

piddir, out = sys.argv[1], sys.argv[2]
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2
HZ = os.sysconf("SC_CLK_TCK")
t_start = time.time()
seen = {}
stop = False


def onsig(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, onsig)
signal.signal(signal.SIGINT, onsig)


def read(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        fields = st[st.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / HZ
        start_ticks = int(fields[19])
        ppid = int(fields[1])
        rss = hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return cpu, rss, hwm, start_ticks, ppid
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


while not stop:
    now = time.time()
    pg = {}
    try:
        for name in os.listdir(piddir):
            if name.isdigit():
                pg[int(name)] = "pgmesh"
    except OSError:
        pass
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in pg:
            c = cmdline(int(d))
            if c.startswith("postgres:"):
                pg[int(d)] = "postgres"
    for pid, kind in pg.items():
        r = read(pid)
        if r is None:
            continue
        cpu, rss, hwm, start_ticks, ppid = r
        key = (pid, start_ticks)
        c = cmdline(pid)
        e = seen.get(key)
        if e is None:
            role = ""
            if kind == "pgmesh":
                try:
                    role = open(os.path.join(piddir, str(pid))).read().strip()
                except OSError:
                    pass
            node = ""
            if kind == "postgres":  # which cluster: the postmaster's -D
                pc = cmdline(ppid).split()
                if "-D" in pc[:-1]:
                    node = os.path.basename(pc[pc.index("-D") + 1].rstrip("/"))
            e = seen[key] = {"pid": pid, "kind": kind, "cmd": c, "role": role, "node": node, "first_t": now - t_start,
                             "cpu_first": cpu, "cpu_last": cpu, "rss_kb_max": rss, "hwm_kb": hwm,
                             "rss_kb_last": rss, "new": len(seen) > 0 and now - t_start > 0.5}
        # keep the most informative postgres title (walsender titles change with state)
        if c and ("START_REPLICATION" in c or "logical replication" in c or "walsender" in c):
            e["cmd"] = c
        e["last_t"] = now - t_start
        e["cpu_last"] = cpu
        e["rss_kb_last"] = rss
        e["rss_kb_max"] = max(e["rss_kb_max"], rss)
        e["hwm_kb"] = max(e["hwm_kb"], hwm)
    time.sleep(interval)

res = []
for e in seen.values():
    cpu = e["cpu_last"] - (0 if e["new"] else e["cpu_first"])
    res.append({k: e[k] for k in ("pid", "kind", "cmd", "role", "node", "first_t", "last_t", "rss_kb_last", "rss_kb_max",
                                  "hwm_kb")} | {"cpu_s": round(cpu, 2)})
res.sort(key=lambda e: -e["cpu_s"])
with open(out, "w") as f:
    json.dump(res, f, indent=1)
