//! The warm pool: VMs booted ahead of demand per kind of job (rootfs image, memory, cores,
//! reply size, network), on a thread of the pool's own so that QEMU's parent-death signal
//! ends them with the pool. guest-init boots to the point of reading the request, says
//! [`super::disk::WARM_READY_MARKER`] on the console and waits for a go-ahead line.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;

use super::disk::DATA_OFFSET;
use super::qemu::{Vm, VmDisks, spawn_vm};
use super::{MicrovmBackend, round_up};
use crate::RunError;

/// Guest memory on top of the job's limit: kernel, guest-init, inputs on tmpfs, stdout buffers.
const GUEST_OVERHEAD_MIB: u64 = 160;
/// Request disk of a pre-booted VM, sized at its boot: a job whose inputs do not fit runs cold.
pub(super) const WARM_REQUEST_DISK_BYTES: u64 = DATA_OFFSET + (256 << 20);

/// What a pre-booted VM fits: its image root, memory, cores and reply disk size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct WarmKey {
    pub(super) rootfs: PathBuf,
    pub(super) mem_mib: u64,
    pub(super) cores: u32,
    pub(super) reply_len: u64,
    pub(super) network: bool,
    /// Host PCI devices passed by VFIO (a GPU): such a VM is never booted ahead (it would hold
    /// the device), so this is empty for every warm one.
    pub(super) pci: Vec<shoal_sandbox::PciDevice>,
}

impl WarmKey {
    pub(super) fn of(rootfs_img: &Path, limits: &crate::Limits, network: bool) -> WarmKey {
        WarmKey {
            rootfs: rootfs_img.to_path_buf(),
            mem_mib: (limits.memory_bytes >> 20) + GUEST_OVERHEAD_MIB,
            cores: limits.cores.max(1),
            reply_len: round_up(DATA_OFFSET + limits.output_stream_bytes_max() + 2 * limits.stdout_bytes_max, 1 << 20),
            network,
            pci: Vec::new(),
        }
    }
}

/// A VM booted ahead of demand, its guest-init waiting on the console for a go-ahead; its disks
/// live in a directory of its own, removed with it.
pub(super) struct WarmVm {
    pub(super) vm: Vm,
    pub(super) disks: VmDisks,
    pub(super) reply_len: u64,
    pub(super) dir: PathBuf,
    /// guest-init said it waits for a job: input sent before then may be lost (the kernel
    /// resets the serial port's FIFO while it boots).
    pub(super) ready: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for WarmVm {
    fn drop(&mut self) {
        self.vm.kill();
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove the warm VM's directory {}: {e}", self.dir.display());
        }
    }
}

/// Pre-booted VMs by what they fit. Boots happen on one thread of the pool's own, so QEMU's
/// parent-death signal ties every warm VM to the pool: when the backend goes, they go.
pub(super) struct WarmPool {
    per_key: usize,
    dir: PathBuf,
    ready: Arc<Mutex<std::collections::HashMap<WarmKey, Vec<WarmVm>>>>,
    /// Keys being booted for, so a burst of jobs does not queue a burst of boots.
    booting: Arc<Mutex<std::collections::HashMap<WarmKey, usize>>>,
    boots: Mutex<Option<std::sync::mpsc::Sender<(WarmKey, Command, VmDisks)>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool").field("per_key", &self.per_key).field("dir", &self.dir).finish()
    }
}

