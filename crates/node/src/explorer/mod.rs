//! The Program Explorer: Compiler Explorer for any container, served by every `shoal node`.
//!
//! A person edits input files in the page, picks an image of the catalogue and fills in its
//! options; the page posts one multipart request (a JSON `request` part, then one `file` part per
//! input and an optional `stdin` part). Each part is streamed to a temporary file and into the
//! store, never held whole in memory; the options are checked and rendered into argv; the job
//! becomes a one-job DAG run by the same pipeline as `shoal run` (`Runner::prepare` + `run::run_one`
//! on the node's runner, whose cores mesh jobs share), so an identical request is answered from
//! the action cache at once.
//! The answer is a view of the signed run record; `/r/<record hash>` reloads it, inputs and
//! options included (they ride in the job's environment as `SHOAL_EXPLORER`, so they are part of
//! the record and of the action key), on any node: one that lacks the record fetches it and its
//! blobs from its peers.
//!
//! # Layout
//! - this file: the routes and the run pipeline.
//! - `catalogue`: the TOML catalogue, option checking
//!   and argv rendering.
//! - `request` (public, so the fuzz targets reach it): reading the multipart body
//!   into the store; this file's [`Gate`] adds a public explorer's limits.
//! - `explore`: `shoal explore` (finds or starts a local node, prints and opens the URL).
//! - `page/`: the page, plain HTML, CSS and JS embedded in the binary (no build step).

pub mod catalogue;
mod explore;
pub(crate) mod public;
pub mod request;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Extension, Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shoal_blobs::tree::EntryKind;
use shoal_dag::{Dag, Digest, DigestKind, Exit, Hash, ImageRef, InputRef, Job, OutputSpec, Requirements, ResolvedJob};
use tokio::sync::Semaphore;

use self::public::{Limited, Limits};
use crate::api_error::{ApiError, bad, internal, parse_hash};
use crate::daemon::auth::{Caller, ClientKey};
use crate::daemon::{Cmd, Shared};
use crate::human::percent_encode;
use crate::run;
use catalogue::{Catalogue, Entry};
use request::{
    Gate, INPUT_FILE_BYTES_MAX, INPUT_FILES_MAX, REQUEST_BYTES_MAX, REQUEST_HEADER_SLACK_BYTES, Received,
    STDIN_BYTES_MAX, receive,
};

pub use explore::{ExploreArgs, explore, running_node};
pub use public::PublicOptions;

/// Stdout, stderr, inputs and text outputs up to this size come inline in a run view, in bytes.
const INLINE_TEXT_BYTES_MAX: u64 = 64 << 10;
/// Output files listed in a run view (the rest are counted).
const OUTPUT_FILES_LISTED_MAX: usize = 64;
/// Runs that miss the cache and run at once; more wait (cache hits never wait).
const RUNS_IN_FLIGHT_MAX: usize = 2;
/// Blobs up to this size are served from memory; larger ones are streamed from a file, in bytes.
const SERVE_FROM_MEMORY_BYTES_MAX: u64 = 8 << 20;
/// Size of a run's `/scratch`, in bytes.
const SCRATCH_BYTES: u64 = 256 << 20;
/// The environment variable that carries the explorer request (image id, options, main file) in
/// the job, and so in its run record: what a permalink reloads.
const REQUEST_ENV: &str = "SHOAL_EXPLORER";
/// The job id of explorer runs.
const JOB_ID: &str = "explore";
/// The output that collects everything a run writes under `/output`.
const OUTPUT_NAME: &str = "files";
const OUTPUT_DIR: &str = "/output";
/// Where a run starts: writable, executable, empty.
const WORKDIR: &str = "/scratch";

const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/app.js");
const PAGE_CSS: &str = include_str!("page/app.css");

type Shr = Arc<Shared>;

/// What the explorer's routes share besides the node's [`Shared`].
struct Explorer {
    /// Loaded on first use (it may come from the store's home).
    catalogue: OnceLock<Result<Arc<Loaded>, String>>,
    /// Bounds the runs that miss the cache.
    runs: Semaphore,
    /// What anonymous callers of a public explorer may do; the retention of every run.
    limits: Limits,
    /// The repository every run is committed to (`--explorer-provenance`), and the lock that
    /// makes its commits one at a time.
    provenance: Option<(PathBuf, std::sync::Mutex<()>)>,
}

