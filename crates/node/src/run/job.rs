//! One job of a run: its references resolved to hashes, the action cache asked, and otherwise
//! its inputs written out, its run on the backend, its outputs stored and its signed run record.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::now_unix_ms;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use shoal_blobs::Store;
use shoal_blobs::image::Image;
use shoal_dag::{Digest, DigestKind, Exit, Hash, ImageRef, InputRef, Job, ResolvedJob, RunRecord, Timing};
use shoal_vm::{CollectedOutput, InputMount, Limits, Request};

use super::runner::{Ctx, backend_for};
use super::{JobReport, RunEvent, Status};
use crate::output;

/// Lines of a failed job's stderr shown in the summary.
const STDERR_TAIL_LINES: usize = 20;
/// Version of the run record layout written by this code.
const RUN_RECORD_VERSION: u32 = 1;
/// Cap on a job's captured stdout and stderr, each, in bytes.
const STDOUT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// How much of a failed job's stderr is read for the tail shown with the failure, in bytes.
const STDERR_TAIL_BYTES_MAX: u64 = 64 << 10;

pub(super) async fn job_task(
    ctx: &Ctx,
    idx: usize,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
    stale: &BTreeSet<Hash>,
) -> JobReport {
    let job = &ctx.dag.jobs[idx];
    match run_job(ctx, job, upstream, stale).await {
        Ok(mut report) => {
            if report.status == Status::Done && !job.uploads.is_empty() {
                report.uploads = upload_outputs(ctx, job, &report).await;
            }
            report
        }
        Err(e) => {
            let mut report = JobReport::new(&job.id, Status::Failed);
            report.error = Some(format!("{e:#}"));
            report
        }
    }
}

async fn run_job(
    ctx: &Ctx,
    job: &Job,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
    stale: &BTreeSet<Hash>,
) -> Result<JobReport> {
    let queued_unix_ms = now_unix_ms();
    let (image_id, image) = resolve_image(ctx, &job.image, job.requirements.arch, upstream).await?;
    let mut inputs = BTreeMap::new();
    for (name, input) in &job.inputs {
        let digest = resolve_input(ctx, input, upstream).await.with_context(|| format!("resolving input `{name}`"))?;
        inputs.insert(name.clone(), digest);
    }
    let stdin = match &job.stdin {
        Some(input) => Some(resolve_input(ctx, input, upstream).await.context("resolving stdin")?),
        None => None,
    };
    // The image and inputs stay out of eviction and gc while the job runs.
    let _held = ctx
        .runner
        .store
        .hold([image_id, image.rootfs].into_iter().chain(inputs.values().chain(stdin.as_ref()).map(|d| d.hash)));
    let resolved = ResolvedJob::from_job(job, image_id, inputs, stdin);
    let action_key = resolved.action_key();
    tracing::debug!(%action_key, "resolved");

    if ctx.use_cache {
        let mut hit = cached_report(ctx, job, &action_key).await?;
        if hit.as_ref().is_some_and(|r| r.record.is_some_and(|r| stale.contains(&r))) {
            tracing::info!(%action_key, "the cached record's outputs were reported lost: running the job again");
            hit = None;
        }
        if let (Some(remote), Some(record)) = (&ctx.remote_cache, hit.as_ref().and_then(|r| r.record))
            && remote.refuses(record).await
        {
            tracing::info!(%action_key, %record, "the cached record was made by a quarantined node: not using it");
            hit = None;
        }
        if hit.is_none()
            && let Some(remote) = &ctx.remote_cache
            && let Some(maker) = remote.fetch(action_key, stale).await
        {
            hit = cached_report(ctx, job, &action_key).await?;
            if let Some(report) = &mut hit {
                tracing::info!(%action_key, maker, "a result from the mesh-wide action cache");
                report.cached_from = Some(maker);
            }
        }
        if let Some(report) = hit {
            return Ok(report);
        }
    }
    if job.requirements.cores > ctx.cores_total() {
        bail!(
            "it needs {} cores and this run may use {}; lower `requirements.cores`, or give more with --cores \
             (of `shoal run`; of `shoal node` for the runs of a node, whose cores bound all of them)",
            job.requirements.cores,
            ctx.cores_total()
        );
    }
    if let Some(why) = unmet_here(&job.requirements, &ctx.runner.machine) {
        bail!("{why}");
    }
    let _in_flight = ctx.enter().await?;
    ctx.tell(RunEvent::Started { job: job.id.clone() });
    // A spinner per running job, where someone sees it: each one ticks on a thread of its own.
    let bar = (!ctx.progress.is_hidden()).then(|| {
        let bar = ctx.progress.add(ProgressBar::new_spinner());
        bar.set_message(format!("{}: running", job.id));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let result = execute(ctx, job, &image, resolved, action_key, queued_unix_ms).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
        ctx.progress.remove(&bar);
    }
    result
}

/// Sends the job's outputs its `upload` map names, one after another, and returns their records.
async fn upload_outputs(ctx: &Ctx, job: &Job, report: &JobReport) -> Vec<crate::data::upload::UploadRecord> {
    let mut records = Vec::new();
    for (output, target) in &job.uploads {
        let Some((_, digest)) = report.outputs.iter().find(|(n, _)| n == output) else { continue };
        if target.is_kept_elsewhere() {
            // A presigned URL of a mesh DAG: the node it was submitted to holds it whole, and
            // sends this output itself.
            tracing::info!(job = %job.id, output, destination = %target.redacted(), "sent by the submitting node");
            continue;
        }
        let r = crate::data::upload::upload_output(
            &ctx.runner.transfers,
            &ctx.runner.store,
            &job.id,
            output,
            digest.hash,
            target,
            report.record,
            ctx.mesh_dag,
        )
        .await;
        records.push(r);
    }
    records
}

/// The report for a job the action cache answers, if it does.
async fn cached_report(ctx: &Ctx, job: &Job, action_key: &Hash) -> Result<Option<JobReport>> {
    let Some(record_hash) = ctx.runner.store.action_get(action_key).await? else { return Ok(None) };
    let Some(signed) = ctx.runner.store.get_record(record_hash).await? else { return Ok(None) };
    // Read back by hash from our store, which checked its signature when it entered.
    let record = match signed.record_trusted() {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(%record_hash, "ignoring a cached record that does not decode: {e}");
            return Ok(None);
        }
    };
    let mut report = JobReport::new(&job.id, Status::Done);
    report.cached = true;
    report.wall_ms = Some(record.timing.wall_ms);
    report.outputs = record.outputs.into_iter().collect();
    report.record = Some(record_hash);
    report.action_key = Some(*action_key);
    report.exit = Some(record.exit);
    Ok(Some(report))
}

