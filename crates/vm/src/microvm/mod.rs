//! The microVM backend: every job in a fresh QEMU `microvm` with guest-init as PID 1.
//!
//! Host side, per job: the image root as a squashfs (built once per rootfs, cached beside it),
//! a request disk (header + tar of inputs and stdin), a sparse reply disk, then QEMU with the
//! cached uncompressed kernel and initramfs, no network device, `-no-reboot` so that power-off
//! and a guest panic both end it. The host waits for QEMU with a deadline (the job's timeout,
//! which the guest enforces itself, plus a boot allowance), kills it past that, and reads the
//! reply disk: exit, stdout, stderr and the output tar, unpacked by the same checked code as
//! the namespace backend's.
//!
//! Once, and kept between processes while its inputs are unchanged ([`prepared`]): QEMU's
//! version, the guest kernel (its bzImage turned into `vmlinux`, cached by the image's hash),
//! the initramfs (guest-init + modules, cached by the hash of its parts), the TSC rate and the
//! accelerator, probed: KVM where `/dev/kvm` works and is not PVM (which cannot boot a stock
//! kernel; checked at every start) and a bounded probe boot succeeds, TCG otherwise.

mod host;
pub mod initramfs;
pub mod kernel;
mod prepared;
mod qemu;
mod request;
mod warm;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
pub use shoal_sandbox::disk;

use self::disk::{DATA_OFFSET, Fault, GuestReply, REPLY_MAGIC};
pub use self::host::{ElfError, GuestInitError, SetupError, find_guest_init};
use self::host::{accel_from_env, kvm_ruled_out, prepare, probe_boot};
use self::qemu::{Vm, VmDisks, spawn_vm, wait_deadline};
pub use self::request::squashfs_for;
use self::request::write_request_disk;
use self::warm::{WARM_REQUEST_DISK_BYTES, WarmKey, WarmPool, WarmVm, create_sparse, remove_stale_vm_dirs};
use crate::{Backend, Outcome, Request, RunError, collect};

/// Past the job's timeout, the guest's own grace to kill it and reply (as in the namespace backend).
const GUEST_GRACE_MS: u64 = 2_000;
const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Most VMs kept booted ahead of demand per kind of job (each holds its memory while it waits).
pub const WARM_PER_KIND_MAX: usize = 16;
/// Past the go-ahead, what a warm VM is allowed on top of the job's timeout and guest grace
/// before it counts as hung (no boot to wait for).
const WARM_GRACE_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The accelerator as far as it is known without starting QEMU (a node announces it at start,
    /// before its first microVM): `SHOAL_ACCEL`, else TCG where `/dev/kvm` does not open or is PVM,
    /// else KVM, which the backend's probe boot confirms at its first use (it falls back to TCG if
    /// that boot does not finish). With why.
    pub fn without_probe() -> (Accel, String) {
        accel_from_env().or_else(kvm_ruled_out).unwrap_or((Accel::Kvm, "/dev/kvm opens".into()))
    }
}

/// How to set up the backend. [`MicrovmConfig::new`] finds everything on the host.
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// Where the vmlinux and initramfs are cached (e.g. `$SHOAL_HOME/vm`).
    pub cache_dir: PathBuf,
    /// The static guest-init binary; None: [`find_guest_init`].
    pub guest_init: Option<PathBuf>,
    pub qemu: PathBuf,
    /// None: probe.
    pub accel: Option<Accel>,
    /// Allowed for boot and power-off on top of the job's timeout before the guest counts as
    /// hung; None: 60 s under TCG, 10 s under KVM.
    pub boot_grace_ms: Option<u64>,
    /// Test hook: make guest-init panic or hang.
    pub fault: Option<Fault>,
    /// VMs kept booted ahead of demand for each kind of job seen (image, memory, cores);
    /// 0: every job boots its own. At most [`WARM_PER_KIND_MAX`].
    pub warm_per_kind: usize,
}

