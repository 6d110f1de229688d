//! A mesh DAG's run, read from a node's HTTP API for a commit: `shoal submit --wait
//! --provenance` when its DAG ends, `shoal provenance export DAG` any time after.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};
use shoal_dag::{Hash, SignedRecord};

use super::{JobFact, RunFacts};
use crate::api::{DagStatus, JobStatus};
use crate::client::Client;
use crate::run::Status;

/// Largest signed record read from a node, bytes.
const RECORD_BYTES_MAX: u64 = 16 << 20;

/// A record from the node, its hash and signature checked.
pub fn signed_record(client: &Client, record: Hash) -> Result<SignedRecord> {
    // The record route fetches it into the node's store from wherever the mesh holds it.
    let _: serde_json::Value = client.get_json(&format!("/v1/records/{record}"))?;
    let bytes = client.get_bytes(&format!("/v1/blobs/{record}"), RECORD_BYTES_MAX)?;
    if Hash::of(&bytes) != record {
        bail!("the node sent run record {record} with bytes that hash to {}", Hash::of(&bytes));
    }
    let signed = SignedRecord::from_cbor(&bytes).map_err(|e| anyhow!("run record {record}: {e}"))?;
    signed.verify().map_err(|e| anyhow!("run record {record}: {e}"))?;
    Ok(signed)
}

/// The facts of mesh DAG `dag` once every job has ended. `source` and `dag_text` default to the
/// DAG's hash and the text the mesh stores (tags and `file:` inputs pinned by its submitter).
pub fn facts(client: &Client, dag: &str, source: Option<String>, dag_text: Option<String>) -> Result<RunFacts> {
    let status: DagStatus = client.get_json(&format!("/v1/dags/{dag}"))?;
    let running = status.jobs.values().filter(|j| matches!(j.state, JobStatus::Open | JobStatus::Claimed)).count();
    if running > 0 {
        bail!(
            "DAG {} has {running} of {} jobs still open or running: commit it once it ends (`shoal watch {}`)",
            status.dag,
            status.jobs.len(),
            status.dag
        );
    }
    let dag_text = match dag_text {
        Some(t) => t,
        None => {
            let bytes =
                client.get_bytes(&format!("/v1/blobs/{}", status.dag), crate::daemon::DAG_BYTES_MAX_DEFAULT as u64)?;
            String::from_utf8(bytes).context("the DAG's text is not UTF-8")?
        }
    };
    let source = source.unwrap_or_else(|| format!("dag {}", status.dag));
    let parsed = shoal_dag::parse_dag(&source, &dag_text).map_err(|d| anyhow!("{d}"))?;
    let mut records = BTreeMap::new();
    let mut jobs = Vec::new();
    let (mut first, mut last) = (u64::MAX, 0u64);
    for job in &parsed.jobs {
        let view = status
            .jobs
            .get(&job.id)
            .ok_or_else(|| anyhow!("the node's status of DAG {} lacks job `{}`", status.dag, job.id))?;
        let mut fact = JobFact {
            job: job.id.clone(),
            status: match view.state {
                JobStatus::Done => Status::Done,
                _ => Status::Failed,
            },
            cached: view.cached_from.is_some(),
            action_key: None,
            record: view.record,
            outputs: BTreeMap::new(),
            error: view.failures.last().cloned().or_else(|| view.reason.clone()),
        };
        if view.state == JobStatus::Cancelled {
            fact.error = Some("cancelled".into());
        }
        if let Some(r) = view.record {
            let signed = signed_record(client, r)?;
            let rec = signed.record_trusted()?;
            fact.action_key = Some(rec.action_key);
            fact.outputs = rec.outputs.iter().map(|(k, d)| (k.clone(), d.hash)).collect();
            first = first.min(rec.timing.started_unix_ms);
            last = last.max(rec.timing.finished_unix_ms);
            records.insert(job.id.clone(), signed);
        }
        jobs.push(fact);
    }
    Ok(RunFacts {
        source,
        dag_text,
        dag: parsed,
        jobs,
        records,
        wall_ms: last.saturating_sub(first),
        command: "shoal submit",
        run_file: None,
    })
}

/// Commits the run of the DAG file at `path`, which the node `client` talks to ran as mesh DAG
/// `hash` and which has ended: `dag.json` is the file's JSON as written (a run file's
/// translation, the run file beside it), the rest from the node.
pub fn commit_submitted(
    client: &Client,
    repo: &super::Repo,
    path: &std::path::Path,
    hash: &str,
    command: &'static str,
    push: bool,
) -> Result<()> {
    let bytes = crate::run::read_dag_file(path, crate::daemon::DAG_BYTES_MAX_DEFAULT)?;
    let source = path.display().to_string();
    let parsed = super::parse_dag_or_run_file(&source, &bytes).map_err(|d| anyhow!("{d}"))?;
    let facts = facts(client, hash, Some(source), Some(parsed.json_text))?;
    let facts = RunFacts { command, run_file: parsed.run_file, ..facts };
    super::commit_run(repo, &facts, push).map(drop)
}

