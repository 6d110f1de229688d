#!/usr/bin/env bash
# The test command (README): setup, then every test of the workspace, once.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
scripts/setup.sh
# The live image the boot tests start (tests/it/live.rs), with this build's shoal: the image's
# own build would add a release build of the workspace (about 10 minutes on two cores) to
# test code that is the same. Its slow steps are cached between runs (live-image/README.md).
live-image/build.sh --shoal target/debug/shoal
t1=$(date +%s)
echo "test: setup and the live image took $(( t1 - t0 )) s" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
echo "test: tests took $(( $(date +%s) - t1 )) s" >&2
# Nothing the tests started may outlive them: a QEMU left running is a failure.
if pgrep -a -f 'qemu-system-x86_64 .*shoal-(req|reply|rootfs|lab-)' >&2; then
  echo "test: QEMU processes outlived the tests (listed above)" >&2
  exit 1
fi
# Nor may a network lab (tests/it/netlab.rs, tests/it/fedlab.rs): its namespaces hold the
# bridges, veths and taps.
if ip netns list 2>/dev/null | grep -E '^shoal-(lab|fed)-' >&2; then
  echo "test: network namespaces outlived the tests (listed above)" >&2
  exit 1
fi
# Nor a process started in the federation lab (each carries SHOAL_FEDLAB=<namespace>; a lab's
# namespace can be gone while a process still holds it).
left=$(grep -l -s -z '^SHOAL_FEDLAB=' /proc/[0-9]*/environ 2>/dev/null || true)
for f in $left; do
  pid=${f#/proc/}; pid=${pid%/environ}
  ps -o pid=,args= -p "$pid" >&2 || true
done
if [ -n "$left" ]; then
  echo "test: processes started in the federation lab outlived the tests (listed above)" >&2
  exit 1
fi
