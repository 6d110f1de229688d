//! Outputs sent where users keep them: a job's `upload` map names, for some outputs, a URL to
//! PUT to (a presigned S3 PUT) or an `s3://` object the node writes with its own credentials.
//! The node that ran the job (or answered it from its cache) uploads after it succeeds, on every
//! run: the destination is not part of the action key. The output is in the store first, so a
//! failed upload loses nothing: it is recorded as failed, with why, and `shoal upload retry`
//! sends it again.
//!
//! Records: `<store>/uploads/<id>.json`, one per (job, output, destination), the latest outcome
//! (state, HTTP status, ETag, bytes, when, attempts, error), the destination [`redact`]ed. Until
//! an upload is done, its full destination (a presigned URL is a secret) also lives in
//! `<id>.target`, readable by the node's user alone, for the retry; it is deleted once the
//! upload succeeds.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use shoal_blobs::Store;
use shoal_dag::location::redact;
use shoal_dag::{Hash, S3Object, UploadTarget};

use super::s3::Verb;
use super::{Attempt, Transfers, s3};
use crate::clock::now_unix_ms;

/// Bytes read from the store at a time while an output is sent.
const READ_BUFFER_BYTES: usize = 4 << 20;

/// Most upload records a store keeps; the oldest done ones go first.
pub const UPLOAD_RECORDS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    Done,
    Failed,
    /// Kept by this node for a DAG submitted through it: sent once its job is done.
    Pending,
}

/// The outcome of one upload: what was sent where, and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub job: String,
    pub output: String,
    /// The output's blob.
    pub blob: Hash,
    pub bytes: u64,
    /// Where it went, [`redact`]ed.
    pub destination: String,
    pub state: UploadState,
    /// The last reply's status.
    pub http_status: Option<u16>,
    pub etag: Option<String>,
    /// Parts of a multipart upload (None: one PUT).
    pub parts: Option<u32>,
    pub attempts: u32,
    pub started_unix_ms: u64,
    pub ms: u64,
    pub error: Option<String>,
    /// The run record of the output's run.
    pub run_record: Option<Hash>,
    /// The mesh DAG it belongs to, for an upload this node keeps for a DAG submitted through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dag: Option<Hash>,
}

impl UploadRecord {
    /// One line for a person: `out → s3://b/k: done (HTTP 200, 1048576 bytes, ETag "...")`.
    pub fn line(&self) -> String {
        match self.state {
            UploadState::Done => format!(
                "{}/{} → {}: done ({}{} bytes{} in {} ms)",
                self.job,
                self.output,
                self.destination,
                self.http_status.map(|s| format!("HTTP {s}, ")).unwrap_or_default(),
                self.bytes,
                self.etag.as_ref().map(|e| format!(", ETag {e}")).unwrap_or_default(),
                self.ms
            ),
            UploadState::Pending => format!(
                "{}/{} → {}: pending: this node sends it once the job is done",
                self.job, self.output, self.destination
            ),
            UploadState::Failed => format!(
                "{}/{} → {}: FAILED after {} attempt(s): {}; the output is stored, `shoal upload retry` sends it again",
                self.job,
                self.output,
                self.destination,
                self.attempts,
                self.error.as_deref().unwrap_or("?")
            ),
        }
    }
}

fn dir(store: &Store) -> PathBuf {
    store.home().join("uploads")
}

