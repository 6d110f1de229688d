//! OCI manifests and configs, OCI image layouts, `docker save` and OCI archives, and the import
//! path they share with registry pulls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::Digest as _;
use tracing::info;

use super::registry::RegistryClient;
use super::{Image, ImageConfig, ImageId, ProgressFn, oci_arch_to_shoal};
use crate::error::ImageError;
use crate::meta::Meta;
use crate::{Hash, Store};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest or an index (whichever fields are present).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX
            || self.media_type == DOCKER_LIST
            || (self.config.is_none() && !self.manifests.is_empty())
    }
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

pub(crate) fn parse_config(raw: &[u8], source: &str) -> Result<ImageConfig, ImageError> {
    let c: ConfigFile =
        serde_json::from_slice(raw).map_err(|e| ImageError::format(source, format!("image config: {e}")))?;
    let cc = c.config.unwrap_or_default();
    Ok(ImageConfig {
        env: cc.env.unwrap_or_default(),
        entrypoint: cc.entrypoint.unwrap_or_default(),
        cmd: cc.cmd.unwrap_or_default(),
        workdir: cc.working_dir.filter(|s| !s.is_empty()),
        user: cc.user.filter(|s| !s.is_empty()),
        arch: oci_arch_to_shoal(if c.architecture.is_empty() { "amd64" } else { &c.architecture }),
    })
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `sha256:<hex>` -> `<hex>`, refusing other algorithms.
pub(crate) fn sha256_of_digest(digest: &str, source: &str) -> Result<String, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex.to_ascii_lowercase()),
        _ => Err(ImageError::format(
            source,
            format!("digest `{digest}` is not sha256:<64 hex> (the only algorithm shoal reads)"),
        )),
    }
}

/// Picks the entry of an index for `want` (an import's `--platform`), or else this machine's
/// platform; an index of one image gives it, whatever its platform, unless one was asked for.
/// Entries for no platform (`unknown/unknown`: build attestations) are never picked.
pub(crate) fn pick_platform<'a>(
    index: &'a Manifest,
    source: &str,
    want: Option<&ImagePlatform>,
) -> Result<&'a Descriptor, ImageError> {
    if index.manifests.len() == 1 && want.is_none() {
        return Ok(&index.manifests[0]);
    }
    let host = ImagePlatform::host();
    let goal = want.unwrap_or(&host);
    let found = index.manifests.iter().find(|d| match &d.platform {
        Some(p) => goal.matches(p),
        // An entry without a platform (older docker lists) is the only one of its index.
        None => index.manifests.len() == 1 && want.is_some_and(|w| *w == host),
    });
    found.ok_or_else(|| {
        let has: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .filter(|p| p.os != "unknown")
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        let has = if has.is_empty() { "no platform named".to_owned() } else { has.join(", ") };
        ImageError::format(
            source,
            format!("the image index has no {goal} image (it has {has}); pick one with `--platform`"),
        )
    })
}

/// An image platform, as `--platform` names it: `linux/arm64`, `linux/arm/v7`, `arm64`, or
/// shoal's architecture names (`aarch64`). Only linux images run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlatform {
    /// OCI's name: `amd64`, `arm64`, `riscv64`.
    pub arch: String,
    pub variant: Option<String>,
}

impl ImagePlatform {
    /// This machine's.
    pub fn host() -> ImagePlatform {
        ImagePlatform::for_arch(std::env::consts::ARCH)
    }

    /// The platform of shoal's architecture `arch` (`x86_64`, `aarch64`, `riscv64`).
    pub fn for_arch(arch: &str) -> ImagePlatform {
        ImagePlatform { arch: super::shoal_arch_to_oci(arch), variant: None }
    }

    /// shoal's name of the architecture (`x86_64`, `aarch64`), as images and jobs say it.
    pub fn shoal_arch(&self) -> String {
        super::oci_arch_to_shoal(&self.arch)
    }

    fn matches(&self, p: &Platform) -> bool {
        p.os == "linux"
            && p.architecture == self.arch
            && self.variant.as_ref().is_none_or(|v| p.variant.as_deref() == Some(v.as_str()))
    }
}

impl std::str::FromStr for ImagePlatform {
    type Err = String;

