//! The namespace sandbox from the outside: validate the request, make the cgroup, start the
//! sandbox helper with its pipes, read stdout/stderr/outputs concurrently with caps, enforce
//! the outer timeout, and turn the helper's status into a [`RawRun`]. The host's namespace
//! backend (`shoal_vm::namespace`) and guest-init both run jobs through it.
//!
//! The sandbox itself is built by the helper ([`crate::sandbox`]), a separate single-threaded
//! process, because forking into namespaces from a multi-threaded tokio program is unsound.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::cgroup::{Cgroup, Hierarchy, Keeper};
use crate::wire::{GATE_FD, HelperRequest, IdMap, JobSpec, STATUS_BYTES_MAX, Status};
use crate::{Captured, Exit, OutputSpec, Request, RunError, collect, sys};

/// The helper's fd holding its request (a memfd).
pub const REQUEST_FD: i32 = 5;
/// Environment variable carrying the spawning process's pid to the helper.
pub const PARENT_ENV: &str = "SHOAL_SANDBOX_PARENT";

/// How long the host lets the sandbox run past `timeout_ms` before killing it: PID 1 kills
/// the job at `timeout_ms` itself and needs a moment to collect the partial outputs.
const HOST_GRACE_MS: u64 = 2_000;
/// How long stdout and stderr may stay open after the helper ended or was killed: every
/// process holding them is dead by then, so their ends come at once.
const PIPE_END_WAIT_MS: u64 = 1_000;
/// Fresh job cgroups held ready (a burst of jobs as large as the cores of a big host takes a
/// few inline).
const CGROUPS_AHEAD: usize = 4;
/// Ids mapped 1:1 when the caller is root: the usual range of users and groups in images.
const ID_MAP_COUNT: u32 = 65_536;

/// How the sandbox helper starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Helper {
    /// `program args... REQUEST.json`, with posix_spawn: for a multi-threaded caller.
    Spawn(HelperCommand),
    /// A fork of this process that runs the helper's code, no exec: only for a caller that
    /// is single-threaded when it starts the job (guest-init), checked at each job.
    Fork,
}

/// How to start the sandbox helper: `program args... REQUEST.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl HelperCommand {
    /// A standalone helper program (e.g. the `shoal-sandbox` binary of this crate).
    pub fn new(program: impl Into<PathBuf>) -> HelperCommand {
        HelperCommand { program: program.into(), args: Vec::new() }
    }

    /// The running executable with a subcommand, e.g. `shoal __sandbox`.
    pub fn current_exe(subcommand: &str) -> io::Result<HelperCommand> {
        Ok(HelperCommand { program: std::env::current_exe()?, args: vec![subcommand.to_string()] })
    }
}

/// Runs jobs in user, mount, pid, net, ipc and uts namespaces with an overlay root.
#[derive(Debug)]
pub struct NamespaceBackend {
    helper: Helper,
    /// The empty directory every sandbox mounts its staging tmpfs on, each in its own mount
    /// namespace (so one directory serves all jobs at once); made on first use.
    staging: std::sync::OnceLock<Result<PathBuf, String>>,
    /// None: each job waits for its helper's exit (one job, as in a guest, or no thread).
    /// Declared before `cgroups`: dropped first, it gives back the last cgroups.
    reaper: Option<Reaper>,
    /// The sandbox's PID 1 stays after its report and the job returns without waiting for the
    /// helper ([`HelperRequest::linger`]): only for a guest-init that powers off next.
    linger: bool,
    /// None: this host has no usable cgroups, jobs run without limits.
    cgroups: Option<Arc<Keeper>>,
}

/// Reaps helpers whose sandbox has reported its status and closed its pipes, then gives back
/// their cgroups: the kernel's teardown of a sandbox's namespaces (the mount namespace and the
/// overlay wait for RCU grace periods, ~1 ms a job on the machine of docs/BENCHMARKS.md)
/// holds up neither the job's result nor its core. Dropping it waits for every helper sent.
#[derive(Debug)]
struct Reaper {
    tx: Option<mpsc::Sender<Reap>>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Debug)]
