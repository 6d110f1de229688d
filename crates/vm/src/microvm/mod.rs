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

pub mod initramfs;
pub mod kernel;
mod prepared;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::disk::{DATA_OFFSET, Fault, GuestReply, GuestRequest, REPLY_MAGIC, REQUEST_MAGIC};
use crate::wire::JobSpec;
use crate::{Backend, Outcome, Request, RunError, collect};
pub use shoal_sandbox::disk;
use shoal_sandbox::sys;

/// Guest memory on top of the job's limit: kernel, guest-init, inputs on tmpfs, stdout buffers.
const GUEST_OVERHEAD_MIB: u64 = 160;
/// Kept of QEMU's console and stderr, for error messages.
const CONSOLE_TAIL_BYTES: usize = 16 << 10;
/// How long the probe boot for KVM may take.
const KVM_PROBE_MS: u64 = 10_000;
/// Past the job's timeout, the guest's own grace to kill it and reply (as in the namespace backend).
const GUEST_GRACE_MS: u64 = 2_000;
const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Most VMs kept booted ahead of demand per kind of job (each holds its memory while it waits).
pub const WARM_PER_KIND_MAX: usize = 16;
/// Request disk of a pre-booted VM, sized at its boot: a job whose inputs do not fit runs cold.
const WARM_REQUEST_DISK_BYTES: u64 = DATA_OFFSET + (256 << 20);
/// Past the go-ahead, what a warm VM is allowed on top of the job's timeout and guest grace
/// before it counts as hung (no boot to wait for).
const WARM_GRACE_MS: u64 = 10_000;
/// CONFIG_HZ of Debian's cloud kernel: jiffies per second, for `lpj=`.
const GUEST_HZ: u64 = 250;
/// How long the host's TSC is watched to learn its rate.
const TSC_MEASURE_MS: u64 = 20;

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
    pub fn new(cfg: MicrovmConfig) -> Result<MicrovmBackend, String> {
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

    /// `random.trust_cpu=on`: the guest has no entropy of its own at boot, and anything that
    /// asks for random bytes before the pool fills (a hash map's seed) would block, for
    /// seconds to minutes under TCG; RDRAND (emulated under TCG) seeds it at once.
    /// `shoal.debug` (and the kernel's own messages) narrate the boot on the console, when this
    /// process logs `shoal_vm` at debug level or `SHOAL_GUEST_DEBUG` is set; the kernel then
    /// takes every line written to `/dev/kmsg` (it keeps 10 in 5 s otherwise), for marks on its clock.
    fn kernel_cmdline(&self) -> String {
        let debug = tracing::enabled!(tracing::Level::DEBUG) || std::env::var_os("SHOAL_GUEST_DEBUG").is_some();
        let mut line = String::from("console=ttyS0 panic=-1 mitigations=off random.trust_cpu=on");
        if let Some(khz) = self.tsc_khz {
            // The guest's TSC runs at the host's rate (KVM and TCG alike). Told so, the kernel
            // skips calibrating it against the PIT, which fails when the host is busy and
            // leaves an emulated guest without a clock: it hangs at boot.
            line.push_str(&format!(" tsc_early_khz={khz} tsc=reliable lpj={}", khz * 1000 / GUEST_HZ));
        }
        line.push_str(if debug { " shoal.debug printk.devkmsg=on" } else { " quiet" });
        line
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

    /// QEMU for one VM: the three disks, memory and cores; `warm` makes guest-init wait for a
    /// go-ahead on its console before it reads the request.
    fn qemu_command(&self, disks: &VmDisks, key: &WarmKey, warm: bool) -> Result<Command, RunError> {
        let (mem_mib, cores) = (key.mem_mib, key.cores);
        let mut cmd = Command::new(&self.qemu);
        let mut cmdline = self.kernel_cmdline();
        if warm {
            cmdline.push_str(" shoal.warm");
        }
        if key.network {
            // QEMU's user-mode network: outbound connections only, the host's loopback as 10.0.2.2.
            cmdline.push_str(" shoal.net");
            cmd.args(["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"]);
        }
        cmd.args(["-M", "microvm", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio", "-accel", self.accel.as_str(), "-cpu"])
            .arg(if self.accel == Accel::Kvm { "host" } else { "max" })
            .arg("-m")
            .arg(mem_mib.to_string())
            .arg("-smp")
            .arg(cores.max(1).to_string())
            .arg("-kernel")
            .arg(&self.vmlinux)
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            .arg(cmdline);
        if let Some(b) = &self.bios {
            cmd.arg("-bios").arg(b);
        }
        for (id, path, serial, ro) in [
            ("rootfs", &disks.rootfs, disk::ROOTFS_SERIAL, true),
            ("req", &disks.request, disk::REQUEST_SERIAL, true),
            ("reply", &disks.reply, disk::REPLY_SERIAL, false),
        ] {
            let path =
                path.to_str().ok_or_else(|| RunError::InvalidRequest(format!("{} is not UTF-8", path.display())))?;
            if path.contains(',') {
                return Err(RunError::InvalidRequest(format!("QEMU cannot take a path with `,`: {path}")));
            }
            let mode = if ro { "readonly=on" } else { "cache=unsafe" };
            cmd.arg("-drive").arg(format!("id={id},file={path},format=raw,if=none,{mode}"));
            cmd.arg("-device").arg(format!("virtio-blk-device,drive={id},serial={serial}"));
        }
        let stdin = if warm { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).env_clear();
        // SAFETY: prctl is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // QEMU dies with the thread that started it: the job's thread, or the pool's.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    fn run_vm(&self, req: Request) -> Result<Outcome, RunError> {
        let started = Instant::now();
        shoal_sandbox::namespace::validate(&req, true)?;
        let key = WarmKey::of(&squashfs_for(&req.rootfs)?, &req.limits, req.network);
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
        self.finish(req, &mut vm, &disks.reply, key.reply_len, boot_deadline, started, origin)
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
        let mut outcome = self.finish(req, &mut warm.vm, &reply_img, reply_len, deadline_base, started, go);
        if let Ok(o) = &mut outcome
            && let Some(vm) = &mut o.vm
        {
            vm.warm = true;
        }
        outcome
    }

    /// Waits for QEMU (the job's timeout past `job_deadline_base`), then reads the reply disk.
    fn finish(
        &self,
        req: &Request,
        vm: &mut Vm,
        reply_img: &Path,
        reply_len: u64,
        job_deadline_base: Instant,
        started: Instant,
        origin: Instant,
    ) -> Result<Outcome, RunError> {
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
            .map_err(|e| RunError::Helper(format!("reply disk: {e}")))?;
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
        let reply: GuestReply =
            serde_json::from_slice(&header).map_err(|e| RunError::Helper(format!("reply header: {e}")))?;
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
            .map_err(|e| RunError::Helper(format!("stdout: {e}")))?;
        let stderr = disk::capture_span(&mut reply_file, err_span, stdout_cap, reply_len, &req.work_dir.join("stderr"))
            .map_err(|e| RunError::Helper(format!("stderr: {e}")))?;
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

/// The three disks of a VM.
#[derive(Debug, Clone)]
struct VmDisks {
    rootfs: PathBuf,
    request: PathBuf,
    reply: PathBuf,
}

/// A running QEMU with its console and stderr readers. Dropping it kills and reaps QEMU.
struct Vm {
    child: Option<Child>,
    /// The guest's serial input: a warm VM's go-ahead.
    stdin: Option<std::process::ChildStdin>,
    console: Option<thread::JoinHandle<Vec<u8>>>,
    qemu_err: Option<thread::JoinHandle<Vec<u8>>>,
    started: Instant,
}

impl Vm {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a pre-booted VM fits: its image root, memory, cores and reply disk size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WarmKey {
    rootfs: PathBuf,
    mem_mib: u64,
    cores: u32,
    reply_len: u64,
    network: bool,
}

impl WarmKey {
    fn of(rootfs_img: &Path, limits: &crate::Limits, network: bool) -> WarmKey {
        WarmKey {
            rootfs: rootfs_img.to_path_buf(),
            mem_mib: (limits.memory_bytes >> 20) + GUEST_OVERHEAD_MIB,
            cores: limits.cores.max(1),
            reply_len: round_up(DATA_OFFSET + limits.output_stream_bytes_max() + 2 * limits.stdout_bytes_max, 1 << 20),
            network,
        }
    }
}

/// A VM booted ahead of demand, its guest-init waiting on the console for a go-ahead; its disks
/// live in a directory of its own, removed with it.
struct WarmVm {
    vm: Vm,
    disks: VmDisks,
    reply_len: u64,
    dir: PathBuf,
    /// guest-init said it waits for a job: input sent before then may be lost (the kernel
    /// resets the serial port's FIFO while it boots).
    ready: Arc<std::sync::atomic::AtomicBool>,
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
struct WarmPool {
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
    fn new(per_key: usize, dir: PathBuf) -> WarmPool {
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
    fn take(&self, key: &WarmKey) -> Option<WarmVm> {
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
    fn replenish(&self, backend: &MicrovmBackend, key: WarmKey) {
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
                        .map(|tx| tx.send((key.clone(), cmd, disks)));
                    if !matches!(sent, Some(Ok(()))) {
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
fn remove_stale_vm_dirs(parent: &Path) {
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

fn create_sparse(path: &Path, len: u64) -> Result<(), RunError> {
    File::create(path).and_then(|f| f.set_len(len)).map_err(|e| RunError::io(format!("creating {}", path.display()), e))
}

/// Starts QEMU with readers for its console (watching for [`disk::WARM_READY_MARKER`] when
/// `ready` is given) and its stderr.
fn spawn_vm(cmd: &mut Command, ready: Option<Arc<std::sync::atomic::AtomicBool>>) -> io::Result<Vm> {
    tracing::debug!(?cmd, warm = ready.is_some(), "starting QEMU");
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let console = tail_reader_watching(child.stdout.take(), ready);
    let qemu_err = tail_reader(child.stderr.take());
    let stdin = child.stdin.take();
    Ok(Vm { child: Some(child), stdin, console: Some(console), qemu_err: Some(qemu_err), started })
}

/// Waits until the child exits (Some) or the deadline passes (None), without busy-waiting.
fn wait_deadline(child: &mut Child, deadline: Instant) -> io::Result<Option<std::process::ExitStatus>> {
    let pidfd = sys::pidfd_open(child.id() as i32)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if sys::poll_readable(&pidfd, left.as_millis() as u64)? {
            return child.wait().map(Some);
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Reads a pipe to its end on a thread, keeping the last [`CONSOLE_TAIL_BYTES`].
fn tail_reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    tail_reader_watching(r, None)
}

/// As [`tail_reader`], and sets `seen` once [`disk::WARM_READY_MARKER`] has gone by.
fn tail_reader_watching<R: Read + Send + 'static>(
    r: Option<R>,
    seen: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let Some(mut r) = r else { return Vec::new() };
        let kept = Arc::new(Mutex::new(Vec::new()));
        let mut buf = [0u8; 8192];
        let marker = disk::WARM_READY_MARKER.as_bytes();
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                    let from = k.len().saturating_sub(marker.len());
                    k.extend_from_slice(&buf[..n]);
                    if let Some(flag) = &seen
                        && k[from..].windows(marker.len()).any(|w| w == marker)
                    {
                        flag.store(true, std::sync::atomic::Ordering::Release);
                    }
                    if k.len() > CONSOLE_TAIL_BYTES {
                        let cut = k.len() - CONSOLE_TAIL_BYTES;
                        k.drain(..cut);
                    }
                }
            }
        }
        std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()))
    })
}

/// QEMU's version, the vmlinux and initramfs (built here if their cache lacks them) and the
/// TSC rate: what [`prepared`] keeps between processes (the accelerator is probed apart).
fn prepare(
    kernel: &kernel::KernelPackage,
    guest_init_path: &Path,
    qemu: &Path,
    cache_dir: &Path,
    stamp: String,
) -> Result<prepared::HostFacts, String> {
    let qemu_version = qemu_version(qemu)?;
    let image = kernel::read_kernel_image(&kernel.image)?;
    let image_hash = blake3::hash(&image).to_hex().to_string();
    let vmlinux = cache_dir.join("kernel").join(&image_hash[..32]).join("vmlinux");
    if !vmlinux.is_file() {
        let started = Instant::now();
        let elf = kernel::extract_vmlinux(&image).map_err(|e| format!("{}: {e}", kernel.image.display()))?;
        write_atomic(&vmlinux, &elf)?;
        tracing::info!(kernel = %kernel.image.display(), ms = started.elapsed().as_millis() as u64, "extracted vmlinux");
    }
    drop(image);
    let guest_init = fs::read(guest_init_path).map_err(|e| format!("reading {}: {e}", guest_init_path.display()))?;
    check_static(&guest_init).map_err(|e| format!("{}: {e}", guest_init_path.display()))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shoal-initramfs-v3\0");
    hasher.update(blake3::hash(&guest_init).as_bytes());
    let base = kernel::module_load_order(&kernel.modules_dir, kernel::GUEST_MODULES)?;
    let net: Vec<PathBuf> = kernel::module_load_order(&kernel.modules_dir, kernel::GUEST_NET_MODULES)?
        .into_iter()
        .filter(|p| !base.contains(p))
        .collect();
    let mut lists = [Vec::new(), Vec::new()];
    for (list, paths) in lists.iter_mut().zip([&base, &net]) {
        hasher.update(b"\0list\0");
        for path in paths {
            let data = fs::read(path).map_err(|e| format!("reading module {}: {e}", path.display()))?;
            let data = kernel::strip_module_signature(&data).to_vec();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            hasher.update(name.as_bytes());
            hasher.update(blake3::hash(&data).as_bytes());
            list.push((name, data));
        }
    }
    let [modules, net_modules] = lists;
    let initramfs = cache_dir.join("initramfs").join(format!("{}.cpio", &hasher.finalize().to_hex()[..32]));
    if !initramfs.is_file() {
        let cpio = initramfs::build(&guest_init, &modules, &net_modules)
            .map_err(|e| format!("building the initramfs: {e}"))?;
        write_atomic(&initramfs, &cpio)?;
        tracing::info!(path = %initramfs.display(), bytes = cpio.len(), "built the initramfs");
    }
    Ok(prepared::HostFacts {
        stamp,
        qemu_version,
        kernel_release: kernel.release.clone(),
        vmlinux,
        initramfs,
        tsc_khz: tsc_khz(),
        probed: None,
    })
}

/// `SHOAL_ACCEL=kvm|tcg`, which skips the probe.
fn accel_from_env() -> Option<(Accel, String)> {
    let a = std::env::var("SHOAL_ACCEL").ok()?;
    match a.as_str() {
        "kvm" => Some((Accel::Kvm, "SHOAL_ACCEL=kvm".into())),
        "tcg" => Some((Accel::Tcg, "SHOAL_ACCEL=tcg".into())),
        other => {
            tracing::warn!("SHOAL_ACCEL={other} is neither kvm nor tcg: probing");
            None
        }
    }
}

/// TCG and why, when KVM is out of the question without a probe boot: `/dev/kvm` does not open,
/// or it is the PVM backend.
fn kvm_ruled_out() -> Option<(Accel, String)> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Some((Accel::Tcg, format!("/dev/kvm cannot be opened ({e})")));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        let why = "/dev/kvm is the PVM backend (/sys/module/kvm_pvm), which cannot boot a stock kernel";
        return Some((Accel::Tcg, why.into()));
    }
    None
}

/// KVM if our kernel boots to its panic (no initramfs, `panic=-1`) under it within
/// [`KVM_PROBE_MS`].
fn probe_boot(qemu: &Path, vmlinux: &Path, bios: Option<&Path>) -> (Accel, String) {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-no-reboot", "-kernel"])
        .arg(vmlinux)
        .args(["-append", "panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(b) = bios {
        cmd.arg("-bios").arg(b);
    }
    let started = Instant::now();
    match cmd.spawn() {
        Ok(mut child) => match wait_deadline(&mut child, started + Duration::from_millis(KVM_PROBE_MS)) {
            Ok(Some(_)) => (Accel::Kvm, format!("probe boot under KVM took {} ms", started.elapsed().as_millis())),
            Ok(None) => (Accel::Tcg, format!("a probe boot under KVM did not finish within {KVM_PROBE_MS} ms")),
            Err(e) => (Accel::Tcg, format!("probe boot: {e}")),
        },
        Err(e) => (Accel::Tcg, format!("cannot start the KVM probe: {e}")),
    }
}

/// The host's TSC rate in kHz: TSC ticks over [`TSC_MEASURE_MS`] of the monotonic clock,
/// rounded to a MHz. Only where the TSC is invariant (`constant_tsc` and `nonstop_tsc`).
fn tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let flags = fs::read_to_string("/proc/cpuinfo").ok()?;
        let flags = flags.lines().find(|l| l.starts_with("flags"))?;
        if !(flags.contains(" constant_tsc") && flags.contains(" nonstop_tsc")) {
            return None;
        }
        // SAFETY: RDTSC has no preconditions on x86_64.
        let read = || unsafe { std::arch::x86_64::_rdtsc() };
        let (t0, c0) = (Instant::now(), read());
        thread::sleep(Duration::from_millis(TSC_MEASURE_MS));
        let (c1, elapsed) = (read(), t0.elapsed());
        let khz = (c1.wrapping_sub(c0) as f64 / elapsed.as_secs_f64() / 1000.0) as u64;
        Some((khz + 500) / 1000 * 1000).filter(|k| *k > 100_000)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp =
        dir.join(format!(".tmp-{}-{}", std::process::id(), path.file_name().unwrap_or_default().to_string_lossy()));
    fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("renaming {} into place: {e}", tmp.display()))
}

fn qemu_version(qemu: &Path) -> Result<String, String> {
    let out = Command::new(qemu).arg("--version").stdin(Stdio::null()).output().map_err(|e| {
        format!(
            "cannot run {} ({e}): install QEMU (scripts/setup.sh installs qemu-system-x86 from bookworm-backports)",
            qemu.display()
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    Ok(first.strip_prefix("QEMU emulator version ").unwrap_or(first).trim().to_string())
}

/// guest-init: `SHOAL_GUEST_INIT`, else where `scripts/build-guest-init.sh` puts it in this
/// tree (found from the running program's path), else beside the running program, else
/// `/usr/local/lib/shoal/guest-init`; the first that is a static program.
pub fn find_guest_init() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SHOAL_GUEST_INIT") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        // target/{debug,release}/shoal, or target/debug/deps/<test> -> target/<triple>/release/
        for up in [dir.parent(), dir.parent().and_then(Path::parent)].into_iter().flatten() {
            candidates.push(up.join("x86_64-unknown-linux-gnu/release/shoal-guest-init"));
        }
        candidates.push(dir.join("shoal-guest-init"));
    }
    candidates.push(PathBuf::from("/usr/local/lib/shoal/guest-init"));
    let mut dynamic = None;
    for c in candidates.into_iter().filter(|p| p.is_file()) {
        match elf_head(&c).and_then(|b| check_static(&b)) {
            Ok(()) => return Ok(c),
            Err(e) => dynamic = dynamic.or(Some(format!("{}: {e}", c.display()))),
        }
    }
    Err(match dynamic {
        Some(why) => format!("no static guest-init ({why}); run scripts/build-guest-init.sh or set SHOAL_GUEST_INIT"),
        None => {
            "guest-init is not built: run scripts/build-guest-init.sh (or scripts/setup.sh), or set SHOAL_GUEST_INIT"
                .into()
        }
    })
}

/// The start of an ELF file, enough for its program headers (which follow the 64-byte header):
/// looking for a guest-init must not read whole programs, at every `shoal run`.
fn elf_head(path: &Path) -> Result<Vec<u8>, String> {
    const HEAD_BYTES: u64 = 64 << 10;
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(HEAD_BYTES).read_to_end(&mut head))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(head)
}

/// Refuses a dynamically linked guest-init: there is no loader in the initramfs.
fn check_static(elf: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4")));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8")));
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err("not a 64-bit little-endian ELF program".into());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return Err("truncated ELF header".into());
    };
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        if u32_at(at) == Some(3) {
            return Err(
                "dynamically linked (has an interpreter): build it static with scripts/build-guest-init.sh".into()
            );
        }
    }
    Ok(())
}

