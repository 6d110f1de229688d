//! One cgroup per job, for memory and CPU limits and for measuring peak memory and OOM kills.
//!
//! cgroup v2 when `/sys/fs/cgroup/cgroup.controllers` lists `memory` (jobs under
//! `/sys/fs/cgroup/shoal/`); otherwise cgroup v1 `memory` and `cpu` hierarchies (jobs under
//! `<our own cgroup>/shoal/` in each, so a shoal that runs inside a limited cgroup nests
//! inside it). Hosts that are v1/v2 hybrids (an empty `unified` v2 mount) take the v1 path.
//! The host creates the cgroup, the sandbox helper moves PID 1 of the sandbox in before it
//! runs anything, the host reads the counters after the sandbox is gone and removes it (on
//! drop, so also on every error path).
//!
//! A used cgroup is given to the next job instead of being removed when the kernel can reset
//! its peak-memory counter (v1 `memory.max_usage_in_bytes`; v2 `memory.peak`, resettable per
//! open file since Linux 6.12), it is empty, and what earlier jobs left charged to it (page
//! cache) is small: making and removing a memory cgroup costs the kernel more than a trivial
//! job (docs/BENCHMARKS.md). A job's peak and OOM kills are counted from its own start.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::Limits;

const ROOT: &str = "/sys/fs/cgroup";
const CPU_PERIOD_US: u64 = 100_000;
/// A cgroup holds at most this many jobs before it is removed and a fresh one made.
const REUSE_JOBS_MAX: u32 = 256;
/// A used cgroup with more than this still charged to it (page cache of earlier jobs) is
/// removed rather than reused, bytes: the charge would count against the next job's limit
/// until reclaimed.
const REUSE_LEFTOVER_BYTES_MAX: u64 = 8 << 20;

/// A job's cgroup; removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    layout: Layout,
    /// Nothing left for drop to do: [`Cgroup::remove`] succeeded, or the cgroup is left in
    /// place on purpose ([`Keeper::for_guest`]).
    removed: bool,
    /// Jobs it has been taken for, this one included.
    jobs: u32,
    /// The limits last written (memory bytes, cores): a reused cgroup skips rewriting them
    /// (a v1 CPU quota write alone costs the kernel ~10 us of locked work).
    applied: Option<(u64, u32, u32)>,
    /// Charge left by earlier jobs when this job's counters were reset, bytes (0 when fresh).
    baseline_bytes: u64,
    /// OOM kills as last read after the job ([`Cgroup::oom_kills`]): read once per job.
    oom_kills_read: Option<u64>,
    /// v2 on a reused cgroup: `memory.peak` opened and reset for this job (the reset holds for
    /// reads through the same open file only).
    peak_file: Option<File>,
}

#[derive(Debug)]
enum Layout {
    /// `cpu`: whether the cpu controller is enabled for it.
    V2 { dir: PathBuf, cpu: bool },
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
        /// In the `pids` hierarchy, when the host has one.
        pids: Option<PathBuf>,
    },
}

/// Which cgroup hierarchy this host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Parent directory of job cgroups; `cpu`: whether they get the cpu controller too.
    V2 { parent: PathBuf, cpu: bool },
    /// Parent directories in the memory, cpu and pids hierarchies.
    V1 { memory: PathBuf, cpu: Option<PathBuf>, pids: Option<PathBuf> },
}

/// Why there are no usable cgroups: jobs then run without memory and CPU limits.
#[derive(Debug, thiserror::Error)]
pub enum NoCgroups {
    #[error("reading /proc/self/cgroup: {0}")]
    OwnCgroup(#[source] io::Error),
    #[error(
        "no memory cgroup: {ROOT}/cgroup.controllers does not list `memory` and there is no v1 memory hierarchy; \
         jobs run without memory and CPU limits (mount cgroup2 with the memory controller enabled to fix)"
    )]
    NoMemoryController,
    #[error("no cgroup2 at {ROOT} ({0}): jobs run without a memory limit")]
    NoGuestCgroup2(#[source] io::Error),
    #[error("the cgroup2 at {ROOT} has no memory controller: jobs run without a memory limit")]
    NoGuestMemoryController,
}