enum Reap {
    Helper(i32, Option<Cgroup>),
    /// Answered once everything sent before it is done.
    Barrier(mpsc::Sender<()>),
}

impl Reaper {
    fn start(cgroups: Option<Arc<Keeper>>) -> Option<Reaper> {
        let (tx, rx) = mpsc::channel::<Reap>();
        let thread = thread::Builder::new().name("shoal-reaper".into()).spawn(move || {
            for reap in rx {
                match reap {
                    Reap::Helper(pid, cgroup) => reap_helper(pid, cgroup, cgroups.as_deref()),
                    Reap::Barrier(done) => drop(done.send(())),
                }
            }
        });
        match thread {
            Ok(t) => Some(Reaper { tx: Some(tx), thread: Some(t) }),
            Err(e) => {
                tracing::warn!("cannot start the reaper thread ({e}): each job waits for its helper to exit");
                None
            }
        }
    }
}

impl Reaper {
    /// Hands a helper to the reaper thread; reaps it here if the thread is gone.
    fn send(&self, pid: i32, cgroup: Option<Cgroup>, keeper: Option<&Keeper>) {
        let reap = Reap::Helper(pid, cgroup);
        let unsent = match &self.tx {
            Some(tx) => tx.send(reap).err().map(|e| e.0),
            None => Some(reap),
        };
        if let Some(Reap::Helper(pid, cgroup)) = unsent {
            reap_helper(pid, cgroup, keeper);
        }
    }
}

/// Waits for a helper whose sandbox is done, then gives back its cgroup.
fn reap_helper(pid: i32, cgroup: Option<Cgroup>, keeper: Option<&Keeper>) {
    if let Err(e) = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
        tracing::warn!("waiting for sandbox helper {pid}: {e}");
    }
    if let (Some(c), Some(k)) = (cgroup, keeper) {
        k.give_back(c);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl NamespaceBackend {
    /// A backend for many jobs: cgroups are made ahead of them and removed after them, off
    /// their path.
    pub fn new(helper: HelperCommand) -> NamespaceBackend {
        NamespaceBackend::with_cgroups_ahead(Helper::Spawn(helper), CGROUPS_AHEAD)
    }

    /// A backend for one job of a single-threaded program (guest-init): the helper is a fork
    /// of the caller (no exec: under TCG starting the 3 MB helper afresh cost 40 ms), no
    /// cgroup is made ahead, no thread is started. A caller with more than one thread gets
    /// an error, not an unsound fork. Each sandbox's PID 1 and helper linger after the job,
    /// idle, until this process ends (they die with it): the caller powers the machine off.
    pub fn forking_for_one_job() -> NamespaceBackend {
        let cgroups = match Hierarchy::guest() {
            Ok(h) => Some(Keeper::for_guest(h)),
            Err(why) => {
                tracing::warn!("{why}");
                None
            }
        };
        let cgroups = cgroups.map(Arc::new);
        NamespaceBackend {
            helper: Helper::Fork,
            cgroups,
            reaper: None,
            linger: true,
            staging: std::sync::OnceLock::new(),
        }
    }

    fn with_cgroups_ahead(helper: Helper, ahead: usize) -> NamespaceBackend {
        let cgroups = match Hierarchy::detect() {
            Ok(h) => Some(Arc::new(Keeper::new(h, ahead))),
            Err(why) => {
                tracing::warn!("{why}");
                None
            }
        };
        let reaper = Reaper::start(cgroups.clone());
        NamespaceBackend { helper, cgroups, reaper, linger: false, staging: std::sync::OnceLock::new() }
    }

    /// Waits until the helpers of every job that has returned are reaped and their cgroups
    /// given back (jobs return while their helper may still be exiting).
    pub fn reap_pending(&self) {
        let Some(tx) = self.reaper.as_ref().and_then(|r| r.tx.as_ref()) else { return };
        let (done, wait) = mpsc::channel();
        if tx.send(Reap::Barrier(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// `$TMPDIR/shoal-staging-<euid>`: created 0700 if missing, refused if it is anything but
    /// our own directory (a symlink planted there must not redirect the mount).
    fn staging_dir(&self) -> Result<PathBuf, RunError> {
        use std::os::unix::fs::MetadataExt;
        let made = self.staging.get_or_init(|| {
            let euid = nix::unistd::geteuid().as_raw();
            let dir = std::env::temp_dir().join(format!("shoal-staging-{euid}"));
            match fs::create_dir(&dir) {
                Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("chmod {}: {e}", dir.display()))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("creating {}: {e}", dir.display())),
            }
            let meta = fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if !meta.is_dir() || meta.uid() != euid {
                return Err(format!("{} is not a directory of ours: remove it", dir.display()));
            }
            Ok(dir)
        });
        made.clone().map_err(RunError::Setup)
    }

    /// Whether this host can create the namespaces the backend needs; Err says why not and
    /// how to fix it.
    pub fn probe() -> Result<(), ProbeError> {
        let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
        if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
            return Err(ProbeError::UserNamespacesOff);
        }
        let root = nix::unistd::geteuid().is_root();
        if !root && read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
            return Err(ProbeError::UnprivilegedUserNamespacesOff);
        }
        if !read("/proc/filesystems").unwrap_or_default().contains("overlay") {
            return Err(ProbeError::NoOverlay);
        }
        use nix::sched::CloneFlags as F;
        let flags =
            F::CLONE_NEWUSER | F::CLONE_NEWNS | F::CLONE_NEWPID | F::CLONE_NEWNET | F::CLONE_NEWIPC | F::CLONE_NEWUTS;
        sys::can_unshare(flags).map_err(ProbeError::Probe)?.map_err(ProbeError::Unshare)
    }
}