    fn from_str(s: &str) -> Result<ImagePlatform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let (arch, variant) = match parts.as_slice() {
            ["linux", arch] | [arch] => (*arch, None),
            ["linux", arch, variant] => (*arch, Some((*variant).to_owned())),
            _ => return Err(format!("`{s}` is not a platform; write it as docker does: `linux/arm64`, `linux/amd64`")),
        };
        let known = ["amd64", "arm64", "riscv64", "arm", "386", "ppc64le", "s390x", "x86_64", "aarch64"];
        if !known.contains(&arch) {
            return Err(format!(
                "`{s}`: unknown architecture `{arch}`; shoal runs linux/amd64, linux/arm64 and linux/riscv64"
            ));
        }
        Ok(ImagePlatform { arch: super::shoal_arch_to_oci(arch), variant })
    }
}

impl std::fmt::Display for ImagePlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "linux/{}/{v}", self.arch),
            None => write!(f, "linux/{}", self.arch),
        }
    }
}

/// Removes a temporary directory when dropped.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = crate::tree::remove_tree_forcefully(dir);
        }
    }
}

/// Where a layer's bytes come from.
pub(crate) enum LayerSource {
    File(PathBuf),
    Registry(Arc<RegistryClient>),
}

pub(crate) struct LayerPlan {
    /// sha256 hex, when the manifest names it (docker archives do not).
    pub digest: Option<String>,
    pub size: u64,
    pub source: LayerSource,
}

pub(crate) struct ImportPlan {
    pub source_name: String,
    /// The raw manifest, when there is one (not for docker archives).
    pub manifest: Option<Vec<u8>>,
    pub config: Vec<u8>,
    pub layers: Vec<LayerPlan>,
    pub tag: Option<String>,
}

impl Store {
    /// Stores the layers (expanded, cached by digest), merges them, stores config, manifest and
    /// the image, and indexes it.
    pub(crate) async fn run_import(
        &self,
        plan: ImportPlan,
        progress: Option<ProgressFn>,
    ) -> Result<ImageId, ImageError> {
        let started = std::time::Instant::now();
        let total: u64 = plan.layers.iter().map(|l| l.size).sum();
        let mut done = 0u64;
        let report = |d: u64| {
            if let Some(p) = &progress {
                p(d, total);
            }
        };
        report(0);
        let mut layer_trees = Vec::new();
        let mut rootfs: Option<Hash> = None;
        for (i, layer) in plan.layers.iter().enumerate() {
            let name = format!("{} layer {}", plan.source_name, i + 1);
            let cached = match &layer.digest {
                Some(d) => self.cached_layer(d).await?,
                None => None,
            };
            let tree = match cached {
                Some(t) => t,
                None => {
                    // A downloaded layer's directory goes on every path out, failures included
                    // (a failed pull left its download behind until the next open).
                    let mut _download = RemoveOnDrop(None);
                    let path = match &layer.source {
                        LayerSource::File(p) => p.clone(),
                        LayerSource::Registry(client) => {
                            let digest = layer.digest.clone().expect("registry layers have digests");
                            let dir = self.temp_dir("pull")?;
                            _download = RemoveOnDrop(Some(dir.clone()));
                            let dest = dir.join("layer");
                            let (c, d2, p2, base) = (client.clone(), dest.clone(), progress.clone(), done);
                            tokio::task::spawn_blocking(move || {
                                c.download_blob(&digest, &d2, |n| {
                                    if let Some(p) = &p2 {
                                        p(base + n, total);
                                    }
                                })
                            })
                            .await
                            .map_err(|e| ImageError::format(&name, e.to_string()))??;
                            dest
                        }
                    };
                    let (blake, _size, sha) = self.put_file_sha256(&path).await?;
                    if let Some(d) = &layer.digest
                        && *d != sha
                    {
                        return Err(ImageError::DigestMismatch { what: name, expected: d.clone(), actual: sha });
                    }
                    Meta::put(&self.meta().sha256, sha.as_bytes(), &blake.0)?;
                    match self.cached_layer(&sha).await? {
                        Some(t) => t,
                        None => {
                            let t = self.expand_layer(&path, &name).await?;
                            Meta::put(&self.meta().layers, sha.as_bytes(), &t.0)?;
                            t
                        }
                    }
                }
            };
            layer_trees.push(tree);
            rootfs = Some(self.merge_trees(rootfs, tree).await?);
            done += layer.size;
            report(done);
        }
        let rootfs = match rootfs {
            Some(r) => r,
            None => self.put_tree(&crate::tree::Tree::default()).await?,
        };
        let config = parse_config(&plan.config, &plan.source_name)?;
        let config_sha = sha256_hex(&plan.config);
        let config_blob = self.put_bytes(plan.config.clone()).await?;
        Meta::put(&self.meta().sha256, config_sha.as_bytes(), &config_blob.0)?;
        let mut keeps = vec![config_blob];
        let mut digests = vec![config_sha];
        let mut oci_digest = None;
        if let Some(m) = &plan.manifest {
            let sha = sha256_hex(m);
            let blob = self.put_bytes(m.clone()).await?;
            Meta::put(&self.meta().sha256, sha.as_bytes(), &blob.0)?;
            keeps.push(blob);
            oci_digest = Some(format!("sha256:{sha}"));
            digests.push(sha);
        }
        keeps.extend(layer_trees);
        let image = Image { config, rootfs, oci_digest };
        let id = self.index_image(&image, &digests, &keeps, plan.tag.as_deref()).await?;
        info!(source = %plan.source_name, %id, tag = ?plan.tag, ms = started.elapsed().as_millis() as u64, "imported image");
        Ok(id)
    }

