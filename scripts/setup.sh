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
# and for jobs of other architectures (issue 20):
#   qemu-user-static   qemu-user and its binfmt_misc handlers (registered below where no systemd does)
PACKAGES=(busybox-static docker-registry skopeo iproute2 nftables iputils-ping iperf3 make util-linux python3-venv
  linux-image-cloud-amd64 squashfs-tools erofs-utils cpio debootstrap chromium chromium-driver
  grub-pc-bin grub-efi-amd64-bin xorriso mtools dosfstools ovmf kmod binutils qemu-user-static)
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

# Jobs of other architectures run under qemu-user: its binfmt_misc handlers, with the F flag (the
# kernel opens the interpreter at registration, so it works inside a sandbox's own root), registered
# here where no systemd-binfmt did; and Debian's arm64 busybox-static, for the tests' arm64 image.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
for a in aarch64 riscv64; do
  if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$a" ] && [ -f "/usr/lib/binfmt.d/qemu-$a.conf" ]; then
    $SUDO sh -c "cat /usr/lib/binfmt.d/qemu-$a.conf > /proc/sys/fs/binfmt_misc/register"
  fi
done
ARM64=/var/cache/shoal/arm64
if [ ! -x "$ARM64/busybox" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
  fi
  $SUDO apt-get update -qq
  tmp=$(mktemp -d)
  chmod 0755 "$tmp"   # apt downloads as its own user
  (cd "$tmp" && apt-get download -qq busybox-static:arm64 >/dev/null && dpkg-deb -x busybox-static_*_arm64.deb x)
  $SUDO mkdir -p "$ARM64"
  $SUDO install -m 0755 "$tmp/x/bin/busybox" "$ARM64/busybox"
  rm -rf "$tmp"
fi

# The S3-compatible server of the data tests and bench/s3.sh (issue 22): s3s-fs checks SigV4
# signatures and presigned URLs' expiry against the access keys it is started with (moto's server
# checks no signature unless IAM auth is switched on), stores objects as plain files, and is one
# `cargo install` from the Rust registry. 0.14.1 is the last release this toolchain builds.
S3S_VERSION=0.14.1
if ! s3s-fs --version 2>/dev/null | grep -qx "s3s-fs $S3S_VERSION"; then
  cargo install ${CARGO_QUIET:+--quiet} --locked --features binary "s3s-fs@$S3S_VERSION"
fi

# Every crate Cargo.lock names, for every platform: the build downloads only those it compiles,
# and the architecture test's `cargo metadata --offline` resolves them all (rusty-s3's jiff has
# a proc-macro crate only some platforms use).
cargo fetch ${CARGO_QUIET:+--quiet}

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