/// Why this host cannot run the namespace sandbox ([`NamespaceBackend::probe`]); each says the fix.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("user namespaces are disabled: run `sysctl -w user.max_user_namespaces=15000`")]
    UserNamespacesOff,
    #[error("unprivileged user namespaces are disabled: run `sysctl -w kernel.unprivileged_userns_clone=1`")]
    UnprivilegedUserNamespacesOff,
    #[error("the kernel has no overlayfs: run `modprobe overlay`")]
    NoOverlay,
    /// unshare(2) failed in a child of this process.
    #[error(
        "cannot create user/mount/pid/net/ipc/uts namespaces: {}; enable user namespaces \
         (sysctl user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu) \
         or run in a container started with --privileged or a seccomp profile that allows unshare",
        .0.desc()
    )]
    Unshare(nix::errno::Errno),
    /// The child that tries could not be forked or waited for.
    #[error("cannot run the namespace probe: {0}")]
    Probe(#[source] io::Error),
}

/// What a sandboxed run produced, with the output tar handed to a caller-chosen sink: the host
/// unpacks it into a directory, guest-init copies it onto the reply disk as it comes.
#[derive(Debug)]
pub struct RawRun<T> {
    pub exit: Exit,
    pub stdout: Captured,
    pub stderr: Captured,
    pub wall_ms: u64,
    pub user_ms: u64,
    pub sys_ms: u64,
    pub peak_memory_bytes: u64,
    /// What the sink returned; an error here is not yet a run error (a failed job's outputs
    /// may well be incomplete).
    pub outputs: Result<T, collect::UnpackError>,
}

/// Creates a directory only its owner can enter (outputs keep their modes, setuid included);
/// an empty one already there (a reused work directory) serves.
pub fn make_private_dir(d: &Path) -> Result<(), RunError> {
    match fs::create_dir(d) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && fs::read_dir(d).is_ok_and(|mut i| i.next().is_none()) => {
        }
        Err(e) => return Err(RunError::io(format!("creating {}", d.display()), e)),
    }
    fs::set_permissions(d, fs::Permissions::from_mode(0o700))
        .map_err(|e| RunError::io(format!("chmod {}", d.display()), e))
}

