//! The commands on a store's contents: get, log, show, blob, image and gc, run on the store
//! itself or through the node that holds it (with the same output).

use std::path::Path;

use anyhow::{Context, Result, bail};
use shoal_blobs::Store;
use shoal_dag::Hash;

use super::{BlobCommand, Command, ImageCommand, TreeCommand, UploadCommand};
use shoal_node::output;
use shoal_node::run;

pub(super) async fn dispatch_store_command(store: &Store, command: Command) -> Result<()> {
    match command {
        Command::Run(_)
        | Command::Node(_)
        | Command::Mesh(_)
        | Command::Token(_)
        | Command::Submit { .. }
        | Command::Rerun(_)
        | Command::Provenance(_)
        | Command::Status { .. }
        | Command::Watch { .. }
        | Command::Cancel { .. }
        | Command::Verify { .. }
        | Command::Peers { .. }
        | Command::Explore(_)
        | Command::Live(_)
        | Command::S3(_)
        | Command::Doctor { .. } => unreachable!("handled by dispatch"),
        Command::Upload(UploadCommand::Ls { json }) => print_uploads(&shoal_node::data::upload::list(store)?, json),
        Command::Upload(UploadCommand::Retry { job, json, transfers }) => {
            let transfers = shoal_node::data::Transfers::new(transfers.limits()?);
            let records = shoal_node::data::upload::retry_failed(&transfers, store, job.as_deref()).await?;
            retried(&records, json)
        }
        Command::Get { job, output, out, .. } => get_output(store, &job, &output, out.as_deref()).await,
        Command::Log { job } => {
            let record = run::find_record(store, &job).await?;
            let stdout = read_blob(store, record.stdout.hash).await?;
            let stderr = read_blob(store, record.stderr.hash).await?;
            use std::io::Write;
            std::io::stdout().write_all(&stdout)?;
            std::io::stderr().write_all(&stderr)?;
            Ok(())
        }
        Command::Why { job, against, json } => {
            let against = match against.as_deref() {
                None => None,
                Some(a) if a.starts_with("blake3:") => Some(shoal_node::why::Against::Record(parse_blob_hash(a)?)),
                Some(a) => {
                    let (repo, rev) = shoal_node::provenance::split_repo_rev(a);
                    let committed = shoal_node::provenance::Repo::open_existing(&repo)?.read_run(rev.as_deref())?;
                    let record = committed.records.get(&job).cloned().ok_or_else(|| {
                        anyhow::anyhow!("commit {} of {} has no run of a job `{job}`", &committed.id[..12], repo.display())
                    })?;
                    let hash = committed.run.jobs.iter().find(|j| j.job == job).and_then(|j| j.record);
                    Some(shoal_node::why::Against::Committed { record: Box::new(record), hash, commit: committed.id })
                }
            };
            let why = shoal_node::why::why(store, &job, against).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&why)?);
            } else {
                print!("{}", why.render());
            }
            Ok(())
        }
        Command::Show { what } => {
            let record = run::find_record(store, &what).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(())
        }
        Command::Blob(cmd) => blob_command(store, cmd).await,
        Command::Tree(TreeCommand::Ls { what, json }) => {
            let (mut hash, path) = parse_tree_path(&what)?;
            let mut walked = Vec::new();
            loop {
                let tree = decode_tree(hash, &read_blob(store, hash).await?)?;
                match tree_step(&what, &tree, &path, &mut walked)? {
                    Step::Into(next) => hash = next,
                    Step::Rows(rows) => return print_tree(&rows, json),
                }
            }
        }
        Command::Image(cmd) => image_command(store, cmd).await,
        Command::Gc { json } => print_gc(&store.gc().await?, json),
    }
}

