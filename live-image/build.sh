#!/usr/bin/env bash
# Builds the live image from Debian packages: a hybrid BIOS + UEFI disk image for USB sticks
# (target/live/shoal-live.img) and the same system as a cloud disk (target/live/shoal-cloud.qcow2).
# live-image/README.md describes the layout; docs/adr/0004-live-image-tooling.md why it is built so.
#
#   live-image/build.sh [--shoal PATH] [--guest-init PATH] [--out DIR]
#
# Slow steps are cached under $SHOAL_LIVE_CACHE (default /var/cache/shoal/live), keyed by what
# they are made from; a build with only a new shoal binary reuses them. Never mounts anything:
# FAT is written with mtools, the ISO with xorriso (this host cannot mount vfat or iso9660).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${SHOAL_LIVE_CACHE:-/var/cache/shoal/live}
OUT=$REPO/target/live
SHOAL=""
GUEST_INIT=""

# The SHOAL partition: shoal.toml, the node's key and its logs.
CONFIG_PART_MIB=32
# mksquashfs's zstd level for the root (15 is mksquashfs's default for zstd; others not measured).
SQUASHFS_ZSTD_LEVEL=15
# Older cache entries of each kind beyond this many are deleted.
CACHE_KEEP_PER_KIND=2

# The live kernel: Debian's generic one (the cloud kernel lacks usb-storage, AHCI and most NICs).
LIVE_KERNEL_META=linux-image-amd64
# Module directories (under lib/modules/<release>/kernel/) left out of the live kernel: hardware
# a headless mesh node does not drive (sound, cameras, GPUs' display drivers, Wi-Fi and Bluetooth,
# which need firmware and iwd this image does not carry), and filesystems it never mounts. Kept:
# storage, USB, every wired NIC (drivers/net/ethernet, usb, phy), KVM, virtio/Xen/Hyper-V, HID.
LIVE_MODULES_DROPPED=(
  sound drivers/gpu drivers/media drivers/infiniband drivers/staging drivers/iio drivers/comedi
  drivers/net/wireless drivers/bluetooth drivers/isdn drivers/atm drivers/mtd drivers/target
  drivers/soundwire drivers/w1 drivers/video drivers/hwmon drivers/md drivers/net/can
  drivers/net/wwan drivers/net/ieee802154 drivers/net/fddi drivers/net/arcnet drivers/net/wan
  drivers/net/hamradio drivers/nfc drivers/misc/cardreader drivers/input/joystick
  drivers/input/touchscreen drivers/input/tablet drivers/input/misc drivers/leds
  drivers/gnss drivers/mfd drivers/ntb drivers/fpga drivers/parport drivers/pcmcia
  net/bluetooth net/wireless net/mac80211 net/atm net/can net/nfc net/6lowpan net/ieee802154
  net/mac802154 net/rxrpc net/sunrpc net/ceph net/9p net/rds net/tipc net/sctp net/dccp
  fs/9p fs/adfs fs/affs fs/afs fs/befs fs/bfs fs/btrfs fs/cachefiles fs/ceph fs/coda fs/dlm
  fs/ecryptfs fs/efs fs/f2fs fs/freevxfs fs/gfs2 fs/hfs fs/hfsplus fs/hpfs fs/jffs2 fs/jfs
  fs/lockd fs/minix fs/nfs fs/nfs_common fs/nfsd fs/nilfs2 fs/ocfs2 fs/omfs fs/orangefs fs/qnx4
  fs/qnx6 fs/reiserfs fs/romfs fs/smb fs/sysv fs/ubifs fs/udf fs/ufs fs/vboxsf fs/xfs fs/zonefs
  fs/netfs fs/fscache
)
# Loaded by the initramfs before it looks for the medium: every controller and bus a stick, a
# CD, or a cloud disk can sit behind, and what the root is made of.
BOOT_MODULES=(
  xhci_pci ehci_pci ohci_pci uhci_hcd usb_storage uas usbhid hid_generic
  ahci ata_piix ata_generic nvme sd_mod sr_mod virtio_pci virtio_blk virtio_scsi
  xen_blkfront hv_vmbus hv_storvsc mmc_block sdhci_pci sdhci_acpi
  isofs squashfs overlay loop
)

