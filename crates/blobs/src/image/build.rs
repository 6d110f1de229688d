//! Writing an OCI image layout from a directory: one uncompressed layer whose entries are in
//! name order with zeroed mtimes (the same directory always gives the same digests), the config,
//! the manifest, `index.json` naming it, and `oci-layout`.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde_json::json;
use sha2::Digest as _;

use super::oci::{OCI_INDEX, OCI_MANIFEST};
use super::{ImageConfig, shoal_arch_to_oci};

struct HashingWriter<W> {
    inner: W,
    sha: sha2::Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> io::Result<(String, u64)> {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    std::fs::write(blobs.join(&hex), bytes)?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

fn header_for(md: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid() as u64);
    h.set_gid(md.gid() as u64);
    h.set_mtime(0);
    h.set_size(0);
    h
}

/// Writes the tar layer of `rootfs` into `w`.
fn write_layer<W: Write>(rootfs: &Path, w: W) -> io::Result<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let walk = walkdir::WalkDir::new(rootfs).follow_links(false).min_depth(1).sort_by_file_name();
    for e in walk {
        let e = e.map_err(io::Error::other)?;
        let rel = e.path().strip_prefix(rootfs).map_err(io::Error::other)?;
        let rel = rel
            .to_str()
            .ok_or_else(|| io::Error::other(format!("{}: the name is not UTF-8", e.path().display())))?
            .to_owned();
        let md = std::fs::symlink_metadata(e.path())?;
        let ft = md.file_type();
        if ft.is_dir() {
            let mut h = header_for(&md, tar::EntryType::Directory);
            b.append_data(&mut h, format!("{rel}/"), io::empty())?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(e.path())?;
            let mut h = header_for(&md, tar::EntryType::Symlink);
            b.append_link(&mut h, &rel, target)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    let mut h = header_for(&md, tar::EntryType::Link);
                    b.append_link(&mut h, &rel, first)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), rel.clone());
            }
            let mut h = header_for(&md, tar::EntryType::Regular);
            h.set_size(md.len());
            b.append_data(&mut h, &rel, std::fs::File::open(e.path())?)?;
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "device"
            };
            return Err(io::Error::other(format!(
                "{} is a {kind}; an image layer built by shoal holds only files, directories and symlinks",
                e.path().display()
            )));
        }
    }
    b.into_inner()
}

/// Writes an OCI image layout of `rootfs` with `config` to `out_dir` (created if needed; an
/// existing layout keeps its other images, and an image of the same `tag` is replaced). `tag`
/// becomes the `org.opencontainers.image.ref.name` annotation (`latest`, or `busybox:latest`).
pub fn build_oci_layout_from_dir(rootfs: &Path, config: &ImageConfig, out_dir: &Path, tag: &str) -> io::Result<()> {
    let blobs = out_dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let tmp = blobs.join(format!(".layer-{}.tmp", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    let w = HashingWriter { inner: io::BufWriter::new(file), sha: sha2::Sha256::new(), size: 0 };
    let mut w = write_layer(rootfs, w)?;
    w.flush()?;
    let layer_hex = hex::encode(w.sha.clone().finalize());
    let layer_size = w.size;
    w.inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, blobs.join(&layer_hex))?;
    let layer_digest = format!("sha256:{layer_hex}");

    let mut cc = serde_json::Map::new();
    cc.insert("Env".into(), json!(config.env));
    if !config.entrypoint.is_empty() {
        cc.insert("Entrypoint".into(), json!(config.entrypoint));
    }
    if !config.cmd.is_empty() {
        cc.insert("Cmd".into(), json!(config.cmd));
    }
    if let Some(w) = &config.workdir {
        cc.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &config.user {
        cc.insert("User".into(), json!(u));
    }
    let config_json = json!({
        "architecture": shoal_arch_to_oci(&config.arch),
        "os": "linux",
        "config": cc,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = write_blob(&blobs, &serde_json::to_vec(&config_json)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = write_blob(&blobs, &serde_json::to_vec(&manifest)?)?;

    let index_path = out_dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = match std::fs::read(&index_path) {
        Ok(raw) => serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    manifests
        .retain(|m| m.pointer("/annotations/org.opencontainers.image.ref.name").and_then(|v| v.as_str()) != Some(tag));
    manifests.push(json!({
        "mediaType": OCI_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    std::fs::write(out_dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}
