//! The guest kernel: finding the packaged one, turning its bzImage into an uncompressed
//! `vmlinux` (booted through its PVH entry, so nothing is decompressed at each boot), and the
//! modules the guest loads itself, in dependency order.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Modules guest-init needs, before their dependencies are added: the virtio-mmio transport of
/// QEMU's `microvm` machine, block devices for the disks, squashfs for the image root and
/// overlayfs for the container root above it.
pub const GUEST_MODULES: &[&str] = &["virtio_mmio", "virtio_blk", "squashfs", "overlay"];
/// Loaded only in a VM with a network device (`network: true`), after [`GUEST_MODULES`].
pub const GUEST_NET_MODULES: &[&str] = &["virtio_net"];

/// Largest bzImage or vmlinux read, in bytes.
const KERNEL_BYTES_MAX: u64 = 256 << 20;
/// LZ4 legacy frames decompress to at most 8 MiB each (lz4 -l, as the kernel's build uses).
const LZ4_LEGACY_BLOCK_BYTES: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// Why the guest kernel or its modules cannot be used; each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `SHOAL_GUEST_KERNEL` names no usable kernel.
    #[error(
        "SHOAL_GUEST_KERNEL={} needs to name a file called vmlinuz-<release> with its modules in {}",
        image.display(),
        modules_dir.display()
    )]
    BadOverride { image: PathBuf, modules_dir: PathBuf },
    /// No Debian cloud kernel with its modules in `/boot`.
    #[error(
        "no guest kernel: install Debian's linux-image-cloud-amd64 (scripts/setup.sh does), \
         or set SHOAL_GUEST_KERNEL to a vmlinuz-<release> whose modules are in /lib/modules/<release>"
    )]
    NotFound,
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {}/modules.dep: {source} (is the kernel's package complete?)", dir.display())]
    ModulesDep {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is {len} bytes, more than a kernel's {KERNEL_BYTES_MAX}", path.display())]
    TooLarge { path: PathBuf, len: u64 },
    #[error("module dependencies of `{0}` loop")]
    ModuleLoop(String),
    #[error("the guest kernel has no module `{0}` (neither loadable nor built in)")]
    ModuleMissing(String),
}

/// Why a kernel image yields no `vmlinux` ([`extract_vmlinux`]).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a bzImage (no `HdrS` boot header) and not an ELF vmlinux")]
    NotAKernel,
    #[error("bzImage header has no payload (boot protocol older than 2.08)")]
    NoPayload,
    #[error("bzImage payload {start}+{len} lies outside the file")]
    PayloadOutside { start: usize, len: usize },
    #[error(
        "the kernel payload is compressed with {0}; shoal reads LZ4 (Debian's kernels): \
         point SHOAL_GUEST_KERNEL at an uncompressed vmlinux instead"
    )]
    Compression(&'static str),
    #[error("LZ4 block of {0} bytes runs past the payload")]
    Lz4BlockPastPayload(usize),
    #[error("LZ4 block: {0}")]
    Lz4(#[from] lz4_flex::block::DecompressError),
    #[error("LZ4 stream decompresses past the stated {0} bytes")]
    Lz4TooLong(usize),
    #[error("LZ4 stream gave {got} bytes, the kernel header says {want}")]
    Lz4Length { got: usize, want: usize },
    #[error("the decompressed kernel is not an ELF file")]
    NotElf,
}

/// A kernel on this host that can boot the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// `vmlinuz-*` (bzImage) or an uncompressed ELF `vmlinux`.
    pub image: PathBuf,
    /// `uname -r` of that kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// `/lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

/// Finds the guest kernel: `SHOAL_GUEST_KERNEL` if set (a bzImage or vmlinux whose modules are
/// in `/lib/modules/<release>`), else the newest Debian cloud kernel in `/boot`.
pub fn find_kernel() -> Result<KernelPackage, KernelError> {
    if let Some(p) = std::env::var_os("SHOAL_GUEST_KERNEL") {
        let image = PathBuf::from(p);
        let name = image.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let release =
            name.strip_prefix("vmlinuz-").or_else(|| name.strip_prefix("vmlinux-")).unwrap_or(&name).to_string();
        let modules_dir = Path::new("/lib/modules").join(&release);
        if !image.is_file() || !modules_dir.is_dir() {
            return Err(KernelError::BadOverride { image, modules_dir });
        }
        return Ok(KernelPackage { image, release, modules_dir });
    }
    let mut found: Vec<(Vec<u64>, KernelPackage)> = Vec::new();
    for entry in fs::read_dir("/boot").map_err(|source| KernelError::Read { path: "/boot".into(), source })?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(release) = name.strip_prefix("vmlinuz-") else { continue };
        if !release.ends_with("-cloud-amd64") {
            continue;
        }
        let modules_dir = Path::new("/lib/modules").join(release);
        if !modules_dir.join("modules.dep").is_file() {
            continue;
        }
        let version: Vec<u64> = release.split(['.', '-']).map_while(|p| p.parse().ok()).collect();
        found.push((version, KernelPackage { image: entry.path(), release: release.to_string(), modules_dir }));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.pop().map(|(_, k)| k).ok_or(KernelError::NotFound)
}

/// The uncompressed ELF kernel inside `image`: the image itself if it is already ELF, else the
/// LZ4 payload of a bzImage, decompressed.
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, ImageError> {
    if image.starts_with(b"\x7fELF") {
        return Ok(image.to_vec());
    }
    // The x86 boot protocol header (Documentation/arch/x86/boot.rst).
    let u32_at = |off: usize| -> Option<u32> { Some(u32::from_le_bytes(image.get(off..off + 4)?.try_into().ok()?)) };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(ImageError::NotAKernel);
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let (payload_offset, payload_length) = match (u32_at(0x248), u32_at(0x24c)) {
        (Some(o), Some(l)) if l >= 8 => (o as usize, l as usize),
        _ => return Err(ImageError::NoPayload),
    };
    let start = pm_start + payload_offset;
    let payload =
        image.get(start..start + payload_length).ok_or(ImageError::PayloadOutside { start, len: payload_length })?;
    if !payload.starts_with(&LZ4_LEGACY_MAGIC) {
        let kind = match payload {
            [0x1f, 0x8b, ..] => "gzip",
            [0xfd, b'7', b'z', b'X', ..] => "xz",
            [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
            _ => "an unknown format",
        };
        return Err(ImageError::Compression(kind));
    }
    // The payload ends with the decompressed size, little-endian.
    let (stream, size) = payload.split_at(payload.len() - 4);
    let want = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
    let out = lz4_legacy_decompress(stream, want)?;
    if !out.starts_with(b"\x7fELF") {
        return Err(ImageError::NotElf);
    }
    Ok(out)
}

/// LZ4 legacy format: the magic, then blocks of (u32 LE compressed size, data), each at most
/// 8 MiB decompressed; a repeated magic starts a new stream.
fn lz4_legacy_decompress(mut input: &[u8], want: usize) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::with_capacity(want);
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK_BYTES];
    while input.len() >= 4 {
        let head: [u8; 4] = input[..4].try_into().expect("4 bytes");
        input = &input[4..];
        if head == LZ4_LEGACY_MAGIC {
            continue;
        }
        let len = u32::from_le_bytes(head) as usize;
        let Some(data) = input.get(..len) else {
            return Err(ImageError::Lz4BlockPastPayload(len));
        };
        input = &input[len..];
        let n = lz4_flex::block::decompress_into(data, &mut block)?;
        out.extend_from_slice(&block[..n]);
        if out.len() > want {
            return Err(ImageError::Lz4TooLong(want));
        }
    }
    if out.len() != want {
        return Err(ImageError::Lz4Length { got: out.len(), want });
    }
    Ok(out)
}

