//! Trees: a directory as canonical CBOR, one blob per directory, named by its hash.
//!
//! A tree blob is `{"v": 1, "entries": [...]}` with entries sorted by the bytes of their names;
//! each entry holds `name`, `kind` (`file`, `dir`, `symlink`), `mode` (permission bits including
//! setuid, setgid and sticky: `mode & 0o7777`), `uid`, `gid`, and `hash` + `size` for a file,
//! `hash` for a directory (its own tree), `target` for a symlink. No times are kept, so the same
//! contents always give the same hash.
//!
//! Safety rules, checked whenever a tree is read: a name is never empty, `.` or `..`, and never
//! holds `/` or NUL; names are unique. Materializing never follows a symlink it wrote.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::error::StoreError;
use crate::meta::Meta;
use crate::{Digest, DigestKind, Hash, SMALL_FILE_BYTES, Store, canonical_cbor};

/// The version written in every tree blob.
const TREE_VERSION: u32 = 1;
/// Most directory levels a tree is stored from or materialized to. Both recurse once per level,
/// and a job's output 300 directories deep overflowed the stack of `shoal get` (or of the runner
/// giving it to the next job as an input) and aborted the process; real trees stay far below this.
pub const TREE_DEPTH_MAX: usize = 64;

/// One directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// Sorted by name bytes, unique.
    pub entries: Vec<Entry>,
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { hash: Hash, size: u64 },
    Dir { hash: Hash },
    Symlink { target: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTree {
    v: u32,
    entries: Vec<WireEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry {
    name: String,
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<Hash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

/// Why `name` may not appear in a tree, if it may not.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("an entry is named `{name}`"));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(format!("the entry name `{}` holds `/` or NUL", name.escape_debug()));
    }
    Ok(())
}

impl Tree {
    /// Sorts the entries and encodes them as canonical CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let wire = WireTree {
            v: TREE_VERSION,
            entries: entries
                .into_iter()
                .map(|e| {
                    let (kind, hash, size, target) = match &e.kind {
                        EntryKind::File { hash, size } => ("file", Some(*hash), Some(*size), None),
                        EntryKind::Dir { hash } => ("dir", Some(*hash), None, None),
                        EntryKind::Symlink { target } => ("symlink", None, None, Some(target.clone())),
                    };
                    WireEntry {
                        name: e.name.clone(),
                        kind: kind.into(),
                        mode: e.mode & 0o7777,
                        uid: e.uid,
                        gid: e.gid,
                        hash,
                        size,
                        target,
                    }
                })
                .collect(),
        };
        canonical_cbor(&wire)
    }

    /// Decodes and checks a tree blob.
    pub fn decode(bytes: &[u8]) -> Result<Tree, String> {
        let wire: WireTree = crate::from_cbor(bytes).map_err(|e| format!("not a tree blob: {e}"))?;
        if wire.v != TREE_VERSION {
            return Err(format!("tree version {} (this shoal reads version {TREE_VERSION})", wire.v));
        }
        let mut entries = Vec::with_capacity(wire.entries.len());
        let mut prev: Option<String> = None;
        for w in wire.entries {
            check_name(&w.name)?;
            if let Some(p) = &prev
                && p.as_bytes() >= w.name.as_bytes()
            {
                return Err(format!("entries `{p}` and `{}` are not sorted and unique", w.name));
            }
            let kind = match (w.kind.as_str(), w.hash, w.size, w.target) {
                ("file", Some(hash), Some(size), None) => EntryKind::File { hash, size },
                ("dir", Some(hash), None, None) => EntryKind::Dir { hash },
                ("symlink", None, None, Some(target)) if !target.is_empty() && !target.contains('\0') => {
                    EntryKind::Symlink { target }
                }
                (k, ..) => return Err(format!("entry `{}` of kind `{k}` has the wrong fields", w.name)),
            };
            if w.mode & !0o7777 != 0 {
                return Err(format!("entry `{}` has mode {:o} beyond 0o7777", w.name, w.mode));
            }
            prev = Some(w.name.clone());
            entries.push(Entry { name: w.name, kind, mode: w.mode, uid: w.uid, gid: w.gid });
        }
        Ok(Tree { entries })
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_bytes().cmp(name.as_bytes())).ok().map(|i| &self.entries[i])
    }
}