/// The commands of `dispatch_store_command`, through the node that holds the store: the same
/// output.
pub(super) fn held_command(held: &shoal_node::held::Held, command: Command) -> Result<()> {
    use std::io::Write;
    match command {
        Command::Get { job, output, out, .. } => {
            let record = held.record(&job)?;
            held.write_digest(&output_digest(&record, &job, &output)?, out.as_deref())
        }
        Command::Log { job } => {
            let record = held.record(&job)?;
            let stdout = held.read_blob(record.stdout.hash)?;
            let stderr = held.read_blob(record.stderr.hash)?;
            std::io::stdout().write_all(&stdout)?;
            std::io::stderr().write_all(&stderr)?;
            Ok(())
        }
        Command::Show { what } => {
            println!("{}", serde_json::to_string_pretty(&held.record(&what)?)?);
            Ok(())
        }
        Command::Blob(BlobCommand::Put { path, json }) => print_digest(&held.blob_put(&path)?, json),
        Command::Blob(BlobCommand::Get { hash, out }) => {
            let digest = held.digest_of_stored(parse_blob_hash(&hash)?)?;
            held.write_digest(&digest, out.as_deref())
        }
        Command::Blob(BlobCommand::Ls { json }) => print_blob_list(&held.blob_ls()?, json),
        Command::Why { .. } => bail!(
            "this store is held by a running node, and `shoal why` reads it itself: stop the node or use \
             another SHOAL_HOME"
        ),
        Command::Blob(BlobCommand::Fetch { .. } | BlobCommand::Send { .. }) => bail!(
            "this store is held by a running node, and `shoal blob fetch` and `shoal blob send` open it \
             themselves: stop the node, use another SHOAL_HOME, or let the node fetch and send (a DAG's URL \
             input and `upload`)"
        ),
        Command::Tree(TreeCommand::Ls { what, json }) => {
            let (mut hash, path) = parse_tree_path(&what)?;
            let mut walked = Vec::new();
            loop {
                let tree = decode_tree(hash, &held.raw_blob(hash)?)?;
                match tree_step(&what, &tree, &path, &mut walked)? {
                    Step::Into(next) => hash = next,
                    Step::Rows(rows) => return print_tree(&rows, json),
                }
            }
        }
        Command::Image(ImageCommand::Import { path, tag, platform, json }) => {
            print_image_id(held.image_import(&path, tag.as_deref(), platform.as_ref())?, json)
        }
        Command::Image(ImageCommand::Pull { reference, tag, insecure, platform, json }) => {
            print_image_id(held.image_pull(&reference, tag.as_deref(), insecure, platform.as_ref())?, json)
        }
        Command::Image(ImageCommand::Build { rootfs, tag, oci_out, env, cmd, workdir, platform, json }) => {
            let (layout, _tmp) = shoal_node::held::layout_dir(oci_out)?;
            build_layout(&rootfs, &tag, env, cmd, workdir, platform.as_ref(), &layout)?;
            print_image_id(held.image_import(&layout, Some(&tag), None)?, json)
        }
        Command::Image(ImageCommand::Ls { json }) => print_images(&held.images()?, json),
        Command::Gc { json } => print_gc(&held.gc()?, json),
        Command::Upload(UploadCommand::Ls { json }) => print_uploads(&held.uploads()?, json),
        Command::Upload(UploadCommand::Retry { job, json, .. }) => retried(&held.retry_uploads(job.as_deref())?, json),
        _ => unreachable!("handled by dispatch"),
    }
}

fn print_uploads(records: &[shoal_node::data::upload::UploadRecord], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(records)?);
    } else if records.is_empty() {
        println!("no uploads");
    } else {
        for r in records {
            println!("{} {}", output::unix_ms_utc(r.started_unix_ms), r.line());
        }
    }
    Ok(())
}

/// The outcome of `shoal upload retry`: an error when one still failed.
fn retried(records: &[shoal_node::data::upload::UploadRecord], json: bool) -> Result<()> {
    use shoal_node::data::upload::UploadState;
    if records.is_empty() && !json {
        println!("no failed uploads to send again");
        return Ok(());
    }
    print_uploads(records, json)?;
    let failed = records.iter().filter(|r| r.state == UploadState::Failed).count();
    if failed > 0 {
        bail!("{failed} upload(s) failed again; the outputs stay stored");
    }
    Ok(())
}