impl NamespaceBackend {
    /// Runs the job; the output tar stream (see [`crate::collect`]) goes to `sink`, on its own
    /// thread, bounded at twice the output limit plus 64 MiB of headers.
    ///
    /// With a `gate`, the sandbox is built first and `gate` is called before the job starts
    /// (the caller takes the job's cores there): building a sandbox waits on the kernel
    /// (RCU grace periods, the helper's start) for part of its time, which then overlaps
    /// with other jobs' runs instead of leaving their cores idle. The job's timeout and
    /// wall time count from the go-ahead.
    pub fn run_streaming<T, F>(
        &self,
        req: &Request,
        sink: F,
        gate: Option<&mut dyn FnMut()>,
    ) -> Result<RawRun<T>, RunError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Read) -> Result<T, collect::UnpackError> + Send + 'static,
    {
        let mut started = Instant::now();
        // Gating needs the helper's extra fd: only a spawned helper has one; a forked one
        // (one job in a guest) goes ahead at once.
        let mut gate = match gate {
            Some(go) if !matches!(self.helper, Helper::Spawn(_)) => {
                go();
                None
            }
            g => g,
        };
        let root = nix::unistd::geteuid().is_root();
        validate(req, root)?;
        if let Some(d) = req.pci_devices.first() {
            return Err(invalid(format!(
                "PCI device {} is passed by VFIO to a microVM, and this is the namespace sandbox: run the job \
                 with `isolation: vm`",
                d.address
            )));
        }
        let staging_dir = self.staging_dir()?;
        let mut cgroup = match &self.cgroups {
            None => {
                tracing::warn!("no cgroups: running without memory and CPU limits");
                None
            }
            Some(k) => match k.take(&req.limits) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("cannot create the job's cgroup ({e}): running without memory and CPU limits");
                    None
                }
            },
        };
        let id_map = if root {
            IdMap::Identity { count: ID_MAP_COUNT }
        } else {
            IdMap::Single { host_uid: nix::unistd::getuid().as_raw(), host_gid: nix::unistd::getgid().as_raw() }
        };
        let (cgroup_tasks, cgroup_procs) = cgroup.as_ref().map(Cgroup::join_files).unwrap_or_default();
        let helper_req = HelperRequest {
            job: JobSpec::of(req),
            rootfs: req.rootfs.clone(),
            inputs: req.inputs.clone(),
            host_mounts: req.host_mounts.clone(),
            staging_dir,
            cgroup_tasks,
            cgroup_procs,
            id_map,
            gated: gate.is_some(),
            linger: self.linger,
        };
        let pipe = || io::pipe().map_err(|e| RunError::io("creating a pipe", e));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (tar_r, tar_w) = pipe()?;
        let (gate_r, mut gate_w) = match gate {
            Some(_) => pipe().map(|(r, w)| (Some(r), Some(w)))?,
            None => (None, None),
        };
        // Above fd 10, so that moving them to 0-4 in the child cannot clobber each other.
        let high = |fd: &dyn AsFd| sys::dup_above(&fd, 10).map_err(|e| RunError::io("dup", e));
        let stdin = match &req.stdin {
            Some(p) => File::open(p).map_err(|e| RunError::io(format!("opening stdin {}", p.display()), e))?,
            None => File::open("/dev/null").map_err(|e| RunError::io("opening /dev/null", e))?,
        };
        let mut child_fds = vec![high(&stdin)?, high(&out_w)?, high(&err_w)?, high(&status_w)?, high(&tar_w)?];
        drop((stdin, out_w, err_w, status_w, tar_w));
        let pid = match &self.helper {
            Helper::Spawn(command) => {
                // The request travels in a memfd, read by the helper as `/proc/self/fd/5`: no
                // file to create and delete per job.
                let json = serde_json::to_vec(&helper_req).expect("request serializes");
                let request = sys::memfd_with(c"shoal-request", &json)
                    .map_err(|e| RunError::io("writing the request to a memfd", e))?;
                child_fds.push(high(&request)?);
                drop(request);
                if let Some(r) = &gate_r {
                    debug_assert_eq!(child_fds.len(), GATE_FD as usize, "the gate's fd number in the helper");
                    child_fds.push(high(r)?);
                }
                spawn_helper(command, &child_fds)?
            }
            Helper::Fork => {
                let threads = sys::thread_count();
                if threads != 1 {
                    return Err(RunError::Helper(format!(
                        "the forking sandbox backend needs a single-threaded caller; this process has {threads} threads"
                    )));
                }
                let raw_fds: Vec<i32> = child_fds.iter().map(AsRawFd::as_raw_fd).collect();
                let parent = std::process::id() as i32;
                // The child runs the helper's single-threaded code and exits.
                sys::fork_with_fds(&raw_fds, || crate::sandbox::forked_helper_main(parent, &helper_req))
                    .map_err(|e| RunError::io("forking the sandbox helper", e))?
            }
        };
        drop(child_fds); // our copies of the pipes' write ends: EOF comes when the sandbox ends
        drop(gate_r);
        let pidfd = sys::pidfd_open(pid).map_err(|e| RunError::io("pidfd_open", e))?;

        let cap = req.limits.stdout_bytes_max;
        let tar_cap = req.limits.output_stream_bytes_max();
        let unpack = move || {
            let mut capped = Capped { inner: tar_r, left: tar_cap };
            let result = sink(&mut capped);
            // Keep draining so the sandbox never blocks on a full pipe.
            let _ = io::copy(&mut capped.inner, &mut io::sink());
            result
        };
        // With no file, directory or glob outputs the stream is an empty archive (two zero
        // blocks, within the pipe's buffer): read after the sandbox ends, no thread for it.
        let files = req.outputs.values().any(|o| !matches!(o, OutputSpec::Stdout | OutputSpec::Stderr));
        let unpacking = if files { Unpacking::OnThread(thread::spawn(unpack)) } else { Unpacking::After(unpack) };

        // This thread reads stdout and stderr while it waits for the helper: one poll over the
        // two pipes and the helper's pidfd, no thread per pipe.
        let mut pipes = [
            CappedPipe::spilling(out_r, "stdout", req.work_dir.join("stdout")),
            CappedPipe::spilling(err_r, "stderr", req.work_dir.join("stderr")),
        ];
        // The status line is read as it comes: with a reaper, the job is over once PID 1 has
        // reported and the pipes have ended, while the helper may still be exiting.
        let mut status_pipe = CappedPipe::new(status_r, "status");
        let reported = |p: &CappedPipe| p.buf.contains(&b'\n') || p.fd.is_none();
        let mut overflowed: Option<&'static str> = None;
        let mut chunk = vec![0u8; 64 << 10];
        if let (Some(go), Some(w)) = (gate.as_mut(), gate_w.as_mut()) {
            // Wait for the root to be built (or the sandbox to fail), bounded like the job.
            let setup_deadline = started + Duration::from_millis(req.limits.timeout_ms.saturating_add(HOST_GRACE_MS));
            while !reported(&status_pipe) {
                let left = setup_deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
                let fds = [status_pipe.raw(), pidfd.as_raw_fd()];
                let ready = sys::poll_any(&fds, left).map_err(|e| RunError::io("poll", e))?;
                if ready[0] {
                    status_pipe.read_some(&mut chunk, STATUS_BYTES_MAX);
                } else if !ready[1] {
                    tracing::warn!("the sandbox was not built within the job's timeout: killing it");
                    let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
                    break;
                } else {
                    break; // the helper is gone; the loop below reports why
                }
            }
            let line_end = status_pipe.buf.iter().position(|&b| b == b'\n');
            let first: Option<Status> = line_end.and_then(|n| serde_json::from_slice(&status_pipe.buf[..n]).ok());
            if let (Some(n), Some(Status::Ready)) = (line_end, first) {
                status_pipe.buf.drain(..=n);
                go();
                if w.write_all(b"1").is_ok() {
                    started = Instant::now();
                }
            }
        }
        // PID 1 reads EOF instead of the go-ahead if it never came.
        drop(gate_w);
        let deadline = started + Duration::from_millis(req.limits.timeout_ms.saturating_add(HOST_GRACE_MS));
        let (mut host_timeout, mut exited) = (false, false);
        loop {
            let open: Vec<usize> = (0..pipes.len()).filter(|&i| pipes[i].fd.is_some()).collect();
            let detachable =
                (self.reaper.is_some() || self.linger) && status_pipe.buf.contains(&b'\n') && !host_timeout;
            if (exited || detachable) && open.is_empty() {
                break;
            }
            let mut fds: Vec<i32> = open.iter().map(|&i| pipes[i].raw()).collect();
            let status_at = (!reported(&status_pipe)).then(|| {
                fds.push(status_pipe.raw());
                fds.len() - 1
            });
            if !exited {
                fds.push(pidfd.as_raw_fd());
            }
            // Once the helper is gone (or killed), only the pipes' ends are left: they come at once.
            let ending = exited || host_timeout;
            let left = if ending {
                PIPE_END_WAIT_MS
            } else {
                deadline.saturating_duration_since(Instant::now()).as_millis() as u64
            };
            let ready = sys::poll_any(&fds, left).map_err(|e| RunError::io("poll", e))?;
            for (k, &i) in open.iter().enumerate() {
                if ready[k] && pipes[i].read_some(&mut chunk, cap) && overflowed.is_none() {
                    overflowed = Some(pipes[i].which);
                    let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
                }
            }
            if let Some(k) = status_at
                && ready[k]
            {
                status_pipe.read_some(&mut chunk, STATUS_BYTES_MAX);
            }
            if !exited && ready[fds.len() - 1] {
                exited = true;
            }
            if ready.contains(&true) {
                continue;
            }
            if ending {
                tracing::warn!("a pipe of the sandbox stayed open {PIPE_END_WAIT_MS} ms after it ended");
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!("sandbox still running {HOST_GRACE_MS} ms after its timeout: killing it");
                host_timeout = true;
                let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
            }
        }
        let helper_status = if exited {
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
                .map(|w| format!("{w:?}"))
                .map_err(|e| RunError::io("waiting for the helper", e.into()))?
        } else {
            "exiting".to_string()
        };
        let [stdout, stderr] = pipes.map(CappedPipe::into_captured);
        let stderr_tail = || String::from_utf8_lossy(&stderr.tail(2000)).into_owned();
        let unpacked = match unpacking {
            Unpacking::OnThread(t) => {
                t.join().unwrap_or_else(|_| Err(collect::UnpackError::Invalid("unpack thread panicked".into())))
            }
            Unpacking::After(unpack) => unpack(),
        };
        let mut status_text = std::mem::take(&mut status_pipe.buf);
        if let Some(rest) = status_pipe.fd.take().filter(|_| exited) {
            let _ = rest.take(STATUS_BYTES_MAX).read_to_end(&mut status_text);
        }
        let status: Option<Status> =
            status_text.split(|b| *b == b'\n').find(|l| !l.is_empty()).and_then(|l| serde_json::from_slice(l).ok());

        let oom = cgroup.as_mut().is_some_and(|c| c.oom_kills() > 0);
        let cg_peak = cgroup.as_ref().and_then(Cgroup::peak_memory_bytes);
        match self.reaper.as_ref().filter(|_| !exited) {
            // The helper may still be exiting (the loop ended on PID 1's report).
            Some(r) => r.send(pid, cgroup, self.cgroups.as_deref()),
            None => {
                if let (Some(c), Some(k)) = (cgroup, &self.cgroups) {
                    k.give_back(c);
                }
            }
        }
        let (mut exit, user_ms, sys_ms, rss) = match status {
            Some(Status::Finished(f)) => (f.exit, f.user_ms, f.sys_ms, f.max_rss_bytes),
            Some(Status::SetupFailed { message }) if overflowed.is_none() && !host_timeout => {
                return Err(RunError::Setup(message));
            }
            _ if overflowed.is_some() || host_timeout || oom => (Exit::Timeout, 0, 0, 0), // replaced below
            Some(Status::Pid1Died { signal, code }) => {
                return Err(RunError::Helper(format!(
                    "PID 1 of the sandbox died (signal {signal:?}, code {code:?}); stderr: {}",
                    stderr_tail()
                )));
            }
            _ => {
                return Err(RunError::Helper(format!(
                    "helper ended ({helper_status}) without a status; stderr: {}",
                    stderr_tail()
                )));
            }
        };
        if let Some(which) = overflowed {
            exit = Exit::OutputTooLarge { output: which.to_string(), limit_bytes: cap };
        } else if oom && exit != Exit::Timeout && !exit.success() {
            exit = Exit::Oom;
        } else if host_timeout {
            exit = Exit::Timeout;
        }
        let wall_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(?exit, wall_ms, "job finished");
        Ok(RawRun {
            exit,
            stdout,
            stderr,
            wall_ms,
            user_ms,
            sys_ms,
            peak_memory_bytes: cg_peak.unwrap_or(rss),
            outputs: unpacked,
        })
    }
}

