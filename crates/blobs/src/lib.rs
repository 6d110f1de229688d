//! The local store of shoal: blobs named by BLAKE3, trees, the action cache and run records,
//! pins and garbage collection, and container images imported from OCI.
//!
//! # Layout
//! - [`Store`] (this file): a home directory holding `blobs/` (an iroh-blobs `FsStore`: verified
//!   BLAKE3 streaming), `meta/` (sled, through `meta`), `rootfs/` (materialized image roots) and
//!   `tmp/`. Blob operations, the action cache, run records and pins live here.
//! - `meta`: the only module that touches sled; its doc lists every index.
//! - [`tree`]: directories as canonical CBOR trees: build from a directory, materialize, the
//!   per-tree rootfs cache.
//! - `gc`: mark from records, the action cache, the image index and pins; sweep through
//!   iroh-blobs' own collector, which never runs unless we ask.
//! - [`image`]: OCI image layouts, `docker save` and OCI archives, registry pulls, layer expansion
//!   and merging with whiteouts (Buildbarn ADR 8), and writing an OCI layout from a directory.
//! - [`net`]: an iroh endpoint serving the store's blobs to peers (iroh-blobs), and fetching
//!   blobs, trees and images from peers, verified while they stream; [`net::stream`], the same
//!   protocol over a byte stream the node opens (its libp2p mesh) where a peer's iroh endpoint
//!   cannot be reached.
//! - `error`: [`OpenError`], [`StoreError`], [`ImageError`].
//! - `open`: why a store did not open (lock holder, damaged database, permissions), as an
//!   [`OpenError`] naming the file and the fix.
//! - `compat`: the shoal-dag types this crate uses, in one place.
//!
//! Invariants: a blob's name is the BLAKE3 of its bytes (iroh-blobs verifies it); a tree blob is
//! recorded in the `trees` index when stored, so `gc` can follow it; nothing outside `gc` deletes
//! a blob.

#![forbid(unsafe_code)]

mod compat;
mod error;
mod evict;
mod facts;
mod gc;
pub mod image;
mod meta;
pub mod net;
mod open;
mod select;
pub mod tree;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::Digest as _;
use tokio::sync::mpsc;
use tracing::debug;

pub use compat::{Digest, DigestKind, Hash, ImageRef, SignedRecord, canonical_cbor, from_cbor};
pub use error::{ImageError, OpenError, StoreError};
pub use evict::{EvictReport, Held, Writing};
pub use gc::GcReport;
pub use image::{ImageEntry, ImageId, ProgressFn, PullOptions};
pub use open::is_blob_store_open_panic;
pub use select::TreePathError;
pub use tree::remove_tree_forcefully;

use meta::Meta;

/// Files at most this large are read into memory whole when stored or materialized; larger ones
/// stream.
const SMALL_FILE_BYTES: u64 = 4 << 20;

/// How soon a run record must be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Before the call returns: a record another node is about to be told of.
    Now,
    /// Within about a second (iroh-blobs and sled each commit at least every 500 ms on their
    /// own) and at the next [`Store::flush`] or [`Store::shutdown`]. A crash before then loses
    /// the record, and the job runs again ([`Store::action_get`]); one sync per record costs a
    /// trivial job ~10 % (docs/BENCHMARKS.md).
    Soon,
}

/// The local content-addressed store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    home: PathBuf,
    blobs: iroh_blobs::store::fs::FsStore,
    meta: Meta,
    /// Requests to iroh-blobs' collector (see `gc`).
    gc_tx: mpsc::Sender<gc::GcRequest>,
    /// One lock per tree being materialized under `rootfs/`, so concurrent callers build once.
    rootfs_locks: Mutex<HashMap<Hash, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes `gc` runs.
    gc_lock: tokio::sync::Mutex<()>,
    /// Writers of blobs nothing references yet read-lock it; `gc` write-locks it (see `evict`).
    writes: Arc<tokio::sync::RwLock<()>>,
    /// Roots running jobs hold, with how many holders each (see [`Store::hold`]).
    held: Mutex<HashMap<Hash, usize>>,
    /// Bounds reads in flight (see [`READS_IN_FLIGHT_MAX`]).
    reads: tokio::sync::Semaphore,
    /// Blobs whose bytes on disk did not match their hash when read (kept in the `corrupt`
    /// index too): never served or read again, removed by `gc`, rewritten in place when the
    /// right bytes arrive again (a re-import, a peer).
    corrupt: Mutex<HashSet<Hash>>,
    /// iroh-blobs' directory of data files (`<hex>.data`) for blobs above its inline size.
    data_dir: PathBuf,
    /// Largest a layer of an imported image may expand to, bytes (see [`Store::set_image_bytes_max`]).
    image_bytes_max: std::sync::atomic::AtomicU64,
}

