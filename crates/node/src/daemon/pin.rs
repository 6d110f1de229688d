//! Pinning: a DAG submitted to the mesh names its images by tag and its inputs by `sha256:` or
//! `file:`, which mean something only on the machine that wrote it. Before it enters the ledger
//! the submitting node rewrites every such reference to the `blake3:` hash it stands for here, so
//! the DAG blob every node fetches means the same computation everywhere (and the action keys
//! agree). `file:` inputs are uploaded by `shoal submit` first and arrive here as `blake3:`. URL
//! and `s3://` inputs are fetched here and pinned by BLAKE3, their URLs redacted; a presigned
//! upload destination is redacted too, and kept whole by this node, which sends that output
//! (`daemon/uploads.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use shoal_blobs::Store;
use shoal_dag::pin::{JobPins, rewrite};
use shoal_dag::{Dag, Hash, ImageRef, InputRef, UrlPin};

use crate::data::{Source, Transfers};

/// A DAG with every reference a hash, stored as a pinned blob named by `hash`.
pub struct Pinned {
    pub hash: Hash,
    pub dag: Dag,
}

/// Parses, checks and pins `text` (the DAG file `name`). Errors carry the parser's located
/// diagnostics, or name the job and reference that cannot be resolved here.
pub async fn pin_dag(store: &Store, transfers: &Transfers, name: &str, text: &str) -> Result<Pinned> {
    let dag = shoal_dag::parse_dag(name, text).map_err(|d| anyhow!("{d}"))?;
    // What each job's references become, looked up first (the store is async, the rewrite is
    // not); each image once.
    let mut images: BTreeMap<(&ImageRef, Option<shoal_dag::Arch>), Arc<str>> = BTreeMap::new();
    let mut pins = Vec::with_capacity(dag.jobs.len());
    // URLs and objects, fetched once each whatever the jobs naming them.
    let mut fetched: BTreeMap<String, Hash> = BTreeMap::new();
    // Presigned upload destinations: redacted in the DAG the mesh stores, kept here whole.
    let mut kept = Vec::new();
    for job in &dag.jobs {
        let image = match &job.image {
            ImageRef::Tag(_) | ImageRef::Sha256(_) => Some(match images.get(&(&job.image, job.requirements.arch)) {
                Some(id) => id.clone(),
                None => {
                    let arch = job.requirements.arch.map(|a| a.name());
                    let (id, _) = store.resolve_image_for(&job.image, arch).await.map_err(|e| {
                        anyhow!(
                            "job `{}`: {e}; import the image on the node you submit to (`shoal image import`)",
                            job.id
                        )
                    })?;
                    let id: Arc<str> = id.to_string().into();
                    images.insert((&job.image, job.requirements.arch), id.clone());
                    id
                }
            }),
            ImageRef::Blake3(_) | ImageRef::Job { .. } => None,
        };
        let mut inputs = Vec::new();
        for (input, r) in job.inputs.iter().map(|(n, r)| (n.as_str(), r)).chain(job.stdin.iter().map(|r| ("stdin", r)))
        {
            // A path or selection of a tree this store holds is checked now: a name that is not
            // there fails the submit, not a job on some node later.
            match Box::pin(narrowed(store, r)).await {
                Err(e) => bail!("job `{}`, input `{input}`: {e:#}", job.id),
                Ok(Some(d)) if input == "stdin" && d.kind == shoal_dag::DigestKind::Tree => {
                    bail!("job `{}`: stdin `{r}` is a directory; name a file inside it", job.id)
                }
                Ok(_) => {}
            }
        }
        for (input, r) in &job.inputs {
            if let Some(h) = pinned_remote(store, transfers, &mut fetched, &job.id, input, r).await? {
                inputs.push((input.clone(), h));
            } else if let Some(h) = pinned_input(store, &job.id, input, r)? {
                inputs.push((input.clone(), h));
            }
        }
        let stdin = match &job.stdin {
            Some(r) => match pinned_remote(store, transfers, &mut fetched, &job.id, "stdin", r).await? {
                Some(h) => Some(h),
                None => pinned_input(store, &job.id, "stdin", r)?,
            },
            None => None,
        };
        let mut uploads = Vec::new();
        for (output, target) in &job.uploads {
            if let shoal_dag::UploadTarget::Url(u) = target
                && shoal_dag::location::has_secret(u)
            {
                uploads.push((output.clone(), serde_json::Value::String(target.redacted())));
                kept.push(crate::data::upload::Kept {
                    job: job.id.clone(),
                    output: output.clone(),
                    target: target.clone(),
                    settled: false,
                    failed_unix_ms: None,
                });
            }
        }
        pins.push(JobPins { id: job.id.clone(), image, inputs, stdin, uploads });
    }
    drop(images);
    drop(dag);
    let pinned_text = rewrite(text, &pins)?;
    drop(pins);
    let dag = shoal_dag::parse_dag(name, &pinned_text).map_err(|d| anyhow!("the pinned DAG does not parse: {d}"))?;
    let hash = store.put_bytes(pinned_text.into_bytes()).await?;
    store.pin(hash)?;
    if !kept.is_empty() {
        crate::data::upload::keep_for_dag(store, hash, &kept)?;
    }
    // Durable before the Submit is acknowledged: a fact whose DAG is lost in a crash names work
    // nobody can do.
    store.flush().await?;
    Ok(Pinned { hash, dag })
}

