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
}

impl Gpu {
    /// As the node announces it to the mesh.
    pub fn cap(&self) -> shoal_mesh::capabilities::GpuCap {
        shoal_mesh::capabilities::GpuCap {
            model: self.model.clone(),
            vendor: self.vendor.clone(),
            memory_bytes: self.memory_bytes,
        }
    }

    /// As a run record names it: `NVIDIA GeForce RTX 3060 (nvidia, driver 535.54.03)`.
    pub fn describe(&self) -> String {
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
    gpus
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
    /// has fewer, however long it waits.
    pub(crate) async fn take(&self, count: u32, model: Option<&str>) -> Result<GpuLease<'_>, String> {
        let fits = |g: &Gpu| model.is_none_or(|m| g.model == m);
        let have = self.gpus.iter().filter(|g| fits(g)).count();
        if have < count as usize {
            return Err(format!(
                "it needs {count} GPU(s){} and this machine has {have}",
                model.map(|m| format!(" of model `{m}`")).unwrap_or_default()
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
        }
    }

    // Detection is tested on a fake machine in tests/it/gpu.rs.

    #[tokio::test]
    async fn a_gpu_is_lent_to_one_job_at_a_time() {
        let pool = GpuPool::new(vec![gpu("a"), gpu("a"), gpu("b")]);
        let two = pool.take(2, Some("a")).await.unwrap();
        assert_eq!(two.gpus().count(), 2);
        let err = pool.take(3, Some("a")).await.err().unwrap();
        assert!(err.contains("needs 3 GPU(s) of model `a` and this machine has 2"), "{err}");
        // Another model is free; a third `a` waits for one of the two.
        assert_eq!(pool.take(1, None).await.unwrap().gpus().next().unwrap().model, "b");
        let waiting = pool.take(1, Some("a"));
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(two);
        assert_eq!(waiting.await.unwrap().gpus().count(), 1);
    }
}
