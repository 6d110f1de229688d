//! The process's [`Runner`] and a run's [`Ctx`] on it: the one budget of cores and of jobs in
//! flight every run takes from, the backends (and their warm microVMs), and the pool of job work
//! directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{MultiProgress, ProgressDrawTarget};
use shoal_blobs::image::Image;
use shoal_blobs::{Durability, Store};
use shoal_dag::{Dag, Digest, Hash, Job, Machine};
use shoal_vm::{Backend, HelperCommand, NamespaceBackend};
use tokio::sync::Semaphore;

use super::{BackendChoice, RunEvent, RunOptions, RunSource};
use crate::{identity, machine};

/// An image reference resolved once per run, by whichever job asks first.
type ImageOnce = tokio::sync::OnceCell<(Hash, Arc<Image>)>;

/// `shoal __sandbox`: the hidden subcommand the namespace backend runs as its helper process.
pub const SANDBOX_SUBCOMMAND: &str = "__sandbox";
/// Jobs in flight per core (preparing inputs, running, storing outputs); only the running ones
/// hold cores.
pub(super) const JOBS_IN_FLIGHT_PER_CORE: usize = 3;

/// One run (a DAG, or the one job of an explorer request) on the process's [`Runner`]: what
/// every job task of the run shares, and only what is the run's own. Dropped when the run ends.
pub(crate) struct Ctx {
    pub(super) runner: Arc<Runner>,
    pub(super) dag: Dag,
    /// Directory of the DAG file: `file:` inputs are relative to it.
    pub(super) dag_dir: PathBuf,
    /// The backend of this run's jobs that do not choose one.
    pub(super) backend: BackendChoice,
    pub(super) use_cache: bool,
    pub(super) records: Durability,
    /// This run's own share when it asked for fewer cores than the runner has (a local run's
    /// `--cores`); its jobs take from it and then from the runner's. None: the runner's alone.
    own: Option<Budget>,
    pub(super) progress: MultiProgress,
    /// Images already resolved in this run, by the reference as written (most DAGs use one or two
    /// images for all their jobs, and a cached run must not read the same image blob a thousand times).
    pub(super) images: std::sync::Mutex<BTreeMap<String, Arc<ImageOnce>>>,
    /// URL and `s3://` inputs fetched in this run, by the reference as written: jobs reading
    /// the same one share one download.
    pub(super) fetched: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::OnceCell<Digest>>>>,
    /// The contents of the DAG's `file:` inputs by path as written, when a client sent them with
    /// the DAG (a node running a client's DAG never opens a path of the client's machine).
    pub(super) files: Option<BTreeMap<String, Result<Digest, String>>>,
    /// Where jobs starting and ending are told, for a client following the run from afar.
    pub(super) events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
    /// Asked for an action this store has no record of (see [`RunSource::remote_cache`]).
    pub(super) remote_cache: Option<Arc<dyn super::RemoteCache>>,
    /// See [`RunSource::mesh_dag`].
    pub(super) mesh_dag: Option<shoal_dag::Hash>,
}