impl WarmPool {
    pub(super) fn new(per_key: usize, dir: PathBuf) -> WarmPool {
        let ready: Arc<Mutex<std::collections::HashMap<WarmKey, Vec<WarmVm>>>> = Arc::default();
        let booting: Arc<Mutex<std::collections::HashMap<WarmKey, usize>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<(WarmKey, Command, VmDisks)>();
        let (ready_t, booting_t) = (ready.clone(), booting.clone());
        let thread = thread::Builder::new()
            .name("shoal-warm-vms".into())
            .spawn(move || {
                for (key, mut cmd, disks) in rx {
                    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let spawned = spawn_vm(&mut cmd, Some(ready.clone()));
                    if let Some(n) = booting_t.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&key) {
                        *n = n.saturating_sub(1);
                    }
                    let dir = disks.request.parent().map(Path::to_path_buf).unwrap_or_default();
                    match spawned {
                        Ok(vm) => {
                            let warm = WarmVm { vm, disks, reply_len: key.reply_len, dir, ready };
                            ready_t.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().push(warm);
                        }
                        Err(e) => {
                            tracing::warn!("cannot start a warm VM: {e}");
                            let _ = fs::remove_dir_all(&dir);
                        }
                    }
                }
                // The backend is gone: so are the VMs this thread started (PR_SET_PDEATHSIG).
            })
            .expect("spawning the warm VM thread");
        WarmPool { per_key, dir, ready, booting, boots: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }
    }

    /// A warm VM for `key` whose QEMU is still alive, one that is ready first; one still
    /// booting is further along than a cold boot would be.
    pub(super) fn take(&self, key: &WarmKey) -> Option<WarmVm> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let list = ready.get_mut(key)?;
        list.retain_mut(|w| w.vm.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none()));
        let at = list
            .iter()
            .position(|w| w.ready.load(std::sync::atomic::Ordering::Acquire))
            .or(list.len().checked_sub(1))?;
        Some(list.swap_remove(at))
    }

    /// Boots VMs for `key` until `per_key` are ready or booting.
    pub(super) fn replenish(&self, backend: &MicrovmBackend, key: WarmKey) {
        let have = self.ready.lock().unwrap_or_else(|e| e.into_inner()).get(&key).map_or(0, Vec::len);
        let mut booting = self.booting.lock().unwrap_or_else(|e| e.into_inner());
        let pending = booting.entry(key.clone()).or_default();
        while have + *pending < self.per_key {
            match self.prepare(backend, &key) {
                Ok((cmd, disks)) => {
                    let sent = self
                        .boots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .is_some_and(|tx| tx.send((key.clone(), cmd, disks)).is_ok());
                    if !sent {
                        return;
                    }
                    *pending += 1;
                }
                Err(e) => {
                    tracing::warn!("cannot prepare a warm VM: {e}");
                    return;
                }
            }
        }
    }

    fn prepare(&self, backend: &MicrovmBackend, key: &WarmKey) -> Result<(Command, VmDisks), RunError> {
        fs::create_dir_all(&self.dir).map_err(|e| RunError::io(format!("creating {}", self.dir.display()), e))?;
        let dir = tempfile_dir(&self.dir)?;
        let disks =
            VmDisks { rootfs: key.rootfs.clone(), request: dir.join("request.img"), reply: dir.join("reply.img") };
        create_sparse(&disks.request, WARM_REQUEST_DISK_BYTES)?;
        create_sparse(&disks.reply, key.reply_len)?;
        let cmd = backend.qemu_command(&disks, key, true)?;
        Ok((cmd, disks))
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        // Closing the channel ends the boot thread; the VMs it started die with it, and dropping
        // the ready ones removes their disks.
        tracing::debug!("stopping the warm VMs");
        drop(self.boots.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Removes `vm-<pid>-<n>` directories whose process is gone (a run killed with -9).
pub(super) fn remove_stale_vm_dirs(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("vm-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh directory under `parent` named for this process.
fn tempfile_dir(parent: &Path) -> Result<PathBuf, RunError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = parent.join(format!("vm-{}-{n}", std::process::id()));
    fs::create_dir(&dir).map_err(|e| RunError::io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

pub(super) fn create_sparse(path: &Path, len: u64) -> Result<(), RunError> {
    File::create(path).and_then(|f| f.set_len(len)).map_err(|e| RunError::io(format!("creating {}", path.display()), e))
}
