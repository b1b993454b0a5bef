#!/usr/bin/env python3
"""Replays the queries `desa bench --record` wrote on a peer system loaded
with the same NDJSON file, checks that the peer gives the same answers, and
reports the peer's load rate, bytes per event and query latencies.

    desa bench --events 1000000 --devices 100000 --work-dir W --record W/queries.jsonl
    python3 bench/peers.py --input W/events.ndjson --queries W/queries.jsonl --peer duckdb

Peers: duckdb (pip install duckdb). Each peer is set up as its documentation
recommends for this workload: DuckDB's table is sorted by (type, device_id,
ts) so that its zone maps prune by device and time. Timings are warm (each
query kind runs a quarter as many times before timing, as desa's) and
include no HTTP: they favour the peer.

Exit status 1 when any answer disagrees with desa's (avg to 1e-9 relative,
counts and top-K lists exactly).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict


def close(a, b, rel=1e-9):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


class DuckDB:
    name = "duckdb"

    def __init__(self, path):
        import duckdb

        self.path = path
        self.db = duckdb.connect(path)

    def load(self, ndjson):
        self.db.execute(
            f"""
            CREATE TABLE events AS
            SELECT timestamp::BIGINT AS ts, type, device_id, value::DOUBLE AS value,
                   location.latitude::DOUBLE AS lat, location.longitude::DOUBLE AS lon
            FROM read_json('{ndjson}', format = 'newline_delimited',
                columns = {{device_id: 'VARCHAR', timestamp: 'BIGINT', type: 'VARCHAR',
                            value: 'DOUBLE',
                            location: 'STRUCT(latitude DOUBLE, longitude DOUBLE)'}})
            ORDER BY type, device_id, ts
            """
        )
        self.db.execute("CHECKPOINT")

    def bytes(self):
        return os.path.getsize(self.path)

    def avg(self, p):
        n, a = self.db.execute(
            "SELECT count(*), avg(value) FROM events WHERE type = ? AND device_id = ? AND ts >= ? AND ts < ?",
            [p["type"], p["device_id"], int(p["start"]), int(p["end"])],
        ).fetchone()
        return {"count": n, "avg": a if n else None}

    def topk(self, p):
        rows = self.db.execute(
            """SELECT device_id, count(*) AS n FROM events
               WHERE type = ? AND ts >= ? AND ts < ?
               GROUP BY device_id ORDER BY n DESC, device_id LIMIT ?""",
            [p["type"], int(p["start"]), int(p["end"]), int(p["k"])],
        ).fetchall()
        return {"devices": [{"device_id": d, "count": n} for d, n in rows]}

    def geo(self, p):
        min_lon, max_lon = float(p["min_lon"]), float(p["max_lon"])
        if min_lon <= max_lon:
            lon = "lon BETWEEN ? AND ?"
        else:  # the box crosses the antimeridian
            lon = "(lon >= ? OR lon <= ?)"
        n, a = self.db.execute(
            f"""SELECT count(*), avg(value) FROM events
                WHERE type = ? AND ts >= ? AND ts < ? AND lat BETWEEN ? AND ? AND {lon}""",
            [p["type"], int(p["start"]), int(p["end"]), float(p["min_lat"]),
             float(p["max_lat"]), min_lon, max_lon],
        ).fetchone()
        return {"count": n, "avg": a if n else None}


def agrees(kind, want, got):
    if kind == "topk":
        w = [(d["device_id"], d["count"]) for d in want["devices"]]
        g = [(d["device_id"], d["count"]) for d in got["devices"]]
        return w == g
    return want["count"] == got["count"] and close(want["avg"], got["avg"])


def percentile(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="the NDJSON file desa bench loaded")
    ap.add_argument("--queries", required=True, help="the file desa bench --record wrote")
    ap.add_argument("--peer", default="duckdb", choices=["duckdb"])
    ap.add_argument("--work-dir", default=None, help="where the peer keeps its files")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    args = ap.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="desa-peer-")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "events.duckdb")
    if os.path.exists(path):
        os.remove(path)
    peer = DuckDB(path)
    events = sum(1 for _ in open(args.input, "rb"))
    started = time.perf_counter()
    peer.load(args.input)
    load_secs = time.perf_counter() - started
    print(f"{peer.name}: loaded {events} events in {load_secs:.1f}s = "
          f"{events / load_secs:.0f} events/s, {peer.bytes() / events:.1f} bytes/event")

    recorded = [json.loads(line) for line in open(args.queries)]
    by_label = defaultdict(list)
    for q in recorded:
        by_label[(q["kind"], q["label"])].append(q)
    disagreements = 0
    report = {"peer": peer.name, "events": events, "load_secs": load_secs,
              "bytes_per_event": peer.bytes() / events, "queries": {}}
    for (kind, label), qs in by_label.items():
        run = getattr(peer, kind)
        for q in qs[: max(1, len(qs) // 4)]:  # warm
            run(q["params"])
        lat = []
        for q in qs:
            t = time.perf_counter()
            got = run(q["params"])
            lat.append((time.perf_counter() - t) * 1e3)
            if not agrees(kind, q["answer"], got):
                disagreements += 1
                if disagreements <= 10:
                    print(f"DISAGREE {kind}/{label} {q['params']}: desa {q['answer']} vs {peer.name} {got}")
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        report["queries"][f"{kind}/{label}"] = {"p50_ms": p50, "p99_ms": p99, "n": len(lat)}
        print(f"{kind:>5} {label:<22} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms")
    report["disagreements"] = disagreements
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    if disagreements:
        print(f"{disagreements} answers disagree with desa's", file=sys.stderr)
        sys.exit(1)
    print(f"all {len(recorded)} answers agree with desa's")


if __name__ == "__main__":
    main()
