//! The CLI on a home a running node holds. sled lets one process open a store; while `shoal node`
//! runs with a `SHOAL_HOME`, the commands that use that store (`run`, `get`, `log`, `show`,
//! `image`, `blob`, `gc`) go through the node's `/v1/local/...` routes (`daemon/local.rs`) and
//! print what they print when they open the store themselves. What they send is content: a file's
//! bytes, a directory or an OCI layout as a tar stream made here, a DAG with its `file:` inputs
//! uploaded first; the node never opens a path of ours.
//!
//! Which node: the one whose `node.json` is in the home and that answers `/v1/health` as the node
//! that file names (`explorer::running_node`). A stale `node.json` (a node killed with -9) does not
//! answer, and the command opens the store as usual.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::human::percent_encode;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{Collected, Done, ErrorBody, FileInput, PullRequest, RunEnd, RunRequest, StoredBlob, StoredImage};
use shoal_blobs::StoreError;
use shoal_dag::{Digest, DigestKind, Hash, InputRef, RunRecord};

use crate::EXIT_JOB_FAILED;
use crate::run::RunEvent;

/// Chunks of a tar stream in flight between the thread writing it and the upload.
const TAR_CHUNKS_QUEUED_MAX: usize = 8;
/// Size of those chunks, in bytes.
const TAR_CHUNK_BYTES: usize = 1 << 20;
/// Longest reply of the node that is not a blob (a record, a list), in bytes.
const REPLY_BYTES_MAX: u64 = 256 << 20;
/// Longest blob read through the node, in bytes.
const BLOB_BYTES_MAX: u64 = 1 << 40;

/// A node that holds this CLI's home.
pub struct Held {
    agent: ureq::Agent,
    /// Its HTTP API, e.g. `http://127.0.0.1:7170`.
    pub url: String,
    /// `Authorization` for every request when `$SHOAL_TOKEN` is set (a node with `--http-auth`).
    /// Never logged or printed.
    authorization: Option<String>,
}

impl Held {
    /// The node running with the store at `home`, if one answers.
    pub fn find(home: &Path) -> Option<Held> {
        let url = crate::explorer::running_node(home)?;
        // No overall timeout: a run or an upload takes as long as it takes.
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build();
        let authorization = crate::tokens::client_secret(None).ok().flatten().map(|t| format!("Bearer {t}"));
        Some(Held { agent: ureq::Agent::new_with_config(config), url, authorization })
    }

    /// What to say where a command cannot go through the node.
    pub fn refuse(&self, home: &Path, what: &str) -> anyhow::Error {
        anyhow!("this store ({}) is held by the node at {}; {what}: stop it or use `--node`", home.display(), self.url)
    }

    fn reply(&self, path: &str, sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<ureq::Body> {
        let mut resp = sent.map_err(|e| {
            anyhow!(
                "cannot reach the node at {} that holds this store ({path}): {e}; if it stopped, run the command again",
                self.url
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp.into_body());
        }
        let body = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("HTTP {} from {}{path}: {body}", resp.status(), self.url));
        Err(NodeSaid(resp.status().as_u16(), msg).into())
    }

    fn get_request(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let request = self.agent.get(format!("{}{path}", self.url));
        match &self.authorization {
            Some(a) => request.header("authorization", a),
            None => request,
        }
    }

    fn post_request(&self, path: &str, content_type: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = self.agent.post(format!("{}{path}", self.url)).header("content-type", content_type);
        match &self.authorization {
            Some(a) => request.header("authorization", a),
            None => request,
        }
    }

    fn get(&self, path: &str) -> Result<ureq::Body> {
        self.reply(path, self.get_request(path).call())
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.get(path)?.with_config().limit(REPLY_BYTES_MAX).read_json()?)
    }

    fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let sent = self.post_request(path, "application/json").send(serde_json::to_vec(body)?);
        Ok(self.reply(path, sent)?.with_config().limit(REPLY_BYTES_MAX).read_json()?)
    }

    /// Streams `body` to `path` (bytes: a file, or a tar this process writes).
    fn upload<T: DeserializeOwned>(&self, path: &str, body: impl Read) -> Result<T> {
        // A node that refuses us says why here, not by cutting the upload.
        let _: Done = self.post_json("/v1/local/ready", &serde_json::Map::new())?;
        let mut body = body;
        let sent = self.post_request(path, "application/octet-stream").send(ureq::SendBody::from_reader(&mut body));
        Ok(self.reply(path, sent)?.with_config().limit(REPLY_BYTES_MAX).read_json()?)
    }

    /// Uploads the file at `path` as a blob.
    fn put_file(&self, path: &Path) -> Result<Digest> {
        let (file, len) = open_regular(path)?;
        self.upload(&format!("/v1/local/blobs?name={}", percent_encode(&path.display().to_string())), file.take(len))
    }

    /// Uploads the directory at `dir` as a tree, as a tar made here.
    fn put_tree(&self, dir: &Path) -> Result<Digest> {
        check_tree(dir)?;
        let name = percent_encode(&dir.display().to_string());
        self.upload(&format!("/v1/local/trees?name={name}"), TarStream::of_dir(dir))
    }

    /// A blob as the node streams it: (a tree?, the reader).
    fn blob(&self, hash: Hash) -> Result<Option<(bool, ureq::Body)>> {
        let path = format!("/v1/local/blobs/{hash}");
        let resp = self.get_request(&path).call();
        let tree = resp.as_ref().ok().and_then(|r| r.headers().get("x-shoal-kind")).is_some_and(|v| v == "tree");
        match self.reply(&path, resp) {
            Ok(body) => Ok(Some((tree, body))),
            Err(e) if e.downcast_ref::<NodeSaid>().is_some_and(|n| n.0 == 404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A run record by job id (its latest run) or hash, as `run::find_record` finds it.
    pub fn record(&self, what: &str) -> Result<RunRecord> {
        self.get_json(&format!("/v1/local/records/{}", percent_encode(what)))
    }

    /// A blob's bytes as stored (a tree's own blob, not its files as a tar): `shoal tree ls`.
    pub fn raw_blob(&self, hash: Hash) -> Result<Vec<u8>> {
        let path = format!("/v1/blobs/{hash}");
        let body = self.reply(&path, self.get_request(&path).call())?;
        Ok(body.into_with_config().limit(BLOB_BYTES_MAX).read_to_vec()?)
    }

    /// The bytes of a blob that must be stored (`shoal log`).
    pub fn read_blob(&self, hash: Hash) -> Result<Vec<u8>> {
        match self.blob(hash)? {
            Some((_, body)) => Ok(body.into_with_config().limit(BLOB_BYTES_MAX).read_to_vec()?),
            None => bail!("blob {hash} is not in this store; it may have been collected by `shoal gc`"),
        }
    }

    /// Writes a stored digest to `out` (a file, a new directory for a tree) or stdout, as
    /// `shoal get` and `shoal blob get` do with the store.
    pub fn write_digest(&self, digest: &Digest, out: Option<&Path>) -> Result<()> {
        if let (DigestKind::Tree, None) = (digest.kind, out) {
            bail!("{} is a directory tree; give a new directory to write it to with `-o DIR`", digest.hash)
        }
        let Some((tree, body)) = self.blob(digest.hash)? else {
            return Err(StoreError::NotFound { hash: digest.hash }.into());
        };
        let mut reader = body.into_with_config().limit(BLOB_BYTES_MAX).reader();
        match (tree, out) {
            (true, Some(dir)) => unpack_new_dir(&mut reader, dir)?,
            (true, None) => {
                bail!("{} is a directory tree; give a new directory to write it to with `-o DIR`", digest.hash)
            }
            (false, Some(path)) => {
                let mut f = std::fs::File::create(path).map_err(io_err("cannot create", path))?;
                std::io::copy(&mut reader, &mut f).with_context(|| format!("writing {}", path.display()))?;
            }
            (false, None) => {
                let mut stdout = std::io::stdout().lock();
                std::io::copy(&mut reader, &mut stdout)?;
                stdout.flush()?;
            }
        }
        Ok(())
    }

    /// `shoal blob get HASH`: the digest of a stored blob given by hash alone.
    pub fn digest_of_stored(&self, hash: Hash) -> Result<Digest> {
        self.get_json(&format!("/v1/local/digests/{hash}"))
    }

    /// `shoal blob put PATH`.
    pub fn blob_put(&self, path: &Path) -> Result<Digest> {
        let meta = std::fs::symlink_metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() { self.put_tree(path) } else { self.put_file(path) }
    }

    /// `shoal blob ls`.
    pub fn blob_ls(&self) -> Result<Vec<(Hash, u64)>> {
        let rows: Vec<StoredBlob> = self.get_json("/v1/local/blobs")?;
        Ok(rows.into_iter().map(|r| (r.hash, r.size)).collect())
    }

    /// `shoal image import PATH` (an OCI layout directory, sent as an OCI archive, or an archive).
    pub fn image_import(
        &self,
        path: &Path,
        tag: Option<&str>,
        platform: Option<&shoal_blobs::image::ImagePlatform>,
    ) -> Result<Hash> {
        let mut query = format!("?name={}", percent_encode(&path.display().to_string()));
        if let Some(tag) = tag {
            query.push_str(&format!("&tag={}", percent_encode(tag)));
        }
        if let Some(p) = platform {
            query.push_str(&format!("&platform={}", percent_encode(&p.to_string())));
        }
        let route = format!("/v1/local/images/import{query}");
        let meta = std::fs::metadata(path).map_err(|source| shoal_blobs::ImageError::Io {
            what: "cannot read",
            path: path.to_owned(),
            source,
        })?;
        let reply: StoredImage = if meta.is_dir() {
            self.upload(&route, TarStream::of_dir(path))?
        } else {
            let (file, len) = open_regular(path)?;
            self.upload(&route, file.take(len))?
        };
        Ok(reply.image)
    }

    /// `shoal image pull`.
    pub fn image_pull(
        &self,
        reference: &str,
        tag: Option<&str>,
        insecure: bool,
        platform: Option<&shoal_blobs::image::ImagePlatform>,
    ) -> Result<Hash> {
        let request = PullRequest {
            insecure,
            reference: reference.to_string(),
            tag: tag.map(str::to_string),
            platform: platform.map(|p| p.to_string()),
        };
        let reply: StoredImage = self.post_json("/v1/local/images/pull", &request)?;
        Ok(reply.image)
    }

    /// `shoal image ls`.
    pub fn images(&self) -> Result<Vec<shoal_blobs::ImageEntry>> {
        self.get_json("/v1/local/images")
    }

    /// `shoal gc`, by the node (refused while jobs run there).
    pub fn gc(&self) -> Result<shoal_blobs::GcReport> {
        let collected: Collected = self.post_json("/v1/local/gc", &serde_json::Map::new())?;
        Ok(collected.into())
    }

    /// `shoal upload ls`.
    pub fn uploads(&self) -> Result<Vec<crate::data::upload::UploadRecord>> {
        self.get_json("/v1/local/uploads")
    }

    /// `shoal upload retry [JOB]`, by the node (with its transfer limits and credentials).
    pub fn retry_uploads(&self, job: Option<&str>) -> Result<Vec<crate::data::upload::UploadRecord>> {
        self.post_json("/v1/local/uploads/retry", &serde_json::json!({ "job": job }))
    }

    /// `shoal run DAG`, run by the node as a local run of its store: the DAG's `file:` inputs are
    /// uploaded, the progress drawn from the node's events, and the same table or JSON printed.
    pub fn run(&self, path: &Path, opts: &HeldRun) -> Result<ExitCode> {
        let bytes = crate::run::read_dag_file(path, opts.dag_bytes_max)?;
        let name = path.display().to_string();
        let (dag, text) = match crate::provenance::parse_dag_or_run_file(&name, &bytes) {
            Ok(parsed) => {
                crate::output::print_warnings(&parsed.warnings);
                (parsed.dag, parsed.json_text)
            }
            Err(diagnostics) => {
                eprintln!("{diagnostics}");
                return Ok(ExitCode::from(crate::EXIT_ERROR));
            }
        };
        let dag_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut files: BTreeMap<String, FileInput> = BTreeMap::new();
        for job in &dag.jobs {
            for input in job.inputs.values().chain(job.stdin.iter()) {
                let InputRef::File(p) = input.root() else { continue };
                if files.contains_key(p) {
                    continue;
                }
                files.insert(p.clone(), self.send_input(&dag_dir.join(p))?);
            }
        }
        let request = RunRequest {
            backend: opts.backend.to_string(),
            cores: opts.cores,
            dag: text,
            files,
            json: opts.json,
            name,
            no_cache: opts.no_cache,
            warm_vms: opts.warm_vms,
        };
        let route = "/v1/local/runs";
        let sent = self.post_request(route, "application/json").send(serde_json::to_vec(&request)?);
        let body = self.reply(route, sent)?;
        let lines = std::io::BufReader::new(body.into_with_config().limit(u64::MAX).reader());
        let progress = Progress::new(opts.json);
        for line in std::io::BufRead::lines(lines) {
            let line = line.with_context(|| format!("the node at {} stopped answering during the run", self.url))?;
            let v: Value = serde_json::from_str(&line).with_context(|| format!("the node sent `{line}`"))?;
            match serde_json::from_value::<RunEnd>(v.clone()) {
                Ok(RunEnd::End { ok, stderr, stdout, .. }) => {
                    progress.finish();
                    print!("{stdout}");
                    eprint!("{stderr}");
                    std::io::stdout().flush()?;
                    return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_JOB_FAILED) });
                }
                Ok(RunEnd::Error { error, .. }) => {
                    progress.finish();
                    bail!("{error}");
                }
                // One of the run's steps (or a kind this client does not draw).
                Err(_) => {
                    if let Ok(ev) = serde_json::from_value::<RunEvent>(v) {
                        progress.on(ev);
                    }
                }
            }
        }
        bail!("the node at {} ended the run without a result; see its log", self.url)
    }

    /// Uploads one `file:` input: its digest, or why it could not be read (the job fails with
    /// that, as in a run that reads the file itself).
    fn send_input(&self, path: &Path) -> Result<FileInput> {
        let sent = match std::fs::metadata(path) {
            Err(e) => {
                return Ok(FileInput::Unreadable {
                    error: format!("cannot read the input file {}: {e}", path.display()),
                });
            }
            Ok(meta) if meta.is_dir() => self.put_tree(path),
            Ok(_) => self.put_file(path),
        };
        match sent {
            Ok(digest) => Ok(FileInput::Sent(digest)),
            // Unreachable node: the run cannot happen at all.
            Err(e) if e.downcast_ref::<NodeSaid>().is_none() && e.downcast_ref::<StoreError>().is_none() => Err(e),
            Err(e) => Ok(FileInput::Unreadable { error: format!("{e:#}") }),
        }
    }
}

