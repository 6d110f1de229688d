#!/usr/bin/env bash
# Issue 3, transports: the cost inside a TCG guest of the two ways out of the VM, measured on the same
# boot: virtio-blk (load and probe the driver, write 64 KiB and fsync) against virtio-serial (load
# virtio_console, wait for the port, write 64 KiB). Uses shoal's cached vmlinux and the host's modules.
# Usage: bench/transport.sh [SHOAL_HOME] [runs]   (run `shoal run` on the microvm backend once first)
set -euo pipefail
home=${1:-${SHOAL_HOME:-$HOME/.local/share/shoal}}
runs=${2:-5}
kernel=$(ls "$home"/vm/kernel/*/vmlinux | head -1)
mods=$(ls -d /lib/modules/*-cloud-amd64 | head -1)/kernel
work=$(mktemp -d /tmp/shoal-transport.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/d/{bin,m,proc,sys,dev}
cp /bin/busybox "$work/d/bin/"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio drivers/char/virtio_console \
  drivers/block/virtio_blk; do cp "$mods/$m.ko" "$work/d/m/"; done
cat > "$work/d/init" <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc none /proc; $B mount -t sysfs none /sys; $B mount -t devtmpfs none /dev
for m in virtio_ring virtio virtio_mmio; do $B insmod /m/$m.ko; done
up() { $B cut -d' ' -f1 /proc/uptime; }
t0=$(up); $B insmod /m/virtio_blk.ko; while [ ! -b /dev/vda ]; do $B usleep 1000; done; t1=$(up)
$B insmod /m/virtio_console.ko; while ! $B ls /dev | $B grep -q vport; do $B usleep 1000; done; t2=$(up)
$B head -c 65536 /dev/zero > /dev/$($B ls /dev | $B grep vport | $B head -1); t3=$(up)
$B dd if=/dev/zero of=/dev/vda bs=65536 count=1 conv=fsync 2>/dev/null; t4=$(up)
echo "TIMES $t0 $t1 $t2 $t3 $t4"
$B poweroff -f
EOF
chmod +x "$work/d/init"
(cd "$work/d" && find . | cpio -o -H newc --quiet > ../init.cpio)
truncate -s 4M "$work/disk.img"
khz=$(( $(grep -m1 'cpu MHz' /proc/cpuinfo | awk '{printf "%d", $4}') * 1000 ))
echo "| run | virtio_blk load+probe ms | virtio_console load+port ms | 64 KiB over the port ms | 64 KiB to the disk + fsync ms | bytes received |"
echo "|---|---|---|---|---|---|"
for i in $(seq "$runs"); do
  rm -f "$work/out.stream"
  line=$(qemu-system-x86_64 -M microvm -nodefaults -no-user-config -display none -no-reboot -serial stdio \
    -accel tcg -cpu max -m 256 -smp 1 -kernel "$kernel" -initrd "$work/init.cpio" -bios /usr/share/qemu/qboot.rom \
    -append "console=ttyS0 panic=-1 quiet mitigations=off random.trust_cpu=on tsc_early_khz=$khz tsc=reliable" \
    -drive id=d,file="$work/disk.img",format=raw,if=none -device virtio-blk-device,drive=d \
    -device virtio-serial-device -chardev file,id=r,path="$work/out.stream" \
    -device virtserialport,chardev=r,name=shoal.reply 2>&1 | grep TIMES)
  read -r _ t0 t1 t2 t3 t4 <<< "$line"
  ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
  echo "| $i | $(ms "$t0" "$t1") | $(ms "$t1" "$t2") | $(ms "$t2" "$t3") | $(ms "$t3" "$t4") | $(stat -c %s "$work/out.stream") |"
done
echo "(/proc/uptime has 10 ms resolution)"
