//! Running a job this node claimed: fetch what it needs from peers, then run it exactly as
//! `shoal run` does (the same action key, cache, backends and records).

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use shoal_blobs::Store;
use shoal_blobs::net::BlobNode;
use shoal_dag::{Digest, DigestKind, Hash, ImageRef, InputRef, RunRecord};
use shoal_mesh::ledger::NodeId;

use super::Shared;
use crate::run::{self, Ctx, Status};
use shoal_mesh::core::Finished;

/// See `shoal_mesh::settings::LOST_RECHECK_MS` (the simulator models the same wait).
const LOST_RECHECK_MS: u64 = shoal_mesh::settings::LOST_RECHECK_MS;

/// Why a claimed job did not get to run.
enum NotRun {
    /// The outputs of `record`, the completion of dependency `job`, are nowhere to be fetched.
    Lost {
        job: String,
        record: Hash,
        why: anyhow::Error,
    },
    Other(anyhow::Error),
}

impl From<anyhow::Error> for NotRun {
    fn from(e: anyhow::Error) -> Self {
        NotRun::Other(e)
    }
}

/// Runs job `idx` of the prepared DAG; `upstream` names each dependency's run record and the
/// node that made it.
pub(crate) async fn run_claimed(
    shared: &Shared,
    ctx: &Ctx,
    idx: usize,
    upstream: &[(String, Hash, NodeId)],
    peers: &[NodeId],
    stale: &std::collections::BTreeSet<Hash>,
) -> Finished {
    match run_claimed_inner(shared, ctx, idx, upstream, peers, stale).await {
        Ok(report) if report.status == Status::Done => match report.record {
            Some(record) => Finished::Done { record, bytes: report.outputs.iter().map(|(_, d)| d.size).sum() },
            None => Finished::Failed("no run record".into()),
        },
        Ok(report) => {
            let mut why = report.error.unwrap_or_else(|| "failed".into());
            if let Some(tail) = report.stderr_tail.filter(|t| !t.is_empty()) {
                why = format!("{why}\n--- stderr (tail) ---\n{tail}");
            }
            Finished::Failed(why)
        }
        Err(NotRun::Lost { job, record, why }) => {
            tracing::warn!(upstream = job, %record, "an input is lost with every holder: {why:#}");
            Finished::Lost { job, record }
        }
        Err(NotRun::Other(e)) => Finished::Failed(format!("{e:#}")),
    }
}

/// Runs `fetch` of something made by upstream job `job` (completion `record`); if every
/// provider fails, asks once more after [`LOST_RECHECK_MS`], then reports it lost.
async fn from_upstream<T, Fut: std::future::Future<Output = Result<T>>>(
    job: &str,
    record: Hash,
    fetch: impl Fn() -> Fut,
) -> Result<T, NotRun> {
    if let Ok(v) = fetch().await {
        return Ok(v);
    }
    tokio::time::sleep(std::time::Duration::from_millis(LOST_RECHECK_MS)).await;
    fetch().await.map_err(|why| NotRun::Lost { job: job.to_string(), record, why })
}

async fn run_claimed_inner(
    shared: &Shared,
    ctx: &Ctx,
    idx: usize,
    upstream: &[(String, Hash, NodeId)],
    peers: &[NodeId],
    stale: &std::collections::BTreeSet<Hash>,
) -> Result<run::JobReport, NotRun> {
    let job = &ctx.dag().jobs[idx];
    let mut outputs: BTreeMap<String, BTreeMap<String, Digest>> = BTreeMap::new();
    let mut records: BTreeMap<&str, Hash> = BTreeMap::new();
    for (dep, record, holder) in upstream {
        let providers = providers(*holder, peers);
        let rec = from_upstream(dep, *record, || async {
            fetch_record(&shared.store, &shared.blobs, *record, &providers)
                .await
                .with_context(|| format!("fetching the run record of `{dep}`"))
        })
        .await?;
        outputs.insert(dep.clone(), rec.outputs);
        records.insert(dep, *record);
    }
    let upstream_output = |j: &str, output: &str, providers: &[NodeId]| {
        let record = records.get(j).copied();
        let (outputs, j, output) = (&outputs, j.to_string(), output.to_string());
        let providers = providers.to_vec();
        async move {
            let record = record.ok_or_else(|| anyhow!("`{j}` is not among the job's dependencies"))?;
            from_upstream(&j, record, || fetch_upstream(shared, outputs, &j, &output, &providers)).await
        }
    };
    let providers_all: Vec<NodeId> = {
        let mut p: Vec<NodeId> = upstream.iter().map(|(_, _, n)| *n).collect();
        p.extend(peers.iter().filter(|n| !p.contains(n)).copied().collect::<Vec<_>>());
        p
    };
    // The image, every input and stdin, into this store.
    match &job.image {
        ImageRef::Blake3(id) => {
            let blobs = &shared.blobs;
            shared
                .complete
                .once(*id, async {
                    blobs.fetch_image(*id, &providers_all).await.map(|_| ()).map_err(anyhow::Error::from)
                })
                .await
                .context("fetching the job's image")?;
        }
        ImageRef::Job { job: j, output } => upstream_output(j, output, &providers_all).await?,
        _ => {}
    }
    for r in job.inputs.values().chain(job.stdin.iter()) {
        match r {
            InputRef::Job { job: j, output } => upstream_output(j, output, &providers_all).await?,
            InputRef::Blake3(h) => {
                fetch_bare(shared, *h, &providers_all).await?;
            }
            _ => {}
        }
    }
    Ok(run::run_one_fresh(ctx, idx, &outputs, stale).await)
}

