//! One layer: tar (plain, gzip or zstd) -> tree, and the merge of layer trees.
//!
//! A blocking thread reads and decompresses the tar and sends its entries over a bounded channel;
//! the async side stores file contents and builds the tree, so decompression and hashing overlap.
//! Whiteout files stay in a layer's tree as ordinary empty files; only `merge` interprets them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::ImageError;
use crate::meta::Meta;
use crate::tree::{BoxFuture, Entry, EntryKind, Tree, check_name};
use crate::{Hash, SMALL_FILE_BYTES, Store, StoreError};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Most components in a layer entry's path: a tree's depth limit. Building and merging trees
/// recurse once per level, and a few kilobytes of tar naming a path 300 deep overflowed the stack
/// and aborted the whole process (found writing the `layer` fuzz target).
const PATH_DEPTH_MAX: usize = crate::tree::TREE_DEPTH_MAX;

enum Data {
    Mem(Bytes),
    Temp(PathBuf, u64),
}

struct Meta3 {
    mode: u32,
    uid: u32,
    gid: u32,
}

enum Item {
    Dir(Vec<String>, Meta3),
    File(Vec<String>, Meta3, Data),
    Symlink(Vec<String>, Meta3, String),
    HardLink(Vec<String>, Vec<String>),
}

enum Node {
    Dir(Meta3, BTreeMap<String, Node>),
    File(Meta3, Hash, u64),
    Symlink(Meta3, String),
}

fn split_path(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("the path holds `..`".into()),
            c => {
                check_name(c)?;
                out.push(c.to_owned());
            }
        }
        if out.len() > PATH_DEPTH_MAX {
            return Err(format!("the path is more than {PATH_DEPTH_MAX} directories deep"));
        }
    }
    Ok(out)
}

/// Reads the tar at `path` on a blocking thread, sending entries to `tx`.
fn read_tar(
    path: &Path,
    tmp: &Path,
    layer: &str,
    expanded_bytes_max: u64,
    tx: mpsc::Sender<Result<Item, ImageError>>,
) -> Result<(), ImageError> {
    let err =
        |entry: &str, reason: String| ImageError::Layer { layer: layer.to_owned(), entry: entry.to_owned(), reason };
    let file = std::fs::File::open(path).map_err(ImageError::io("cannot open", path))?;
    let mut buf = BufReader::with_capacity(1 << 20, file);
    let head = buf.fill_buf().map_err(ImageError::io("cannot read", path))?.to_vec();
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(ImageError::io("cannot read zstd", path))?)
    } else {
        Box::new(buf)
    };
    // A decompression bomb (4 MB of gzip expanding to 4 GiB) stops at the limit.
    let reader = Bounded { inner: reader, left: expanded_bytes_max };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(ImageError::io("cannot read the tar", path))?;
    let mut n = 0u64;
    let mut count = 0u64;
    let too_big = |e: &std::io::Error| e.get_ref().is_some_and(|i| i.is::<OverLimit>());
    let over = || {
        err(
            "",
            format!(
                "the layer expands to more than {expanded_bytes_max} bytes (the image size limit, `--image-size-max`); \
                 if the image is this large, raise the limit"
            ),
        )
    };
    for entry in entries {
        count += 1;
        if count > LAYER_ENTRIES_MAX {
            return Err(err("", format!("the layer has more than {LAYER_ENTRIES_MAX} entries")));
        }
        let mut entry = match entry {
            Err(e) if too_big(&e) => return Err(over()),
            other => other,
        }
        .map_err(ImageError::io("cannot read the tar", path))?;
        let raw_path = entry.path().map_err(ImageError::io("cannot read the tar", path))?;
        let raw = raw_path
            .to_str()
            .ok_or_else(|| err(&raw_path.to_string_lossy(), "the name is not UTF-8".into()))?
            .to_owned();
        let parts = split_path(&raw).map_err(|r| err(&raw, r))?;
        let h = entry.header();
        let meta = Meta3 {
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
        };
        let link = || -> Result<String, ImageError> {
            let l = entry.link_name().ok().flatten().ok_or_else(|| err(&raw, "a link without a target".into()))?;
            l.to_str().map(str::to_owned).ok_or_else(|| err(&raw, "the link target is not UTF-8".into()))
        };
        let item = match h.entry_type() {
            tar::EntryType::Directory => Item::Dir(parts, meta),
            tar::EntryType::Symlink => Item::Symlink(parts, meta, link()?),
            tar::EntryType::Link => {
                let target = split_path(&link()?).map_err(|r| err(&raw, r))?;
                Item::HardLink(parts, target)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                let data = if size <= SMALL_FILE_BYTES {
                    let mut v = Vec::with_capacity(size as usize);
                    match entry.read_to_end(&mut v) {
                        Err(e) if too_big(&e) => return Err(over()),
                        r => r.map_err(ImageError::io("cannot read the tar", path))?,
                    };
                    Data::Mem(Bytes::from(v))
                } else {
                    n += 1;
                    let p = tmp.join(format!("big-{n}"));
                    let mut f = std::fs::File::create(&p).map_err(ImageError::io("cannot create", &p))?;
                    match std::io::copy(&mut entry, &mut f) {
                        Err(e) if too_big(&e) => return Err(over()),
                        r => r.map_err(ImageError::io("cannot write", &p))?,
                    };
                    Data::Temp(p, size)
                };
                Item::File(parts, meta, data)
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                tracing::warn!(layer, entry = %raw, kind = ?other, "skipping a layer entry a tree cannot hold");
                continue;
            }
        };
        if parts_empty(&item) {
            continue;
        }
        if tx.blocking_send(Ok(item)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Most entries one layer may hold (each costs a node of the tree being built).
const LAYER_ENTRIES_MAX: u64 = 4_000_000;

/// The reader's error past its limit.
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("over the size limit")
    }
}