/// The names in `dir` nearest to `name` (by edit distance), a few: what an error about a name
/// that is not there suggests.
pub fn nearest_names(dir: &Tree, name: &str) -> Vec<String> {
    crate::select::nearest(dir, name)
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Files met twice in one build (hard links): (dev, ino) -> (hash, size).
type LinkMap = HashMap<(u64, u64), (Hash, u64)>;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Store {
    /// Stores one tree blob (after sorting its entries) and records that it is a tree.
    pub async fn put_tree(&self, tree: &Tree) -> Result<Hash, StoreError> {
        let hash = self.put_bytes(tree.encode()).await?;
        self.mark_tree(hash)?;
        Ok(hash)
    }

    /// Records that the stored blob `hash` is a tree (the `trees` index), as `put_tree` does; for
    /// tree blobs that arrive by other ways (fetched from a peer).
    pub(crate) fn mark_tree(&self, hash: Hash) -> Result<(), StoreError> {
        Meta::put(&self.meta().trees, &hash.0, &[])
    }

    /// Reads and checks a tree blob.
    pub async fn get_tree(&self, hash: Hash) -> Result<Tree, StoreError> {
        let bytes = self.need_bytes(hash).await?;
        Tree::decode(&bytes).map_err(|reason| StoreError::BadTree { hash, reason })
    }

    /// Stores a directory: every file as a blob (hard links once), then each directory's tree,
    /// bottom-up. Symlinks are stored as links, never followed. The digest's size is the sum of
    /// the sizes of its file entries.
    pub async fn put_tree_from_dir(&self, dir: &Path) -> Result<Digest, StoreError> {
        let md = std::fs::symlink_metadata(dir).map_err(StoreError::io("cannot read", dir))?;
        if !md.is_dir() {
            return Err(StoreError::Io {
                what: "cannot store as a tree",
                path: dir.to_owned(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let mut links = LinkMap::new();
        let (hash, size) = self.put_dir_rec(dir.to_owned(), 0, &mut links).await?;
        debug!(dir = %dir.display(), %hash, size, "stored tree");
        Ok(Digest { hash, kind: DigestKind::Tree, size })
    }

    fn put_dir_rec<'a>(
        &'a self,
        dir: PathBuf,
        depth: usize,
        links: &'a mut LinkMap,
    ) -> BoxFuture<'a, Result<(Hash, u64), StoreError>> {
        Box::pin(async move {
            if depth > TREE_DEPTH_MAX {
                return Err(StoreError::TooDeep { path: dir });
            }
            let rd = std::fs::read_dir(&dir).map_err(StoreError::io("cannot list", &dir))?;
            let mut names = Vec::new();
            for e in rd {
                let e = e.map_err(StoreError::io("cannot list", &dir))?;
                names.push(e.file_name());
            }
            names.sort();
            let mut entries = Vec::with_capacity(names.len());
            let mut total = 0u64;
            for os_name in names {
                let path = dir.join(&os_name);
                let name = os_name.to_str().ok_or_else(|| StoreError::NonUtf8Name { path: path.clone() })?.to_owned();
                let md = std::fs::symlink_metadata(&path).map_err(StoreError::io("cannot read", &path))?;
                let ft = md.file_type();
                let kind = if ft.is_dir() {
                    let (hash, size) = self.put_dir_rec(path.clone(), depth + 1, links).await?;
                    total += size;
                    EntryKind::Dir { hash }
                } else if ft.is_file() {
                    let key = (md.dev(), md.ino());
                    let (hash, size) = match links.get(&key) {
                        Some(v) => *v,
                        None => {
                            let hash = self.put_file_plain(&path, md.len()).await?;
                            if md.nlink() > 1 {
                                links.insert(key, (hash, md.len()));
                            }
                            (hash, md.len())
                        }
                    };
                    total += size;
                    EntryKind::File { hash, size }
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(&path).map_err(StoreError::io("cannot read the link", &path))?;
                    let target = target.to_str().ok_or_else(|| StoreError::NonUtf8Name { path: path.clone() })?;
                    EntryKind::Symlink { target: target.to_owned() }
                } else {
                    return Err(StoreError::Unsupported { path, kind: crate::special_kind(ft) });
                };
                entries.push(Entry { name, kind, mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid() });
            }
            let hash = self.put_tree(&Tree { entries }).await?;
            Ok((hash, total))
        })
    }

    /// Writes tree `tree` to the new directory `dest` for a user to keep and edit: modes (setuid,
    /// setgid, sticky included), owners (when running as root), symlinks as links, and every file
    /// its own copy (identical files are copied from the first one written, with
    /// `copy_file_range`, which shares the blocks where the file system can: btrfs, XFS). Hard
    /// links would make an edit of one file change the others, and fail past the file system's
    /// link limit (65,000 on ext4). On failure nothing is left at `dest`.
    pub async fn materialize(&self, tree: Hash, dest: &Path) -> Result<(), StoreError> {
        self.materialize_as(tree, dest, Links::Copy).await
    }

    /// Like [`Store::materialize`], with identical files hard-linked to each other (up to the file
    /// system's link limit): for trees nobody writes to (image roots, a job's read-only inputs).
    pub async fn materialize_read_only(&self, tree: Hash, dest: &Path) -> Result<(), StoreError> {
        self.materialize_as(tree, dest, Links::Hard).await
    }

    async fn materialize_as(&self, tree: Hash, dest: &Path, links: Links) -> Result<(), StoreError> {
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(StoreError::DestinationExists { path: dest.to_owned() });
        }
        std::fs::create_dir(dest).map_err(StoreError::io("cannot create", dest))?;
        let mut done = HashMap::new();
        let root = is_root();
        let result = self.materialize_rec(tree, dest.to_owned(), 0, root, links, &mut done).await;
        if result.is_err() {
            // Never a half-written directory that looks whole.
            let _ = remove_tree_forcefully(dest);
        }
        result
    }

    fn materialize_rec<'a>(
        &'a self,
        tree: Hash,
        dir: PathBuf,
        depth: usize,
        root: bool,
        links: Links,
        done: &'a mut HashMap<(Hash, u32, u32, u32), PathBuf>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if depth > TREE_DEPTH_MAX {
                return Err(StoreError::BadTree {
                    hash: tree,
                    reason: format!("it is more than {TREE_DEPTH_MAX} directories deep"),
                });
            }
            let t = self.get_tree(tree).await?;
            for e in t.entries {
                // `decode` refused unsafe names already; check again, cheaply, right where it matters.
                check_name(&e.name).map_err(|reason| StoreError::BadTree { hash: tree, reason })?;
                let path = dir.join(&e.name);
                match &e.kind {
                    EntryKind::File { hash, size } => {
                        let key = (*hash, e.mode, e.uid, e.gid);
                        if let Some(first) = done.get(&key) {
                            if links == Links::Hard {
                                match std::fs::hard_link(first, &path) {
                                    Ok(()) => continue,
                                    // The link limit: this copy becomes the one the next link to.
                                    Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {}
                                    Err(e) => return Err(StoreError::io("cannot link", &path)(e)),
                                }
                            }
                            std::fs::copy(first, &path).map_err(StoreError::io("cannot copy to", &path))?;
                        } else if *size <= SMALL_FILE_BYTES {
                            let bytes = self.need_bytes(*hash).await?;
                            let mut f = std::fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .mode(0o600)
                                .open(&path)
                                .map_err(StoreError::io("cannot create", &path))?;
                            std::io::Write::write_all(&mut f, &bytes).map_err(StoreError::io("cannot write", &path))?;
                        } else {
                            self.export(*hash, &path).await?;
                        }
                        if root {
                            std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid))
                                .map_err(StoreError::io("cannot chown", &path))?;
                        }
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
                            .map_err(StoreError::io("cannot chmod", &path))?;
                        done.insert(key, path);
                    }
                    EntryKind::Symlink { target } => {
                        std::os::unix::fs::symlink(target, &path)
                            .map_err(StoreError::io("cannot create the symlink", &path))?;
                        if root {
                            std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid))
                                .map_err(StoreError::io("cannot chown", &path))?;
                        }
                    }
                    EntryKind::Dir { hash } => {
                        std::fs::create_dir(&path).map_err(StoreError::io("cannot create", &path))?;
                        self.materialize_rec(*hash, path.clone(), depth + 1, root, links, done).await?;
                        if root {
                            std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid))
                                .map_err(StoreError::io("cannot chown", &path))?;
                        }
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
                            .map_err(StoreError::io("cannot chmod", &path))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// The directory `home/rootfs/<hex>` holding tree `tree`, materialized on first use
    /// (built beside it, then renamed into place; concurrent callers wait for one build).
    pub async fn rootfs(&self, tree: Hash) -> Result<PathBuf, StoreError> {
        let dir = self.home().join("rootfs");
        let final_path = dir.join(tree.to_hex());
        let lock = {
            let mut locks = self.inner.rootfs_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(tree).or_default().clone()
        };
        let _guard = lock.lock().await;
        if final_path.is_dir() {
            return Ok(final_path);
        }
        let tmp = dir.join(format!(".tmp-{}-{}", tree.to_hex(), std::process::id()));
        remove_tree_forcefully(&tmp).map_err(StoreError::io("cannot remove", &tmp))?;
        let started = std::time::Instant::now();
        if let Err(e) = self.materialize_read_only(tree, &tmp).await {
            let _ = remove_tree_forcefully(&tmp);
            return Err(e);
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(StoreError::io("cannot chmod", &tmp))?;
        if let Err(e) = std::fs::rename(&tmp, &final_path) {
            let _ = remove_tree_forcefully(&tmp);
            if !final_path.is_dir() {
                return Err(StoreError::Io { what: "cannot rename into", path: final_path, source: e });
            }
        }
        debug!(%tree, ms = started.elapsed().as_millis() as u64, "materialized rootfs");
        Ok(final_path)
    }
}

/// How [`Store::materialize`] writes identical files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Links {
    /// Each its own copy.
    Copy,
    /// Hard-linked to each other, up to the link limit.
    Hard,
}

/// Removes a file or a directory tree, first making directories writable (a materialized tree
/// may hold `0555` directories, which even their owner cannot empty otherwise).
pub fn remove_tree_forcefully(path: &Path) -> std::io::Result<()> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.is_dir() {
        return std::fs::remove_file(path);
    }
    for e in walkdir::WalkDir::new(path).follow_links(false).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
    std::fs::remove_dir_all(path)
}
