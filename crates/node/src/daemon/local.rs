//! The routes a CLI uses when this node holds its `SHOAL_HOME` (`/v1/local/...`). sled lets one
//! process open a store, so while a node runs, `shoal run`, `get`, `log`, `show`, `image`,
//! `blob` and `gc` on its home come here and the node does what the command would have done
//! with the store, through the same code. The client sends content, never a path: a file's
//! bytes, a directory or an OCI layout as a tar stream, a DAG with its `file:` inputs uploaded
//! first; each upload is streamed to a temporary file in the store's `tmp/`, bounded by
//! `--local-upload-bytes-max` and the file system's free space, and stored (content-addressed)
//! only once whole, so a failed upload leaves nothing behind. A run is a local run of this node's
//! store (not offered to the mesh), its progress streamed back as JSON lines.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use shoal_blobs::{Durability, Store};
use shoal_dag::{Digest, DigestKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::api::{Collected, Done, FileInput, PullRequest, RunEnd, RunRequest, StoredBlob, StoredImage};
use crate::api_error::{ApiError, bad, not_found, parse_hash, unprocessable};

use super::{Cmd, Shared};
use crate::run::{self, BackendChoice, RunEvent, RunOptions, RunSource};

type Shr = Arc<Shared>;

/// Largest run request (the DAG's text and the digests of its `file:` inputs), in bytes.
const RUN_REQUEST_BYTES_MAX: usize = 32 << 20;
/// Default for `--local-upload-bytes-max`: the largest file, directory (as a tar stream) or image
/// archive one upload to this node's store may carry, in bytes.
pub const LOCAL_UPLOAD_BYTES_MAX_DEFAULT: u64 = 64 << 30;
/// Free space an upload leaves on the store's file system at least, in bytes: past it the upload
/// is refused (507) rather than filling the disk the node's jobs write to.
const UPLOAD_FREE_BYTES_MIN: u64 = 256 << 20;
/// How often (in bytes received) an upload checks the file system's free space.
const UPLOAD_FREE_CHECK_BYTES: u64 = 64 << 20;
/// Size of the chunks a download is read and sent in, in bytes.
const DOWNLOAD_CHUNK_BYTES: usize = 1 << 20;

/// Local runs in progress (`shoal gc` waits for none).
static LOCAL_RUNS: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn router() -> Router<Shr> {
    Router::new()
        .route("/v1/local/runs", post(run_dag).layer(DefaultBodyLimit::max(RUN_REQUEST_BYTES_MAX)))
        .route("/v1/local/records/{what}", get(record))
        .route("/v1/local/blobs", get(list_blobs).post(put_blob).layer(DefaultBodyLimit::disable()))
        .route("/v1/local/blobs/{hash}", get(get_blob))
        .route("/v1/local/digests/{hash}", get(digest))
        .route("/v1/local/trees", post(put_tree).layer(DefaultBodyLimit::disable()))
        .route("/v1/local/images", get(images))
        .route("/v1/local/images/import", post(import_image).layer(DefaultBodyLimit::disable()))
        .route("/v1/local/images/pull", post(pull_image))
        .route("/v1/local/gc", post(gc))
        .route("/v1/local/uploads", get(uploads))
        .route("/v1/local/uploads/retry", post(retry_uploads))
        .route("/v1/local/ready", post(ready))
}

/// Streams a request body into a new temporary file in the store's `tmp/`, refusing it past
/// `bytes_max` or when the file system would keep less than [`UPLOAD_FREE_BYTES_MIN`] free. The
/// file is removed when the returned value is dropped.
async fn receive(store: &Store, body: Body, bytes_max: u64) -> Result<tempfile::NamedTempFile, ApiError> {
    let tmp_dir = store.tmp_root().map_err(unprocessable)?;
    let tmp = tempfile::Builder::new().prefix("upload-").tempfile_in(&tmp_dir).map_err(unprocessable)?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(unprocessable)?);
    let mut stream = body.into_data_stream();
    let (mut total, mut checked) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad(format!("reading the upload: {e}")))?;
        total += chunk.len() as u64;
        if total > bytes_max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "an upload to this node's store is at most {bytes_max} bytes (`shoal node \
                     --local-upload-bytes-max`); stop the node to use the store directly, or raise the limit"
                ),
            ));
        }
        if total - checked >= UPLOAD_FREE_CHECK_BYTES || checked == 0 {
            checked = total;
            if let Some(free_bytes) = shoal_blobs::fs_free_bytes(&tmp_dir)
                && free_bytes < UPLOAD_FREE_BYTES_MIN + chunk.len() as u64
            {
                return Err(ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "the file system holding {} has {free_bytes} bytes free, and uploads leave at least \
                         {UPLOAD_FREE_BYTES_MIN}: free space there (`shoal gc`) or move the store (SHOAL_HOME)",
                        store.home().display()
                    ),
                ));
            }
        }
        file.write_all(&chunk).await.map_err(unprocessable)?;
    }
    file.flush().await.map_err(unprocessable)?;
    Ok(tmp)
}

