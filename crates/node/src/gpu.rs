//! GPUs on this host: found, announced, and handed to the jobs that ask for them (`requirements.gpu`).
//!
//! NVIDIA GPUs are found through their driver's files, where nvidia-container-cli finds them: one
//! directory per GPU under `/proc/driver/nvidia/gpus/` (its `information` names the model and the
//! device minor), the driver's version in `/proc/driver/nvidia/version`, the device nodes
//! `/dev/nvidia<minor>` and the shared `/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools`,
//! and the driver's user-space libraries (`libcuda.so.*`, `libnvidia-ml.so.*`, ...) in the host's
//! library directories, which a job's image does not carry (they must match the kernel module).
//! Other GPUs through their DRM render nodes: `/sys/class/drm/renderD*`, the PCI vendor and device
//! of its `device/`, VRAM from `device/mem_info_vram_total` (amdgpu), the node `/dev/dri/renderD*`.
//!
//! GPUs set aside for virtual machines are bound to `vfio-pci` instead (no driver of their own, so
//! neither of the above sees them): `/sys/bus/pci/devices/*` of a display class, the `driver`
//! link naming `vfio-pci`, an `iommu_group` link whose `/dev/vfio/<group>` exists, and every
//! other device of the group unbound, bound to `vfio-pci` or `pci-stub`, or a PCI bridge (the
//! group is passed whole). Such a GPU goes to an `isolation: vm` job's microVM by VFIO
//! (`-device vfio-pci,host=<address>`); one that falls short is not announced, and `shoal
//! doctor` says why.
//!
//! Everything is read under a root directory: `/`, or (`SHOAL_GPU_ROOT`) a fake sysfs/devfs tree,
//! which is how the tests give a machine without a GPU one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where GPUs are looked for, when not `/`: a directory holding `proc/`, `sys/`, `dev/` and the
/// library directories of a fake machine (tests).
pub const GPU_ROOT_ENV: &str = "SHOAL_GPU_ROOT";

/// The NVIDIA driver's user-space libraries a job gets with an NVIDIA GPU (nvidia-container-cli's
/// `utility` and `compute` sets), by file name prefix.
const NVIDIA_LIBRARIES: &[&str] = &[
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-cfg.so",
    "libnvidia-opencl.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
];
/// Where those libraries are looked for, under the root.
const LIBRARY_DIRS: &[&str] = &["usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib64", "usr/lib"];
/// The NVIDIA device nodes every job with an NVIDIA GPU needs besides its GPUs' own.
const NVIDIA_SHARED_NODES: &[&str] = &["dev/nvidiactl", "dev/nvidia-uvm", "dev/nvidia-uvm-tools"];
/// Most GPUs of one kind read (a bound on what a strange /proc or /sys could make us read).
const GPUS_MAX: usize = 64;

/// One GPU of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// `nvidia`, `amd`, `intel`, or the PCI vendor id.
    pub vendor: String,
    pub model: String,
    /// Its memory, where the driver says (amdgpu does; NVIDIA's files do not).
    pub memory_bytes: Option<u64>,
    /// The kernel driver's version, where it says (NVIDIA).
    pub driver: Option<String>,
    /// Its own device nodes (host paths, under the root).
    pub nodes: Vec<PathBuf>,
    /// Device nodes and libraries any job using it needs too (host paths, under the root).
    pub shared: Vec<PathBuf>,
    /// Bound to vfio-pci: passed whole to a microVM, never to the namespace sandbox.
    pub vfio: Option<shoal_vm::PciDevice>,
}

impl Gpu {
    /// As the node announces it to the mesh.
    pub fn cap(&self) -> shoal_mesh::capabilities::GpuCap {
        shoal_mesh::capabilities::GpuCap {
            model: self.model.clone(),
            vendor: self.vendor.clone(),
            memory_bytes: self.memory_bytes,
            vfio: self.vfio.is_some(),
        }
    }

    /// As a run record names it: `NVIDIA GeForce RTX 3060 (nvidia, driver 535.54.03)`.
    pub fn describe(&self) -> String {
        if let Some(d) = &self.vfio {
            return format!(
                "{} ({}, VFIO passthrough of {}, IOMMU group {})",
                self.model, self.vendor, d.address, d.group
            );
        }
        match &self.driver {
            Some(d) => format!("{} ({}, driver {d})", self.model, self.vendor),
            None => format!("{} ({})", self.model, self.vendor),
        }
    }
}

/// The GPUs under `root`, NVIDIA's first, each render node of another vendor after.
pub fn detect(root: &Path) -> Vec<Gpu> {
    let mut gpus = nvidia(root);
    let nvidia_found = !gpus.is_empty();
    gpus.extend(drm(root).into_iter().filter(|g| !(nvidia_found && g.vendor == "nvidia")));
    gpus.extend(vfio(root).into_iter().filter_map(Result::ok));
    gpus
}