impl std::error::Error for OverLimit {}

/// A reader that fails with [`OverLimit`] once more than `left` bytes came out of it.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| std::io::Error::other(OverLimit))?;
        Ok(n)
    }
}

fn parts_empty(item: &Item) -> bool {
    match item {
        Item::Dir(p, _) | Item::File(p, ..) | Item::Symlink(p, ..) | Item::HardLink(p, _) => p.is_empty(),
    }
}

fn default_dir() -> Meta3 {
    Meta3 { mode: 0o755, uid: 0, gid: 0 }
}

/// The directory children map at `parts`, creating directories on the way (and replacing
/// non-directories, as a later tar entry replaces an earlier one).
fn dir_at<'a>(root: &'a mut BTreeMap<String, Node>, parts: &[String]) -> &'a mut BTreeMap<String, Node> {
    let mut cur = root;
    for p in parts {
        let node = cur.entry(p.clone()).or_insert_with(|| Node::Dir(default_dir(), BTreeMap::new()));
        if !matches!(node, Node::Dir(..)) {
            *node = Node::Dir(default_dir(), BTreeMap::new());
        }
        let Node::Dir(_, children) = node else { unreachable!() };
        cur = children;
    }
    cur
}

fn find<'a>(root: &'a BTreeMap<String, Node>, parts: &[String]) -> Option<&'a Node> {
    let (last, dirs) = parts.split_last()?;
    let mut cur = root;
    for p in dirs {
        match cur.get(p)? {
            Node::Dir(_, c) => cur = c,
            _ => return None,
        }
    }
    cur.get(last)
}

impl Store {
    /// Stores the plain tar archive at `path` as a tree, the same tree `put_tree_from_dir` makes
    /// of the directory the archive was made from: modes (setuid, setgid, sticky), owners and
    /// symlinks are taken from the headers, hard links point at their file, and `.wh.` names are
    /// ordinary names. The digest's size is the sum of the sizes of its file entries, as
    /// `put_tree_from_dir` counts it. A node uses this for directories a client sends it, owners
    /// kept whoever the node runs as.
    pub async fn put_tree_from_tar(&self, path: &Path) -> Result<crate::Digest, ImageError> {
        let hash = self.expand_layer(path, &path.display().to_string()).await?;
        let size = self.tree_files_size(hash).await?;
        Ok(crate::Digest { hash, kind: crate::DigestKind::Tree, size })
    }

