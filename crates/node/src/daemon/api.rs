//! The HTTP API of a node (axum; loopback by default). Every handler turns its request into one
//! [`Cmd`] for the loop, or reads the store; nothing here touches the core directly. The routes
//! are described in `openapi.json` (served at `/v1/openapi.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use shoal_dag::{DigestKind, Hash};
use shoal_mesh::lost::Unfetchable;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::api::{BlockRequest, Cancelled, DagFacts, DagList, DagStatus, Done, Health, StoredBlob, Submitted};
use crate::api_error::{ApiError, bad, internal, not_found, parse_hash};

use super::{Cmd, MAX_ATTEMPTS_DEFAULT, Shared, auth, exec, pin};

/// How often an upload of unannounced size checks the free space as it comes, bytes.
const UPLOAD_ROOM_CHECK_BYTES: u64 = 64 << 20;
/// Largest attempts budget a submitter may ask for.
const MAX_ATTEMPTS_MAX: u32 = 100;

type Shr = Arc<Shared>;

pub(crate) fn router(shared: Shr, test_partitions: bool, guard: Arc<auth::Guard>) -> Router {
    let dag_bytes_max = shared.dag_bytes_max;
    let explorer = crate::explorer::router(shared.explorer.clone());
    let mut r = Router::new();
    if test_partitions {
        r = r.route("/v1/test/block", post(test_block));
    }
    r.route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/dags", post(submit).get(list_dags).layer(DefaultBodyLimit::max(dag_bytes_max)))
        .route("/v1/dags/{dag}", get(dag_status))
        .route("/v1/dags/{dag}/facts", get(dag_facts))
        .route("/v1/dags/{dag}/cancel", post(cancel))
        .route("/v1/dags/{dag}/verify", post(super::verify::verify))
        .route("/v1/dags/{dag}/jobs/{job}/outputs/{output}", get(job_output))
        .route("/v1/records/{record}", get(record))
        .route("/v1/blobs", post(upload).layer(DefaultBodyLimit::disable()))
        .route("/v1/blobs/{hash}", get(blob))
        .route("/v1/peers", get(peers))
        .route("/v1/metrics", get(metrics))
        .route("/v1/events", get(events))
        .merge(explorer)
        .merge(super::local::router())
        .with_state(shared)
        .layer(axum::middleware::from_fn_with_state(guard, auth::check))
}

/// How long a fetch for the API keeps retrying while peers' addresses are still arriving (a node
/// just started or rejoined hears the ledger before every announcement), in ms.
/// How long `GET /v1/dags/{dag}` spends fetching the run records of jobs that ran more than
/// once, to say whether their runs agree (`nondeterministic`), in ms.
const RUNS_COMPARE_MS: u64 = 2_000;
/// Those records fetched at once.
const RUNS_COMPARE_IN_FLIGHT_MAX: usize = 16;
const FETCH_RETRY_WINDOW_MS: u64 = 6_000;
/// Pause between those tries, in ms.
const FETCH_RETRY_PAUSE_MS: u64 = 250;

/// Runs `fetch` with the providers the loop names (`first` leading), asking again for providers
/// and retrying for up to [`FETCH_RETRY_WINDOW_MS`] while it fails.
pub(super) async fn with_providers<T, F, Fut>(s: &Shared, first: Option<[u8; 32]>, fetch: F) -> anyhow::Result<T>
where
    F: Fn(Vec<[u8; 32]>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(FETCH_RETRY_WINDOW_MS);
    loop {
        let providers =
            ask(s, |reply| Cmd::Providers { first, reply }).await.map_err(|e| anyhow::anyhow!(e.message))?;
        match fetch(providers).await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!("fetch for the API failed, retrying: {e:#}");
                tokio::time::sleep(std::time::Duration::from_millis(FETCH_RETRY_PAUSE_MS)).await;
            }
        }
    }
}

async fn ask<T>(shared: &Shared, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    shared.cmds.send(make(tx)).await.map_err(|_| internal("the node is stopping"))?;
    rx.await.map_err(|_| internal("the node is stopping"))
}

