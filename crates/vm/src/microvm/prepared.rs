//! What setting the backend up learns from the host, kept between processes: QEMU's version,
//! the cached vmlinux and initramfs, the TSC rate and the verdict of a KVM probe boot. Working
//! them out reads the kernel, guest-init and modules, runs `qemu --version` and watches the TSC
//! for 20 ms (55 ms of every cold `shoal run` on this machine, a probe boot more on KVM hosts);
//! they are reused while the files they came from are unchanged (path, size, mtime, ctime,
//! inode) and the host has not rebooted (`/proc/sys/kernel/random/boot_id`: the TSC rate and
//! KVM's state are facts of one boot).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Accel;

const FILE: &str = "host-facts.json";
/// Larger files are not facts of ours: ignored (and rebuilt).
const FILE_BYTES_MAX: u64 = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostFacts {
    pub stamp: String,
    pub qemu_version: String,
    pub kernel_release: String,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    pub tsc_khz: Option<u64>,
    /// The probe boot's verdict and why; None until one ran (configuration or the cheap checks
    /// of `/dev/kvm` decided without one).
    pub probed: Option<(Accel, String)>,
}

/// A digest of everything the facts depend on. A file that cannot be read in counts by its
/// name alone, so the facts are worked out again (and its error reported there).
pub fn stamp(files: &[&Path], qemu: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"shoal-host-facts-v1\0");
    h.update(fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().as_bytes());
    let qemu = resolve(qemu);
    for path in files.iter().copied().chain(std::iter::once(qemu.as_path())) {
        h.update(b"\0");
        h.update(path.as_os_str().as_encoded_bytes());
        if let Ok(m) = fs::metadata(path) {
            for n in
                [m.len(), m.ino(), m.mtime() as u64, m.mtime_nsec() as u64, m.ctime() as u64, m.ctime_nsec() as u64]
            {
                h.update(&n.to_le_bytes());
            }
        }
    }
    h.finalize().to_hex().to_string()
}

/// `qemu` as the process would find it: a bare name is looked up in PATH.
fn resolve(qemu: &Path) -> PathBuf {
    if qemu.components().count() > 1 {
        return qemu.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(qemu)).find(|p| p.is_file()))
        .unwrap_or_else(|| qemu.to_path_buf())
}

/// The facts kept under `cache_dir` if they are for `stamp` and their files are still there.
pub fn load(cache_dir: &Path, stamp: &str) -> Option<HostFacts> {
    let path = cache_dir.join(FILE);
    if fs::metadata(&path).ok()?.len() > FILE_BYTES_MAX {
        return None;
    }
    let facts: HostFacts = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
    (facts.stamp == stamp && facts.vmlinux.is_file() && facts.initramfs.is_file()).then_some(facts)
}

/// Keeps the facts for the next process; failing to is only a slower next start.
pub fn store(cache_dir: &Path, facts: &HostFacts) {
    let bytes = serde_json::to_vec_pretty(facts).expect("facts serialize");
    if let Err(e) = super::host::write_atomic(&cache_dir.join(FILE), &bytes) {
        tracing::debug!("not keeping the host's facts: {e}");
    }
}
