#!/usr/bin/env python3
"""Prints a Markdown table comparing desa with its peers from the JSON reports
of one run: `desa bench --out DIR/desa.json` and `bench/peers.py --out
DIR/PEER.json` for each peer.

    python3 bench/report.py DIR/desa.json DIR/duckdb.json DIR/chdb.json DIR/postgres.json

Columns: p50 / p99 in ms per system, then the best peer's p99 divided by
desa's (above 1: desa is faster). Rows follow desa's report. A peer that
timed fewer queries of a row than desa (peers.py --at-most) shows its count.
A second table gives desa's speed-up against each peer (the peer's p50 and
p99 divided by desa's), and a line per peer counts the rows desa wins.
"""

import json
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    desa = json.load(open(sys.argv[1]))
    peers = [json.load(open(p)) for p in sys.argv[2:]]
    names = [p["peer"] for p in peers]
    cold = [s.get("cold", False) for s in [desa] + peers]
    if any(cold) and not all(cold):
        sys.exit("some of these runs are cold and some warm: compare like with like")
    in_process = desa.get("node", {}).get("in_process", False)
    how = ("desa's engine called in its own process (`desa bench --in-process`), as the peers are"
           if in_process else "desa over loopback HTTP, the peers in their own process")
    print(f"Timings: {'cold (page cache dropped, no warm-up)' if all(cold) else 'warm'}; {how}.")
    print()
    print("| system | load events/s | bytes/event | peak resident | answers |")
    print("|---|---|---|---|---|")

    def mib(report):
        b = report.get("peak_resident_bytes")
        return f"{b / 2**20:,.0f} MiB" if b else "not measured"

    load = (f"{desa['ingest_events_per_sec']:,.0f} (durable, HTTP)" if desa["ingest_secs"] > 0
            else "not in this run (--reuse-data)")
    print(f"| desa | {load} | {desa['segment_bytes_per_event']:.1f} | {mib(desa)} | reference |")
    for p in peers:
        verdict = "all equal" if p["disagreements"] == 0 else f"{p['disagreements']} differ"
        rate = (f"{p['events'] / p['load_secs']:,.0f}" if p["load_secs"] > 0
                else "not in this run (--reuse)")
        print(f"| {p['peer']} | {rate} | {p['bytes_per_event']:.1f} | {mib(p)} | {verdict} |")
    print()
    head = " | ".join(f"{n} p50 / p99" for n in names)
    print(f"| query | desa p50 / p99 | {head} | best peer p99 / desa p99 |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for key, d in desa["queries"].items():
        cells, best = [], None
        for p in peers:
            q = p["queries"].get(key)
            if q is None:
                cells.append("-")
                continue
            fewer = f" (n={q['n']})" if q.get("n", d["n"]) < d["n"] else ""
            cells.append(f"{q['p50_ms']:.3f} / {q['p99_ms']:.3f}{fewer}")
            best = q["p99_ms"] if best is None else min(best, q["p99_ms"])
        ratio = f"{best / d['p99_ms']:.1f}x" if best is not None else "-"
        print(f"| {key} | {d['p50_ms']:.3f} / {d['p99_ms']:.3f} | {' | '.join(cells)} | {ratio} |")

    print()
    print("desa's speed-up against each peer (the peer's time divided by desa's; above 1: desa is faster):")
    print()
    head = " | ".join(f"vs {n} p50 / p99" for n in names)
    print(f"| query | {head} |")
    print("|---|" + "---|" * len(names))
    for key, d in desa["queries"].items():
        cells = []
        for p in peers:
            q = p["queries"].get(key)
            cells.append("-" if q is None else
                         f"{q['p50_ms'] / d['p50_ms']:.1f}x / {q['p99_ms'] / d['p99_ms']:.1f}x")
        print(f"| {key} | {' | '.join(cells)} |")
    print()
    for p in peers:
        ratios = [p["queries"][k]["p99_ms"] / d["p99_ms"]
                  for k, d in desa["queries"].items() if k in p["queries"]]
        load = ""
        if desa["ingest_secs"] > 0 and p["load_secs"] > 0:
            load = (f"; desa's load rate is {desa['ingest_events_per_sec'] / (p['events'] / p['load_secs']):.2f}"
                    f" times {p['peer']}'s")
        print(f"- against {p['peer']}: desa's p99 is lower on {sum(r > 1 for r in ratios)} of "
              f"{len(ratios)} rows, 100x or more lower on {sum(r >= 100 for r in ratios)}{load}.")


if __name__ == "__main__":
    main()