    async fn cached_layer(&self, sha: &str) -> Result<Option<Hash>, ImageError> {
        match Meta::get_hash(&self.meta().layers, sha.as_bytes())? {
            Some(t) if self.has(t).await? => Ok(Some(t)),
            _ => Ok(None),
        }
    }

    /// Imports the image of an OCI image layout directory. `tag` names it in the index; without
    /// it, an `org.opencontainers.image.ref.name` of the form `name:tag` is used.
    pub async fn import_oci_layout(&self, dir: &Path, tag: Option<&str>) -> Result<ImageId, ImageError> {
        self.import_oci_layout_with_progress(dir, tag, None).await
    }

    pub async fn import_oci_layout_with_progress(
        &self,
        dir: &Path,
        tag: Option<&str>,
        progress: Option<ProgressFn>,
    ) -> Result<ImageId, ImageError> {
        self.import_image_for(dir, tag, None, progress).await
    }

    /// Imports a `docker save` archive, or an OCI archive (a layout packed in a tar).
    pub async fn import_docker_archive(&self, tar: &Path, tag: Option<&str>) -> Result<ImageId, ImageError> {
        self.import_image_for(tar, tag, None, None).await
    }

    /// A directory is read as an OCI layout; a file as a `docker save` or OCI archive.
    pub async fn import_image_path(&self, path: &Path, tag: Option<&str>) -> Result<ImageId, ImageError> {
        self.import_image_for(path, tag, None, None).await
    }

    pub async fn import_image_path_with_progress(
        &self,
        path: &Path,
        tag: Option<&str>,
        progress: Option<ProgressFn>,
    ) -> Result<ImageId, ImageError> {
        self.import_image_for(path, tag, None, progress).await
    }

    /// Imports the image at `path` (an OCI layout directory, an OCI archive or a `docker save`
    /// archive) for `platform`: an index's entry for it, and an error when the image is for
    /// another. Without `platform`, an index's entry for this machine, or its only entry.
    pub async fn import_image_for(
        &self,
        path: &Path,
        tag: Option<&str>,
        platform: Option<&ImagePlatform>,
        progress: Option<ProgressFn>,
    ) -> Result<ImageId, ImageError> {
        let md = std::fs::metadata(path).map_err(ImageError::io("cannot read", path))?;
        if md.is_dir() {
            let plan = layout_plan(path, tag, None, platform)?;
            check_platform(&plan, platform)?;
            self.run_import(plan, progress).await
        } else {
            self.import_archive(path, tag, platform, progress).await
        }
    }

