#!/usr/bin/env bash
# The live image's figures (docs/BENCHMARKS.md, issue 18): the image built with the release build
# of shoal, from a cold cache and from the cache; its size; then the boot benchmark
# (tests/it/live.rs `bench_live_stick_figures`): the stick booted by SeaBIOS under TCG beside a
# host node on a lab bridge, power-on to joined, memory in use, and one small job on the live
# node against the same job on the host node (the peer), medians of 5. Needs root (the lab).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
cargo build --release --bin shoal ${CARGO_QUIET:+--quiet}
cache=$(mktemp -d /tmp/shoal-live-bench-cache.XXXXXX)
trap 'rm -rf "$cache"' EXIT
t0=$(date +%s.%N)
SHOAL_LIVE_CACHE=$cache live-image/build.sh --shoal target/release/shoal >/dev/null
t1=$(date +%s.%N)
SHOAL_LIVE_CACHE=$cache live-image/build.sh --shoal target/release/shoal >/dev/null
t2=$(date +%s.%N)
printf 'live-image build: cold %.1f s (the kernel .deb downloaded), from its cache %.1f s\n' \
  "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)"
for f in target/live/shoal-live.img target/live/shoal-cloud.qcow2; do
  printf '%-32s %d MB\n' "$f" $(( $(stat -c %s "$f") / 1000000 ))
done
cargo build -p shoal-node -p shoal-tests --tests ${CARGO_QUIET:+--quiet}
cargo nextest run -p shoal-tests --run-ignored only -E 'test(bench_live_stick_figures)' --no-capture 2>&1 \
  | grep -A8 '^live-image figures'