/// The options of `shoal run` that go to the node.
pub struct HeldRun {
    /// `microvm` or `namespace`.
    pub backend: &'static str,
    pub json: bool,
    pub no_cache: bool,
    pub cores: Option<u32>,
    pub warm_vms: usize,
    /// Largest DAG file read, bytes.
    pub dag_bytes_max: usize,
}

/// An error reply of the node: its status and message (what the command would have said).
#[derive(Debug)]
struct NodeSaid(u16, String);

impl std::fmt::Display for NodeSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for NodeSaid {}

/// A host file error in the store's words.
fn io_err(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { what, path, source }
}

/// Opens a file to upload as the store opens one to store: regular files only (a FIFO or a
/// device would never end), read as long as it was when opened.
fn open_regular(path: &Path) -> Result<(std::fs::File, u64), StoreError> {
    let file = shoal_blobs::open_regular(path)?;
    let len = file.metadata().map_err(io_err("cannot stat", path))?.len();
    Ok((file, len))
}

/// Checks that the store could hold the directory as a tree (what `put_tree_from_dir` refuses,
/// refused here with its words, before a byte is sent).
fn check_tree(dir: &Path) -> Result<(), StoreError> {
    let md = std::fs::symlink_metadata(dir).map_err(io_err("cannot read", dir))?;
    if !md.is_dir() {
        return Err(StoreError::Io {
            what: "cannot store as a tree",
            path: dir.to_owned(),
            source: std::io::Error::other("not a directory"),
        });
    }
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io_err("cannot list", &d))? {
            let e = e.map_err(io_err("cannot list", &d))?;
            let path = e.path();
            if e.file_name().to_str().is_none() {
                return Err(StoreError::NonUtf8Name { path });
            }
            let ft = e.file_type().map_err(io_err("cannot read", &path))?;
            if ft.is_dir() {
                stack.push(path);
            } else if !ft.is_file() && !ft.is_symlink() {
                return Err(StoreError::Unsupported { path, kind: shoal_blobs::special_kind(ft) });
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io_err("cannot read the link", &path))?;
                if target.to_str().is_none() {
                    return Err(StoreError::NonUtf8Name { path });
                }
            }
        }
    }
    Ok(())
}