/// A message about the temporary file `tmp` made to name what the client sent instead.
fn rename_in(message: String, tmp: &std::path::Path, name: Option<&str>) -> String {
    match name {
        Some(name) => message.replace(&tmp.display().to_string(), name),
        None => message,
    }
}

#[derive(Deserialize)]
struct NameQuery {
    /// How the client names what it sends (its path), for messages.
    name: Option<String>,
}

/// `shoal blob put FILE`, and a `file:` input of `shoal run`: the body is the file.
async fn put_blob(State(s): State<Shr>, Query(q): Query<NameQuery>, body: Body) -> Result<Response, ApiError> {
    let tmp = receive(&s.store, body, s.local_upload_bytes_max).await?;
    let (hash, size) = s
        .store
        .put_file(tmp.path())
        .await
        .map_err(|e| unprocessable(rename_in(e.to_string(), tmp.path(), q.name.as_deref())))?;
    s.store.flush().await.map_err(unprocessable)?;
    Ok((StatusCode::CREATED, axum::Json(Digest { hash, kind: DigestKind::File, size })).into_response())
}

/// `shoal blob put DIR`, and a directory as a `file:` input: the body is a tar of the directory.
async fn put_tree(State(s): State<Shr>, Query(q): Query<NameQuery>, body: Body) -> Result<Response, ApiError> {
    let tmp = receive(&s.store, body, s.local_upload_bytes_max).await?;
    let digest = s
        .store
        .put_tree_from_tar(tmp.path())
        .await
        .map_err(|e| unprocessable(rename_in(e.to_string(), tmp.path(), q.name.as_deref())))?;
    s.store.flush().await.map_err(unprocessable)?;
    Ok((StatusCode::CREATED, axum::Json(digest)).into_response())
}

#[derive(Deserialize)]
struct ImportQuery {
    tag: Option<String>,
    name: Option<String>,
    /// `linux/arm64`: the index entry to import (default: the node's platform).
    platform: Option<String>,
}

fn platform_of(p: Option<&str>) -> Result<Option<shoal_blobs::image::ImagePlatform>, ApiError> {
    p.map(|p| p.parse().map_err(|e: String| unprocessable(format!("platform: {e}")))).transpose()
}

/// `shoal image import` and `shoal image build`: the body is an OCI archive (a layout the client
/// sent as a tar) or a `docker save` archive.
async fn import_image(State(s): State<Shr>, Query(q): Query<ImportQuery>, body: Body) -> Result<Response, ApiError> {
    let platform = platform_of(q.platform.as_deref())?;
    let tmp = receive(&s.store, body, s.local_upload_bytes_max).await?;
    let id = s
        .store
        .import_image_for(tmp.path(), q.tag.as_deref(), platform.as_ref(), None)
        .await
        .map_err(|e| unprocessable(rename_in(e.to_string(), tmp.path(), q.name.as_deref())))?;
    s.store.flush().await.map_err(unprocessable)?;
    Ok((StatusCode::CREATED, axum::Json(StoredImage { image: id })).into_response())
}

/// `shoal image pull`: this node pulls from the registry.
async fn pull_image(State(s): State<Shr>, axum::Json(b): axum::Json<PullRequest>) -> Result<Response, ApiError> {
    let opts =
        shoal_blobs::image::PullOptions { insecure_http: b.insecure, platform: platform_of(b.platform.as_deref())? };
    let id = s.store.pull(&b.reference, opts).await.map_err(unprocessable)?;
    if let Some(tag) = &b.tag {
        s.store.tag_image(tag, id).map_err(unprocessable)?;
    }
    s.store.flush().await.map_err(unprocessable)?;
    Ok((StatusCode::CREATED, axum::Json(StoredImage { image: id })).into_response())
}