struct Loaded {
    catalogue: Catalogue,
    /// Where it came from: `builtin` or a path.
    source: String,
}

impl Explorer {
    fn catalogue(&self, s: &Shared) -> Result<Arc<Loaded>, ApiError> {
        self.catalogue
            .get_or_init(|| {
                let loaded = load_catalogue(s.store.home());
                match &loaded {
                    Ok(l) => {
                        tracing::info!(source = %l.source, images = l.catalogue.entries.len(), "explorer catalogue")
                    }
                    Err(e) => tracing::warn!("the explorer's catalogue does not load: {e}"),
                }
                loaded
            })
            .clone()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the catalogue does not load: {e}")))
    }
}

/// `$SHOAL_EXPLORER_CATALOGUE`, else `$SHOAL_HOME/explorer/catalogue.toml`, else the built-in one.
fn load_catalogue(home: &std::path::Path) -> Result<Arc<Loaded>, String> {
    let path = std::env::var_os("SHOAL_EXPLORER_CATALOGUE")
        .map(PathBuf::from)
        .or_else(|| Some(home.join("explorer/catalogue.toml")).filter(|p| p.is_file()));
    let (source, text) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            (p.display().to_string(), text)
        }
        None => ("builtin".to_string(), catalogue::BUILTIN.to_string()),
    };
    let catalogue = Catalogue::parse(&source, &text)?;
    Ok(Arc::new(Loaded { catalogue, source }))
}

/// The explorer's routes, merged into the node's router (which adds the state).
pub(crate) fn router(public: PublicOptions) -> Router<Shr> {
    let provenance = public.provenance.clone().map(|p| (p, std::sync::Mutex::new(())));
    let explorer = Arc::new(Explorer {
        catalogue: OnceLock::new(),
        runs: Semaphore::new(RUNS_IN_FLIGHT_MAX),
        limits: Limits::new(public),
        provenance,
    });
    Router::new()
        .route("/", get(page))
        .route("/explore", get(page))
        .route("/r/{record}", get(page))
        .route("/c/{commit}", get(open_commit))
        .route("/explorer/app.js", get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }))
        .route("/explorer/app.css", get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }))
        .route("/v1/explorer/catalogue", get(catalogue_json))
        .route(
            "/v1/explorer/runs",
            post(run_request).layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX as usize + REQUEST_HEADER_SLACK_BYTES)),
        )
        .route("/v1/explorer/runs/{record}", get(run_view))
        .route("/v1/explorer/files/{hash}/{name}", get(file))
        .layer(Extension(explorer))
}

fn limited(l: Limited) -> ApiError {
    match l {
        Limited::Wait { retry_after_s, why } => {
            ApiError { retry_after_s: Some(retry_after_s), ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, why) }
        }
        Limited::Disk(why) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, why),
    }
}

// ---------------------------------------------------------------------------------------------
// The page

async fn page() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE_HTML).into_response();
    let h = r.headers_mut();
    // Outputs are shown as <img> or text only; nothing but our own script runs on the page.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Commits a run that was not answered from the cache to the node's provenance repository, if
/// it keeps one. A failed commit is logged: the run stands.
async fn commit_run(s: &Shared, ex: &Arc<Explorer>, record: Hash) {
    if ex.provenance.is_none() {
        return;
    }
    let signed = match s.store.get_record(record).await {
        Ok(Some(signed)) => signed,
        _ => return,
    };
    let ex = ex.clone();
    let done = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let Some((repo, lock)) = &ex.provenance else { return Ok(()) };
        let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
        let facts = crate::provenance::node::facts_of_record(signed, crate::provenance::node::permalink(record))?;
        let repo = crate::provenance::Repo::open(repo)?;
        crate::provenance::commit_run(&repo, &facts, false).map(drop)
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%record, "could not commit the explorer run to the provenance repository: {e:#}"),
        Err(e) => tracing::warn!(%record, "the provenance commit's task failed: {e}"),
    }
}

