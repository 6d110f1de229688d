//! `shoal run DAG`: the runner, and how a DAG's jobs go through it.
//!
//! A process has one [`Runner`]: the store, the signing key, the machine's facts, the backends
//! (and their warm microVMs), ONE budget of cores and of jobs in flight, and the pool of job
//! work directories. Every run of the process goes through it — `shoal run`'s DAG, a node's mesh
//! jobs, its explorer runs and its local runs — so together they never take more than the
//! process's `--cores`. A run is a [`Ctx`] made by [`Runner::prepare`]: the DAG and what is its
//! own (where its `file:` inputs come from, who follows it, its image resolutions, whether it may
//! use the cache, its progress bars), dropped when the run ends.
//!
//! Every job becomes a task as soon as its dependencies are done. The task resolves the job's
//! references to hashes, computes the action key and answers from the action cache when it can;
//! otherwise it waits for cores (the runner's), runs the job through the backend, stores
//! outputs, and writes a signed run record. A failed job marks its dependants skipped.
//!
//! The code is split by concern: this file holds what a run is asked and reports (its options,
//! the per-job reports and how they print) and the walk of a DAG's jobs; `runner.rs` the
//! [`Runner`] and a run's [`Ctx`] (budgets, backends, work directories); `job.rs` one job from
//! its references to its run record.

mod job;
mod runner;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shoal_blobs::{Durability, Store};
use shoal_dag::{Dag, Digest, Exit, Hash, RunRecord};
use tokio::task::JoinSet;
use tracing::{Instrument, info_span};

use crate::output;
use crate::{EXIT_ERROR, EXIT_JOB_FAILED};
pub use job::digest_of_stored;
use job::job_task;
pub(crate) use job::{LimitsOf, describe_exit, unmet_here};
use runner::JOBS_IN_FLIGHT_PER_CORE;
pub use runner::SANDBOX_SUBCOMMAND;
pub(crate) use runner::{Ctx, Runner};

/// Job tasks alive at once per job allowed in flight: the rest look up the action cache and
/// resolve references while those run, so a cached job never waits behind a running one.
const JOB_TASKS_PER_IN_FLIGHT: usize = 4;
/// Job tasks alive at once, at least (a machine of few cores still overlaps many cache lookups).
const JOB_TASKS_MIN: usize = 64;

/// Which backend a run uses for jobs that do not choose (`isolation` unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// A microVM per job (the default). Jobs marked `isolation: namespace` use the namespace sandbox.
    Microvm,
    /// The namespace sandbox for every job; a job that requires `isolation: vm` fails with the reason.
    Namespace,
    /// A microVM for every job, `isolation: namespace` ones too: the machine's owner has not let
    /// jobs run on its kernel (a live stick's `backend = "microvm"`). The stronger sandbox meets
    /// the weaker requirement.
    MicrovmOnly,
}

impl BackendChoice {
    /// The name `--backend` takes, and run records and the explorer show.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Microvm => "microvm",
            BackendChoice::Namespace => "namespace",
            BackendChoice::MicrovmOnly => "microvm-only",
        }
    }

    /// Whether jobs can run in microVMs here.
    pub fn has_microvm(self) -> bool {
        self != BackendChoice::Namespace
    }
}

/// How a process's [`Runner`] is built ([`Runner::new`]: `backend`, `cores`, `warm_vms`) and how
/// one run goes ([`Runner::prepare`]: every field but `warm_vms`).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The backend of jobs that do not choose: the runner's default, or this run's.
    pub backend: BackendChoice,
    pub json: bool,
    pub use_cache: bool,
    /// The runner's core budget (None: this machine's cores); for a run, at most this many of
    /// the runner's cores (None or more: all of them).
    pub cores: Option<u32>,
    /// MicroVMs kept booted per kind of job; read once, when the runner is built (the warm pool
    /// is the runner's).
    pub warm_vms: usize,
    /// How durable each job's run record is when the job is reported done: `Soon` for a
    /// local run (it flushes at its end), `Now` where other nodes are told of the record.
    pub records: Durability,
    /// Largest DAG file read, bytes.
    pub dag_bytes_max: usize,
    /// Tests only: flip the first byte of every job's stdout before it is stored (a machine
    /// with failing RAM, for the tests of `shoal verify`); read when the runner is built.
    pub test_flip_outputs: bool,
    /// Limits of URL and `s3://` transfers; read once, when the runner is built.
    pub transfers: crate::data::TransferLimits,
}