/// Reads a kernel image, bounded.
pub fn read_kernel_image(path: &Path) -> Result<Vec<u8>, KernelError> {
    let read = |source| KernelError::Read { path: path.to_path_buf(), source };
    let len = fs::metadata(path).map_err(read)?.len();
    if len > KERNEL_BYTES_MAX {
        return Err(KernelError::TooLarge { path: path.to_path_buf(), len });
    }
    fs::read(path).map_err(read)
}

/// The `.ko` files to load for `wanted`, each after its dependencies, from `modules.dep`.
/// Modules built into the kernel (listed in `modules.builtin`) are skipped.
pub fn module_load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, KernelError> {
    let dep_text = fs::read_to_string(modules_dir.join("modules.dep"))
        .map_err(|source| KernelError::ModulesDep { dir: modules_dir.to_path_buf(), source })?;
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep_text.lines() {
        let Some((module, rest)) = line.split_once(':') else { continue };
        deps.insert(name_of(module), (module.to_string(), rest.split_whitespace().map(name_of).collect()));
    }
    let builtin: Vec<String> = builtin.lines().map(name_of).collect();
    let mut order = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        builtin: &[String],
        seen: &mut std::collections::BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), KernelError> {
        if depth > 64 {
            return Err(KernelError::ModuleLoop(name.to_string()));
        }
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        match deps.get(name) {
            Some((path, ds)) => {
                for d in ds {
                    visit(d, deps, builtin, seen, order, depth + 1)?;
                }
                order.push(path.clone());
                Ok(())
            }
            None if builtin.iter().any(|b| b == name) => Ok(()),
            None => Err(KernelError::ModuleMissing(name.to_string())),
        }
    }
    for w in wanted {
        visit(w, &deps, &builtin, &mut seen, &mut order, 0)?;
    }
    Ok(order.into_iter().map(|p| modules_dir.join(p)).collect())
}

const MODULE_SIG_MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len, 3 bytes pad, be32 sig_len.
const MODULE_SIG_INFO_BYTES: usize = 12;

/// A module without its appended signature. The guest loads modules from its own initramfs,
/// which the host built and hashed; checking an RSA signature per module costs tens of ms under
/// TCG. The guest kernel does not enforce signatures (no `module.sig_enforce`, no lockdown), so
/// it loads them and notes the taint.
pub fn strip_module_signature(module: &[u8]) -> &[u8] {
    let Some(body) = module.strip_suffix(MODULE_SIG_MAGIC) else { return module };
    let Some(info_at) = body.len().checked_sub(MODULE_SIG_INFO_BYTES) else { return module };
    let info = &body[info_at..];
    let sig_len = u32::from_be_bytes(info[8..12].try_into().expect("4 bytes")) as usize;
    let extra = sig_len + usize::from(info[3]) + usize::from(info[4]);
    match info_at.checked_sub(extra) {
        Some(end) if end > 0 => &module[..end],
        _ => module,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_cut_and_an_unsigned_module_kept() {
        let mut signed = b"\x7fELF module body".to_vec();
        let sig = vec![0xaa; 300];
        signed.extend_from_slice(&sig);
        signed.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        signed.extend_from_slice(MODULE_SIG_MAGIC);
        assert_eq!(strip_module_signature(&signed), b"\x7fELF module body");
        assert_eq!(strip_module_signature(b"\x7fELF plain"), b"\x7fELF plain");
        // A bogus length leaves the module alone rather than cutting into it.
        let mut bogus = b"short".to_vec();
        bogus.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        bogus.extend_from_slice(MODULE_SIG_MAGIC);
        assert_eq!(strip_module_signature(&bogus), &bogus[..]);
    }
}
