//! Garbage collection.
//!
//! Mark: the roots are the records the action cache and `records_by_job` point at (the record blob,
//! its outputs, stdout and stderr unless they were evicted, and every other blob hash inside it
//! that is no such record's result, such as an input put by hand; trees followed recursively;
//! image ids inside records are not roots), the pins whose end has not passed, every indexed
//! image (its blob, rootfs tree, manifest, config and layer trees), and what running jobs hold.
//!
//! Sweep: iroh-blobs deletes only through its own collector, so the store is opened with that
//! collector configured to wait for our requests: each `gc` hands it the live set and waits for the
//! sweep to finish. iroh-blobs also protects blobs written since the sweep started. Indexes that
//! point at deleted blobs are pruned, and `rootfs/` directories of dead trees are removed.
//!
//! A `gc` waits for writers (`Store::writing`: a job between its first output and its record), so
//! it never collects an output whose record is about to be written.

use std::collections::HashSet;
use std::sync::Arc;

use iroh_blobs::store::{GcConfig, ProtectOutcome};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::error::StoreError;
use crate::image::{Image, ImageInfo};
use crate::meta::{Meta, hash_of};
use crate::tree::EntryKind;
use crate::{Hash, Store, to_iroh};

/// What a `gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_kept: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub rootfs_removed: u64,
    pub rootfs_bytes_freed: u64,
    /// Blobs found corrupted earlier and removed now.
    pub corrupt_removed: u64,
}

pub(crate) struct GcRequest {
    live: HashSet<iroh_blobs::Hash>,
    done: oneshot::Sender<()>,
}

type GcState = (mpsc::Receiver<GcRequest>, Option<oneshot::Sender<()>>);

/// iroh-blobs' collector, made to wait for our requests. Its loop calls the protect callback before
/// each run: the callback first reports the previous run as done, then waits for the next request.
/// If the collector stops (it does after an error), the state is dropped and our `gc` sees its
/// `done` channel close.
pub(crate) fn iroh_gc_config() -> (GcConfig, mpsc::Sender<GcRequest>) {
    let (tx, rx) = mpsc::channel::<GcRequest>(1);
    let state: Arc<tokio::sync::Mutex<GcState>> = Arc::new(tokio::sync::Mutex::new((rx, None)));
    let cb: iroh_blobs::store::ProtectCb = Arc::new(move |live| {
        let state = state.clone();
        Box::pin(async move {
            let mut st = state.lock().await;
            if let Some(done) = st.1.take() {
                let _ = done.send(());
            }
            match st.0.recv().await {
                Some(req) => {
                    live.extend(req.live);
                    st.1 = Some(req.done);
                    ProtectOutcome::Continue
                }
                None => {
                    drop(st);
                    std::future::pending::<ProtectOutcome>().await
                }
            }
        })
    });
    let config = GcConfig { interval: std::time::Duration::from_millis(1), add_protected: Some(cb) };
    (config, tx)
}

