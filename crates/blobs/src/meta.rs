//! The one module that talks to sled. Every index of the store lives here as a named sled tree:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `actions` | action key (32 bytes) | record hash (32 bytes) |
//! | `records_by_job` | job id (UTF-8) | latest record hash |
//! | `records_by_job_previous` | job id (UTF-8) | the record that was latest before it (`shoal why`) |
//! | `records` | record hash | the record's CBOR (a cache of the blob, for the hot path) |
//! | `images` | tag (UTF-8) | image id |
//! | `image_platforms` | tag ‖ 0 ‖ arch (`x86_64`, `aarch64`, ...) | image id: the tag's image for that platform |
//! | `image_digests` | `sha256` hex of a manifest or config | image id |
//! | `image_blobs` | image id | CBOR `ImageInfo`: blobs the image keeps, its OCI digest |
//! | `sha256` | sha256 hex | blake3 hash of the same bytes |
//! | `pins` | hash | empty (kept for good), or until when it is kept (Unix ms, 8 bytes big-endian) |
//! | `trees` | hash | empty: the blob is a tree |
//! | `layers` | layer `sha256` hex | the layer's expanded tree (whiteouts still in it) |
//! | `merges` | lower hash ‖ upper hash | merged tree |
//! | `facts` | fact id (32 bytes) | the signed fact's CBOR (the mesh ledger, opaque here) |
//! | `used` | record hash | when its results were last made, asked for or read (Unix ms, 8 bytes big-endian) |
//! | `evicted` | record hash | empty: its results were evicted (the record stays) |
//! | `compacted` | DAG hash | the hash of its summary blob (a DAG compacted out of the mesh ledger) |
//! | `corrupt` | hash | empty: its bytes on disk did not match it; never served, dropped by `gc` |

use std::path::{Path, PathBuf};

use crate::Hash;
use crate::error::StoreError;

/// sled's page cache, bytes (its own accounting, about half of what the pages take in memory).
/// sled's default is 1 GiB, and every index entry a run reads stays cached up to it: a cached
/// run of 5,000 jobs kept 19 MB of record pages (3.7 KB a job), so memory grew with the DAG.
/// Past this the pages are read again from the file (in the kernel's page cache).
pub const META_CACHE_BYTES: u64 = 8 << 20;

pub(crate) struct Meta {
    db: sled::Db,
    pub actions: sled::Tree,
    pub records_by_job: sled::Tree,
    pub records_by_job_previous: sled::Tree,
    pub records: sled::Tree,
    pub images: sled::Tree,
    pub image_platforms: sled::Tree,
    pub image_digests: sled::Tree,
    pub image_blobs: sled::Tree,
    pub sha256: sled::Tree,
    pub pins: sled::Tree,
    pub trees: sled::Tree,
    pub layers: sled::Tree,
    pub merges: sled::Tree,
    pub facts: sled::Tree,
    pub corrupt: sled::Tree,
    pub used: sled::Tree,
    pub evicted: sled::Tree,
    pub compacted: sled::Tree,
}

pub(crate) fn hash_of(v: &[u8]) -> Option<Hash> {
    <[u8; 32]>::try_from(v).ok().map(Hash)
}

impl Meta {
    pub fn open(dir: &Path) -> Result<Meta, sled::Error> {
        let db = sled::Config::new().path(dir).cache_capacity(META_CACHE_BYTES).open()?;
        Ok(Meta {
            actions: db.open_tree("actions")?,
            records_by_job: db.open_tree("records_by_job")?,
            records_by_job_previous: db.open_tree("records_by_job_previous")?,
            records: db.open_tree("records")?,
            images: db.open_tree("images")?,
            image_platforms: db.open_tree("image_platforms")?,
            image_digests: db.open_tree("image_digests")?,
            image_blobs: db.open_tree("image_blobs")?,
            sha256: db.open_tree("sha256")?,
            pins: db.open_tree("pins")?,
            trees: db.open_tree("trees")?,
            layers: db.open_tree("layers")?,
            merges: db.open_tree("merges")?,
            facts: db.open_tree("facts")?,
            corrupt: db.open_tree("corrupt")?,
            used: db.open_tree("used")?,
            evicted: db.open_tree("evicted")?,
            compacted: db.open_tree("compacted")?,
            db,
        })
    }

    /// Reads a hash-valued key.
    pub fn get_hash(tree: &sled::Tree, key: &[u8]) -> Result<Option<Hash>, StoreError> {
        Ok(tree.get(key).map_err(StoreError::meta("read"))?.and_then(|v| hash_of(&v)))
    }

    pub fn put(tree: &sled::Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        tree.insert(key, value).map_err(StoreError::meta("write"))?;
        Ok(())
    }

    /// Waits until every write so far is on disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(StoreError::meta("flush"))?;
        Ok(())
    }

    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(StoreError::meta("flush"))?;
        Ok(())
    }

    pub fn is_tree(&self, hash: &Hash) -> bool {
        self.trees.contains_key(hash.0).unwrap_or(false)
    }
}

/// `meta.<what>` beside the database directory `dir`.
fn beside(dir: &Path, what: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{name}.{what}"))
}

/// The file a `gc` that removed entries leaves beside the database, asking the next open to
/// [`compact`] it.
pub(crate) fn compact_marker(dir: &Path) -> PathBuf {
    beside(dir, "compact")
}