/// [`Store::set_image_bytes_max`] unless told otherwise, bytes.
pub const IMAGE_BYTES_MAX_DEFAULT: u64 = 32 << 30;

/// Reads (get, export) in flight at once. iroh-blobs queues at most 32 operations per hash and
/// answers the rest "busy"; many jobs reading one image at once would otherwise hit that.
const READS_IN_FLIGHT_MAX: usize = 16;
/// Blobs up to this size are kept inside iroh-blobs' database (redb), larger ones in files of
/// their own, bytes. redb keeps every page it reads or writes in memory up to its 1 GiB default
/// (iroh-blobs 0.104 has no setting for it), so with iroh's 16 KiB each job's run record (2 KB)
/// stayed in memory: 4 KB a job in a big DAG. A record in a file costs its creation instead
/// (no sync), and the database only its entry.
pub const BLOB_INLINE_BYTES_MAX: u64 = 1024;

pub(crate) fn to_iroh(h: Hash) -> iroh_blobs::Hash {
    iroh_blobs::Hash::from_bytes(h.0)
}
pub(crate) fn from_iroh(h: iroh_blobs::Hash) -> Hash {
    Hash(*h.as_bytes())
}

impl Store {
    /// `$SHOAL_HOME`, or `~/.local/share/shoal`.
    pub fn default_home() -> PathBuf {
        if let Some(h) = std::env::var_os("SHOAL_HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(h);
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".local/share/shoal")
    }

