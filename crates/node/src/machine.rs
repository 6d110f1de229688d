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

/// Where the kernel lists its binfmt_misc handlers.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The architectures this host runs through qemu-user, each with its interpreter: a binfmt_misc
/// handler `qemu-<arch>` that is enabled and has the `F` flag (the kernel opened the interpreter
/// when it was registered, so it works inside a sandbox's own root). Debian's `qemu-user-static`
/// ships the handlers; `scripts/setup.sh` registers them where no systemd does. Read once.
pub fn emulated_arches() -> &'static [(shoal_dag::Arch, String)] {
    static FOUND: std::sync::OnceLock<Vec<(shoal_dag::Arch, String)>> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        [
            (shoal_dag::Arch::Aarch64, "aarch64"),
            (shoal_dag::Arch::Riscv64, "riscv64"),
            (shoal_dag::Arch::X86_64, "x86_64"),
        ]
        .into_iter()
        .filter(|(arch, _)| *arch != dag_arch())
        .filter_map(|(arch, name)| {
            let text = std::fs::read_to_string(format!("{BINFMT_DIR}/qemu-{name}")).ok()?;
            let mut lines = text.lines();
            if lines.next() != Some("enabled") {
                return None;
            }
            let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
            let fixed = field("flags:").is_some_and(|f| f.contains('F'));
            let interpreter = field("interpreter")?;
            fixed.then(|| (arch, interpreter.to_string()))
        })
        .collect()
    })
}

/// How this host runs a job of `arch`: None natively, else the emulation's description for its
/// run record; an error when it cannot.
pub fn emulation_for(arch: Option<shoal_dag::Arch>) -> Result<Option<String>, String> {
    let Some(arch) = arch.filter(|a| *a != dag_arch()) else { return Ok(None) };
    let name = serde_json::to_value(arch).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    match emulated_arches().iter().find(|(a, _)| *a == arch) {
        Some((_, interpreter)) => Ok(Some(format!("qemu-user {name} through binfmt_misc ({interpreter})"))),
        None => Err(format!(
            "it needs arch {name} and this {} machine neither is one nor emulates one: install \
             qemu-user-static and register its binfmt_misc handlers (scripts/setup.sh does)",
            std::env::consts::ARCH
        )),
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
    let kernel_config = kernel_config(&uts.1);
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
        emulation: None,
        gpus: Vec::new(),
        kernel_config,
        shoal_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    }
}

/// BLAKE3 of the running kernel's build configuration: `/proc/config.gz` (compressed bytes, as
/// the kernel gives them) or else `/boot/config-<release>`; None when neither is readable.
fn kernel_config(release: &str) -> Option<shoal_dag::Hash> {
    ["/proc/config.gz".to_string(), format!("/boot/config-{release}")]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .map(|bytes| shoal_dag::Hash::of(&bytes))
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
    let gpus = crate::gpu::host();
    let described: Vec<String> = gpus
        .iter()
        .map(|g| {
            let memory = g.memory_bytes.map(|m| format!(", {}", crate::output::bytes(m))).unwrap_or_default();
            let nodes: Vec<String> = g.nodes.iter().map(|n| n.display().to_string()).collect();
            format!("{}{memory} at {}", g.describe(), nodes.join(" "))
        })
        .collect();
    checks.push(("GPUs", true, if gpus.is_empty() { "none found".into() } else { described.join("; ") }));
    for why in crate::gpu::host_vfio_refusals() {
        checks.push(("GPU for microVMs", false, why));
    }
    let emulated: Vec<String> = emulated_arches().iter().map(|(a, i)| format!("{a:?} ({i})").to_lowercase()).collect();
    checks.push((
        "emulated architectures",
        true,
        if emulated.is_empty() {
            "none (install qemu-user-static: scripts/setup.sh)".into()
        } else {
            emulated.join(", ")
        },
    ));
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