#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Done,
    Failed,
    Skipped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Done => "done",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
        })
    }
}

/// What `shoal run` reports per job (the table row, or one element of `--json`). A run keeps one
/// per job until it ends, so it is kept small: outputs in a sorted vector (a `BTreeMap` of one
/// entry allocates a node of eleven, 800 bytes here), the microVM timeline boxed.
#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    pub job: String,
    pub status: Status,
    pub cached: bool,
    /// A result of another node's, taken from the mesh-wide action cache: that node's id (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<String>,
    pub wall_ms: Option<u64>,
    /// By output name, sorted; serialized as a map.
    #[serde(serialize_with = "outputs_as_map")]
    pub outputs: Vec<(String, Digest)>,
    pub record: Option<Hash>,
    pub action_key: Option<Hash>,
    pub exit: Option<Exit>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
    /// For a job run in a microVM: ms from QEMU's start to kernel entry (an upper bound),
    /// guest-init, job start and end, reply written, QEMU's exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_timeline: Option<Box<shoal_vm::microvm::BootTimeline>>,
    /// The outcomes of the job's uploads (its `upload` map), after it succeeded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uploads: Vec<crate::data::upload::UploadRecord>,
}

fn outputs_as_map<S: serde::Serializer>(outputs: &[(String, Digest)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(outputs.iter().map(|(k, v)| (k, v)))
}

impl JobReport {
    pub(super) fn new(job: &str, status: Status) -> Self {
        JobReport {
            job: job.to_string(),
            status,
            cached: false,
            cached_from: None,
            wall_ms: None,
            outputs: Vec::new(),
            record: None,
            action_key: None,
            exit: None,
            error: None,
            stderr_tail: None,
            vm_timeline: None,
            uploads: Vec::new(),
        }
    }
}

/// A step of a run, for a client that draws its progress (`shoal run` through a node).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run resolved its DAG: this many jobs.
    Jobs { count: usize },
    /// A job the cache did not answer started running.
    Started { job: String },
    /// A job ended (done, failed or skipped).
    Finished { job: String, ok: bool },
}

/// Where a run's `file:` inputs come from and who follows it, beyond what [`RunOptions`] says.
#[derive(Default)]
pub struct RunSource {
    /// `file:` contents sent by a client, by path as written in the DAG (or why the client could
    /// not read one: the job fails with that); `None`: read them from the DAG file's directory.
    pub files: Option<BTreeMap<String, Result<Digest, String>>>,
    pub events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
    /// Where a job whose action this store has no record of asks next (a node's mesh-wide
    /// action cache); `None`: this store alone.
    pub remote_cache: Option<std::sync::Arc<dyn RemoteCache>>,
    /// The mesh DAG this run belongs to (its upload records name it).
    pub mesh_dag: Option<Hash>,
}

/// Results made elsewhere: a node's mesh-wide action cache, asked by a run for an action its own
/// store has no record of.
pub trait RemoteCache: Send + Sync {
    /// A record of `action` made elsewhere, its signature verified, with its outputs, stdout and
    /// stderr now in this store and this store's action cache pointing at it; returns who made
    /// it (a node id, hex). `None` when no node has one to give, or none could be fetched.
    /// `stale`: records not to use (their outputs were reported lost).
    fn fetch<'a>(
        &'a self,
        action: Hash,
        stale: &'a std::collections::BTreeSet<Hash>,
    ) -> futures::future::BoxFuture<'a, Option<String>>;

    /// Whether `record`, which this store's own action cache names, was made by a node the mesh
    /// quarantined since (its results answer no cache, this store's included).
    fn refuses(&self, record: Hash) -> futures::future::BoxFuture<'_, bool>;
}