/// Why each display device bound to vfio-pci under `root` cannot be passed to a microVM.
pub fn vfio_refusals(root: &Path) -> Vec<String> {
    vfio(root).into_iter().filter_map(Result::err).collect()
}

/// [`vfio_refusals`] of this host (under `SHOAL_GPU_ROOT` when set).
pub fn host_vfio_refusals() -> Vec<String> {
    vfio_refusals(&root())
}

/// PCI classes: display controllers (the class's first byte), and PCI-to-PCI bridges.
const PCI_CLASS_DISPLAY: &str = "0x03";
const PCI_CLASS_BRIDGE: &str = "0x0604";
/// Drivers that leave a device free for VFIO: its own, and the placeholder.
const VFIO_FREE_DRIVERS: &[&str] = &["vfio-pci", "pci-stub"];

/// The display devices bound to vfio-pci under `root`: each a GPU a microVM can take, or why not.
fn vfio(root: &Path) -> Vec<Result<Gpu, String>> {
    let devices = root.join("sys/bus/pci/devices");
    let Ok(dirs) = std::fs::read_dir(&devices) else { return Vec::new() };
    let mut names: Vec<String> =
        dirs.filter_map(|d| d.ok().map(|d| d.file_name().to_string_lossy().into_owned())).collect();
    names.sort();
    let read =
        |addr: &str, f: &str| std::fs::read_to_string(devices.join(addr).join(f)).ok().map(|s| s.trim().to_string());
    let link_name = |path: PathBuf| {
        std::fs::read_link(path).ok().and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    let driver = |addr: &str| link_name(devices.join(addr).join("driver"));
    names
        .into_iter()
        .filter(|addr| {
            read(addr, "class").is_some_and(|c| c.starts_with(PCI_CLASS_DISPLAY))
                && driver(addr).as_deref() == Some("vfio-pci")
        })
        .take(GPUS_MAX)
        .map(|addr| {
            if !shoal_vm::PciDevice::valid_address(&addr) {
                return Err(format!("{addr}: not a PCI address QEMU takes"));
            }
            let group: u32 =
                link_name(devices.join(&addr).join("iommu_group")).and_then(|g| g.parse().ok()).ok_or_else(|| {
                    format!(
                        "{addr} is bound to vfio-pci but has no IOMMU group: turn the IOMMU on (intel_iommu=on or \
                         amd_iommu=on on the kernel command line)"
                    )
                })?;
            let node = root.join(format!("dev/vfio/{group}"));
            if !node.exists() {
                return Err(format!(
                    "{addr} is in IOMMU group {group} but {} is missing: load vfio-pci",
                    node.display()
                ));
            }
            let members = std::fs::read_dir(root.join(format!("sys/kernel/iommu_groups/{group}/devices")))
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
                .unwrap_or_else(|_| Vec::<String>::new());
            for other in members.iter().filter(|m| **m != addr) {
                let bridge = read(other, "class").is_some_and(|c| c.starts_with(PCI_CLASS_BRIDGE));
                match driver(other) {
                    Some(d) if !bridge && !VFIO_FREE_DRIVERS.contains(&d.as_str()) => {
                        return Err(format!(
                            "{addr}: its IOMMU group {group} also holds {other}, bound to {d}; a group is passed \
                             whole: bind {other} to vfio-pci too"
                        ));
                    }
                    _ => {}
                }
            }
            let vendor = match read(&addr, "vendor").as_deref() {
                Some("0x1002") => "amd".to_string(),
                Some("0x8086") => "intel".to_string(),
                Some("0x10de") => "nvidia".to_string(),
                Some(other) => other.to_string(),
                None => "unknown".to_string(),
            };
            let model = read(&addr, "label")
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("{vendor} {}", read(&addr, "device").unwrap_or_default()));
            let container = root.join("dev/vfio/vfio");
            Ok(Gpu {
                vendor,
                model,
                memory_bytes: None,
                driver: None,
                nodes: vec![node],
                shared: container.exists().then_some(container).into_iter().collect(),
                vfio: Some(shoal_vm::PciDevice { address: addr, group }),
            })
        })
        .collect()
}

/// This host's GPUs (under `SHOAL_GPU_ROOT` when set), read once.
pub fn host() -> &'static [Gpu] {
    static FOUND: std::sync::OnceLock<Vec<Gpu>> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        let gpus = detect(&root());
        for g in &gpus {
            tracing::info!(vendor = g.vendor, model = g.model, driver = ?g.driver, "GPU found");
        }
        gpus
    })
}

