#!/usr/bin/env python3
"""Plots query latency against the number of stored events (one panel per
query) or against the window length (`--by window`: one row of panels per
scale), one line per system, from the JSON reports of runs at several scales.

    python3 bench/plot.py --out docs/latency-vs-volume.png 1m=DIR1 10m=DIR2 100m=DIR3
    python3 bench/plot.py --by window --out docs/latency-vs-window.png 10m=DIR2 100m=DIR3

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
WINDOWS = [("1m", 60), ("1h", 3600), ("1d", 86400), ("7d", 7 * 86400), ("30d", 30 * 86400)]
KINDS = [("avg/hottest", "avg, hottest device"), ("topk/k10", "top-10"),
         ("geo/europe", "geo, Europe box")]


def load(d):
    """system -> its report, for the reports present in `d`."""
    out = {}
    for system in SYSTEMS:
        path = os.path.join(d, f"{system}.json")
        if os.path.exists(path):
            out[system] = json.load(open(path))
    return out


def by_window(args, plt):
    fig, axes = plt.subplots(len(args.runs), len(KINDS), figsize=(13, 3.8 * len(args.runs)),
                             squeeze=False)
    for row, run in zip(axes, args.runs):
        label, d = run.split("=", 1)
        reports = load(d)
        for ax, (kind, title) in zip(row, KINDS):
            for system, r in reports.items():
                pts = [(secs, r["queries"][f"{kind}/{w}"][args.stat]) for w, secs in WINDOWS
                       if f"{kind}/{w}" in r["queries"]]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system)
            ax.set_title(f"{title}, {label} events", fontsize=10)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([secs for _, secs in WINDOWS], [w for w, _ in WINDOWS])
            ax.minorticks_off()
            ax.grid(True, which="both", alpha=0.3)
        row[0].set_ylabel(f"{args.stat.split('_')[0]} latency, ms (log)")
    for ax in axes[-1]:
        ax.set_xlabel("window length")
    axes[0][0].legend()
    fig.suptitle(f"Query latency ({args.stat.split('_')[0]}) against window length, 2 cores")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--stat", default="p50_ms", choices=["p50_ms", "p99_ms"])
    ap.add_argument("--by", default="volume", choices=["volume", "window"])
    ap.add_argument("runs", nargs="+", help="LABEL=DIR")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.by == "window":
        return by_window(args, plt)
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