/// A record's file name: the same (job, output, destination) keeps one record, its latest.
fn record_id(job: &str, output: &str, target: &UploadTarget) -> String {
    let mut h = blake3::Hasher::new();
    for part in [job, output, &target.as_written()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex()[..32].to_string()
}

/// Uploads output `output` of job `job` (blob `blob`) to `target` and records the outcome.
#[allow(clippy::too_many_arguments)] // each names one thing an upload record says; a struct would only rename them
pub async fn upload_output(
    transfers: &Transfers,
    store: &Store,
    job: &str,
    output: &str,
    blob: Hash,
    target: &UploadTarget,
    run_record: Option<Hash>,
    dag: Option<Hash>,
) -> UploadRecord {
    let started_unix_ms = now_unix_ms();
    let t0 = Instant::now();
    let id = record_id(job, output, target);
    let dir = dir(store);
    // The secret is kept, for a retry, before anything can fail.
    let kept = keep_target(&dir, &id, target);
    let bytes = store.size(blob).await.ok().flatten().unwrap_or(0);
    let mut attempts = 0;
    let result = match kept {
        Err(e) => Err(e),
        Ok(()) => send(transfers, store, blob, bytes, target, &mut attempts).await,
    };
    let (state, sent, error) = match result {
        Ok(sent) => (UploadState::Done, Some(sent), None),
        Err(e) => (UploadState::Failed, None, Some(format!("{e:#}"))),
    };
    let record = UploadRecord {
        job: job.into(),
        output: output.into(),
        blob,
        bytes,
        destination: target.redacted(),
        state,
        http_status: sent.as_ref().map(|s| s.status),
        etag: sent.as_ref().and_then(|s| s.etag.clone()),
        parts: sent.as_ref().and_then(|s| s.parts),
        attempts,
        started_unix_ms,
        ms: t0.elapsed().as_millis() as u64,
        error,
        run_record,
        dag,
    };
    if let Err(e) = write_record(&dir, &id, &record) {
        tracing::warn!("cannot write the upload record {id}: {e:#}");
    }
    if state == UploadState::Done {
        let _ = std::fs::remove_file(dir.join(format!("{id}.target")));
        tracing::info!(job, output, destination = %record.destination, bytes, "uploaded");
    } else {
        tracing::warn!(job, output, destination = %record.destination, "upload failed: {}", record.error.as_deref().unwrap_or(""));
    }
    record
}

fn keep_target(dir: &Path, id: &str, target: &UploadTarget) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::identity::write_private(&dir.join(format!("{id}.target")), serde_json::to_string(target)?.as_bytes())
}

fn write_record(dir: &Path, id: &str, record: &UploadRecord) -> Result<()> {
    let tmp = dir.join(format!("{id}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)?;
    std::fs::rename(&tmp, dir.join(format!("{id}.json")))?;
    prune(dir, UPLOAD_RECORDS_MAX);
    Ok(())
}

/// Keeps at most `max` records: past it, the oldest done ones go until half of `max` done ones
/// are left. The records are read only then: every upload writes one, and counting names is cheap.
fn prune(dir: &Path, max: usize) {
    let count = std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json"))).count()
    });
    if count <= max {
        return;
    }
    let Ok(mut records) = list_in(dir) else { return };
    records.retain(|(_, r)| r.state == UploadState::Done);
    records.sort_by_key(|(_, r)| r.started_unix_ms);
    let excess = records.len().saturating_sub(max / 2);
    for (id, _) in records.into_iter().take(excess) {
        let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
    }
}

fn list_in(dir: &Path) -> Result<Vec<(String, UploadRecord)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let record: UploadRecord = match std::fs::read(&path).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice(&b)?)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("skipping the upload record {}: {e:#}", path.display());
                continue;
            }
        };
        out.push((id.to_string(), record));
    }
    Ok(out)
}

/// An upload this node keeps for a DAG submitted through it: the destination is a secret the DAG
/// that entered the mesh holds redacted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kept {
    pub job: String,
    pub output: String,
    pub target: UploadTarget,
    /// Sent, or nothing to send (the job failed or was cancelled).
    pub settled: bool,
    /// When the last attempt failed, Unix ms (the next waits [`KEPT_RETRY_MS`]).
    pub failed_unix_ms: Option<u64>,
}

/// Wait after a failed attempt at a kept upload before the keeper tries it again, ms.
pub const KEPT_RETRY_MS: u64 = 60_000;

fn kept_path(store: &Store, dag: Hash) -> PathBuf {
    dir(store).join("kept").join(format!("{}.json", dag.to_hex()))
}

/// Keeps `kept` for `dag` (mode 0600) and records each as pending.
pub fn keep_for_dag(store: &Store, dag: Hash, kept: &[Kept]) -> Result<()> {
    std::fs::create_dir_all(dir(store).join("kept"))?;
    keep_file(store, dag, kept)?;
    for k in kept {
        let record = UploadRecord {
            job: k.job.clone(),
            output: k.output.clone(),
            blob: Hash([0; 32]),
            bytes: 0,
            destination: k.target.redacted(),
            state: UploadState::Pending,
            http_status: None,
            etag: None,
            parts: None,
            attempts: 0,
            started_unix_ms: now_unix_ms(),
            ms: 0,
            error: None,
            run_record: None,
            dag: Some(dag),
        };
        write_record(&dir(store), &record_id(&k.job, &k.output, &k.target), &record)?;
    }
    Ok(())
}

