//! The one module that talks to sled. Every index of the store lives here as a named sled tree:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `actions` | action key (32 bytes) | record hash (32 bytes) |
//! | `records_by_job` | job id (UTF-8) | latest record hash |
//! | `records` | record hash | the record's CBOR (a cache of the blob, for the hot path) |
//! | `images` | tag (UTF-8) | image id |
//! | `image_digests` | `sha256` hex of a manifest or config | image id |
//! | `image_blobs` | image id | CBOR `ImageInfo`: blobs the image keeps, its OCI digest |
//! | `sha256` | sha256 hex | blake3 hash of the same bytes |
//! | `pins` | hash | empty |
//! | `trees` | hash | empty: the blob is a tree |
//! | `layers` | layer `sha256` hex | the layer's expanded tree (whiteouts still in it) |
//! | `merges` | lower hash ‖ upper hash | merged tree |
//! | `facts` | fact id (32 bytes) | the signed fact's CBOR (the mesh ledger, opaque here) |

use std::path::Path;

use crate::Hash;
use crate::error::StoreError;

pub(crate) struct Meta {
    db: sled::Db,
    pub actions: sled::Tree,
    pub records_by_job: sled::Tree,
    pub records: sled::Tree,
    pub images: sled::Tree,
    pub image_digests: sled::Tree,
    pub image_blobs: sled::Tree,
    pub sha256: sled::Tree,
    pub pins: sled::Tree,
    pub trees: sled::Tree,
    pub layers: sled::Tree,
    pub merges: sled::Tree,
    pub facts: sled::Tree,
}

pub(crate) fn hash_of(v: &[u8]) -> Option<Hash> {
    <[u8; 32]>::try_from(v).ok().map(Hash)
}

impl Meta {
    pub fn open(dir: &Path) -> Result<Meta, sled::Error> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Meta {
            actions: db.open_tree("actions")?,
            records_by_job: db.open_tree("records_by_job")?,
            records: db.open_tree("records")?,
            images: db.open_tree("images")?,
            image_digests: db.open_tree("image_digests")?,
            image_blobs: db.open_tree("image_blobs")?,
            sha256: db.open_tree("sha256")?,
            pins: db.open_tree("pins")?,
            trees: db.open_tree("trees")?,
            layers: db.open_tree("layers")?,
            merges: db.open_tree("merges")?,
            facts: db.open_tree("facts")?,
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
