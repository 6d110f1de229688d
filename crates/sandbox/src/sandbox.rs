//! The sandbox helper: the process that builds the namespace sandbox and runs the job.
//!
//! Process tree: host (multi-threaded) -> helper (this program; host root or the caller's
//! uid) -> PID 1 of new user, mount, pid, ipc, uts (and net) namespaces -> the job.
//!
//! - The helper is single-threaded, so it may `clone` freely. It clones PID 1 directly into
//!   the new namespaces, puts it in the job's cgroup and writes its uid/gid maps (it still
//!   has the host privileges for that), then releases it through a pipe.
//! - PID 1 builds the root (overlay of the read-only rootfs and a tmpfs, /proc, /sys, a
//!   minimal /dev, /input read-only, /output and /scratch as bounded tmpfs), pivots into it,
//!   forks the job, waits for it up to the timeout, kills whatever is left in the namespace,
//!   collects the outputs as a tar onto [`TAR_FD`] and writes one [`Status`] line onto
//!   [`STATUS_FD`].
//! - `PR_SET_PDEATHSIG(SIGKILL)` on every level: the host kills the helper, the kernel kills
//!   PID 1, and the end of PID 1 ends every process of its pid namespace.
//!
//! Errors here are messages (`Result<_, String>`): nothing in the helper decides on them, they
//! cross the status pipe as [`Status::SetupFailed`] and the runner hands them on as
//! [`crate::RunError::Setup`].

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use crate::wire::{Finished, GATE_FD, HelperRequest, IdMap, STATUS_FD, Status, TAR_FD};
use crate::{Exit, collect, sys};

/// Extra room of the `/output` tmpfs above `output_bytes_max`, so that going over the limit
/// is seen as "too large" rather than as a job failing on ENOSPC at exactly the limit.
const OUTPUT_TMPFS_SLACK_BYTES: u64 = 4 << 20;
/// Where `argv[0]` is looked up when the job's env has no PATH (the lookup only: PATH is
/// not added to the job's environment).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entry point of the helper (`shoal-sandbox REQUEST.json`, or `shoal __sandbox ...`). The
/// last argument is the request file; fds 0-4 are set up by the host (see [`crate::wire`]).
pub fn sandbox_helper_main() -> ! {
    // Die with the thread that started us, which waits for us until we are reaped. It was
    // spawned without a fork hook (posix_spawn), so the helper does this itself, then checks
    // that the parent did not die before the request took hold.
    if let Some(parent) = std::env::var(crate::namespace::PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok())
        && !die_with_parent(parent)
    {
        std::process::exit(2);
    }
    let request = std::env::args_os()
        .next_back()
        .ok_or_else(|| "no request file argument".to_string())
        .and_then(|path| fs::read(&path).map_err(|e| format!("reading request {}: {e}", Path::new(&path).display())))
        .and_then(|text| serde_json::from_slice(&text).map_err(|e| format!("bad request: {e}")));
    std::process::exit(helper_main(request.as_ref()))
}

/// The helper as a fork of a single-threaded caller (guest-init), with its fds in place and
/// its request in memory; returns the exit code.
pub fn forked_helper_main(parent: i32, request: &HelperRequest) -> i32 {
    if !die_with_parent(parent) {
        return 2;
    }
    helper_main(Ok(request))
}

fn helper_main(request: Result<&HelperRequest, &String>) -> i32 {
    let status = match take_fd(STATUS_FD) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("shoal-sandbox: {e}; this program is started by shoal's namespace backend, not by hand");
            return 2;
        }
    };
    match request.map_err(String::clone).and_then(|req| helper(&status, req)) {
        Ok(code) => code,
        Err(message) => {
            write_status(&status, &Status::SetupFailed { message });
            1
        }
    }
}

/// Takes ownership of an fd the host passed, marking it close-on-exec so the job never sees it.
fn take_fd(fd: i32) -> Result<File, String> {
    sys::take_inherited_fd(fd).map_err(|e| e.to_string())
}

/// Dies with the parent (SIGKILL when it ends), then checks that `parent` did not end before
/// that took hold. False: this process should leave at once.
fn die_with_parent(parent: i32) -> bool {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_ok() && nix::unistd::getppid().as_raw() == parent
}

