#!/usr/bin/env bash
# Builds guest-init, PID 1 of the microVM, as a static program (glibc with +crt-static: the
# initramfs holds no loader and no libraries). With an explicit --target, RUSTFLAGS reach only
# the target's code, not build scripts or proc macros. Output:
#   target/x86_64-unknown-linux-gnu/release/shoal-guest-init
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p shoal-guest-init --target x86_64-unknown-linux-gnu ${CARGO_QUIET:+--quiet}
# Debug info is most of its size, and the kernel unpacks every byte of the initramfs at each boot.
# Stripped into a new file renamed over the old: the old one may be running (it is the namespace
# backend's helper), and writing a running program fails with "Text file busy".
bin=target/x86_64-unknown-linux-gnu/release/shoal-guest-init
strip -o "$bin.stripped.$$" "$bin"
mv -f "$bin.stripped.$$" "$bin"
