//! The few raw syscalls the sandbox needs that nix 0.29 does not wrap. Each is one call.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `clone(flags | SIGCHLD)` with no new stack: fork semantics, plus new namespaces for the
/// child in one step (so the child is PID 1 of its new pid namespace). Returns 0 in the
/// child, the child's pid in the parent.
///
/// # Safety
/// As `fork`: the caller must be single-threaded, and the child may only do what is safe
/// after fork in such a process.
pub unsafe fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: a NULL stack makes the kernel reuse the caller's stack copy-on-write, exactly
    // as fork does; the caller guarantees the fork preconditions. No pointers are passed.
    let ret = unsafe {
        libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret as libc::pid_t) }
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

/// `ifconfig lo up` through SIOCSIFFLAGS on a throwaway socket.
pub fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union member SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
///
/// # Safety
/// The calling process must be single-threaded: the child is a copy of this one thread, and
/// locks held by others would stay locked in it forever.
pub unsafe fn fork_with_fds(fds: &[libc::c_int], child: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    // SAFETY: the caller guarantees a single thread; the child only dups, closes, runs
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
pub fn memfd_with(name: &std::ffi::CStr, bytes: &[u8]) -> io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    // SAFETY: a valid NUL-terminated name and integer flags; the kernel returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file)
}
