//! The raw system calls of the sandbox, each behind a safe function, and the only `unsafe` of
//! this crate: what nix 0.29 does not wrap (clone without a stack, pidfds, close_range,
//! posix_spawn with fd moves) and the forks, whose precondition (one thread) is checked here
//! at every call rather than promised by callers.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sched::CloneFlags;

/// How many threads this process has (`/proc/self/task`); 0 when that cannot be read.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(Iterator::count).unwrap_or(0)
}

/// Refuses to fork a process with more than one thread: the child would be a copy of the
/// calling thread alone, and locks other threads held would stay locked in it forever.
fn check_single_threaded() -> io::Result<()> {
    match thread_count() {
        1 => Ok(()),
        n => Err(io::Error::other(format!(
            "a fork needs a single-threaded process; this one has {n} threads (0: /proc/self/task unreadable)"
        ))),
    }
}

/// `clone(flags | SIGCHLD)` with no new stack: fork semantics, plus new namespaces for the
/// child in one step (so the child is PID 1 of its new pid namespace). The child runs `child`
/// and exits with its code; the parent gets the child's pid. Refused in a process with more
/// than one thread.
pub fn clone_fork(flags: CloneFlags, child: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    check_single_threaded()?;
    // SAFETY: a NULL stack makes the kernel reuse the caller's stack copy-on-write, exactly
    // as fork does, and the process has one thread (checked above), so the child is a whole
    // copy of it. No pointers are passed.
    let ret = unsafe {
        libc::syscall(libc::SYS_clone, (flags.bits() | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    };
    match ret {
        r if r < 0 => Err(io::Error::last_os_error()),
        0 => std::process::exit(child()),
        pid => Ok(pid as libc::pid_t),
    }
}

/// Forks a child that runs `child` (which execs, and returns only on failure) and leaves with
/// `_exit` and its code: no atexit handlers, no flushing of buffers copied from the parent.
/// Refused in a process with more than one thread.
pub fn fork_exec(child: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    check_single_threaded()?;
    // SAFETY: the process has one thread (checked above), so the child is a whole copy of it;
    // the child leaves with _exit, never returning into the caller's code.
    unsafe {
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => libc::_exit(child()),
            pid => Ok(pid),
        }
    }
}

/// Whether a child of this process can `unshare(flags)`: forks one that tries and exits.
/// Sound in a multi-threaded process: the child calls only unshare(2) and _exit(2), both
/// async-signal-safe.
pub fn can_unshare(flags: CloneFlags) -> io::Result<Result<(), Errno>> {
    // SAFETY: the child only calls unshare(2) and _exit(2), both async-signal-safe, so forking
    // a multi-threaded caller is fine.
    let pid = unsafe {
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {
                let code = match nix::sched::unshare(flags) {
                    Ok(()) => 0,
                    Err(e) => e as i32,
                };
                libc::_exit(code)
            }
            pid => pid,
        }
    };
    match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)? {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(Ok(())),
        nix::sys::wait::WaitStatus::Exited(_, errno) => Ok(Err(Errno::from_raw(errno))),
        other => Err(io::Error::other(format!("the unshare probe child ended oddly: {other:?}"))),
    }
}

/// fds below 64 already taken by [`take_inherited_fd`], one bit each.
static TAKEN_FDS: AtomicU64 = AtomicU64::new(0);

/// Takes ownership of `fd`, one this process inherited open from its starter (the helper's
/// status, tar and gate fds), marking it close-on-exec so the job never sees it. Each fd
/// (below 64) can be taken once per process.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<File> {
    if !(0..64).contains(&fd) || TAKEN_FDS.fetch_or(1 << fd, Ordering::SeqCst) & (1 << fd) != 0 {
        return Err(io::Error::other(format!("fd {fd} is taken already or out of range")));
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| io::Error::other(format!("fd {fd} was not passed ({e})")))?;
    // SAFETY: fd is open (F_SETFD succeeded), was inherited (so no handle of this process owns
    // it, by the protocol with the starter), and is taken once (TAKEN_FDS).
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
pub fn dup_above(fd: &impl AsFd, min: RawFd) -> io::Result<OwnedFd> {
    let new = nix::fcntl::fcntl(fd.as_fd().as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Puts every signal but SIGKILL and SIGSTOP back to its default disposition (ignored signals
/// survive exec, and Rust ignores SIGPIPE).
pub fn reset_signal_dispositions() {
    use nix::sys::signal::{SigHandler, Signal};
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: SIG_DFL installs no handler code.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
        }
    }
}

/// A pidfd for `pid` (Linux 5.3+): signals and polls reach exactly that process even after
/// its pid is reused.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; the kernel returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: a valid fd we own, a signal number, NULL siginfo and no flags.
    let ret = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Waits until `fd` is readable (a pidfd: the process exited) or `timeout_ms` passes.
/// Returns true when readable.
pub fn poll_readable(fd: &OwnedFd, timeout_ms: u64) -> io::Result<bool> {
    Ok(poll_any(&[fd.as_raw_fd()], timeout_ms)?[0])
}

/// Waits until one of `fds` is readable or hung up, or `timeout_ms` passes. Returns, per fd,
/// whether it is (all false after a timeout).
pub fn poll_any(fds: &[RawFd], timeout_ms: u64) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let timeout = timeout_ms.min(i32::MAX as u64) as i32;
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds on our heap.
        let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if ret >= 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Marks every fd from `first` up close-on-exec, so the job inherits only 0, 1 and 2.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    close_range_from(first, CLOSE_RANGE_CLOEXEC)
}