async fn resolve_image(
    ctx: &Ctx,
    image: &ImageRef,
    arch: Option<shoal_dag::Arch>,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
) -> Result<(Hash, Arc<Image>)> {
    match image {
        ImageRef::Job { job, output } => {
            let digest = upstream_output(upstream, job, output)?;
            let tmp = tempfile::Builder::new().prefix("image-").tempdir_in(ctx.runner.store.tmp_root()?)?;
            let path = tmp.path().join("image");
            match digest.kind {
                DigestKind::File => ctx.runner.store.export(digest.hash, &path).await?,
                DigestKind::Tree => ctx.runner.store.materialize_read_only(digest.hash, &path).await?,
            }
            let id = ctx.runner.store.import_image_path(&path, None).await.with_context(|| {
                format!("the output `{output}` of job `{job}` is not an OCI layout, OCI archive or docker-save archive")
            })?;
            let image =
                ctx.runner.store.get_image(id).await?.ok_or_else(|| anyhow!("image {id} vanished after import"))?;
            Ok((id, Arc::new(image)))
        }
        other => {
            // One resolution per image per run: jobs asking at once wait for the first.
            let name = format!("{other:?} {arch:?}");
            let cell = ctx.images.lock().expect("image cache lock").entry(name).or_default().clone();
            let resolved = cell
                .get_or_try_init(|| async {
                    let (id, image) = ctx.runner.store.resolve_image_for(other, arch.map(|a| a.name())).await?;
                    Ok::<_, anyhow::Error>((id, Arc::new(image)))
                })
                .await?;
            Ok(resolved.clone())
        }
    }
}