/// The squashfs image of a materialized rootfs, built once beside it (`<rootfs>.sqfs`):
/// uncompressed (TCG pays for every decompression), owned by root, no xattrs.
pub fn squashfs_for(rootfs: &Path) -> Result<PathBuf, RunError> {
    let img = rootfs.with_extension("sqfs");
    if img.is_file() {
        return Ok(img);
    }
    let tmp = rootfs.with_extension(format!("sqfs.tmp-{}-{:?}", std::process::id(), thread::current().id()));
    let tmp = PathBuf::from(tmp.to_string_lossy().replace(['(', ')'], ""));
    let started = Instant::now();
    let out = Command::new("mksquashfs")
        .arg(rootfs)
        .arg(&tmp)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
            "-no-xattrs",
            "-noI",
            "-noId",
            "-noD",
            "-noF",
            "-noX",
        ])
        .args(["-processors", "1"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RunError::io("running mksquashfs (install squashfs-tools; scripts/setup.sh does)", e))?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(RunError::Setup(format!(
            "mksquashfs {} failed: {}",
            rootfs.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    fs::rename(&tmp, &img).map_err(|e| RunError::io(format!("renaming {} into place", tmp.display()), e))?;
    tracing::info!(rootfs = %rootfs.display(), ms = started.elapsed().as_millis() as u64, "built the rootfs squashfs");
    Ok(img)
}

/// The request disk: header, then at [`DATA_OFFSET`] a tar of `input/<name>` and `stdin`.
/// `fixed_len`: the disk exists with that size (a warm VM's, whose QEMU has it open): write in
/// place, never change its length, and refuse a request that does not fit.
fn write_request_disk(
    path: &Path,
    req: &Request,
    fault: Option<Fault>,
    fixed_len: Option<u64>,
) -> Result<(), RunError> {
    let io_err = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e: io::Error| RunError::io(what, e)
    };
    let mut file = match fixed_len {
        None => File::create(path).map_err(io_err("creating"))?,
        Some(_) => OpenOptions::new().write(true).open(path).map_err(io_err("opening"))?,
    };
    file.seek(SeekFrom::Start(DATA_OFFSET)).map_err(io_err("seeking"))?;
    let mut builder = tar::Builder::new(&mut file);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    for input in &req.inputs {
        let name = format!("input/{}", input.name);
        let meta = fs::symlink_metadata(&input.host_path).map_err(io_err("reading an input for"))?;
        if meta.is_dir() {
            builder.append_dir_all(&name, &input.host_path).map_err(io_err("adding an input to"))?;
        } else {
            builder.append_path_with_name(&input.host_path, &name).map_err(io_err("adding an input to"))?;
        }
    }
    if let Some(stdin) = &req.stdin {
        builder.append_path_with_name(stdin, "stdin").map_err(io_err("adding stdin to"))?;
    }
    builder.finish().map_err(io_err("finishing the tar of"))?;
    drop(builder);
    let end = file.stream_position().map_err(io_err("sizing"))?;
    if let Some(len) = fixed_len
        && end > len
    {
        return Err(RunError::InvalidRequest(format!(
            "inputs of {} bytes do not fit a warm VM's request disk",
            end - DATA_OFFSET
        )));
    }
    let request = GuestRequest {
        job: JobSpec::of(req),
        inputs: req.inputs.iter().map(|i| i.name.clone()).collect(),
        stdin: req.stdin.is_some(),
        tar_bytes: end - DATA_OFFSET,
        fault,
    };
    let json = serde_json::to_vec(&request).expect("the request serializes");
    disk::write_header(&mut file, REQUEST_MAGIC, &json).map_err(io_err("writing the header of"))?;
    match fixed_len {
        // Whole sectors: QEMU ignores a partial last one.
        None => file.set_len(round_up(end, 4096)).map_err(io_err("padding"))?,
        // The guest drops its own cached blocks of the disk before reading (BLKFLSBUF).
        // QEMU reads the file through the same page cache: nothing to flush on this side.
        Some(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_is_refused_as_guest_init() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check_static(&me).unwrap_err().contains("dynamically linked"));
        assert!(check_static(b"#!/bin/sh").is_err());
    }
}
