#!/usr/bin/env python3
"""Samples which of the replication processes are runnable (state R) every ~2 ms.

usage: statesample.py PIDDIR OUT.json  (PIDDIR as for procwatch.py; stop with SIGTERM)
Classes: pgmesh_ab/pgmesh_ba (any thread R), walsender_a/b, backend_b (other backends on b).
Writes {samples, secs, counts: {"class+class": n}} for the sets running together.
"""
import os, sys, time, json, signal
piddir, out = sys.argv[1], sys.argv[2]
stop=False
def h(*_):
    global stop; stop=True
signal.signal(signal.SIGTERM,h)
def rd(p, f):
    try: return open(f"/proc/{p}/{f}","rb").read()
    except OSError: return None
cls={}
last_scan=0
t0=time.time()
counts={}
n=0
while not stop:
    now=time.time()
    if now-last_scan>0.2:
        last_scan=now
        cur={}
        for d in os.listdir('/proc'):
            if not d.isdigit(): continue
            c=rd(d,'cmdline')
            if not c: continue
            c=c.replace(b'\0',b' ').decode(errors='replace')
            if os.path.exists(os.path.join(piddir,d)):
                r=open(os.path.join(piddir,d)).read()
                cur[d]='pgmesh_ab' if r.strip().endswith('b') else 'pgmesh_ba'
            elif c.startswith('postgres:'):
                st=rd(d,'stat')
                if not st: continue
                ppid=st[st.rindex(b')')+2:].split()[1].decode()
                pc=(rd(ppid,'cmdline') or b'').replace(b'\0',b' ').decode()
                node='a' if '/a' in pc.split('-D')[-1] else 'b'
                if 'walsender' in c: cur[d]='walsender_'+node
                elif node=='b' and ('idle in transaction' in c or 'INSERT' in c or 'SELECT' in c or 'idle' in c): cur[d]='backend_b'
        cls=cur
    running=set()
    for p,k in cls.items():
        if k.startswith('pgmesh'):
            try: tids=os.listdir(f"/proc/{p}/task")
            except OSError: continue
            for t in tids:
                st=rd(p,f'task/{t}/stat')
                if st and st[st.rindex(b')')+2:st.rindex(b')')+3]==b'R': running.add(k); break
            continue
        st=rd(p,'stat')
        if st and st[st.rindex(b')')+2:st.rindex(b')')+3]==b'R': running.add(k)
    if running:
        key='+'.join(sorted(running))
        counts[key]=counts.get(key,0)+1
    n+=1
    time.sleep(0.002)
json.dump({'samples':n,'secs':time.time()-t0,'counts':counts},open(out,'w'),indent=1)
