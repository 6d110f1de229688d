//! The uploads this node keeps for DAGs submitted through it. A presigned URL is a secret, so a
//! DAG entering the mesh carries its upload destinations redacted (`pin.rs`); this node keeps
//! them whole in `$SHOAL_HOME/uploads/kept/<dag>.json` (mode 0600), watches the DAG, and once a
//! job is done fetches its output from the mesh and sends it. The file goes when every upload of
//! the DAG is settled (sent, or its job failed or was cancelled): the full URLs live nowhere else.
//! A failed attempt is recorded (`shoal upload ls`) and tried again after
//! [`KEPT_RETRY_MS`](crate::data::upload::KEPT_RETRY_MS) or by `shoal upload retry`.

use std::sync::Arc;
use std::time::Duration;

use crate::api::JobStatus;
use crate::clock::now_unix_ms;
use crate::data::upload::{self, KEPT_RETRY_MS, UploadState};

use super::Shared;

/// How often the kept uploads are looked at.
const KEEPER_TICK: Duration = Duration::from_secs(1);

pub(super) async fn keep_sending(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(KEEPER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (dag, mut kept) in upload::kept(&s.store) {
            let Ok(view) = super::api::dag_view(&s, dag).await else { continue };
            let mut changed = false;
            for k in kept.iter_mut().filter(|k| !k.settled) {
                if k.failed_unix_ms.is_some_and(|t| now_unix_ms() < t + KEPT_RETRY_MS) {
                    continue;
                }
                let Some(jv) = view.jobs.get(&k.job) else { continue };
                match jv.state {
                    JobStatus::Failed | JobStatus::Cancelled => {
                        tracing::info!(%dag, job = %k.job, "nothing to upload: the job {}", jv.state);
                        k.settled = true;
                        changed = true;
                        continue;
                    }
                    JobStatus::Done => {}
                    _ => continue,
                }
                let Some(record) = jv.record else { continue };
                let runner = jv.node.as_deref().and_then(|n| hex::decode(n).ok()).and_then(|b| <[u8; 32]>::try_from(b).ok());
                let blob = match fetch_output(&s, record, runner, &k.output).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(%dag, job = %k.job, output = %k.output, "cannot fetch the output to upload: {e:#}");
                        k.failed_unix_ms = Some(now_unix_ms());
                        changed = true;
                        continue;
                    }
                };
                let r = upload::upload_output(
                    &s.runner.transfers,
                    &s.store,
                    &k.job,
                    &k.output,
                    blob,
                    &k.target,
                    Some(record),
                    Some(dag),
                )
                .await;
                changed = true;
                if r.state == UploadState::Done {
                    k.settled = true;
                } else {
                    k.failed_unix_ms = Some(now_unix_ms());
                }
            }
            if changed && let Err(e) = upload::update_kept(&s.store, dag, &kept) {
                tracing::warn!(%dag, "cannot write the kept uploads: {e:#}");
            }
        }
    }
}

/// The blob of `output` of the run `record`, fetched into this store from the node that ran it
/// or other peers.
async fn fetch_output(s: &Shared, record: shoal_dag::Hash, runner: Option<[u8; 32]>, output: &str) -> anyhow::Result<shoal_dag::Hash> {
    let rec = super::api::with_providers(s, runner, |p| async move {
        super::exec::fetch_record(&s.store, &s.blobs, record, &p).await
    })
    .await?;
    let digest = rec.outputs.get(output).cloned().unwrap_or_else(|| match output {
        "stderr" => rec.stderr.clone(),
        _ => rec.stdout.clone(),
    });
    let d = &digest;
    super::api::with_providers(s, runner, |p| async move { super::exec::fetch_digest(s, d, &p).await }).await?;
    Ok(digest.hash)
}