/// A tar archive of a directory, written by a thread as it is read (never whole on disk or in
/// memory). Entries are the directory's contents with their modes, owners and symlinks; a read
/// error of the thread is an error of the stream, so a cut archive is never taken for a whole one.
struct TarStream {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl TarStream {
    fn of_dir(dir: &Path) -> TarStream {
        let (tx, rx) = std::sync::mpsc::sync_channel(TAR_CHUNKS_QUEUED_MAX);
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            let writer = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(TAR_CHUNK_BYTES) };
            let mut b = tar::Builder::new(writer);
            b.follow_symlinks(false);
            let result = append_tree(&mut b, &dir, Path::new("")).and_then(|()| b.into_inner()?.flush());
            if let Err(e) = result {
                let _ = tx.send(Err(std::io::Error::other(format!("reading {}: {e}", dir.display()))));
            }
        });
        TarStream { chunks: rx, current: std::io::Cursor::new(Vec::new()) }
    }
}

/// Appends the contents of `dir` under `rel`, in name order.
fn append_tree(b: &mut tar::Builder<ChunkWriter>, dir: &Path, rel: &Path) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let (path, rel) = (dir.join(&name), rel.join(&name));
        b.append_path_with_name(&path, &rel)?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            append_tree(b, &path, &rel)?;
        }
    }
    Ok(())
}

