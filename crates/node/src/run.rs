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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use shoal_blobs::image::Image;
use shoal_blobs::{Durability, Store};
use shoal_dag::{
    Dag, Digest, DigestKind, Exit, Hash, ImageRef, InputRef, Job, Machine, ResolvedJob, RunRecord, Timing,
};
use shoal_vm::{Backend, CollectedOutput, HelperCommand, InputMount, Limits, NamespaceBackend, Request};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, info_span};

use crate::cli::{EXIT_ERROR, EXIT_JOB_FAILED};
use crate::{identity, machine, output};

/// `shoal __sandbox`: the hidden subcommand the namespace backend runs as its helper process.
pub const SANDBOX_SUBCOMMAND: &str = "__sandbox";
/// Jobs in flight per core (preparing inputs, running, storing outputs); only the running ones
/// hold cores.
const JOBS_IN_FLIGHT_PER_CORE: usize = 3;
/// Job tasks alive at once per job allowed in flight: the rest look up the action cache and
/// resolve references while those run, so a cached job never waits behind a running one.
const JOB_TASKS_PER_IN_FLIGHT: usize = 4;
/// Job tasks alive at once, at least (a machine of few cores still overlaps many cache lookups).
const JOB_TASKS_MIN: usize = 64;
/// Lines of a failed job's stderr shown in the summary.
const STDERR_TAIL_LINES: usize = 20;
/// Version of the run record layout written by this code.
const RUN_RECORD_VERSION: u32 = 1;
/// Cap on a job's captured stdout and stderr, each, in bytes.
const STDOUT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// How much of a failed job's stderr is read for the tail shown with the failure, in bytes.
const STDERR_TAIL_BYTES_MAX: u64 = 64 << 10;

/// Which backend a run uses for jobs that do not choose (`isolation` unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// A microVM per job (the default). Jobs marked `isolation: namespace` use the namespace sandbox.
    Microvm,
    /// The namespace sandbox for every job; a job that requires `isolation: vm` fails with the reason.
    Namespace,
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
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
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
}