fn write_status(mut status: &File, s: &Status) {
    let mut line = serde_json::to_vec(s).expect("status serializes");
    line.push(b'\n');
    let _ = status.write_all(&line);
}

fn helper(status: &File, req: &HelperRequest) -> Result<i32, String> {
    let tar = take_fd(TAR_FD)?;
    let gate = if req.gated { Some(take_fd(GATE_FD)?) } else { None };
    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;

    // PID 1 is born in the job's cgroups where the helper can join them itself (v1, see
    // `Cgroup::join_files`), and is moved into the others below.
    for tasks in &req.cgroup_tasks {
        fs::write(tasks, "0").map_err(|e| format!("joining cgroup {}: {e}", tasks.display()))?;
    }
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if !req.job.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // PID 1 gets the sync pipe's read end, the tar and the gate (the helper's copies go with
    // the closure when clone_fork returns); the write end stays the helper's alone.
    let sync_w_fd = sync_w.as_raw_fd();
    let pid = sys::clone_fork(flags, move || {
        // The child leaves through exit, so its copy of the write end is never dropped: close it
        // here, or PID 1 would never see EOF if the helper died.
        let _ = nix::unistd::close(sync_w_fd);
        pid1(req, sync_r, status, tar, gate)
    })
    .map_err(|e| {
        format!("cannot create namespaces ({e}); check that user namespaces are enabled (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1)")
    })?;
    // If anything below fails, returning drops sync_w: PID 1 reads EOF and exits.
    for procs in &req.cgroup_procs {
        fs::write(procs, pid.to_string()).map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }
    write_id_maps(pid, req.id_map)?;
    let mut sync_w = File::from(sync_w);
    sync_w.write_all(b"1").map_err(|e| format!("releasing PID 1: {e}"))?;
    drop(sync_w);
    // The job's stdin, stdout and stderr are PID 1's business now: without our copies, the
    // host sees their ends when the sandbox's last process lets go of them, not when we exit
    // after the kernel's teardown of the sandbox's namespaces (RCU grace periods). /dev/null
    // in their place, so a stray message of ours cannot land in a file opened later.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, 0 | 1)) => Ok(0), // PID 1 wrote its status
        Ok(WaitStatus::Exited(_, code)) => {
            write_status(status, &Status::Pid1Died { signal: None, code: Some(code) });
            Ok(0)
        }
        Ok(WaitStatus::Signaled(_, sig, _)) => {
            write_status(status, &Status::Pid1Died { signal: Some(sig as i32), code: None });
            Ok(0)
        }
        other => Err(format!("waiting for PID 1: {other:?}")),
    }
}

fn write_id_maps(pid: i32, map: IdMap) -> Result<(), String> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let w = |file: &str, text: String| {
        fs::write(proc.join(file), &text).map_err(|e| format!("writing {file} `{}`: {e}", text.trim()))
    };
    match map {
        IdMap::Identity { count } => {
            w("uid_map", format!("0 0 {count}\n"))?;
            w("gid_map", format!("0 0 {count}\n"))
        }
        IdMap::Single { host_uid, host_gid } => {
            // An unprivileged process may write gid_map only after giving up setgroups.
            w("setgroups", "deny".into())?;
            w("uid_map", format!("0 {host_uid} 1\n"))?;
            w("gid_map", format!("0 {host_gid} 1\n"))
        }
    }
}

/// PID 1 of the sandbox. Returns its exit code: 0 after a `Finished` status, 1 after
/// `SetupFailed`.
fn pid1(req: &HelperRequest, sync_r: OwnedFd, status: &File, tar: File, gate: Option<File>) -> i32 {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Wait until the helper has written our maps and cgroup; EOF means it died.
    let mut byte = [0u8; 1];
    if File::from(sync_r).read(&mut byte).ok() != Some(1) {
        return 1;
    }
    if let Err(message) = setup_root(req) {
        write_status(status, &Status::SetupFailed { message });
        return 1;
    }
    if let Some(mut gate) = gate {
        // EOF instead of the byte: the host gave up on this job; nothing runs.
        write_status(status, &Status::Ready);
        if gate.read(&mut byte).ok() != Some(1) {
            return 1;
        }
    }
    let finished = run_job(req, tar);
    write_status(status, &Status::Finished(finished));
    if req.linger {
        // Every process of the sandbox but us is gone (`run_job` killed and reaped them): with
        // our fds closed the caller sees the pipes end and goes on, and nothing of the
        // sandbox is torn down before the machine is discarded.
        let _ = sys::close_range_from(0, 0);
        loop {
            nix::unistd::pause();
        }
    }
    0
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        format!("mount {} on {} ({}): {e}", src.unwrap_or("-"), target.display(), fstype.unwrap_or("bind/remount"))
    })
}