fn print_gc(r: &shoal_blobs::GcReport, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::json!({"blobs_kept": r.blobs_kept, "blobs_removed": r.blobs_removed,
                "bytes_freed": r.bytes_freed, "rootfs_removed": r.rootfs_removed,
                "rootfs_bytes_freed": r.rootfs_bytes_freed,
                "corrupt_removed": r.corrupt_removed})
        );
    } else {
        println!(
            "kept {} blobs; removed {} blobs ({}) and {} materialized root filesystems ({})",
            r.blobs_kept,
            r.blobs_removed,
            output::bytes(r.bytes_freed),
            r.rootfs_removed,
            output::bytes(r.rootfs_bytes_freed)
        );
        if r.corrupt_removed > 0 {
            println!("removed {} blobs found corrupted on disk", r.corrupt_removed);
        }
    }
    Ok(())
}

async fn read_blob(store: &Store, hash: Hash) -> Result<bytes::Bytes> {
    store
        .get_bytes(hash)
        .await?
        .with_context(|| format!("blob {hash} is not in this store; it may have been collected by `shoal gc`"))
}

async fn get_output(store: &Store, job: &str, output: &str, out: Option<&Path>) -> Result<()> {
    let record = run::find_record(store, job).await?;
    write_digest(store, &output_digest(&record, job, output)?, out).await
}

/// The digest of a job's output `output` in its run record (`stdout` and `stderr` too).
fn output_digest(record: &shoal_dag::RunRecord, job: &str, output: &str) -> Result<shoal_dag::Digest> {
    Ok(match output {
        "stdout" if !record.outputs.contains_key("stdout") => record.stdout.clone(),
        "stderr" if !record.outputs.contains_key("stderr") => record.stderr.clone(),
        _ => record.outputs.get(output).cloned().with_context(|| {
            let names: Vec<&str> = record.outputs.keys().map(String::as_str).collect();
            format!("job `{job}` has no output `{output}`; its outputs are: {}", names.join(", "))
        })?,
    })
}

async fn write_digest(store: &Store, digest: &shoal_dag::Digest, out: Option<&Path>) -> Result<()> {
    match (digest.kind, out) {
        (shoal_dag::DigestKind::File, Some(path)) => store.export(digest.hash, path).await?,
        (shoal_dag::DigestKind::File, None) => {
            use std::io::Write;
            std::io::stdout().write_all(&read_blob(store, digest.hash).await?)?;
        }
        (shoal_dag::DigestKind::Tree, Some(path)) => store.materialize(digest.hash, path).await?,
        (shoal_dag::DigestKind::Tree, None) => {
            bail!("{} is a directory tree; give a new directory to write it to with `-o DIR`", digest.hash)
        }
    }
    Ok(())
}

async fn blob_command(store: &Store, cmd: BlobCommand) -> Result<()> {
    match cmd {
        BlobCommand::Put { path, json } => {
            let meta = std::fs::symlink_metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let digest = if meta.is_dir() {
                store.put_tree_from_dir(&path).await?
            } else {
                let (hash, size) = store.put_file(&path).await?;
                shoal_dag::Digest { hash, kind: shoal_dag::DigestKind::File, size }
            };
            print_digest(&digest, json)
        }
        BlobCommand::Get { hash, out } => {
            let digest = shoal_node::run::digest_of_stored(store, parse_blob_hash(&hash)?).await?;
            write_digest(store, &digest, out.as_deref()).await
        }
        BlobCommand::Ls { json } => print_blob_list(&store.list().await?, json),
        BlobCommand::Fetch { source, json, transfers } => {
            let transfers = shoal_node::data::Transfers::new(transfers.limits()?);
            let (source, pin) = parse_source(&source)?;
            print_digest(&transfers.fetch(store, &source, pin.as_ref()).await?, json)
        }
        BlobCommand::Send { hash, destination, json, transfers } => {
            let transfers = shoal_node::data::Transfers::new(transfers.limits()?);
            let hash = parse_blob_hash(&hash)?;
            let target = parse_destination(&destination)?;
            let record =
                shoal_node::data::upload::upload_output(&transfers, store, "-", "blob", hash, &target, None, None)
                    .await;
            retried(std::slice::from_ref(&record), json)
        }
    }
}

