#!/bin/sh
# Job j1 of examples/seed.json: writes an OCI image archive (a tar of an OCI image layout) to
# its stdout, which job j2 then runs as its container. The image is this job's own busybox
# with a /hello program added; every digest is computed here with sha256sum.
set -eu
w=/tmp/img
rm -rf "$w" && mkdir -p "$w/rootfs/etc" "$w/layout/blobs/sha256"
cp -a /bin "$w/rootfs/"
echo 'root:x:0:0:root:/root:/bin/sh' > "$w/rootfs/etc/passwd"
cat > "$w/rootfs/hello" <<'HELLO'
#!/bin/sh
echo "hello from the image job j1 built (foo=$foo)"
HELLO
chmod 755 "$w/rootfs/hello"

blob() { # FILE -> its sha256, moved into the layout's blobs
  d=$(sha256sum "$1" | cut -d' ' -f1)
  mv "$1" "$w/layout/blobs/sha256/$d"
  echo "$d"
}
size() { stat -c %s "$w/layout/blobs/sha256/$1"; }

case $(uname -m) in aarch64) arch=arm64 ;; *) arch=amd64 ;; esac
tar -C "$w/rootfs" -cf "$w/layer.tar" .
layer=$(blob "$w/layer.tar")
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/hello"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$arch" "$layer" > "$w/config.json"
config=$(blob "$w/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$config" "$(size "$config")" "$layer" "$(size "$layer")" > "$w/manifest.json"
manifest=$(blob "$w/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' \
  "$manifest" "$(size "$manifest")" > "$w/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$w/layout/oci-layout"
tar -C "$w/layout" -cf - .