/// Makes `root/name` a real directory of the overlay: an image symlink there would otherwise
/// point our mounts and files at the host (we have not pivoted yet).
fn mountpoint(root: &Path, name: &str) -> Result<PathBuf, String> {
    let p = root.join(name);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => return Ok(p),
        Ok(_) => fs::remove_file(&p).map_err(|e| format!("replacing {}: {e}", p.display()))?,
        Err(_) => {}
    }
    fs::create_dir(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
    Ok(p)
}

fn setup_root(req: &HelperRequest) -> Result<(), String> {
    let job = &req.job;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mnt(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;

    // Staging tmpfs: the overlay's upper and work dirs; its size bounds what the job can
    // write into the image's filesystem.
    let stage = &req.staging_dir;
    let mem = job.limits.memory_bytes;
    mnt(Some("tmpfs"), stage, Some("tmpfs"), nosuid_nodev, Some(&format!("size={mem},mode=0755")))?;
    for d in ["upper", "work", "root"] {
        fs::create_dir(stage.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    let root = stage.join("root");
    let lower = req.rootfs.to_str().ok_or("rootfs path is not UTF-8")?;
    let opts =
        format!("lowerdir={lower},upperdir={},workdir={}", stage.join("upper").display(), stage.join("work").display());
    mnt(Some("overlay"), &root, Some("overlay"), MsFlags::empty(), Some(&opts))?;

    let proc = mountpoint(&root, "proc")?;
    mnt(Some("proc"), &proc, Some("proc"), nosuid_nodev | MsFlags::MS_NOEXEC, None)?;
    let sysfs = mountpoint(&root, "sys")?;
    // sysfs may be mounted only by the owner of the network namespace; with the host
    // network the sandbox simply has an empty /sys.
    let ro_sys = nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    if let Err(e) = mnt(Some("sysfs"), &sysfs, Some("sysfs"), ro_sys, None)
        && !job.network
    {
        return Err(e);
    }
    setup_dev(&root, mem)?;
    for m in &req.host_mounts {
        host_mount(&root, m)?;
    }

    match fs::symlink_metadata(root.join("tmp")) {
        Ok(m) if m.is_dir() || m.file_type().is_symlink() => {}
        _ => {
            let tmp = mountpoint(&root, "tmp")?;
            mnt(Some("tmpfs"), &tmp, Some("tmpfs"), nosuid_nodev, Some(&format!("size={mem},mode=1777")))?;
        }
    }

    // /input: a tmpfs holding one read-only bind mount per input, itself read-only (born
    // read-only when there is nothing to put in it: one mount call instead of three).
    let input = mountpoint(&root, "input")?;
    let born_ro = if req.inputs.is_empty() { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    mnt(Some("tmpfs"), &input, Some("tmpfs"), nosuid_nodev | born_ro, Some("size=1m,mode=0755"))?;
    for inp in &req.inputs {
        if !collect::valid_name(&inp.name) {
            return Err(format!("input name `{}` is not a plain name", inp.name));
        }
        let meta = fs::metadata(&inp.host_path)
            .map_err(|e| format!("input `{}` {}: {e}", inp.name, inp.host_path.display()))?;
        let target = input.join(&inp.name);
        if meta.is_dir() { fs::create_dir(&target) } else { File::create(&target).map(drop) }
            .map_err(|e| format!("creating {}: {e}", target.display()))?;
        mnt(inp.host_path.to_str(), &target, None, MsFlags::MS_BIND, None)?;
        remount_ro(&target, &inp.host_path)?;
    }
    if !req.inputs.is_empty() {
        remount_ro(&input, &input)?;
    }

    let (uid, gid) = (job.uid, job.gid);
    let output = mountpoint(&root, "output")?;
    let out_size = job.limits.output_bytes_max.saturating_add(OUTPUT_TMPFS_SLACK_BYTES);
    mnt(
        Some("tmpfs"),
        &output,
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("size={out_size},mode=0755,uid={uid},gid={gid}")),
    )?;
    let scratch = mountpoint(&root, "scratch")?;
    let scratch_size = job.limits.scratch_bytes.max(4096);
    mnt(
        Some("tmpfs"),
        &scratch,
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("size={scratch_size},mode=0755,uid={uid},gid={gid}")),
    )?;

    nix::unistd::sethostname("shoal").map_err(|e| format!("sethostname: {e}"))?;
    if !job.network {
        sys::loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }

    nix::unistd::chdir(&root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Shows a host file in the sandbox at its path (see [`crate::HostMount`]): a symlink made again,
/// a device node bound as it is, any other file bound read-only.
fn host_mount(root: &Path, m: &crate::HostMount) -> Result<(), String> {
    let rel = m.path.strip_prefix('/').filter(|r| !r.is_empty() && !r.split('/').any(|c| c == ".." || c.is_empty()));
    let rel = rel.ok_or_else(|| format!("host mount path `{}` is not a plain absolute path", m.path))?;
    let target = root.join(rel);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    let meta = fs::symlink_metadata(&m.host_path).map_err(|e| format!("{}: {e}", m.host_path.display()))?;
    if meta.file_type().is_symlink() {
        let to = fs::read_link(&m.host_path).map_err(|e| format!("{}: {e}", m.host_path.display()))?;
        let _ = fs::remove_file(&target);
        return std::os::unix::fs::symlink(&to, &target).map_err(|e| format!("symlink {}: {e}", target.display()));
    }
    if fs::symlink_metadata(&target).is_err() {
        File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    }
    mnt(m.host_path.to_str(), &target, None, MsFlags::MS_BIND, None)?;
    if !m.device {
        remount_ro(&target, &m.host_path)?;
    }
    Ok(())
}

/// Remounts a bind mount read-only, nosuid, nodev, keeping the flags the kernel locks on
/// mounts inherited from the host (dropping one of those would be refused with EPERM).
fn remount_ro(target: &Path, source: &Path) -> Result<(), String> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let mut flags =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let Ok(st) = statvfs(source) {
        let f = st.flags();
        for (sf, mf) in [
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(sf) {
                flags |= mf;
            }
        }
    }
    mnt(None, target, None, flags, None)
}

fn setup_dev(root: &Path, mem: u64) -> Result<(), String> {
    let dev = mountpoint(root, "dev")?;
    mnt(Some("tmpfs"), &dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("size=1m,mode=0755"))?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        mnt(host.to_str(), &target, None, MsFlags::MS_BIND, None)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link)).map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| format!("mkdir /dev/shm: {e}"))?;
    mnt(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("size={mem},mode=1777")),
    )?;
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(|e| format!("mkdir /dev/pts: {e}"))?;
    // Optional: a private devpts for jobs that want a terminal.
    if let Err(e) = mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    ) {
        tracing::debug!("no /dev/pts: {e}");
    }
    Ok(())
}