fn upstream_output<'a>(
    upstream: &'a BTreeMap<String, BTreeMap<String, Digest>>,
    job: &str,
    output: &str,
) -> Result<&'a Digest> {
    upstream
        .get(job)
        .and_then(|outs| outs.get(output))
        .ok_or_else(|| anyhow!("job `{job}` finished without producing output `{output}`"))
}

async fn resolve_input(
    ctx: &Ctx,
    input: &InputRef,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
) -> Result<Digest> {
    match input {
        InputRef::Job { job, output } => Ok(upstream_output(upstream, job, output)?.clone()),
        InputRef::Blake3(hash) => digest_of_stored(&ctx.runner.store, *hash).await,
        InputRef::Sha256(hex) => {
            let hash =
                ctx.runner.store.by_sha256(hex)?.ok_or_else(|| {
                    anyhow!("no stored blob has sha256:{hex}; store it first with `shoal blob put FILE`")
                })?;
            digest_of_stored(&ctx.runner.store, hash).await
        }
        InputRef::File(path) if ctx.files.is_some() => match ctx.files.as_ref().and_then(|f| f.get(path)) {
            Some(Ok(digest)) => Ok(digest.clone()),
            Some(Err(why)) => Err(anyhow!("{why}")),
            None => bail!("the client sent no content for `file:{path}`; send every `file:` input with the DAG"),
        },
        InputRef::Url { url, pin } => fetched(ctx, crate::data::Source::Url(url.clone()), pin.as_ref(), input).await,
        InputRef::S3 { object, pin } => fetched(ctx, crate::data::Source::S3(object.clone()), pin.as_ref(), input).await,
        InputRef::Path { base, path } => {
            let tree = Box::pin(resolve_input(ctx, base, upstream)).await?;
            Ok(ctx.runner.store.tree_path(&tree, path).await?)
        }
        InputRef::Select { base, include, exclude } => {
            let tree = Box::pin(resolve_input(ctx, base, upstream)).await?;
            Ok(ctx.runner.store.select(&tree, include, exclude).await?)
        }
        InputRef::File(path) => {
            let path = ctx.dag_dir.join(path);
            let meta =
                std::fs::metadata(&path).with_context(|| format!("cannot read the input file {}", path.display()))?;
            if meta.is_dir() {
                Ok(ctx.runner.store.put_tree_from_dir(&path).await?)
            } else {
                let (hash, size) = ctx.runner.store.put_file(&path).await?;
                Ok(Digest { hash, kind: DigestKind::File, size })
            }
        }
    }
}

/// A URL or object fetched into the store, once per run whatever the jobs reading it.
async fn fetched(ctx: &Ctx, source: crate::data::Source, pin: Option<&shoal_dag::UrlPin>, input: &InputRef) -> Result<Digest> {
    let key = match &source {
        crate::data::Source::Url(u) => format!("{u}#{pin:?}"),
        crate::data::Source::S3(o) => format!("{o}#{pin:?}"),
    };
    let cell = ctx.fetched.lock().expect("fetch cache lock").entry(key).or_default().clone();
    let digest = cell
        .get_or_try_init(|| async {
            ctx.runner.transfers.fetch(&ctx.runner.store, &source, pin).await.with_context(|| format!("fetching {input}"))
        })
        .await?;
    Ok(digest.clone())
}

/// The digest of a stored blob given by hash alone (the store knows which hashes are trees).
pub async fn digest_of_stored(store: &Store, hash: Hash) -> Result<Digest> {
    let size = store
        .size(hash)
        .await?
        .ok_or_else(|| anyhow!("blob {hash} is not in this store; add it with `shoal blob put`"))?;
    let kind = if store.is_tree(hash) { DigestKind::Tree } else { DigestKind::File };
    Ok(Digest { hash, kind, size })
}