fn outputs_as_map<S: serde::Serializer>(outputs: &[(String, Digest)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(outputs.iter().map(|(k, v)| (k, v)))
}

impl JobReport {
    fn new(job: &str, status: Status) -> Self {
        JobReport {
            job: job.to_string(),
            status,
            cached: false,
            wall_ms: None,
            outputs: Vec::new(),
            record: None,
            action_key: None,
            exit: None,
            error: None,
            stderr_tail: None,
            vm_timeline: None,
        }
    }
}

/// One run (a DAG, or the one job of an explorer request) on the process's [`Runner`]: what
/// every job task of the run shares, and only what is the run's own. Dropped when the run ends.
pub(crate) struct Ctx {
    runner: Arc<Runner>,
    dag: Dag,
    /// Directory of the DAG file: `file:` inputs are relative to it.
    dag_dir: PathBuf,
    /// The backend of this run's jobs that do not choose one.
    backend: BackendChoice,
    use_cache: bool,
    records: Durability,
    /// This run's own share when it asked for fewer cores than the runner has (a local run's
    /// `--cores`); its jobs take from it and then from the runner's. None: the runner's alone.
    own: Option<Budget>,
    progress: MultiProgress,
    /// Images already resolved in this run, by the reference as written (most DAGs use one or two
    /// images for all their jobs, and a cached run must not read the same image blob a thousand times).
    images: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::OnceCell<(Hash, Arc<Image>)>>>>,
    /// The contents of the DAG's `file:` inputs by path as written, when a client sent them with
    /// the DAG (a node running a client's DAG never opens a path of the client's machine).
    files: Option<BTreeMap<String, Result<Digest, String>>>,
    /// Where jobs starting and ending are told, for a client following the run from afar.
    events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
}

/// What every run of a process shares; built once per process (`shoal run` builds its own, a
/// node's `Shared` holds one for its mesh jobs, explorer runs and local runs alike).
///
/// Invariant: there is one per process, so all the process's runs share its core budget: jobs
/// running at once hold at most `cores_total` cores between them, whichever run they belong to.
pub(crate) struct Runner {
    store: Store,
    key: ed25519_dalek::SigningKey,
    /// This machine's facts, read once; each run record names them.
    machine: Machine,
    backends: Backends,
    budget: Budget,
    /// Runs prepared and not yet ended (per-DAG state alive), and the free work directories.
    work_dirs: Arc<WorkDirs>,
}

/// Cores given to jobs and jobs in flight: the runner's, or a run's own smaller share of them.
struct Budget {
    cores_total: u32,
    /// A job takes as many permits as it asks cores, while its backend runs it.
    cores: Arc<Semaphore>,
    /// Jobs being prepared, run or stored at once: [`JOBS_IN_FLIGHT_PER_CORE`] per core.
    in_flight: Arc<Semaphore>,
}

impl Budget {
    fn new(cores_total: u32) -> Budget {
        Budget {
            cores_total,
            cores: Arc::new(Semaphore::new(cores_total as usize)),
            in_flight: Arc::new(Semaphore::new(cores_total as usize * JOBS_IN_FLIGHT_PER_CORE)),
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
    use std::fmt::Write;
    let ok = reports.iter().all(|r| r.status == Status::Done);
    let mut stdout = String::new();
    let mut stderr = String::new();
    if json {
        writeln!(stdout, "{}", json_text(ok, reports)?)?;
    } else {
        writeln!(stdout, "{}", output::summary(reports))?;
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

pub async fn run_dag_file(store: &Store, path: &Path, opts: &RunOptions) -> Result<ExitCode> {
    let bytes = read_dag_file(path, opts.dag_bytes_max)?;
    let dag = match shoal_dag::parse_dag_bytes(&path.display().to_string(), &bytes) {
        Ok(dag) => dag,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(EXIT_ERROR));
        }
    };
    drop(bytes);
    let dag_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let runner = Runner::new(store, opts)?;
    let reports = run_dag(&runner, dag, dag_dir, opts, RunSource::default()).await?;
    let out = render(&reports, opts.json)?;
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
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

/// The backends jobs run on, the runner's (one warm pool serves every run of the process).
struct Backends {
    warm_vms: usize,
    namespace: Arc<dyn Backend>,
    /// Set up on first use: a fully cached run never needs QEMU.
    microvm: tokio::sync::OnceCell<Arc<dyn Backend>>,
}

impl Ctx {
    pub(crate) fn dag(&self) -> &Dag {
        &self.dag
    }

    /// Tells the run's listener, if any (one that went away is no reason to stop).
    fn tell(&self, event: RunEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Cores this run's jobs may use at once: its own share, or the runner's.
    fn cores_total(&self) -> u32 {
        self.own.as_ref().unwrap_or(&self.runner.budget).cores_total
    }

    /// A place among the jobs in flight: of this run's share first, then of the runner's (so a
    /// run limited to few cores never holds places of the runner's waiting for its own cores).
    async fn enter(&self) -> Result<Permits> {
        let own = match &self.own {
            Some(own) => Some(own.in_flight.clone().acquire_owned().await.context("job semaphore closed")?),
            None => None,
        };
        let runner = self.runner.budget.in_flight.clone().acquire_owned().await.context("job semaphore closed")?;
        Ok(Permits { _runner: runner, _own: own })
    }

    /// What a job asking `wanted` cores waits on before its backend runs it.
    fn cores_gate(&self, wanted: u32) -> CoresGate {
        CoresGate { own: self.own.as_ref().map(|b| b.cores.clone()), runner: self.runner.budget.cores.clone(), wanted }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.runner.work_dirs.run_ended();
    }
}

/// What a job holds of a budget (its place in flight, or its cores): of the runner's, and of its
/// run's own share if it has one; given back when dropped.
struct Permits {
    _runner: tokio::sync::OwnedSemaphorePermit,
    _own: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The cores a job waits for: of its run's own share (if it has one), then of the runner's.
struct CoresGate {
    own: Option<Arc<Semaphore>>,
    runner: Arc<Semaphore>,
    wanted: u32,
}

impl CoresGate {
    /// Always in the same order (the run's, then the runner's), so two jobs never each hold
    /// what the other waits for.
    async fn acquire(&self) -> Result<Permits, tokio::sync::AcquireError> {
        let own = match &self.own {
            Some(own) => Some(own.clone().acquire_many_owned(self.wanted).await?),
            None => None,
        };
        let runner = self.runner.clone().acquire_many_owned(self.wanted).await?;
        Ok(Permits { _runner: runner, _own: own })
    }
}

impl Runner {
    /// The process's runner: loads (or makes) the signing key, reads the machine's facts once,
    /// and sizes the budget to `opts.cores` (this machine's cores by default).
    pub(crate) fn new(store: &Store, opts: &RunOptions) -> Result<Arc<Runner>> {
        let key = identity::load_or_create(store.home())?;
        let default_backend = match opts.backend {
            BackendChoice::Microvm => "microvm",
            BackendChoice::Namespace => "namespace",
        };
        let machine = machine::describe(&identity::node_id(&key), default_backend);
        let cores_total = opts.cores.unwrap_or_else(machine::cores).max(1);
        Ok(Arc::new(Runner {
            store: store.clone(),
            key,
            machine,
            backends: Backends {
                warm_vms: opts.warm_vms,
                namespace: Arc::new(NamespaceBackend::new(sandbox_helper()?)),
                microvm: tokio::sync::OnceCell::new(),
            },
            budget: Budget::new(cores_total),
            work_dirs: Arc::new(WorkDirs::default()),
        }))
    }

    /// A run of `dag` on this runner: `opts` says its backend, cache use, record durability,
    /// how many of the runner's cores it may use (`cores`; `warm_vms` is the runner's) and
    /// whether a terminal shows its progress; `source` where its `file:` inputs come from and
    /// who follows it.
    pub(crate) fn prepare(
        self: &Arc<Self>,
        dag: Dag,
        dag_dir: PathBuf,
        opts: &RunOptions,
        source: RunSource,
    ) -> Arc<Ctx> {
        let progress = MultiProgress::new();
        if opts.json {
            progress.set_draw_target(ProgressDrawTarget::hidden());
        }
        let own = opts.cores.map(|c| c.max(1)).filter(|&c| c < self.budget.cores_total).map(Budget::new);
        self.work_dirs.run_started();
        Arc::new(Ctx {
            runner: self.clone(),
            dag,
            dag_dir,
            backend: opts.backend,
            use_cache: opts.use_cache,
            records: opts.records,
            own,
            progress,
            images: std::sync::Mutex::new(BTreeMap::new()),
            files: source.files,
            events: source.events,
        })
    }

    /// This machine's facts, as read when the runner was built.
    pub(crate) fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The cores the runner gives jobs, all runs together.
    pub(crate) fn cores_total(&self) -> u32 {
        self.budget.cores_total
    }

    /// Runs prepared and not yet ended, of every kind (mesh DAGs, explorer requests, local runs).
    pub(crate) fn runs_live(&self) -> usize {
        self.work_dirs.runs()
    }
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

async fn job_task(
    ctx: &Ctx,
    idx: usize,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
    stale: &BTreeSet<Hash>,
) -> JobReport {
    let job = &ctx.dag.jobs[idx];
    match run_job(ctx, job, upstream, stale).await {
        Ok(report) => report,
        Err(e) => {
            let mut report = JobReport::new(&job.id, Status::Failed);
            report.error = Some(format!("{e:#}"));
            report
        }
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn run_job(
    ctx: &Ctx,
    job: &Job,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
    stale: &BTreeSet<Hash>,
) -> Result<JobReport> {
    let queued_unix_ms = now_unix_ms();
    let (image_id, image) = resolve_image(ctx, &job.image, upstream).await?;
    let mut inputs = BTreeMap::new();
    for (name, input) in &job.inputs {
        let digest = resolve_input(ctx, input, upstream).await.with_context(|| format!("resolving input `{name}`"))?;
        inputs.insert(name.clone(), digest);
    }
    let stdin = match &job.stdin {
        Some(input) => Some(resolve_input(ctx, input, upstream).await.context("resolving stdin")?),
        None => None,
    };
    let resolved = ResolvedJob::from_job(job, image_id, inputs, stdin);
    let action_key = resolved.action_key();
    tracing::debug!(%action_key, "resolved");

    if ctx.use_cache {
        if let Some(report) = cached_report(ctx, job, &action_key).await? {
            if report.record.is_some_and(|r| stale.contains(&r)) {
                tracing::info!(%action_key, "the cached record's outputs were reported lost: running the job again");
            } else {
                return Ok(report);
            }
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
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
) -> Result<(Hash, Arc<Image>)> {
    match image {
        ImageRef::Job { job, output } => {
            let digest = upstream_output(upstream, job, output)?;
            let tmp = tempfile::Builder::new().prefix("image-").tempdir_in(tmp_root(ctx)?)?;
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
            let name = format!("{other:?}");
            let cell = ctx.images.lock().expect("image cache lock").entry(name).or_default().clone();
            let resolved = cell
                .get_or_try_init(|| async {
                    let (id, image) = ctx.runner.store.resolve_image(other).await?;
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

/// The digest of a stored blob given by hash alone (the store knows which hashes are trees).
pub async fn digest_of_stored(store: &Store, hash: Hash) -> Result<Digest> {
    let size = store
        .size(hash)
        .await?
        .ok_or_else(|| anyhow!("blob {hash} is not in this store; add it with `shoal blob put`"))?;
    let kind = if store.is_tree(hash) { DigestKind::Tree } else { DigestKind::File };
    Ok(Digest { hash, kind, size })
}

fn tmp_root(ctx: &Ctx) -> Result<PathBuf> {
    let dir = ctx.runner.store.home().join("tmp");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Job work directories, emptied and reused (as Bazel reuses sandbox directories): creating
/// and deleting a directory per job costs more than the job itself on ext4, whose allocator
/// searches for a fresh inode group for every new directory.
///
/// The runner's, so the directories kept are bounded by its jobs in flight (a directory is
/// taken only inside a place in flight), not by the runs it has made; and kept only while a
/// run is alive: when the last one ends, the free ones are removed, so a process with no run
/// leaves nothing under `$SHOAL_HOME/tmp`.
#[derive(Default)]
struct WorkDirs {
    state: std::sync::Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Emptied directories waiting for a job.
    free: Vec<PathBuf>,
    /// Runs prepared and not ended ([`Runner::prepare`] to the drop of its [`Ctx`]).
    runs: usize,
}

/// A work directory lent to one job; emptied and given back when dropped (removed instead when
/// no run is alive: a job stopped mid-run gives its directory back only once its backend has
/// returned, which may be after its run ended).
struct WorkDir {
    path: PathBuf,
    pool: Arc<WorkDirs>,
}

impl WorkDirs {
    fn take(self: &Arc<Self>, root: &Path) -> Result<WorkDir> {
        let reused = self.lock().free.pop();
        let path = match reused {
            Some(p) => p,
            None => tempfile::Builder::new().prefix("job-").tempdir_in(root)?.keep(),
        };
        Ok(WorkDir { path, pool: self.clone() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.state.lock().expect("work dir pool")
    }

    fn run_started(&self) {
        self.lock().runs += 1;
    }

    /// The end of a run: the last one alive takes the free directories with it.
    fn run_ended(&self) {
        let free = {
            let mut pool = self.lock();
            pool.runs -= 1;
            if pool.runs > 0 {
                return;
            }
            std::mem::take(&mut pool.free)
        };
        remove_work_dirs(free);
    }

    fn runs(&self) -> usize {
        self.lock().runs
    }

    /// Directories emptied and waiting for a job.
    #[cfg(test)]
    fn free(&self) -> Vec<PathBuf> {
        self.lock().free.clone()
    }
}

fn remove_work_dirs(dirs: Vec<PathBuf>) {
    for p in dirs {
        if let Err(e) = std::fs::remove_dir_all(&p) {
            tracing::warn!("cannot remove the work directory {}: {e}", p.display());
        }
    }
}

impl Drop for WorkDirs {
    fn drop(&mut self) {
        remove_work_dirs(self.state.get_mut().map(|p| std::mem::take(&mut p.free)).unwrap_or_default());
    }
}

impl WorkDir {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Empty it; keep an empty `outputs` (the backends' output directory), drop the rest.
        let emptied = std::fs::read_dir(&self.path).map(|entries| {
            entries.flatten().all(|e| {
                let p = e.path();
                let keep = e.file_name() == "outputs" && e.file_type().is_ok_and(|t| t.is_dir());
                if keep {
                    std::fs::read_dir(&p)
                        .map(|inner| inner.flatten().all(|i| shoal_blobs::remove_tree_forcefully(&i.path()).is_ok()))
                        .unwrap_or(false)
                } else {
                    shoal_blobs::remove_tree_forcefully(&p).is_ok()
                }
            })
        });
        if emptied.unwrap_or(false) {
            let mut pool = self.pool.lock();
            if pool.runs > 0 {
                pool.free.push(std::mem::take(&mut self.path));
                return;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove the work directory {}: {e}", self.path.display());
        }
    }
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
    let work = ctx.runner.work_dirs.take(&tmp_root(ctx)?)?;
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
    };
    let started_unix_ms = now_unix_ms();
    let backend = backend_for(ctx, job).await?;
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

    let mut outputs = BTreeMap::new();
    let mut exit = outcome.exit.clone();
    let stdout = put_captured(ctx, &outcome.stdout).await?;
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
        report.error = Some(describe_exit(&exit));
        report.stderr_tail = Some(output::tail(&outcome.stderr.tail(STDERR_TAIL_BYTES_MAX), STDERR_TAIL_LINES));
    }
    report.exit = Some(exit);
    Ok(report)
}

/// The namespace backend's helper process. The static guest-init serves (it answers
/// `__sandbox` too): 3 MB with nothing to relocate, it starts in a fraction of the time the
/// shoal binary takes, and a helper starts for every job. Without it, `shoal __sandbox`.
fn sandbox_helper() -> Result<HelperCommand> {
    let program = match shoal_vm::microvm::find_guest_init() {
        Ok(p) => p,
        Err(why) => {
            tracing::debug!("sandbox helper: {why}; using this program");
            std::env::current_exe().context("cannot find the shoal executable")?
        }
    };
    Ok(HelperCommand { program, args: vec![SANDBOX_SUBCOMMAND.into()] })
}

/// The backend for one job: its `isolation` if it states one, else the run's choice.
async fn backend_for(ctx: &Ctx, job: &Job) -> Result<Arc<dyn Backend>> {
    use shoal_dag::Isolation;
    let backends = &ctx.runner.backends;
    let vm = match (job.requirements.isolation, ctx.backend) {
        (Some(Isolation::Vm), BackendChoice::Namespace) => bail!(
            "it requires `isolation: vm` and this run uses --backend namespace; run with --backend microvm \
             (the default), or change the job's isolation to `namespace` if the lighter sandbox is acceptable"
        ),
        (Some(Isolation::Namespace), _) | (None, BackendChoice::Namespace) => false,
        (Some(Isolation::Vm), BackendChoice::Microvm) | (None, BackendChoice::Microvm) => true,
    };
    if !vm {
        return Ok(backends.namespace.clone());
    }
    let home = ctx.runner.store.home().to_path_buf();
    let warm = backends.warm_vms;
    let backend = backends
        .microvm
        .get_or_try_init(|| async move {
            let backend = tokio::task::spawn_blocking(move || {
                let mut cfg = shoal_vm::MicrovmConfig::new(home.join("vm"));
                cfg.warm_per_kind = warm;
                shoal_vm::MicrovmBackend::new(cfg)
            })
            .await
            .context("the microVM setup thread panicked")?
            .map_err(|e| anyhow!("cannot set up the microVM backend: {e} (or run with --backend namespace)"))?;
            tracing::info!(accel = backend.accel().as_str(), "microVM backend ready");
            Ok::<_, anyhow::Error>(Arc::new(backend) as Arc<dyn Backend>)
        })
        .await?;
    Ok(backend.clone())
}

fn describe_exit(exit: &Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exited with code {code}"),
        Exit::Signal(sig) => format!("killed by signal {sig}"),
        Exit::Timeout => "ran past its timeout and was killed; raise `requirements.timeout`".into(),
        Exit::Oom => "ran out of memory and was killed; raise `requirements.memory`".into(),
        Exit::OutputTooLarge { output, limit_bytes } => format!(
            "output `{output}` exceeded its limit of {}; raise `requirements.output_size` or write less",
            output::bytes(*limit_bytes)
        ),
        Exit::Error(msg) => msg.clone(),
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

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    /// A runner of `cores` cores on a fresh store, and the directory that holds its home.
    async fn runner(cores: u32) -> (tempfile::TempDir, Arc<Runner>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("home")).await.unwrap();
        let runner = Runner::new(&store, &options(Some(cores))).unwrap();
        (dir, runner)
    }

    fn options(cores: Option<u32>) -> RunOptions {
        RunOptions {
            backend: BackendChoice::Namespace,
            json: true,
            use_cache: true,
            cores,
            warm_vms: 0,
            records: Durability::Soon,
            dag_bytes_max: 1 << 20,
        }
    }

    fn run(runner: &Arc<Runner>, cores: Option<u32>) -> Arc<Ctx> {
        runner.prepare(Dag { version: 1, jobs: Vec::new() }, PathBuf::new(), &options(cores), RunSource::default())
    }

    /// Whether `gate` gives its cores now (without waiting).
    fn cores_now(gate: &CoresGate) -> Option<Permits> {
        gate.acquire().now_or_never().map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn every_run_takes_its_cores_from_the_runners_one_budget() {
        let (_dir, runner) = runner(2).await;
        let (a, b) = (run(&runner, None), run(&runner, None));
        let held = cores_now(&a.cores_gate(2)).expect("2 free cores");
        assert!(cores_now(&b.cores_gate(1)).is_none(), "another run waits for the cores the first holds");
        drop(held);
        let one = cores_now(&b.cores_gate(1)).expect("given back");
        assert!(cores_now(&a.cores_gate(2)).is_none());
        assert!(cores_now(&a.cores_gate(1)).is_some());
        drop(one);
    }

    #[tokio::test]
    async fn a_run_given_fewer_cores_takes_from_its_share_and_from_the_runners() {
        let (_dir, runner) = runner(4).await;
        let small = run(&runner, Some(1));
        assert_eq!(small.cores_total(), 1);
        let held = cores_now(&small.cores_gate(1)).expect("its one core");
        assert!(cores_now(&small.cores_gate(1)).is_none(), "its share is one core, though the runner has 3 free");
        let other = run(&runner, None);
        let three = cores_now(&other.cores_gate(3)).expect("the runner's other 3 cores");
        assert!(cores_now(&other.cores_gate(1)).is_none(), "the small run's core counts against the runner's 4");
        drop((held, three));
        // Asking for more than the runner has gives the runner's cores, no more.
        let big = run(&runner, Some(8));
        assert_eq!(big.cores_total(), 4);
        assert!(big.own.is_none());
        assert!(cores_now(&big.cores_gate(4)).is_some());
    }

    #[tokio::test]
    async fn jobs_in_flight_are_bounded_by_the_runner_across_runs() {
        let (_dir, runner) = runner(1).await;
        let (a, b) = (run(&runner, None), run(&runner, None));
        let mut places: Vec<Permits> = (0..2).map(|_| a.enter().now_or_never().unwrap().unwrap()).collect();
        places.push(b.enter().now_or_never().expect("the third place").unwrap());
        assert_eq!(places.len(), JOBS_IN_FLIGHT_PER_CORE);
        assert!(
            b.enter().now_or_never().is_none(),
            "{JOBS_IN_FLIGHT_PER_CORE} jobs in flight per core, all runs together"
        );
        places.pop();
        assert!(a.enter().now_or_never().is_some());
    }

    #[tokio::test]
    async fn work_directories_are_reused_while_a_run_lives_and_removed_when_the_last_ends() {
        let (dir, runner) = runner(1).await;
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let pool = &runner.work_dirs;
        let (a, b) = (run(&runner, None), run(&runner, None));
        assert_eq!(runner.runs_live(), 2);
        let work = pool.take(&tmp).unwrap();
        let path = work.path().to_path_buf();
        std::fs::create_dir(path.join("outputs")).unwrap();
        std::fs::write(path.join("outputs/out"), "x").unwrap();
        std::fs::write(path.join("stdin"), "x").unwrap();
        drop(work);
        assert_eq!(pool.free(), [path.clone()]);
        let again = pool.take(&tmp).unwrap();
        assert_eq!(again.path(), path, "reused");
        let left: Vec<_> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["outputs"], "emptied, its empty `outputs` kept");
        assert_eq!(std::fs::read_dir(path.join("outputs")).unwrap().count(), 0);
        drop(again);
        drop(a);
        assert_eq!(pool.free(), [path.clone()], "kept while a run lives");
        drop(b);
        assert_eq!(runner.runs_live(), 0);
        assert!(pool.free().is_empty());
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "nothing left under tmp/");
    }

    #[tokio::test]
    async fn a_work_directory_given_back_after_its_run_ended_is_removed() {
        let (dir, runner) = runner(1).await;
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let a = run(&runner, None);
        // A job stopped while its backend ran gives its directory back when the backend returns.
        let work = runner.work_dirs.take(&tmp).unwrap();
        drop(a);
        std::fs::write(work.path().join("stdout"), "late").unwrap();
        drop(work);
        assert!(runner.work_dirs.free().is_empty());
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }
}
