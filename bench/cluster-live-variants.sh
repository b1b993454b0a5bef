#!/usr/bin/env bash
# A cluster worker under a live Kafka stream, with the aggregate schema in
# several variants, to see what the top-K count index costs the writes.
#
#   bench/cluster-live-variants.sh --desa PATH --pg-url postgres://USER@HOST:PORT \
#       --input EVENTS.ndjson --out DIR VARIANT...
#
# VARIANT is `shipped` (the schema `desa migrate` creates) or `nocount` (the
# same, then `DROP INDEX desa_series_by_count`: top-K loses its sorted
# access, so this measures the writes only). For the bit-length variant,
# build desa with bench/variants/count-bit-length.patch applied and run it
# as `shipped` with that binary.
#
# For each variant: a new database VARIANT's name under the server, a new
# tansu broker on 127.0.0.1:39092 (in memory, topic `bench`, 4 partitions),
# then `desa bench --kafka-brokers ... --store ... --live 60s --live-rate
# 10000` (1M events of backlog), while the node's /metrics are sampled every
# 5 s into DIR/VARIANT.metrics. Needs `tansu` (DESA_TANSU) and the
# PostgreSQL client programs (PG_BIN, default /usr/lib/postgresql/15/bin).
set -euo pipefail
desa=""; pg=""; input=""; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --desa) desa="$2"; shift 2 ;;
    --pg-url) pg="$2"; shift 2 ;;
    --input) input="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --*) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ -n "$desa" ] && [ -n "$pg" ] && [ -n "$input" ] && [ -n "$out" ] && [ $# -gt 0 ] \
  || { echo "see the header of $0 for the arguments" >&2; exit 2; }
tansu="${DESA_TANSU:-tansu}"
bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
mkdir -p "$out"

sample_metrics() {
  while true; do
    # (the node may not listen yet: no match is not an error here)
    port=$(ss -ltnp 2>/dev/null | grep '"desa"' | grep -o '127.0.0.1:[0-9]*' | head -1 || true)
    if [ -n "$port" ]; then
      echo "$(date +%T) $(curl -s "http://$port/metrics" | grep -E '^desa_postgres_write_(seconds|transactions)_total|^desa_kafka_events_total|^desa_kafka_consumed_offset' | tr '\n' ' ' || true)"
    fi
    sleep 5
  done
}

for variant in "$@"; do
  db="live_$variant"
  "$bin/psql" "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  "$desa" migrate --store "$pg/$db"
  case "$variant" in
    shipped) ;;
    nocount) "$bin/psql" "$pg/$db" -qc 'DROP INDEX desa_series_by_count' ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  "$tansu" broker --listener-url tcp://127.0.0.1:39092 --advertised-listener-url tcp://127.0.0.1:39092 \
    --storage-engine memory://tansu/ > "$out/tansu-$variant.log" 2>&1 &
  broker=$!
  sleep 2
  "$tansu" topic create bench --partitions 4 --broker tcp://127.0.0.1:39092
  sample_metrics > "$out/$variant.metrics" 2>&1 &
  sampler=$!
  "$desa" bench --events 1000000 --devices 100000 --input "$input" \
    --kafka-brokers 127.0.0.1:39092 --store "$pg/$db" \
    --live 60s --live-rate 10000 --work-dir "$out/work-$variant" --out "$out/$variant.json" \
    | tee "$out/$variant.log" || echo "bench of $variant failed" >&2
  kill "$sampler" "$broker" 2>/dev/null || true
  wait "$broker" 2>/dev/null || true
done
python3 "$(dirname "$0")/cluster_live_report.py" "$out"/*.metrics