/// A URL or `s3://` object given on the command line, with its pin.
fn parse_source(s: &str) -> Result<(shoal_node::data::Source, Option<shoal_dag::UrlPin>)> {
    use shoal_dag::location;
    if s.starts_with("s3://") {
        let (o, pin) = location::parse_s3(s).map_err(|e| anyhow::anyhow!("`{s}`: {e}"))?;
        Ok((shoal_node::data::Source::S3(o), pin))
    } else {
        let (u, pin) = location::parse_url(s).map_err(|e| anyhow::anyhow!("`{}`: {e}", location::redact(s)))?;
        Ok((shoal_node::data::Source::Url(u), pin))
    }
}

fn parse_destination(s: &str) -> Result<shoal_dag::UploadTarget> {
    let (source, pin) = parse_source(s)?;
    if pin.is_some() {
        bail!("a destination has no pin: remove the `#...` part");
    }
    Ok(match source {
        shoal_node::data::Source::S3(o) => shoal_dag::UploadTarget::S3(o),
        shoal_node::data::Source::Url(u) => shoal_dag::UploadTarget::Url(u),
    })
}

fn parse_blob_hash(hash: &str) -> Result<Hash> {
    hash.parse().map_err(|e| anyhow::anyhow!("`{hash}` is not a blob hash ({e}); hashes look like blake3:<64 hex>"))
}

fn print_digest(digest: &shoal_dag::Digest, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(digest)?);
    } else {
        println!("{}", digest.hash);
    }
    Ok(())
}

fn print_blob_list(list: &[(Hash, u64)], json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = list.iter().map(|(h, s)| serde_json::json!({"hash": h.to_string(), "size": s})).collect();
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        for (hash, size) in list {
            println!("{hash}  {}", output::bytes(*size));
        }
    }
    Ok(())
}

async fn image_command(store: &Store, cmd: ImageCommand) -> Result<()> {
    let (id, json) = match cmd {
        ImageCommand::Import { path, tag, platform, json } => {
            (store.import_image_for(&path, tag.as_deref(), platform.as_ref(), None).await?, json)
        }
        ImageCommand::Pull { reference, tag, insecure, platform, json } => {
            let opts = shoal_blobs::image::PullOptions { insecure_http: insecure, platform };
            let id = store.pull(&reference, opts).await?;
            if let Some(tag) = tag {
                store.tag_image(&tag, id)?;
            }
            (id, json)
        }
        ImageCommand::Build { rootfs, tag, oci_out, env, cmd, workdir, platform, json } => {
            let (layout, _tmp) = shoal_node::held::layout_dir(oci_out)?;
            build_layout(&rootfs, &tag, env, cmd, workdir, platform.as_ref(), &layout)?;
            (store.import_oci_layout(&layout, Some(&tag)).await?, json)
        }
        ImageCommand::Ls { json } => return print_images(&store.images()?, json),
    };
    print_image_id(id, json)
}

/// The one-layer OCI layout `shoal image build` imports (made here, with or without a store).
fn build_layout(
    rootfs: &Path,
    tag: &str,
    env: Vec<String>,
    cmd: Vec<String>,
    workdir: Option<String>,
    platform: Option<&shoal_blobs::image::ImagePlatform>,
    layout: &Path,
) -> Result<()> {
    let config = shoal_blobs::image::ImageConfig {
        env,
        entrypoint: vec![],
        cmd,
        workdir,
        user: None,
        arch: match platform {
            Some(p) => p.shoal_arch(),
            None => std::env::consts::ARCH.to_owned(),
        },
    };
    shoal_blobs::image::build_oci_layout_from_dir(rootfs, &config, layout, tag)
        .with_context(|| format!("building an OCI layout from {}", rootfs.display()))
}