/// `shoal image ls`.
async fn images(State(s): State<Shr>) -> Result<Response, ApiError> {
    Ok(axum::Json(s.store.images().map_err(unprocessable)?).into_response())
}

/// `shoal upload ls`.
async fn uploads(State(s): State<Shr>) -> Result<Response, ApiError> {
    Ok(axum::Json(crate::data::upload::list(&s.store).map_err(unprocessable)?).into_response())
}

#[derive(serde::Deserialize)]
struct RetryUploads {
    job: Option<String>,
}

/// `shoal upload retry [JOB]`.
async fn retry_uploads(State(s): State<Shr>, axum::Json(req): axum::Json<RetryUploads>) -> Result<Response, ApiError> {
    let records = crate::data::upload::retry_failed(&s.runner.transfers, &s.store, req.job.as_deref())
        .await
        .map_err(unprocessable)?;
    Ok(axum::Json(records).into_response())
}

/// `shoal blob ls`.
async fn list_blobs(State(s): State<Shr>) -> Result<Response, ApiError> {
    let list = s.store.list().await.map_err(unprocessable)?;
    let rows: Vec<StoredBlob> = list.into_iter().map(|(hash, size)| StoredBlob { hash, size }).collect();
    Ok(axum::Json(rows).into_response())
}

/// `shoal show`, and the record `get` and `log` read: a job's latest run record, or one by hash,
/// verified.
async fn record(State(s): State<Shr>, Path(what): Path<String>) -> Result<Response, ApiError> {
    let record = run::find_record(&s.store, &what).await.map_err(|e| not_found(format!("{e:#}")))?;
    Ok(axum::Json(record).into_response())
}

/// `shoal blob get`: the digest of a stored blob (is it a tree, its size).
async fn digest(State(s): State<Shr>, Path(hash): Path<String>) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let digest = run::digest_of_stored(&s.store, hash).await.map_err(|e| not_found(format!("{e:#}")))?;
    Ok(axum::Json(digest).into_response())
}

/// A stored blob: a file's bytes, or a tree as a tar (header `x-shoal-kind` says which), streamed.
async fn get_blob(State(s): State<Shr>, Path(hash): Path<String>) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    if !s.store.has(hash).await.map_err(unprocessable)? {
        return Err(not_found(format!("blob {hash} is not in this store")));
    }
    let tmp = tempfile::Builder::new()
        .prefix("download-")
        .tempdir_in(s.store.tmp_root().map_err(unprocessable)?)
        .map_err(unprocessable)?;
    let (kind, file) = if s.store.is_tree(hash) {
        let dir = tmp.path().join("tree");
        s.store.materialize_read_only(hash, &dir).await.map_err(unprocessable)?;
        let tar_path = tmp.path().join("tree.tar");
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let mut b = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&tar_path)?));
            b.follow_symlinks(false);
            b.append_dir_all(".", &dir)?;
            b.into_inner()?.into_inner().map_err(|e| e.into_error())?;
            std::fs::File::open(&tar_path)
        })
        .await
        .map_err(unprocessable)?
        .map_err(unprocessable)?;
        ("tree", file)
    } else {
        let path = tmp.path().join("blob");
        s.store.export(hash, &path).await.map_err(unprocessable)?;
        ("file", std::fs::File::open(&path).map_err(unprocessable)?)
    };
    // The open file stays readable once its directory is gone.
    drop(tmp);
    let len = file.metadata().map_err(unprocessable)?.len();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::HeaderName::from_static("x-shoal-kind"), kind.to_string()),
        ],
        file_body(file),
    )
        .into_response())
}

/// A response body read from `file` in chunks.
fn file_body(file: std::fs::File) -> Body {
    let file = Some(tokio::fs::File::from_std(file));
    Body::from_stream(futures::stream::unfold(file, |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; DOWNLOAD_CHUNK_BYTES];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    }))
}

/// Asked before an upload: a node that refuses the caller (a token missing or too weak) says so
/// here, where a refusal mid-body would reach the client as a broken connection.
/// Reads its (empty) body: hyper closes a keep-alive connection whose request body is unread when
/// the reply goes out, and the client's next request on it (the upload) would find it closed.
async fn ready(_body: axum::body::Bytes) -> Response {
    axum::Json(Done { ok: true }).into_response()
}

