#!/usr/bin/env python3
"""Replays the queries `desa bench --record` wrote on a peer system loaded
with the same NDJSON file, checks that the peer gives the same answers, and
reports the peer's load rate, bytes per event and query latencies.

    desa bench --events 1000000 --devices 100000 --work-dir W --record W/queries.jsonl
    python3 bench/peers.py --input W/events.ndjson --queries W/queries.jsonl --peer duckdb

Peers, each set up as its documentation recommends for this workload:
- duckdb (pip install duckdb): one table sorted by (type, device_id, ts), so
  that its min-max zone maps skip row groups by device and time;
- chdb (pip install chdb, ClickHouse embedded): a MergeTree ordered by
  (type, device_id, ts), whose sparse primary index and granules prune the
  same way; sums with sumKahan so that long sums stay within 1e-9;
- postgres (PostgreSQL's server binaries from the Debian package, psycopg
  from pip): a throwaway server started in the work dir; rows loaded with
  COPY in one transaction, then a btree on (type, device_id, ts) INCLUDE
  (value) for avg, a btree on (type, ts) for top-K, a GiST index on
  point(lon, lat) for boxes, and ANALYZE.
Peak resident memory is this process's (DuckDB and chDB run inside it; the
Python interpreter is included) or, for PostgreSQL, the server's processes'
summed proportional set size, sampled every half second through the load and
the queries.
Timings are warm (each query kind runs a quarter as many times before
timing, as desa's) and include no HTTP: they favour the peer. With --reuse
the peer opens what an earlier run loaded into --work-dir instead of loading;
with --cold (which needs --reuse, and root) it then drops the kernel's page
cache and times the queries with no warm-up, in a fresh process: the peer's
own caches (DuckDB's buffer pool, PostgreSQL's shared buffers, restarted)
start empty as well.
With --at-most N only the first N recorded queries of each kind and window
are timed (a quarter of N warm it up): for a peer whose slowest rows would
take hours; the report keeps the number timed per row.

Exit status 1 when any answer disagrees with desa's (avg to 1e-9 relative,
counts and top-K lists exactly).
"""

import argparse
import json
import os
import statistics
import sys
import resource
import tempfile
import threading
import time
from collections import defaultdict


def close(a, b, rel=1e-9):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


class DuckDB:
    name = "duckdb"

    def __init__(self, path, reuse=False):
        import duckdb

        self.path = path
        self.db = duckdb.connect(path)

    def load(self, ndjson, read=lambda: None):
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
        read()
        self.db.execute("CHECKPOINT")

    def bytes(self):
        return os.path.getsize(self.path)

    def peak_resident(self):
        return own_peak_resident()

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


def quote(s):
    return "'" + str(s).replace("\\", "\\\\").replace("'", "\\'") + "'"


def own_peak_resident():
    """Peak resident memory of this process, bytes: an embedded peer's engine
    and the Python around it (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TreeMemory:
    """The peak memory of a server and its child processes, sampled every half
    second: the sum of their proportional set sizes, so that shared buffers
    mapped by every backend count once."""

    def __init__(self, root_pid):
        self.root, self.peak = root_pid, 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            self.sample()
            time.sleep(0.5)

    def sample(self):
        pids = [self.root]
        for p in os.listdir("/proc"):
            try:
                stat = open(f"/proc/{p}/stat").read() if p.isdigit() else ""
            except OSError:
                continue
            # The parent pid is the second field after the command's ")".
            if stat and int(stat[stat.rfind(")") + 2:].split()[1]) == self.root:
                pids.append(int(p))
        total = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    total += sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            except OSError:
                pass
        self.peak = max(self.peak, total)
        return self.peak


def bytes_read():
    """Bytes this process has read through read() and the like, all threads."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