impl Hierarchy {
    /// Looks at the host; Err says why there are no usable cgroups.
    pub fn detect() -> Result<Hierarchy, NoCgroups> {
        let root = Path::new(ROOT);
        if let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers"))
            && controllers.split_whitespace().any(|c| c == "memory")
        {
            return Ok(Hierarchy::V2 { parent: root.join("shoal"), cpu: true });
        }
        let own = fs::read_to_string("/proc/self/cgroup").map_err(NoCgroups::OwnCgroup)?;
        let v1_dir = |controller: &str| -> Option<PathBuf> {
            let rel = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctrls.split(',').any(|c| c == controller).then(|| path.trim_start_matches('/').to_string())
            })?;
            let mount = root.join(controller);
            mount.is_dir().then(|| mount.join(rel).join("shoal"))
        };
        match v1_dir("memory") {
            Some(memory) if memory.parent().is_some_and(|p| p.join("memory.limit_in_bytes").exists()) => {
                Ok(Hierarchy::V1 { memory, cpu: v1_dir("cpu"), pids: v1_dir("pids") })
            }
            _ => Err(NoCgroups::NoMemoryController),
        }
    }

    /// A microVM's (guest-init mounts cgroup2 at /sys/fs/cgroup): the job's cgroup directly
    /// under the root, memory only, since the VM's vCPUs are its CPU limit. Under TCG each
    /// controller enabled and each level made costs milliseconds of a cold job.
    pub fn guest() -> Result<Hierarchy, NoCgroups> {
        let controllers =
            fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).map_err(NoCgroups::NoGuestCgroup2)?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(NoCgroups::NoGuestMemoryController);
        }
        Ok(Hierarchy::V2 { parent: PathBuf::from(ROOT), cpu: false })
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);
/// Job cgroups are named `job-<pid>-<n>`, `n` counting up in each process.
const JOB_PREFIX: &str = "job-";

/// mkdir of a job cgroup. Names never repeat within a process, so one already there was left
/// by a process that had our pid and was killed before it could remove it: it is removed
/// first (rmdir refuses a cgroup with processes or children, and that error is returned).
fn make_job_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_dir(dir)?;
            fs::create_dir(dir)
        }
        made => made,
    }
}