/// Everything the job child needs, prepared before fork so the child only makes syscalls.
struct Exec {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    workdir: CString,
    uid: Uid,
    gid: Gid,
    setgroups: bool,
    /// (the sandbox's fd, the job's fd N) of each `fd:N` output.
    fds: Vec<(i32, i32)>,
}

/// Lowest fd PID 1 keeps its `fd:N` files at: above every N a job may name, so moving them
/// into place in the child never overwrites one not yet moved.
const FD_KEEP_MIN: i32 = 100;

/// A file for each `fd:N` output: unnamed (O_TMPFILE) in the `/output` tmpfs, so it counts
/// against the output limit and nothing the job lists shows it. PID 1 keeps one fd of each at
/// [`FD_KEEP_MIN`] and up; the job gets it at N.
fn open_fd_files(job: &crate::wire::JobSpec) -> Result<Vec<(u32, OwnedFd)>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut files = Vec::new();
    for (name, spec) in &job.outputs {
        let crate::OutputSpec::Fd(n) = spec else { continue };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open("/output")
            .map_err(|e| format!("output `{name}`: opening a file for fd {n} in /output: {e}"))?;
        let kept = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(FD_KEEP_MIN))
            .map_err(|e| format!("output `{name}`: fd {n}: {e}"))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        files.push((*n, unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(kept) }));
    }
    Ok(files)
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

