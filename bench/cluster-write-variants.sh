#!/usr/bin/env bash
# Where a cluster worker's ingest time goes: the same load into PostgreSQL
# with the writer as shipped and in variants that each leave one part out.
#
#   bench/cluster-write-variants.sh --pg-url postgres://USER@HOST:PORT \
#       --input EVENTS.ndjson --out DIR [--events N] [--devices D] VARIANT...
#
# VARIANT is one of
#   shipped            the writer and schema as they are at HEAD;
#   no-aggregates      bench/variants/no-aggregates.patch: COPY of the raw
#                      events (with both raw indexes), no aggregate upserts;
#   raw-only           no-aggregates, and both raw indexes dropped after
#                      `desa migrate`: the COPY alone;
#   no-series-index    shipped, with `desa_events_series` (the avg edges'
#                      index) dropped after `desa migrate`;
#   one-writer         bench/variants/one-writer.patch: one writer connection;
#   partition-per-day  bench/variants/partition-per-day.patch: a day's
#                      partition created when its first event comes.
# Variants are measurements, not configurations: without an index or an
# aggregate, some queries are slow or wrong.
#
# Each variant is built from HEAD in a git worktree under DIR (patched when
# it has a patch; CARGO_TARGET_DIR is shared, so only desa's crates
# rebuild; a binary built for HEAD is reused), loads INPUT over HTTP into a new database `w_VARIANT` with
# `desa bench --store` (N events, D devices: what INPUT holds, for the
# query parameters; 1 query per kind), and meanwhile samples what the
# database's active sessions wait on every 250 ms into DIR/VARIANT.waits;
# afterwards, the aggregate tables' rows inserted and updated
# (pg_stat_user_tables) go to DIR/VARIANT.tables.
# DIR/summary.txt gets one line per variant: events/s, then the five most
# frequent samples. Needs the PostgreSQL client programs (PG_BIN, default
# /usr/lib/postgresql/15/bin).
set -euo pipefail
pg=""; input=""; out=""; events=1000000; devices=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --pg-url) pg="$2"; shift 2 ;;
    --input) input="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --events) events="$2"; shift 2 ;;
    --devices) devices="$2"; shift 2 ;;
    --*) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ -n "$pg" ] && [ -n "$input" ] && [ -n "$out" ] && [ $# -gt 0 ] \
  || { echo "see the header of $0 for the arguments" >&2; exit 2; }
bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
input="$(cd "$(dirname "$input")" && pwd)/$(basename "$input")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$out/target}"

# Builds desa from HEAD with PATCH (or none) applied; prints the binary's path.
build() {
  local name="$1" patch="$2" src="$out/src-$1"
  local exe="$out/desa-$name-$(git -C "$repo" rev-parse --short HEAD)"
  if [ -x "$exe" ]; then echo "$exe"; return; fi
  rm -rf "$src"
  git -C "$repo" worktree prune
  git -C "$repo" worktree add -q --detach "$src" HEAD
  if [ -n "$patch" ]; then git -C "$src" apply "$repo/bench/variants/$patch"; fi
  (cd "$src" && cargo build -q --release -p desa) >&2
  cp "$CARGO_TARGET_DIR/release/desa" "$exe"
  git -C "$repo" worktree remove --force "$src"
  echo "$exe"
}

sample_waits() {
  while true; do
    "$bin/psql" "$pg/$1" -Atc "SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-')
        || ' | ' || left(regexp_replace(query, '\s+', ' ', 'g'), 40)
        FROM pg_stat_activity WHERE state = 'active' AND datname = '$1' AND pid <> pg_backend_pid()" || true
    sleep 0.25
  done
}

for variant in "$@"; do
  case "$variant" in
    shipped|raw-only|no-series-index|no-aggregates|one-writer|partition-per-day) ;;
    *) echo "unknown variant $variant (see the header of $0)" >&2; exit 2 ;;
  esac
  case "$variant" in
    no-aggregates|raw-only) desa=$(build no-aggregates no-aggregates.patch) ;;
    one-writer|partition-per-day) desa=$(build "$variant" "$variant.patch") ;;
    *) desa=$(build shipped "") ;;
  esac
  db="w_${variant//-/_}"
  "$bin/psql" "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  "$desa" migrate --store "$pg/$db" >/dev/null
  case "$variant" in
    raw-only) "$bin/psql" "$pg/$db" -qc 'DROP INDEX desa_events_series' -c 'DROP INDEX desa_events_type_ts' ;;
    no-series-index) "$bin/psql" "$pg/$db" -qc 'DROP INDEX desa_events_series' ;;
  esac
  sample_waits "$db" > "$out/$variant.waits" 2>/dev/null &
  sampler=$!
  rm -rf "$out/work-$variant"
  "$desa" bench --events "$events" --devices "$devices" --queries 1 --input "$input" \
    --work-dir "$out/work-$variant" --store "$pg/$db" --out "$out/$variant.json" > "$out/$variant.log" 2>&1
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  "$bin/psql" "$pg/$db" -c "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
      WHERE relname IN ('desa_series', 'desa_places', 'desa_cells') ORDER BY relname" > "$out/$variant.tables"
  rate=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['ingest_events_per_sec']))" "$out/$variant.json")
  top=$(sort "$out/$variant.waits" | uniq -c | sort -rn | head -5 | sed 's/^ *//' | paste -sd ';' -)
  echo "$variant: $rate events/s; samples: $top" | tee -a "$out/summary.txt"
done
