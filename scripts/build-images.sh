#!/usr/bin/env bash
# Builds the base images from Debian packages with shoal's own code and tags them in the store
# ($SHOAL_HOME, default ~/.local/share/shoal). Idempotent: the same files give the same image id.
# Usage: scripts/build-images.sh PATH/TO/shoal
set -euo pipefail
SHOAL=${1:?usage: build-images.sh PATH/TO/shoal}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# busybox:latest — a static busybox with every applet linked, a passwd file and a sticky /tmp.
rootfs="$work/busybox"
mkdir -p "$rootfs"
(cd "$work" && apt-get download busybox-static >/dev/null 2>&1) || cp /bin/busybox "$work/busybox.bin"
if ls "$work"/busybox-static_*.deb >/dev/null 2>&1; then
  dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
  install -D -m 0755 "$work/deb/bin/busybox" "$rootfs/bin/busybox"
else
  install -D -m 0755 "$work/busybox.bin" "$rootfs/bin/busybox"
fi
for applet in $("$rootfs/bin/busybox" --list-full); do
  [ "$applet" = "bin/busybox" ] && continue
  mkdir -p "$rootfs/$(dirname "$applet")"
  ln -sf /bin/busybox "$rootfs/$applet"
done
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/root" "$rootfs/home"
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
"$SHOAL" image build "$rootfs" --tag busybox:latest --env PATH=/usr/sbin:/usr/bin:/sbin:/bin --cmd sh >/dev/null
echo "setup: busybox:latest is in the store" >&2

# The Program Explorer's images (gcc, python3, graphviz), from a debootstrap'd Debian base.
"$(dirname "$0")/build-explorer-images.sh" "$SHOAL"