fn prepare_exec(req: &HelperRequest, fds: &[(u32, OwnedFd)]) -> Result<Exec, String> {
    let job = &req.job;
    let argv0 = job.argv.first().ok_or("empty argv")?;
    let argv = job.argv.iter().map(|a| cstring(a, "argv")).collect::<Result<Vec<_>, _>>()?;
    let env = job.env.iter().map(|(k, v)| cstring(&format!("{k}={v}"), "env")).collect::<Result<Vec<_>, _>>()?;
    let candidates = if argv0.contains('/') {
        vec![cstring(argv0, "argv[0]")?]
    } else {
        let path = job.env.iter().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        path.split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| cstring(&format!("{d}/{argv0}"), "PATH"))
            .collect::<Result<Vec<_>, _>>()?
    };
    // Like a Dockerfile WORKDIR: created when the image lacks it.
    if fs::symlink_metadata(&job.workdir).is_err() {
        fs::create_dir_all(&job.workdir).map_err(|e| format!("creating workdir {}: {e}", job.workdir))?;
    }
    Ok(Exec {
        candidates,
        argv,
        env,
        workdir: cstring(&job.workdir, "workdir")?,
        uid: Uid::from_raw(job.uid),
        gid: Gid::from_raw(job.gid),
        setgroups: matches!(req.id_map, IdMap::Identity { .. }),
        fds: fds.iter().map(|(n, f)| (f.as_raw_fd(), *n as i32)).collect(),
    })
}

