//! A store within a budget: eviction of the least recently used results, and what protects a
//! blob from it (and from `gc`) while it is in use.
//!
//! The unit of eviction is a run record's results (its outputs, stdout and stderr): the record
//! itself stays (it is small, and `shoal show` still answers), marked `evicted` so `gc` no longer
//! counts its results live and the action cache no longer answers with it. Eviction then asks
//! `gc` to sweep, so a blob another kept record, a pin, an image or a holder still reaches stays.
//!
//! Never evicted:
//! - what the caller keeps (`keep`): a node keeps the results the mesh counts on it for (its
//!   share of the k holders of a result still needed);
//! - records used less than `min_age_ms` ago (a job's results between its record and the
//!   ledger's knowing of it);
//! - results held by a running job ([`Store::hold`]: its image and inputs).
//!
//! `gc` itself waits for writers ([`Store::writing`]: a job between its first output and its
//! record, a fetch between its first blob and the record or pin that keeps it), so a sweep never
//! takes a blob that is about to be referenced.

use std::collections::{HashMap, HashSet};

use crate::error::StoreError;
use crate::meta::{Meta, hash_of};
use crate::{Hash, Store};

/// What [`Store::evict`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Bytes of blobs before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Records whose results were evicted.
    pub records: u64,
    /// Still over the budget.
    pub over: bool,
    /// Records left only because they were used too recently: they may go at a later call.
    pub young: u64,
}

/// Rounds of choose-and-sweep in one [`Store::evict`] (results share blobs, so a sweep may free
/// less than the records chosen held).
const EVICT_ROUNDS_MAX: usize = 4;

/// Blobs a running job keeps out of `gc` and eviction until dropped (see [`Store::hold`]).
#[must_use = "the blobs are held only while this lives"]
pub struct Held {
    store: Store,
    roots: Vec<Hash>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.store.inner.held.lock().expect("held lock");
        for r in &self.roots {
            if let Some(n) = held.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    held.remove(r);
                }
            }
        }
    }
}