/// What `shoal run` prints once its jobs have ended: stdout (the table or the JSON), stderr (each
/// failure), and whether every job is done.
pub struct Rendered {
    pub stdout: String,
    pub stderr: String,
    pub ok: bool,
}

/// The output of `shoal run` for these reports, the same wherever the run happened.
pub fn render(reports: &[JobReport], json: bool) -> Result<Rendered> {
    use crate::data::upload::UploadState;
    use std::fmt::Write;
    // A failed upload fails the run (the output is stored: `shoal upload retry` sends it).
    let ok = reports.iter().all(|r| r.status == Status::Done && r.uploads.iter().all(|u| u.state == UploadState::Done));
    let mut stdout = String::new();
    let mut stderr = String::new();
    if json {
        writeln!(stdout, "{}", json_text(ok, reports)?)?;
    } else {
        writeln!(stdout, "{}", output::summary(reports))?;
        for u in reports.iter().flat_map(|r| &r.uploads) {
            match u.state {
                UploadState::Done => writeln!(stdout, "uploaded {}", u.line())?,
                UploadState::Pending => writeln!(stdout, "upload {}", u.line())?,
                UploadState::Failed => writeln!(
                    stderr,
                    "
upload {}",
                    u.line()
                )?,
            }
        }
        for r in reports.iter().filter(|r| r.status == Status::Failed) {
            writeln!(stderr, "\njob `{}` failed: {}", r.job, r.error.as_deref().unwrap_or("see its stderr"))?;
            if let Some(tail) = r.stderr_tail.as_deref().filter(|t| !t.is_empty()) {
                writeln!(stderr, "--- last lines of its stderr (all of it: `shoal log {}`) ---\n{tail}", r.job)?;
            }
        }
    }
    Ok(Rendered { stdout, stderr, ok })
}

/// The bytes of a DAG file, refused past `max_bytes` before they are read (a 200 MB DAG took
/// 1.5 GB to parse).
pub fn read_dag_file(path: &Path, max_bytes: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read the DAG file {}", path.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("the DAG file {} is not a regular file", path.display());
    }
    let too_big = |len: u64| {
        anyhow!(
            "the DAG file {} is {len} bytes; a DAG file is at most {max_bytes} bytes (`--dag-size-max`): split it, or \
             put large data in inputs (`file:`, `blake3:`) instead of the DAG",
            path.display()
        )
    };
    if meta.len() > max_bytes as u64 {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Where `shoal run --provenance` commits the run.
#[derive(Clone, Debug)]
pub struct ProvenanceTarget {
    pub repo: PathBuf,
    /// Push the branch to `origin` after committing.
    pub push: bool,
}

pub async fn run_dag_file(
    store: &Store,
    path: &Path,
    opts: &RunOptions,
    provenance: Option<&ProvenanceTarget>,
) -> Result<ExitCode> {
    let bytes = read_dag_file(path, opts.dag_bytes_max)?;
    let crate::provenance::ParsedDag { dag, json_text, run_file, .. } =
        match crate::provenance::parse_dag_or_run_file(&path.display().to_string(), &bytes) {
            Ok(parsed) => {
                output::print_warnings(&parsed.warnings);
                parsed
            }
            Err(diagnostics) => {
                eprintln!("{diagnostics}");
                return Ok(ExitCode::from(EXIT_ERROR));
            }
        };
    drop(bytes);
    // Everything the commit at the end needs is checked before any job runs.
    let repo = match provenance {
        Some(p) => Some(tokio::task::block_in_place(|| crate::provenance::Repo::open(&p.repo))?),
        None => None,
    };
    if let Some(repo) = &repo {
        repo.check_ready()?;
    }
    let dag_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let runner = Runner::new(store, opts)?;
    let started = std::time::Instant::now();
    let kept = repo.as_ref().map(|_| dag.clone());
    let reports = run_dag(&runner, dag, dag_dir, opts, RunSource::default()).await?;
    let wall_ms = started.elapsed().as_millis() as u64;
    let out = render(&reports, opts.json)?;
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    if let (Some(repo), Some(dag), Some(p)) = (&repo, kept, provenance) {
        let facts =
            crate::provenance::RunFacts::local(store, path.display().to_string(), json_text, dag, &reports, wall_ms)
                .await?;
        let facts = crate::provenance::RunFacts { run_file, ..facts };
        tokio::task::block_in_place(|| crate::provenance::commit_run(repo, &facts, p.push))?;
    }
    Ok(if out.ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_JOB_FAILED) })
}