impl Read for TarStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.current = std::io::Cursor::new(chunk),
                Ok(Err(e)) => return Err(e),
                // The writer is done.
                Err(_) => return Ok(0),
            }
        }
    }
}

struct ChunkWriter {
    tx: std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= TAR_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(TAR_CHUNK_BYTES));
            self.tx.send(Ok(chunk)).map_err(|_| std::io::Error::other("the upload stopped"))?;
        }
        Ok(())
    }
}

/// Unpacks a tree's tar into the new directory `dest`, as `Store::materialize` writes one: modes
/// kept (owners too when root), nothing left at `dest` on failure.
fn unpack_new_dir(reader: &mut impl Read, dest: &Path) -> Result<()> {
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(StoreError::DestinationExists { path: dest.to_owned() }.into());
    }
    std::fs::create_dir(dest).map_err(io_err("cannot create", dest))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(false);
    // SAFETY: geteuid has no preconditions and cannot fail.
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    if let Err(e) = archive.unpack(dest) {
        let _ = shoal_blobs::remove_tree_forcefully(dest);
        return Err(anyhow!("unpacking into {}: {e}", dest.display()));
    }
    Ok(())
}

/// The progress of a run through a node, drawn as `shoal run` draws its own.
struct Progress {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    running: std::cell::RefCell<BTreeMap<String, indicatif::ProgressBar>>,
}

impl Progress {
    fn new(hidden: bool) -> Progress {
        let multi = indicatif::MultiProgress::new();
        if hidden {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let overall = multi.add(indicatif::ProgressBar::new(0));
        overall.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} jobs {msg}")
                .expect("static template"),
        );
        overall.enable_steady_tick(Duration::from_millis(120));
        Progress { multi, overall, running: Default::default() }
    }

    fn on(&self, event: RunEvent) {
        match event {
            RunEvent::Jobs { count } => self.overall.set_length(count as u64),
            RunEvent::Started { job } => {
                if self.multi.is_hidden() {
                    return;
                }
                let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
                bar.set_message(format!("{job}: running"));
                bar.enable_steady_tick(Duration::from_millis(120));
                self.running.borrow_mut().insert(job, bar);
            }
            RunEvent::Finished { job, ok } => {
                self.overall.inc(1);
                if !ok {
                    self.overall.set_message(format!("({job} failed)"));
                }
                if let Some(bar) = self.running.borrow_mut().remove(&job) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
        }
    }

    fn finish(&self) {
        for (_, bar) in std::mem::take(&mut *self.running.borrow_mut()) {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

/// Where `shoal image build` writes its layout before sending it: the one it was asked to keep,
/// or a temporary one.
pub fn layout_dir(oci_out: Option<PathBuf>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match oci_out {
        Some(dir) => (dir, None),
        None => {
            let tmp = tempfile::tempdir()?;
            (tmp.path().join("layout"), Some(tmp))
        }
    })
}