/// Runs a job that the cache did not answer, and records what happened.
async fn execute(
    ctx: &Ctx,
    job: &Job,
    image: &Image,
    resolved: ResolvedJob,
    action_key: Hash,
    queued_unix_ms: u64,
) -> Result<JobReport> {
    let work = ctx.runner.work_dirs.take(&ctx.runner.store.tmp_root()?)?;
    let rootfs = ctx.runner.store.rootfs(image.rootfs).await.context("materializing the image's root filesystem")?;
    let input_dir = work.path().join("inputs");
    if !resolved.inputs.is_empty() {
        std::fs::create_dir(&input_dir)?;
    }
    let mut mounts = Vec::new();
    for (name, digest) in &resolved.inputs {
        let path = input_dir.join(name);
        write_out(ctx, digest, &path).await?;
        mounts.push(InputMount { name: name.clone(), host_path: path });
    }
    let stdin = match &resolved.stdin {
        Some(digest) => {
            let path = work.path().join("stdin");
            write_out(ctx, digest, &path).await?;
            Some(path)
        }
        None => None,
    };
    let (uid, gid) = user_ids(&rootfs, job.user.as_deref().or(image.config.user.as_deref()))?;
    let mut env: BTreeMap<String, String> = image
        .config
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    env.extend(job.env.clone());
    let mut argv = image.config.entrypoint.clone();
    argv.extend(job.command.iter().cloned());
    let r = &job.requirements;
    // GPUs asked for: lent for the run; their device nodes and driver libraries shown at their
    // own paths in the namespace sandbox, or (bound to vfio-pci) passed whole to the microVM.
    let in_vm = r.isolation == Some(shoal_dag::Isolation::Vm) || ctx.backend == super::BackendChoice::MicrovmOnly;
    let gpus = match &r.gpu {
        Some(g) if g.count > 0 => {
            Some(ctx.runner.gpus.take(g.count, g.model.as_deref(), in_vm).await.map_err(|e| anyhow!(e))?)
        }
        _ => None,
    };
    let gpus_vfio = gpus.as_ref().map(|l| l.vfio());
    let (host_mounts, pci_devices) = match &gpus {
        Some(l) if l.vfio() => (Vec::new(), l.pci_devices()),
        Some(l) => (crate::gpu::host_mounts(l.gpus()), Vec::new()),
        None => (Vec::new(), Vec::new()),
    };
    let request = Request {
        rootfs,
        argv,
        env: env.into_iter().collect(),
        workdir: job.workdir.clone().or_else(|| image.config.workdir.clone()).unwrap_or_else(|| "/".into()),
        uid,
        gid,
        stdin,
        inputs: mounts,
        outputs: job.outputs.clone().into(),
        limits: Limits {
            cores: r.cores,
            memory_bytes: r.memory_bytes,
            scratch_bytes: r.scratch_bytes,
            output_bytes_max: r.output_bytes_max,
            stdout_bytes_max: STDOUT_BYTES_MAX,
            timeout_ms: r.timeout_ms,
            pids_max: r.pids_max,
        },
        network: r.network,
        work_dir: work.path().to_path_buf(),
        host_mounts,
        pci_devices,
    };
    let started_unix_ms = now_unix_ms();
    let backend = backend_for(ctx, job, gpus_vfio).await?;
    // Cores are held while the job runs, not while its inputs are written, its sandbox is
    // built (the backend calls the gate when it is) or its outputs stored: those overlap with
    // other jobs' runs.
    // The work directory goes to the backend's thread and comes back with it: a job stopped
    // while its backend runs (a mesh claim lost) must not give the directory to another job
    // while the sandbox still writes in it.
    let (gate, rt) = (ctx.cores_gate(job.requirements.cores), tokio::runtime::Handle::current());
    let start = Instant::now();
    let (outcome, _work) = tokio::task::spawn_blocking(move || {
        let mut held = None;
        let outcome = backend.run_gated(request, &mut || held = rt.block_on(gate.acquire()).ok());
        drop(held);
        (outcome, work)
    })
    .await
    .context("the backend thread panicked")?;
    let outcome = outcome?;
    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, exit = ?outcome.exit, "job finished");

    // From the first output stored to the record that keeps them, gc waits.
    let _writing = ctx.runner.store.writing().await;
    let mut outputs = BTreeMap::new();
    let mut exit = outcome.exit.clone();
    let stdout = if ctx.runner.test_flip_outputs {
        tracing::warn!("--test-flip-outputs: flipping the first byte of the job's stdout");
        flipped(ctx, &outcome.stdout).await?
    } else {
        put_captured(ctx, &outcome.stdout).await?
    };
    let stderr = put_captured(ctx, &outcome.stderr).await?;
    for (name, spec) in &job.outputs {
        let digest = match spec {
            shoal_dag::OutputSpec::Stdout => stdout.clone(),
            shoal_dag::OutputSpec::Stderr => stderr.clone(),
            _ => match outcome.outputs.get(name) {
                Some(CollectedOutput::File(path)) => {
                    let (hash, size) = ctx.runner.store.put_file(path).await?;
                    Digest { hash, kind: DigestKind::File, size }
                }
                Some(CollectedOutput::Dir(path)) => ctx.runner.store.put_tree_from_dir(path).await?,
                None => {
                    if exit.success() {
                        exit = Exit::Error(format!("output `{name}` ({spec}) was not produced"));
                    }
                    continue;
                }
            },
        };
        outputs.insert(name.clone(), digest);
    }
    let finished_unix_ms = now_unix_ms();
    let mut machine = ctx.runner.machine.clone();
    machine.accelerator = outcome.accelerator.clone();
    machine.backend = outcome.backend.clone();
    machine.qemu = outcome.vm.as_ref().map(|v| v.qemu.clone());
    machine.guest_kernel = outcome.vm.as_ref().map(|v| v.guest_kernel.clone());
    machine.emulation = crate::machine::emulation_for(job.requirements.arch).ok().flatten();
    machine.gpus = gpus.iter().flat_map(|l| l.gpus()).map(crate::gpu::Gpu::describe).collect();
    drop(gpus);
    if let Some(vm) = &outcome.vm {
        tracing::debug!(timeline = ?vm.timeline, "microVM boot timeline (ms since QEMU started)");
    }
    let record = RunRecord {
        version: RUN_RECORD_VERSION,
        job_id: job.id.clone(),
        action_key,
        job: resolved,
        requirements: job.requirements.clone(),
        outputs: outputs.clone(),
        stdout,
        stderr,
        exit: exit.clone(),
        timing: Timing {
            queued_unix_ms,
            started_unix_ms,
            finished_unix_ms,
            wall_ms: outcome.wall_ms,
            user_ms: outcome.user_ms,
            sys_ms: outcome.sys_ms,
            peak_memory_bytes: outcome.peak_memory_bytes,
        },
        machine,
        holders: vec![ctx.runner.machine.node_id.clone()],
    };
    let signed = record.sign(&ctx.runner.key);
    let success = exit.success();
    let record_hash = if success {
        ctx.runner.store.put_record_for_action(&signed, &action_key, ctx.records).await?
    } else {
        ctx.runner.store.put_record(&signed, ctx.records).await?
    };
    let mut report = JobReport::new(&job.id, if success { Status::Done } else { Status::Failed });
    report.wall_ms = Some(outcome.wall_ms);
    report.vm_timeline = outcome.vm.as_ref().map(|v| Box::new(v.timeline));
    report.outputs = outputs.into_iter().collect();
    report.record = Some(record_hash);
    report.action_key = Some(action_key);
    if !success {
        report.error = Some(describe_exit(&exit, LimitsOf::Dag));
        report.stderr_tail = Some(output::tail(&outcome.stderr.tail(STDERR_TAIL_BYTES_MAX), STDERR_TAIL_LINES));
    }
    report.exit = Some(exit);
    Ok(report)
}

