//! Running a job this node claimed: fetch what it needs from peers, then run it exactly as
//! `shoal run` does (the same action key, cache, backends and records).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, anyhow};
use shoal_blobs::Store;
use shoal_blobs::net::BlobNode;
use shoal_dag::{Digest, DigestKind, Hash, ImageRef, InputRef, RunRecord};
use shoal_mesh::ledger::NodeId;

use super::Shared;
use super::cmd::Cmd;
use crate::run::{self, Ctx, Status};
use shoal_mesh::core::Finished;
use shoal_mesh::lost::{self, Unfetchable, Verdict};

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
    dag: Hash,
    idx: usize,
    upstream: &[(String, Hash, NodeId)],
    peers: &[NodeId],
    stale: &std::collections::BTreeSet<Hash>,
) -> Finished {
    match run_claimed_inner(shared, ctx, dag, idx, upstream, peers, stale).await {
        Ok(report) if report.status == Status::Done => match report.record {
            Some(record) => Finished::Done {
                record,
                bytes: report.outputs.iter().map(|(_, d)| d.size).sum(),
                action: report.action_key,
                // From the record as stored (signed here, or checked when it came).
                result: match shared.store.get_record(record).await {
                    Ok(Some(signed)) => signed.record_trusted().ok().map(|r| r.result_digest()),
                    _ => None,
                },
            },
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

/// Runs `fetch` of something made by upstream job `job` (completion `record`). While every
/// provider fails it asks again every `recheck_ms`, and after each failed retry `judge` (the
/// loop's `shoal_mesh::lost::judge`) decides with `lost::reader_gives_up`, as the simulator's
/// nodes do: the claim is given up (the output reported lost, its job run again) unless this
/// node hears nobody, when the job waits, its claim kept by the node's `Alive` as for a running
/// job.
async fn from_upstream<T, Fut, J>(
    job: &str,
    record: Hash,
    recheck_ms: u64,
    fetch: impl Fn() -> Fut,
    judge: impl Fn() -> J,
) -> Result<T, NotRun>
where
    Fut: std::future::Future<Output = Result<T>>,
    J: std::future::Future<Output = Verdict>,
{
    if let Ok(v) = fetch().await {
        return Ok(v);
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(recheck_ms)).await;
        let why = match fetch().await {
            Ok(v) => return Ok(v),
            Err(why) => why,
        };
        let verdict = judge().await;
        if lost::reader_gives_up(verdict) {
            return Err(NotRun::Lost { job: job.to_string(), record, why });
        }
        tracing::info!(upstream = job, %record, ?verdict, "an input is not served and no peer is heard: asking again: {why:#}");
    }
}

/// What the loop's `lost::judge` says of completion `record` of `job` (made by `runner`) of
/// `dag`; a stopping node's answer is `Alone` (keep waiting: the job is being stopped anyway).
async fn judge_lost(shared: &Shared, dag: Hash, job: &str, record: Hash, runner: NodeId) -> Verdict {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let output = Unfetchable { dag, job: job.to_string(), record, runner: Some(runner) };
    if shared.cmds.send(Cmd::JudgeLost { output, reply: tx }).await.is_err() {
        return Verdict::Alone;
    }
    rx.await.unwrap_or(Verdict::Alone)
}

async fn run_claimed_inner(
    shared: &Shared,
    ctx: &Ctx,
    dag: Hash,
    idx: usize,
    upstream: &[(String, Hash, NodeId)],
    peers: &[NodeId],
    stale: &std::collections::BTreeSet<Hash>,
) -> Result<run::JobReport, NotRun> {
    let job = &ctx.dag().jobs[idx];
    let mut outputs: BTreeMap<String, BTreeMap<String, Digest>> = BTreeMap::new();
    for (dep, record, holder) in upstream {
        let providers = providers(*holder, peers);
        let fetch = || async {
            fetch_record(&shared.store, &shared.blobs, *record, &providers)
                .await
                .with_context(|| format!("fetching the run record of `{dep}`"))
        };
        let judge = || judge_lost(shared, dag, dep, *record, *holder);
        let rec = from_upstream(dep, *record, shared.lost_recheck_ms, fetch, judge).await?;
        // Used as an input now: the last of its results to evict.
        let _ = shared.store.touch_record(*record);
        outputs.insert(dep.clone(), rec.outputs);
    }
    // What the job reads stays out of eviction and gc from before it arrives until the job ends.
    let blake3_refs = job.inputs.values().chain(job.stdin.iter()).filter_map(|r| r.root().known_blake3());
    let image_id = match &job.image {
        ImageRef::Blake3(id) => Some(*id),
        _ => None,
    };
    let _held =
        shared.store.hold(outputs.values().flat_map(|o| o.values().map(|d| d.hash)).chain(blake3_refs).chain(image_id));
    let upstream_output = |j: &str, output: &str, providers: &[NodeId]| {
        let made = upstream.iter().find(|(dep, ..)| dep == j).map(|(_, record, runner)| (*record, *runner));
        let (outputs, j, output) = (&outputs, j.to_string(), output.to_string());
        let providers = providers.to_vec();
        async move {
            let (record, runner) = made.ok_or_else(|| anyhow!("`{j}` is not among the job's dependencies"))?;
            let fetch = || fetch_upstream(shared, outputs, &j, &output, &providers);
            let judge = || judge_lost(shared, dag, &j, record, runner);
            from_upstream(&j, record, shared.lost_recheck_ms, fetch, judge).await
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
    // What a path or selection starts from comes whole; the job narrows it here.
    for r in job.inputs.values().chain(job.stdin.iter()) {
        match r.root() {
            InputRef::Job { job: j, output } => upstream_output(j, output, &providers_all).await?,
            // A URL's or object's bytes were fetched and pinned by the submitting node: from the
            // mesh like any blob (a redacted URL could not be fetched again).
            other => {
                if let Some(h) = other.known_blake3() {
                    fetch_bare(shared, h, &providers_all).await?;
                }
            }
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

/// Candidates of the mesh-wide action cache tried for one job before it runs (each a record
/// fetch, and its outputs' when it checks out).
const CACHE_CANDIDATES_MAX: usize = 3;
/// Records of untrusted makers read for one job to count agreeing runs (`--cache-agree`).
const CACHE_AGREE_RECORDS_MAX: usize = 8;

/// Whose results the mesh-wide cache takes: a result of this node or of a `trusted` one counts
/// alone; any other only once `agree` nodes made results of the action with the same outputs.
#[derive(Clone, Debug)]
pub struct CacheTrust {
    pub agree: u32,
    pub trusted: BTreeSet<NodeId>,
}

impl Default for CacheTrust {
    /// Every member's result counts alone.
    fn default() -> CacheTrust {
        CacheTrust { agree: 1, trusted: BTreeSet::new() }
    }
}

/// The mesh-wide action cache, as a node's runs ask it: the completions of an action in any DAG
/// its ledger holds, made by any node (quarantined ones excepted: the ledger leaves them out).
pub(crate) struct MeshCache(pub(crate) std::sync::Arc<Shared>);

impl run::RemoteCache for MeshCache {
    fn fetch<'a>(&'a self, action: Hash, stale: &'a BTreeSet<Hash>) -> futures::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let shared = &*self.0;
            let (tx, rx) = tokio::sync::oneshot::channel();
            shared.cmds.send(Cmd::Cached { action, reply: tx }).await.ok()?;
            let (candidates, peers) = rx.await.ok()?;
            let trust = &shared.cache_trust;
            let counts_alone = |m: &NodeId| trust.agree <= 1 || *m == shared.node || trust.trusted.contains(m);
            let (alone, others): (Vec<_>, Vec<_>) =
                candidates.into_iter().filter(|(r, _)| !stale.contains(r)).partition(|(_, m)| counts_alone(m));
            for (record, maker) in alone.into_iter().take(CACHE_CANDIDATES_MAX) {
                match take_cached(shared, action, record, &providers(maker, &peers)).await {
                    Ok(()) => return Some(hex::encode(maker)),
                    Err(e) => tracing::info!(%action, %record, "a result in the mesh's cache could not be used: {e:#}"),
                }
            }
            if others.len() < trust.agree as usize {
                return None;
            }
            // Runs by different nodes with the same outputs and exit: the first group with
            // `agree` makers answers.
            let mut groups: BTreeMap<Hash, Vec<(Hash, NodeId)>> = BTreeMap::new();
            for (record, maker) in others.into_iter().take(CACHE_AGREE_RECORDS_MAX) {
                let from = providers(maker, &peers);
                let Ok(rec) = fetch_record(&shared.store, &shared.blobs, record, &from).await else { continue };
                let group = groups.entry(rec.result_digest()).or_default();
                if !group.iter().any(|(_, m)| *m == maker) {
                    group.push((record, maker));
                }
                if group.len() >= trust.agree as usize {
                    let (record, maker) = group[0];
                    match take_cached(shared, action, record, &providers(maker, &peers)).await {
                        Ok(()) => return Some(hex::encode(maker)),
                        Err(e) => tracing::info!(%action, %record, "an agreed result could not be used: {e:#}"),
                    }
                }
            }
            None
        })
    }
    fn refuses(&self, record: Hash) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self.0.cmds.send(Cmd::Refused { record, reply: tx }).await.is_err() {
                return false;
            }
            rx.await.unwrap_or(false)
        })
    }
}

/// Record `record` of `action` and everything it names into this store, and this store's action
/// cache pointed at it. The record's signature is checked, and that it is of this action.
async fn take_cached(shared: &Shared, action: Hash, record: Hash, providers: &[NodeId]) -> Result<()> {
    let rec = fetch_record(&shared.store, &shared.blobs, record, providers).await?;
    anyhow::ensure!(rec.action_key == action, "its record is of another action, {}", rec.action_key);
    // Its results are fetched to be kept, even where they were evicted before.
    shared.store.keep_results(record)?;
    for d in rec.outputs.values().chain([&rec.stdout, &rec.stderr]) {
        fetch_digest(shared, d, providers).await?;
    }
    shared.store.action_put(&action, &record)?;
    Ok(())
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
    shared.store.keep_results(record)?;
    let mut total = 0;
    for d in rec.outputs.values().chain([&rec.stdout, &rec.stderr]) {
        fetch_digest(shared, d, providers).await?;
        total += d.size;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    use super::*;

    /// A provider that fails its first `fails` fetches, then serves 7.
    fn provider(calls: &AtomicU32, fails: u32) -> impl Fn() -> std::future::Ready<Result<u32>> + '_ {
        move || {
            let n = calls.fetch_add(1, SeqCst);
            std::future::ready(if n < fails { Err(anyhow!("no provider served it")) } else { Ok(7) })
        }
    }

    /// `verdicts` in turn, the last one for good.
    fn judge<'a>(judged: &'a AtomicU32, verdicts: &'a [Verdict]) -> impl Fn() -> std::future::Ready<Verdict> + 'a {
        move || {
            let n = judged.fetch_add(1, SeqCst) as usize;
            std::future::ready(verdicts[n.min(verdicts.len() - 1)])
        }
    }

    #[tokio::test]
    async fn a_node_that_hears_nobody_waits_for_an_input_rather_than_reporting_it_lost() {
        let (calls, judged) = (AtomicU32::new(0), AtomicU32::new(0));
        let got = from_upstream("a", Hash::of(b"r"), 1, provider(&calls, 3), judge(&judged, &[Verdict::Alone])).await;
        assert!(matches!(got, Ok(7)), "served once the node was back in touch");
        assert_eq!(calls.load(SeqCst), 4, "the first fetch and three rechecks");
        assert_eq!(judged.load(SeqCst), 2, "judged after each failed recheck");
    }

    #[tokio::test]
    async fn an_input_judged_lost_or_superseded_gives_the_claim_up() {
        // RunnerAlive too: a live runner whose only copy is corrupted serves nothing
        // (hardening::a_job_whose_record_was_reported_lost_is_run_again_not_answered_from_the_cache).
        for end in [Verdict::Report, Verdict::NotCurrent, Verdict::RunnerAlive] {
            let (calls, judged) = (AtomicU32::new(0), AtomicU32::new(0));
            let got = from_upstream(
                "a",
                Hash::of(b"r"),
                1,
                provider(&calls, u32::MAX),
                judge(&judged, &[Verdict::Alone, end]),
            )
            .await;
            let Err(NotRun::Lost { job, record, why }) = got else { panic!("{end:?}: not given up as lost") };
            assert_eq!((job.as_str(), record), ("a", Hash::of(b"r")));
            assert!(format!("{why:#}").contains("no provider"), "{why:#}");
            assert_eq!(judged.load(SeqCst), 2, "{end:?}: waited while alone, gave up when judged");
        }
    }

    #[tokio::test]
    async fn an_input_served_at_once_is_never_judged() {
        let (calls, judged) = (AtomicU32::new(0), AtomicU32::new(0));
        let got = from_upstream("a", Hash::of(b"r"), 1, provider(&calls, 0), judge(&judged, &[Verdict::Report])).await;
        assert!(matches!(got, Ok(7)));
        assert_eq!(judged.load(SeqCst), 0);
    }
}