impl MicrovmConfig {
    pub fn new(cache_dir: impl Into<PathBuf>) -> MicrovmConfig {
        MicrovmConfig {
            cache_dir: cache_dir.into(),
            guest_init: None,
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: None,
            boot_grace_ms: None,
            fault: None,
            warm_per_kind: 0,
        }
    }
}

/// What the run record says about the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDetails {
    pub qemu: String,
    pub guest_kernel: String,
    pub timeline: BootTimeline,
    /// Booted ahead of demand: the timeline counts from the go-ahead, not from QEMU's start.
    pub warm: bool,
}

/// One run's timeline, ms since QEMU was started. Guest points are converted from the guest's
/// boot clock by assuming power-off takes no time, so `kernel_entry_ms` is an upper bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimeline {
    pub kernel_entry_ms: u64,
    pub init_start_ms: u64,
    pub job_start_ms: u64,
    pub job_end_ms: u64,
    pub reply_written_ms: u64,
    pub qemu_exit_ms: u64,
}

/// Everything prepared once: the backend itself.
#[derive(Debug)]
pub struct MicrovmBackend {
    qemu: PathBuf,
    qemu_version: String,
    bios: Option<PathBuf>,
    vmlinux: PathBuf,
    initramfs: PathBuf,
    kernel_release: String,
    accel: Accel,
    accel_reason: String,
    boot_grace_ms: u64,
    fault: Option<Fault>,
    /// The host's TSC rate, measured once; None where there is no TSC to read.
    tsc_khz: Option<u64>,
    pool: Option<WarmPool>,
}

/// A machine-readable account of what the backend found, for `shoal doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct MicrovmReport {
    pub qemu: String,
    pub qemu_version: String,
    pub bios: Option<PathBuf>,
    pub kernel_release: String,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    pub accelerator: Accel,
    pub accelerator_reason: String,
}