async fn health(State(s): State<Shr>) -> impl IntoResponse {
    axum::Json(Health { node: hex::encode(s.node), ok: true })
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

#[derive(Deserialize)]
struct SubmitQuery {
    /// The DAG file's name, for error locations.
    name: Option<String>,
    max_attempts: Option<u32>,
}

async fn submit(State(s): State<Shr>, Query(q): Query<SubmitQuery>, body: String) -> Result<Response, ApiError> {
    let name = q.name.unwrap_or_else(|| "dag.json".into());
    let max_attempts = q.max_attempts.unwrap_or(MAX_ATTEMPTS_DEFAULT);
    if !(1..=MAX_ATTEMPTS_MAX).contains(&max_attempts) {
        return Err(bad(format!("max_attempts is 1 to {MAX_ATTEMPTS_MAX}")));
    }
    let pinned = pin::pin_dag(&s.store, &s.runner.transfers, &name, &body).await.map_err(|e| bad(format!("{e:#}")))?;
    let jobs: Vec<String> = pinned.dag.jobs.iter().map(|j| j.id.clone()).collect();
    let hash = pinned.hash;
    // Answered once other nodes hold the DAG's blobs: refused (503) when none could in time.
    let ack = ask(&s, |reply| Cmd::Submit { hash, dag: pinned.dag, max_attempts, reply })
        .await?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let holders: Vec<String> = ack.holders.iter().map(hex::encode).collect();
    let depends_on_this_node = holders.is_empty();
    Ok((StatusCode::CREATED, axum::Json(Submitted { dag: hash, depends_on_this_node, holders, jobs })).into_response())
}

async fn list_dags(State(s): State<Shr>) -> Result<Response, ApiError> {
    let status = ask(&s, |reply| Cmd::Status { dag: None, reply }).await?;
    let dags = status.dags.iter().map(|(hash, d)| d.summary(*hash)).collect();
    Ok(axum::Json(DagList { dags, node: status.node }).into_response())
}

/// One DAG as the ledger shows it, or, once compacted out of it, as its summary says.
pub(super) async fn dag_view(s: &Shared, hash: Hash) -> Result<super::views::DagView, ApiError> {
    let mut status = ask(s, |reply| Cmd::Status { dag: Some(hash), reply }).await?;
    if let Some(view) = status.dags.remove(&hash) {
        return Ok(view);
    }
    if let Some(summary) = s.store.compacted_summary(hash).map_err(|e| internal(e.to_string()))? {
        let bytes = s.store.get_bytes(summary).await.map_err(|e| internal(e.to_string()))?;
        if let Some(summary) = bytes.and_then(|b| shoal_mesh::ledger::DagSummary::from_cbor(&b).ok()) {
            return Ok(super::views::DagView::of_summary(&summary));
        }
    }
    Err(not_found(format!("this node's ledger has no DAG {hash}; submit it, or wait for gossip")))
}

async fn dag_status(State(s): State<Shr>, Path(dag): Path<String>) -> Result<Response, ApiError> {
    let hash = parse_hash(&dag)?;
    let mut view = dag_view(&s, hash).await?;
    // A job finished more than once: compare what the runs produced. Their records are fetched
    // at once, for at most RUNS_COMPARE_MS (one at a time, a DAG with many reruns after a
    // partition took a minute: each record of a runner gone waited for every provider); a job
    // whose runs' records did not all come in time is left unjudged.
    let runs: Vec<(Hash, Option<[u8; 32]>)> = view
        .jobs
        .values()
        .filter(|j| j.runs.len() > 1)
        .flat_map(|j| j.runs.iter())
        .map(|r| (r.record, hex::decode(&r.node).ok().and_then(|b| <[u8; 32]>::try_from(b).ok())))
        .collect();
    let mut records = BTreeMap::new();
    if !runs.is_empty() {
        let fetches = futures::stream::iter(runs.into_iter().map(|(record, runner)| {
            let s = s.clone();
            async move {
                let providers = ask(&s, |reply| Cmd::Providers { first: runner, reply }).await.ok()?;
                let rec = exec::fetch_record(&s.store, &s.blobs, record, &providers).await.ok()?;
                Some((record, rec.outputs.iter().map(|(k, d)| (k.clone(), d.hash)).collect::<Vec<_>>()))
            }
        }))
        .buffer_unordered(RUNS_COMPARE_IN_FLIGHT_MAX)
        .filter_map(std::future::ready);
        let deadline = tokio::time::sleep(std::time::Duration::from_millis(RUNS_COMPARE_MS));
        let mut fetches = std::pin::pin!(fetches.take_until(deadline));
        while let Some((record, outputs)) = fetches.next().await {
            records.insert(record, outputs);
        }
    }
    for jv in view.jobs.values_mut().filter(|j| j.runs.len() > 1) {
        let outputs: BTreeSet<&Vec<(String, Hash)>> = jv.runs.iter().filter_map(|r| records.get(&r.record)).collect();
        let all_known = jv.runs.iter().all(|r| records.contains_key(&r.record));
        if all_known || outputs.len() > 1 {
            jv.nondeterministic = Some(outputs.len() > 1);
        }
    }
    let node = hex::encode(s.node);
    let uploads = crate::data::upload::list(&s.store)
        .map_err(|e| internal(format!("{e:#}")))?
        .into_iter()
        .filter(|u| u.dag == Some(hash))
        .collect();
    Ok(axum::Json(DagStatus { dag: hash, jobs: view.jobs, known: view.known, node, group: view.group, uploads })
        .into_response())
}

/// Every fact about each job of a DAG, in clock order: what the ledger says happened to it
/// (the simulator's runs are compared with real nodes' by it).
async fn dag_facts(State(s): State<Shr>, Path(dag): Path<String>) -> Result<Response, ApiError> {
    let hash = parse_hash(&dag)?;
    let jobs = ask(&s, |reply| Cmd::Facts { dag: hash, reply })
        .await?
        .ok_or_else(|| not_found(format!("this node's ledger has no DAG {hash}; submit it, or wait for gossip")))?;
    Ok(axum::Json(DagFacts { dag: hash, jobs, node: hex::encode(s.node) }).into_response())
}

async fn cancel(State(s): State<Shr>, Path(dag): Path<String>, _body: axum::body::Bytes) -> Result<Response, ApiError> {
    let hash = parse_hash(&dag)?;
    if ask(&s, |reply| Cmd::Cancel { dag: hash, reply }).await? {
        Ok(axum::Json(Cancelled { cancelled: true, dag: hash }).into_response())
    } else {
        Err(not_found(format!("this node's ledger has no DAG {hash}")))
    }
}

async fn metrics(State(s): State<Shr>) -> Result<Response, ApiError> {
    Ok(axum::Json(ask(&s, |reply| Cmd::Metrics { reply }).await?).into_response())
}

/// Test-only: refuse (or accept again) the given peers at the swarm, to make partitions.
async fn test_block(State(s): State<Shr>, axum::Json(b): axum::Json<BlockRequest>) -> Result<Response, ApiError> {
    let peers = b
        .peers
        .iter()
        .map(|p| p.parse().map_err(|_| bad(format!("`{p}` is not a peer id"))))
        .collect::<Result<Vec<libp2p::PeerId>, _>>()?;
    ask(&s, |reply| Cmd::Block { peers, block: b.block, reply }).await?;
    Ok(axum::Json(Done { ok: true }).into_response())
}

async fn peers(State(s): State<Shr>) -> Result<Response, ApiError> {
    let peers = ask(&s, |reply| Cmd::Peers { reply }).await?;
    Ok(axum::Json(peers).into_response())
}

/// A run record (JSON), fetched from the peers that may hold it when this node lacks it.
async fn record(State(s): State<Shr>, Path(record): Path<String>) -> Result<Response, ApiError> {
    let hash = parse_hash(&record)?;
    let sh = &s;
    let rec = with_providers(&s, None, |p| async move { exec::fetch_record(&sh.store, &sh.blobs, hash, &p).await })
        .await
        .map_err(|e| not_found(format!("{e:#}")))?;
    Ok(axum::Json(rec).into_response())
}

/// An output of a job of a DAG, from wherever the mesh holds it: a file's bytes, or a tree as a
/// tar archive.
async fn job_output(
    State(s): State<Shr>,
    Path((dag, job, output)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&dag)?;
    let view = dag_view(&s, hash).await?;
    let jv = view.jobs.get(&job).ok_or_else(|| not_found(format!("DAG {hash} has no job `{job}`")))?;
    let record = jv.record.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("job `{job}` is {}, not done; `shoal watch` shows its progress", jv.state),
        )
    })?;
    let runner = jv.node.as_deref().and_then(|n| hex::decode(n).ok()).and_then(|b| <[u8; 32]>::try_from(b).ok());
    let sh = &s;
    let lost = |e: anyhow::Error| {
        let (s, job) = (s.clone(), job.clone());
        async move {
            let output = Unfetchable { dag: hash, job: job.clone(), record, runner };
            let Ok(reported) = ask(&s, |reply| Cmd::Lost { output, reply }).await else {
                return internal(format!("{e:#}"));
            };
            if reported {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no node holds the outputs of job `{job}` any more ({e:#}); it is being run again: \
                         retry once `shoal status` shows it done"
                    ),
                )
            } else {
                internal(format!("{e:#}"))
            }
        }
    };
    let rec =
        match with_providers(&s, runner, |p| async move { exec::fetch_record(&sh.store, &sh.blobs, record, &p).await })
            .await
        {
            Ok(rec) => rec,
            Err(e) => return Err(lost(e).await),
        };
    let digest = match output.as_str() {
        "stdout" if !rec.outputs.contains_key("stdout") => rec.stdout.clone(),
        "stderr" if !rec.outputs.contains_key("stderr") => rec.stderr.clone(),
        _ => rec.outputs.get(&output).cloned().ok_or_else(|| {
            let names: Vec<&str> = rec.outputs.keys().map(String::as_str).collect();
            not_found(format!("job `{job}` has no output `{output}`; it has {}", names.join(", ")))
        })?,
    };
    let d = &digest;
    if let Err(e) = with_providers(&s, runner, |p| async move { exec::fetch_digest(sh, d, &p).await }).await {
        return Err(lost(e).await);
    }
    let hash_header = digest.hash.to_string();
    match digest.kind {
        DigestKind::File => {
            let bytes = read_repaired(&s, digest.hash, runner).await?;
            Ok((
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    ("x-shoal-hash".parse().unwrap(), hash_header),
                ],
                bytes,
            )
                .into_response())
        }
        DigestKind::Tree => {
            let tmp = tempfile::Builder::new()
                .prefix("out-")
                .tempdir_in(s.store.tmp_root().map_err(internal)?)
                .map_err(internal)?;
            let mut dir = tmp.path().join("tree");
            if let Err(shoal_blobs::StoreError::Corrupt { hash, .. }) =
                s.store.materialize_read_only(digest.hash, &dir).await
            {
                // A file of the tree was corrupted here (the read took it out of use): fetch the
                // tree's missing parts again and materialize it anew.
                tracing::warn!(%hash, tree = %digest.hash, "an output's copy here is corrupted: fetching it again");
                let (blobs, tree) = (&s.blobs, digest.hash);
                with_providers(&s, runner, |p| async move {
                    blobs.fetch_tree(tree, &p).await.map(|_| ()).map_err(anyhow::Error::from)
                })
                .await
                .map_err(|e| internal(format!("{e:#}")))?;
                dir = tmp.path().join("tree-fetched");
            }
            if !dir.exists() {
                s.store.materialize_read_only(digest.hash, &dir).await.map_err(internal)?;
            }
            let tar = tokio::task::spawn_blocking(move || {
                let mut b = tar::Builder::new(Vec::new());
                b.follow_symlinks(false);
                b.append_dir_all(".", &dir)?;
                let out = b.into_inner();
                drop(tmp);
                out
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
            Ok((
                [
                    (header::CONTENT_TYPE, "application/x-tar".to_string()),
                    ("x-shoal-hash".parse().unwrap(), hash_header),
                ],
                tar,
            )
                .into_response())
        }
    }
}