die() { echo "build.sh: $*" >&2; exit 1; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
  --shoal) SHOAL=${2:?--shoal needs a path}; shift 2 ;;
  --guest-init) GUEST_INIT=${2:?--guest-init needs a path}; shift 2 ;;
  --out) OUT=${2:?--out needs a directory}; shift 2 ;;
  -h | --help) usage 0 ;;
  *) echo "build.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

# --- tools ------------------------------------------------------------------------------------
need() { # need TOOL DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 || die "$1 is missing: apt-get install $2 (scripts/setup.sh lists it)"
}
need grub-mkrescue grub-common
need xorriso xorriso
need mcopy mtools
need mkfs.vfat dosfstools
need mksquashfs squashfs-tools
need unsquashfs squashfs-tools
need cpio cpio
need dpkg-deb dpkg
need apt-get apt
need depmod kmod
need modprobe kmod
need qemu-img qemu-utils
need strip binutils
need ldd libc-bin
need readelf binutils
# A static program has no program interpreter (ldd says "statically linked" for static-pie too).
is_static() { ! readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; }
[ -d /usr/lib/grub/i386-pc ] || die "GRUB's BIOS modules are missing: apt-get install grub-pc-bin"
[ -d /usr/lib/grub/x86_64-efi ] || die "GRUB's UEFI modules are missing: apt-get install grub-efi-amd64-bin"
BUSYBOX=/bin/busybox
{ [ -x "$BUSYBOX" ] && is_static "$BUSYBOX"; } || die "$BUSYBOX is not a static busybox: apt-get install busybox-static"
QEMU=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 is missing: scripts/setup.sh installs it from bookworm-backports"
# The ROMs QEMU loads for shoal's `-M microvm -bios qboot.rom -kernel vmlinux`: the firmware,
# and the option ROMs that load the kernel (pvh.bin for an ELF vmlinux, which crates/vm passes;
# linuxboot_dma.bin for a bzImage). Without one, QEMU prints `rom: file ...: error` and the
# guest never runs (found by booting the image: the host's QEMU finds them in /usr/share/qemu).
QEMU_ROMS=(qboot.rom pvh.bin linuxboot_dma.bin)
for rom in "${QEMU_ROMS[@]}"; do
  [ -f "/usr/share/qemu/$rom" ] || die "/usr/share/qemu/$rom is missing: apt-get install -t bookworm-backports qemu-system-data"
done
[ "$(id -u)" -eq 0 ] || die "run as root: the root filesystem's files must be owned by root and /dev nodes made"

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# --- timing and caching -----------------------------------------------------------------------
BUILD_START=$(date +%s.%N)
step_start=0
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { step_start=$(date +%s.%N); printf 'build.sh: %-46s' "$1"; }
done_step() { printf ' %6s s  %s\n' "$(since "$step_start")" "$1"; }
hash_of() { sha256sum | cut -c1-16; }
# The text of this script's section headed `# --- $1`, for cache keys: editing another
# section does not rebuild a step.
section() { awk -v h="# --- $1" 'index($0, h) == 1 { on = 1; print; next } /^# --- / { on = 0 } on' "$0"; }
# Keeps the newest $CACHE_KEEP_PER_KIND entries named $1-*.
prune_cache() {
  ls -1dt "$CACHE/$1"-* 2>/dev/null | tail -n +$((CACHE_KEEP_PER_KIND + 1)) | xargs -r rm -rf
}
mkdir -p "$CACHE" "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shoal-live.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- inputs: shoal and guest-init ---------------------------------------------------------------
step "shoal binary"
if [ -z "$SHOAL" ]; then
  (cd "$REPO" && cargo build --release --bin shoal ${CARGO_QUIET:+--quiet})
  SHOAL=$REPO/target/release/shoal