/// The holder first, then the other peers.
fn providers(holder: NodeId, peers: &[NodeId]) -> Vec<NodeId> {
    std::iter::once(holder).chain(peers.iter().copied().filter(|p| *p != holder)).collect()
}

async fn fetch_upstream(
    shared: &Shared,
    outputs: &BTreeMap<String, BTreeMap<String, Digest>>,
    job: &str,
    output: &str,
    providers: &[NodeId],
) -> Result<()> {
    let d = outputs
        .get(job)
        .and_then(|o| o.get(output))
        .ok_or_else(|| anyhow!("job `{job}` finished without producing output `{output}`"))?;
    fetch_digest(shared, d, providers).await
}

/// A digest's blob or tree into the local store, unless it is there. A tree is walked once per
/// process (its root blob arrives before its children, so "the root is here" does not mean
/// "the tree is here"), and concurrent callers wait for the one walk.
pub(crate) async fn fetch_digest(shared: &Shared, d: &Digest, providers: &[NodeId]) -> Result<()> {
    match d.kind {
        DigestKind::File => {
            if !shared.store.has(d.hash).await? {
                shared.blobs.fetch(d.hash, providers).await.with_context(|| format!("fetching {}", d.hash))?;
            }
            Ok(())
        }
        DigestKind::Tree => {
            let blobs = &shared.blobs;
            shared
                .complete
                .once(d.hash, async {
                    blobs.fetch_tree(d.hash, providers).await.map(|_| ()).map_err(anyhow::Error::from)
                })
                .await
                .with_context(|| format!("fetching the tree {}", d.hash))
        }
    }
}

/// Trees and images known complete in this store, each fetched by one caller at a time.
#[derive(Default)]
pub(crate) struct Complete {
    cells: std::sync::Mutex<BTreeMap<Hash, std::sync::Arc<tokio::sync::OnceCell<()>>>>,
}

impl Complete {
    /// Runs `fetch` unless an earlier call for `hash` succeeded; callers at once wait for one run.
    pub(crate) async fn once(&self, hash: Hash, fetch: impl std::future::Future<Output = Result<()>>) -> Result<()> {
        let cell = self.cells.lock().expect("complete-set lock").entry(hash).or_default().clone();
        cell.get_or_try_init(|| fetch).await.map(|_| ())
    }
}

/// A `blake3:` input whose kind the DAG does not say: a blob, or a tree if it decodes as one.
/// Returns the bytes that arrived.
pub(crate) async fn fetch_bare(shared: &Shared, hash: Hash, providers: &[NodeId]) -> Result<u64> {
    let mut arrived = 0;
    if !shared.store.has(hash).await? {
        arrived = shared.blobs.fetch(hash, providers).await.with_context(|| format!("fetching input {hash}"))?;
    }
    let bytes = shared.store.need_bytes(hash).await?;
    if shoal_blobs::tree::Tree::decode(&bytes).is_ok() {
        let tree_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = tree_bytes.clone();
        let blobs = &shared.blobs;
        shared
            .complete
            .once(hash, async move {
                let n = blobs.fetch_tree(hash, providers).await?;
                counted.store(n, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })
            .await
            .with_context(|| format!("fetching the tree {hash}"))?;
        arrived += tree_bytes.load(std::sync::atomic::Ordering::Relaxed);
    }
    Ok(arrived)
}

/// A run record into this store (verified: it comes from elsewhere), and decoded.
pub(crate) async fn fetch_record(
    store: &Store,
    blobs: &BlobNode,
    hash: Hash,
    providers: &[NodeId],
) -> Result<RunRecord> {
    if let Some(signed) = store.get_record(hash).await? {
        return Ok(signed.verify()?);
    }
    blobs.fetch(hash, providers).await?;
    let bytes = store.need_bytes(hash).await?;
    let signed = shoal_blobs::SignedRecord::from_cbor(&bytes).map_err(|e| anyhow!("run record {hash}: {e}"))?;
    let record = signed.verify().with_context(|| format!("run record {hash} does not verify"))?;
    store.put_record(&signed, shoal_blobs::Durability::Now).await?;
    Ok(record)
}

/// Keeps a copy of a run's record, outputs, stdout and stderr in this store; the bytes fetched.
pub(crate) async fn replicate(shared: &Shared, record: Hash, providers: &[NodeId]) -> Result<u64> {
    let rec = fetch_record(&shared.store, &shared.blobs, record, providers).await?;
    let mut total = 0;
    for d in rec.outputs.values().chain([&rec.stdout, &rec.stderr]) {
        fetch_digest(shared, d, providers).await?;
        total += d.size;
    }
    Ok(total)
}