/// The one-job DAG a run record describes, every reference by hash: what an explorer permalink
/// (`/r/<record>`) ran, as a DAG file writes it.
pub fn dag_of_record(rec: &shoal_dag::RunRecord) -> Result<String> {
    use serde_json::{Map, Value, json};
    let j = &rec.job;
    let mut job = Map::new();
    job.insert("id".into(), json!(rec.job_id));
    job.insert("image".into(), json!(j.image.to_string()));
    job.insert("command".into(), json!(j.command));
    if !j.env.is_empty() {
        job.insert("env".into(), json!(j.env));
    }
    if let Some(w) = &j.workdir {
        job.insert("workdir".into(), json!(w));
    }
    if let Some(u) = &j.user {
        job.insert("user".into(), json!(u));
    }
    if let Some(s) = &j.stdin {
        job.insert("stdin".into(), json!(s.hash.to_string()));
    }
    if !j.inputs.is_empty() {
        let inputs: Map<String, Value> = j.inputs.iter().map(|(k, d)| (k.clone(), json!(d.hash.to_string()))).collect();
        job.insert("inputs".into(), Value::Object(inputs));
    }
    let outputs: Map<String, Value> = j.outputs.iter().map(|(k, o)| (k.clone(), json!(o.to_string()))).collect();
    job.insert("outputs".into(), Value::Object(outputs));
    let mut req = Map::new();
    if let Some(arch) = j.arch {
        req.insert("arch".into(), serde_json::to_value(arch)?);
    }
    if !j.cpu_flags.is_empty() {
        req.insert("cpu_flags".into(), json!(j.cpu_flags));
    }
    if j.network {
        req.insert("network".into(), json!(true));
    }
    if !req.is_empty() {
        job.insert("requirements".into(), Value::Object(req));
    }
    let mut text = serde_json::to_string_pretty(&json!({"version": 1, "jobs": [Value::Object(job)]}))?;
    text.push('\n');
    Ok(text)
}

/// The facts of the one-job run of `record` (an explorer permalink's), from the node.
pub fn record_facts(client: &Client, record: &str) -> Result<RunFacts> {
    let hash = parse_record_ref(record)?;
    let signed = signed_record(client, hash)?;
    facts_of_record(signed, permalink(hash))
}

/// The explorer's permalink of a run: `/r/<64 hex>`.
pub fn permalink(record: Hash) -> String {
    format!("/r/{}", hex::encode(record.0))
}

/// A record as a permalink names it: `/r/<hex>`, `/r/blake3:<hex>`, `blake3:<hex>` or `<hex>`.
pub fn parse_record_ref(what: &str) -> Result<Hash> {
    let bare = what.trim_start_matches("/r/");
    let full = if bare.starts_with("blake3:") { bare.to_string() } else { format!("blake3:{bare}") };
    full.parse().map_err(|_| {
        anyhow!(
            "`{what}` names no run record: write `/r/<64 hex>` as the explorer's permalink does, or `blake3:<64 hex>`"
        )
    })
}

/// [`record_facts`] of a record at hand.
pub fn facts_of_record(signed: SignedRecord, source: String) -> Result<RunFacts> {
    let hash = Hash::of(&signed.to_cbor());
    let rec = signed.record_trusted()?;
    let dag_text = dag_of_record(&rec)?;
    let dag = shoal_dag::parse_dag(&source, &dag_text).map_err(|d| anyhow!("the record's job as a DAG: {d}"))?;
    let fact = JobFact {
        job: rec.job_id.clone(),
        status: if rec.exit.success() { Status::Done } else { Status::Failed },
        cached: false,
        action_key: Some(rec.action_key),
        record: Some(hash),
        outputs: rec.outputs.iter().map(|(k, d)| (k.clone(), d.hash)).collect(),
        error: (!rec.exit.success()).then(|| format!("{:?}", rec.exit)),
    };
    Ok(RunFacts {
        source,
        dag_text,
        dag,
        jobs: vec![fact],
        records: BTreeMap::from([(rec.job_id.clone(), signed)]),
        wall_ms: rec.timing.wall_ms,
        command: "shoal provenance export",
        run_file: None,
    })
}