    async fn import_archive(
        &self,
        tar: &Path,
        tag: Option<&str>,
        platform: Option<&ImagePlatform>,
        progress: Option<ProgressFn>,
    ) -> Result<ImageId, ImageError> {
        let dir = self.temp_dir("archive")?;
        let result = async {
            let (t, d) = (tar.to_owned(), dir.clone());
            tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
                let f = std::fs::File::open(&t).map_err(ImageError::io("cannot open", &t))?;
                let mut a = tar::Archive::new(std::io::BufReader::new(f));
                a.set_preserve_permissions(false);
                a.unpack(&d).map_err(ImageError::io("cannot unpack the archive", &t))
            })
            .await
            .map_err(|e| ImageError::format(tar.display(), e.to_string()))??;
            let docker_tag = docker_repo_tag(&dir);
            let tag = tag.map(str::to_owned).or(docker_tag);
            let plan = if dir.join("index.json").is_file() && dir.join("oci-layout").is_file() {
                layout_plan(&dir, tag.as_deref(), Some(tar), platform)?
            } else if dir.join("manifest.json").is_file() {
                docker_plan(&dir, tag, tar)?
            } else {
                return Err(ImageError::format(
                    tar.display(),
                    "neither a `docker save` archive (manifest.json) nor an OCI archive (index.json, oci-layout)",
                ));
            };
            check_platform(&plan, platform)?;
            self.run_import(plan, progress).await
        }
        .await;
        let _ = crate::tree::remove_tree_forcefully(&dir);
        result
    }
}