/// What every run of a process shares; built once per process (`shoal run` builds its own, a
/// node's `Shared` holds one for its mesh jobs, explorer runs and local runs alike).
///
/// Invariant: there is one per process, so all the process's runs share its core budget: jobs
/// running at once hold at most `cores_total` cores between them, whichever run they belong to.
pub(crate) struct Runner {
    pub(super) store: Store,
    pub(super) key: ed25519_dalek::SigningKey,
    /// This machine's facts, read once; each run record names them.
    pub(super) machine: Machine,
    backends: Backends,
    budget: Budget,
    /// Runs prepared and not yet ended (per-DAG state alive), and the free work directories.
    pub(super) work_dirs: Arc<WorkDirs>,
    /// See [`RunOptions::test_flip_outputs`].
    pub(super) test_flip_outputs: bool,
    /// This host's GPUs, each lent to one job at a time.
    pub(super) gpus: crate::gpu::GpuPool,
    /// The HTTP client and S3 configuration of URL and `s3://` inputs and uploads.
    pub(crate) transfers: Arc<crate::data::Transfers>,
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
    pub(super) fn tell(&self, event: RunEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Cores this run's jobs may use at once: its own share, or the runner's.
    pub(super) fn cores_total(&self) -> u32 {
        self.own.as_ref().unwrap_or(&self.runner.budget).cores_total
    }

    /// A place among the jobs in flight: of this run's share first, then of the runner's (so a
    /// run limited to few cores never holds places of the runner's waiting for its own cores).
    pub(super) async fn enter(&self) -> Result<Permits> {
        let own = match &self.own {
            Some(own) => Some(own.in_flight.clone().acquire_owned().await.context("job semaphore closed")?),
            None => None,
        };
        let runner = self.runner.budget.in_flight.clone().acquire_owned().await.context("job semaphore closed")?;
        Ok(Permits { _runner: runner, _own: own })
    }

    /// What a job asking `wanted` cores waits on before its backend runs it.
    pub(super) fn cores_gate(&self, wanted: u32) -> CoresGate {
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
pub(super) struct Permits {
    _runner: tokio::sync::OwnedSemaphorePermit,
    _own: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The cores a job waits for: of its run's own share (if it has one), then of the runner's.
pub(super) struct CoresGate {
    own: Option<Arc<Semaphore>>,
    runner: Arc<Semaphore>,
    wanted: u32,
}

impl CoresGate {
    /// Always in the same order (the run's, then the runner's), so two jobs never each hold
    /// what the other waits for.
    pub(super) async fn acquire(&self) -> Result<Permits, tokio::sync::AcquireError> {
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
        let default_backend = opts.backend.as_str();
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
            test_flip_outputs: opts.test_flip_outputs,
            gpus: crate::gpu::GpuPool::new(crate::gpu::host().to_vec()),
            transfers: Arc::new(crate::data::Transfers::new(opts.transfers.clone())),
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
            fetched: std::sync::Mutex::new(BTreeMap::new()),
            files: source.files,
            events: source.events,
            remote_cache: source.remote_cache,
            mesh_dag: source.mesh_dag,
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

/// Job work directories, emptied and reused (as Bazel reuses sandbox directories): creating
/// and deleting a directory per job costs more than the job itself on ext4, whose allocator
/// searches for a fresh inode group for every new directory.
///
/// The runner's, so the directories kept are bounded by its jobs in flight (a directory is
/// taken only inside a place in flight), not by the runs it has made; and kept only while a
/// run is alive: when the last one ends, the free ones are removed, so a process with no run
/// leaves nothing under `$SHOAL_HOME/tmp`.
#[derive(Default)]
pub(super) struct WorkDirs {
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
pub(super) struct WorkDir {
    path: PathBuf,
    pool: Arc<WorkDirs>,
}

impl WorkDirs {
    pub(super) fn take(self: &Arc<Self>, root: &Path) -> Result<WorkDir> {
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
    pub(super) fn path(&self) -> &Path {
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

/// The backend for one job: its `isolation` if it states one, else the run's choice. `gpus_vfio`:
/// the job was lent GPUs, bound to vfio-pci (`true`: passed to its microVM) or not (`false`:
/// their nodes and driver libraries bound into the namespace sandbox).
pub(super) async fn backend_for(ctx: &Ctx, job: &Job, gpus_vfio: Option<bool>) -> Result<Arc<dyn Backend>> {
    use shoal_dag::Isolation;
    let backends = &ctx.runner.backends;
    match (gpus_vfio, job.requirements.isolation, ctx.backend) {
        (Some(false), Some(Isolation::Vm), _) | (Some(false), _, BackendChoice::MicrovmOnly) => bail!(
            "it needs a GPU, and this machine's are driven by their host driver, which the namespace sandbox \
             uses; a microVM (`isolation: vm`, --backend microvm-only) takes only GPUs bound to vfio-pci; drop \
             the isolation, or bind a GPU to vfio-pci"
        ),
        (Some(false), ..) => return Ok(backends.namespace.clone()),
        (Some(true), Some(Isolation::Namespace), _) | (Some(true), _, BackendChoice::Namespace) => bail!(
            "its GPUs are bound to vfio-pci, which only a microVM takes, and the job asks for `isolation: \
             namespace` or the run uses --backend namespace; drop one of the two"
        ),
        (Some(true), ..) => return microvm(ctx).await,
        (None, ..) => {}
    }
    // Another architecture runs under qemu-user in the namespace sandbox: the host kernel's
    // binfmt_misc handler is what runs its binaries, and a microVM's guest kernel has none.
    if crate::machine::emulation_for(job.requirements.arch).map_err(|e| anyhow!("{e}"))?.is_some() {
        match (job.requirements.isolation, ctx.backend) {
            (Some(Isolation::Vm), _) | (_, BackendChoice::MicrovmOnly) => bail!(
                "it needs an architecture this machine emulates, which runs in the namespace sandbox only, and \
                 `isolation: vm` or --backend microvm-only; drop one of the two, or run it on a node of that \
                 architecture"
            ),
            _ => return Ok(backends.namespace.clone()),
        }
    }
    let vm = match (job.requirements.isolation, ctx.backend) {
        (Some(Isolation::Vm), BackendChoice::Namespace) => bail!(
            "it requires `isolation: vm` and this run uses --backend namespace; run with --backend microvm \
             (the default), or change the job's isolation to `namespace` if the lighter sandbox is acceptable"
        ),
        (Some(Isolation::Namespace), BackendChoice::Microvm | BackendChoice::Namespace)
        | (None, BackendChoice::Namespace) => false,
        (_, BackendChoice::MicrovmOnly)
        | (Some(Isolation::Vm), BackendChoice::Microvm)
        | (None, BackendChoice::Microvm) => true,
    };
    if !vm {
        return Ok(backends.namespace.clone());
    }
    microvm(ctx).await
}

/// The run's microVM backend, set up at its first use.
async fn microvm(ctx: &Ctx) -> Result<Arc<dyn Backend>> {
    let backends = &ctx.runner.backends;
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
            test_flip_outputs: false,
            transfers: Default::default(),
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
        assert_eq!(pool.free(), std::slice::from_ref(&path));
        let again = pool.take(&tmp).unwrap();
        assert_eq!(again.path(), path, "reused");
        let left: Vec<_> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["outputs"], "emptied, its empty `outputs` kept");
        assert_eq!(std::fs::read_dir(path.join("outputs")).unwrap().count(), 0);
        drop(again);
        drop(a);
        assert_eq!(pool.free(), std::slice::from_ref(&path), "kept while a run lives");
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
