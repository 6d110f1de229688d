#!/usr/bin/env bash
# The federation lab's own figures (docs/BENCHMARKS.md, issue 19): round trips through a site's
# WAN link (the userspace delay queue) against the configured delay, loss against the configured
# rate, and TCP throughput (iperf3) through a 100 Mbit/s link with 50 ms one way, both ways, beside
# a clean link and a bare bridge (the lab's ceiling on this machine). The lab and the figures are
# tests/it/fedlab.rs `bench_netlab_figures`. Needs root (namespaces, nftables, TAPs).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
cargo build -p shoal-tests --tests ${CARGO_QUIET:+--quiet}
cargo nextest run -p shoal-tests --run-ignored only -E 'test(bench_netlab_figures)' --no-capture 2>&1 \
  | grep -A7 '^netlab figures'