async fn blob(State(s): State<Shr>, Path(hash): Path<String>) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    if !s.store.has(hash).await.map_err(internal)? {
        let blobs = &s.blobs;
        with_providers(
            &s,
            None,
            |p| async move { blobs.fetch(hash, &p).await.map(|_| ()).map_err(anyhow::Error::from) },
        )
        .await
        .map_err(|e| not_found(format!("{e:#}")))?;
    }
    let bytes = read_repaired(&s, hash, None).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// A blob's bytes from this store. When the read finds the copy here corrupted (which takes it
/// out of use), the blob is fetched again from the peers (`first` first) and read once more: the
/// first reader after a flipped byte got a 500 where a peer held the blob whole.
async fn read_repaired(s: &Shared, hash: Hash, first: Option<[u8; 32]>) -> Result<bytes::Bytes, ApiError> {
    match s.store.need_bytes(hash).await {
        Err(shoal_blobs::StoreError::Corrupt { .. }) => {
            tracing::warn!(%hash, "a blob's copy here is corrupted: fetching it again from the peers");
            let blobs = &s.blobs;
            with_providers(s, first, |p| async move {
                blobs.fetch(hash, &p).await.map(|_| ()).map_err(anyhow::Error::from)
            })
            .await
            .map_err(|e| internal(format!("blob {hash} is corrupted here and no peer could send it: {e:#}")))?;
            s.store.need_bytes(hash).await.map_err(internal)
        }
        other => other.map_err(internal),
    }
}

