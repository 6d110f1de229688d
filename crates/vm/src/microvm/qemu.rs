//! QEMU for one VM: its command line (machine, kernel command line, the three disks, the
//! optional user-mode network), starting it with readers for its console and stderr, and
//! waiting for it with a deadline. QEMU dies with the thread that started it
//! (`PR_SET_PDEATHSIG`) and with the [`Vm`] that holds it.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use shoal_sandbox::sys;

use super::warm::WarmKey;
use super::{Accel, MicrovmBackend, disk};
use crate::RunError;

/// Kept of QEMU's console and stderr, for error messages.
const CONSOLE_TAIL_BYTES: usize = 16 << 10;
/// CONFIG_HZ of Debian's cloud kernel: jiffies per second, for `lpj=`.
const GUEST_HZ: u64 = 250;

impl MicrovmBackend {
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

    /// QEMU for one VM: the three disks, memory and cores; `warm` makes guest-init wait for a
    /// go-ahead on its console before it reads the request.
    pub(super) fn qemu_command(&self, disks: &VmDisks, key: &WarmKey, warm: bool) -> Result<Command, RunError> {
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
        // PCI devices passed by VFIO need a PCI bus: microvm's PCIe host bridge (GPEX), off
        // otherwise (it costs boot time).
        let machine = if key.pci.is_empty() { "microvm" } else { "microvm,pcie=on" };
        for d in &key.pci {
            cmd.arg("-device").arg(format!("vfio-pci,host={}", d.address));
        }
        cmd.args(["-M", machine, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
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
        // QEMU dies with the thread that started it: the job's thread, or the pool's.
        crate::sys::kill_with_parent(&mut cmd);
        Ok(cmd)
    }
}

/// The three disks of a VM.
#[derive(Debug, Clone)]
pub(super) struct VmDisks {
    pub(super) rootfs: PathBuf,
    pub(super) request: PathBuf,
    pub(super) reply: PathBuf,
}

/// A running QEMU with its console and stderr readers. Dropping it kills and reaps QEMU.
pub(super) struct Vm {
    pub(super) child: Option<Child>,
    /// The guest's serial input: a warm VM's go-ahead.
    pub(super) stdin: Option<std::process::ChildStdin>,
    pub(super) console: Option<thread::JoinHandle<Vec<u8>>>,
    pub(super) qemu_err: Option<thread::JoinHandle<Vec<u8>>>,
    pub(super) started: Instant,
}

impl Vm {
    pub(super) fn kill(&mut self) {
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

/// Starts QEMU with readers for its console (watching for [`disk::WARM_READY_MARKER`] when
/// `ready` is given) and its stderr.
pub(super) fn spawn_vm(cmd: &mut Command, ready: Option<Arc<std::sync::atomic::AtomicBool>>) -> io::Result<Vm> {
    tracing::debug!(?cmd, warm = ready.is_some(), "starting QEMU");
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let console = tail_reader_watching(child.stdout.take(), ready);
    let qemu_err = tail_reader(child.stderr.take());
    let stdin = child.stdin.take();
    Ok(Vm { child: Some(child), stdin, console: Some(console), qemu_err: Some(qemu_err), started })
}

/// Waits until the child exits (Some) or the deadline passes (None), without busy-waiting.
pub(super) fn wait_deadline(child: &mut Child, deadline: Instant) -> io::Result<Option<std::process::ExitStatus>> {
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
