#!/usr/bin/env bash
# Cluster mode at 1, 2 and 3 workers on this machine: a throwaway
# PostgreSQL and a tansu broker (memory storage) on loopback, then for each
# worker count `desa bench --store ... --workers N`, fed from a 6-partition
# topic and over HTTP, each into a new database. Results: OUT/{kafka,http}-N.json.
#
#   bench/cluster.sh [--events N] [--desa PATH] [--tansu PATH] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
events=1000000
desa="${CARGO_TARGET_DIR:-/var/tmp/desa-target}/release/desa"
tansu="${DESA_TANSU:-/var/tmp/desa-tools/bin/tansu}"
out=/var/tmp/desa-cluster-bench
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events="$2"; shift 2 ;;
    --desa) desa="$2"; shift 2 ;;
    --tansu) tansu="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rm -rf "$out"; mkdir -p "$out"
pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort | tail -1)")
as_pg=(); if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); chown postgres "$out"; fi
pgport=$(free_port)
"${as_pg[@]}" "$pgbin/initdb" -D "$out/pg" -A trust -U desa >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$out/pg" -l "$out/pg.log" -w \
  -o "-p $pgport -k $out -c listen_addresses=127.0.0.1" start >/dev/null
kport=$(free_port)
"$tansu" broker --listener-url "tcp://127.0.0.1:$kport" --advertised-listener-url "tcp://127.0.0.1:$kport" \
  --storage-engine memory://tansu/ >"$out/tansu.log" 2>&1 &
tansu_pid=$!
trap '"${as_pg[@]}" "$pgbin/pg_ctl" -D "$out/pg" -m fast stop >/dev/null; kill $tansu_pid' EXIT
until (exec 3<>"/dev/tcp/127.0.0.1/$kport") 2>/dev/null; do sleep 0.1; done

# desa bench's own dataset: 100k devices, Zipf 1.1, 30 days, seed 7.
"$desa" gen --seed 7 --devices 100000 --span 30d --count "$events" --output "$out/events.ndjson"
for n in 1 2 3; do
  for src in kafka http; do
    db="desa_${src}_$n"
    "${as_pg[@]}" "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U desa -d postgres -qc "CREATE DATABASE $db"
    extra=()
    if [ "$src" = kafka ]; then
      "$tansu" topic create "t$n" --partitions 6 --broker "tcp://127.0.0.1:$kport" >/dev/null
      extra=(--kafka-brokers "127.0.0.1:$kport" --kafka-topic "t$n")
    fi
    echo "== $src, $n workers"
    "$desa" bench --events "$events" --input "$out/events.ndjson" --work-dir "$out/$src-$n" \
      --store "postgres://desa@127.0.0.1:$pgport/$db" --workers "$n" "${extra[@]}" \
      --concurrency 6 --queries 100 --out "$out/$src-$n.json" 2>&1 | grep --line-buffered -v '^\s*$'
  done
done
