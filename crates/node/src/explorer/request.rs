//! Reading a run request: the multipart body the page posts (a JSON `request` part, then `file`
//! parts and an optional `stdin` part), checked against the catalogue and streamed into the store.
//! In the library rather than the binary so the fuzz targets (`crates/fuzz-entry`) call the very
//! code the node runs; the node's limits on anonymous callers come in through a [`Gate`].

use std::collections::BTreeMap;

use axum::extract::Multipart;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use shoal_blobs::Store;
use shoal_dag::{Digest, DigestKind};
use tokio::io::AsyncWriteExt;

use super::catalogue::{self, Catalogue, Entry, Problem};
use crate::api_error::{ApiError, bad, internal, too_large};
use crate::human::bytes as human_bytes;

/// Input files one request may carry.
pub const INPUT_FILES_MAX: usize = 32;
/// Largest input file, in bytes.
pub const INPUT_FILE_BYTES_MAX: u64 = 4 << 20;
/// Largest stdin, in bytes.
pub const STDIN_BYTES_MAX: u64 = 4 << 20;
/// Largest request (all parts' contents together), in bytes.
pub const REQUEST_BYTES_MAX: u64 = 16 << 20;
/// Room for the multipart headers above [`REQUEST_BYTES_MAX`], in bytes.
pub const REQUEST_HEADER_SLACK_BYTES: usize = 1 << 20;
/// Largest `request` part (the JSON descriptor), in bytes.
pub const DESCRIPTOR_BYTES_MAX: usize = 64 << 10;
/// After refusing a request, how much more of its body is read (and dropped) so the client gets
/// the answer instead of a reset connection, in bytes.
pub const DRAIN_BYTES_MAX: u64 = 64 << 20;

/// The `request` part.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    /// The catalogue id.
    entry: String,
    #[serde(default)]
    options: BTreeMap<String, Value>,
    /// The file to run, for images whose command names `{main}`.
    main: Option<String>,
}

/// A request whose parts are in the store.
pub struct Received {
    pub entry: Entry,
    pub options: BTreeMap<String, Value>,
    pub main: Option<String>,
    pub inputs: BTreeMap<String, Digest>,
    pub stdin: Option<Digest>,
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(e.status(), format!("reading the request: {}", e.body_text()))
}

/// What the node adds to reading a request: a public explorer's limits on anonymous callers.
pub trait Gate {
    /// Whether `entry` may run for this caller; called before its options are checked.
    fn allow(&mut self, entry: &Entry) -> Result<(), ApiError>;
    /// Counts the run, once its request is known good and before any file is stored.
    fn admit(&mut self) -> Result<(), ApiError>;
    /// Counts `bytes` more of an upload.
    fn charge(&mut self, bytes: u64) -> Result<(), ApiError>;
}

/// No limits: a token holder, the local user, the fuzz targets.
pub struct Open;

impl Gate for Open {
    fn allow(&mut self, _: &Entry) -> Result<(), ApiError> {
        Ok(())
    }
    fn admit(&mut self) -> Result<(), ApiError> {
        Ok(())
    }
    fn charge(&mut self, _: u64) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Reads the parts in order, each file streamed through `dir` into the store. A refused request
/// is read to its end (dropping up to [`DRAIN_BYTES_MAX`]) before the answer, so the client reads
/// the reason instead of a reset connection.
pub async fn receive(
    store: &Store,
    cat: &Catalogue,
    mut mp: Multipart,
    dir: &std::path::Path,
    gate: &mut (dyn Gate + Send),
) -> Result<Received, ApiError> {
    let result = receive_parts(store, cat, &mut mp, dir, gate).await;
    if result.is_err() {
        drain(&mut mp).await;
    }
    result
}

/// Reads and drops the rest of a refused request, up to [`DRAIN_BYTES_MAX`].
async fn drain(mp: &mut Multipart) {
    let mut drained = 0u64;
    'parts: while let Ok(Some(mut field)) = mp.next_field().await {
        while let Ok(Some(chunk)) = field.chunk().await {
            drained += chunk.len() as u64;
            if drained > DRAIN_BYTES_MAX {
                break 'parts;
            }
        }
    }
}

