#!/usr/bin/env bash
# Idempotent setup: system packages, the shoal build, and the base images in the store.
# Called by scripts/run-example.sh and scripts/test.sh; safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the project needs:
#   busybox-static   the busybox:latest image (built by our code from this package)
#   docker-registry  a local OCI registry for `shoal image pull` tests
#   skopeo           pushes test images into that registry, converts layouts to docker-save archives
#   iproute2, make   the benchmark's sandbox peer and network checks; ip netns and tc tbf for the labs
#   nftables, iputils-ping   the federation lab's NAT routers (tests/it/fedlab.rs) and its ping
#   iperf3           bench/netlab.sh's TCP stream through a lab link
#   util-linux       unshare(1), for the benchmark peer
#   linux-image-cloud-amd64   the guest kernel of the microVM backend (its bzImage and modules)
#   squashfs-tools, erofs-utils   mksquashfs / mkfs.erofs, for the benchmark's peers and `shoal doctor`
#   qemu-system-x86 (from bookworm-backports, below)   the microVM monitor; qboot comes in qemu-system-data
#   debootstrap      the Program Explorer's images (gcc, python3, graphviz), built on a Debian minbase
#   chromium, chromium-driver   the explorer's browser tests (headless, driven by playwright-core from npm)
# and for live-image/build.sh (the live image, issue 18):
#   grub-pc-bin      GRUB's BIOS modules, for grub-mkrescue's hybrid image
#   grub-efi-amd64-bin   GRUB's UEFI modules, the image's EFI boot partition
#   xorriso          writes the ISO 9660 filesystem and the appended SHOAL partition (grub-mkrescue runs it)
#   mtools           writes files into FAT images without mounting them (mcopy; grub-mkrescue's EFI image too)
#   dosfstools       mkfs.vfat, the SHOAL configuration partition
#   ovmf             UEFI firmware for QEMU, to boot the image the way a UEFI PC does
#   kmod, binutils   depmod and modprobe for the module trees; strip and readelf for the binaries
#   qemu-utils (from bookworm-backports, below)   qemu-img, the cloud image's qcow2
PACKAGES=(busybox-static docker-registry skopeo iproute2 nftables iputils-ping iperf3 make util-linux python3-venv
  linux-image-cloud-amd64 squashfs-tools erofs-utils cpio debootstrap chromium chromium-driver
  grub-pc-bin grub-efi-amd64-bin xorriso mtools dosfstools ovmf kmod binutils)
BACKPORTS=(qemu-system-x86 qemu-system-data qemu-utils)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
missing_bp=()
for p in "${BACKPORTS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_bp+=("$p")
done
if [ ${#missing_bp[@]} -gt 0 ]; then
  # qemu-utils on these machines comes from bookworm-backports, and bookworm's own qemu-system-x86
  # conflicts with it (DESIGN section 8): add backports from the machine's own Debian mirror.
  src=/etc/apt/sources.list.d/debian.sources
  bp=/etc/apt/sources.list.d/shoal-backports.sources
  if [ ! -e "$bp" ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri=$(awk '/^URIs:/{print $2; exit}' "$src" 2>/dev/null || true)
    uri=${uri:-http://deb.debian.org/debian}
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" | $SUDO tee "$bp" >/dev/null
  fi
fi
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bp[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} ${missing_bp[*]}" >&2
  $SUDO apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ${#missing_bp[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      "${missing_bp[@]}" >/dev/null
  fi
fi
# Debian's docker-registry package starts a service on :5000 where it can; tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# One debug build serves the example and the tests (dependencies are optimised, see Cargo.toml).
cargo build --workspace --all-targets ${CARGO_QUIET:+--quiet}
# guest-init, PID 1 of the microVMs: static, so it gets its own target directory.
scripts/build-guest-init.sh

SHOAL="$PWD/target/debug/shoal"
scripts/build-images.sh "$SHOAL"

# The explorer's browser tests: playwright-core (no browser download: it drives /usr/bin/chromium).
if [ ! -f tests/browser/node_modules/.package-lock.json ] \
  || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