/// The uploads this node keeps, by DAG.
pub fn kept(store: &Store) -> Vec<(Hash, Vec<Kept>)> {
    let Ok(entries) = std::fs::read_dir(dir(store).join("kept")) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(hex) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let (Some(dag), Ok(bytes)) = (Hash::from_hex(hex), std::fs::read(&path)) else { continue };
        match serde_json::from_slice(&bytes) {
            Ok(k) => out.push((dag, k)),
            Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
        }
    }
    out
}

/// Writes back what is left of `dag`'s kept uploads; once all are settled the file (and with it
/// every full destination of the DAG) is deleted.
pub fn update_kept(store: &Store, dag: Hash, kept: &[Kept]) -> Result<()> {
    if kept.iter().all(|k| k.settled) {
        let _ = std::fs::remove_file(kept_path(store, dag));
        return Ok(());
    }
    keep_file(store, dag, kept)
}

/// On disk (synced) before the DAG is acknowledged: a crash must not lose where its outputs go.
fn keep_file(store: &Store, dag: Hash, kept: &[Kept]) -> Result<()> {
    crate::identity::write_private(&kept_path(store, dag), &serde_json::to_vec(kept)?)
}

/// This store's upload records, newest first.
pub fn list(store: &Store) -> Result<Vec<UploadRecord>> {
    let mut v: Vec<UploadRecord> = list_in(&dir(store))?.into_iter().map(|(_, r)| r).collect();
    v.sort_by(|a, b| b.started_unix_ms.cmp(&a.started_unix_ms).then(a.job.cmp(&b.job)).then(a.output.cmp(&b.output)));
    Ok(v)
}

/// Sends every failed upload of this store again (of `job` alone, when given).
pub async fn retry_failed(transfers: &Transfers, store: &Store, job: Option<&str>) -> Result<Vec<UploadRecord>> {
    let dir = dir(store);
    let mut out = Vec::new();
    for (id, r) in list_in(&dir)? {
        if r.state != UploadState::Failed || job.is_some_and(|j| j != r.job) {
            continue;
        }
        let target: UploadTarget = match std::fs::read(dir.join(format!("{id}.target"))) {
            Ok(b) => serde_json::from_slice(&b).context("reading a kept upload destination")?,
            Err(_) => bail!(
                "the destination of {}/{} ({}) is no longer kept here; run the DAG again",
                r.job,
                r.output,
                r.destination
            ),
        };
        let sent = upload_output(transfers, store, &r.job, &r.output, r.blob, &target, r.run_record, r.dag).await;
        // A kept upload sent by hand is settled: the node does not send it again.
        if let (UploadState::Done, Some(dag)) = (sent.state, sent.dag)
            && let Some((_, mut kept)) = kept(store).into_iter().find(|(d, _)| *d == dag)
        {
            for k in kept.iter_mut().filter(|k| k.job == sent.job && k.output == sent.output) {
                k.settled = true;
            }
            update_kept(store, dag, &kept)?;
        }
        out.push(sent);
    }
    Ok(out)
}

/// What the server said to a finished upload.
struct Sent {
    status: u16,
    etag: Option<String>,
    parts: Option<u32>,
}

async fn send(
    transfers: &Transfers,
    store: &Store,
    blob: Hash,
    bytes: u64,
    target: &UploadTarget,
    attempts: &mut u32,
) -> Result<Sent> {
    if !store.has(blob).await? {
        bail!("the output's blob {blob} is not in this store");
    }
    // Out of eviction and gc while it is read.
    let _held = store.hold([blob]);
    match target {
        UploadTarget::Url(url) => {
            let shown = redact(url);
            transfers
                .retrying(&shown, || {
                    *attempts += 1;
                    put_blob(transfers, store, blob, bytes, url, &shown)
                })
                .await
        }
        UploadTarget::S3(object) => {
            let s3 = transfers.s3()?;
            if bytes > transfers.limits.multipart_above_bytes {
                multipart(transfers, store, blob, bytes, object, attempts).await
            } else {
                let url = s3.presign(Verb::Put, object, s3::PRESIGN_OWN_REQUEST)?;
                let shown = object.to_string();
                transfers
                    .retrying(&shown, || {
                        *attempts += 1;
                        put_blob(transfers, store, blob, bytes, &url, &shown)
                    })
                    .await
            }
        }
    }
}

/// The blob's bytes: its data file where the store keeps one, else the store's reader, in large
/// reads (each one a request to the store's actor).
async fn blob_reader(store: &Store, blob: Hash) -> Box<dyn Read + Send> {
    match store.data_file(blob).await {
        Some(file) => Box::new(file),
        None => Box::new(std::io::BufReader::with_capacity(
            READ_BUFFER_BYTES,
            tokio_util::io::SyncIoBridge::new(store.reader(blob)),
        )),
    }
}

