//! Container images: import from OCI layouts, `docker save` / OCI archives and registries; the
//! image index (tags and digests); writing an OCI layout from a directory.
//!
//! An image is stored as the canonical CBOR of [`Image`]; the BLAKE3 of that blob is its id
//! (`blake3:...`). Importing follows Buildbarn ADR 8: each layer is expanded into a tree of its
//! own (whiteout files kept as plain entries), cached by the layer's sha256 digest, and the layer
//! trees are merged in order (`.wh.<name>` deletes `<name>` below, `.wh..wh..opq` hides everything
//! below in its directory), each merge cached by the pair of trees. Images that share layers or
//! files therefore share blobs.
//!
//! - `layer`: layer tar -> tree, and the merge.
//! - `oci`: manifests, OCI layouts, archives, and the common import path.
//! - `registry`: the OCI distribution API (pull).
//! - `build`: [`build_oci_layout_from_dir`].
//! - [`fuzz`]: the private parsers' doors for the fuzz targets (`crates/fuzz-entry`); not an API.

mod build;
mod layer;
mod oci;
mod registry;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use build::build_oci_layout_from_dir;
pub use oci::ImagePlatform;
pub use registry::PullOptions;

use crate::error::ImageError;
use crate::meta::{Meta, hash_of};
use crate::{Hash, ImageRef, Store, StoreError, canonical_cbor};

/// The `blake3:` id of an image: the hash of its [`Image`] blob.
pub type ImageId = Hash;

/// Called with (bytes done, bytes total) while importing or pulling, for progress bars.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub config: ImageConfig,
    /// The merged root filesystem.
    pub rootfs: Hash,
    /// `sha256:<hex>` of the OCI manifest, when the image came with one.
    pub oci_digest: Option<String>,
}

/// What the runtime needs from an image's config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// shoal's architecture names: `x86_64`, `aarch64`, `riscv64` (OCI's `amd64`, `arm64` are
    /// translated on import and back on export).
    pub arch: String,
}

/// What the index keeps about an image besides its blob (`image_blobs` in `meta`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ImageInfo {
    /// Blobs kept with the image: manifest, config, layer trees.
    pub keeps: Vec<Hash>,
    pub oci_digest: Option<String>,
    /// Its config's architecture (absent in entries of stores older than platforms).
    #[serde(default)]
    pub arch: Option<String>,
}

/// One tag of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub tag: String,
    pub id: Hash,
    pub oci_digest: Option<String>,
}