/// A write in progress that `gc` waits for (see [`Store::writing`]).
#[must_use = "gc waits only while this lives"]
pub struct Writing(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>);

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Store {
    /// Keeps `roots` (blobs or trees, present yet or not) out of `gc` and eviction while the
    /// guard lives: a job's image and inputs, from before they are fetched until it ends.
    pub fn hold(&self, roots: impl IntoIterator<Item = Hash>) -> Held {
        let roots: Vec<Hash> = roots.into_iter().collect();
        let mut held = self.inner.held.lock().expect("held lock");
        for r in &roots {
            *held.entry(*r).or_insert(0) += 1;
        }
        Held { store: self.clone(), roots }
    }

    pub(crate) fn held_roots(&self) -> Vec<Hash> {
        self.inner.held.lock().expect("held lock").keys().copied().collect()
    }

    /// Makes `gc` wait until the guard is dropped: taken before storing blobs that nothing
    /// references yet, dropped once a record, pin or [`Store::hold`] does.
    pub async fn writing(&self) -> Writing {
        Writing(self.inner.writes.clone().read_owned().await)
    }

    pub(crate) async fn exclusive(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.inner.writes.clone().write_owned().await
    }

    /// Marks `record` used now (its results were made, asked for or read), for eviction's order,
    /// and takes it out of the evicted when it is stored again.
    pub fn touch_record(&self, record: Hash) -> Result<(), StoreError> {
        Meta::put(&self.meta().used, &record.0, &now_ms().to_be_bytes())
    }

    /// Counts `record`'s results live again (after an eviction), and touches it: they are being
    /// fetched back.
    pub fn keep_results(&self, record: Hash) -> Result<(), StoreError> {
        self.meta().evicted.remove(record.0).map_err(StoreError::meta("write"))?;
        self.touch_record(record)
    }

    /// Whether `record`'s results were evicted from this store.
    pub fn evicted(&self, record: Hash) -> bool {
        self.meta().evicted.contains_key(record.0).unwrap_or(false)
    }

    /// Bytes of every blob in the store.
    pub async fn stored_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.list().await?.iter().map(|(_, size)| size).sum())
    }

    /// Brings the store's blobs under `budget_bytes` when they are above it, down to nine
    /// tenths of it: the results of the least recently used records go first, except those
    /// `keep` names, those used in the last `min_age_ms` and those a running job holds.
    pub async fn evict(
        &self,
        budget_bytes: u64,
        min_age_ms: u64,
        keep: &(dyn Fn(Hash) -> bool + Send + Sync),
    ) -> Result<EvictReport, StoreError> {
        let before = self.stored_bytes().await?;
        let mut report = EvictReport { bytes_before: before, bytes_after: before, ..EvictReport::default() };
        if before <= budget_bytes {
            return Ok(report);
        }
        let target = budget_bytes / 10 * 9;
        let mut used = before;
        for _ in 0..EVICT_ROUNDS_MAX {
            let (chosen, young) = self.choose_victims(used.saturating_sub(target), min_age_ms, keep)?;
            report.young = young;
            if chosen.is_empty() {
                break;
            }
            let m = self.meta();
            for (record, action_key) in &chosen {
                Meta::put(&m.evicted, &record.0, &[])?;
                if let Some(key) = action_key
                    && Meta::get_hash(&m.actions, &key.0)? == Some(*record)
                {
                    m.actions.remove(key.0).map_err(StoreError::meta("write"))?;
                }
            }
            m.flush_async().await?;
            report.records += chosen.len() as u64;
            tracing::info!(
                records = chosen.len(),
                used,
                budget_bytes,
                "evicting the results of the least recently used records"
            );
            self.gc().await?;
            used = self.stored_bytes().await?;
            if used <= target {
                break;
            }
        }
        report.bytes_after = used;
        report.over = used > budget_bytes;
        Ok(report)
    }

    /// The least recently used live records, with their action keys, whose results add up to
    /// `bytes` (as their records say: shared blobs make it an upper bound of what is freed), and
    /// how many were passed over for their age alone.
    #[allow(clippy::type_complexity)]
    fn choose_victims(
        &self,
        bytes: u64,
        min_age_ms: u64,
        keep: &(dyn Fn(Hash) -> bool + Send + Sync),
    ) -> Result<(Vec<(Hash, Option<Hash>)>, u64), StoreError> {
        let m = self.meta();
        let mut live = HashSet::new();
        for tree in [&m.actions, &m.records_by_job] {
            for v in tree.iter().values() {
                live.extend(hash_of(&v.map_err(StoreError::meta("read"))?));
            }
        }
        let held: HashSet<Hash> = self.held_roots().into_iter().collect();
        let now = now_ms();
        let mut young = 0;
        let mut candidates: Vec<(u64, Hash, Option<Hash>, u64)> = Vec::new();
        let mut last_used: HashMap<Hash, u64> = HashMap::new();
        for kv in m.used.iter() {
            let (k, v) = kv.map_err(StoreError::meta("read"))?;
            if let (Some(h), Ok(b)) = (hash_of(&k), <[u8; 8]>::try_from(&v[..])) {
                last_used.insert(h, u64::from_be_bytes(b));
            }
        }
        for record in live {
            if self.evicted(record) || keep(record) {
                continue;
            }
            let when = last_used.get(&record).copied().unwrap_or(0);
            if now.saturating_sub(when) < min_age_ms {
                young += 1;
                continue;
            }
            let Some(bytes) = m.records.get(record.0).map_err(StoreError::meta("read"))? else { continue };
            let Ok(signed) = crate::SignedRecord::from_cbor(&bytes) else { continue };
            let Ok(r) = signed.record_trusted() else { continue };
            let results: Vec<&crate::Digest> = r.outputs.values().chain([&r.stdout, &r.stderr]).collect();
            if results.iter().any(|d| held.contains(&d.hash)) {
                continue;
            }
            let size = results.iter().map(|d| d.size).sum();
            if size == 0 {
                continue;
            }
            candidates.push((when, record, Some(r.action_key), size));
        }
        candidates.sort();
        let mut chosen = Vec::new();
        let mut sum = 0u64;
        for (_, record, action_key, size) in candidates {
            if sum >= bytes {
                break;
            }
            sum += size;
            chosen.push((record, action_key));
        }
        Ok((chosen, young))
    }
}