/// One PUT of the whole blob, streamed from the store and checked against its hash as it goes.
async fn put_blob(
    transfers: &Transfers,
    store: &Store,
    blob: Hash,
    bytes: u64,
    url: &str,
    shown: &str,
) -> Result<Sent, Attempt> {
    let reader = blob_reader(store, blob).await;
    let agent = transfers.agent().clone();
    let (url, shown_owned) = (url.to_string(), shown.to_string());
    let (resp, actual) = tokio::task::spawn_blocking(move || {
        let mut hashing = Hashing { inner: reader.take(bytes), hasher: blake3::Hasher::new() };
        let resp = agent
            .put(&url)
            .header("content-length", bytes.to_string())
            .send(ureq::SendBody::from_reader(&mut hashing));
        (resp.map(|r| (r, url)), Hash(*hashing.hasher.finalize().as_bytes()))
    })
    .await
    .map_err(|e| Attempt::Fatal(anyhow!("{e}")))?;
    let (resp, url) = resp.map_err(|e| Attempt::Retry(anyhow!("uploading to {shown_owned}: {e}")))?;
    if actual != blob {
        return Err(Attempt::Fatal(anyhow!(
            "the stored blob {blob} read back as {actual}: this store is damaged (`shoal doctor`); the upload sent \
             the damaged bytes"
        )));
    }
    reply(resp, shown, &url, None)
}

fn reply(resp: ureq::http::Response<ureq::Body>, shown: &str, url: &str, parts: Option<u32>) -> Result<Sent, Attempt> {
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(super::status_error("uploading to", shown, url, resp));
    }
    let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok(Sent { status, etag, parts })
}