fi
[ -x "$SHOAL" ] || die "--shoal $SHOAL is not an executable file"
mkdir -p "$WORK/app/opt/shoal/bin" "$WORK/app/opt/shoal/lib"
strip -o "$WORK/app/opt/shoal/bin/shoal" "$SHOAL"
done_step "$(du -h "$WORK/app/opt/shoal/bin/shoal" | cut -f1) stripped, from $SHOAL"

step "guest-init"
if [ -z "$GUEST_INIT" ]; then
  GUEST_INIT=$REPO/target/x86_64-unknown-linux-gnu/release/shoal-guest-init
  [ -f "$GUEST_INIT" ] || (cd "$REPO" && scripts/build-guest-init.sh)
fi
[ -f "$GUEST_INIT" ] || die "guest-init $GUEST_INIT is missing: run scripts/build-guest-init.sh or pass --guest-init"
is_static "$GUEST_INIT" || die "guest-init $GUEST_INIT is dynamically linked: build it with scripts/build-guest-init.sh"
cp "$GUEST_INIT" "$WORK/app/opt/shoal/lib/guest-init"
done_step "$GUEST_INIT"

# --- the live kernel: downloaded, checked, its modules pruned (cached) --------------------------
step "live kernel ($LIVE_KERNEL_META)"
meta=$(apt-cache show --no-all-versions "$LIVE_KERNEL_META" 2>/dev/null) ||
  die "apt knows no $LIVE_KERNEL_META: run apt-get update"