async fn receive_parts(
    store: &Store,
    cat: &Catalogue,
    mp: &mut Multipart,
    dir: &std::path::Path,
    gate: &mut (dyn Gate + Send),
) -> Result<Received, ApiError> {
    let mut field = mp
        .next_field()
        .await
        .map_err(multipart_error)?
        .ok_or_else(|| bad("the request is empty; its first part is `request` (JSON: entry, options, main)"))?;
    if field.name() != Some("request") {
        return Err(bad(format!(
            "the first part is `{}`; it must be `request` (JSON: entry, options, main)",
            field.name().unwrap_or("")
        )));
    }
    let mut descriptor = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if descriptor.len() + chunk.len() > DESCRIPTOR_BYTES_MAX {
            return Err(too_large(format!(
                "the `request` part is larger than {}",
                human_bytes(DESCRIPTOR_BYTES_MAX as u64)
            )));
        }
        descriptor.extend_from_slice(&chunk);
    }
    drop(field);
    let req: RunRequest = serde_json::from_slice(&descriptor)
        .map_err(|e| bad(format!("the `request` part is not {{\"entry\", \"options\", \"main\"}} JSON: {e}")))?;
    let entry = cat.entry(&req.entry).cloned().ok_or_else(|| {
        let ids: Vec<&str> = cat.entries.iter().map(|e| e.id.as_str()).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the catalogue has no image `{}`; it has: {}", req.entry, ids.join(", ")),
        )
    })?;
    // Options are checked before any file is stored: a bad form costs no upload into the store.
    gate.allow(&entry)?;
    let options = entry.normalize(&req.options).map_err(|problems| ApiError {
        retry_after_s: None,
        status: StatusCode::BAD_REQUEST,
        message: format!(
            "{} option{} of `{}` {} wrong: {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            entry.id,
            if problems.len() == 1 { "is" } else { "are" },
            problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ")
        ),
        problems,
    })?;
    // An anonymous run is counted once its request is known to be one this node runs: a refused
    // form costs the client nothing.
    gate.admit()?;

    let mut inputs: BTreeMap<String, Digest> = BTreeMap::new();
    let mut stdin: Option<Digest> = None;
    let mut total = descriptor.len() as u64;
    let mut n = 0usize;
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        let part = field.name().unwrap_or("").to_string();
        let (what, limit, name) = match part.as_str() {
            "file" => {
                let name = field.file_name().unwrap_or("").to_string();
                if !catalogue::input_name(&name) {
                    return Err(bad(format!(
                        "`{name}` is not a file name the sandbox takes: start with a letter or digit, then letters, \
                         digits, `.`, `_` and `-`, at most 128 characters"
                    )));
                }
                if inputs.contains_key(&name) {
                    return Err(bad(format!("two input files are named `{name}`")));
                }
                if inputs.len() >= INPUT_FILES_MAX {
                    return Err(too_large(format!(
                        "too many input files: at most {INPUT_FILES_MAX} per run; put more in one archive"
                    )));
                }
                (format!("the input file `{name}`"), INPUT_FILE_BYTES_MAX, Some(name))
            }
            "stdin" => {
                if stdin.is_some() {
                    return Err(bad("the request has two `stdin` parts"));
                }
                ("stdin".to_string(), STDIN_BYTES_MAX, None)
            }
            other => {
                return Err(bad(format!(
                    "unknown part `{other}`; after `request` come `file` parts (with a filename) and `stdin`"
                )));
            }
        };
        let path = dir.join(format!("part-{n}"));
        n += 1;
        let mut file = tokio::fs::File::create(&path).await.map_err(internal)?;
        let mut size = 0u64;
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            size += chunk.len() as u64;
            total += chunk.len() as u64;
            if size > limit {
                return Err(too_large(format!(
                    "{what} is larger than {}, the limit for one {}",
                    human_bytes(limit),
                    if name.is_some() { "file" } else { "stdin" }
                )));
            }
            if total > REQUEST_BYTES_MAX {
                return Err(too_large(format!(
                    "the request is larger than {}, the limit for all files together",
                    human_bytes(REQUEST_BYTES_MAX)
                )));
            }
            gate.charge(chunk.len() as u64)?;
            file.write_all(&chunk).await.map_err(internal)?;
        }
        file.flush().await.map_err(internal)?;
        drop(file);
        let (hash, size) = store.put_file(&path).await.map_err(internal)?;
        let _ = tokio::fs::remove_file(&path).await;
        let digest = Digest { hash, kind: DigestKind::File, size };
        match name {
            Some(name) => {
                inputs.insert(name, digest);
            }
            None => stdin = Some(digest),
        }
    }

    let main = match req.main {
        Some(m) if inputs.contains_key(&m) => Some(m),
        Some(m) => {
            return Err(bad(format!("`main` names `{m}`, which is not among the input files")));
        }
        // The first file of a type the image reads, else the first file.
        None => inputs
            .keys()
            .find(|n| entry.inputs.iter().any(|t| t == cat.media_type_of(n)))
            .or_else(|| inputs.keys().next())
            .cloned(),
    };
    if entry.needs_main() && main.is_none() {
        return Err(ApiError {
            retry_after_s: None,
            status: StatusCode::BAD_REQUEST,
            message: format!("`{}` runs a file, and the request has none; add one", entry.id),
            problems: vec![Problem { option: String::new(), message: "no input file".into() }],
        });
    }
    Ok(Received { entry, options, main, inputs, stdin })
}