/// Where GPUs are looked for: `/`, or `SHOAL_GPU_ROOT`.
fn root() -> PathBuf {
    std::env::var_os(GPU_ROOT_ENV).map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// What a job lent `gpus` (of [`host`]) sees: each one's nodes and the shared nodes and libraries,
/// once each, at their paths on the machine (the root taken off); what is under `dev/` is a device.
pub(crate) fn host_mounts<'a>(gpus: impl Iterator<Item = &'a Gpu>) -> Vec<shoal_vm::HostMount> {
    let (root, mut mounts) = (root(), Vec::<shoal_vm::HostMount>::new());
    for host in gpus.flat_map(|g| g.nodes.iter().chain(g.shared.iter())) {
        if mounts.iter().any(|m| m.host_path == *host) {
            continue;
        }
        let inside = host.strip_prefix(&root).unwrap_or(host);
        let device = inside.starts_with("dev");
        let path = Path::new("/").join(inside).display().to_string();
        mounts.push(shoal_vm::HostMount { host_path: host.clone(), path, device });
    }
    mounts
}

fn nvidia(root: &Path) -> Vec<Gpu> {
    let Ok(dirs) = std::fs::read_dir(root.join("proc/driver/nvidia/gpus")) else { return Vec::new() };
    let driver = std::fs::read_to_string(root.join("proc/driver/nvidia/version")).ok().and_then(|v| {
        // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.54.03  Tue Jun  6 22:20:39 UTC 2023"
        let line = v.lines().next()?;
        let after = line.split("Kernel Module").nth(1)?;
        after.split_whitespace().next().map(str::to_string)
    });
    let mut shared: Vec<PathBuf> = NVIDIA_SHARED_NODES.iter().map(|n| root.join(n)).filter(|p| p.exists()).collect();
    shared.extend(libraries(root, NVIDIA_LIBRARIES));
    let mut entries: Vec<PathBuf> = dirs.filter_map(|d| d.ok().map(|d| d.path())).collect();
    entries.sort();
    entries
        .into_iter()
        .take(GPUS_MAX)
        .filter_map(|dir| {
            let info = std::fs::read_to_string(dir.join("information")).ok()?;
            let field = |key: &str| {
                info.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim_start_matches(':').trim().to_string())
            };
            let minor: u32 = field("Device Minor")?.parse().ok()?;
            Some(Gpu {
                vendor: "nvidia".into(),
                model: field("Model").unwrap_or_else(|| "NVIDIA GPU".into()),
                memory_bytes: None,
                driver: driver.clone(),
                nodes: vec![root.join(format!("dev/nvidia{minor}"))],
                shared: shared.clone(),
                vfio: None,
            })
        })
        .collect()
}

fn drm(root: &Path) -> Vec<Gpu> {
    let Ok(dirs) = std::fs::read_dir(root.join("sys/class/drm")) else { return Vec::new() };
    let mut names: Vec<String> = dirs
        .filter_map(|d| d.ok().map(|d| d.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("renderD"))
        .collect();
    names.sort();
    names
        .into_iter()
        .take(GPUS_MAX)
        .filter_map(|name| {
            let device = root.join("sys/class/drm").join(&name).join("device");
            let read = |f: &str| std::fs::read_to_string(device.join(f)).ok().map(|s| s.trim().to_string());
            let vendor_id = read("vendor")?;
            let vendor = match vendor_id.as_str() {
                "0x1002" => "amd",
                "0x8086" => "intel",
                "0x10de" => "nvidia",
                other => other,
            }
            .to_string();
            let model = read("product_name")
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("{vendor} {}", read("device").unwrap_or_default()));
            Some(Gpu {
                vendor,
                model,
                memory_bytes: read("mem_info_vram_total").and_then(|m| m.parse().ok()),
                driver: None,
                nodes: vec![root.join("dev/dri").join(&name)],
                shared: Vec::new(),
                vfio: None,
            })
        })
        .collect()
}

/// Regular files and symlinks in the library directories whose names start with one of `prefixes`.
fn libraries(root: &Path, prefixes: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| name.starts_with(p)) {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// The GPUs a runner hands out: each to one job at a time.
pub(crate) struct GpuPool {
    gpus: Vec<Gpu>,
    busy: Mutex<Vec<bool>>,
    freed: tokio::sync::Notify,
}

/// GPUs a job holds; given back when dropped.
pub(crate) struct GpuLease<'a> {
    pool: &'a GpuPool,
    taken: Vec<usize>,
}

impl GpuLease<'_> {
    pub(crate) fn gpus(&self) -> impl Iterator<Item = &Gpu> + '_ {
        self.taken.iter().map(|&i| &self.pool.gpus[i])
    }

    /// The GPUs are bound to vfio-pci: the job runs in a microVM they are passed to.
    pub(crate) fn vfio(&self) -> bool {
        self.gpus().any(|g| g.vfio.is_some())
    }

    /// Their PCI devices, for the microVM.
    pub(crate) fn pci_devices(&self) -> Vec<shoal_vm::PciDevice> {
        self.gpus().filter_map(|g| g.vfio.clone()).collect()
    }
}