/// In the forked job child: drop to the job's identity and exec. Returns only on failure.
fn exec_job(x: &Exec) -> (&'static str, Errno) {
    use nix::unistd;
    if let Err(e) = unistd::setsid() {
        return ("setsid", e);
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Rust ignores SIGPIPE in its programs, and ignored signals survive exec: restore the
    // defaults so pipelines in the job behave as they would anywhere.
    sys::reset_signal_dispositions();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // The job, not the sandbox's PID 1, is what the OOM killer should pick first.
    let _ = fs::write("/proc/self/oom_score_adj", "1000");
    if x.setgroups
        && let Err(e) = unistd::setgroups(&[])
    {
        return ("setgroups", e);
    }
    if let Err(e) = unistd::setgid(x.gid) {
        return ("setgid", e);
    }
    if let Err(e) = unistd::setuid(x.uid) {
        return ("setuid", e);
    }
    if let Err(e) = unistd::chdir(x.workdir.as_c_str()) {
        return ("chdir to the workdir", e);
    }
    if let Err(e) = sys::cloexec_from(3) {
        return ("close_range", Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    }
    // The `fd:N` outputs' files, at N and inheritable (dup2 clears CLOEXEC on the copy).
    for &(ours, n) in &x.fds {
        if let Err(e) = nix::unistd::dup2(ours, n) {
            return ("dup2 of an fd output", e);
        }
    }
    let mut err = Errno::ENOENT;
    for c in &x.candidates {
        let Err(e) = unistd::execve(c, &x.argv, &x.env);
        // As execvp: a later directory may still hold it; EACCES is worth reporting.
        if e != Errno::ENOENT && e != Errno::ENOTDIR {
            err = e;
        }
    }
    ("execve", err)
}

fn run_job(req: &HelperRequest, mut tar: File) -> Finished {
    let job = &req.job;
    let started = Instant::now();
    let fd_files = match open_fd_files(job) {
        Ok(f) => f,
        Err(msg) => return Finished { exit: Exit::Error(msg), user_ms: 0, sys_ms: 0, max_rss_bytes: 0, output_bytes: 0 },
    };
    let fds = collect::FdFiles {
        fds: fd_files.iter().map(|(n, f)| (*n, f.as_raw_fd())).collect(),
        cap_bytes: job.limits.stdout_bytes_max,
    };
    let exec_result =
        prepare_exec(req, &fd_files).and_then(|x| spawn_and_wait(&x, job.limits.timeout_ms, started));
    let (mut exit, timed_out) = match exec_result {
        Ok((exit, timed_out)) => (exit, timed_out),
        Err(msg) => (Exit::Error(msg), false),
    };
    // Whatever is still running (daemons, the job after a timeout) dies before collection,
    // so nothing can change the outputs while they are read.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Err(Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
    }
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok();
    let ms = |tv: nix::sys::time::TimeVal| (tv.tv_sec() as u64) * 1000 + (tv.tv_usec() as u64) / 1000;
    let (user_ms, sys_ms, max_rss_bytes) =
        usage.map(|u| (ms(u.user_time()), ms(u.system_time()), (u.max_rss() as u64) * 1024)).unwrap_or_default();

    let limit = job.limits.output_bytes_max;
    let used = output_used_bytes();
    let mut output_bytes = 0;
    if used > limit {
        let largest = match collect::collect_with_fds(Path::new("/"), &job.outputs, &fds, 0, std::io::sink()) {
            Err(collect::CollectError::TooLarge { output, .. }) if !output.is_empty() => output,
            _ => "/output".to_string(),
        };
        let _ = tar::Builder::new(&mut tar).into_inner();
        if !timed_out {
            exit = Exit::OutputTooLarge { output: largest, limit_bytes: limit };
        }
    } else {
        match collect::collect_with_fds(Path::new("/"), &job.outputs, &fds, limit, &mut tar) {
            Ok(report) => {
                output_bytes = report.total_bytes;
                if exit.success()
                    && let Some(problem) = report.problems.into_values().next()
                {
                    exit = Exit::Error(problem);
                }
            }
            Err(collect::CollectError::TooLarge { output, limit_bytes }) => {
                if !timed_out {
                    exit = Exit::OutputTooLarge { output, limit_bytes };
                }
            }
            Err(e) => {
                if !timed_out {
                    exit = Exit::Error(format!("collecting outputs: {e}"));
                }
            }
        }
    }
    drop(tar);
    Finished { exit, user_ms, sys_ms, max_rss_bytes, output_bytes }
}

/// Bytes used in the `/output` tmpfs.
fn output_used_bytes() -> u64 {
    match nix::sys::statvfs::statvfs("/output") {
        Ok(st) => (st.blocks() - st.blocks_free()) * st.fragment_size(),
        Err(_) => 0,
    }
}

/// Forks the job and waits for it up to `timeout_ms`. Returns its exit and whether it timed
/// out (it is then killed).
fn spawn_and_wait(x: &Exec, timeout_ms: u64, started: Instant) -> Result<(Exit, bool), String> {
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // PID 1 is single-threaded (a fork of the single-threaded helper; sys checks). The write
    // end goes with the closure: the child's, and gone from here when fork_exec returns.
    let err_r_fd = err_r.as_raw_fd();
    let child = sys::fork_exec(move || {
        let _ = nix::unistd::close(err_r_fd);
        let (stage, errno) = exec_job(x);
        let msg = format!("{stage}: {}", errno.desc());
        let _ = File::from(err_w).write_all(msg.as_bytes());
        127
    })
    .map(Pid::from_raw)
    .map_err(|e| format!("fork: {e}"))?;
    // The pipe closes on a successful exec (CLOEXEC) or carries why it failed.
    let mut msg = String::new();
    let _ = File::from(err_r).read_to_string(&mut msg);
    if !msg.is_empty() {
        let _ = waitpid(child, None);
        let argv0 = x.argv.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok((Exit::Error(format!("cannot execute `{argv0}`: {msg}")), false));
    }
    let pidfd = sys::pidfd_open(child.as_raw()).map_err(|e| format!("pidfd_open: {e}"))?;
    let deadline = started + Duration::from_millis(timeout_ms);
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if sys::poll_readable(&pidfd, left.as_millis() as u64).map_err(|e| format!("poll: {e}"))? {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            break;
        }
    }
    let exit = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break Exit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Exit::Signal(sig as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    };
    Ok((if timed_out { Exit::Timeout } else { exit }, timed_out))
}
