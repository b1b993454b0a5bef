#!/usr/bin/env bash
# The benchmark suite: desa against DuckDB, ClickHouse (chDB) and PostgreSQL
# on the same generated events and the same queries, every answer checked.
#
#   bench/suite.sh --scale 1m|10m|100m [--out DIR] [--desa PATH] [--peers "duckdb chdb postgres"]
#                  [--queries N] [--postgres-queries N] [--cold | --free-space]
#
# 1. `desa bench` generates the seeded dataset (NDJSON), loads it into desa
#    over HTTP, and times the query mix, recording each query and answer;
# 2. bench/peers.py loads the same file into each peer and replays the
#    recorded queries, failing on any answer that differs;
# 3. bench/report.py writes DIR/report.md: load rate, bytes per event,
#    p50/p99 per query kind and window, and desa's ratio against the best peer;
# 4. with --cold (root), every system is started again on what it loaded,
#    the kernel's page cache is dropped, and the same queries are timed with
#    no warm-up: DIR/report-cold.md.
# Queries timed per kind and window: 20 at 1m, 50 at 10m and 100m, or
# --queries N (200 gives each row's p99 from 200 samples). At 100m
# PostgreSQL times at most 10 of them (its 30-day top-K and continent boxes
# take seconds to a minute each), or --postgres-queries N at any scale; its
# JSON report records the number timed per row.
# With --free-space, each system's files are deleted once its queries are
# timed, and the input once the last peer has read it: at 100m the input
# (15.6 GB), desa's files (13 GB) and PostgreSQL's load (about 53 GB at its
# peak: staging table, table, indexes and WAL before it commits) then never
# need the disk at the same time: about 54 GB, not 83 (summed from the sizes one run measured).
# Results stay in DIR as JSON (desa.json, PEER.json) for later comparison.
# Exit status 1 if any peer disagrees with desa. Timings are printed, never
# asserted. Python packages go to a virtualenv under $DESA_TOOLS.
set -euo pipefail
cd "$(dirname "$0")/.."

scale=1m
out=""
desa=""
peers="duckdb chdb postgres"
cold=0
free_space=0
queries_override=""
postgres_override=""
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --desa) desa="$2"; shift 2 ;;
    --peers) peers="$2"; shift 2 ;;
    --cold) cold=1; shift ;;
    --free-space) free_space=1; shift ;;
    --queries) queries_override="$2"; shift 2 ;;
    --postgres-queries) postgres_override="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ "$cold" = 1 ] && [ "$free_space" = 1 ]; then
  echo "--cold times what each system stored, which --free-space deletes" >&2; exit 2
fi
case "$scale" in
  1m) events=1000000; devices=100000; queries=20 ;;
  10m) events=10000000; devices=1000000; queries=50 ;;
  100m) events=100000000; devices=1000000; queries=50; postgres_at_most=10 ;;
  *) echo "--scale must be 1m, 10m or 100m, not $scale" >&2; exit 2 ;;
esac
queries="${queries_override:-$queries}"
postgres_at_most="${postgres_override:-${postgres_at_most:-}}"
out="${out:-bench-results/$scale}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if [ -z "$desa" ]; then
  cargo build --release -p desa --quiet
  desa="${CARGO_TARGET_DIR:-target}/release/desa"
fi

# Python and the peers' client libraries, pinned, in a virtualenv.
TOOLS="${DESA_TOOLS:-/var/tmp/desa-tools}"
venv="$TOOLS/bench-venv"
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  duckdb==2.0.1 chdb==4.4.0 "psycopg[binary]==3.3.9"
# PostgreSQL's server binaries (the peer starts a throwaway server).
if [[ " $peers " == *" postgres "* ]] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi

# One pass: desa times the query mix (recording it), each peer replays it.
# $1: "" (warm, after loading) or "-cold" (restarted, page cache dropped).
status=0
pass() {
  local tag="$1" desa_args=() peer_args=()
  if [ -n "$tag" ]; then
    desa_args=(--reuse-data --cold)
    peer_args=(--reuse --cold)
  fi
  echo "== desa${tag}: $events events, $devices devices, $queries queries per kind and window"
  "$desa" bench --events "$events" --devices "$devices" --queries "$queries" \
    --work-dir "$out/desa" ${desa_args[@]+"${desa_args[@]}"} --record "$out/queries$tag.jsonl" \
    --out "$out/desa$tag.json"
  if [ "$free_space" = 1 ]; then
    rm -rf "$out/desa/data"
  fi
  local reports=() last="${peers##* }"
  for peer in $peers; do
    echo "== $peer$tag"
    local at_most=() remove=()
    if [ "$peer" = postgres ] && [ -n "${postgres_at_most:-}" ]; then
      at_most=(--at-most "$postgres_at_most")
    fi
    if [ "$free_space" = 1 ] && [ "$peer" = "$last" ]; then
      remove=(--remove-input)
    fi
    if ! "$venv/bin/python" bench/peers.py --peer "$peer" --input "$out/desa/events.ndjson" \
        --queries "$out/queries$tag.jsonl" --work-dir "$out/$peer" ${peer_args[@]+"${peer_args[@]}"} \
        ${at_most[@]+"${at_most[@]}"} ${remove[@]+"${remove[@]}"} --out "$out/$peer$tag.json"; then
      status=1
    fi
    [ -f "$out/$peer$tag.json" ] && reports+=("$out/$peer$tag.json")
    if [ "$free_space" = 1 ]; then
      rm -rf "$out/$peer"
    fi
  done
  "$venv/bin/python" bench/report.py "$out/desa$tag.json" ${reports[@]+"${reports[@]}"} > "$out/report$tag.md"
  echo "== report: $out/report$tag.md"
  cat "$out/report$tag.md"
}

pass ""
if [ "$cold" = 1 ]; then
  pass "-cold"
fi
exit "$status"