impl Store {
    /// Deletes every blob that no record, pin or indexed image reaches, and the materialized
    /// rootfs directories of dead trees.
    pub async fn gc(&self) -> Result<GcReport, StoreError> {
        let _one = self.inner.gc_lock.lock().await;
        // No writer is between storing blobs and referencing them while this runs.
        let _alone = self.exclusive().await;
        let m = self.meta();
        let mut live: HashSet<Hash> = HashSet::new();
        let mut image_ids: HashSet<Hash> = HashSet::new();
        for tree in [&m.images, &m.image_platforms, &m.image_digests] {
            for kv in tree.iter() {
                let (_, v) = kv.map_err(StoreError::meta("read"))?;
                image_ids.extend(hash_of(&v));
            }
        }
        let all_images: HashSet<Hash> =
            m.image_blobs.iter().keys().filter_map(|k| k.ok().and_then(|k| hash_of(&k))).collect();

        // Records.
        let mut records = HashSet::new();
        for tree in [&m.actions, &m.records_by_job] {
            for kv in tree.iter() {
                let (_, v) = kv.map_err(StoreError::meta("read"))?;
                records.extend(hash_of(&v));
            }
        }
        // A record keeps its results (unless they were evicted) and whatever else it names that
        // is no record's result (a `blob put` input, say): an input made by another record is
        // that record's to keep, so evicting it frees it.
        let mut roots = Vec::new();
        let mut produced: HashSet<Hash> = HashSet::new();
        let mut named = Vec::new();
        for rec in &records {
            live.insert(*rec);
            let Some(signed) = self.get_record(*rec).await? else { continue };
            let evicted = m.evicted.contains_key(rec.0).map_err(StoreError::meta("read"))?;
            match signed.record_trusted() {
                Ok(r) => {
                    let results = r.outputs.values().chain([&r.stdout, &r.stderr]).map(|d| d.hash);
                    produced.extend(results.clone());
                    if !evicted {
                        roots.extend(results);
                    }
                    if let Ok(v) = crate::from_cbor::<ciborium::Value>(&signed.record) {
                        collect_hashes(&v, &mut named);
                    }
                }
                // A record this version cannot read keeps everything it names.
                Err(_) => {
                    if let Ok(v) = crate::from_cbor::<ciborium::Value>(&signed.record) {
                        collect_hashes(&v, &mut roots);
                    }
                }
            }
        }
        roots.extend(named.into_iter().filter(|h| !produced.contains(h)));
        roots.retain(|h| !all_images.contains(h));
        // Pins.
        // A pin whose end has passed is dropped, and what it kept goes unless something else keeps it.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for kv in m.pins.iter() {
            let (k, v) = kv.map_err(StoreError::meta("read"))?;
            if crate::pin_end(&v) <= now_ms {
                m.pins.remove(&k).map_err(StoreError::meta("write"))?;
                continue;
            }
            roots.extend(hash_of(&k));
        }
        // What running jobs hold (an image with what it keeps).
        for h in self.held_roots() {
            roots.push(h);
            if m.image_blobs.contains_key(h.0).map_err(StoreError::meta("read"))? {
                image_ids.insert(h);
            }
        }
        // Images.
        for id in &image_ids {
            roots.push(*id);
            if let Some(list) = m.image_blobs.get(id.0).map_err(StoreError::meta("read"))? {
                let info: ImageInfo = crate::from_cbor(&list).unwrap_or_default();
                roots.extend(info.keeps);
            }
            if let Some(bytes) = self.get_bytes(*id).await?
                && let Ok(img) = Image::decode(&bytes)
            {
                roots.push(img.rootfs);
            }
        }
        // Follow trees.
        while let Some(h) = roots.pop() {
            if !live.insert(h) || !m.is_tree(&h) {
                continue;
            }
            let Ok(tree) = self.get_tree(h).await else { continue };
            for e in tree.entries {
                match e.kind {
                    EntryKind::File { hash, .. } => {
                        live.insert(hash);
                    }
                    EntryKind::Dir { hash } => roots.push(hash),
                    EntryKind::Symlink { .. } => {}
                }
            }
        }