/// Whose limits a job ran under, for what the description of its end tells to do.
pub(crate) enum LimitsOf<'a> {
    /// The DAG's own `requirements`: the fix is to raise them.
    Dag,
    /// An explorer catalogue image's, which its user cannot change: they are named.
    Image(&'a shoal_dag::Requirements),
}

/// How a job ended, in words, with what to do about it.
pub(crate) fn describe_exit(exit: &Exit, limits: LimitsOf<'_>) -> String {
    use LimitsOf::{Dag, Image};
    match (exit, limits) {
        (Exit::Code(0), Image(_)) => "finished".into(),
        (Exit::Code(code), _) => format!("exited with code {code}"),
        (Exit::Signal(sig), _) => format!("killed by signal {sig}"),
        (Exit::Timeout, Dag) => "ran past its timeout and was killed; raise `requirements.timeout`".into(),
        (Exit::Timeout, Image(r)) => {
            format!("timed out: still running after {}, this image's limit", output::millis(r.timeout_ms))
        }
        (Exit::Oom, Dag) => "ran out of memory and was killed; raise `requirements.memory`".into(),
        (Exit::Oom, Image(r)) => {
            format!("out of memory: it needed more than {}, this image's limit", output::bytes(r.memory_bytes))
        }
        (Exit::OutputTooLarge { output, limit_bytes }, Dag) => format!(
            "output `{output}` exceeded its limit of {}; raise `requirements.output_size` or write less",
            output::bytes(*limit_bytes)
        ),
        (Exit::OutputTooLarge { output, limit_bytes }, Image(_)) => {
            format!("wrote too much: `{output}` went past {}, this image's output limit", output::bytes(*limit_bytes))
        }
        (Exit::Error(msg), Dag) => msg.clone(),
        (Exit::Error(msg), Image(_)) => format!("the run failed: {msg}"),
    }
}