    /// The sum of the sizes of the file entries of tree `hash`, recursively.
    fn tree_files_size(&self, hash: Hash) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut total = 0u64;
            for e in self.get_tree(hash).await?.entries {
                total += match e.kind {
                    EntryKind::File { size, .. } => size,
                    EntryKind::Dir { hash } => self.tree_files_size(hash).await?,
                    EntryKind::Symlink { .. } => 0,
                };
            }
            Ok(total)
        })
    }

    /// Expands the layer tar at `path` into a tree (whiteouts kept as entries).
    pub(crate) async fn expand_layer(&self, path: &Path, layer: &str) -> Result<Hash, ImageError> {
        let tmp = self.temp_dir("layer")?;
        let (tx, mut rx) = mpsc::channel(64);
        let (p, t, l) = (path.to_owned(), tmp.clone(), layer.to_owned());
        let max = self.image_bytes_max();
        let reader = tokio::task::spawn_blocking(move || {
            let r = read_tar(&p, &t, &l, max, tx.clone());
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let mut root: BTreeMap<String, Node> = BTreeMap::new();
        let result: Result<(), ImageError> = async {
            while let Some(item) = rx.recv().await {
                match item? {
                    Item::Dir(parts, meta) => {
                        let (last, dirs) = parts.split_last().expect("non-empty");
                        let parent = dir_at(&mut root, dirs);
                        match parent.get_mut(last) {
                            Some(Node::Dir(m, _)) => *m = meta,
                            _ => {
                                parent.insert(last.clone(), Node::Dir(meta, BTreeMap::new()));
                            }
                        }
                    }
                    Item::File(parts, meta, data) => {
                        let (hash, size) = match data {
                            Data::Mem(b) => {
                                let n = b.len() as u64;
                                (self.put_bytes(b).await?, n)
                            }
                            Data::Temp(p, n) => {
                                let h = self.put_file_plain(&p, n).await?;
                                let _ = std::fs::remove_file(&p);
                                (h, n)
                            }
                        };
                        let (last, dirs) = parts.split_last().expect("non-empty");
                        dir_at(&mut root, dirs).insert(last.clone(), Node::File(meta, hash, size));
                    }
                    Item::Symlink(parts, meta, target) => {
                        let (last, dirs) = parts.split_last().expect("non-empty");
                        dir_at(&mut root, dirs).insert(last.clone(), Node::Symlink(meta, target));
                    }
                    Item::HardLink(parts, target) => {
                        let Some(Node::File(m, hash, size)) = find(&root, &target) else {
                            return Err(ImageError::Layer {
                                layer: layer.to_owned(),
                                entry: parts.join("/"),
                                reason: format!(
                                    "hard link to `{}`, which is not a regular file earlier in this layer",
                                    target.join("/")
                                ),
                            });
                        };
                        let node = Node::File(Meta3 { mode: m.mode, uid: m.uid, gid: m.gid }, *hash, *size);
                        let (last, dirs) = parts.split_last().expect("non-empty");
                        dir_at(&mut root, dirs).insert(last.clone(), node);
                    }
                }
            }
            Ok(())
        }
        .await;
        drop(rx);
        let _ = reader.await;
        let _ = crate::tree::remove_tree_forcefully(&tmp);
        result?;
        Ok(self.put_nodes(root).await?)
    }

    fn put_nodes(&self, children: BTreeMap<String, Node>) -> BoxFuture<'_, Result<Hash, StoreError>> {
        Box::pin(async move {
            let mut entries = Vec::with_capacity(children.len());
            for (name, node) in children {
                let (m, kind) = match node {
                    Node::Dir(m, c) => (m, EntryKind::Dir { hash: self.put_nodes(c).await? }),
                    Node::File(m, hash, size) => (m, EntryKind::File { hash, size }),
                    Node::Symlink(m, target) => (m, EntryKind::Symlink { target }),
                };
                entries.push(Entry { name, kind, mode: m.mode, uid: m.uid, gid: m.gid });
            }
            self.put_tree(&Tree { entries }).await
        })
    }

    /// Applies layer tree `upper` onto the merged tree `lower` (none for the first layer); the
    /// result holds no whiteout entries. Cached by the pair.
    pub(crate) fn merge_trees(&self, lower: Option<Hash>, upper: Hash) -> BoxFuture<'_, Result<Hash, StoreError>> {
        Box::pin(async move {
            let mut key = [0u8; 64];
            if let Some(l) = lower {
                key[..32].copy_from_slice(&l.0);
            }
            key[32..].copy_from_slice(&upper.0);
            if let Some(h) = Meta::get_hash(&self.meta().merges, &key)?
                && self.has(h).await?
            {
                return Ok(h);
            }
            let up = self.get_tree(upper).await?;
            let opaque = up.get(OPAQUE).is_some();
            let mut out: BTreeMap<String, Entry> = BTreeMap::new();
            if let (Some(l), false) = (lower, opaque) {
                for e in self.get_tree(l).await?.entries {
                    out.insert(e.name.clone(), e);
                }
            }
            for e in &up.entries {
                if let Some(name) = e.name.strip_prefix(WHITEOUT)
                    && e.name != OPAQUE
                {
                    out.remove(name);
                }
            }
            for e in up.entries {
                if e.name.starts_with(WHITEOUT) {
                    continue;
                }
                let kind = match (&e.kind, out.get(&e.name).map(|l| &l.kind)) {
                    (EntryKind::Dir { hash: u }, Some(EntryKind::Dir { hash: l })) => {
                        EntryKind::Dir { hash: self.merge_trees(Some(*l), *u).await? }
                    }
                    (EntryKind::Dir { hash: u }, _) => EntryKind::Dir { hash: self.merge_trees(None, *u).await? },
                    (k, _) => k.clone(),
                };
                out.insert(e.name.clone(), Entry { kind, ..e });
            }
            let merged = self.put_tree(&Tree { entries: out.into_values().collect() }).await?;
            Meta::put(&self.meta().merges, &key, &merged.0)?;
            Ok(merged)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 MB gzip layer expanding to 4 GiB imported without limit: expansion stops at the
    /// image size limit and says so.
    #[tokio::test]
    async fn a_decompression_bomb_stops_at_the_limit() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).await.unwrap();
        let layer = home.path().join("layer.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(std::fs::File::create(&layer).unwrap(), flate2::Compression::best());
            let mut tar = tar::Builder::new(gz);
            let mut h = tar::Header::new_gnu();
            h.set_size(64 << 20);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, "zeros", std::io::repeat(0).take(64 << 20)).unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        assert!(std::fs::metadata(&layer).unwrap().len() < 1 << 20);
        store.set_image_bytes_max(16 << 20);
        let err = store.expand_layer(&layer, "bomb").await.unwrap_err().to_string();
        assert!(err.contains("expands to more than 16777216 bytes") && err.contains("--image-size-max"), "{err}");
        store.set_image_bytes_max(crate::IMAGE_BYTES_MAX_DEFAULT);
        store.expand_layer(&layer, "bomb").await.unwrap();
    }
}
