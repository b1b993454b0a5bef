#!/usr/bin/env bash
# Builds the tansu Kafka-protocol broker the Kafka tests start, into a cache
# outside the clone:
#
#   scripts/tansu/build.sh TOOLS_DIR
#
# tansu 0.6.0 from crates.io with one fix, session-expiry.patch: when a
# member's session expires, the group starts a new generation, as Kafka's
# coordinator does. Unpatched, the expired member is dropped but the
# generation stays, so a survivor that rejoins is handed the previous
# generation's assignment and the dead member's partitions stay unowned
# until another member joins.
#
# The crates come from the registry (static.crates.io); the build keeps the
# versions of tansu's own Cargo.lock. Writes TOOLS_DIR/bin/tansu and
# TOOLS_DIR/bin/tansu.build, which names the version and the patch's digest:
# when both match, the binary is up to date and nothing is built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="$1"
version=0.6.0
patch="$here/session-expiry.patch"
src="$tools/tansu-src"
build="tansu $version + $(sha256sum "$patch" | cut -c1-16)"

if [ -x "$tools/bin/tansu" ] && [ "$(cat "$tools/bin/tansu.build" 2>/dev/null)" = "$build" ]; then
  exit 0
fi
echo "== building $build into $tools (once; several minutes)"
rm -rf "$src"
mkdir -p "$src" "$tools/bin"
for crate in tansu tansu-broker; do
  curl -fsSL "https://static.crates.io/crates/$crate/$crate-$version.crate" | tar -xz -C "$src"
done
(cd "$src/tansu-broker-$version" && patch -p1 --quiet < "$patch")
cat >> "$src/tansu-$version/Cargo.toml" <<TOML

[patch.crates-io]
tansu-broker = { path = "../tansu-broker-$version" }
TOML
# Its own target dir: the tests' CARGO_TARGET_DIR holds desa's build.
(cd "$src/tansu-$version" && CARGO_TARGET_DIR="$src/target" cargo build --release --quiet --features dynostore)
install -m 0755 "$src/target/release/tansu" "$tools/bin/tansu"
echo "$build" > "$tools/bin/tansu.build"
rm -rf "$src"
