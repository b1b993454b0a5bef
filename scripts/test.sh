#!/usr/bin/env bash
# The test command of the README, and what CI runs (.ci/run).
#
# Installs what the tests need on a fresh Debian machine, then runs every
# test of the workspace: unit, model-based (oracle) and the integration tests
# that start the real `desa` process.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rebuilds reuse a target dir outside the clone when one is given or exists.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/desa-target}"
mkdir -p "$CARGO_TARGET_DIR"

need_cmd() { command -v "$1" >/dev/null 2>&1; }
# A C toolchain for the bundled librdkafka (rdkafka-sys), mount for the
# disk-full test's small tmpfs, and iptables for the network-partition test
# (packets to a throwaway PostgreSQL's loopback port dropped).
if ! need_cmd cc || ! need_cmd make || ! need_cmd perl || ! need_cmd mount \
  || { [ "$(id -u)" = 0 ] && ! need_cmd iptables; }; then
  if need_cmd apt-get; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq build-essential perl mount iptables >/dev/null
  fi
fi

# PostgreSQL server binaries for the cluster-mode tests, which start their own
# throwaway server (initdb + pg_ctl on a free loopback port). As root the
# server runs as the `postgres` user the package creates.
if [ -z "${DESA_PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if need_cmd apt-get; then
    echo "== installing PostgreSQL"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
fi

# A real browser for the console's test (headless chromium).
if [ -z "${DESA_CHROMIUM:-}" ] && ! need_cmd chromium; then
  if need_cmd apt-get; then
    echo "== installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  fi
fi

# The Kafka-protocol broker the Kafka tests start: tansu, pinned and patched
# (see scripts/tansu/build.sh), built once into a cache outside the clone.
TOOLS="${DESA_TOOLS:-/var/tmp/desa-tools}"
if [ -z "${DESA_TANSU:-}" ]; then
  if ! need_cmd curl || ! need_cmd patch; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq curl patch >/dev/null
  fi
  scripts/tansu/build.sh "$TOOLS"
  export DESA_TANSU="$TOOLS/bin/tansu"
fi

# The schema check of deploy/kubernetes: Node.js and the pinned validator
# modules (deploy/kubernetes/validate), installed into the tools cache.
if [ -z "${DESA_K8S_VALIDATOR:-}" ]; then
  if ! need_cmd node || ! need_cmd npm; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  validator="$TOOLS/k8s-validate"
  if ! cmp -s deploy/kubernetes/validate/package-lock.json "$validator/package-lock.json"; then
    echo "== installing the Kubernetes schema validator"
    rm -rf "$validator" && mkdir -p "$validator"
    cp deploy/kubernetes/validate/package.json deploy/kubernetes/validate/package-lock.json "$validator/"
    (cd "$validator" && npm ci --no-audit --no-fund --silent)
  fi
  export DESA_K8S_VALIDATOR="$validator/node_modules"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --quiet

# The benchmark suite at its smallest scale, as a smoke test: desa, DuckDB,
# chDB and PostgreSQL must give the same answers to the same queries
# (timings are printed, never asserted; a debug build is enough for that).
echo "== benchmark suite smoke (1M events)"
bench/suite.sh --scale 1m --desa "$CARGO_TARGET_DIR/debug/desa" --out "$CARGO_TARGET_DIR/bench-smoke"

# The same recorded queries asked of the engine in this process (`desa bench
# --in-process`, which BENCHMARKS compares with the peers' in-process
# timings) must give byte-for-byte the answers the HTTP API gave.
echo "== in-process queries answer as the HTTP API does"
smoke="$CARGO_TARGET_DIR/bench-smoke"
"$CARGO_TARGET_DIR/debug/desa" bench --events 1000000 --devices 100000 --queries 20 \
  --reuse-data --in-process --work-dir "$smoke/desa" \
  --record "$smoke/queries-in-process.jsonl" --out "$smoke/desa-in-process.json"
cmp "$smoke/queries.jsonl" "$smoke/queries-in-process.jsonl"

# --free-space (for the 100M scale on a small disk) deletes desa's files
# after its phase, each peer's after its queries, and the input once the
# last peer has read it; the answers are still checked and reported.
echo "== the suite with --free-space"
lean="$CARGO_TARGET_DIR/bench-smoke-lean"
bench/suite.sh --scale 1m --peers duckdb --free-space --desa "$CARGO_TARGET_DIR/debug/desa" --out "$lean"
test -s "$lean/duckdb.json" && test -s "$lean/report.md"
for gone in "$lean/desa/data" "$lean/desa/events.ndjson" "$lean/duckdb"; do
  if [ -e "$gone" ]; then echo "--free-space left $gone" >&2; exit 1; fi
done
rm -rf "$lean"