kver=$(awk '/^Version:/ {print $2; exit}' <<<"$meta")
kpkg=$(sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' <<<"$meta" | head -n 1)
[ -n "$kpkg" ] || die "$LIVE_KERNEL_META $kver names no linux-image-* package in Depends"
KREL=${kpkg#linux-image-}
# Keyed by the package and what is pruned (the list and this section of the script).
kkey=$( { echo "$kpkg=$kver"; printf '%s\n' "${LIVE_MODULES_DROPPED[@]}"; section "the live kernel"; } | hash_of)
KDIR=$CACHE/kernel-$KREL-$kkey
if [ -f "$KDIR/done" ]; then
  done_step "cached $KDIR"
else
  rm -rf "$KDIR" && mkdir -p "$KDIR" "$CACHE/deb"
  want=$(apt-cache show "$kpkg=$kver" | awk '/^SHA256:/ {print $2; exit}')
  [ -n "$want" ] || die "apt has no SHA256 for $kpkg=$kver"
  deb=$CACHE/deb/${kpkg}_${kver//:/%3a}_amd64.deb
  if [ ! -f "$deb" ] || [ "$(sha256sum "$deb" | cut -d' ' -f1)" != "$want" ]; then
    rm -f "$CACHE"/deb/"$kpkg"_*.deb
    (cd "$CACHE/deb" && apt-get download -q -o APT::Sandbox::User=root "$kpkg=$kver" >/dev/null)
  fi
  got=$(sha256sum "$deb" | cut -d' ' -f1)
  [ "$got" = "$want" ] || die "$deb has sha256 $got, apt's index says $want: delete it and build again"
  dpkg-deb -x "$deb" "$KDIR/x"
  mods=$KDIR/x/lib/modules/$KREL
  # The package ships no modules.dep (its postinst makes one): made here before the pruning.
  depmod -a -b "$KDIR/x" "$KREL"
  cp "$mods/modules.dep" "$KDIR/modules.dep.full"
  for d in "${LIVE_MODULES_DROPPED[@]}"; do rm -rf "${mods:?}/kernel/$d"; done
  # A module whose dependency was dropped can never load: drop it too, until none is left.
  # (The package's System.map is a placeholder, so depmod -e cannot tell.)
  for _ in 1 2 3 4 5 6; do
    broken=$(cd "$mods" && find kernel -name '*.ko' | awk '
      NR == FNR { have[$1] = 1; next }
      { sub(":", "", $1) }
      have[$1] { for (i = 2; i <= NF; i++) if (!have[$i]) { print $1; break } }' - "$KDIR/modules.dep.full")
    [ -z "$broken" ] && break
    (cd "$mods" && xargs rm -f <<<"$broken")
  done
  depmod -a -b "$KDIR/x" "$KREL"
  mkdir -p "$KDIR/root/lib/modules" "$KDIR/root/boot"
  mv "$mods" "$KDIR/root/lib/modules/"
  cp "$KDIR/x/boot/vmlinuz-$KREL" "$KDIR/vmlinuz"
  rm -rf "$KDIR/x" "$KDIR/modules.dep.full"
  echo "$kpkg=$kver sha256 $got" >"$KDIR/done"
  prune_cache kernel
  done_step "$kpkg $kver, modules $(du -sh "$KDIR/root/lib/modules" | cut -f1) kept"
fi

# --- the root filesystem without shoal: busybox, QEMU, the guest kernel (cached squashfs) ------
CLOUD_VMLINUZ=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$CLOUD_VMLINUZ" ] || die "no /boot/vmlinuz-*-cloud-amd64 for the microVM guests: apt-get install linux-image-cloud-amd64"
CREL=${CLOUD_VMLINUZ#/boot/vmlinuz-}
# The guest modules shoal loads (crates/vm/src/microvm/kernel.rs), read from the source so the
# image carries what the code asks for.
KERNEL_RS=$REPO/crates/vm/src/microvm/kernel.rs
guest_modules=$(sed -n 's/^pub const GUEST\(_NET\)\{0,1\}_MODULES: &\[&str\] = &\[\(.*\)\];/\2/p' "$KERNEL_RS" | tr -d '",')
[ "$(wc -w <<<"$guest_modules")" -ge 2 ] || die "found no GUEST_MODULES / GUEST_NET_MODULES in $KERNEL_RS: update build.sh"

# The shared libraries a program loads (and the loader), as absolute paths.
libraries_of() { ldd "$1" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'; }
# shoal itself comes later, but the libraries it loads sit beside QEMU's in the base (a squashfs
# append cannot add to /lib): the base is keyed by their list, not by the shoal binary.
SHOAL_LIBS=$(libraries_of "$SHOAL" | sort | tr '\n' ' ')

step "root filesystem without shoal"
bkey=$( {
  echo "$kkey $CREL $(sha256sum "$CLOUD_VMLINUZ" | cut -c1-16) $guest_modules"
  echo "qemu $(pkg_version qemu-system-x86) $(sha256sum "$QEMU" | cut -c1-16) ${QEMU_ROMS[*]}"
  echo "shoal's libraries: $SHOAL_LIBS"
  echo "busybox $(sha256sum "$BUSYBOX" | cut -c1-16) squashfs-tools $(pkg_version squashfs-tools) $SQUASHFS_ZSTD_LEVEL"
  section "the root filesystem"
  (cd "$HERE/root" && find . -type f | sort | xargs sha256sum)
} | hash_of)
BASE=$CACHE/base-$bkey.sqfs
if [ -f "$BASE" ]; then
  done_step "cached $BASE"
else
  R=$WORK/root
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,var/lib/shoal,mnt,boot,lib/modules}
  mkdir -p "$R/usr/local/lib/shoal" "$R/usr/share/qemu" "$R/var/log"
  chmod 1777 "$R/tmp"
  chmod 700 "$R/root"
  cp "$BUSYBOX" "$R/bin/busybox"
  for applet in $("$BUSYBOX" --list-full); do
    [ -e "$R/$applet" ] || ln -s /bin/busybox "$R/$applet"
  done
  cp -a "$HERE/root/." "$R/"
  ln -sf /proc/self/mounts "$R/etc/mtab"
  touch "$R/etc/resolv.conf"
  printf 'NAME="shoal live"\nID=shoal-live\nVERSION_ID=%s\n' "$KREL" >"$R/etc/os-release"
  # shoal's own files come in the last step, in /opt/shoal (a squashfs append may only add new
  # top-level names); the paths the code looks in point there.
  ln -s /opt/shoal/bin/shoal "$R/usr/bin/shoal"
  ln -s /opt/shoal/lib/guest-init "$R/usr/local/lib/shoal/guest-init"
  # A program with every library it loads, at the same paths (the loader finds them there).
  copy_libraries() {
    for lib in "$@"; do
      [ -e "$R$lib" ] || cp --parents -L "$lib" "$R"
    done
  }
  with_libraries() {
    cp --parents -L "$1" "$R"
    copy_libraries $(libraries_of "$1")
  }
  copy_libraries $SHOAL_LIBS
  # QEMU for microVM jobs (-M microvm -bios qboot.rom) and mksquashfs for their request disks.
  with_libraries "$QEMU"
  with_libraries "$(command -v mksquashfs)"
  for rom in "${QEMU_ROMS[@]}"; do cp "/usr/share/qemu/$rom" "$R/usr/share/qemu/"; done
  # The guest kernel and the closure of the modules shoal loads into guests.
  cp "$CLOUD_VMLINUZ" "$R/boot/"
  for line in $(modprobe -S "$CREL" --show-depends -a $guest_modules | awk '$1 == "insmod" {print $2}'); do
    cp --parents "$line" "$R"
  done
  cp /lib/modules/"$CREL"/modules.{builtin,builtin.modinfo,order} "$R/lib/modules/$CREL/"
  depmod -a -b "$R" "$CREL"
  cp -a "$KDIR/root/lib/modules/$KREL" "$R/lib/modules/"
  chroot "$R" /usr/bin/qemu-system-x86_64 --version >/dev/null ||
    die "qemu-system-x86_64 does not run in the image root: a library is missing (see ldd $QEMU)"
  # A microVM as shoal starts one, stopped before its first instruction (-S): QEMU has loaded its
  # firmware and the kernel's option ROM by then. A missing ROM is only a line on stderr (QEMU
  # carries on, and the guest never boots), so any line but timeout's is a failure.
  timeout 5 chroot "$R" /usr/bin/qemu-system-x86_64 -M microvm -bios /usr/share/qemu/qboot.rom -nodefaults \
    -no-user-config -display none -accel tcg -m 64 -kernel "/boot/vmlinuz-$CREL" -S 2>"$WORK/qemu-probe.err" || true
  if grep -v 'terminating on signal 15' "$WORK/qemu-probe.err" >"$WORK/qemu-probe.bad"; then
    die "QEMU cannot start a microVM in the image root: $(head -n 3 "$WORK/qemu-probe.bad")"
  fi
  chroot "$R" /usr/bin/mksquashfs -version >/dev/null ||
    die "mksquashfs does not run in the image root: a library is missing"
  rm -f "$CACHE"/base-*.sqfs.tmp
  mksquashfs "$R" "$BASE.tmp" -comp zstd -Xcompression-level "$SQUASHFS_ZSTD_LEVEL" -all-root -noappend \
    -quiet -no-progress >/dev/null
  mv "$BASE.tmp" "$BASE"
  prune_cache base
  done_step "$(du -h "$BASE" | cut -f1) from $(du -sh "$R" | cut -f1)"
fi

# --- the ISO tree: the root with shoal added, kernel, initramfs, GRUB -----------------------------
step "root filesystem with shoal (squashfs append)"
ISO=$WORK/iso
mkdir -p "$ISO/live" "$ISO/boot/grub"
cp "$BASE" "$ISO/live/shoal.sqfs"
mksquashfs "$WORK/app" "$ISO/live/shoal.sqfs" -all-root -no-recovery -quiet -no-progress >/dev/null
unsquashfs -l "$ISO/live/shoal.sqfs" >"$WORK/sqfs.list"
grep -q '^squashfs-root/opt/shoal/bin/shoal$' "$WORK/sqfs.list" ||
  die "the squashfs append put shoal elsewhere than /opt/shoal (a name clash in the base root?)"
done_step "$(du -h "$ISO/live/shoal.sqfs" | cut -f1)"

step "initramfs"
BUILD_ID=$(date -u +%Y%m%dT%H%M%SZ)-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$BUILD_ID" >"$ISO/live/build-id"
I=$WORK/initramfs
mkdir -p "$I"/{bin,dev,proc,sys,run,newroot,lib/modules/"$KREL"}
cp "$BUSYBOX" "$I/bin/busybox"
# The kernel opens /dev/console before /init runs, from the initramfs itself.
mknod -m 600 "$I/dev/console" c 5 1
modprobe -d "$KDIR/root" -S "$KREL" --show-depends -a "${BOOT_MODULES[@]}" |
  awk -v root="$KDIR/root/" '$1 == "insmod" { print substr($2, length(root) + 1) }' | sort -u |
  (cd "$KDIR/root" && xargs cp --parents -t "$I")
cp "$KDIR/root/lib/modules/$KREL"/modules.{builtin,builtin.modinfo,order} "$I/lib/modules/$KREL/"
depmod -a -b "$I" "$KREL"
sed -e "s|@BUILD_ID@|$BUILD_ID|" -e "s|@BOOT_MODULES@|${BOOT_MODULES[*]}|" -e "s|@KERNEL_RELEASE@|$KREL|" \
  "$HERE/initramfs-init" >"$I/init"
chmod 755 "$I/init"
(cd "$I" && find . | sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 >"$ISO/boot/initrd.img"
cp "$KDIR/vmlinuz" "$ISO/boot/vmlinuz"
sed "s|@BUILD_ID@|$BUILD_ID|" "$HERE/grub.cfg" >"$ISO/boot/grub/grub.cfg"
done_step "$(du -h "$ISO/boot/initrd.img" | cut -f1), $(find "$I/lib/modules" -name '*.ko' | wc -l) modules, build $BUILD_ID"

# --- the SHOAL configuration partition ----------------------------------------------------------
step "SHOAL partition (FAT, ${CONFIG_PART_MIB} MiB)"
CFG=$WORK/shoal.vfat
if "$SHOAL" live default-config >"$WORK/shoal.toml" 2>"$WORK/default-config.err"; then
  toml_from="shoal live default-config"
elif "$SHOAL" live --help >/dev/null 2>&1; then
  die "$SHOAL has \`shoal live\` but \`shoal live default-config\` failed: $(cat "$WORK/default-config.err")"
else
  # TODO(issue 18, part B): remove once `shoal live default-config` is merged; this binary
  # predates `shoal live`, so the partition gets a placeholder a person must replace.
  printf '# Placeholder: this shoal build has no `shoal live default-config`.\n' >"$WORK/shoal.toml"
  toml_from="a placeholder (this shoal has no \`live default-config\`)"
fi
mkfs.vfat -C -n SHOAL "$CFG" $((CONFIG_PART_MIB * 1024)) >/dev/null
mcopy -i "$CFG" "$WORK/shoal.toml" ::shoal.toml
done_step "shoal.toml from $toml_from"

# --- the images ------------------------------------------------------------------------------------
step "shoal-live.img (grub-mkrescue)"
IMG=$OUT/shoal-live.img
# The volume id is what the initramfs looks for (initramfs-init) before it mounts a disk.
grub-mkrescue -o "$IMG.tmp" "$ISO" -- -volid SHOAL_LIVE -append_partition 3 0x0c "$CFG" >"$WORK/mkrescue.log" 2>&1 ||
  die "grub-mkrescue failed: $(tail -n 5 "$WORK/mkrescue.log")"
mv "$IMG.tmp" "$IMG"
done_step "$(du -h --apparent-size "$IMG" | cut -f1)"

step "shoal-cloud.qcow2 (qemu-img convert)"
qemu-img convert -f raw -O qcow2 "$IMG" "$OUT/shoal-cloud.qcow2.tmp"
mv "$OUT/shoal-cloud.qcow2.tmp" "$OUT/shoal-cloud.qcow2"
done_step "$(du -h --apparent-size "$OUT/shoal-cloud.qcow2" | cut -f1)"

echo "build.sh: $IMG and $OUT/shoal-cloud.qcow2 in $(since "$BUILD_START") s (build $BUILD_ID)"
