#!/usr/bin/env bash
# Builds the Program Explorer's images (crates/node/explorer/catalogue.toml) from Debian packages and tags
# them in the store ($SHOAL_HOME): one `debootstrap --variant=minbase` bookworm shared by all, then per tool
# a copy of it with the tool's packages installed in a chroot, docs, locales and apt caches stripped, and
# `shoal image build` (the store keeps every file once, so the images share the base's files).
# The root filesystems are kept in $SHOAL_EXPLORER_ROOTFS (default ~/.cache/shoal/explorer-rootfs), each
# with a stamp naming its packages: a second run rebuilds nothing and only re-tags (idempotent).
# The tests build their stores' images from the same directories.
# Usage: scripts/build-explorer-images.sh PATH/TO/shoal
set -euo pipefail
SHOAL=${1:?usage: build-explorer-images.sh PATH/TO/shoal}
SUITE=bookworm
# Bump to rebuild every root filesystem (e.g. when the stripping below changes).
RECIPE=1
cache=${SHOAL_EXPLORER_ROOTFS:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal/explorer-rootfs}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# tag | Debian packages | image environment
TOOLS=(
  "gcc|gcc libc6-dev|PATH=/usr/local/bin:/usr/bin:/bin"
  "python3|python3|PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8"
  "graphviz|graphviz|PATH=/usr/local/bin:/usr/bin:/bin"
)

# The machine's own Debian mirror (as setup.sh does for backports), so no host name is written down here.
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}

strip_rootfs() {
  local d=$1
  $SUDO chroot "$d" apt-get clean
  $SUDO rm -rf "$d"/var/lib/apt/lists/* "$d"/usr/share/man "$d"/usr/share/info "$d"/usr/share/locale \
    "$d"/usr/share/lintian "$d"/var/log/* "$d"/var/cache/debconf/*-old "$d"/var/lib/dpkg/*-old
  $SUDO find "$d"/usr/share/doc -type f ! -name copyright -delete 2>/dev/null || true
  # Device nodes, fifos and sockets: the sandbox brings its own /dev, and an image layer holds none.
  $SUDO find "$d" -xdev \( -type b -o -type c -o -type p -o -type s \) -delete
}

mkdir -p "$cache"
base="$cache/base"
base_stamp="minbase $SUITE recipe $RECIPE"
if [ "$(cat "$cache/base.stamp" 2>/dev/null)" != "$base_stamp" ]; then
  echo "setup: debootstrap $SUITE (minbase) from $mirror" >&2
  t=$(date +%s)
  $SUDO rm -rf "$base" "$base.tmp"
  $SUDO debootstrap --variant=minbase "$SUITE" "$base.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
    tail -20 "$cache/debootstrap.log" >&2
    exit 1
  }
  echo "deb $mirror $SUITE main" | $SUDO tee "$base.tmp/etc/apt/sources.list" >/dev/null
  $SUDO chroot "$base.tmp" apt-get update -qq
  $SUDO mv "$base.tmp" "$base"
  echo "$base_stamp" >"$cache/base.stamp"
  echo "setup: base root filesystem in $(( $(date +%s) - t )) s" >&2
fi

for spec in "${TOOLS[@]}"; do
  IFS='|' read -r tool packages env <<<"$spec"
  dir="$cache/$tool"
  stamp="$base_stamp; $packages"
  if [ "$(cat "$dir.stamp" 2>/dev/null)" != "$stamp" ]; then
    t=$(date +%s)
    $SUDO rm -rf "$dir" "$dir.tmp"
    $SUDO cp -a "$base" "$dir.tmp"
    # shellcheck disable=SC2086 # the package list is words
    DEBIAN_FRONTEND=noninteractive $SUDO chroot "$dir.tmp" apt-get install -y -qq --no-install-recommends $packages \
      >"$cache/$tool.log" 2>&1 || {
      tail -20 "$cache/$tool.log" >&2
      exit 1
    }
    strip_rootfs "$dir.tmp"
    $SUDO mv "$dir.tmp" "$dir"
    echo "$stamp" >"$dir.stamp"
    echo "setup: $tool root filesystem ($(du -sh "$dir" | cut -f1)) in $(( $(date +%s) - t )) s" >&2
  fi
  # Skip the import (it hashes every file) when this store got this root filesystem already.
  built="${SHOAL_HOME:-default}|$stamp|$env"
  if [ "$(cat "$dir.image" 2>/dev/null)" = "$built" ] && "$SHOAL" image ls --json | grep -q "\"$tool:$SUITE\""; then
    continue
  fi
  args=()
  for kv in $env; do args+=(--env "$kv"); done
  t=$(date +%s)
  "$SHOAL" image build "$dir" --tag "$tool:$SUITE" "${args[@]}" >/dev/null
  echo "$built" >"$dir.image"
  echo "setup: $tool:$SUITE is in the store ($(( $(date +%s) - t )) s)" >&2
done