/// Stores the request body as a blob, streaming it to disk first.
async fn upload(State(s): State<Shr>, headers: axum::http::HeaderMap, body: Body) -> Result<Response, ApiError> {
    let max = s.upload_bytes_max;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "an upload is at most {max} bytes (the node's --upload-size-max); copy larger files to the node and \
                 `shoal blob put` them there"
            ),
        )
    };
    let no_room = |e: shoal_blobs::StoreError| ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string());
    let tmp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(s.store.tmp_root().map_err(internal)?)
        .map_err(internal)?;
    // The size announced is checked before a byte is written; a body without one, every
    // `UPLOAD_ROOM_CHECK_BYTES` as it comes.
    let announced =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced {
        if len > max {
            return Err(too_large());
        }
        s.store.check_room(std::path::Path::new("the upload"), len).map_err(no_room)?;
    }
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(internal)?);
    let mut stream = body.into_data_stream();
    let (mut total, mut checked) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad(format!("reading the upload: {e}")))?;
        total += chunk.len() as u64;
        if total > max {
            return Err(too_large());
        }
        if announced.is_none() && total - checked >= UPLOAD_ROOM_CHECK_BYTES {
            s.store.check_room(std::path::Path::new("the upload"), UPLOAD_ROOM_CHECK_BYTES).map_err(no_room)?;
            checked = total;
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    drop(file);
    let (hash, size) = s.store.put_file(tmp.path()).await.map_err(internal)?;
    s.store.flush().await.map_err(internal)?;
    Ok((StatusCode::CREATED, axum::Json(StoredBlob { hash, size })).into_response())
}

