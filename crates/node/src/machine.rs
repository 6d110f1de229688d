//! Facts about this host, for run records and `shoal doctor`.

use anyhow::Result;
use shoal_dag::Machine;

/// The OCI name of this machine's architecture.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// This machine's architecture as a DAG's `arch` requirement names it.
pub fn dag_arch() -> shoal_dag::Arch {
    match std::env::consts::ARCH {
        "aarch64" => shoal_dag::Arch::Aarch64,
        "riscv64" => shoal_dag::Arch::Riscv64,
        _ => shoal_dag::Arch::X86_64,
    }
}

/// Reads the facts that go into every run record; done once per `shoal run`.
pub fn describe(node_id: &str, backend: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let mut cpu_flags: Vec<String> = field("flags").split_whitespace().map(str::to_string).collect();
    cpu_flags.sort();
    let uts = nix_uname();
    Machine {
        node_id: node_id.to_string(),
        hostname: uts.0,
        kernel: uts.1,
        cpu_model: field("model name"),
        cpu_flags,
        arch: std::env::consts::ARCH.to_string(),
        cores: cores(),
        memory_bytes: memory_bytes(),
        backend: backend.to_string(),
        accelerator: None,
        qemu: None,
        guest_kernel: None,
    }
}

/// (hostname, kernel release) from uname(2).
fn nix_uname() -> (String, String) {
    match nix::sys::utsname::uname() {
        Ok(uts) => (uts.nodename().to_string_lossy().into_owned(), uts.release().to_string_lossy().into_owned()),
        Err(_) => (String::new(), String::new()),
    }
}

pub fn cores() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

fn memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// `shoal doctor`: what works here, and how to fix what does not.
pub fn doctor(home: &std::path::Path, json: bool) -> Result<()> {
    let mut checks: Vec<(&str, bool, String)> = Vec::new();
    microvm_checks(home, &mut checks);
    match shoal_vm::NamespaceBackend::probe() {
        Ok(()) => checks.push(("namespace backend", true, "user, mount, pid, net, ipc, uts namespaces work".into())),
        Err(why) => checks.push(("namespace backend", false, why.to_string())),
    }
    let registry = which("docker-registry");
    checks.push((
        "docker-registry (tests)",
        registry,
        if registry { "installed".into() } else { "missing: run scripts/setup.sh".into() },
    ));
    if json {
        let rows: Vec<_> = checks
            .iter()
            .map(|(name, ok, detail)| serde_json::json!({"check": name, "ok": ok, "detail": detail}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for (name, ok, detail) in &checks {
            println!("{} {name}: {detail}", if *ok { "ok  " } else { "FAIL" });
        }
    }
    Ok(())
}

/// The microVM backend's parts, each with how to fix it, then the backend as a whole
/// (vmlinux extracted, initramfs built, accelerator probed).
fn microvm_checks(home: &std::path::Path, checks: &mut Vec<(&'static str, bool, String)>) {
    use shoal_vm::microvm::{find_guest_init, kernel};
    let qemu = which("qemu-system-x86_64");
    checks.push((
        "QEMU",
        qemu,
        if qemu {
            "qemu-system-x86_64 is installed".into()
        } else {
            "missing: run scripts/setup.sh (qemu-system-x86 from bookworm-backports)".into()
        },
    ));
    let qboot = std::path::Path::new("/usr/share/qemu/qboot.rom").is_file();
    checks.push((
        "qboot firmware",
        qboot,
        if qboot {
            "/usr/share/qemu/qboot.rom".into()
        } else {
            "missing: install qemu-system-data (SeaBIOS costs seconds a boot)".into()
        },
    ));
    match kernel::find_kernel() {
        Ok(k) => {
            let modules = kernel::module_load_order(&k.modules_dir, kernel::GUEST_MODULES);
            checks.push(("guest kernel", true, format!("{} ({})", k.release, k.image.display())));
            match modules {
                Ok(m) => checks.push((
                    "guest kernel modules",
                    true,
                    m.iter()
                        .filter_map(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
                Err(e) => checks.push(("guest kernel modules", false, e.to_string())),
            }
        }
        Err(e) => checks.push(("guest kernel", false, e.to_string())),
    }
    match find_guest_init() {
        Ok(p) => checks.push(("guest-init", true, p.display().to_string())),
        Err(e) => checks.push(("guest-init", false, e.to_string())),
    }
    let squashfs = which("mksquashfs");
    checks.push((
        "mksquashfs",
        squashfs,
        if squashfs { "installed".into() } else { "missing: install squashfs-tools (scripts/setup.sh does)".into() },
    ));
    match shoal_vm::MicrovmBackend::new(shoal_vm::MicrovmConfig::new(home.join("vm"))) {
        Ok(b) => {
            let r = b.report();
            checks.push(("accelerator", true, format!("{} ({})", r.accelerator.as_str(), r.accelerator_reason)));
            checks.push((
                "microvm backend",
                true,
                format!("QEMU {}, kernel {}, initramfs {}", r.qemu_version, r.kernel_release, r.initramfs.display()),
            ));
        }
        Err(e) => checks.push(("microvm backend", false, e.to_string())),
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Time of [`speed_workload`] on the reference core (this project's 2-core CI machine), in ns.
const SPEED_REFERENCE_NS: u64 = 4_000_000;

/// A small, branchy integer workload (a PRNG filling a buffer, then a sort): about 4 ms on the
/// reference core. Returns a checksum so the work is not optimised away.
fn speed_workload() -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v: Vec<u32> = (0..1 << 16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        })
        .collect();
    v.sort_unstable();
    v.iter().step_by(4096).fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)))
}

/// This machine's speed per core, per mille of the reference core: the best of five runs of a
/// 4 ms workload (about 20 ms at start), so a momentarily busy core does not understate it.
pub fn core_speed() -> u32 {
    let mut best = u64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        std::hint::black_box(speed_workload());
        best = best.min(t.elapsed().as_nanos() as u64);
    }
    (SPEED_REFERENCE_NS * 1000 / best.max(1)).clamp(1, 1_000_000) as u32
}