/// Where the output tar stream is read: on a thread while the sandbox runs, or after it.
enum Unpacking<T, F> {
    OnThread(thread::JoinHandle<T>),
    After(F),
}

/// stdout or stderr of the sandbox: what was read of it, at most the cap; past
/// [`Captured::MEMORY_BYTES_MAX`] written to a file instead of memory.
struct CappedPipe {
    /// None once it reached its end.
    fd: Option<io::PipeReader>,
    buf: Vec<u8>,
    which: &'static str,
    /// Over its cap: the rest is read and dropped.
    over: bool,
    /// Where the stream goes once it outgrows memory, and the file once it does.
    spill: Option<(PathBuf, Option<fs::File>)>,
    /// Bytes kept in all (memory or file).
    len: u64,
}

impl CappedPipe {
    fn new(fd: io::PipeReader, which: &'static str) -> CappedPipe {
        CappedPipe { fd: Some(fd), buf: Vec::new(), which, over: false, spill: None, len: 0 }
    }

    fn spilling(fd: io::PipeReader, which: &'static str, path: PathBuf) -> CappedPipe {
        CappedPipe { spill: Some((path, None)), ..CappedPipe::new(fd, which) }
    }

    /// Keeps `data`: in memory, or in the spill file once memory would pass its bound.
    fn keep(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        let Some((path, file)) = self.spill.as_mut() else {
            self.buf.extend_from_slice(data);
            return;
        };
        if file.is_none() && self.buf.len() + data.len() <= Captured::MEMORY_BYTES_MAX {
            self.buf.extend_from_slice(data);
            return;
        }
        if file.is_none() {
            match fs::OpenOptions::new().write(true).create(true).truncate(true).open(&*path) {
                Ok(mut f) => {
                    let _ = f.write_all(&self.buf);
                    self.buf = Vec::new();
                    *file = Some(f);
                }
                Err(e) => {
                    tracing::warn!("cannot write {}: {e}; keeping {} in memory", path.display(), self.which);
                    self.spill = None;
                    self.buf.extend_from_slice(data);
                    return;
                }
            }
        }
        if let Some(f) = file
            && let Err(e) = f.write_all(data)
        {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }

    fn into_captured(self) -> Captured {
        match self.spill {
            Some((path, Some(_))) => Captured::File { path, len: self.len },
            _ => Captured::Bytes(self.buf),
        }
    }

    fn raw(&self) -> i32 {
        self.fd.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// One read of a pipe poll found ready, keeping at most `cap` bytes in all. Returns true
    /// when this read took it over its cap (a clear error beats a truncated success).
    fn read_some(&mut self, chunk: &mut [u8], cap: u64) -> bool {
        let Some(fd) = self.fd.as_mut() else { return false };
        let n = match fd.read(chunk) {
            Ok(0) => {
                self.fd = None;
                return false;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => {
                self.fd = None;
                return false;
            }
        };
        if self.over {
            return false;
        }
        let room = cap.saturating_sub(self.len) as usize;
        self.keep(&chunk[..n.min(room)]);
        self.over = n > room;
        self.over
    }
}

/// A reader that fails once more than `left` bytes were read.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| io::Error::other("output stream over its bound"))?;
        Ok(n)
    }
}

/// posix_spawn of the helper program with `fds` as its 0-5 and the request path (fd 5) last.
fn spawn_helper(command: &HelperCommand, fds: &[OwnedFd]) -> Result<i32, RunError> {
    let cstr = |s: &std::ffi::OsStr| {
        std::ffi::CString::new(s.as_encoded_bytes()).map_err(|_| invalid(format!("{s:?} contains a NUL byte")))
    };
    let mut argv = vec![cstr(command.program.as_os_str())?];
    for a in &command.args {
        argv.push(cstr(a.as_ref())?);
    }
    argv.push(cstr(format!("/proc/self/fd/{REQUEST_FD}").as_ref())?);
    // The helper makes itself die with the thread that spawned it (see sandbox_helper_main).
    let envp = [std::ffi::CString::new(format!("{PARENT_ENV}={}", std::process::id())).expect("no NUL")];
    let raw_fds: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    sys::spawn(&argv, &envp, &raw_fds)
        .map_err(|source| RunError::HelperSpawn { program: command.program.clone(), source })
}

fn invalid(msg: impl Into<String>) -> RunError {
    RunError::InvalidRequest(msg.into())
}

/// Checks a request before anything is made for it: every refusal names the field and the fix.
pub fn validate(req: &Request, root: bool) -> Result<(), RunError> {
    if !req.rootfs.is_dir() {
        return Err(RunError::RootfsMissing { path: req.rootfs.clone() });
    }
    let rootfs = req.rootfs.to_str().ok_or_else(|| invalid("rootfs path is not UTF-8"))?;
    if rootfs.contains([',', ':', '\\']) || !req.rootfs.is_absolute() {
        return Err(invalid(format!(
            "rootfs path {rootfs} must be absolute and free of `,` `:` `\\` (overlayfs options cannot carry them): materialize the image elsewhere"
        )));
    }
    if !req.work_dir.is_dir() {
        return Err(invalid(format!("work_dir {} is not a directory: create it first", req.work_dir.display())));
    }
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(invalid("argv is empty: give the program to run"));
    }
    if !req.workdir.starts_with('/') {
        return Err(invalid(format!("workdir `{}` must be absolute", req.workdir)));
    }
    for (k, _) in &req.env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(invalid(format!("env name `{k}` is empty or holds `=` or NUL")));
        }
    }
    if root {
        if req.uid >= ID_MAP_COUNT || req.gid >= ID_MAP_COUNT {
            return Err(invalid(format!("uid/gid {}/{} must be below {ID_MAP_COUNT}", req.uid, req.gid)));
        }
    } else if req.uid != 0 || req.gid != 0 {
        return Err(invalid(
            "without root, only uid 0 and gid 0 can be mapped into the sandbox: run shoal as root or run the job as 0:0",
        ));
    }
    for (name, spec) in &req.outputs {
        if !collect::valid_name(name) {
            return Err(invalid(format!("output name `{name}` must be one plain path component")));
        }
        let path = match spec {
            OutputSpec::Stdout | OutputSpec::Stderr => continue,
            OutputSpec::Fd(n) if (3..=shoal_dag::FD_OUTPUT_MAX).contains(n) => continue,
            OutputSpec::Fd(n) => {
                return Err(invalid(format!("output `{name}`: fd {n} is not from 3 to {}", shoal_dag::FD_OUTPUT_MAX)));
            }
            OutputSpec::File(p) | OutputSpec::Dir(p) | OutputSpec::Glob(p) => p,
        };
        let under = |base: &str| path == base || path.starts_with(&format!("{base}/"));
        if !(under("/output") || under("/scratch")) {
            return Err(invalid(format!("output `{name}`: {path} must be under /output or /scratch")));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for inp in &req.inputs {
        if !collect::valid_name(&inp.name) || !seen.insert(&inp.name) {
            return Err(invalid(format!("input name `{}` must be one plain path component, used once", inp.name)));
        }
        if fs::metadata(&inp.host_path).is_err() {
            return Err(invalid(format!("input `{}`: {} does not exist", inp.name, inp.host_path.display())));
        }
        if inp.host_path.to_str().is_none() {
            return Err(invalid(format!("input `{}`: path is not UTF-8", inp.name)));
        }
    }
    let _ = Path::new(rootfs);
    Ok(())
}