class LoadProgress:
    """A progress bar on stderr while a peer loads: the share of the input
    this process has read so far (every peer reads the file in this
    process), then the time spent since, while the peer sorts, merges or
    builds its indexes; and the bytes the peer has stored so far. A peer
    whose reads do not show in /proc/self/io (chDB maps the file) gets the
    elapsed time and the bytes stored only."""

    def __init__(self, name, size, stored_path):
        self.name, self.size, self.stored_path = name, max(1, size), stored_path
        self.started, self.base = time.perf_counter(), bytes_read()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        read_at = None
        while not self.stop.wait(1.0):
            elapsed = time.perf_counter() - self.started
            share = min(1.0, (bytes_read() - self.base) / self.size)
            if share >= 1.0 and read_at is None:
                read_at = elapsed
            stored = f"{du(self.stored_path) / 2**20:,.0f} MiB stored"
            if share < 0.01 and read_at is None:
                line = f"{self.name} load: {elapsed:.0f} s, {stored}"
            else:
                bar = "#" * int(share * 30)
                then = "" if read_at is None else f", then {elapsed - read_at:.0f} s sorting and indexing"
                line = (f"{self.name} load [{bar:<30}] {share:4.0%} of the input read"
                        f" in {min(elapsed, read_at or elapsed):.0f} s{then}, {stored}")
            sys.stderr.write(f"\r{line}   ")
            sys.stderr.flush()

    def close(self):
        self.stop.set()
        self.thread.join()
        sys.stderr.write("\n")