impl Drop for GpuLease<'_> {
    fn drop(&mut self) {
        let mut busy = self.pool.busy.lock().expect("GPU pool lock");
        for &i in &self.taken {
            busy[i] = false;
        }
        drop(busy);
        self.pool.freed.notify_waiters();
    }
}

impl GpuPool {
    pub(crate) fn new(gpus: Vec<Gpu>) -> GpuPool {
        let busy = Mutex::new(vec![false; gpus.len()]);
        GpuPool { gpus, busy, freed: tokio::sync::Notify::new() }
    }

    /// `count` GPUs (of `model`, when given) once that many are free; an error when this host
    /// has fewer, however long it waits. `vm`: for a job that must run in a microVM, GPUs bound
    /// to vfio-pci only; otherwise those the namespace sandbox takes when this host has enough,
    /// else vfio-pci ones (the job then runs in a microVM). One kind per job.
    pub(crate) async fn take(&self, count: u32, model: Option<&str>, vm: bool) -> Result<GpuLease<'_>, String> {
        let of_model = |g: &Gpu| model.is_none_or(|m| g.model == m);
        let have = |vfio: bool| self.gpus.iter().filter(|g| of_model(g) && g.vfio.is_some() == vfio).count();
        let vfio = vm || have(false) < count as usize;
        let fits = |g: &Gpu| of_model(g) && g.vfio.is_some() == vfio;
        if have(vfio) < count as usize {
            let kind =
                if vm { " a microVM can take (bound to vfio-pci: `shoal doctor` says why one is not)" } else { "" };
            return Err(format!(
                "it needs {count} GPU(s){}{kind} and this machine has {}",
                model.map(|m| format!(" of model `{m}`")).unwrap_or_default(),
                have(vfio).max(if vm { 0 } else { have(false) })
            ));
        }
        loop {
            let freed = self.freed.notified();
            {
                let mut busy = self.busy.lock().expect("GPU pool lock");
                let free: Vec<usize> =
                    (0..self.gpus.len()).filter(|&i| !busy[i] && fits(&self.gpus[i])).take(count as usize).collect();
                if free.len() == count as usize {
                    for &i in &free {
                        busy[i] = true;
                    }
                    return Ok(GpuLease { pool: self, taken: free });
                }
            }
            freed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(model: &str) -> Gpu {
        Gpu {
            vendor: "nvidia".into(),
            model: model.into(),
            memory_bytes: None,
            driver: None,
            nodes: Vec::new(),
            shared: Vec::new(),
            vfio: None,
        }
    }

    // Detection is tested on a fake machine in tests/it/gpu.rs.

    #[tokio::test]
    async fn a_gpu_is_lent_to_one_job_at_a_time() {
        let pool = GpuPool::new(vec![gpu("a"), gpu("a"), gpu("b")]);
        let two = pool.take(2, Some("a"), false).await.unwrap();
        assert_eq!(two.gpus().count(), 2);
        let err = pool.take(3, Some("a"), false).await.err().unwrap();
        assert!(err.contains("needs 3 GPU(s) of model `a` and this machine has 2"), "{err}");
        // Another model is free; a third `a` waits for one of the two.
        assert_eq!(pool.take(1, None, false).await.unwrap().gpus().next().unwrap().model, "b");
        let waiting = pool.take(1, Some("a"), false);
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(two);
        assert_eq!(waiting.await.unwrap().gpus().count(), 1);
    }

    #[tokio::test]
    async fn a_microvm_gets_gpus_bound_to_vfio_and_the_sandbox_prefers_the_others() {
        let mut passed = gpu("a");
        passed.vfio = Some(shoal_vm::PciDevice { address: "0000:01:00.0".into(), group: 7 });
        let pool = GpuPool::new(vec![gpu("a"), passed]);
        let vm = pool.take(1, None, true).await.unwrap();
        assert!(vm.vfio());
        assert_eq!(vm.pci_devices()[0].address, "0000:01:00.0");
        let err = pool.take(2, None, true).await.err().unwrap();
        assert!(err.contains("needs 2 GPU(s) a microVM can take") && err.contains("has 1"), "{err}");
        drop(vm);
        let sandbox = pool.take(1, None, false).await.unwrap();
        assert!(!sandbox.vfio(), "the namespace sandbox's GPU first");
        // Two for a job with no isolation: only the VFIO kind has... one, so two of the sandbox's
        // kind are missing: refused rather than mixed.
        assert!(pool.take(2, None, false).await.is_err());
    }
}