fn print_images(images: &[shoal_blobs::image::ImageEntry], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(images)?);
    } else {
        output::print_images(images);
    }
    Ok(())
}

fn print_image_id(id: Hash, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::json!({"image": id.to_string()}));
    } else {
        println!("{id}");
    }
    Ok(())
}

/// `blake3:<tree>[/PATH]`: the tree and the path's components.
fn parse_tree_path(what: &str) -> Result<(Hash, Vec<String>)> {
    let (hash, path) = match what.trim_start_matches("blake3:").split_once('/') {
        Some((hex, path)) => (hex, path),
        None => (what.trim_start_matches("blake3:"), ""),
    };
    let hash = parse_blob_hash(&format!("blake3:{hash}"))?;
    let path: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect();
    if path.iter().any(|c| c == ".." || c == ".") {
        bail!("`{what}`: a path inside a tree has no `.` or `..`; write it from the tree's top");
    }
    Ok((hash, path))
}

fn decode_tree(hash: Hash, bytes: &[u8]) -> Result<shoal_blobs::tree::Tree> {
    shoal_blobs::tree::Tree::decode(bytes)
        .map_err(|why| anyhow::anyhow!("{hash} is not a tree ({why}): `shoal blob get` reads a file"))
}

/// One line of `shoal tree ls`.
#[derive(serde::Serialize)]
struct TreeRow {
    name: String,
    kind: &'static str,
    mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<Hash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

enum Step {
    /// The walk goes on into this tree.
    Into(Hash),
    Rows(Vec<TreeRow>),
}

/// One level of the walk down `path` (`walked`: the components taken so far): the next tree, or
/// the rows to print (the directory reached, or the one file the path names).
fn tree_step(what: &str, tree: &shoal_blobs::tree::Tree, path: &[String], walked: &mut Vec<String>) -> Result<Step> {
    use shoal_blobs::tree::EntryKind;
    let row = |e: &shoal_blobs::tree::Entry| {
        let (kind, size, hash, target) = match &e.kind {
            EntryKind::File { hash, size } => ("file", Some(*size), Some(*hash), None),
            EntryKind::Dir { hash } => ("dir", None, Some(*hash), None),
            EntryKind::Symlink { target } => ("symlink", None, None, Some(target.clone())),
        };
        TreeRow { name: e.name.clone(), kind, mode: format!("{:04o}", e.mode), size, hash, target }
    };
    let Some(name) = path.get(walked.len()) else {
        return Ok(Step::Rows(tree.entries.iter().map(row).collect()));
    };
    let Some(e) = tree.get(name) else {
        let nearest = shoal_blobs::tree::nearest_names(tree, name);
        let dir = if walked.is_empty() { "the tree's top".to_string() } else { format!("`{}`", walked.join("/")) };
        bail!("`{what}`: there is no `{name}` in {dir}; nearest there: {}", nearest.join(", "));
    };
    walked.push(name.clone());
    match &e.kind {
        EntryKind::Dir { hash } => Ok(Step::Into(*hash)),
        _ if walked.len() == path.len() => Ok(Step::Rows(vec![row(e)])),
        _ => bail!("`{what}`: `{}` is not a directory", walked.join("/")),
    }
}

fn print_tree(rows: &[TreeRow], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    for r in rows {
        let what = match (r.kind, &r.target) {
            ("symlink", Some(t)) => format!("{} -> {t}", r.name),
            ("dir", _) => format!("{}/", r.name),
            _ => r.name.clone(),
        };
        let size = r.size.map(output::bytes).unwrap_or_default();
        let hash = r.hash.map(|h| h.to_string()).unwrap_or_default();
        println!("{:<7} {} {:>10}  {:<71}  {what}", r.kind, r.mode, size, hash);
    }
    Ok(())
}