/// `shoal gc`, refused while jobs run here: it removes what nothing references yet, such as a
/// running job's outputs before its record is written.
async fn gc(State(s): State<Shr>, _body: axum::body::Bytes) -> Result<Response, ApiError> {
    let (tx, rx) = oneshot::channel();
    s.cmds.send(Cmd::Metrics { reply: tx }).await.map_err(|_| unprocessable("the node is stopping"))?;
    let metrics = rx.await.map_err(|_| unprocessable("the node is stopping"))?;
    let mesh_jobs = metrics.running;
    let local_runs = LOCAL_RUNS.load(Ordering::SeqCst);
    if mesh_jobs > 0 || local_runs > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the node holding this store is running {mesh_jobs} mesh jobs and {local_runs} local runs; `shoal \
                 gc` would remove their outputs before their records are written: run it again when they are done"
            ),
        ));
    }
    let r = s.store.gc().await.map_err(unprocessable)?;
    Ok(axum::Json(Collected::from(r)).into_response())
}

/// Stops the run when the client goes away (its response is dropped): jobs not started never
/// start; running ones end as the backend ends them.
struct RunGuard(tokio::task::AbortHandle);

/// Counts a run in [`LOCAL_RUNS`] for as long as it lives, however it ends.
struct Counted;

impl Counted {
    fn new() -> Counted {
        LOCAL_RUNS.fetch_add(1, Ordering::SeqCst);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LOCAL_RUNS.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `shoal run`: runs the DAG as `shoal run` would on this store (on the node's runner, sharing
/// its cores with the mesh's jobs and the explorer's), streaming JSON lines: the run's
/// events, then `{"event": "end", "ok", "stdout", "stderr"}` (what the command prints) or
/// `{"event": "error", "error"}`.
async fn run_dag(State(s): State<Shr>, axum::Json(req): axum::Json<RunRequest>) -> Result<Response, ApiError> {
    let dag = shoal_dag::parse_dag(&req.name, &req.dag).map_err(|d| bad(d.to_string()))?;
    let backend = match req.backend.as_str() {
        "microvm" => BackendChoice::Microvm,
        "namespace" => BackendChoice::Namespace,
        "microvm-only" => BackendChoice::MicrovmOnly,
        other => return Err(bad(format!("backend `{other}`: write microvm, namespace or microvm-only"))),
    };
    if req.warm_vms > shoal_vm::microvm::WARM_PER_KIND_MAX {
        return Err(bad(format!("warm_vms is 0 to {}", shoal_vm::microvm::WARM_PER_KIND_MAX)));
    }
    let mut files = BTreeMap::new();
    for (path, input) in req.files {
        let value = match input {
            FileInput::Sent(d) => {
                let stored = s.store.has(d.hash).await.map_err(unprocessable)?;
                if !stored || s.store.is_tree(d.hash) != (d.kind == DigestKind::Tree) {
                    return Err(bad(format!(
                        "`file:{path}`: {} is not stored here as a {:?}; upload it first (POST /v1/local/blobs or /v1/local/trees)",
                        d.hash, d.kind
                    )));
                }
                Ok(d)
            }
            FileInput::Unreadable { error } => Err(error),
        };
        files.insert(path, value);
    }
    let opts = RunOptions {
        backend,
        // No terminal here: the client draws the progress from the events.
        json: true,
        use_cache: !req.no_cache,
        cores: req.cores,
        warm_vms: req.warm_vms,
        records: Durability::Soon,
        dag_bytes_max: s.dag_bytes_max,
        test_flip_outputs: false,
        // The node's runner was built with the node's own.
        transfers: Default::default(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
    let (store, runner) = (s.store.clone(), s.runner.clone());
    let json_out = req.json;
    let counted = Counted::new();
    // A local run takes results from the mesh's cache too (it offers the mesh no job).
    let mesh_cache: Arc<dyn run::RemoteCache> = Arc::new(super::exec::MeshCache(s.clone()));
    let task = tokio::spawn(async move {
        let _counted = counted;
        let forward = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = events_rx.recv().await {
                    let _ = tx.send(serde_json::to_value(&ev).unwrap_or_default());
                }
            })
        };
        let source =
            RunSource { files: Some(files), events: Some(events_tx), remote_cache: Some(mesh_cache), mesh_dag: None };
        let result = run::run_dag(&runner, dag, PathBuf::new(), &opts, source).await;
        let _ = forward.await;
        // As a local run ends: its records on disk.
        let flushed = store.flush().await;
        let end = result.and_then(|reports| {
            flushed?;
            run::render(&reports, json_out)
        });
        let _ = tx.send(match end {
            Ok(out) => serde_json::to_value(RunEnd::end(out.ok, out.stdout, out.stderr)).unwrap_or_default(),
            Err(e) => serde_json::to_value(RunEnd::error(format!("{e:#}"))).unwrap_or_default(),
        });
    });
    let guard = RunGuard(task.abort_handle());
    let lines = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let v = rx.recv().await?;
        Some((Ok::<_, Infallible>(Bytes::from(format!("{v}\n"))), (rx, guard)))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

#[cfg(test)]
mod tests {
    use shoal_dag::Hash;

    use super::*;
    use crate::daemon::testing::{api, ask_with, metrics};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_file_is_listed_with_its_size() {
        let api = api().await;
        let ready = ask_with(&api, |c| c.post::<Done>("/v1/local/ready", "application/json", b"{}")).await.unwrap();
        assert_eq!(ready.unwrap(), Done { ok: true });
        let sent =
            ask_with(&api, |c| c.post::<Digest>("/v1/local/blobs?name=a.txt", "application/octet-stream", b"abc"))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(sent, Digest { hash: Hash::of(b"abc"), kind: DigestKind::File, size: 3 });
        let list = ask_with(&api, |c| c.get_json::<Vec<StoredBlob>>("/v1/local/blobs")).await.unwrap().unwrap();
        assert!(list.contains(&StoredBlob { hash: Hash::of(b"abc"), size: 3 }), "{list:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gc_waits_for_the_mesh_jobs_running_here() {
        let mut api = api().await;
        let asked = ask_with(&api, |c| c.post::<Collected>("/v1/local/gc", "application/json", b"{}"));
        let Some(Cmd::Metrics { reply }) = api.cmds.recv().await else { panic!("not metrics") };
        reply.send(metrics(2)).unwrap();
        let err = asked.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("HTTP 409") && err.contains("running 2 mesh jobs and 0 local runs"), "{err}");

        let asked = ask_with(&api, |c| c.post::<Collected>("/v1/local/gc", "application/json", b"{}"));
        let Some(Cmd::Metrics { reply }) = api.cmds.recv().await else { panic!("not metrics") };
        reply.send(metrics(0)).unwrap();
        let collected = asked.await.unwrap().unwrap();
        assert_eq!(collected.blobs_removed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_is_refused_before_it_starts_when_its_request_is_wrong() {
        let api = api().await;
        let dag = r#"{"version": 1, "jobs": [{"id": "a", "image": "alpine:3", "command": ["true"], "inputs": {"x": "file:x.txt"}}]}"#;
        let request = |backend: &str, files: BTreeMap<String, FileInput>| RunRequest {
            backend: backend.into(),
            cores: None,
            dag: dag.into(),
            files,
            json: true,
            name: "d.json".into(),
            no_cache: false,
            warm_vms: 0,
        };
        let refused = |req: RunRequest| {
            let body = serde_json::to_vec(&req).unwrap();
            ask_with(&api, move |c| c.post::<serde_json::Value>("/v1/local/runs", "application/json", &body))
        };
        let err = refused(request("qemu", BTreeMap::new())).await.unwrap().unwrap_err().to_string();
        assert!(
            err.contains("HTTP 400") && err.contains("backend `qemu`: write microvm, namespace or microvm-only"),
            "{err}"
        );
        // A `file:` input the client says it sent, which this store does not hold.
        let missing = Digest { hash: Hash::of(b"never sent"), kind: DigestKind::File, size: 10 };
        let files = BTreeMap::from([("x.txt".to_string(), FileInput::Sent(missing))]);
        let err = refused(request("namespace", files)).await.unwrap().unwrap_err().to_string();
        assert!(err.contains("HTTP 400") && err.contains("`file:x.txt`") && err.contains("upload it first"), "{err}");
    }
}