/// `/c/<commit>`: a commit of the node's provenance repository, opened. Its records enter the
/// store (they are verified); a commit of one job opens that run's permalink, one of more lists
/// them.
async fn open_commit(
    State(s): State<Shr>,
    Extension(ex): Extension<Arc<Explorer>>,
    Path(commit): Path<String>,
) -> Result<Response, ApiError> {
    let Some((repo, _)) = &ex.provenance else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this node keeps no provenance repository: start it with `--explorer-provenance REPO`",
        ));
    };
    if commit.is_empty() || commit.len() > 64 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("`{commit}` is not a commit id (hex)")));
    }
    let repo = repo.clone();
    let rev = commit.clone();
    let committed = tokio::task::spawn_blocking(move || {
        crate::provenance::Repo::open_existing(&repo)?.read_run(Some(&rev))
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("{e:#}")))?;
    let mut links = Vec::new();
    for job in &committed.run.jobs {
        let (Some(hash), Some(signed)) = (job.record, committed.signed.get(&job.job)) else { continue };
        if s.store.get_record(hash).await.map_err(internal)?.is_none() {
            s.store.put_record(signed, shoal_blobs::Durability::Now).await.map_err(internal)?;
        }
        links.push((job.job.clone(), hash));
    }
    if let [(_, hash)] = links.as_slice() {
        return Ok(axum::response::Redirect::to(&crate::provenance::node::permalink(*hash)).into_response());
    }
    let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let items: String = links
        .iter()
        .map(|(job, hash)| format!("<li><a href=\"{}\">{}</a></li>", crate::provenance::node::permalink(*hash), esc(job)))
        .collect();
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>commit {}</title><link rel=stylesheet href=/explorer/app.css>\
         <h1>commit {}</h1><p>{}</p><ul>{items}</ul>",
        &committed.id[..12],
        &committed.id[..12],
        esc(&committed.run.source)
    );
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn catalogue_json(State(s): State<Shr>, Extension(ex): Extension<Arc<Explorer>>) -> Result<Response, ApiError> {
    let loaded = ex.catalogue(&s)?;
    let tags: std::collections::BTreeSet<String> =
        s.store.images().map_err(internal)?.into_iter().map(|i| i.tag).collect();
    let entries: Vec<Value> = loaded
        .catalogue
        .entries
        .iter()
        .map(|e| {
            let mut v = json!(e);
            v["available"] = json!(tags.contains(&shoal_blobs::image::normalize_tag(&e.image)));
            v
        })
        .collect();
    let backend = s.run.backend.as_str();
    Ok(Json(json!({
        "source": loaded.source,
        "types": loaded.catalogue.types,
        "entries": entries,
        "backend": backend,
        "public": ex.limits.opts.enabled,
        "keep_days": ex.limits.opts.keep_days,
        "limits": {
            "files_max": INPUT_FILES_MAX,
            "file_bytes_max": INPUT_FILE_BYTES_MAX,
            "stdin_bytes_max": STDIN_BYTES_MAX,
            "request_bytes_max": REQUEST_BYTES_MAX,
        },
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Running

/// What the job carries in [`REQUEST_ENV`]: enough to fill the page again.
#[derive(Serialize, Deserialize)]
struct Carried {
    entry: String,
    options: BTreeMap<String, Value>,
    main: Option<String>,
}

async fn run_request(
    State(s): State<Shr>,
    Extension(ex): Extension<Arc<Explorer>>,
    caller: Option<Extension<Caller>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let loaded = ex.catalogue(&s)?;
    let multipart = multipart.map_err(|e| {
        bad(format!(
            "{e}; send multipart/form-data: a `request` part (JSON: entry, options, main), then `file` parts and \
             an optional `stdin` part"
        ))
    })?;
    // An anonymous caller of a public explorer is counted; a token holder or the local user is not.
    let anonymous = match caller.as_deref() {
        Some(Caller::Anonymous { client }) => Some(*client),
        _ => None,
    };
    let tmp = tempfile::Builder::new()
        .prefix("explore-")
        .tempdir_in(s.store.tmp_root().map_err(internal)?)
        .map_err(internal)?;
    let mut gate = Public { quota: anonymous.map(|c| (&ex.limits, c)), home: s.store.home(), admitted: None };
    let received = receive(&s.store, &loaded.catalogue, multipart, tmp.path(), &mut gate).await?;
    drop(tmp);
    let (record, cached) = execute(&s, &ex, received).await?;
    if !cached {
        commit_run(&s, &ex, record).await;
    }
    // An anonymous run's place among those in progress is held until it is answered.
    drop(gate);
    keep(&s, &ex.limits, record).await;
    let mut view = run_view_of(&s, record).await?;
    view.cached = Some(cached);
    view.answer_ms = Some(started.elapsed().as_millis() as u64);
    Ok(Json(view).into_response())
}

/// A public explorer's limits on one anonymous caller (none for a token holder or the local
/// user), as the request reading asks for them.
struct Public<'a> {
    quota: Option<(&'a Limits, ClientKey)>,
    home: &'a std::path::Path,
    /// The run's place among those in progress, once admitted.
    admitted: Option<public::Admitted<'a>>,
}

impl Gate for Public<'_> {
    fn allow(&mut self, entry: &Entry) -> Result<(), ApiError> {
        if entry.network && self.quota.is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "`{}` runs with a network, which this node offers to token holders only; send a token \
                     (Authorization: Bearer) or choose another image",
                    entry.id
                ),
            ));
        }
        Ok(())
    }

    fn admit(&mut self) -> Result<(), ApiError> {
        if let Some((limits, client)) = self.quota {
            self.admitted = Some(limits.admit(client, self.home, Instant::now()).map_err(limited)?);
        }
        Ok(())
    }

    fn charge(&mut self, bytes: u64) -> Result<(), ApiError> {
        if let Some((limits, client)) = self.quota {
            limits.charge_upload(client, bytes, crate::clock::now_unix_ms() / 1000).map_err(limited)?;
        }
        Ok(())
    }
}

