//! What the backend learns from the host once (and keeps between processes, [`super::prepared`]):
//! QEMU's version, the guest kernel as an uncompressed `vmlinux`, the initramfs, the TSC rate,
//! and the accelerator (KVM where it works, probed by a bounded boot; TCG otherwise); and
//! where guest-init is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::kernel::{ImageError, KernelError};
use super::qemu::wait_deadline;
use super::{Accel, initramfs, kernel, prepared};

/// How long the probe boot for KVM may take.
const KVM_PROBE_MS: u64 = 10_000;
/// How long the host's TSC is watched to learn its rate.
const TSC_MEASURE_MS: u64 = 20;

/// Why the microVM backend cannot be set up on this host; each names the thing and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    GuestInit(#[from] GuestInitError),
    /// The kernel image holds no `vmlinux` shoal can boot.
    #[error("{}: {source}", image.display())]
    Vmlinux {
        image: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error(
        "cannot run {} ({source}): install QEMU (scripts/setup.sh installs qemu-system-x86 from bookworm-backports)",
        qemu.display()
    )]
    Qemu {
        qemu: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file of the cache (vmlinux, initramfs) or one it is made from.
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the initramfs: {0}")]
    Initramfs(#[source] io::Error),
}

/// Why there is no guest-init to boot ([`find_guest_init`]).
#[derive(Debug, thiserror::Error)]
pub enum GuestInitError {
    #[error("guest-init is not built: run scripts/build-guest-init.sh (or scripts/setup.sh), or set SHOAL_GUEST_INIT")]
    NotBuilt,
    #[error("no static guest-init ({}: {why}); run scripts/build-guest-init.sh or set SHOAL_GUEST_INIT", path.display())]
    NotStatic { path: PathBuf, why: ElfError },
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why a program cannot be guest-init, which runs with no loader and no libraries.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not a 64-bit little-endian ELF program")]
    NotElf64,
    #[error("truncated ELF header")]
    Truncated,
    #[error("dynamically linked (has an interpreter): build it static with scripts/build-guest-init.sh")]
    Dynamic,
}

/// QEMU's version, the vmlinux and initramfs (built here if their cache lacks them) and the
/// TSC rate: what [`prepared`] keeps between processes (the accelerator is probed apart).
pub(super) fn prepare(
    kernel: &kernel::KernelPackage,
    guest_init_path: &Path,
    qemu: &Path,
    cache_dir: &Path,
    stamp: String,
) -> Result<prepared::HostFacts, SetupError> {
    let qemu_version = qemu_version(qemu)?;
    let image = kernel::read_kernel_image(&kernel.image)?;
    let image_hash = blake3::hash(&image).to_hex().to_string();
    let vmlinux = cache_dir.join("kernel").join(&image_hash[..32]).join("vmlinux");
    if !vmlinux.is_file() {
        let started = Instant::now();
        let elf = kernel::extract_vmlinux(&image)
            .map_err(|source| SetupError::Vmlinux { image: kernel.image.clone(), source })?;
        write_atomic(&vmlinux, &elf)?;
        tracing::info!(kernel = %kernel.image.display(), ms = started.elapsed().as_millis() as u64, "extracted vmlinux");
    }
    drop(image);
    let guest_init = fs::read(guest_init_path)
        .map_err(|source| GuestInitError::Read { path: guest_init_path.to_path_buf(), source })?;
    check_static(&guest_init).map_err(|why| GuestInitError::NotStatic { path: guest_init_path.to_path_buf(), why })?;
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
            let data = fs::read(path).map_err(|source| SetupError::File {
                what: "reading module",
                path: path.clone(),
                source,
            })?;
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
        let cpio = initramfs::build(&guest_init, &modules, &net_modules).map_err(SetupError::Initramfs)?;
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
pub(super) fn accel_from_env() -> Option<(Accel, String)> {
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
pub(super) fn kvm_ruled_out() -> Option<(Accel, String)> {
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
pub(super) fn probe_boot(qemu: &Path, vmlinux: &Path, bios: Option<&Path>) -> (Accel, String) {
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
        let read = crate::sys::tsc;
        let (t0, c0) = (Instant::now(), read());
        thread::sleep(Duration::from_millis(TSC_MEASURE_MS));
        let (c1, elapsed) = (read(), t0.elapsed());
        let khz = (c1.wrapping_sub(c0) as f64 / elapsed.as_secs_f64() / 1000.0) as u64;
        Some((khz + 500) / 1000 * 1000).filter(|k| *k > 100_000)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SetupError> {
    let file = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SetupError::File { what, path, source }
    };
    let dir = path.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir).map_err(file("creating", dir))?;
    let tmp =
        dir.join(format!(".tmp-{}-{}", std::process::id(), path.file_name().unwrap_or_default().to_string_lossy()));
    fs::write(&tmp, bytes).map_err(file("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(file("renaming into place", &tmp))
}

fn qemu_version(qemu: &Path) -> Result<String, SetupError> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SetupError::Qemu { qemu: qemu.to_path_buf(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    Ok(first.strip_prefix("QEMU emulator version ").unwrap_or(first).trim().to_string())
}

/// guest-init: `SHOAL_GUEST_INIT`, else where `scripts/build-guest-init.sh` puts it in this
/// tree (found from the running program's path), else beside the running program, else
/// `/usr/local/lib/shoal/guest-init`; the first that is a static program.
pub fn find_guest_init() -> Result<PathBuf, GuestInitError> {
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
    let mut refused = None;
    for c in candidates.into_iter().filter(|p| p.is_file()) {
        let checked = elf_head(&c)
            .and_then(|b| check_static(&b).map_err(|why| GuestInitError::NotStatic { path: c.clone(), why }));
        match checked {
            Ok(()) => return Ok(c),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    Err(refused.unwrap_or(GuestInitError::NotBuilt))
}

/// The start of an ELF file, enough for its program headers (which follow the 64-byte header):
/// looking for a guest-init must not read whole programs, at every `shoal run`.
fn elf_head(path: &Path) -> Result<Vec<u8>, GuestInitError> {
    const HEAD_BYTES: u64 = 64 << 10;
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(HEAD_BYTES).read_to_end(&mut head))
        .map_err(|source| GuestInitError::Read { path: path.to_path_buf(), source })?;
    Ok(head)
}

/// Refuses a dynamically linked guest-init: there is no loader in the initramfs.
fn check_static(elf: &[u8]) -> Result<(), ElfError> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4")));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8")));
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err(ElfError::NotElf64);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return Err(ElfError::Truncated);
    };
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        if u32_at(at) == Some(3) {
            return Err(ElfError::Dynamic);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_is_refused_as_guest_init() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(check_static(&me), Err(ElfError::Dynamic));
        assert!(ElfError::Dynamic.to_string().contains("dynamically linked"));
        assert!(check_static(b"#!/bin/sh").is_err());
    }
}