/// S3's multipart upload: create, each part (read into memory once, so a retry resends it), then
/// complete; aborted when a part fails for good, so no half-object stays billed.
async fn multipart(
    transfers: &Transfers,
    store: &Store,
    blob: Hash,
    bytes: u64,
    object: &S3Object,
    attempts: &mut u32,
) -> Result<Sent> {
    let s3 = transfers.s3()?;
    let shown = object.to_string();
    let part_bytes = transfers.limits.part_bytes.max(super::S3_PART_BYTES_MIN);
    let parts = bytes.div_ceil(part_bytes);
    if parts > 10_000 {
        bail!("{shown}: {bytes} bytes in parts of {part_bytes} make {parts} parts, over S3's 10000; raise --s3-part-size");
    }
    let create = s3.create_multipart(object)?;
    let agent = transfers.agent().clone();
    let upload_id = transfers
        .retrying(&shown, || {
            *attempts += 1;
            let (agent, create, shown) = (agent.clone(), create.clone(), shown.clone());
            async move {
                let url = create.clone();
                let resp = tokio::task::spawn_blocking(move || agent.post(&create).send_empty())
                    .await
                    .map_err(|e| Attempt::Fatal(anyhow!("{e}")))?
                    .map_err(|e| Attempt::Retry(anyhow!("starting a multipart upload to {shown}: {e}")))?;
                let mut resp = match resp.status().as_u16() {
                    200..=299 => resp,
                    _ => return Err(super::status_error("starting a multipart upload to", &shown, &url, resp)),
                };
                let body = resp.body_mut().read_to_string().map_err(|e| Attempt::Retry(anyhow!("{e}")))?;
                s3::parse_upload_id(&body).map_err(Attempt::Fatal)
            }
        })
        .await?;
    let result = send_parts(transfers, store, blob, bytes, part_bytes, object, &upload_id, attempts).await;
    match result {
        Ok(sent) => Ok(sent),
        Err(e) => {
            if let Ok(abort) = s3.abort_multipart(object, &upload_id) {
                let agent = agent.clone();
                let _ = tokio::task::spawn_blocking(move || agent.delete(&abort).call()).await;
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_parts(
    transfers: &Transfers,
    store: &Store,
    blob: Hash,
    bytes: u64,
    part_bytes: u64,
    object: &S3Object,
    upload_id: &str,
    attempts: &mut u32,
) -> Result<Sent> {
    let s3 = transfers.s3()?;
    let shown = object.to_string();
    let agent = transfers.agent().clone();
    let mut reader = blob_reader(store, blob).await;
    let mut hasher = blake3::Hasher::new();
    let mut etags = Vec::new();
    let mut left = bytes;
    let mut n: u16 = 0;
    while left > 0 {
        n += 1;
        let len = left.min(part_bytes);
        // The part, read from the store on a blocking thread (the bridge blocks).
        let (buf, back) = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(len as usize);
            let r = (&mut reader).take(len).read_to_end(&mut buf).map(|_| buf);
            (r, reader)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
        reader = back;
        let buf = std::sync::Arc::new(buf.context("reading the output from the store")?);
        if buf.len() as u64 != len {
            bail!("the stored blob {blob} ended early: this store is damaged (`shoal doctor`)");
        }
        hasher.update(&buf);
        let url = s3.upload_part(object, n, upload_id)?;
        let sent = transfers
            .retrying(&shown, || {
                *attempts += 1;
                let (agent, url, buf, shown) = (agent.clone(), url.clone(), buf.clone(), shown.clone());
                async move {
                    let resp = tokio::task::spawn_blocking(move || agent.put(&url).send(&buf[..]).map(|r| (r, url)))
                        .await
                        .map_err(|e| Attempt::Fatal(anyhow!("{e}")))?
                        .map_err(|e| Attempt::Retry(anyhow!("uploading part {n} to {shown}: {e}")))?;
                    reply(resp.0, &shown, &resp.1, None)
                }
            })
            .await?;
        etags.push(sent.etag.ok_or_else(|| anyhow!("{shown}: the server gave part {n} no ETag"))?);
        left -= len;
    }
    if Hash(*hasher.finalize().as_bytes()) != blob {
        bail!("the stored blob {blob} read back as other bytes: this store is damaged (`shoal doctor`)");
    }
    let (url, body) = s3.complete_multipart(object, upload_id, &etags)?;
    let parts = u32::from(n);
    transfers
        .retrying(&shown, || {
            *attempts += 1;
            let (agent, url, body, shown) = (agent.clone(), url.clone(), body.clone(), shown.clone());
            async move {
                let resp = tokio::task::spawn_blocking(move || agent.post(&url).send(body.as_bytes()).map(|r| (r, url)))
                    .await
                    .map_err(|e| Attempt::Fatal(anyhow!("{e}")))?
                    .map_err(|e| Attempt::Retry(anyhow!("completing the multipart upload to {shown}: {e}")))?;
                let (mut r, url) = resp;
                let status = r.status().as_u16();
                if !(200..300).contains(&status) {
                    return Err(super::status_error("completing the multipart upload to", &shown, &url, r));
                }
                // S3 may answer 200 with an error inside.
                let text = r.body_mut().read_to_string().unwrap_or_default();
                if text.contains("<Error>") {
                    return Err(Attempt::Retry(anyhow!("completing the multipart upload to {shown}: {text}")));
                }
                let etag = text
                    .split_once("<ETag>")
                    .and_then(|(_, rest)| rest.split_once("</ETag>"))
                    .map(|(e, _)| e.replace("&quot;", "\""));
                Ok(Sent { status, etag, parts: Some(parts) })
            }
        })
        .await
}

/// A reader that hashes what passes.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: &str, state: UploadState, at: u64) -> UploadRecord {
        UploadRecord {
            job: job.into(),
            output: "o".into(),
            blob: Hash([0; 32]),
            bytes: 0,
            destination: "s3://b/k".into(),
            state,
            http_status: None,
            etag: None,
            parts: None,
            attempts: 1,
            started_unix_ms: at,
            ms: 0,
            error: None,
            run_record: None,
            dag: None,
        }
    }

    #[test]
    fn past_the_limit_the_oldest_done_records_go_and_failed_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let write = |id: &str, r: &UploadRecord| {
            std::fs::write(dir.path().join(format!("{id}.json")), serde_json::to_vec(r).unwrap()).unwrap()
        };
        for (i, state) in [UploadState::Done, UploadState::Failed, UploadState::Done, UploadState::Done].iter().enumerate() {
            write(&format!("r{i}"), &record(&format!("j{i}"), *state, i as u64));
        }
        prune(dir.path(), 4);
        assert_eq!(list_in(dir.path()).unwrap().len(), 4, "at the limit nothing goes");
        prune(dir.path(), 3);
        let mut left: Vec<String> = list_in(dir.path()).unwrap().into_iter().map(|(_, r)| r.job).collect();
        left.sort();
        // 3 done past a limit of 3: the oldest 2 go (1 done left), the failed one stays.
        assert_eq!(left, ["j1", "j3"]);
    }
}
