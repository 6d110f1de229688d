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
strip target/x86_64-unknown-linux-gnu/release/shoal-guest-init