/// The one-job DAG of a request.
fn job_of(r: &Received) -> Result<Job, ApiError> {
    let files: Vec<String> = r.inputs.keys().cloned().collect();
    let rendered = r.entry.render(&r.options, r.main.as_deref(), &files);
    let mut env = rendered.env;
    let carried = Carried { entry: r.entry.id.clone(), options: r.options.clone(), main: r.main.clone() };
    env.insert(REQUEST_ENV.to_string(), serde_json::to_string(&carried).map_err(internal)?);
    Ok(Job {
        id: JOB_ID.to_string(),
        image: ImageRef::Tag(r.entry.image.clone()),
        command: rendered.command,
        env: env.into(),
        workdir: Some(WORKDIR.to_string()),
        user: None,
        stdin: r.stdin.as_ref().map(|d| InputRef::Blake3(d.hash)),
        inputs: r.inputs.iter().map(|(n, d)| (n.clone(), InputRef::Blake3(d.hash))).collect(),
        outputs: BTreeMap::from([(OUTPUT_NAME.to_string(), OutputSpec::Dir(OUTPUT_DIR.to_string()))]).into(),
        requirements: Requirements {
            cores: 1,
            memory_bytes: r.entry.memory_bytes,
            timeout_ms: r.entry.timeout_ms,
            output_bytes_max: r.entry.output_bytes_max,
            scratch_bytes: SCRATCH_BYTES,
            network: r.entry.network,
            ..Requirements::default()
        },
        uploads: Default::default(),
    })
}

