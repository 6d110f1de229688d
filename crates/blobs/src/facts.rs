//! The mesh ledger's facts, kept in sled so that a restarted node resumes where it stopped. The
//! store treats a fact as opaque bytes under its id; `shoal-node` signs, checks and folds them.

use crate::error::StoreError;
use crate::meta;
use crate::{Hash, Store};

impl Store {
    /// Stores facts (id, CBOR) in one batch; durable when it returns, so a fact acknowledged to a
    /// peer or a user survives a kill -9.
    pub async fn put_facts(&self, facts: &[(Hash, Vec<u8>)]) -> Result<(), StoreError> {
        if facts.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (id, bytes) in facts {
            batch.insert(&id.0, bytes.as_slice());
        }
        let m = self.meta();
        m.facts.apply_batch(batch).map_err(StoreError::meta("write"))?;
        m.flush_async().await
    }

    /// Deletes facts the ledger no longer holds (a node's `Alive` for a DAG that a later one
    /// replaced), in one batch.
    pub async fn forget_facts(&self, ids: &[Hash]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(&id.0);
        }
        let m = self.meta();
        m.facts.apply_batch(batch).map_err(StoreError::meta("write"))?;
        m.flush_async().await
    }

    /// Every stored fact, in id order.
    pub fn facts(&self) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.meta().facts.iter() {
            let (k, v) = kv.map_err(StoreError::meta("read"))?;
            if let Some(id) = meta::hash_of(&k) {
                out.push((id, v.to_vec()));
            }
        }
        Ok(out)
    }

    /// How many facts are stored.
    pub fn fact_count(&self) -> usize {
        self.meta().facts.len()
    }
}

impl Store {
    /// Keeps compacted DAGs' summaries (DAG, summary bytes): each as a blob, kept for good
    /// (pinned), and the DAG's entry in the `compacted` index naming it. Durable when it returns
    /// (one sync of each database for them all), so the DAGs' facts may be deleted after.
    pub async fn put_compacted(&self, summaries: Vec<(Hash, Vec<u8>)>) -> Result<(), StoreError> {
        if summaries.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(summaries.len());
        for (dag, bytes) in summaries {
            entries.push((dag, self.put_bytes(bytes).await?));
        }
        self.iroh().sync_db().await.map_err(|e| self.write_failed("syncing the blob database", &e))?;
        let m = self.meta();
        for (dag, hash) in entries {
            self.pin(hash)?;
            m.compacted.insert(dag.0, &hash.0).map_err(StoreError::meta("write"))?;
        }
        m.flush_async().await
    }

    /// Records that `dag` was compacted with the summary `summary` (a peer's word; its blob may
    /// not be here yet), kept for good once it is.
    pub fn keep_compacted(&self, dag: Hash, summary: Hash) -> Result<(), StoreError> {
        self.pin(summary)?;
        self.meta().compacted.insert(dag.0, &summary.0).map_err(StoreError::meta("write"))?;
        Ok(())
    }

    /// Every compacted DAG and its summary's hash.
    pub fn compacted(&self) -> Result<Vec<(Hash, Hash)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.meta().compacted.iter() {
            let (k, v) = kv.map_err(StoreError::meta("read"))?;
            if let (Some(dag), Some(summary)) = (meta::hash_of(&k), meta::hash_of(&v)) {
                out.push((dag, summary));
            }
        }
        Ok(out)
    }

    /// The summary hash of a compacted DAG.
    pub fn compacted_summary(&self, dag: Hash) -> Result<Option<Hash>, StoreError> {
        Ok(self.meta().compacted.get(dag.0).map_err(StoreError::meta("read"))?.and_then(|v| meta::hash_of(&v)))
    }

    /// Bytes of the ledger as stored: the facts and the compacted index (keys and values), for
    /// the figures of a bounded ledger.
    pub fn ledger_bytes(&self) -> u64 {
        let m = self.meta();
        [&m.facts, &m.compacted].iter().flat_map(|t| t.iter().flatten()).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }
}
