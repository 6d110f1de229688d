#!/usr/bin/env bash
# Idempotent setup: system packages, the shoal build, and the base images in the store.
# Called by scripts/run-example.sh and scripts/test.sh; safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the project needs:
#   busybox-static   the busybox:latest image (built by our code from this package)
#   docker-registry  a local OCI registry for `shoal image pull` tests
#   skopeo           pushes test images into that registry, converts layouts to docker-save archives
#   iproute2, make   the benchmark's sandbox peer and network checks
#   util-linux       unshare(1), for the benchmark peer
PACKAGES=(busybox-static docker-registry skopeo iproute2 make util-linux python3-venv)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's docker-registry package starts a service on :5000 where it can; tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# One debug build serves the example and the tests (dependencies are optimised, see Cargo.toml).
cargo build --workspace --all-targets ${CARGO_QUIET:+--quiet}

SHOAL="$PWD/target/debug/shoal"
scripts/build-images.sh "$SHOAL"