/// Runs the request as `shoal run` would; returns its record and whether the cache answered.
async fn execute(s: &Shr, ex: &Explorer, r: Received) -> Result<(Hash, bool), ApiError> {
    let job = job_of(&r)?;
    let (image_id, _) = s.store.resolve_image(&job.image).await.map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the image `{}` of `{}` is not in this node's store ({e}); build it with scripts/build-images.sh \
                 (scripts/setup.sh does)",
                r.entry.image, r.entry.id
            ),
        )
    })?;
    // A request the cache answers does not wait behind running ones.
    let key = ResolvedJob::from_job(&job, image_id, r.inputs.clone(), r.stdin.clone()).action_key();
    let hit = s.store.action_get(&key).await.map_err(internal)?.is_some();
    let _permit = if hit { None } else { Some(ex.runs.acquire().await.map_err(internal)?) };
    let dag = Dag { version: 1, jobs: vec![job] };
    let ctx = s.runner.prepare(dag, PathBuf::new(), &s.run, run::RunSource::default());
    let span = tracing::info_span!("job", id = JOB_ID, entry = %r.entry.id);
    let report = tracing::Instrument::instrument(run::run_one(&ctx, 0, &BTreeMap::new()), span).await;
    match report.record {
        Some(record) => Ok((record, report.cached)),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the run could not start: {}", report.error.unwrap_or_else(|| "no reason given".into())),
        )),
    }
}