    /// Opens (creating when needed) the store under `home`.
    pub async fn open(home: &Path) -> Result<Store, OpenError> {
        // Before `meta/` is created below: an interrupted compaction may have left it missing.
        if let Err(e) = meta::recover_compaction(&home.join("meta")) {
            tracing::warn!("finishing an interrupted compaction of {}: {e}", home.join("meta").display());
        }
        for (sub, what) in [
            ("", "files"),
            ("blobs", "blobs"),
            ("meta", "metadata database"),
            ("rootfs", "image roots"),
            ("tmp", "temporary files"),
        ] {
            let p = home.join(sub);
            open::check_dir(&p, what)?;
            std::fs::create_dir_all(&p).map_err(|source| OpenError::CreateDir { path: p.clone(), source })?;
        }
        let home =
            std::fs::canonicalize(home).map_err(|source| OpenError::CreateDir { path: home.to_owned(), source })?;
        let meta_dir = home.join("meta");
        let marker = meta::compact_marker(&meta_dir);
        if marker.exists() {
            // Asked for by the last gc. sled locks its directory: with another process using
            // this home, this fails before touching anything, and the open below says why.
            let started = std::time::Instant::now();
            match meta::compact(&meta_dir) {
                Ok((before, after)) => {
                    let _ = std::fs::remove_file(&marker);
                    tracing::info!(
                        before,
                        after,
                        ms = started.elapsed().as_millis() as u64,
                        "compacted the metadata database"
                    );
                }
                Err(e) => tracing::warn!("cannot compact {} ({e}): keeping it as it is", meta_dir.display()),
            }
        }
        // sled locks its directory: a second process fails here, before touching anything.
        let meta = Meta::open(&meta_dir).map_err(|e| open::meta_error(&home, &meta_dir, e))?;
        // Leftovers of interrupted imports and materializations.
        if let Ok(rd) = std::fs::read_dir(home.join("tmp")) {
            for e in rd.flatten() {
                let _ = tree::remove_tree_forcefully(&e.path());
            }
        }
        if let Ok(rd) = std::fs::read_dir(home.join("rootfs")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = tree::remove_tree_forcefully(&e.path());
                }
            }
        }
        let blobs_dir = home.join("blobs");
        // iroh-blobs' temp files of imports that failed or were killed (it leaves them: a
        // `file:/dev/zero` left gigabytes there); no other process uses this home (sled's lock).
        if let Ok(rd) = std::fs::read_dir(blobs_dir.join("temp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let (gc_config, gc_tx) = gc::iroh_gc_config();
        let mut options = iroh_blobs::store::fs::options::Options::new(&blobs_dir);
        options.gc = Some(gc_config);
        options.inline.max_data_inlined = BLOB_INLINE_BYTES_MAX;
        let opening = open::OpeningBlobs::start();
        let blobs = iroh_blobs::store::fs::FsStore::load_with_opts(blobs_dir.join("blobs.db"), options)
            .await
            .map_err(|e| open::blobs_error(&home, &blobs_dir, e.to_string()))?;
        drop(opening);
        let corrupt: HashSet<Hash> =
            meta.corrupt.iter().keys().filter_map(|k| k.ok().and_then(|k| meta::hash_of(&k))).collect();
        if !corrupt.is_empty() {
            tracing::warn!(
                count = corrupt.len(),
                "blobs found corrupted earlier are kept out of use; `shoal gc` removes them"
            );
        }
        debug!(home = %home.display(), "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                home,
                blobs,
                meta,
                gc_tx,
                rootfs_locks: Mutex::new(HashMap::new()),
                gc_lock: tokio::sync::Mutex::new(()),
                writes: Arc::new(tokio::sync::RwLock::new(())),
                held: Mutex::new(HashMap::new()),
                reads: tokio::sync::Semaphore::new(READS_IN_FLIGHT_MAX),
                corrupt: Mutex::new(corrupt),
                data_dir: blobs_dir.join("data"),
                image_bytes_max: std::sync::atomic::AtomicU64::new(IMAGE_BYTES_MAX_DEFAULT),
            }),
        })
    }

    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// Sets how large one layer of an imported image may expand, bytes (a 4 MB gzip can hold
    /// 4 GiB of zeros); [`IMAGE_BYTES_MAX_DEFAULT`] until set.
    pub fn set_image_bytes_max(&self, bytes: u64) {
        self.inner.image_bytes_max.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn image_bytes_max(&self) -> u64 {
        self.inner.image_bytes_max.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.inner.meta
    }

    pub(crate) fn iroh(&self) -> &iroh_blobs::api::Store {
        &self.inner.blobs
    }

    /// The directory for temporary files next to the store (`home/tmp`, on its file system, so
    /// what is written there is stored by a rename): made again if it went, emptied at each open.
    pub fn tmp_root(&self) -> Result<PathBuf, StoreError> {
        let dir = self.home().join("tmp");
        std::fs::create_dir_all(&dir).map_err(StoreError::io("cannot create", &dir))?;
        Ok(dir)
    }

    /// A fresh, empty temporary directory under `home/tmp` (removed at the next open if left).
    pub(crate) fn temp_dir(&self, what: &str) -> Result<PathBuf, StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = self.home().join("tmp").join(format!(
            "{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).map_err(StoreError::io("cannot create", &p))?;
        Ok(p)
    }

    /// Stores bytes; returns their hash.
    pub async fn put_bytes(&self, bytes: impl Into<Bytes>) -> Result<Hash, StoreError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            // iroh-blobs holds the empty blob on every store, always complete: nothing to write
            // (most jobs' stderr).
            return Ok(Hash::of(b""));
        }
        let tt =
            self.iroh().add_bytes(bytes.clone()).temp_tag().await.map_err(|e| self.write_failed("adding bytes", &e))?;
        let hash = from_iroh(tt.hash());
        if self.is_corrupt(hash) {
            self.repair(hash, Source::Bytes(&bytes)).await?;
        }
        Ok(hash)
    }

    /// Stores the file at `path`, streaming it (it is never whole in memory), and indexes its
    /// sha256, computed in the same pass. Returns its hash and size.
    pub async fn put_file(&self, path: &Path) -> Result<(Hash, u64), StoreError> {
        let (hash, size, sha) = self.put_file_sha256(path).await?;
        Meta::put(&self.meta().sha256, sha.as_bytes(), &hash.0)?;
        Ok((hash, size))
    }

    /// Like `put_file`, returning the sha256 hex too (without indexing it).
    pub(crate) async fn put_file_sha256(&self, path: &Path) -> Result<(Hash, u64, String), StoreError> {
        let file = open_regular(path)?;
        let len = file.metadata().map_err(StoreError::io("cannot stat", path))?.len();
        self.check_room(path, len)?;
        use std::io::Read;
        // A file that grows while it is read is stored as it was when opened.
        let (hash, size, sha) =
            self.put_reader_sha256(file.take(len)).await.map_err(StoreError::io("cannot read", path))?;
        if self.is_corrupt(hash) {
            self.repair(hash, Source::File(path)).await?;
        }
        Ok((hash, size, sha))
    }

    /// Stores what `reader` gives until its end (a download's body), streaming it, and indexes
    /// its sha256. Returns its hash, size and sha256 hex; a read error stores nothing and is
    /// returned as it was (the reader decides what is too much).
    pub async fn put_reader(
        &self,
        reader: impl std::io::Read + Send + 'static,
    ) -> Result<(Hash, u64, String), std::io::Error> {
        let (hash, size, sha) = self.put_reader_sha256(reader).await?;
        Meta::put(&self.meta().sha256, sha.as_bytes(), &hash.0).map_err(std::io::Error::other)?;
        Ok((hash, size, sha))
    }

    async fn put_reader_sha256(
        &self,
        mut reader: impl std::io::Read + Send + 'static,
    ) -> Result<(Hash, u64, String), std::io::Error> {
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let read = tokio::task::spawn_blocking(move || {
            let mut sha = sha2::Sha256::new();
            let mut size = 0u64;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let copy = std::io::Error::new(e.kind(), e.to_string());
                        let _ = tx.blocking_send(Err(e));
                        return Err(copy);
                    }
                };
                buf.truncate(n);
                sha.update(&buf);
                size += n as u64;
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return Err(std::io::Error::other("the blob store stopped reading"));
                }
            }
            Ok((size, hex::encode(sha.finalize())))
        });
        let stream = futures_lite::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let added = self
            .iroh()
            .add_stream(stream)
            .await
            .temp_tag()
            .await
            .map_err(|e| std::io::Error::other(format!("the blob store failed: {e}")));
        let read = read.await.map_err(std::io::Error::other)?;
        // A failed read stops the store: the read's error is the one that says what happened.
        let (size, sha) = read?;
        let hash = from_iroh(added?.hash());
        Ok((hash, size, sha))
    }

    /// The file holding a stored blob's bytes, opened for reading, where iroh-blobs keeps it as
    /// one (complete blobs past its inline size); None otherwise. The fast way to stream a large
    /// blob out (an upload): the reader of [`Store::reader`] goes through the store's actor a
    /// range at a time. The caller holds the blob ([`Store::hold`]) while it reads and checks
    /// the bytes against the hash as they pass.
    pub async fn data_file(&self, hash: Hash) -> Option<std::fs::File> {
        let size = self.size(hash).await.ok().flatten()?;
        let path = self.inner.data_dir.join(format!("{}.data", hash.to_hex()));
        let file = std::fs::File::open(&path).ok()?;
        (file.metadata().ok()?.len() == size).then_some(file)
    }

    /// A reader of a stored blob's bytes, from its start (an upload's body). The caller checks
    /// the bytes against `hash` as they pass: iroh-blobs does not re-verify its own files.
    pub fn reader(&self, hash: Hash) -> impl tokio::io::AsyncRead + Unpin + Send + 'static {
        self.iroh().reader(to_iroh(hash))
    }

    /// Refuses to store `len` bytes from `path` when the store's file system would be left with
    /// less than [`FULL_DISK_BYTES`] free.
    pub fn check_room(&self, path: &Path, len: u64) -> Result<(), StoreError> {
        match fs_free_bytes(self.home()) {
            Some(free_bytes) if len.saturating_add(reserve_bytes(self.home())) > free_bytes => {
                Err(StoreError::NoRoom { path: path.to_owned(), len, fs: self.home().to_owned(), free_bytes })
            }
            _ => Ok(()),
        }
    }

    /// Stores a file without indexing its sha256 (tree building): small files in one read.
    pub(crate) async fn put_file_plain(&self, path: &Path, size: u64) -> Result<Hash, StoreError> {
        if size <= SMALL_FILE_BYTES {
            let data = std::fs::read(path).map_err(StoreError::io("cannot read", path))?;
            self.put_bytes(data).await
        } else {
            self.check_room(path, size)?;
            let abs = std::path::absolute(path).map_err(StoreError::io("cannot resolve", path))?;
            let tt = self.iroh().add_path(&abs).temp_tag().await.map_err(|e| self.write_failed("adding a file", &e))?;
            let hash = from_iroh(tt.hash());
            if self.is_corrupt(hash) {
                self.repair(hash, Source::File(&abs)).await?;
            }
            Ok(hash)
        }
    }

    /// The bytes of a blob, or `None` when it is not stored.
    pub async fn get_bytes(&self, hash: Hash) -> Result<Option<Bytes>, StoreError> {
        if !self.has(hash).await? {
            return Ok(None);
        }
        let _read = self.inner.reads.acquire().await.expect("never closed");
        let b = match retry_busy(|| self.iroh().get_bytes(to_iroh(hash))).await {
            Ok(b) => b,
            Err(e) => {
                // iroh-blobs reads a blob against its outboard and fails on a mismatch ("encode
                // error"): look at the data file to tell a corrupted blob from other failures.
                if let Some(actual) = self.hash_on_disk(hash).await
                    && actual != hash
                {
                    return Err(self.found_corrupt(hash, actual));
                }
                return Err(StoreError::blobs("reading a blob")(&e));
            }
        };
        // iroh-blobs verifies what arrives, not what it reads back from its own files: a flipped
        // bit on disk would be served as the blob (BLAKE3 costs ~0.15 ms a MiB here).
        let actual = Hash::of(&b);
        if actual != hash {
            return Err(self.found_corrupt(hash, actual));
        }
        Ok(Some(b))
    }

    /// Like `get_bytes`, with a missing blob as [`StoreError::NotFound`].
    pub async fn need_bytes(&self, hash: Hash) -> Result<Bytes, StoreError> {
        self.get_bytes(hash).await?.ok_or(StoreError::NotFound { hash })
    }

    /// Writes a blob to the file `dest` (replacing it).
    pub async fn export(&self, hash: Hash, dest: &Path) -> Result<(), StoreError> {
        if !self.has(hash).await? {
            return Err(StoreError::NotFound { hash });
        }
        let dest = std::path::absolute(dest).map_err(StoreError::io("cannot resolve", dest))?;
        let _read = self.inner.reads.acquire().await.expect("never closed");
        retry_busy(|| self.iroh().export(to_iroh(hash), &dest).finish())
            .await
            .map_err(|e| StoreError::blobs("exporting a blob")(&e))?;
        // As in `get_bytes`: what was written must be the blob (read back from the page cache).
        let written = dest.clone();
        let actual = tokio::task::spawn_blocking(move || hash_file(&written))
            .await
            .map_err(|e| StoreError::Io { what: "cannot check", path: dest.clone(), source: std::io::Error::other(e) })?
            .map_err(StoreError::io("cannot check", &dest))?;
        if actual != hash {
            let _ = std::fs::remove_file(&dest);
            return Err(self.found_corrupt(hash, actual));
        }
        Ok(())
    }

    pub async fn has(&self, hash: Hash) -> Result<bool, StoreError> {
        if self.is_corrupt(hash) {
            return Ok(false);
        }
        self.iroh().has(to_iroh(hash)).await.map_err(|e| StoreError::blobs("checking a blob")(&e))
    }

    /// Whether `hash` was found corrupted here (and not repaired since): it is not served.
    pub fn is_corrupt(&self, hash: Hash) -> bool {
        self.inner.corrupt.lock().expect("never poisoned").contains(&hash)
    }

    /// Blobs found corrupted and not repaired since, sorted.
    pub fn corrupt_blobs(&self) -> Vec<Hash> {
        let mut v: Vec<Hash> = self.inner.corrupt.lock().expect("never poisoned").iter().copied().collect();
        v.sort();
        v
    }

    /// Forgets corrupted blobs that `gc` removed: stored again, they are new blobs.
    pub(crate) fn forget_corrupt(&self, removed: &[Hash]) -> Result<(), StoreError> {
        let mut set = self.inner.corrupt.lock().expect("never poisoned");
        for h in removed {
            set.remove(h);
            self.meta().corrupt.remove(h.0).map_err(StoreError::meta("write"))?;
        }
        Ok(())
    }

    /// A failed write of the blob store, named as a full disk when the store's file system has
    /// (almost) no room left: iroh-blobs' own message does not say so.
    fn write_failed(&self, op: &'static str, e: &dyn std::fmt::Display) -> StoreError {
        match fs_free_bytes(self.home()) {
            Some(free_bytes) if free_bytes <= reserve_bytes(self.home()) => {
                StoreError::NoSpace { op, fs: self.home().to_owned(), free_bytes, message: e.to_string() }
            }
            _ => StoreError::blobs(op)(e),
        }
    }

    /// The BLAKE3 of a blob's data file, when it has one (blobs above iroh-blobs' inline size).
    async fn hash_on_disk(&self, hash: Hash) -> Option<Hash> {
        let path = self.inner.data_dir.join(format!("{}.data", hash.to_hex()));
        tokio::task::spawn_blocking(move || hash_file(&path).ok()).await.ok().flatten()
    }

    /// Takes `hash` out of use after its bytes on disk hashed to `actual`, and says so.
    fn found_corrupt(&self, hash: Hash, actual: Hash) -> StoreError {
        let path = self.inner.data_dir.join(format!("{}.data", hash.to_hex()));
        let path = if path.exists() { path.display().to_string() } else { "the blob database".to_string() };
        tracing::error!(%hash, %actual, %path, "a stored blob is corrupted: taken out of use");
        self.inner.corrupt.lock().expect("never poisoned").insert(hash);
        if let Err(e) = Meta::put(&self.meta().corrupt, &hash.0, &[]).and_then(|()| self.meta().flush()) {
            tracing::warn!(%hash, "cannot record the corrupted blob: {e}");
        }
        StoreError::Corrupt { hash, actual, path }
    }

    /// Writes the right bytes of a corrupted blob over its data file, in place (iroh-blobs may
    /// hold the file open), then checks them through iroh-blobs and takes the blob back into use.
    /// A blob small enough to live inside iroh-blobs' database cannot be rewritten: it stays out
    /// of use until `gc` removes it and it is stored again.
    async fn repair(&self, hash: Hash, source: Source<'_>) -> Result<(), StoreError> {
        let path = self.inner.data_dir.join(format!("{}.data", hash.to_hex()));
        if !path.is_file() {
            tracing::warn!(%hash, "a corrupted blob inside the blob database cannot be rewritten; `shoal gc` removes it");
            return Ok(());
        }
        let result = match source {
            Source::Bytes(b) => overwrite(&path, &mut &b[..]),
            Source::File(src) => std::fs::File::open(src).and_then(|mut f| overwrite(&path, &mut f)),
        };
        result.map_err(StoreError::io("cannot rewrite the corrupted blob", &path))?;
        let b = retry_busy(|| self.iroh().get_bytes(to_iroh(hash)))
            .await
            .map_err(|e| StoreError::blobs("reading a blob")(&e))?;
        if Hash::of(&b) == hash {
            self.inner.corrupt.lock().expect("never poisoned").remove(&hash);
            self.meta().corrupt.remove(hash.0).map_err(StoreError::meta("write"))?;
            self.meta().flush()?;
            tracing::info!(%hash, "a corrupted blob was rewritten with its right bytes");
        }
        Ok(())
    }

    /// The size of a complete blob, or `None`.
    pub async fn size(&self, hash: Hash) -> Result<Option<u64>, StoreError> {
        use iroh_blobs::api::blobs::BlobStatus;
        if self.is_corrupt(hash) {
            return Ok(None);
        }
        match self.iroh().blobs().status(to_iroh(hash)).await {
            Ok(BlobStatus::Complete { size }) => Ok(Some(size)),
            Ok(_) => Ok(None),
            Err(e) => Err(StoreError::blobs("checking a blob")(&e)),
        }
    }

    /// Every complete blob and its size, sorted by hash.
    pub async fn list(&self) -> Result<Vec<(Hash, u64)>, StoreError> {
        let hashes = self.iroh().blobs().list().hashes().await.map_err(|e| StoreError::blobs("listing blobs")(&e))?;
        let mut out = Vec::with_capacity(hashes.len());
        for h in hashes {
            if let Some(size) = self.size(from_iroh(h)).await? {
                out.push((from_iroh(h), size));
            }
        }
        out.sort();
        Ok(out)
    }

    // ---- action cache and records ----

    /// Action key -> record hash: one sled read, and a check that the record's blob is in the
    /// blob store. A record written with [`Durability::Soon`] goes to the blob store before
    /// its entry goes to sled, and every blob a job stored goes before its record; but the two
    /// databases commit on their own, so after a crash an entry can outlive its record's blob.
    /// Such an entry is a miss (the job runs again), never a record whose outputs are gone.
    pub async fn action_get(&self, key: &Hash) -> Result<Option<Hash>, StoreError> {
        let Some(record) = Meta::get_hash(&self.meta().actions, &key.0)? else { return Ok(None) };
        if !self.has(record).await? {
            tracing::warn!(%record, "the action cache names a record whose blob is not in the store (lost in a crash?); running the job again");
            return Ok(None);
        }
        self.touch_record(record)?;
        Ok(Some(record))
    }

    /// Records that `key` produced `record`; durable when it returns.
    pub fn action_put(&self, key: &Hash, record: &Hash) -> Result<(), StoreError> {
        Meta::put(&self.meta().actions, &key.0, &record.0)?;
        self.meta().flush()
    }

    /// Stores a signed record as a blob (its canonical CBOR), caches its bytes in the metadata
    /// database and makes it the latest record of its job, as durably as `durability` says.
    /// Invariant: every record in the store had a valid signature when it entered (this
    /// node's own, or one the caller verified), so records read back by hash need no second
    /// signature check.
    pub async fn put_record(&self, rec: &SignedRecord, durability: Durability) -> Result<Hash, StoreError> {
        self.put_record_inner(rec, None, durability).await
    }

    /// [`Store::put_record`] and [`Store::action_put`] of the record under `action_key`, with
    /// at most one flush of the metadata database for both (the record first: a crash between
    /// the two leaves a record without its cache entry, never an entry without its record).
    pub async fn put_record_for_action(
        &self,
        rec: &SignedRecord,
        action_key: &Hash,
        durability: Durability,
    ) -> Result<Hash, StoreError> {
        self.put_record_inner(rec, Some(action_key), durability).await
    }

    async fn put_record_inner(
        &self,
        rec: &SignedRecord,
        action_key: Option<&Hash>,
        durability: Durability,
    ) -> Result<Hash, StoreError> {
        let bytes = rec.to_cbor();
        let job_id = record_job_id(&rec.record);
        let hash = self.put_bytes(bytes.clone()).await?;
        if durability == Durability::Now {
            self.iroh().sync_db().await.map_err(|e| self.write_failed("syncing the blob database", &e))?;
        }
        let m = self.meta();
        Meta::put(&m.records, &hash.0, &bytes)?;
        // Stored again (made again, or fetched back): its results are here again.
        m.evicted.remove(hash.0).map_err(StoreError::meta("write"))?;
        self.touch_record(hash)?;
        if let Some(job_id) = job_id {
            if let Some(before) = Meta::get_hash(&m.records_by_job, job_id.as_bytes())?
                && before != hash
            {
                Meta::put(&m.records_by_job_previous, job_id.as_bytes(), &before.0)?;
            }
            Meta::put(&m.records_by_job, job_id.as_bytes(), &hash.0)?;
        }
        if let Some(key) = action_key {
            Meta::put(&m.actions, &key.0, &hash.0)?;
        }
        if durability == Durability::Now {
            m.flush_async().await?;
        }
        Ok(hash)
    }

    /// A record, read from the metadata cache (one sled read, its BLAKE3 checked against `hash`)
    /// or from its blob (which iroh-blobs verifies).
    pub async fn get_record(&self, hash: Hash) -> Result<Option<SignedRecord>, StoreError> {
        let cached = self.meta().records.get(hash.0).map_err(StoreError::meta("read"))?;
        let cached = cached.filter(|b| {
            let intact = Hash::of(b) == hash;
            if !intact {
                tracing::warn!(%hash, "the cached copy of a record does not match its hash; reading its blob");
            }
            intact
        });
        let bytes = match cached {
            Some(b) => Bytes::from(b.to_vec()),
            None => match self.get_bytes(hash).await? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        SignedRecord::from_cbor(&bytes).map(Some).map_err(|e| StoreError::BadRecord { hash, reason: e.to_string() })
    }

    pub fn latest_record_for_job(&self, job_id: &str) -> Result<Option<Hash>, StoreError> {
        Meta::get_hash(&self.meta().records_by_job, job_id.as_bytes())
    }

    /// The record of the job's run before its latest (a run that made another record).
    pub fn previous_record_for_job(&self, job_id: &str) -> Result<Option<Hash>, StoreError> {
        Meta::get_hash(&self.meta().records_by_job_previous, job_id.as_bytes())
    }

    // ---- pins ----

    /// Keeps `hash` (and, for a tree, all it reaches) through `gc`.
    pub fn pin(&self, hash: Hash) -> Result<(), StoreError> {
        Meta::put(&self.meta().pins, &hash.0, &[])
    }

    /// Keeps `hash` (and what it reaches) through `gc` until `until_unix_ms` at least; a pin only
    /// grows (a later end replaces an earlier one, a pin for good stays). Returns the end now in
    /// force (`u64::MAX`: for good).
    pub fn pin_until(&self, hash: Hash, until_unix_ms: u64) -> Result<u64, StoreError> {
        let pins = &self.meta().pins;
        let mut kept = until_unix_ms;
        pins.update_and_fetch(hash.0, |old| {
            kept = match old {
                Some(v) => pin_end(v).max(until_unix_ms),
                None => until_unix_ms,
            };
            Some(if kept == u64::MAX { Vec::new() } else { kept.to_be_bytes().to_vec() })
        })
        .map_err(StoreError::meta("write"))?;
        Ok(kept)
    }

    /// Until when `hash` is pinned (`u64::MAX`: for good), if it is.
    pub fn pinned_until(&self, hash: Hash) -> Result<Option<u64>, StoreError> {
        Ok(self.meta().pins.get(hash.0).map_err(StoreError::meta("read"))?.map(|v| pin_end(&v)))
    }

    pub fn unpin(&self, hash: Hash) -> Result<(), StoreError> {
        self.meta().pins.remove(hash.0).map_err(StoreError::meta("write"))?;
        Ok(())
    }

    pub fn pins(&self) -> Result<Vec<Hash>, StoreError> {
        let mut out = Vec::new();
        for kv in self.meta().pins.iter() {
            let (k, _) = kv.map_err(StoreError::meta("read"))?;
            out.extend(meta::hash_of(&k));
        }
        Ok(out)
    }

    /// The blake3 hash stored for content whose sha256 is `sha256_hex`.
    pub fn by_sha256(&self, sha256_hex: &str) -> Result<Option<Hash>, StoreError> {
        let hex = sha256_hex.strip_prefix("sha256:").unwrap_or(sha256_hex);
        Meta::get_hash(&self.meta().sha256, hex.as_bytes())
    }

    /// Whether `hash` was stored as a tree (one sled read; no blob is read).
    pub fn is_tree(&self, hash: Hash) -> bool {
        self.meta().is_tree(&hash)
    }

    /// Makes every write so far durable, both databases at once. Their order never was a
    /// guarantee (sled also flushes on its own every 500 ms); what matters after a crash is
    /// checked where it is read: an action-cache entry whose record blob is missing is a miss
    /// ([`Store::action_get`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let blobs =
            async { self.iroh().sync_db().await.map_err(|e| self.write_failed("syncing the blob database", &e)) };
        tokio::try_join!(blobs, self.meta().flush_async()).map(drop)
    }

    /// Flushes and stops the blob store. Call before exit.
    pub async fn shutdown(&self) {
        let _ = self.flush().await;
        if let Err(e) = self.iroh().shutdown().await {
            tracing::warn!("blob store shutdown: {e}");
        }
    }
}

