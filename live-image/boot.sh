#!/usr/bin/env bash
# Boots a live image in QEMU with its serial console on this terminal (quit: Ctrl-A X).
#
#   live-image/boot.sh [--uefi] [--usb | --virtio] [--debug [--append ARGS]] [--kvm] [--keep] [--timeline] [IMAGE]
#
#   IMAGE       default target/live/shoal-live.img (a .qcow2 works too)
#   --uefi      OVMF firmware instead of SeaBIOS
#   --usb       the image as a USB stick (qemu-xhci + usb-storage) instead of an IDE disk
#   --virtio    the image as a virtio-blk disk, as a cloud VM has it
#   --debug     skips GRUB: boots the image's kernel and initramfs directly with shoal.debug=1
#               (root shells on tty2 and the serial console, QEMU's version and free memory logged)
#   --append    with --debug: more kernel command line, e.g. shoal.mesh_key=... (shoal.toml overrides)
#   --kvm       KVM instead of TCG (the default: on these build machines /dev/kvm exists but fails)
#   --keep      writes to the image (by default QEMU's -snapshot drops what the guest writes)
#   --timeline  prefixes each console line with the seconds since QEMU started
# Network: QEMU's user-mode network on an e1000 NIC (DHCP from QEMU). Memory: 2 GiB, like the
# old PCs the image is for.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
IMG=$REPO/target/live/shoal-live.img
append="" uefi=0 usb=0 virtio=0 debug=0 kvm=0 keep=0 timeline=0
while [ $# -gt 0 ]; do
  case "$1" in
  --uefi) uefi=1 ;;
  --usb) usb=1 ;;
  --virtio) virtio=1 ;;
  --debug) debug=1 ;;
  --append) append=${2:?--append needs kernel command-line arguments}; shift ;;
  --kvm) kvm=1 ;;
  --keep) keep=1 ;;
  --timeline) timeline=1 ;;
  -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "boot.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  *) IMG=$1 ;;
  esac
  shift
done
[ -f "$IMG" ] || { echo "boot.sh: no image at $IMG: run live-image/build.sh" >&2; exit 1; }
fmt=raw
case "$IMG" in *.qcow2) fmt=qcow2 ;; esac

args=(-M pc -m 2048 -smp 2 -nographic -no-reboot
  -netdev user,id=net0 -device e1000,netdev=net0)
if [ "$kvm" = 1 ]; then
  args+=(-accel kvm -cpu host)
else
  # Without AMD-V/VT-x, as on an old PC: TCG would otherwise offer an emulated AMD-V, and the
  # node would run its jobs under KVM nested in TCG (slow, and not what such a PC does).
  args+=(-accel tcg -cpu max,-svm,-vmx)
fi
[ "$keep" = 1 ] || args+=(-snapshot)
[ "$uefi" = 1 ] && args+=(-bios /usr/share/ovmf/OVMF.fd)
if [ "$usb" = 1 ]; then
  args+=(-drive "if=none,id=stick,format=$fmt,file=$IMG" -device qemu-xhci -device usb-storage,drive=stick)
elif [ "$virtio" = 1 ]; then
  args+=(-drive "if=virtio,format=$fmt,file=$IMG")
else
  args+=(-drive "format=$fmt,file=$IMG")
fi
if [ "$debug" = 1 ]; then
  # The kernel and initramfs from the image's ISO 9660 filesystem, read with xorriso (no mount).
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  raw=$IMG
  if [ "$fmt" = qcow2 ]; then
    raw=$dir/image.raw
    qemu-img convert -O raw "$IMG" "$raw"
  fi
  xorriso -osirrox on -indev "$raw" -extract /boot/vmlinuz "$dir/vmlinuz" \
    -extract /boot/initrd.img "$dir/initrd.img" >/dev/null 2>&1
  args+=(-kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" -append "console=tty1 console=ttyS0,115200 shoal.debug=1 $append")
fi

if [ "$timeline" = 1 ]; then
  start=$EPOCHREALTIME
  stamp() {
    while IFS= read -r line; do
      awk -v a="$start" -v b="$EPOCHREALTIME" -v l="${line%$'\r'}" 'BEGIN { printf "%7.2f %s\n", b - a, l }'
    done
  }
  # This script's stdin goes on to the serial port (a background job would get /dev/null).
  exec 3<&0
  qemu-system-x86_64 "${args[@]}" <&3 > >(stamp) 2>&1 &
  qemu=$!
  # QEMU goes with this script (a timeout(1) around it, Ctrl-C).
  trap 'kill "$qemu" 2>/dev/null' EXIT INT TERM
  wait "$qemu"
else
  exec qemu-system-x86_64 "${args[@]}"
fi
