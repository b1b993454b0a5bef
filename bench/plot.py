#!/usr/bin/env python3
"""Plots query latency against the number of stored events, one panel per
query, one line per system, from the JSON reports of runs at several scales.

    python3 bench/plot.py --out docs/latency-vs-volume.png \\
        1m=DIR1 10m=DIR2 100m=DIR3

Each DIR holds desa.json and PEER.json files (as `bench/suite.sh` writes
them); a system missing at a scale is left out there. Needs matplotlib.
"""

import argparse
import json
import os

QUERIES = [
    ("avg/hottest/30d", "avg, hottest device, 30 days"),
    ("avg/median/1h", "avg, median device, 1 hour"),
    ("topk/k10/1d", "top-10, 1 day"),
    ("topk/k10/30d", "top-10, 30 days"),
    ("geo/1000km/7d", "geo, 1000 km box, 7 days"),
    ("geo/europe/30d", "geo, Europe, 30 days"),
]
SYSTEMS = ["desa", "duckdb", "chdb", "postgres"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--stat", default="p50_ms", choices=["p50_ms", "p99_ms"])
    ap.add_argument("runs", nargs="+", help="LABEL=DIR")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {}  # system -> query -> [(events, ms)]
    for run in args.runs:
        _, d = run.split("=", 1)
        for system in SYSTEMS:
            path = os.path.join(d, f"{system}.json")
            if not os.path.exists(path):
                continue
            r = json.load(open(path))
            for q, _ in QUERIES:
                if q in r["queries"]:
                    data.setdefault(system, {}).setdefault(q, []).append(
                        (r["events"], r["queries"][q][args.stat]))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True)
    for ax, (q, title) in zip(axes.flat, QUERIES):
        for system in SYSTEMS:
            pts = sorted(data.get(system, {}).get(q, []))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system)
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("events stored")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{args.stat.split('_')[0]} latency, ms (log)")
    axes.flat[0].legend()
    fig.suptitle(f"Query latency ({args.stat.split('_')[0]}) against data volume, 2 cores")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