        // Sweep.
        let all = self.list().await?;
        let mut report = GcReport::default();
        let mut dead = HashSet::new();
        for (h, size) in &all {
            if live.contains(h) {
                report.blobs_kept += 1;
            } else {
                dead.insert(*h);
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
        }
        // Blobs found corrupted go even when something refers to them: they come back whole
        // from a peer or a re-import.
        let corrupt = self.corrupt_blobs();
        for h in &corrupt {
            live.remove(h);
        }
        if !dead.is_empty() || !corrupt.is_empty() {
            let (done_tx, done_rx) = oneshot::channel();
            let req = GcRequest { live: live.iter().map(|h| to_iroh(*h)).collect(), done: done_tx };
            let stopped = || StoreError::Blobs {
                op: "garbage collection",
                message: "the iroh-blobs collector stopped (see the log); restart shoal and run gc again".into(),
            };
            self.inner.gc_tx.send(req).await.map_err(|_| stopped())?;
            done_rx.await.map_err(|_| stopped())?;
        }
        self.forget_corrupt(&corrupt)?;
        report.corrupt_removed = corrupt.len() as u64;

        // Prune indexes.
        let gone = |h: &Hash| dead.contains(h);
        for tree in [&m.sha256, &m.layers] {
            for kv in tree.iter() {
                let (k, v) = kv.map_err(StoreError::meta("read"))?;
                if hash_of(&v).is_some_and(|h| gone(&h)) {
                    tree.remove(k).map_err(StoreError::meta("write"))?;
                }
            }
        }
        for tree in [&m.trees, &m.records] {
            for k in tree.iter().keys() {
                let k = k.map_err(StoreError::meta("read"))?;
                if hash_of(&k).is_some_and(|h| gone(&h)) {
                    tree.remove(k).map_err(StoreError::meta("write"))?;
                }
            }
        }
        for tree in [&m.used, &m.evicted] {
            for k in tree.iter().keys() {
                let k = k.map_err(StoreError::meta("read"))?;
                if !m.records.contains_key(&k).map_err(StoreError::meta("read"))? {
                    tree.remove(k).map_err(StoreError::meta("write"))?;
                }
            }
        }
        for k in m.image_blobs.iter().keys() {
            let k = k.map_err(StoreError::meta("read"))?;
            if hash_of(&k).is_some_and(|h| !image_ids.contains(&h)) {
                m.image_blobs.remove(k).map_err(StoreError::meta("write"))?;
            }
        }
        m.merges.clear().map_err(StoreError::meta("write"))?;
        Meta::flush(m)?;
        if !dead.is_empty() {
            // The entries removed leave free space in sled's file, which it rewrites at every
            // open: the next open rewrites the database instead (`meta::compact`).
            let marker = crate::meta::compact_marker(&self.home().join("meta"));
            std::fs::write(&marker, b"").map_err(StoreError::io("cannot write", &marker))?;
        }

        // Materialized roots of dead trees, and their squashfs images (`<tree>.sqfs`, built
        // beside them by the microVM backend).
        let rootfs = self.home().join("rootfs");
        if let Ok(rd) = std::fs::read_dir(&rootfs) {
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(h) = name.strip_suffix(".sqfs").and_then(Hash::from_hex) {
                    if !live.contains(&h) {
                        let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                        std::fs::remove_file(e.path()).map_err(StoreError::io("cannot remove", e.path()))?;
                        report.rootfs_bytes_freed += bytes;
                    }
                    continue;
                }
                let Some(h) = Hash::from_hex(name) else { continue };
                if live.contains(&h) {
                    continue;
                }
                let _guard = {
                    let lock = {
                        let mut locks = self.inner.rootfs_locks.lock().unwrap_or_else(|e| e.into_inner());
                        locks.entry(h).or_default().clone()
                    };
                    lock.lock_owned().await
                };
                let bytes: u64 = walkdir::WalkDir::new(e.path())
                    .follow_links(false)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.file_type().is_file())
                    .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                    .sum();
                crate::tree::remove_tree_forcefully(&e.path()).map_err(StoreError::io("cannot remove", e.path()))?;
                report.rootfs_removed += 1;
                report.rootfs_bytes_freed += bytes;
            }
        }
        info!(?report, "gc done");
        Ok(report)
    }
}

/// Every 32-byte byte string in a CBOR value: how hashes are encoded.
fn collect_hashes(v: &ciborium::Value, out: &mut Vec<Hash>) {
    use ciborium::Value;
    match v {
        Value::Bytes(b) => out.extend(hash_of(b)),
        Value::Array(items) => items.iter().for_each(|i| collect_hashes(i, out)),
        Value::Map(entries) => entries.iter().for_each(|(k, v)| {
            collect_hashes(k, out);
            collect_hashes(v, out);
        }),
        Value::Tag(_, inner) => collect_hashes(inner, out),
        _ => {}
    }
}