/// `{"jobs": [...], "ok": ...}`, pretty, each object's keys sorted (as a `serde_json::Value`
/// prints them), written report by report: a `Value` of the whole run took 2 KB per job at the
/// end of a big one.
fn json_text(ok: bool, reports: &[JobReport]) -> Result<String> {
    use serde::ser::{Error as _, SerializeSeq};
    struct Sorted<'a>(&'a [JobReport]);
    impl Serialize for Sorted<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for r in self.0 {
                seq.serialize_element(&serde_json::to_value(r).map_err(S::Error::custom)?)?;
            }
            seq.end()
        }
    }
    #[derive(Serialize)]
    struct Run<'a> {
        jobs: Sorted<'a>,
        ok: bool,
    }
    let mut out = Vec::new();
    serde_json::to_writer_pretty(&mut out, &Run { jobs: Sorted(reports), ok })?;
    Ok(String::from_utf8(out)?)
}

/// Runs the job at `idx` of the prepared DAG, given the outputs of the jobs it depends on.
pub(crate) async fn run_one(ctx: &Ctx, idx: usize, upstream: &BTreeMap<String, BTreeMap<String, Digest>>) -> JobReport {
    job_task(ctx, idx, upstream, &BTreeSet::new()).await
}

/// [`run_one`], where an action-cache hit naming one of `stale` records is a miss: the mesh
/// reported those records' outputs lost, and answering with one again would never count (a node
/// claimed, "finished" from its cache and claimed again, 10 times a second, for good).
pub(crate) async fn run_one_fresh(
    ctx: &Ctx,
    idx: usize,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
    stale: &BTreeSet<Hash>,
) -> JobReport {
    job_task(ctx, idx, upstream, stale).await
}

