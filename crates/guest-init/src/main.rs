//! guest-init: PID 1 of shoal's microVM ([`pid1`]). Built static, so the initramfs needs
//! nothing else. Started as `/init __sandbox REQUEST` it is instead the namespace sandbox's
//! helper (`shoal_sandbox::sandbox_helper_main`), on the host as in the guest.
//!
//! # Layout
//!
//! - [`pid1`]: the boot of the microVM as PID 1: modules, disks, root, inputs, the job through
//!   the namespace sandbox, the reply, power-off.
//! - [`sys`]: its raw system calls (a block device's buffer flush, IPv4 setup), the only
//!   `unsafe` here.
//!
//! It links `shoal-sandbox` (the sandbox and the disk format it shares with the host) and never
//! `shoal-vm`: the QEMU launcher and the warm pool are the host's.

mod pid1;
mod sys;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "__sandbox") {
        shoal_sandbox::sandbox_helper_main()
    }
    if std::process::id() != 1 {
        eprintln!("shoal-guest-init runs as PID 1 of shoal's microVM; shoal starts it, not a shell");
        std::process::exit(2);
    }
    pid1::pid1_main()
}