/// A job's stdout or stderr into the store, from memory or streamed from its file.
async fn put_captured(ctx: &Ctx, captured: &shoal_vm::Captured) -> Result<Digest> {
    match captured {
        shoal_vm::Captured::Bytes(b) => put_bytes(ctx, b.clone()).await,
        shoal_vm::Captured::File { path, .. } => {
            let (hash, size) = ctx.runner.store.put_file(path).await?;
            Ok(Digest { hash, kind: DigestKind::File, size })
        }
    }
}

/// What was captured with its first byte flipped, stored (`--test-flip-outputs`).
async fn flipped(ctx: &Ctx, captured: &shoal_vm::Captured) -> Result<Digest> {
    let mut bytes = match captured {
        shoal_vm::Captured::Bytes(b) => b.clone(),
        shoal_vm::Captured::File { path, .. } => tokio::fs::read(path).await?,
    };
    if let Some(b) = bytes.first_mut() {
        *b ^= 1;
    }
    put_bytes(ctx, bytes).await
}

async fn put_bytes(ctx: &Ctx, bytes: Vec<u8>) -> Result<Digest> {
    let size = bytes.len() as u64;
    let hash = ctx.runner.store.put_bytes(bytes).await?;
    Ok(Digest { hash, kind: DigestKind::File, size })
}

/// Writes a stored blob or tree to `path` on the host.
async fn write_out(ctx: &Ctx, digest: &Digest, path: &Path) -> Result<()> {
    match digest.kind {
        DigestKind::File => ctx.runner.store.export(digest.hash, path).await?,
        DigestKind::Tree => ctx.runner.store.materialize_read_only(digest.hash, path).await?,
    }
    Ok(())
}

/// Turns a job's or image's `user` (`uid`, `uid:gid`, `name` or `name:group`) into ids, looking
/// names up in the image's own /etc/passwd and /etc/group.
fn user_ids(rootfs: &Path, user: Option<&str>) -> Result<(u32, u32)> {
    let Some(user) = user.filter(|u| !u.is_empty()) else { return Ok((0, 0)) };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    // Fields of the line of `file` whose field `key` equals `value`.
    let find = |file: &str, key: usize, value: &str| -> Option<Vec<String>> {
        file.lines()
            .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.get(key).map(String::as_str) == Some(value))
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, find(&passwd, 2, u).and_then(|f| f.get(3)?.parse().ok())),
        Err(_) => {
            let f = find(&passwd, 0, u)
                .ok_or_else(|| anyhow!("user `{u}` is not in the image's /etc/passwd; use a numeric uid"))?;
            let uid = f
                .get(2)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("the image's /etc/passwd entry for `{u}` is malformed"))?;
            (uid, f.get(3).and_then(|v| v.parse().ok()))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => find(&group, 0, g)
                .and_then(|f| f.get(2)?.parse().ok())
                .ok_or_else(|| anyhow!("group `{g}` is not in the image's /etc/group; use a numeric gid"))?,
        },
        None => primary_gid.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// Why this machine cannot run a job with `req`, checked as the mesh checks a node