/// Where the right bytes of a corrupted blob come from.
enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Opens `path` for reading if it is a regular file (never blocking on a FIFO): a device or a
/// FIFO never ends (`file:/dev/zero` filled the disk).
pub fn open_regular(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(StoreError::io("cannot open", path))?;
    let ft = file.metadata().map_err(StoreError::io("cannot stat", path))?.file_type();
    if ft.is_file() {
        return Ok(file);
    }
    Err(StoreError::NotRegular { path: path.to_owned(), kind: special_kind(ft) })
}

/// What a file that is neither a regular file, a directory nor a symlink is, in words.
pub fn special_kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Free space below which a failed write is reported as a full disk, in bytes (less on a
/// small file system: [`reserve_bytes`]).
const FULL_DISK_BYTES: u64 = 64 << 20;

/// Bytes an unprivileged writer may still use on the file system holding `path`.
pub fn fs_free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Room kept free on the store's file system: [`FULL_DISK_BYTES`], or a twentieth of a
/// smaller file system.
fn reserve_bytes(path: &Path) -> u64 {
    let total = rustix::fs::statvfs(path).map(|st| st.f_blocks.saturating_mul(st.f_frsize)).unwrap_or(u64::MAX);
    FULL_DISK_BYTES.min(total / 20)
}

/// The BLAKE3 of a file's bytes.
fn hash_file(path: &Path) -> std::io::Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(Hash(*hasher.finalize().as_bytes()))
}