def du(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


class ChDB:
    name = "chdb"

    def __init__(self, path, reuse=False):
        from chdb import session

        self.path = path
        self.s = session.Session(path)

    def q(self, sql):
        return [line.split("\t") for line in str(self.s.query(sql, "TabSeparated")).splitlines()]

    def load(self, ndjson, read=lambda: None):
        self.s.query(
            """CREATE TABLE events (ts Int64, type String, device_id String, value Float64,
                                    lat Float64, lon Float64)
               ENGINE = MergeTree ORDER BY (type, device_id, ts)"""
        )
        self.s.query(
            f"""INSERT INTO events
                SELECT timestamp, type, device_id, value, location.latitude, location.longitude
                FROM file({quote(ndjson)}, 'JSONEachRow',
                  'device_id String, timestamp Int64, type String, value Float64,
                   location Tuple(latitude Float64, longitude Float64)')
                SETTINGS input_format_skip_unknown_fields = 1"""
        )
        read()
        self.s.query("OPTIMIZE TABLE events FINAL")

    def bytes(self):
        return du(self.path)

    def peak_resident(self):
        return own_peak_resident()

    def count_avg(self, where):
        n, s = self.q(f"SELECT count(), sumKahan(value) FROM events WHERE {where}")[0]
        n = int(n)
        return {"count": n, "avg": float(s) / n if n else None}

    def avg(self, p):
        return self.count_avg(
            f"type = {quote(p['type'])} AND device_id = {quote(p['device_id'])} "
            f"AND ts >= {int(p['start'])} AND ts < {int(p['end'])}"
        )

    def topk(self, p):
        rows = self.q(
            f"""SELECT device_id, count() AS n FROM events
                WHERE type = {quote(p['type'])} AND ts >= {int(p['start'])} AND ts < {int(p['end'])}
                GROUP BY device_id ORDER BY n DESC, device_id LIMIT {int(p['k'])}"""
        )
        return {"devices": [{"device_id": d, "count": int(n)} for d, n in rows]}

    def geo(self, p):
        min_lon, max_lon = float(p["min_lon"]), float(p["max_lon"])
        op = "AND" if min_lon <= max_lon else "OR"  # OR: across the antimeridian
        return self.count_avg(
            f"type = {quote(p['type'])} AND ts >= {int(p['start'])} AND ts < {int(p['end'])} "
            f"AND lat >= {float(p['min_lat'])!r} AND lat <= {float(p['max_lat'])!r} "
            f"AND (lon >= {min_lon!r} {op} lon <= {max_lon!r})"
        )


class Postgres:
    """A throwaway PostgreSQL server in the work dir, stopped at exit."""

    name = "postgres"

    def __init__(self, path, reuse=False):
        import glob
        import shutil
        import socket
        import subprocess

        import psycopg

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            sys.exit("postgres peer: no server binaries (apt-get install postgresql)")
        self.bin = os.path.dirname(bins[-1])
        self.data = os.path.join(path, "pgdata")
        if not reuse:
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if as_user and not reuse:
            shutil.chown(path, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        run = lambda *a: subprocess.run(as_user + list(a), check=True, stdout=subprocess.DEVNULL)
        if not reuse:
            run(f"{self.bin}/initdb", "-D", self.data, "-A", "trust", "-U", "bench")
        run(f"{self.bin}/pg_ctl", "-D", self.data, "-l", os.path.join(path, "log"), "-w", "-o",
            f"-p {self.port} -k {path} -c listen_addresses=127.0.0.1 -c shared_buffers=2GB "
            "-c work_mem=256MB -c maintenance_work_mem=1GB -c max_wal_size=8GB", "start")
        self.stop = lambda: run(f"{self.bin}/pg_ctl", "-D", self.data, "-m", "fast", "stop")
        import atexit

        atexit.register(self.stop)
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.memory = TreeMemory(int(f.readline()))
        self.db = psycopg.connect(f"host=127.0.0.1 port={self.port} user=bench dbname=postgres",
                                  autocommit=True)

    def load(self, ndjson, read=lambda: None):
        with self.db.transaction():
            self.db.execute("CREATE UNLOGGED TABLE raw (j jsonb)")
            with self.db.cursor().copy(
                "COPY raw FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
            ) as cp:
                with open(ndjson, "rb") as f:
                    while chunk := f.read(1 << 20):
                        cp.write(chunk)
            read()
            self.db.execute(
                """CREATE TABLE events AS
                   SELECT (j->>'timestamp')::bigint AS ts, j->>'type' AS type,
                          j->>'device_id' AS device_id, (j->>'value')::float8 AS value,
                          (j->'location'->>'latitude')::float8 AS lat,
                          (j->'location'->>'longitude')::float8 AS lon
                   FROM raw"""
            )
            self.db.execute("DROP TABLE raw")
            self.db.execute("CREATE INDEX ON events (type, device_id, ts) INCLUDE (value)")
            self.db.execute("CREATE INDEX ON events (type, ts)")
            self.db.execute("CREATE INDEX ON events USING gist (point(lon, lat))")
        self.db.execute("VACUUM ANALYZE events")

    def bytes(self):
        return self.db.execute("SELECT pg_total_relation_size('events')").fetchone()[0]

    def peak_resident(self):
        return self.memory.sample()

    def count_avg(self, where, args):
        n, a = self.db.execute(f"SELECT count(*), avg(value) FROM events WHERE {where}", args).fetchone()
        return {"count": n, "avg": a if n else None}

    def avg(self, p):
        return self.count_avg(
            "type = %s AND device_id = %s AND ts >= %s AND ts < %s",
            [p["type"], p["device_id"], int(p["start"]), int(p["end"])],
        )

    def topk(self, p):
        rows = self.db.execute(
            """SELECT device_id, count(*) AS n FROM events
               WHERE type = %s AND ts >= %s AND ts < %s
               GROUP BY device_id ORDER BY n DESC, device_id COLLATE "C" LIMIT %s""",
            [p["type"], int(p["start"]), int(p["end"]), int(p["k"])],
        ).fetchall()
        return {"devices": [{"device_id": d, "count": n} for d, n in rows]}

    def geo(self, p):
        min_lon, max_lon = float(p["min_lon"]), float(p["max_lon"])
        boxes = [(min_lon, max_lon)] if min_lon <= max_lon else [(min_lon, 180.0), (-180.0, max_lon)]
        # point <@ box uses the GiST index; boxes are inclusive, like desa's
        inside = " OR ".join(["point(lon, lat) <@ box(point(%s, %s), point(%s, %s))"] * len(boxes))
        args = [p["type"], int(p["start"]), int(p["end"])]
        for lo, hi in boxes:
            args += [lo, float(p["min_lat"]), hi, float(p["max_lat"])]
        return self.count_avg(f"type = %s AND ts >= %s AND ts < %s AND ({inside})", args)


PEERS = {"duckdb": DuckDB, "chdb": ChDB, "postgres": Postgres}


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
    ap.add_argument("--peer", default="duckdb", choices=sorted(PEERS))
    ap.add_argument("--work-dir", default=None, help="where the peer keeps its files")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    ap.add_argument("--reuse", action="store_true",
                    help="open what an earlier run loaded into --work-dir instead of loading")
    ap.add_argument("--at-most", type=int, default=None, metavar="N",
                    help="time only the first N recorded queries of each kind and window")
    ap.add_argument("--events", type=int, default=None,
                    help="with --reuse: the number of events loaded (the input is then not read)")
    ap.add_argument("--cold", action="store_true",
                    help="with --reuse: drop the page cache (root), then time with no warm-up")
    ap.add_argument("--remove-input", action="store_true",
                    help="delete the input file as soon as the peer has read it (bench/suite.sh "
                         "--free-space, for the last peer): PostgreSQL's load then builds its "
                         "table and indexes without the input on disk")
    args = ap.parse_args()
    if args.cold and not args.reuse:
        sys.exit("--cold needs --reuse: a peer that just loaded has its data cached")

    work = args.work_dir or tempfile.mkdtemp(prefix="desa-peer-")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"events.{args.peer}")
    if args.reuse:
        if not os.path.exists(path):
            sys.exit(f"--reuse: nothing loaded at {path}")
    elif os.path.isdir(path):
        import shutil

        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    peer = PEERS[args.peer](path, reuse=args.reuse)
    if args.events is not None and not args.reuse:
        sys.exit("--events is for --reuse: a load counts the input's lines itself")
    events = args.events or sum(1 for _ in open(args.input, "rb"))
    load_secs = 0.0
    if args.reuse:
        print(f"{peer.name}: reusing {path}, {peer.bytes() / events:.1f} bytes/event")
    else:
        started = time.perf_counter()
        progress = LoadProgress(peer.name, os.path.getsize(args.input), path)
        try:
            peer.load(args.input, read=(lambda: os.remove(args.input)) if args.remove_input else (lambda: None))
        finally:
            progress.close()
        load_secs = time.perf_counter() - started
        print(f"{peer.name}: loaded {events} events in {load_secs:.1f}s = "
              f"{events / load_secs:.0f} events/s, {peer.bytes() / events:.1f} bytes/event")
    if args.cold:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as e:
            sys.exit(f"--cold drops the page cache through /proc/sys/vm/drop_caches: {e}")
        print("page cache dropped: the queries below are cold, with no warm-up")

    recorded = [json.loads(line) for line in open(args.queries)]
    by_label = defaultdict(list)
    for q in recorded:
        by_label[(q["kind"], q["label"])].append(q)
    disagreements = 0
    report = {"peer": peer.name, "events": events, "load_secs": load_secs, "cold": args.cold,
              "bytes_per_event": peer.bytes() / events, "queries": {}}
    for (kind, label), qs in by_label.items():
        qs = qs[: args.at_most] if args.at_most else qs
        run = getattr(peer, kind)
        for q in qs[: max(1, len(qs) // 4)] if not args.cold else []:  # warm
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
    report["peak_resident_bytes"] = peer.peak_resident()
    print(f"peak resident memory: {report['peak_resident_bytes'] / 2**20:,.0f} MiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    if disagreements:
        print(f"{disagreements} answers disagree with desa's", file=sys.stderr)
        sys.exit(1)
    timed = sum(q["n"] for q in report["queries"].values())
    print(f"all {timed} answers agree with desa's")


if __name__ == "__main__":
    main()