/// Pins a run's record and everything its view shows for `keep_days` from now (a pin only
/// grows), so its permalink keeps working at least that long. A failure is logged: the run
/// stands, it is only not promised to last.
async fn keep(s: &Shared, limits: &Limits, record: Hash) {
    let until = crate::clock::now_unix_ms().saturating_add(u64::from(limits.opts.keep_days) * 86_400_000);
    let pin_all = async {
        let signed = s.store.get_record(record).await?.ok_or_else(|| anyhow::anyhow!("the record is not stored"))?;
        let rec = signed.verify().map_err(|e| anyhow::anyhow!("{e}"))?;
        s.store.pin_until(record, until)?;
        let digests = [&rec.stdout, &rec.stderr].into_iter().chain(rec.outputs.values()).chain(rec.job.inputs.values());
        for d in digests.chain(rec.job.stdin.iter()) {
            s.store.pin_until(d.hash, until)?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = pin_all.await {
        tracing::warn!(%record, "cannot pin an explorer run; its permalink may not last: {e:#}");
    }
}

// ---------------------------------------------------------------------------------------------
// Run views and permalinks

/// A stored file as the page shows it.
#[derive(Serialize)]
struct FileView {
    /// Its path (under /output for outputs), or its input name.
    name: String,
    size: u64,
    hash: Hash,
    media_type: String,
    url: String,
    /// The content, when it is UTF-8 text of at most [`INLINE_TEXT_BYTES_MAX`].
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// What the page shows of a run.
#[derive(Serialize)]
struct RunView {
    record: Hash,
    permalink: String,
    record_url: String,
    /// Whether the action cache answered this request (absent when viewed by permalink).
    #[serde(skip_serializing_if = "Option::is_none")]
    cached: Option<bool>,
    /// Server time from the request's first byte to the answer, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    answer_ms: Option<u64>,
    /// The record and its files are kept at least until then (Unix ms; `u64::MAX`: for good), so
    /// the permalink works until then; absent when this node made no such promise.
    kept_until_unix_ms: Option<u64>,
    entry: Option<String>,
    options: BTreeMap<String, Value>,
    main: Option<String>,
    ok: bool,
    exit: Exit,
    /// Why it failed, in words (timeouts and out-of-memory name their limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    wall_ms: u64,
    peak_memory_bytes: u64,
    backend: String,
    accelerator: Option<String>,
    stdout: FileView,
    stderr: FileView,
    files: Vec<FileView>,
    /// Output files not listed (past [`OUTPUT_FILES_LISTED_MAX`]).
    files_not_listed: usize,
    inputs: Vec<FileView>,
    stdin: Option<FileView>,
    /// The signed record's content, as `shoal show` prints it.
    run_record: shoal_dag::RunRecord,
}

async fn run_view(
    State(s): State<Shr>,
    caller: Option<Extension<Caller>>,
    Path(record): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&record)?;
    let view = run_view_of(&s, hash).await?;
    // Strangers of a public explorer see explorer runs, not the records of the mesh's DAGs.
    if matches!(caller.as_deref(), Some(Caller::Anonymous { .. })) && view.run_record.job_id != JOB_ID {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no explorer run has the record {hash}")));
    }
    Ok(Json(view).into_response())
}

async fn run_view_of(s: &Shared, hash: Hash) -> Result<RunView, ApiError> {
    let signed = match s.store.get_record(hash).await.map_err(internal)? {
        Some(signed) => signed,
        None => fetch_from_mesh(s, hash).await?,
    };
    let rec = signed.verify().map_err(|e| internal(format!("run record {hash} does not verify: {e}")))?;
    let carried: Option<Carried> = rec.job.env.get(REQUEST_ENV).and_then(|t| serde_json::from_str(t).ok());
    let stdout = file_view(s, "stdout", &rec.stdout).await?;
    let stderr = file_view(s, "stderr", &rec.stderr).await?;
    let mut files = Vec::new();
    let mut files_not_listed = 0;
    if let Some(d) = rec.outputs.get(OUTPUT_NAME).filter(|d| d.kind == DigestKind::Tree) {
        let mut stack = vec![(String::new(), d.hash)];
        while let Some((prefix, tree)) = stack.pop() {
            let tree = s.store.get_tree(tree).await.map_err(internal)?;
            for e in tree.entries.iter().rev() {
                let path = format!("{prefix}{}", e.name);
                match &e.kind {
                    EntryKind::File { hash, size } if files.len() < OUTPUT_FILES_LISTED_MAX => {
                        let d = Digest { hash: *hash, kind: DigestKind::File, size: *size };
                        files.push(file_view(s, &path, &d).await?);
                    }
                    EntryKind::File { .. } => files_not_listed += 1,
                    EntryKind::Dir { hash } => stack.push((format!("{path}/"), *hash)),
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let mut inputs = Vec::new();
    for (name, d) in &rec.job.inputs {
        inputs.push(file_view(s, name, d).await?);
    }
    let stdin = match &rec.job.stdin {
        Some(d) => Some(file_view(s, "stdin", d).await?),
        None => None,
    };
    let ok = rec.exit.success();
    let message = (!ok).then(|| run::describe_exit(&rec.exit, run::LimitsOf::Image(&rec.requirements)));
    let hex = hash.to_hex();
    Ok(RunView {
        record: hash,
        permalink: format!("/r/{hex}"),
        record_url: format!("/v1/records/{hash}"),
        cached: None,
        answer_ms: None,
        kept_until_unix_ms: s.store.pinned_until(hash).map_err(internal)?,
        entry: carried.as_ref().map(|c| c.entry.clone()),
        options: carried.as_ref().map(|c| c.options.clone()).unwrap_or_default(),
        main: carried.and_then(|c| c.main),
        ok,
        exit: rec.exit.clone(),
        message,
        wall_ms: rec.timing.wall_ms,
        peak_memory_bytes: rec.timing.peak_memory_bytes,
        backend: rec.machine.backend.clone(),
        accelerator: rec.machine.accelerator.clone(),
        stdout,
        stderr,
        files,
        files_not_listed,
        inputs,
        stdin,
        run_record: rec,
    })
}

/// A run record this node lacks, fetched from the mesh's other nodes with everything its view
/// shows (stdout, stderr, outputs, inputs, stdin): a permalink works on every node of the mesh.
async fn fetch_from_mesh(s: &Shared, hash: Hash) -> Result<shoal_dag::SignedRecord, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    s.cmds.send(Cmd::Providers { first: None, reply }).await.map_err(|_| internal("the node is stopping"))?;
    let providers = answer.await.map_err(|_| internal("the node is stopping"))?;
    let missing =
        |why: String| ApiError::new(StatusCode::NOT_FOUND, format!("no run record {hash} is on this node{why}"));
    if providers.is_empty() {
        return Err(missing(" (and it has no peers to ask)".into()));
    }
    s.blobs.fetch(hash, &providers).await.map_err(|e| missing(format!(", nor on its peers: {e}")))?;
    let bytes = s.store.need_bytes(hash).await.map_err(internal)?;
    let signed =
        shoal_dag::SignedRecord::from_cbor(&bytes).map_err(|e| bad(format!("{hash} is not a run record: {e}")))?;
    let rec = signed.verify().map_err(|e| internal(format!("run record {hash} does not verify: {e}")))?;
    s.store.put_record(&signed, shoal_blobs::Durability::Now).await.map_err(internal)?;
    let digests = [&rec.stdout, &rec.stderr].into_iter().chain(rec.outputs.values()).chain(rec.job.inputs.values());
    for d in digests.chain(rec.job.stdin.iter()) {
        if d.kind == DigestKind::Tree || !s.store.has(d.hash).await.map_err(internal)? {
            s.blobs.fetch_digest(d, &providers).await.map_err(|e| internal(format!("fetching {}: {e}", d.hash)))?;
        }
    }
    Ok(signed)
}

/// The media type of a file by its name: images, a few documents, else by content.
fn media_type_by_name(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
    Some(match ext.as_str() {
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "json" => "application/json",
        _ => return None,
    })
}

async fn file_view(s: &Shared, name: &str, d: &Digest) -> Result<FileView, ApiError> {
    let by_name = media_type_by_name(name);
    let mut text = None;
    let is_image = by_name.is_some_and(|t| t.starts_with("image/"));
    if d.size <= INLINE_TEXT_BYTES_MAX
        && !is_image
        && let Some(b) = s.store.get_bytes(d.hash).await.map_err(internal)?
        && !b.contains(&0)
    {
        text = String::from_utf8(b.to_vec()).ok();
    }
    let media_type = match (by_name, &text) {
        (Some(t), _) => t.to_string(),
        (None, Some(_)) => "text/plain".to_string(),
        (None, None) if d.size == 0 => "text/plain".to_string(),
        (None, None) => "application/octet-stream".to_string(),
    };
    let base = name.rsplit('/').next().unwrap_or(name);
    Ok(FileView {
        name: name.to_string(),
        size: d.size,
        hash: d.hash,
        url: format!("/v1/explorer/files/{}/{}", d.hash.to_hex(), percent_encode(base)),
        media_type,
        text,
    })
}

#[derive(Deserialize)]
struct FileQuery {
    /// Serve as an attachment (a download) rather than inline.
    download: Option<u8>,
}

/// A stored blob by hash, typed by the name in its URL. Content-addressed, so cached for good;
/// served under a sandboxing CSP, so an SVG opened directly runs no script on this origin.
async fn file(
    State(s): State<Shr>,
    caller: Option<Extension<Caller>>,
    Path((hash, name)): Path<(String, String)>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    // Strangers of a public explorer get what an explorer run shows (kept for a while by `keep`:
    // the only pins with an end), not every blob of the mesh's DAGs whose hash they learn.
    if matches!(caller.as_deref(), Some(Caller::Anonymous { .. }))
        && !matches!(s.store.pinned_until(hash).map_err(internal)?, Some(end) if end != u64::MAX)
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no explorer run shows the file {hash}")));
    }
    let size = s
        .store
        .size(hash)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no blob {hash} is stored on this node")))?;
    let media_type = match media_type_by_name(&name) {
        Some(t) => t,
        None if size <= INLINE_TEXT_BYTES_MAX => {
            let b = s.store.need_bytes(hash).await.map_err(internal)?;
            if !b.contains(&0) && std::str::from_utf8(&b).is_ok() {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            }
        }
        None => "application/octet-stream",
    };
    let body = if size <= SERVE_FROM_MEMORY_BYTES_MAX {
        Body::from(s.store.need_bytes(hash).await.map_err(internal)?)
    } else {
        let tmp = tempfile::Builder::new()
            .prefix("serve-")
            .tempfile_in(s.store.tmp_root().map_err(internal)?)
            .map_err(internal)?;
        s.store.export(hash, tmp.path()).await.map_err(internal)?;
        let file = tokio::fs::File::open(tmp.path()).await.map_err(internal)?;
        Body::from_stream(file_stream(file, tmp))
    };
    let disposition = if q.download == Some(1) { "attachment" } else { "inline" };
    let safe_name: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{safe_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// A file's bytes as a stream of chunks; the temporary file goes when the stream ends.
fn file_stream(
    file: tokio::fs::File,
    tmp: tempfile::NamedTempFile,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold((file, Some(tmp)), |(mut file, tmp)| async move {
        tmp.as_ref()?;
        let mut buf = vec![0u8; 256 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), (file, tmp)))
            }
            Err(e) => Some((Err(e), (file, None))),
        }
    })
}