impl Image {
    pub fn encode(&self) -> Vec<u8> {
        canonical_cbor(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Image, String> {
        crate::from_cbor(bytes)
    }
}

/// The narrowest public doors to the image parsers that are otherwise private, for the fuzz
/// targets (`crates/fuzz-entry`), so nightly fuzzing and the stable corpus replay call the code
/// an import runs. Not an API: nothing else may use it.
#[doc(hidden)]
pub mod fuzz {
    use std::path::Path;

    use super::oci::{Manifest, parse_config, pick_platform, sha256_of_digest};
    use super::{ImageConfig, registry};
    use crate::error::ImageError;
    use crate::{Hash, Store, StoreError};

    /// What an import takes from a manifest or index: the digest of the platform an index picks,
    /// or a manifest's config and layer digests (sha256 hex), as `run_import` and `pull` read them.
    #[derive(Debug)]
    pub enum ManifestRead {
        Index { picked: String },
        Image { config: String, layers: Vec<(String, u64)> },
    }

    pub fn manifest(raw: &[u8]) -> Result<ManifestRead, ImageError> {
        let source = "fuzz";
        let m: Manifest =
            serde_json::from_slice(raw).map_err(|e| ImageError::format(source, format!("manifest: {e}")))?;
        if m.is_index() {
            let picked = pick_platform(&m, source, None)?.digest.clone();
            return Ok(ManifestRead::Index { picked: sha256_of_digest(&picked, source)? });
        }
        let config = m.config.as_ref().ok_or_else(|| ImageError::format(source, "the manifest has no config"))?;
        let config = sha256_of_digest(&config.digest, source)?;
        let mut layers = Vec::new();
        for l in &m.layers {
            layers.push((sha256_of_digest(&l.digest, source)?, l.size));
        }
        Ok(ManifestRead::Image { config, layers })
    }

    pub fn config(raw: &[u8]) -> Result<ImageConfig, ImageError> {
        parse_config(raw, "fuzz")
    }

    /// The parameters of a registry's `WWW-Authenticate: Bearer ...` challenge.
    pub fn bearer_params(challenge: &str) -> Option<Vec<(String, String)>> {
        registry::bearer_params(challenge)
    }

    /// An image reference as `shoal image pull` reads it: (host, repository, tag or digest).
    pub fn reference(r: &str) -> Result<(String, String, String), ImageError> {
        let r = registry::parse_reference(r)?;
        Ok((r.host, r.repo, r.reference))
    }

    /// Expands the layer tar (plain, gzip or zstd) at `path` into a tree, whiteouts kept.
    pub async fn expand_layer(store: &Store, path: &Path) -> Result<Hash, ImageError> {
        store.expand_layer(path, "fuzz layer").await
    }

    /// Applies layer tree `upper` onto `lower`, interpreting its whiteouts.
    pub async fn merge_layers(store: &Store, lower: Option<Hash>, upper: Hash) -> Result<Hash, StoreError> {
        store.merge_trees(lower, upper).await
    }
}

/// The `image_platforms` key of `tag`'s image for `arch`; with `arch` empty, the prefix of all.
fn platform_key(tag: &str, arch: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + 1 + arch.len());
    k.extend_from_slice(tag.as_bytes());
    k.push(0);
    k.extend_from_slice(arch.as_bytes());
    k
}

pub(crate) fn oci_arch_to_shoal(arch: &str) -> String {
    match arch {
        "amd64" => "x86_64".into(),
        "arm64" => "aarch64".into(),
        other => other.into(),
    }
}

pub(crate) fn shoal_arch_to_oci(arch: &str) -> String {
    match arch {
        "x86_64" | "" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

/// `busybox` -> `busybox:latest`; names with a tag or digest stay as they are.
pub fn normalize_tag(tag: &str) -> String {
    let last = tag.rsplit('/').next().unwrap_or(tag);
    if last.contains(':') || last.contains('@') { tag.to_owned() } else { format!("{tag}:latest") }
}

impl Store {
    /// Every tag, sorted.
    pub fn images(&self) -> Result<Vec<ImageEntry>, ImageError> {
        let m = self.meta();
        let mut out = Vec::new();
        for kv in m.images.iter() {
            let (k, v) = kv.map_err(StoreError::meta("read"))?;
            let (Ok(tag), Some(id)) = (String::from_utf8(k.to_vec()), hash_of(&v)) else { continue };
            let oci_digest = self.image_digest_of(id);
            out.push(ImageEntry { tag, id, oci_digest });
        }
        Ok(out)
    }

    fn image_digest_of(&self, id: Hash) -> Option<String> {
        self.image_info(id)?.oci_digest
    }

    fn image_info(&self, id: Hash) -> Option<ImageInfo> {
        let bytes = self.meta().image_blobs.get(id.0).ok()??;
        crate::from_cbor(&bytes).ok()
    }

    /// Points `tag` (a bare name means `:latest`) at image `id`, and the tag's image for `id`'s
    /// platform at it too: a tag names one image per platform, and the last import's unqualified.
    pub fn tag_image(&self, tag: &str, id: Hash) -> Result<(), ImageError> {
        let tag = normalize_tag(tag);
        Meta::put(&self.meta().images, tag.as_bytes(), &id.0)?;
        if let Some(arch) = self.image_info(id).and_then(|i| i.arch) {
            Meta::put(&self.meta().image_platforms, &platform_key(&tag, &arch), &id.0)?;
        }
        self.meta().flush()?;
        tracing::info!(%tag, %id, "tagged image");
        Ok(())
    }

    /// Removes a tag. When no tag is left on the image, its digest entries go too, so the next
    /// `gc` may collect it. Returns whether the tag existed.
    pub fn untag_image(&self, tag: &str) -> Result<bool, ImageError> {
        let tag = normalize_tag(tag);
        let m = self.meta();
        let Some(old) = m.images.remove(tag.as_bytes()).map_err(StoreError::meta("write"))? else {
            return Ok(false);
        };
        for k in m.image_platforms.scan_prefix(platform_key(&tag, "")).keys() {
            m.image_platforms.remove(k.map_err(StoreError::meta("read"))?).map_err(StoreError::meta("write"))?;
        }
        let id = hash_of(&old);
        let still_tagged = m.images.iter().values().any(|v| v.ok().and_then(|v| hash_of(&v)) == id);
        if !still_tagged {
            for kv in m.image_digests.iter() {
                let (k, v) = kv.map_err(StoreError::meta("read"))?;
                if hash_of(&v) == id {
                    m.image_digests.remove(k).map_err(StoreError::meta("write"))?;
                }
            }
        }
        m.flush()?;
        Ok(true)
    }

    /// The image stored under `id`, or `None`.
    pub async fn get_image(&self, id: Hash) -> Result<Option<Image>, ImageError> {
        let Some(bytes) = self.get_bytes(id).await? else { return Ok(None) };
        Ok(Image::decode(&bytes).ok())
    }

    /// Finds an image by tag (`busybox:latest`; a bare name means `:latest`), by `sha256:` digest
    /// of its manifest (or of its config, docker's image id), or by `blake3:` id.
    pub async fn resolve_image(&self, r: &ImageRef) -> Result<(Hash, Image), ImageError> {
        self.resolve_image_for(r, None).await
    }

    /// [`Store::resolve_image`] for a job of architecture `arch` (shoal's name; `None`: this
    /// machine's, preferred but not required): a tag gives its image for that platform where
    /// one was imported, else its last import's, which must then be for `arch`.
    pub async fn resolve_image_for(&self, r: &ImageRef, arch: Option<&str>) -> Result<(Hash, Image), ImageError> {
        let m = self.meta();
        let id = match r {
            ImageRef::Tag(t) => {
                let tag = normalize_tag(t);
                let want = arch.unwrap_or(std::env::consts::ARCH);
                let id = match Meta::get_hash(&m.image_platforms, &platform_key(&tag, want))? {
                    Some(id) => id,
                    None => {
                        Meta::get_hash(&m.images, tag.as_bytes())?.ok_or(ImageError::UnknownTag { tag: tag.clone() })?
                    }
                };
                let image = self.get_image(id).await?.ok_or(ImageError::UnknownId { id })?;
                if let Some(wants) = arch.filter(|a| *a != image.config.arch) {
                    return Err(ImageError::WrongPlatform {
                        tag,
                        has: shoal_arch_to_oci(&image.config.arch),
                        wants: wants.to_owned(),
                        wants_oci: shoal_arch_to_oci(wants),
                    });
                }
                return Ok((id, image));
            }
            ImageRef::Sha256(hex) => {
                let hex = hex.strip_prefix("sha256:").unwrap_or(hex).to_owned();
                Meta::get_hash(&m.image_digests, hex.as_bytes())?.ok_or(ImageError::UnknownDigest { digest: hex })?
            }
            ImageRef::Blake3(h) => *h,
            ImageRef::Job { job, output } => {
                return Err(ImageError::JobImage { job: job.clone(), output: output.clone() });
            }
        };
        let image = self.get_image(id).await?.ok_or(ImageError::UnknownId { id })?;
        Ok((id, image))
    }

    /// Stores an image blob and indexes it: digests, the blobs it keeps, and the tag.
    pub(crate) async fn index_image(
        &self,
        image: &Image,
        digests: &[String],
        keeps: &[Hash],
        tag: Option<&str>,
    ) -> Result<ImageId, ImageError> {
        let id = self.put_bytes(image.encode()).await?;
        let m = self.meta();
        for d in digests {
            Meta::put(&m.image_digests, d.as_bytes(), &id.0)?;
        }
        let info = ImageInfo {
            keeps: keeps.to_vec(),
            oci_digest: image.oci_digest.clone(),
            arch: Some(image.config.arch.clone()),
        };
        let mut info_cbor = Vec::new();
        ciborium::into_writer(&info, &mut info_cbor).expect("writing to a Vec cannot fail");
        Meta::put(&m.image_blobs, &id.0, &info_cbor)?;
        if let Some(tag) = tag {
            self.tag_image(tag, id)?;
        }
        self.flush().await?;
        Ok(id)
    }
}