impl MicrovmBackend {
    /// Finds QEMU, the kernel and guest-init, prepares the cached vmlinux and initramfs and
    /// probes the accelerator, or takes all that from the facts kept by an earlier process.
    /// Errors say what to install or set.
    pub fn new(cfg: MicrovmConfig) -> Result<MicrovmBackend, SetupError> {
        let bios = Path::new(QBOOT).is_file().then(|| PathBuf::from(QBOOT));
        if bios.is_none() {
            tracing::warn!("{QBOOT} is missing (package qemu-system-data): booting with SeaBIOS costs seconds");
        }
        let kernel = kernel::find_kernel()?;
        let guest_init_path = match &cfg.guest_init {
            Some(p) => p.clone(),
            None => find_guest_init()?,
        };
        let modules_dep = kernel.modules_dir.join("modules.dep");
        let stamp = prepared::stamp(&[&kernel.image, &guest_init_path, &modules_dep], &cfg.qemu);
        let (mut facts, mut changed) = match prepared::load(&cfg.cache_dir, &stamp) {
            Some(f) => (f, false),
            None => (prepare(&kernel, &guest_init_path, &cfg.qemu, &cfg.cache_dir, stamp)?, true),
        };
        let (accel, accel_reason) = match (cfg.accel, accel_from_env()) {
            (Some(a), _) => (a, "chosen by configuration".into()),
            (None, Some(chosen)) => chosen,
            // The cheap checks run every time (KVM may have been loaded since); only the probe
            // boot's verdict is kept.
            (None, None) => match (kvm_ruled_out(), &facts.probed) {
                (Some(ruled_out), _) => ruled_out,
                (None, Some(probed)) => probed.clone(),
                (None, None) => {
                    let probed = probe_boot(&cfg.qemu, &facts.vmlinux, bios.as_deref());
                    facts.probed = Some(probed.clone());
                    changed = true;
                    probed
                }
            },
        };
        if changed {
            prepared::store(&cfg.cache_dir, &facts);
        }
        // Disks of warm VMs whose shoal was killed before it could remove them.
        remove_stale_vm_dirs(&cfg.cache_dir.join("warm"));
        let boot_grace_ms = cfg.boot_grace_ms.unwrap_or(match accel {
            Accel::Kvm => 10_000,
            Accel::Tcg => 60_000,
        });
        Ok(MicrovmBackend {
            qemu: cfg.qemu,
            qemu_version: facts.qemu_version,
            bios,
            vmlinux: facts.vmlinux,
            initramfs: facts.initramfs,
            kernel_release: facts.kernel_release,
            accel,
            accel_reason,
            boot_grace_ms,
            fault: cfg.fault,
            tsc_khz: facts.tsc_khz,
            pool: (cfg.warm_per_kind > 0)
                .then(|| WarmPool::new(cfg.warm_per_kind.min(WARM_PER_KIND_MAX), cfg.cache_dir.join("warm"))),
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn report(&self) -> MicrovmReport {
        MicrovmReport {
            qemu: self.qemu.display().to_string(),
            qemu_version: self.qemu_version.clone(),
            bios: self.bios.clone(),
            kernel_release: self.kernel_release.clone(),
            vmlinux: self.vmlinux.clone(),
            initramfs: self.initramfs.clone(),
            accelerator: self.accel,
            accelerator_reason: self.accel_reason.clone(),
        }
    }

    fn run_vm(&self, req: Request) -> Result<Outcome, RunError> {
        let started = Instant::now();
        shoal_sandbox::namespace::validate(&req, true)?;
        let mut key = WarmKey::of(&squashfs_for(&req.rootfs)?, &req.limits, req.network);
        if !req.pci_devices.is_empty() {
            // A device passed by VFIO is in one VM at a time: booted for this job, never ahead.
            if let Some(d) = req.pci_devices.iter().find(|d| !shoal_sandbox::PciDevice::valid_address(&d.address)) {
                return Err(RunError::InvalidRequest(format!(
                    "PCI address `{}` is not of the form 0000:01:00.0",
                    d.address
                )));
            }
            key.pci = req.pci_devices.clone();
            return self.run_cold(&req, &key, started);
        }
        if let Some(pool) = &self.pool {
            let warm = pool.take(&key);
            // The next job of this kind finds a VM booted.
            pool.replenish(self, key.clone());
            if let Some(warm) = warm {
                return self.run_warm(&req, &key, warm, started);
            }
        }
        self.run_cold(&req, &key, started)
    }

    fn run_cold(&self, req: &Request, key: &WarmKey, started: Instant) -> Result<Outcome, RunError> {
        let disks = VmDisks {
            rootfs: key.rootfs.clone(),
            request: req.work_dir.join("request.img"),
            reply: req.work_dir.join("reply.img"),
        };
        write_request_disk(&disks.request, req, self.fault, None)?;
        create_sparse(&disks.reply, key.reply_len)?;
        let mut cmd = self.qemu_command(&disks, key, false)?;
        let mut vm =
            spawn_vm(&mut cmd, None).map_err(|source| RunError::HelperSpawn { program: self.qemu.clone(), source })?;
        let boot_deadline = vm.started + Duration::from_millis(self.boot_grace_ms);
        let origin = vm.started;
        let clock = RunClock { started, deadline_base: boot_deadline, origin };
        self.finish(req, &mut vm, &disks.reply, key.reply_len, clock)
    }

    /// A pre-booted VM: fill its request disk, tell it to go, collect as for a cold one.
    fn run_warm(&self, req: &Request, key: &WarmKey, mut warm: WarmVm, started: Instant) -> Result<Outcome, RunError> {
        let disks = &warm.disks;
        if let Err(e) = write_request_disk(&disks.request, req, self.fault, Some(WARM_REQUEST_DISK_BYTES)) {
            tracing::debug!("warm VM refused ({e}); booting a cold one");
            drop(warm);
            return self.run_cold(req, key, started);
        }
        let boot_deadline = warm.vm.started + Duration::from_millis(self.boot_grace_ms);
        while !warm.ready.load(std::sync::atomic::Ordering::Acquire) {
            let alive = warm.vm.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none());
            if !alive || Instant::now() >= boot_deadline {
                tracing::debug!("warm VM never became ready; booting a cold one");
                drop(warm);
                return self.run_cold(req, key, started);
            }
            thread::sleep(Duration::from_millis(2));
        }
        let go = Instant::now();
        let sent = warm.vm.stdin.as_mut().map(|s| s.write_all(b"go\n").and_then(|()| s.flush()));
        if !matches!(sent, Some(Ok(()))) {
            tracing::debug!("warm VM died before its job; booting a cold one");
            drop(warm);
            return self.run_cold(req, key, started);
        }
        let reply_img = disks.reply.clone();
        let reply_len = warm.reply_len;
        let deadline_base = go + Duration::from_millis(WARM_GRACE_MS);
        let clock = RunClock { started, deadline_base, origin: go };
        let mut outcome = self.finish(req, &mut warm.vm, &reply_img, reply_len, clock);
        if let Ok(o) = &mut outcome
            && let Some(vm) = &mut o.vm
        {
            vm.warm = true;
        }
        outcome
    }

    /// Waits for QEMU (the job's timeout past `clock.deadline_base`), then reads the reply disk.
    fn finish(
        &self,
        req: &Request,
        vm: &mut Vm,
        reply_img: &Path,
        reply_len: u64,
        clock: RunClock,
    ) -> Result<Outcome, RunError> {
        let RunClock { started, deadline_base: job_deadline_base, origin } = clock;
        let stdout_cap = req.limits.stdout_bytes_max;
        let tar_cap = req.limits.output_stream_bytes_max();
        let qemu_started = vm.started;
        let deadline = job_deadline_base + Duration::from_millis(req.limits.timeout_ms.saturating_add(GUEST_GRACE_MS));
        let child = vm.child.as_mut().expect("running");
        let status = wait_deadline(child, deadline).map_err(|e| RunError::io("waiting for QEMU", e))?;
        let exit_at = Instant::now();
        let qemu_exit_ms = exit_at.duration_since(qemu_started).as_millis() as u64;
        let hung = status.is_none();
        vm.kill(); // kills and reaps QEMU if it is still running
        let console = vm.console.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        let qemu_err = vm.qemu_err.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        let tail = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        tracing::debug!("guest console:\n{}", tail(&console).replace('\r', ""));
        if hung {
            return Err(RunError::Helper(format!(
                "the microVM hung: no reply {} ms after {} (its job's timeout is {} ms); QEMU was killed. Console: {}",
                deadline.saturating_duration_since(origin).as_millis(),
                if origin == qemu_started { "QEMU started" } else { "its go-ahead" },
                req.limits.timeout_ms,
                tail(&console)
            )));
        }
        let mut reply_file = File::open(reply_img).map_err(|e| RunError::io("opening the reply disk", e))?;
        let header = disk::read_header(&mut reply_file, REPLY_MAGIC)
            .map_err(|source| RunError::Reply { what: "its header", source })?;
        let Some(header) = header else {
            let console_text = tail(&console);
            let what = if console_text.contains("Kernel panic") {
                "the guest kernel panicked"
            } else {
                "the microVM stopped without a reply"
            };
            return Err(RunError::Helper(format!(
                "{what} (QEMU {}). Console: {console_text} QEMU: {}",
                status.map(|s| s.to_string()).unwrap_or_default(),
                tail(&qemu_err)
            )));
        };
        let reply: GuestReply = serde_json::from_slice(&header)
            .map_err(|e| RunError::Reply { what: "its header's JSON", source: e.into() })?;
        let (exit, user_ms, sys_ms, peak, tar, tar_error, out_span, err_span, tl) = match reply {
            GuestReply::SetupFailed { message, .. } => {
                return Err(RunError::Setup(format!("in the microVM: {message}")));
            }
            GuestReply::Ran {
                exit,
                user_ms,
                sys_ms,
                peak_memory_bytes,
                tar,
                tar_error,
                stdout,
                stderr,
                timeline,
                ..
            } => (exit, user_ms, sys_ms, peak_memory_bytes, tar, tar_error, stdout, stderr, timeline),
        };
        let stdout = disk::capture_span(&mut reply_file, out_span, stdout_cap, reply_len, &req.work_dir.join("stdout"))
            .map_err(|source| RunError::Reply { what: "stdout", source })?;
        let stderr = disk::capture_span(&mut reply_file, err_span, stdout_cap, reply_len, &req.work_dir.join("stderr"))
            .map_err(|source| RunError::Reply { what: "stderr", source })?;
        let outputs_dir = req.work_dir.join("outputs");
        shoal_sandbox::namespace::make_private_dir(&outputs_dir)?;
        let unpacked = match tar_error {
            Some(e) => Err(collect::UnpackError::Invalid(e)),
            None if tar.len > tar_cap || tar.offset != DATA_OFFSET || tar.offset + tar.len > reply_len => {
                Err(collect::UnpackError::Invalid(format!("output region {tar:?} out of bounds")))
            }
            None => reply_file
                .seek(SeekFrom::Start(tar.offset))
                .map_err(collect::UnpackError::from)
                .and_then(|_| collect::unpack((&reply_file).take(tar.len), &outputs_dir, &req.outputs)),
        };
        let outputs = match unpacked {
            Ok(o) => o,
            Err(e) if exit.success() => return Err(RunError::Helper(e.to_string())),
            Err(e) => {
                tracing::debug!("outputs of a failed job not unpacked: {e}");
                BTreeMap::new()
            }
        };
        let timeline = if tl.go_ms > 0 {
            // A warm VM: everything counts from the go-ahead; its boot happened before.
            let since_go = |t: u64| t.saturating_sub(tl.go_ms);
            BootTimeline {
                kernel_entry_ms: 0,
                init_start_ms: 0,
                job_start_ms: since_go(tl.job_start_ms),
                job_end_ms: since_go(tl.job_end_ms),
                reply_written_ms: since_go(tl.reply_written_ms),
                qemu_exit_ms: exit_at.saturating_duration_since(origin).as_millis() as u64,
            }
        } else {
            let kernel_entry_ms = qemu_exit_ms.saturating_sub(tl.reply_written_ms);
            BootTimeline {
                kernel_entry_ms,
                init_start_ms: kernel_entry_ms + tl.init_start_ms,
                job_start_ms: kernel_entry_ms + tl.job_start_ms,
                job_end_ms: kernel_entry_ms + tl.job_end_ms,
                reply_written_ms: kernel_entry_ms + tl.reply_written_ms,
                qemu_exit_ms,
            }
        };
        tracing::debug!(?timeline, ?exit, "microVM finished");
        Ok(Outcome {
            exit,
            stdout,
            stderr,
            outputs,
            wall_ms: started.elapsed().as_millis() as u64,
            user_ms,
            sys_ms,
            peak_memory_bytes: peak,
            backend: "microvm".into(),
            accelerator: Some(self.accel.as_str().into()),
            vm: Some(VmDetails {
                qemu: self.qemu_version.clone(),
                guest_kernel: self.kernel_release.clone(),
                timeline,
                warm: false,
            }),
        })
    }
}

/// The instants one run counts from.
#[derive(Debug, Clone, Copy)]
struct RunClock {
    /// The run's start: its wall time counts from here.
    started: Instant,
    /// The job's deadline is its timeout and the guest's grace past this: QEMU's start plus the
    /// boot allowance, or a warm VM's go-ahead plus its grace.
    deadline_base: Instant,
    /// What the timeline counts from: QEMU's start, or a warm VM's go-ahead.
    origin: Instant,
}

impl Backend for MicrovmBackend {
    fn name(&self) -> &'static str {
        "microvm"
    }

    fn run(&self, req: Request) -> Result<Outcome, RunError> {
        let span = tracing::info_span!("vm", backend = "microvm", accel = self.accel.as_str());
        let _enter = span.enter();
        let work_dir = req.work_dir.clone();
        let result = self.run_vm(req);
        // The disks are the big temp files of a run; the outputs stay for the caller.
        for f in ["request.img", "reply.img"] {
            let _ = fs::remove_file(work_dir.join(f));
        }
        result
    }
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}