/// Removes the job cgroups of processes that are gone (killed before they could remove their
/// own: a test or a node killed mid-job) under this hierarchy's parents; returns how many.
/// A cgroup of a live process, or one still holding a process, is left alone.
pub fn remove_stale(hierarchy: &Hierarchy) -> usize {
    let parents: Vec<&Path> = match hierarchy {
        Hierarchy::V2 { parent, .. } => vec![parent],
        Hierarchy::V1 { memory, cpu, pids } => {
            std::iter::once(memory.as_path()).chain(cpu.as_deref()).chain(pids.as_deref()).collect()
        }
    };
    let mut removed = 0;
    for parent in parents {
        let Ok(entries) = fs::read_dir(parent) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) =
                name.to_str().and_then(|n| n.strip_prefix(JOB_PREFIX)?.split('-').next()?.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id()
                && !Path::new("/proc").join(pid.to_string()).exists()
                && fs::remove_dir(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}
/// Whether this process has readied the v2 parent of job cgroups (see [`ready_v2_parent`]).
static V2_PARENT_READY: AtomicBool = AtomicBool::new(false);

/// Creates the parent of job cgroups and enables the memory (and cpu) controllers for its
/// children, on every level above it.
fn ready_v2_parent(parent: &Path, cpu: bool) -> io::Result<()> {
    if parent == Path::new(ROOT) {
        let wanted = if cpu { "+memory +cpu +pids" } else { "+memory +pids" };
        return fs::write(parent.join("cgroup.subtree_control"), wanted)
            .or_else(|_| fs::write(parent.join("cgroup.subtree_control"), if cpu { "+memory +cpu" } else { "+memory" }))
            .inspect(|()| V2_PARENT_READY.store(true, Ordering::Relaxed));
    }
    fs::create_dir_all(parent)?;
    if let Some(top) = parent.parent() {
        let _ = fs::write(top.join("cgroup.subtree_control"), "+memory +cpu +pids")
            .or_else(|_| fs::write(top.join("cgroup.subtree_control"), "+memory +cpu"));
    }
    fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids")
        .or_else(|_| fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu"))
        .or_else(|_| fs::write(parent.join("cgroup.subtree_control"), "+memory"))?;
    V2_PARENT_READY.store(true, Ordering::Relaxed);
    Ok(())
}

impl Cgroup {
    fn fresh(layout: Layout) -> Cgroup {
        Cgroup {
            layout,
            removed: false,
            jobs: 0,
            applied: None,
            baseline_bytes: 0,
            oom_kills_read: None,
            peak_file: None,
        }
    }

    /// Creates `job-<pid>-<n>` with no limits set yet ([`Cgroup::apply`] sets them).
    pub fn create_empty(hierarchy: &Hierarchy) -> io::Result<Cgroup> {
        let name = format!("{JOB_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        match hierarchy {
            &Hierarchy::V2 { ref parent, cpu } => {
                // The parent is readied once per process (enabling controllers costs more than
                // the job's own cgroup), and again if it went missing or lost its controllers
                // (another program rewrote its subtree_control).
                if !V2_PARENT_READY.load(Ordering::Relaxed) {
                    ready_v2_parent(parent, cpu)?;
                }
                let dir = parent.join(&name);
                let made = make_job_dir(&dir).and_then(|()| fs::metadata(dir.join("memory.max")).map(drop));
                if let Err(e) = made {
                    let _ = fs::remove_dir(&dir);
                    if !V2_PARENT_READY.swap(false, Ordering::Relaxed) {
                        return Err(e);
                    }
                    ready_v2_parent(parent, cpu)?;
                    fs::create_dir(&dir)?;
                }
                Ok(Cgroup::fresh(Layout::V2 { dir, cpu }))
            }
            Hierarchy::V1 { memory: mem_parent, cpu, pids } => {
                fs::create_dir_all(mem_parent)?;
                let mem = mem_parent.join(&name);
                make_job_dir(&mem)?;
                let mut cg = Cgroup::fresh(Layout::V1 { memory: mem, cpu: None, pids: None });
                if let Some(pids_parent) = pids {
                    let made = fs::create_dir_all(pids_parent).and_then(|()| {
                        let dir = pids_parent.join(&name);
                        make_job_dir(&dir)?;
                        Ok(dir)
                    });
                    match made {
                        Ok(dir) => {
                            if let Layout::V1 { pids, .. } = &mut cg.layout {
                                *pids = Some(dir);
                            }
                        }
                        Err(e) => tracing::warn!("cannot create a pids cgroup: {e}; processes are not limited"),
                    }
                }
                if let Some(cpu_parent) = cpu {
                    let made = fs::create_dir_all(cpu_parent).and_then(|()| {
                        let dir = cpu_parent.join(&name);
                        make_job_dir(&dir)?;
                        fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                        Ok(dir)
                    });
                    match made {
                        Ok(dir) => {
                            if let Layout::V1 { cpu, .. } = &mut cg.layout {
                                *cpu = Some(dir);
                            }
                        }
                        Err(e) => tracing::warn!("cannot create a cpu cgroup: {e}; CPU is not limited"),
                    }
                }
                Ok(cg)
            }
        }
    }

    /// Puts the job's memory and CPU limits in force (nothing to write when they are the
    /// ones already in force).
    pub fn apply(&mut self, limits: &Limits) -> io::Result<()> {
        let wanted = (limits.memory_bytes, limits.cores, limits.pids_max);
        if self.applied == Some(wanted) {
            return Ok(());
        }
        self.applied = None;
        self.write_limits(limits)?;
        self.applied = Some(wanted);
        Ok(())
    }

    fn write_limits(&self, limits: &Limits) -> io::Result<()> {
        let memory = limits.memory_bytes.to_string();
        let quota = u64::from(limits.cores.max(1)) * CPU_PERIOD_US;
        match &self.layout {
            Layout::V2 { dir, cpu } => {
                fs::write(dir.join("memory.max"), &memory)?;
                let _ = fs::write(dir.join("memory.swap.max"), "0");
                if let Err(e) = fs::write(dir.join("pids.max"), limits.pids_max.to_string()) {
                    tracing::warn!("no pids controller in {}: {e}; processes are not limited", dir.display());
                }
                if !cpu {
                    return Ok(());
                }
                if let Err(e) = fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}")) {
                    tracing::warn!("no cpu controller in {}: {e}; CPU is not limited", dir.display());
                }
            }
            Layout::V1 { memory: mem, cpu, pids } => {
                if let Some(dir) = pids {
                    fs::write(dir.join("pids.max"), limits.pids_max.to_string())?;
                }
                // With swap accounting the limit must bound memory + swap too, or the job
                // swaps instead of being killed (absent without swap accounting: fine). The
                // kernel keeps memsw >= the limit at every step, so a raised limit (a reused
                // cgroup) needs memsw raised first, a lowered one after: try both orders.
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                let _ = fs::write(&memsw, &memory);
                fs::write(mem.join("memory.limit_in_bytes"), &memory)?;
                let _ = fs::write(&memsw, &memory);
                if let Some(dir) = cpu {
                    fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// How the sandbox joins it: (`tasks` files the helper writes `0` into to move itself
    /// before it forks PID 1, `cgroup.procs` files it writes PID 1's pid into). On v1 the helper
    /// moves itself: a single thread moving itself is spared the kernel's global threadgroup
    /// lock, which moving another process takes (up to an RCU grace period when cold, 15 ms on
    /// the machine of docs/BENCHMARKS.md). v2 has no `tasks` file: PID 1 is moved.
    pub fn join_files(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        match &self.layout {
            Layout::V2 { dir, .. } => (Vec::new(), vec![dir.join("cgroup.procs")]),
            Layout::V1 { memory, cpu, pids } => {
                (std::iter::once(memory).chain(cpu).chain(pids).map(|d| d.join("tasks")).collect(), Vec::new())
            }
        }
    }

    /// Highest memory use seen during this job, bytes: the cgroup's peak less what earlier
    /// jobs had left charged to it when the job started.
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        let peak = match (&self.peak_file, &self.layout) {
            (Some(f), _) => read_number_at(f)?,
            (None, Layout::V2 { dir, .. }) => read_number(&dir.join("memory.peak"))?,
            (None, Layout::V1 { memory, .. }) => read_number(&memory.join("memory.max_usage_in_bytes"))?,
        };
        Some(peak.saturating_sub(self.baseline_bytes))
    }

    /// Processes the kernel's OOM killer killed in this cgroup: during this job, since a
    /// cgroup with an OOM kill is never reused ([`Cgroup::reusable`]). Read after the job
    /// has ended; the count is kept for the reuse check.
    pub fn oom_kills(&mut self) -> u64 {
        let n = self.read_oom_kills();
        self.oom_kills_read = Some(n);
        n
    }

    fn read_oom_kills(&self) -> u64 {
        let file = match &self.layout {
            Layout::V2 { dir, .. } => dir.join("memory.events"),
            Layout::V1 { memory, .. } => memory.join("memory.oom_control"),
        };
        let text = fs::read_to_string(file).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())).unwrap_or(0)
    }

    /// Memory charged to it now, bytes.
    fn usage_bytes(&self) -> Option<u64> {
        match &self.layout {
            Layout::V2 { dir, .. } => read_number(&dir.join("memory.current")),
            Layout::V1 { memory, .. } => read_number(&memory.join("memory.usage_in_bytes")),
        }
    }

    /// Counts one more job in it; a used one has its counters reset first.
    fn start_job(&mut self) -> io::Result<()> {
        self.oom_kills_read = None;
        if self.jobs > 0 {
            self.reset_counters()?;
        }
        self.jobs += 1;
        Ok(())
    }

    /// Readies a used cgroup for another job: its peak reset to what is charged now (that
    /// charge becomes the baseline subtracted from the peak).
    /// Err: this kernel cannot reset the peak (v2 before Linux 6.12), so it cannot be reused.
    fn reset_counters(&mut self) -> io::Result<()> {
        match &self.layout {
            Layout::V2 { dir, .. } => {
                let mut f = File::options().read(true).write(true).open(dir.join("memory.peak"))?;
                f.write_all(b"reset\n")?;
                self.peak_file = Some(f);
            }
            Layout::V1 { memory, .. } => fs::write(memory.join("memory.max_usage_in_bytes"), "0")?,
        }
        self.baseline_bytes = self.usage_bytes().ok_or_else(|| io::Error::other("cannot read the memory usage"))?;
        Ok(())
    }

    /// Whether a used cgroup may take another job: no process left in it, not too many jobs
    /// behind it, little left charged to it, no OOM kill in it (the kill counter cannot be
    /// reset, and the next job's failure must not be blamed on it).
    fn reusable(&self) -> bool {
        let empty = |f: PathBuf| fs::read(f).is_ok_and(|t| t.iter().all(u8::is_ascii_whitespace));
        let no_processes = match &self.layout {
            Layout::V2 { dir, .. } => empty(dir.join("cgroup.procs")),
            Layout::V1 { memory, cpu, pids } => {
                std::iter::once(memory).chain(cpu).chain(pids).all(|d| empty(d.join("tasks")))
            }
        };
        no_processes
            && self.jobs < REUSE_JOBS_MAX
            && self.usage_bytes().is_some_and(|b| b <= REUSE_LEFTOVER_BYTES_MAX)
            && self.oom_kills_read.unwrap_or_else(|| self.read_oom_kills()) == 0
    }

    /// Directories of this cgroup (one per hierarchy).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2 { dir, .. } => vec![dir.clone()],
            Layout::V1 { memory, cpu, pids } => std::iter::once(memory).chain(cpu).chain(pids).cloned().collect(),
        }
    }

    /// Removes the cgroup, waiting up to 2 s for its last processes to be gone.
    pub fn remove(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in self.dirs() {
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.removed = true;
        Ok(())
    }
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The number in an open cgroup file, read from its start.
fn read_number_at(f: &File) -> Option<u64> {
    let mut buf = [0u8; 32];
    let n = f.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Err(e) = self.remove() {
            tracing::warn!("cannot remove cgroup {:?}: {e}", self.dirs());
        }
    }
}

/// Job cgroups made ahead of the jobs, reused where the kernel allows (see the module's
/// docs), and removed after them on a thread of its own: a cgroup's mkdir and rmdir cost more
/// than a trivial job, and neither needs to be in its path. A cgroup holds one job at a time.
#[derive(Debug)]
pub struct Keeper {
    hierarchy: Hierarchy,
    /// Cgroups ready for a job: made ahead, or used and found [`Cgroup::reusable`].
    ready: Arc<Mutex<Vec<Cgroup>>>,
    /// Cgroups ready beyond which a used one is removed instead of kept.
    keep_max: usize,
    /// Cleared when this kernel turns out unable to reset a cgroup's peak memory.
    reuse: AtomicBool,
    chores: Option<mpsc::Sender<Chore>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Used cgroups are left in place, not removed (a microVM's: it powers off after its job).
    leave_used: bool,
}

#[derive(Debug)]
enum Chore {
    Refill,
    Remove(Cgroup),
}

impl Keeper {
    /// Holds `ahead` cgroups ready (made ahead, or used and kept, up to twice that); 0: none,
    /// and no thread (one job, as in a guest).
    pub fn new(hierarchy: Hierarchy, ahead: usize) -> Keeper {
        let ready = Arc::new(Mutex::new(Vec::new()));
        if ahead == 0 {
            return Keeper {
                hierarchy,
                ready,
                keep_max: 0,
                reuse: AtomicBool::new(false),
                chores: None,
                thread: None,
                leave_used: false,
            };
        }
        let (tx, rx) = mpsc::channel();
        let (h, r) = (hierarchy.clone(), ready.clone());
        let thread = std::thread::Builder::new().name("shoal-cgroups".into()).spawn(move || keep(&h, ahead, &r, &rx));
        let (chores, thread) = match thread {
            Ok(t) => {
                let _ = tx.send(Chore::Refill);
                (Some(tx), Some(t))
            }
            Err(e) => {
                tracing::warn!("cannot start the cgroup thread ({e}): cgroups are made and removed in each job's path");
                (None, None)
            }
        };
        Keeper {
            hierarchy,
            ready,
            keep_max: ahead * 2,
            reuse: AtomicBool::new(true),
            chores,
            thread,
            leave_used: false,
        }
    }

    /// For a microVM's one job: nothing made ahead, no thread, the used cgroup left for the
    /// power-off (its rmdir cost 10 ms under TCG).
    pub fn for_guest(hierarchy: Hierarchy) -> Keeper {
        let mut keeper = Keeper::new(hierarchy, 0);
        keeper.leave_used = true;
        keeper
    }

    /// A cgroup for one job with `limits` in force and its counters at zero: a ready one when
    /// there is one, else a fresh one.
    pub fn take(&self, limits: &Limits) -> io::Result<Cgroup> {
        let mut cg = loop {
            let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut cg = match ready {
                Some(cg) => cg,
                None => Cgroup::create_empty(&self.hierarchy)?,
            };
            match cg.start_job() {
                Ok(()) => break cg,
                Err(e) => {
                    tracing::debug!(
                        "cannot reset the counters of cgroup {:?} ({e}): cgroups are not reused",
                        cg.dirs()
                    );
                    self.reuse.store(false, Ordering::Relaxed);
                    self.give_back(cg);
                }
            }
        };
        self.refill();
        cg.apply(limits)?;
        Ok(cg)
    }

    fn refill(&self) {
        if let Some(tx) = &self.chores {
            let _ = tx.send(Chore::Refill);
        }
    }

    /// Keeps a used cgroup for the next job if it may be reused, else removes it off the
    /// caller's path.
    pub fn give_back(&self, mut cg: Cgroup) {
        if self.leave_used {
            cg.removed = true;
            return;
        }
        if self.reuse.load(Ordering::Relaxed) && cg.reusable() {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            if ready.len() < self.keep_max {
                ready.push(cg);
                return;
            }
        }
        if let Some(tx) = &self.chores
            && let Err(mpsc::SendError(Chore::Remove(cg))) = tx.send(Chore::Remove(cg))
        {
            drop(cg);
        }
    }
}

impl Drop for Keeper {
    /// Waits until every cgroup handed back and every one made ahead is removed.
    fn drop(&mut self) {
        drop(self.chores.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn keep(hierarchy: &Hierarchy, ahead: usize, ready: &Mutex<Vec<Cgroup>>, chores: &mpsc::Receiver<Chore>) {
    let mut stale_swept = false;
    while let Ok(chore) = chores.recv() {
        match chore {
            Chore::Remove(cg) => drop(cg),
            Chore::Refill => {
                while ready.lock().unwrap_or_else(|e| e.into_inner()).len() < ahead {
                    match Cgroup::create_empty(hierarchy) {
                        Ok(cg) => ready.lock().unwrap_or_else(|e| e.into_inner()).push(cg),
                        Err(e) => {
                            tracing::debug!("cannot make a cgroup ahead: {e}");
                            break;
                        }
                    }
                }
                // Once the first jobs have their cgroups: off their path.
                if !stale_swept {
                    stale_swept = true;
                    let n = remove_stale(hierarchy);
                    if n > 0 {
                        tracing::info!("removed {n} job cgroups left by killed processes");
                    }
                }
            }
        }
    }
    ready.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup left under a name this process is about to use (by a killed process that had
    /// its pid) is replaced, not an error: v1 jobs ran without any limit when it was.
    #[test]
    fn a_leftover_cgroup_under_our_name_is_replaced() {
        let hierarchy = Hierarchy::detect().expect("this host should have cgroups");
        let parent = match &hierarchy {
            Hierarchy::V2 { parent, .. } => parent.clone(),
            Hierarchy::V1 { memory, .. } => memory.clone(),
        };
        fs::create_dir_all(&parent).unwrap();
        let dir = parent.join(format!("{JOB_PREFIX}{}-leftover-test", std::process::id()));
        let _ = fs::create_dir(&dir);
        assert!(dir.is_dir());
        make_job_dir(&dir).expect("a leftover empty cgroup is replaced");
        assert!(dir.is_dir());
        fs::remove_dir(&dir).unwrap();
        make_job_dir(&dir).expect("a fresh name is made");
        fs::remove_dir(&dir).unwrap();
    }
}