/// Whether `dir` holds a sled database (its `db` file), not just a directory.
fn is_database(dir: &Path) -> bool {
    dir.join("db").is_file()
}

/// Finishes or undoes a [`compact`] that a crash interrupted: its new database is complete
/// once it has been renamed to `.new`, so a `dir` without a database is replaced by `.new`
/// (else by `.old`), and whatever else is left beside is removed. Call it before anything
/// creates `dir`.
pub(crate) fn recover_compaction(dir: &Path) -> std::io::Result<()> {
    let (building, new, old) = (beside(dir, "compacting"), beside(dir, "new"), beside(dir, "old"));
    if !is_database(dir)
        && let Some(whole) = [&new, &old].into_iter().find(|p| is_database(p))
    {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::rename(whole, dir)?;
    }
    for p in [building, new, old] {
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
    }
    Ok(())
}

/// Rewrites the database in `dir` with only what it holds now. sled 0.34 overwrites every
/// free segment of its file at each open, so a database that once held much more than it
/// does (after a `gc` removed most of its entries) opens slowly for good: 90 ms instead of
/// 20 for a 270 MB one here. Built beside (`.compacting`, then `.new` once complete and
/// checked), swapped in by renames; [`recover_compaction`] finishes an interrupted swap.
/// Returns the sizes on disk before and after.
pub(crate) fn compact(dir: &Path) -> Result<(u64, u64), String> {
    recover_compaction(dir).map_err(|e| format!("cleaning up an earlier compaction: {e}"))?;
    let (building, new, old) = (beside(dir, "compacting"), beside(dir, "new"), beside(dir, "old"));
    let sizes = {
        let from = sled::Config::new().path(dir).open().map_err(|e| format!("opening {}: {e}", dir.display()))?;
        let to = sled::Config::new()
            .path(&building)
            .create_new(true)
            .open()
            .map_err(|e| format!("creating {}: {e}", building.display()))?;
        for name in from.tree_names() {
            let (a, b) = (from.open_tree(&name), to.open_tree(&name));
            let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
            for kv in a.iter() {
                let (k, v) = kv.map_err(|e| format!("reading: {e}"))?;
                b.insert(k, v).map_err(|e| format!("writing: {e}"))?;
            }
        }
        to.flush().map_err(|e| format!("flushing: {e}"))?;
        match (from.checksum(), to.checksum()) {
            (Ok(a), Ok(b)) if a == b => {}
            (a, b) => return Err(format!("the copy does not check out (checksums {a:?} against {b:?})")),
        }
        (from.size_on_disk().unwrap_or(0), to.size_on_disk().unwrap_or(0))
    };
    std::fs::rename(&building, &new).map_err(|e| format!("renaming the copy: {e}"))?;
    std::fs::rename(dir, &old).map_err(|e| format!("moving the old database aside: {e}"))?;
    std::fs::rename(&new, dir).map_err(|e| format!("moving the copy into place: {e}"))?;
    std::fs::remove_dir_all(&old).map_err(|e| format!("removing the old database: {e}"))?;
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_with(dir: &Path, key: &[u8]) {
        let db = sled::open(dir).unwrap();
        db.insert(key, b"v").unwrap();
        db.flush().unwrap();
    }

    fn key_of(dir: &Path) -> Vec<u8> {
        let db = sled::open(dir).unwrap();
        db.iter().keys().next().unwrap().unwrap().to_vec()
    }

    /// Each point a crash can stop `compact` at: the database is whole afterwards, the new one
    /// once it was complete, and nothing is left beside it.
    #[test]
    fn an_interrupted_compaction_is_finished_or_undone() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("meta");
        let leftovers = || ["compacting", "new", "old"].iter().filter(|w| beside(&dir, w).exists()).count();
        // Stopped while building the copy: the copy goes, the database stays.
        db_with(&dir, b"old");
        db_with(&beside(&dir, "compacting"), b"partial");
        recover_compaction(&dir).unwrap();
        assert_eq!((key_of(&dir), leftovers()), (b"old".to_vec(), 0));
        // Stopped between moving the database aside and moving the complete copy in.
        std::fs::rename(&dir, beside(&dir, "old")).unwrap();
        db_with(&beside(&dir, "new"), b"new");
        recover_compaction(&dir).unwrap();
        assert_eq!((key_of(&dir), leftovers()), (b"new".to_vec(), 0));
        // The same, with an empty `dir` made since: still not a database, the copy is taken.
        std::fs::rename(&dir, beside(&dir, "new")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        recover_compaction(&dir).unwrap();
        assert_eq!((key_of(&dir), leftovers()), (b"new".to_vec(), 0));
        // Stopped after the swap, before removing the old one.
        db_with(&beside(&dir, "old"), b"older");
        recover_compaction(&dir).unwrap();
        assert_eq!((key_of(&dir), leftovers()), (b"new".to_vec(), 0));
        // And a compaction keeps every tree's entries.
        {
            let db = sled::open(&dir).unwrap();
            db.open_tree("t").unwrap().insert(b"k", b"in a tree").unwrap();
            db.flush().unwrap();
        }
        compact(&dir).unwrap();
        let db = sled::open(&dir).unwrap();
        assert_eq!(db.get(b"new").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(db.open_tree("t").unwrap().get(b"k").unwrap().as_deref(), Some(&b"in a tree"[..]));
        assert_eq!(leftovers(), 0);
    }
}
