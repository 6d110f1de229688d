//! guest-init: PID 1 of shoal's microVM (see `shoal_vm::microvm::guest`). Built static, so
//! the initramfs needs nothing else. Started as `/init __sandbox REQUEST` it is instead the
//! namespace sandbox helper inside the guest.

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "__sandbox") {
        shoal_vm::sandbox_helper_main()
    }
    if std::process::id() != 1 {
        eprintln!("shoal-guest-init runs as PID 1 of shoal's microVM; shoal starts it, not a shell");
        std::process::exit(2);
    }
    shoal_vm::microvm::guest::pid1_main()
}