/// Runs every job of `dag` on `runner`, returning one report per job in file order; `source`
/// gives the `file:` contents a client sent and a listener for its progress, if any.
pub(crate) async fn run_dag(
    runner: &Arc<Runner>,
    dag: Dag,
    dag_dir: PathBuf,
    opts: &RunOptions,
    source: RunSource,
) -> Result<Vec<JobReport>> {
    let n = dag.jobs.len();
    let ctx = runner.prepare(dag, dag_dir, opts, source);
    ctx.tell(RunEvent::Jobs { count: n });
    let overall = ctx.progress.add(ProgressBar::new(n as u64));
    overall.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} jobs {msg}")
            .expect("static template"),
    );
    overall.enable_steady_tick(Duration::from_millis(120));

    let deps = ctx.dag.all_dependencies();
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependants[d].push(i);
        }
    }
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut reports: Vec<Option<JobReport>> = vec![None; n];
    let mut tasks: JoinSet<(usize, JobReport)> = JoinSet::new();
    // Jobs whose dependencies are done, in the order they became ready, waiting for a task. A
    // task lives from its job's cache lookup to its end, so tasks are started only while fewer
    // than `tasks_max` are alive: spawning every ready job at once kept a task (4.5 KB in a debug
    // build) per job of a wide DAG until its turn came.
    let mut ready: VecDeque<usize> = ctx.dag.topo_order().into_iter().filter(|&i| waiting[i] == 0).collect();
    let tasks_max = (ctx.cores_total() as usize * JOBS_IN_FLIGHT_PER_CORE * JOB_TASKS_PER_IN_FLIGHT).max(JOB_TASKS_MIN);
    let spawn = |tasks: &mut JoinSet<(usize, JobReport)>, idx: usize, reports: &[Option<JobReport>]| {
        let upstream: BTreeMap<String, BTreeMap<String, Digest>> = deps[idx]
            .iter()
            .filter_map(|&d| reports[d].as_ref().map(|r| (r.job.clone(), r.outputs.iter().cloned().collect())))
            .collect();
        let ctx = ctx.clone();
        let span = info_span!("job", id = %ctx.dag.jobs[idx].id);
        tasks.spawn(
            async move {
                let report = job_task(&ctx, idx, &upstream, &BTreeSet::new()).await;
                (idx, report)
            }
            .instrument(span),
        );
    };
    loop {
        while tasks.len() < tasks_max
            && let Some(idx) = ready.pop_front()
        {
            spawn(&mut tasks, idx, &reports);
        }
        let Some(joined) = tasks.join_next().await else { break };
        let (idx, report) = joined.context("a job task panicked")?;
        overall.inc(1);
        let ok = report.status == Status::Done;
        ctx.tell(RunEvent::Finished { job: report.job.clone(), ok });
        if !ok {
            overall.set_message(format!("({} failed)", report.job));
        }
        reports[idx] = Some(report);
        if ok {
            for &d in &dependants[idx] {
                waiting[d] -= 1;
                if waiting[d] == 0 && reports[d].is_none() {
                    ready.push_back(d);
                }
            }
        } else {
            skip_dependants(&ctx.dag, idx, &dependants, &mut reports, &overall, ctx.events.as_ref());
        }
    }
    overall.finish_and_clear();
    Ok(reports
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| JobReport::new(&ctx.dag.jobs[i].id, Status::Skipped)))
        .collect())
}

/// Marks everything downstream of the failed job `idx` as skipped, naming the cause.
fn skip_dependants(
    dag: &Dag,
    idx: usize,
    dependants: &[Vec<usize>],
    reports: &mut [Option<JobReport>],
    overall: &ProgressBar,
    events: Option<&tokio::sync::mpsc::UnboundedSender<RunEvent>>,
) {
    let mut stack = dependants[idx].clone();
    while let Some(d) = stack.pop() {
        if reports[d].is_some() {
            continue;
        }
        let mut report = JobReport::new(&dag.jobs[d].id, Status::Skipped);
        report.error = Some(format!("not run: it depends on `{}`, which failed", dag.jobs[idx].id));
        reports[d] = Some(report);
        overall.inc(1);
        if let Some(events) = events {
            let _ = events.send(RunEvent::Finished { job: dag.jobs[d].id.clone(), ok: false });
        }
        stack.extend(dependants[d].iter().copied());
    }
}

/// Finds a run record by its hash or by job id (the job's latest run), verified.
pub async fn find_record(store: &Store, what: &str) -> Result<RunRecord> {
    let hash = match what.parse::<Hash>() {
        Ok(hash) => hash,
        Err(_) => store.latest_record_for_job(what)?.ok_or_else(|| {
            anyhow!("no run of a job `{what}` is recorded here; run a DAG with `shoal run DAG.json` first")
        })?,
    };
    let signed = store.get_record(hash).await?.ok_or_else(|| anyhow!("run record {hash} is not in this store"))?;
    signed.verify().with_context(|| format!("run record {hash} does not verify"))
}