/// Copies `from` over the start of the existing file `path` (same inode) and syncs it.
fn overwrite(path: &Path, from: &mut impl std::io::Read) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    std::io::copy(from, &mut f)?;
    f.sync_all()
}

/// The `job_id` field of a run record's CBOR, read without decoding the whole record.
fn record_job_id(record_cbor: &[u8]) -> Option<String> {
    /// Every other field is skipped unbuilt (decoding the whole record into a `Value` was
    /// 2 % of a run of trivial jobs).
    #[derive(serde::Deserialize)]
    struct JobId {
        job_id: Option<String>,
    }
    from_cbor::<JobId>(record_cbor).ok()?.job_id
}

/// Attempts at an operation iroh-blobs refused as busy, the first included.
const BUSY_ATTEMPTS: u32 = 12;
/// Longest wait between two attempts, in ms (the waits double from 1 ms: about 0.3 s in all).
const BUSY_BACKOFF_MAX_MS: u64 = 64;

/// Runs `op`, again with backoff while iroh-blobs answers `ResourceBusy`: its file-system store
/// holds a bounded inbox per hash and refuses operations past it, which happens when many jobs
/// read one image or tree at once.
async fn retry_busy<T, E, F, Fut>(mut op: F) -> Result<T, E>
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay_ms = 1;
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < BUSY_ATTEMPTS && is_busy(&e) => {
                tracing::debug!(attempt, "blob store busy; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                delay_ms = (delay_ms * 2).min(BUSY_BACKOFF_MAX_MS);
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// iroh-blobs wraps the `io::ErrorKind::ResourceBusy` several layers deep, without a source
/// chain to walk; its debug form ends with the causes, the kind's name or its description.
fn is_busy<E: std::fmt::Debug>(e: &E) -> bool {
    let text = format!("{e:?}");
    text.contains("ResourceBusy") || text.contains("resource busy")
}

/// The end of a pin from its stored value: none (a pin for good) or 8 bytes, Unix ms big-endian.
pub(crate) fn pin_end(value: &[u8]) -> u64 {
    <[u8; 8]>::try_from(value).map(u64::from_be_bytes).unwrap_or(u64::MAX)
}