/// An image asked for by platform must be for that platform (an archive of one image, or an
/// index's only entry, may not be).
pub(crate) fn check_platform(plan: &ImportPlan, want: Option<&ImagePlatform>) -> Result<(), ImageError> {
    let Some(want) = want else { return Ok(()) };
    let config = parse_config(&plan.config, &plan.source_name)?;
    if config.arch != want.shoal_arch() {
        return Err(ImageError::format(
            &plan.source_name,
            format!(
                "its image is linux/{}, not {want}; import it without `--platform`, or import an image built for {want}",
                super::shoal_arch_to_oci(&config.arch)
            ),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_manifest(dir: &Path) -> Option<Vec<DockerManifestEntry>> {
    let path = regular_file_inside(dir, &dir.join("manifest.json"), "").ok()?;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn docker_repo_tag(dir: &Path) -> Option<String> {
    docker_manifest(dir)?.into_iter().next()?.repo_tags?.into_iter().next()
}

/// A path inside an unpacked archive, refusing escapes.
fn inside(dir: &Path, rel: &str, source: &str) -> Result<PathBuf, ImageError> {
    if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
        return Err(ImageError::format(source, format!("path `{rel}` leaves the archive")));
    }
    regular_file_inside(dir, &dir.join(rel), source)
}

/// `path`, which must resolve to a regular file inside `dir`. An archive's symlinks are unpacked
/// as written, so a hostile one could otherwise make the import read a host file (`config.json`
/// -> a file of the host) or a device (a layer -> /dev/zero, read until the disk is full); a
/// link to another file of the archive (`docker save` links identical layers) is fine. A missing
/// file is left for the read that needs it to report (a cached layer is never read).
fn regular_file_inside(dir: &Path, path: &Path, source: &str) -> Result<PathBuf, ImageError> {
    let rel = path.strip_prefix(dir).unwrap_or(path).display();
    let root = std::fs::canonicalize(dir).map_err(ImageError::io("cannot read", dir))?;
    let real = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_owned()),
        Err(e) => return Err(ImageError::io("cannot read", path)(e)),
    };
    if !real.starts_with(&root) {
        return Err(ImageError::format(
            source,
            format!("`{rel}` is a link to {}, outside the archive; an image brings its own files", real.display()),
        ));
    }
    let md = std::fs::metadata(&real).map_err(ImageError::io("cannot read", &real))?;
    if !md.is_file() {
        return Err(ImageError::format(source, format!("`{rel}` is not a regular file")));
    }
    Ok(real)
}

fn docker_plan(dir: &Path, tag: Option<String>, tar: &Path) -> Result<ImportPlan, ImageError> {
    let source = tar.display().to_string();
    let path = inside(dir, "manifest.json", &source)?;
    let raw = std::fs::read(&path).map_err(ImageError::io("cannot read", &path))?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&raw).map_err(|e| ImageError::format(&source, format!("manifest.json: {e}")))?;
    let entry =
        entries.into_iter().next().ok_or_else(|| ImageError::format(&source, "manifest.json lists no image"))?;
    let config_path = inside(dir, &entry.config, &source)?;
    let config = std::fs::read(&config_path).map_err(ImageError::io("cannot read", &config_path))?;
    let mut layers = Vec::new();
    for l in &entry.layers {
        let p = inside(dir, l, &source)?;
        let size = std::fs::metadata(&p).map_err(ImageError::io("cannot read", &p))?.len();
        // `blobs/sha256/<hex>` names (newer docker) carry the digest.
        let digest = l.strip_prefix("blobs/sha256/").filter(|h| h.len() == 64).map(str::to_owned);
        layers.push(LayerPlan { digest, size, source: LayerSource::File(p) });
    }
    Ok(ImportPlan { source_name: source, manifest: None, config, layers, tag })
}

fn read_blob(dir: &Path, digest: &str, source: &str) -> Result<(PathBuf, String), ImageError> {
    let hex = sha256_of_digest(digest, source)?;
    Ok((regular_file_inside(dir, &dir.join("blobs/sha256").join(&hex), source)?, hex))
}

fn layout_plan(
    dir: &Path,
    tag: Option<&str>,
    archive: Option<&Path>,
    platform: Option<&ImagePlatform>,
) -> Result<ImportPlan, ImageError> {
    let source = archive.unwrap_or(dir).display().to_string();
    let index_path = regular_file_inside(dir, &dir.join("index.json"), &source)?;
    let raw = std::fs::read(&index_path).map_err(ImageError::io("cannot read the OCI layout index", &index_path))?;
    let index: Manifest =
        serde_json::from_slice(&raw).map_err(|e| ImageError::format(&source, format!("index.json: {e}")))?;
    if index.manifests.is_empty() {
        return Err(ImageError::format(&source, "index.json lists no image"));
    }
    let ref_name = |d: &Descriptor| d.annotations.get("org.opencontainers.image.ref.name").cloned();
    let chosen = if index.manifests.len() == 1 && platform.is_none() {
        &index.manifests[0]
    } else if platform.is_some() {
        pick_platform(&index, &source, platform)?
    } else {
        let by_tag = tag.and_then(|t| {
            let short = t.rsplit(':').next().unwrap_or(t);
            index.manifests.iter().find(|d| ref_name(d).is_some_and(|r| r == t || r == short))
        });
        match by_tag {
            Some(d) => d,
            None => pick_platform(&index, &source, platform)?,
        }
    };
    let local_tag = tag.map(str::to_owned).or_else(|| {
        chosen
            .annotations
            .get("io.containerd.image.name")
            .cloned()
            .or_else(|| ref_name(chosen).filter(|r| r.contains(':')))
    });
    let mut desc = chosen.clone();
    let mut hops = 0;
    loop {
        let (path, hex) = read_blob(dir, &desc.digest, &source)?;
        let bytes = std::fs::read(&path).map_err(ImageError::io("cannot read", &path))?;
        let actual = sha256_hex(&bytes);
        if actual != hex {
            return Err(ImageError::DigestMismatch { what: format!("{source}: manifest"), expected: hex, actual });
        }
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::format(&source, format!("manifest {}: {e}", desc.digest)))?;
        if m.is_index() || desc.media_type == OCI_INDEX || desc.media_type == DOCKER_LIST {
            hops += 1;
            if hops > 4 {
                return Err(ImageError::format(&source, "image indexes nest more than 4 deep"));
            }
            desc = pick_platform(&m, &source, platform)?.clone();
            continue;
        }
        let config_desc = m.config.as_ref().ok_or_else(|| ImageError::format(&source, "the manifest has no config"))?;
        let (config_path, config_hex) = read_blob(dir, &config_desc.digest, &source)?;
        let config = std::fs::read(&config_path).map_err(ImageError::io("cannot read", &config_path))?;
        let actual = sha256_hex(&config);
        if actual != config_hex {
            return Err(ImageError::DigestMismatch { what: format!("{source}: config"), expected: config_hex, actual });
        }
        let mut layers = Vec::new();
        for l in &m.layers {
            let (p, hex) = read_blob(dir, &l.digest, &source)?;
            layers.push(LayerPlan { digest: Some(hex), size: l.size, source: LayerSource::File(p) });
        }
        return Ok(ImportPlan { source_name: source, manifest: Some(bytes), config, layers, tag: local_tag });
    }
}