/// A URL or `s3://` input fetched now, so the DAG names exact bytes: it becomes the same
/// reference pinned by BLAKE3, its URL [`redact`](shoal_dag::location::redact)ed (the secret
/// of a presigned GET stays on this node; every other node reads the bytes from the mesh).
/// None for other inputs. One pinned by BLAKE3 already is fetched too (not at all when this store
/// holds its bytes): the job's node fetches it from the mesh, never from the URL.
async fn pinned_remote(
    store: &Store,
    transfers: &Transfers,
    fetched: &mut BTreeMap<String, Hash>,
    job: &str,
    input: &str,
    r: &InputRef,
) -> Result<Option<serde_json::Value>> {
    let (source, pin) = match r {
        InputRef::Url { url, pin } => (Source::Url(url.clone()), pin),
        InputRef::S3 { object, pin } => (Source::S3(object.clone()), pin),
        _ => return Ok(None),
    };
    let key = format!("{r:?}");
    let hash = match fetched.get(&key) {
        Some(h) => *h,
        None => {
            let d = transfers
                .fetch(store, &source, pin.as_ref())
                .await
                .map_err(|e| anyhow!("job `{job}`, input `{input}`: {e:#}"))?;
            // Held by this node until the DAG's blobs are replicated (the DAG pins what it names).
            store.pin(d.hash)?;
            fetched.insert(key, d.hash);
            d.hash
        }
    };
    let pinned = match r {
        InputRef::Url { url, .. } => InputRef::Url { url: url.clone(), pin: Some(UrlPin::Blake3(hash)) },
        InputRef::S3 { object, .. } => InputRef::S3 { object: object.clone(), pin: Some(UrlPin::Blake3(hash)) },
        _ => unreachable!("matched above"),
    };
    Ok(Some(pinned.to_json()))
}

/// What a path or selection names, where this store holds the tree it starts from (None where it
/// does not: another node may, and the job then checks).
async fn narrowed(store: &Store, r: &InputRef) -> Result<Option<shoal_dag::Digest>> {
    Ok(match r {
        InputRef::Blake3(h) if store.is_tree(*h) => Some(crate::run::digest_of_stored(store, *h).await?),
        InputRef::Path { base, path } => match Box::pin(narrowed(store, base)).await? {
            Some(tree) => Some(store.tree_path(&tree, path).await?),
            None => None,
        },
        InputRef::Select { base, include, exclude } => match Box::pin(narrowed(store, base)).await? {
            Some(tree) => Some(store.select(&tree, include, exclude).await?),
            None => None,
        },
        _ => None,
    })
}

/// What an input becomes (its `blake3:` reference, with the path or selection it had), or None
/// when it starts from one already (or from a job's output).
fn pinned_input(store: &Store, job: &str, input: &str, r: &InputRef) -> Result<Option<serde_json::Value>> {
    match r.root() {
        InputRef::Sha256(hex) => {
            let h: Hash = store.by_sha256(hex)?.ok_or_else(|| {
                anyhow!("job `{job}`, input `{input}`: no blob here has sha256:{hex}; `shoal blob put` it")
            })?;
            Ok(Some(r.with_root(InputRef::Blake3(h)).to_json()))
        }
        InputRef::File(path) => bail!(
            "job `{job}`, input `{input}`: `file:{}` names a file on the submitting machine; submit with \
             `shoal submit`, which uploads it, or store it with `shoal blob put` and use its blake3: hash",
            path
        ),
        _ => Ok(None),
    }
}
