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

#[cfg(test)]
mod tests {
    /// The crates this manifest's `[dependencies]` names.
    fn dependencies(manifest: &str) -> Vec<&str> {
        let section = manifest.split("\n[dependencies]\n").nth(1).expect("a [dependencies] section");
        let section = section.split("\n[").next().unwrap_or(section);
        section
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split(['.', ' ', '=']).next())
            .collect()
    }

    /// guest-init links the sandbox and the disk format, never the host's side: neither it nor
    /// the sandbox crate depends on shoal-vm (the QEMU launcher, the warm pool), the store or
    /// the node.
    #[test]
    fn guest_init_never_links_the_host_side() {
        let guest_init = dependencies(include_str!("../Cargo.toml"));
        let sandbox = dependencies(include_str!("../../sandbox/Cargo.toml"));
        assert!(guest_init.contains(&"shoal-sandbox"), "{guest_init:?}");
        for (name, deps) in [("shoal-guest-init", &guest_init), ("shoal-sandbox", &sandbox)] {
            for host_side in ["shoal-vm", "shoal-blobs", "shoal-node", "tokio"] {
                assert!(!deps.contains(&host_side), "{name} depends on {host_side}: {deps:?}");
            }
        }
    }
}
