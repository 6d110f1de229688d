//! The host side's few raw calls, each behind a safe function, and the only `unsafe` of this
//! crate (the sandbox's are in `shoal_sandbox::sys`).

use std::process::Command;

/// Makes the program `cmd` starts die (SIGKILL) with the thread that starts it: QEMU with the
/// job's thread, or the warm pool's.
pub fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// The CPU's time-stamp counter.
#[cfg(target_arch = "x86_64")]
pub fn tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64.
    unsafe { std::arch::x86_64::_rdtsc() }
}