/// Ledger changes as server-sent events (`shoal watch`).
async fn events(State(s): State<Shr>) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.events.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|item| async move {
        match item {
            Ok(ev) => Some(Ok(SseEvent::default().event(ev.kind.as_str()).json_data(&ev).unwrap_or_default())),
            Err(_) => Some(Ok(SseEvent::default().event("lagged").data("some events were missed"))),
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{JobStatus, Metrics, PeerView, Peers};
    use crate::daemon::testing::{api, ask_with, metrics};
    use crate::daemon::views::{DagView, StatusView};

    fn job_view(state: JobStatus) -> crate::api::JobView {
        crate::api::JobView {
            state,
            node: None,
            record: None,
            failures: vec![],
            runs: vec![],
            nondeterministic: None,
            cached_from: None,
            reason: None,
        }
    }

    fn view(node: &str, dags: Vec<(Hash, Vec<JobStatus>)>) -> StatusView {
        let dags = dags
            .into_iter()
            .map(|(hash, states)| {
                let jobs = states.into_iter().enumerate().map(|(i, s)| (format!("j{i}"), job_view(s))).collect();
                (hash, DagView { jobs, known: true, group: None })
            })
            .collect();
        StatusView { node: node.to_string(), dags }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_names_the_node() {
        let api = api().await;
        let health = ask_with(&api, |c| c.get_json::<Health>("/v1/health")).await.unwrap().unwrap();
        assert_eq!(health, Health { node: api.node.clone(), ok: true });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dags_list_counts_each_dags_jobs_per_state() {
        let mut api = api().await;
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        let asked = ask_with(&api, |c| c.get_json::<DagList>("/v1/dags"));
        let Some(Cmd::Status { dag: None, reply }) = api.cmds.recv().await else { panic!("not a status of all DAGs") };
        use JobStatus::*;
        reply.send(view(&api.node, vec![(a, vec![Done, Done, Open]), (b, vec![Unschedulable])])).unwrap();
        let list = asked.await.unwrap().unwrap();
        assert_eq!(list.node, api.node);
        let counts: Vec<_> = list.dags.into_iter().map(|d| (d.dag, d.jobs, d.states.into_iter().collect())).collect();
        // In the order of the DAGs' hashes.
        let mut want = vec![(a, 3, vec![(Done, 2), (Open, 1)]), (b, 1, vec![(Unschedulable, 1)])];
        want.sort_by_key(|w| w.0);
        assert_eq!(counts, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dags_status_is_the_loops_view_of_it_and_a_dag_it_lacks_is_not_found() {
        let mut api = api().await;
        let dag = Hash::of(b"d");
        let path = format!("/v1/dags/{dag}");
        let asked = ask_with(&api, move |c| c.get_json::<DagStatus>(&path));
        let Some(Cmd::Status { dag: Some(d), reply }) = api.cmds.recv().await else { panic!("not a status") };
        assert_eq!(d, dag);
        reply.send(view(&api.node, vec![(dag, vec![JobStatus::Claimed])])).unwrap();
        let status = asked.await.unwrap().unwrap();
        assert_eq!((status.dag, status.known, status.node), (dag, true, api.node.clone()));
        assert_eq!(status.jobs["j0"].state, JobStatus::Claimed);

        let path = format!("/v1/dags/{dag}");
        let asked = ask_with(&api, move |c| c.get_json::<DagStatus>(&path));
        let Some(Cmd::Status { reply, .. }) = api.cmds.recv().await else { panic!("not a status") };
        reply.send(view(&api.node, vec![])).unwrap();
        let err = asked.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("HTTP 404") && err.contains(&format!("this node's ledger has no DAG {dag}")), "{err}");

        let asked = ask_with(&api, |c| c.get_json::<DagStatus>("/v1/dags/not-a-hash"));
        let err = asked.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("HTTP 400"), "{err}");
        assert!(api.cmds.try_recv().is_err(), "a malformed hash reached the loop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_answers_whether_the_ledger_had_the_dag() {
        let mut api = api().await;
        let dag = Hash::of(b"d");
        for known in [true, false] {
            let path = format!("/v1/dags/{dag}/cancel");
            let asked = ask_with(&api, move |c| c.post::<Cancelled>(&path, "application/json", b""));
            let Some(Cmd::Cancel { dag: d, reply }) = api.cmds.recv().await else { panic!("not a cancel") };
            assert_eq!(d, dag);
            reply.send(known).unwrap();
            match asked.await.unwrap() {
                Ok(c) => assert!(known && c == Cancelled { cancelled: true, dag }),
                Err(e) => assert!(!known && e.to_string().contains("HTTP 404"), "{e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submit_with_attempts_out_of_range_is_refused_before_the_loop_hears_of_it() {
        let mut api = api().await;
        for n in [0, MAX_ATTEMPTS_MAX + 1] {
            let path = format!("/v1/dags?max_attempts={n}");
            let asked = ask_with(&api, move |c| c.post::<Submitted>(&path, "application/json", b"{}"));
            let err = asked.await.unwrap().unwrap_err().to_string();
            assert!(err.contains("HTTP 400") && err.contains("max_attempts is 1 to 100"), "{err}");
        }
        assert!(api.cmds.try_recv().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_is_stored_under_its_hash() {
        let api = api().await;
        let bytes = b"hello, mesh".to_vec();
        let sent = bytes.clone();
        let stored = ask_with(&api, move |c| c.post::<StoredBlob>("/v1/blobs", "application/octet-stream", &sent))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored, StoredBlob { hash: Hash::of(&bytes), size: bytes.len() as u64 });
        assert_eq!(api.shared.store.need_bytes(stored.hash).await.unwrap().as_ref(), bytes.as_slice());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peers_and_metrics_are_the_loops_answers() {
        let mut api = api().await;
        let me = PeerView {
            node: api.node.clone(),
            peer_id: "12D3".into(),
            hostname: "h".into(),
            me: true,
            connected: true,
            version: "0.1.0".into(),
            caps: None,
            http: Some(api.url.clone()),
            running: 0,
            free_cores: 1,
            facts: 3,
            last_seen_ms_ago: 0,
            via: None,
            relay: None,
            hole_punched: false,
        };
        let asked = ask_with(&api, |c| c.get_json::<Peers>("/v1/peers"));
        let Some(Cmd::Peers { reply }) = api.cmds.recv().await else { panic!("not peers") };
        let body =
            Peers { peers: vec![me], refused: vec![], clock: Default::default(), nat: None, quarantined: vec![] };
        reply.send(body.clone()).unwrap();
        assert_eq!(asked.await.unwrap().unwrap(), body);

        let metrics = Metrics { node: api.node.clone(), ..metrics(9) };
        let asked = ask_with(&api, |c| c.get_json::<Metrics>("/v1/metrics"));
        let Some(Cmd::Metrics { reply }) = api.cmds.recv().await else { panic!("not metrics") };
        reply.send(metrics.clone()).unwrap();
        assert_eq!(asked.await.unwrap().unwrap(), metrics);
    }
}
