"""Write cost per event in the backlog and live phases of a cluster worker,
from the /metrics samples bench/cluster-live-variants.sh records.

    python3 bench/cluster_live_report.py DIR/*.metrics

The backlog phase is every sample before the node has consumed the first
1,001,016 events (the 1M dataset with its duplicates), the live phase every
sample after; the last sample's consumed offsets give each partition's share.
"""
import re, sys
def load(f):
    rows=[]
    for l in open(f):
        t=l.split()[0]
        def g(name):
            m=re.search(re.escape(name)+r'(?:\{[^}]*\})? ([0-9.e+]+)', l)
            return float(m.group(1)) if m else None
        ev=g('desa_kafka_events_total'); ws=g('desa_postgres_write_seconds_total'); tx=g('desa_postgres_write_transactions_total')
        parts=[float(x) for x in re.findall(r'desa_kafka_consumed_offset\{[^}]*\} ([0-9.e+]+)', l)]
        if ev is not None: rows.append((t,ev,ws,tx,parts))
    return rows
for f in sys.argv[1:]:
    r=load(f)
    back=[x for x in r if x[1] < 1_001_016]
    live=[x for x in r if x[1] >= 1_001_016]
    def rate(a,b,label):
        dev=b[1]-a[1]; dws=b[2]-a[2]; dtx=b[3]-a[3]
        print(f"  {label}: {dev:.0f} events, {dtx:.0f} txns, {dev/max(dtx,1):.0f} ev/txn, {1e6*dws/max(dev,1):.1f} us/event write")
    print(f)
    if len(back)>1: rate(back[0],back[-1],'backlog')
    if len(live)>1: rate(live[0],live[-1],'live')
    if r and r[-1][4]:
        p=r[-1][4]; s=sum(p); print('  partitions (consumed offsets at end):', [int(x) for x in p], ['%.1f%%'%(100*x/s) for x in p])