/// `close_range(first, ~0, flags)`: closes (or with CLOSE_RANGE_CLOEXEC marks) every fd from
/// `first` up.
pub fn close_range_from(first: u32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: integer arguments; the caller owns no handle to the fds it closes.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, flags) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

nix::ioctl_readwrite_bad!(
    /// SIOCGIFFLAGS: reads an interface's flags into an `ifreq` naming it.
    siocgifflags,
    libc::SIOCGIFFLAGS,
    libc::ifreq
);
nix::ioctl_write_ptr_bad!(
    /// SIOCSIFFLAGS: sets an interface's flags from an `ifreq` naming it.
    siocsifflags,
    libc::SIOCSIFFLAGS,
    libc::ifreq
);

/// An `ifreq` naming `name` (at most 15 bytes), the rest zero.
pub fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data (a name and a union of integers and sockaddrs); all-zero
    // is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(io::Error::other(format!("interface name `{name}` is longer than 15 bytes or holds NUL")));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// `ifconfig NAME up` through SIOCGIFFLAGS and SIOCSIFFLAGS on a throwaway socket.
pub fn interface_up(name: &str) -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags of the ifreq we own.
    unsafe { siocgifflags(sock.as_raw_fd(), &mut req) }?;
    // SAFETY: the union member SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    unsafe { siocsifflags(sock.as_raw_fd(), &req) }?;
    Ok(())
}

/// `ifconfig lo up`.
pub fn loopback_up() -> io::Result<()> {
    interface_up("lo")
}

/// Starts `argv[0]` with exactly `fds[i]` as its fd `i` (every other fd of ours is close-on-exec)
/// and `envp` as its environment, through posix_spawn: glibc starts it with
/// `clone(CLONE_VM | CLONE_VFORK)`, so a large multi-threaded caller does not pay for copying
/// its page tables as `fork` would, once per job.
pub fn spawn(argv: &[std::ffi::CString], envp: &[std::ffi::CString], fds: &[libc::c_int]) -> io::Result<libc::pid_t> {
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> = envp.iter().map(|a| a.as_ptr().cast_mut()).collect();
    envp_ptrs.push(std::ptr::null_mut());
    let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(r)) };
    // SAFETY: posix_spawn_file_actions_t is initialised by init before use and destroyed once;
    // the argument vectors are NULL-terminated and outlive the call; pid is written by the call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut result = Ok(());
        for (target, &fd) in fds.iter().enumerate() {
            // dup2 onto the same number would keep close-on-exec; no caller passes that.
            debug_assert_ne!(fd, target as libc::c_int);
            result = result.and(check(libc::posix_spawn_file_actions_adddup2(&mut actions, fd, target as libc::c_int)));
        }
        let mut pid: libc::pid_t = 0;
        if result.is_ok() {
            result = check(libc::posix_spawn(
                &mut pid,
                argv_ptrs[0],
                &actions,
                std::ptr::null(),
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
            ));
        }
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result.map(|()| pid)
    }
}

/// Forks; the child moves `fds` onto 0, 1, 2, ..., closes every other fd from there up, runs
/// `child` and exits with its code (never returning into the caller's code, not even on a panic).
/// Refused in a process with more than one thread.
pub fn fork_with_fds(fds: &[libc::c_int], child: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    check_single_threaded()?;
    // SAFETY: the process has one thread (checked above); the child only dups, closes, runs
    // `child` and leaves with _exit (no atexit handlers, no flushing of copied buffers).
    unsafe {
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                for (target, &fd) in fds.iter().enumerate() {
                    // The fds are all above the targets (the caller dups them high), so none
                    // is overwritten before it is moved; dup2 clears close-on-exec.
                    if libc::dup2(fd, target as libc::c_int) < 0 {
                        libc::_exit(2);
                    }
                }
                if close_range_from(fds.len() as u32, 0).is_err() {
                    libc::_exit(2);
                }
                // A panic must not unwind out of here into a copy of the caller's code.
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
                libc::_exit(code)
            }
            pid => Ok(pid),
        }
    }
}

/// A close-on-exec memfd holding `bytes`, positioned at 0.
pub fn memfd_with(name: &std::ffi::CStr, bytes: &[u8]) -> io::Result<File> {
    use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
    use std::io::{Seek, Write};
    let mut file = File::from(memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC)?);
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file)
}