/// (`shoal_mesh::capabilities::mismatches`): its architecture, memory, CPU flags and GPUs. Cores
/// are checked against the run's budget, isolation by the backend, and labels only place jobs on
/// a mesh's nodes. A job run anyway would fail in ways that name nothing, or, worse, succeed and
/// cache a result keyed for a CPU it did not run on.
pub(crate) fn unmet_here(req: &shoal_dag::Requirements, machine: &shoal_dag::Machine) -> Option<String> {
    use shoal_mesh::capabilities::{Capabilities, Mismatch, SPEED_REFERENCE, mismatches};
    let here = Capabilities {
        arch: crate::machine::dag_arch(),
        cores: u32::MAX,
        memory_bytes: machine.memory_bytes,
        cpu_flags: machine.cpu_flags.iter().cloned().collect(),
        gpus: crate::gpu::host().iter().map(crate::gpu::Gpu::cap).collect(),
        labels: Default::default(),
        microvm: true,
        vm_accel: None,
        speed: SPEED_REFERENCE,
        emulated: crate::machine::emulated_arches()
            .iter()
            .map(|(arch, _)| shoal_mesh::capabilities::Emulated { arch: *arch, speed: SPEED_REFERENCE })
            .collect(),
    };
    let unmet: Vec<String> = mismatches(req, &here)
        .into_iter()
        .filter(|m| {
            matches!(
                m,
                Mismatch::Arch { .. } | Mismatch::Memory { .. } | Mismatch::CpuFlags { .. } | Mismatch::Gpu { .. }
            )
        })
        .map(|m| m.to_string())
        .collect();
    (!unmet.is_empty()).then(|| {
        format!(
            "this machine cannot run it: it {}; change the job's `requirements`, or run it on a mesh \
             that has such a node (`shoal submit`)",
            unmet.join("; it ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_is_told_with_what_its_reader_can_do() {
        let req = shoal_dag::Requirements { timeout_ms: 2_000, memory_bytes: 32 << 20, ..Default::default() };
        let image = || LimitsOf::Image(&req);
        // A DAG's author is told which requirement to raise; an explorer user, the image's limit.
        assert!(describe_exit(&Exit::Timeout, LimitsOf::Dag).contains("raise `requirements.timeout`"));
        assert_eq!(describe_exit(&Exit::Timeout, image()), "timed out: still running after 2.00 s, this image's limit");
        assert!(describe_exit(&Exit::Oom, LimitsOf::Dag).contains("raise `requirements.memory`"));
        assert!(describe_exit(&Exit::Oom, image()).contains("more than 32.0 MiB"));
        assert_eq!(describe_exit(&Exit::Code(0), image()), "finished");
        assert_eq!(describe_exit(&Exit::Code(3), LimitsOf::Dag), "exited with code 3");
        assert_eq!(describe_exit(&Exit::Error("no room".into()), LimitsOf::Dag), "no room");
    }
}

#[cfg(test)]
mod unmet_tests {
    use super::*;

    fn machine() -> shoal_dag::Machine {
        shoal_dag::Machine {
            node_id: "n".into(),
            hostname: "h".into(),
            kernel: "k".into(),
            cpu_model: "c".into(),
            cpu_flags: vec!["avx2".into(), "sse4_2".into()],
            arch: "x86_64".into(),
            cores: 2,
            memory_bytes: 8 << 30,
            backend: "namespace".into(),
            accelerator: None,
            qemu: None,
            guest_kernel: None,
            emulation: None,
            gpus: Vec::new(),
            kernel_config: None,
            shoal_version: None,
        }
    }

    #[test]
    fn a_job_this_machine_cannot_run_is_refused_with_what_it_lacks() {
        use shoal_dag::{Gpu, Requirements};
        let fits = Requirements { cpu_flags: vec!["avx2".into()], memory_bytes: 1 << 30, ..Requirements::default() };
        assert_eq!(unmet_here(&fits, &machine()), None);
        let labelled = Requirements { labels: [("pool".into(), "night".into())].into(), ..Requirements::default() };
        assert_eq!(unmet_here(&labelled, &machine()), None, "labels place jobs on a mesh only");
        let not = Requirements {
            cpu_flags: vec!["avx512f".into()],
            memory_bytes: 64 << 30,
            gpu: Some(Gpu { count: 1, model: None }),
            ..Requirements::default()
        };
        let why = unmet_here(&not, &machine()).expect("refused");
        assert!(why.contains("avx512f") && why.contains("65536 MiB") && why.contains("GPU"), "{why}");
    }
}
