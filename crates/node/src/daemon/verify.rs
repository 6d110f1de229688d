//! `shoal verify`: a node runs done jobs of a DAG again, with no cache, and compares its outputs
//! with what the jobs' makers signed (BOINC's redundant runs, on demand). A maker whose outputs
//! differ is quarantined (`Body::Quarantine`): its results answer no cache any more, it claims no
//! job, and the job's completion is reported lost so the job runs again on another node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_dag::{Dag, Hash, RunRecord};
use shoal_mesh::core::Finished;
use shoal_mesh::ledger::NodeId;
use tokio::sync::oneshot;

use crate::api::{Verified, VerifiedJob};
use crate::api_error::{ApiError, bad, internal, parse_hash};
use crate::run::RunSource;

use super::cmd::Cmd;
use super::{Shared, exec};

/// What the loop gives a verify: the DAG, and per done job to run again its index, winning record,
/// maker and dependencies' completions (as `exec::run_claimed` takes them); the live peers.
pub(crate) struct Plan {
    pub dag: Dag,
    pub jobs: Vec<PlanJob>,
    pub peers: Vec<NodeId>,
}

pub(crate) struct PlanJob {
    pub idx: usize,
    pub id: String,
    pub record: Hash,
    pub maker: NodeId,
    pub upstream: Vec<(String, Hash, NodeId)>,
}

#[derive(Deserialize)]
pub(super) struct VerifyQuery {
    job: Option<String>,
}

/// `POST /v1/dags/{dag}/verify[?job=ID]`: every done job of the DAG (or the one) run again here.
pub(super) async fn verify(
    State(s): State<Arc<Shared>>,
    Path(dag): Path<String>,
    Query(q): Query<VerifyQuery>,
    _body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&dag)?;
    let (tx, rx) = oneshot::channel();
    s.cmds
        .send(Cmd::VerifyPlan { dag: hash, job: q.job, reply: tx })
        .await
        .map_err(|_| internal("the node is stopping"))?;
    let plan = rx.await.map_err(|_| internal("the node is stopping"))?.map_err(bad)?;
    let mut opts = s.run.clone();
    opts.json = true;
    opts.use_cache = false;
    let ctx = s.runner.prepare(plan.dag.clone(), PathBuf::new(), &opts, RunSource::default());
    let mut jobs = Vec::new();
    for j in &plan.jobs {
        jobs.push(verify_one(&s, &ctx, hash, j, &plan.peers).await);
    }
    Ok(axum::Json(Verified { dag: hash, node: hex::encode(s.node), jobs }).into_response())
}

async fn verify_one(s: &Arc<Shared>, ctx: &crate::run::Ctx, dag: Hash, j: &PlanJob, peers: &[NodeId]) -> VerifiedJob {
    let mut v = VerifiedJob {
        job: j.id.clone(),
        record: j.record,
        maker: hex::encode(j.maker),
        rerun: None,
        agrees: None,
        differs: Vec::new(),
        error: None,
    };
    let rerun = match exec::run_claimed(s, ctx, dag, j.idx, &j.upstream, peers, &BTreeSet::new()).await {
        Finished::Done { record, .. } => record,
        Finished::Failed(why) => {
            v.error = Some(format!("the run here failed: {why}"));
            return v;
        }
        Finished::Lost { job, .. } => {
            v.error = Some(format!("the outputs of `{job}`, an input, are lost: verify again once it ran again"));
            return v;
        }
    };
    v.rerun = Some(rerun);
    let providers: Vec<NodeId> = std::iter::once(j.maker).chain(peers.iter().copied()).collect();
    let (theirs, ours) = match (
        exec::fetch_record(&s.store, &s.blobs, j.record, &providers).await,
        exec::fetch_record(&s.store, &s.blobs, rerun, &[]).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            v.error = Some(format!("reading the records: {e:#}"));
            return v;
        }
    };
    v.differs = differing(&theirs, &ours);
    v.agrees = Some(v.differs.is_empty());
    if !v.differs.is_empty() {
        let reason = format!(
            "`{}` run again by {}: {} differ from what it signed in {}",
            j.id,
            &hex::encode(s.node)[..12],
            v.differs.join(", "),
            j.record
        );
        tracing::warn!(maker = %hex::encode(j.maker), job = j.id, "{reason}: quarantining the node that made it");
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Quarantine { node: j.maker, dag, job: j.id.clone(), record: j.record, rerun, reason, reply: tx };
        if s.cmds.send(cmd).await.is_err() || rx.await.is_err() {
            v.error = Some("the node stopped before it could quarantine the maker".into());
        }
    }
    v
}

/// What differs between two runs of one action: outputs by name, and the exit.
fn differing(a: &RunRecord, b: &RunRecord) -> Vec<String> {
    let names: BTreeSet<&String> = a.outputs.keys().chain(b.outputs.keys()).collect();
    let mut differs: Vec<String> = names
        .into_iter()
        .filter(|n| a.outputs.get(*n).map(|d| d.hash) != b.outputs.get(*n).map(|d| d.hash))
        .map(|n| format!("output `{n}`"))
        .collect();
    if a.exit != b.exit {
        differs.push("the exit".into());
    }
    differs
}

/// The loop's part: which jobs to run again, with what (see [`Plan`]); or why none can be.
pub(crate) fn plan(
    core: &shoal_mesh::core::NodeCore,
    me: NodeId,
    dag_hash: Hash,
    only: Option<&str>,
    peers: Vec<NodeId>,
    now_ms: u64,
) -> Result<Plan, String> {
    let dag = core
        .dag(&dag_hash)
        .cloned()
        .ok_or_else(|| format!("this node has no DAG {dag_hash} (yet): ask a node that ran it, or wait for gossip"))?;
    let ledger = core.ledger();
    let state =
        ledger.dag_state(&dag_hash, now_ms).ok_or_else(|| format!("this node's ledger has no DAG {dag_hash}"))?;
    if let Some(job) = only
        && !state.jobs.contains_key(job)
    {
        return Err(format!("the DAG has no job `{job}`"));
    }
    let done: BTreeMap<&str, (Hash, NodeId)> = state
        .jobs
        .iter()
        .filter_map(|(id, js)| match js {
            shoal_mesh::ledger::JobState::Done { record, node, .. } => {
                Some((id.as_str(), (*record, ledger.made_by(record).unwrap_or(*node))))
            }
            _ => None,
        })
        .collect();
    let deps = dag.all_dependencies();
    let mut jobs = Vec::new();
    for (idx, job) in dag.jobs.iter().enumerate() {
        if only.is_some_and(|o| o != job.id) {
            continue;
        }
        let Some(&(record, maker)) = done.get(job.id.as_str()) else {
            if only.is_some() {
                return Err(format!("`{}` is not done: there is nothing to verify yet", job.id));
            }
            continue;
        };
        if maker == me {
            if only.is_some() {
                return Err(format!(
                    "this node made `{}`'s result: verify it on another node (`--node URL` of one)",
                    job.id
                ));
            }
            continue;
        }
        let upstream = deps[idx]
            .iter()
            .map(|&d| {
                let dep = &dag.jobs[d].id;
                done.get(dep.as_str()).map(|&(r, m)| (dep.clone(), r, m)).ok_or_else(|| format!("`{dep}` is not done"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        jobs.push(PlanJob { idx, id: job.id.clone(), record, maker, upstream });
    }
    Ok(Plan { dag, jobs, peers })
}
