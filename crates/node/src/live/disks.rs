//! Block devices and their labels, read from the superblocks by this code (no blkid in the image,
//! and no guessing by a library that might write): FAT12/16/32 (the BPB's volume label), ext2/3/4
//! (the superblock's `s_volume_name`), ISO 9660 (the primary volume descriptor's volume id).
//!
//! The live system mounts and writes only devices carrying one of our labels: [`CONFIG_LABEL`]
//! (vfat, the stick's settings), [`STORE_LABEL`] (ext4, the node's store), [`CIDATA_LABEL`]
//! (cloud-init's NoCloud seed, read-only). Every other disk is left alone.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The FAT partition holding `shoal.toml` and `node.key`.
pub const CONFIG_LABEL: &str = "SHOAL";
/// The ext4 partition holding the node's store (`shoal live prepare-disk` makes it).
pub const STORE_LABEL: &str = "SHOAL-STORE";
/// cloud-init's NoCloud seed volume (vfat or ISO 9660; either case).
pub const CIDATA_LABEL: &str = "cidata";

/// Bytes read from the start of a device to find every signature below (the ISO 9660 volume
/// descriptor at 0x8000 is the farthest; btrfs' superblock at 64 KiB is past it and only named).
const PROBE_BYTES: usize = 0x8800;

/// A file system this code can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Fat,
    Ext,
    Iso9660,
}

impl FsKind {
    /// The type `mount -t` takes.
    pub fn mount_type(self) -> &'static str {
        match self {
            FsKind::Fat => "vfat",
            FsKind::Ext => "ext4",
            FsKind::Iso9660 => "iso9660",
        }
    }
}

/// A file system's kind and label (trailing spaces and NULs removed; empty when it has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub fs: FsKind,
    pub text: String,
}

/// Reads the label of the file system at the start of `dev` (a device or an image file); None
/// when it is none of FAT, ext2/3/4 or ISO 9660.
pub fn read_label(dev: &mut (impl Read + Seek)) -> std::io::Result<Option<Label>> {
    let head = read_head(dev)?;
    Ok(label_of(&head))
}

fn read_head(dev: &mut (impl Read + Seek)) -> std::io::Result<Vec<u8>> {
    dev.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(PROBE_BYTES);
    dev.take(PROBE_BYTES as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// The label from the first [`PROBE_BYTES`] of a device.
fn label_of(head: &[u8]) -> Option<Label> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim_end_matches([' ', '\0']).to_string();
    // ISO 9660: a primary volume descriptor (type 1, "CD001") at 32 KiB; volume id at +40, 32 bytes.
    if head.len() >= 0x8048 && head[0x8000] == 1 && &head[0x8001..0x8006] == b"CD001" {
        return Some(Label { fs: FsKind::Iso9660, text: text(&head[0x8028..0x8048]) });
    }
    // ext2/3/4: the superblock at 1024, magic 0xEF53 at +0x38, s_volume_name at +0x78 (16 bytes).
    if head.len() >= 1024 + 0x88 && head[1024 + 0x38..1024 + 0x3a] == [0x53, 0xef] {
        return Some(Label { fs: FsKind::Ext, text: text(&head[1024 + 0x78..1024 + 0x88]) });
    }
    fat_label(head).map(|t| Label { fs: FsKind::Fat, text: t })
}

/// A FAT boot sector's volume label. FAT12/16 keep the extended BPB at 0x24 (signature 0x29 at
/// 0x26, label at 0x2B), FAT32 at 0x40 (0x42, 0x47); a FAT32 BPB has 0 sectors per FAT at 0x16.
fn fat_label(head: &[u8]) -> Option<String> {
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([head[11], head[12]]);
    let jump = head[0] == 0xeb || head[0] == 0xe9;
    if !jump || !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    let fat16_sectors = u16::from_le_bytes([head[0x16], head[0x17]]);
    let (sig, label, fs_type) = if fat16_sectors == 0 { (0x42, 0x47, 0x52) } else { (0x26, 0x2b, 0x36) };
    if !head[fs_type..fs_type + 8].starts_with(b"FAT") {
        return None;
    }
    let text = if head[sig] == 0x29 {
        String::from_utf8_lossy(&head[label..label + 11]).trim_end_matches([' ', '\0']).to_string()
    } else {
        String::new()
    };
    // mkfs.vfat and Windows write "NO NAME" for a volume without a label.
    Some(if text == "NO NAME" { String::new() } else { text })
}

/// Whether a label is one of ours, and which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Config,
    Store,
    Cidata,
}

impl Label {
    /// The role this label gives its device, if any: the name and the file system must both match
    /// (a FAT volume called SHOAL-STORE is nobody's store).
    pub fn role(&self) -> Option<Role> {
        match self.fs {
            FsKind::Fat if self.text.eq_ignore_ascii_case(CONFIG_LABEL) => Some(Role::Config),
            FsKind::Ext if self.text == STORE_LABEL => Some(Role::Store),
            FsKind::Fat | FsKind::Iso9660 if self.text.eq_ignore_ascii_case(CIDATA_LABEL) => Some(Role::Cidata),
            _ => None,
        }
    }
}

/// What is on a device already, when anything is: `prepare-disk` refuses it without `--wipe`.
pub fn signature(dev: &mut (impl Read + Seek)) -> std::io::Result<Option<String>> {
    let head = read_head(dev)?;
    if head.len() >= 520 && &head[512..520] == b"EFI PART" {
        return Ok(Some("a GPT partition table".into()));
    }
    if let Some(l) = label_of(&head) {
        let named = if l.text.is_empty() { String::new() } else { format!(" labelled {}", l.text) };
        return Ok(Some(format!("a {} file system{named}", l.fs.mount_type())));
    }
    if head.len() >= 512 && head[510..512] == [0x55, 0xaa] {
        return Ok(Some("an MBR (a DOS partition table or a boot sector)".into()));
    }
    let magic = |at: usize, m: &[u8]| head.len() >= at + m.len() && &head[at..at + m.len()] == m;
    for (at, m, what) in [
        (0, &b"LUKS\xba\xbe"[..], "a LUKS encrypted volume"),
        (0, b"XFSB", "an XFS file system"),
        (3, b"NTFS    ", "an NTFS file system"),
        (4086, b"SWAPSPACE2", "a swap area"),
        (0x10040, b"_BHRfS_M", "a btrfs file system"),
    ] {
        if magic(at, m) {
            return Ok(Some(what.into()));
        }
    }
    Ok(None)
}

/// A block device as `/sys/class/block` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    /// `sda1`.
    pub name: String,
    /// `/dev/sda1` (under the live system's root).
    pub dev: PathBuf,
    /// The whole disk it is on (`sda`), or its own name for a whole disk.
    pub disk: String,
    pub size_bytes: u64,
    /// None when unreadable or no file system this code knows.
    pub label: Option<Label>,
}

/// Every block device of `/sys/class/block` under `root` with a size, and its label, in name
/// order. A device that cannot be opened (an empty card reader) is listed without a label.
pub fn scan(root: &Path) -> Vec<BlockDevice> {
    let class = root.join("sys/class/block");
    let Ok(entries) = std::fs::read_dir(&class) else { return Vec::new() };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let sys = class.join(&name);
            let sectors: u64 = std::fs::read_to_string(sys.join("size")).ok()?.trim().parse().ok()?;
            if sectors == 0 {
                return None;
            }
            // A partition's sysfs directory sits inside its disk's.
            let disk = if sys.join("partition").exists() {
                std::fs::canonicalize(&sys)
                    .ok()
                    .and_then(|p| p.parent()?.file_name()?.to_str().map(str::to_string))
                    .unwrap_or_else(|| name.clone())
            } else {
                name.clone()
            };
            let dev = root.join("dev").join(&name);
            let label = File::open(&dev).ok().and_then(|mut f| read_label(&mut f).ok().flatten());
            // `size` counts 512-byte sectors whatever the device's own sector size.
            Some(BlockDevice { name, dev, disk, size_bytes: sectors * 512, label })
        })
        .collect()
}

/// The first device with `role`'s label, in name order.
pub fn find(devices: &[BlockDevice], role: Role) -> Option<&BlockDevice> {
    devices.iter().find(|d| d.label.as_ref().and_then(Label::role) == Some(role))
}

/// Where the store partition starts, in bytes: 1 MiB, as every partitioning tool aligns it.
pub const STORE_PARTITION_OFFSET_BYTES: u64 = 1 << 20;
/// Smallest disk `prepare-disk` accepts, in bytes: a store smaller than this fills with one image.
pub const STORE_DISK_BYTES_MIN: u64 = 64 << 20;
/// Bytes zeroed at each end of a disk before it is partitioned: the MBR and a GPT with its
/// partition entries at the start, the backup GPT at the end (so no tool finds the old table).
const WIPE_BYTES: u64 = 1 << 20;

/// What `shoal live prepare-disk` asks before writing.
pub struct PrepareDisk<'a> {
    /// The live system's root (`/`; a test directory in tests): its `sys/`, `dev/`, `proc/`.
    pub root: &'a Path,
    /// The whole disk (or an image file) to make a store of.
    pub device: &'a Path,
    /// Write over a partition table or file system found on it.
    pub wipe: bool,
}

/// Makes `device` one ext4 partition labelled [`STORE_LABEL`] (an MBR written here, the file
/// system by e2fsprogs' `mke2fs` at the partition's offset, so the kernel need not have re-read
/// the table first). Refuses a partition, a mounted disk, the disk the live system booted from
/// (the one holding the [`CONFIG_LABEL`] partition), and, without `wipe`, a disk with anything on
/// it. `confirm` is asked last, with the device's description, and must say yes.
pub fn prepare_store_disk(req: &PrepareDisk<'_>, confirm: impl FnOnce(&str) -> bool) -> anyhow::Result<()> {
    use anyhow::{Context, bail};
    use std::io::Write;

    let device = req.device;
    let shown = device.display();
    let name = device.file_name().and_then(|n| n.to_str()).context("give a device such as /dev/sdb")?;
    let devices = scan(req.root);
    if let Some(d) = devices.iter().find(|d| d.name == name)
        && d.disk != d.name
    {
        bail!(
            "{shown} is a partition of {}; give the whole disk (/dev/{}): it becomes one store partition",
            d.disk,
            d.disk
        );
    }
    if let Some(config) = find(&devices, Role::Config)
        && config.disk == name
    {
        bail!("{shown} is the disk this live system booted from (it holds the SHOAL partition); give another disk");
    }
    let mounts = std::fs::read_to_string(req.root.join("proc/mounts")).unwrap_or_default();
    if let Some(line) = mounts.lines().find(|l| {
        l.split_whitespace()
            .next()
            .and_then(|src| src.strip_prefix("/dev/"))
            .is_some_and(|src| src == name || devices.iter().any(|d| d.name == src && d.disk == name))
    }) {
        bail!("{shown} is in use (mounted: `{line}`); unmount it first");
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .with_context(|| format!("cannot open {shown} for writing"))?;
    let size_bytes = file.seek(SeekFrom::End(0))?;
    if size_bytes < STORE_DISK_BYTES_MIN {
        bail!("{shown} is {size_bytes} bytes; a store needs at least {} MiB", STORE_DISK_BYTES_MIN >> 20);
    }
    let found = signature(&mut file)?;
    if let Some(what) = &found
        && !req.wipe
    {
        bail!("{shown} holds {what}; pass --wipe to erase it (everything on {shown} is lost)");
    }
    let description = format!(
        "{shown} ({} MiB{}): everything on it will be erased",
        size_bytes >> 20,
        found.map(|w| format!(", holding {w}")).unwrap_or_default()
    );
    if !confirm(&description) {
        bail!("not confirmed; {shown} is untouched");
    }

    let zeros = vec![0u8; WIPE_BYTES as usize];
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&zeros)?;
    file.seek(SeekFrom::Start(size_bytes - WIPE_BYTES))?;
    file.write_all(&zeros)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&mbr(size_bytes, rand::random()))?;
    file.sync_all()?;
    drop(file);

    let fs_kib = (size_bytes - STORE_PARTITION_OFFSET_BYTES) / 1024;
    let out = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", STORE_LABEL])
        .arg("-E")
        .arg(format!("offset={STORE_PARTITION_OFFSET_BYTES}"))
        .arg(device)
        .arg(format!("{fs_kib}k"))
        .output()
        .context("cannot run mke2fs (e2fsprogs); the live image must carry it")?;
    if !out.status.success() {
        bail!("mke2fs on {shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    tracing::info!("prepare-disk: {shown} is one ext4 partition labelled {STORE_LABEL} ({} MiB)", fs_kib >> 10);
    Ok(())
}

/// An MBR with one Linux partition from [`STORE_PARTITION_OFFSET_BYTES`] to the end of a disk of
/// `size_bytes` (512-byte sectors; capped at the 2 TiB an MBR can address).
fn mbr(size_bytes: u64, disk_id: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[440..444].copy_from_slice(&disk_id.to_le_bytes());
    let start = STORE_PARTITION_OFFSET_BYTES / 512;
    let sectors = u32::try_from(size_bytes / 512 - start).unwrap_or(u32::MAX);
    let e = &mut m[446..462];
    // Not bootable; CHS fields set to "past 1024 cylinders", as tools do for LBA-only entries.
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = 0x83;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&u32::try_from(start).expect("1 MiB in sectors").to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs a host tool that makes a test image. A missing tool skips the test with a message,
    /// unless `SHOAL_REQUIRE_VM` or `CI` is set (as the image build needs these tools there).
    fn tool(args: &[&str]) -> bool {
        match Command::new(args[0]).args(&args[1..]).output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => panic!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) if std::env::var_os("SHOAL_REQUIRE_VM").is_some() || std::env::var_os("CI").is_some() => {
                panic!("{} is needed for this test: {e} (apt-get install dosfstools e2fsprogs xorriso)", args[0])
            }
            Err(e) => {
                eprintln!("skipped: {} is missing ({e}); apt-get install dosfstools e2fsprogs xorriso", args[0]);
                false
            }
        }
    }

    fn label_of_file(path: &Path) -> Option<Label> {
        read_label(&mut File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn fat12_16_32_labels_are_read_from_the_bpb() {
        let dir = tempfile::tempdir().unwrap();
        for (fat, kib) in [("12", "4096"), ("16", "32768"), ("32", "65536")] {
            let img = dir.path().join(format!("fat{fat}.img"));
            let img_s = img.to_str().unwrap();
            if !tool(&["mkfs.vfat", "-F", fat, "-C", "-n", "SHOAL", img_s, kib]) {
                return;
            }
            let label = label_of_file(&img).unwrap();
            assert_eq!(label, Label { fs: FsKind::Fat, text: "SHOAL".into() }, "FAT{fat}");
            assert_eq!(label.role(), Some(Role::Config));
        }
        let img = dir.path().join("nolabel.img");
        if tool(&["mkfs.vfat", "-C", img.to_str().unwrap(), "4096"]) {
            assert_eq!(label_of_file(&img), Some(Label { fs: FsKind::Fat, text: String::new() }));
        }
    }

    #[test]
    fn ext4_and_iso9660_labels() {
        let dir = tempfile::tempdir().unwrap();
        let ext = dir.path().join("store.img");
        std::fs::File::create(&ext).unwrap().set_len(8 << 20).unwrap();
        if !tool(&["mkfs.ext4", "-q", "-F", "-L", "SHOAL-STORE", ext.to_str().unwrap()]) {
            return;
        }
        let label = label_of_file(&ext).unwrap();
        assert_eq!(label, Label { fs: FsKind::Ext, text: "SHOAL-STORE".into() });
        assert_eq!(label.role(), Some(Role::Store));

        let seed = dir.path().join("seed");
        std::fs::create_dir(&seed).unwrap();
        std::fs::write(seed.join("user-data"), "#shoal\n").unwrap();
        let iso = dir.path().join("seed.iso");
        let (iso_s, seed_s) = (iso.to_str().unwrap(), seed.to_str().unwrap());
        if !tool(&["xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o", iso_s, seed_s]) {
            return;
        }
        let label = label_of_file(&iso).unwrap();
        assert_eq!(label, Label { fs: FsKind::Iso9660, text: "cidata".into() });
        assert_eq!(label.role(), Some(Role::Cidata));
    }

    #[test]
    fn other_labels_and_blank_disks_have_no_role() {
        assert_eq!(Label { fs: FsKind::Fat, text: "SHOAL-STORE".into() }.role(), None);
        assert_eq!(Label { fs: FsKind::Ext, text: "SHOAL".into() }.role(), None);
        assert_eq!(Label { fs: FsKind::Ext, text: "shoal-store".into() }.role(), None);
        assert_eq!(Label { fs: FsKind::Fat, text: "CIDATA".into() }.role(), Some(Role::Cidata));
        let mut blank = std::io::Cursor::new(vec![0u8; 1 << 20]);
        assert_eq!(read_label(&mut blank).unwrap(), None);
        assert_eq!(signature(&mut blank).unwrap(), None);
        // Shorter than a superblock: nothing, and no panic.
        assert_eq!(read_label(&mut std::io::Cursor::new(vec![0x55u8; 700])).unwrap(), None);
    }

    #[test]
    fn signatures_name_what_is_there() {
        let mut gpt = vec![0u8; 1 << 16];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(signature(&mut std::io::Cursor::new(gpt)).unwrap().as_deref(), Some("a GPT partition table"));
        let mut mbr = vec![0u8; 1 << 16];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr[446 + 4] = 0x83;
        assert_eq!(
            signature(&mut std::io::Cursor::new(mbr)).unwrap().as_deref(),
            Some("an MBR (a DOS partition table or a boot sector)")
        );
        let mut swap = vec![0u8; 1 << 16];
        swap[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(signature(&mut std::io::Cursor::new(swap)).unwrap().as_deref(), Some("a swap area"));
    }

    #[test]
    fn scan_reads_sysfs_and_dev_under_a_root() {
        let root = tempfile::tempdir().unwrap();
        let class = root.path().join("sys/class/block");
        let disk = root.path().join("sys/devices/pci0/block/sdb");
        std::fs::create_dir_all(disk.join("sdb1")).unwrap();
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(disk.join("size"), "2048\n").unwrap();
        std::fs::write(disk.join("sdb1/size"), "1024\n").unwrap();
        std::fs::write(disk.join("sdb1/partition"), "1\n").unwrap();
        std::os::unix::fs::symlink(&disk, class.join("sdb")).unwrap();
        std::os::unix::fs::symlink(disk.join("sdb1"), class.join("sdb1")).unwrap();
        let part = root.path().join("dev/sdb1");
        if !tool(&["mkfs.vfat", "-C", "-n", "SHOAL", part.to_str().unwrap(), "4096"]) {
            return;
        }
        let devices = scan(root.path());
        assert_eq!(devices.len(), 2, "{devices:?}");
        assert_eq!(
            (devices[0].name.as_str(), devices[0].disk.as_str(), devices[0].label.is_none()),
            ("sdb", "sdb", true)
        );
        let config = find(&devices, Role::Config).unwrap();
        assert_eq!((config.name.as_str(), config.disk.as_str(), config.size_bytes), ("sdb1", "sdb", 1024 * 512));
        assert_eq!(find(&devices, Role::Store), None);
    }

    #[test]
    fn prepare_disk_refuses_a_used_disk_without_wipe_and_makes_a_store() {
        let root = tempfile::tempdir().unwrap();
        let disk = root.path().join("disk.img");
        std::fs::File::create(&disk).unwrap().set_len(STORE_DISK_BYTES_MIN).unwrap();
        let req = |wipe| PrepareDisk { root: root.path(), device: &disk, wipe };
        // A blank disk: asked, and refused when not confirmed, untouched.
        let mut asked = String::new();
        let e = prepare_store_disk(&req(false), |d| {
            asked = d.to_string();
            false
        })
        .unwrap_err();
        assert!(asked.ends_with("(64 MiB): everything on it will be erased"), "{asked}");
        assert!(e.to_string().starts_with("not confirmed;"), "{e}");
        assert_eq!(signature(&mut File::open(&disk).unwrap()).unwrap(), None);
        // Confirmed: one partition at 1 MiB holding ext4 labelled SHOAL-STORE.
        if std::process::Command::new("mke2fs").arg("-V").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "mke2fs (e2fsprogs) is needed");
            eprintln!("skipped: mke2fs is missing");
            return;
        }
        prepare_store_disk(&req(false), |_| true).unwrap();
        let bytes = std::fs::read(&disk).unwrap();
        assert_eq!(bytes[446 + 4], 0x83);
        assert_eq!(bytes[446 + 8..446 + 12], 2048u32.to_le_bytes());
        let part = &bytes[STORE_PARTITION_OFFSET_BYTES as usize..];
        let label = read_label(&mut std::io::Cursor::new(part)).unwrap().unwrap();
        assert_eq!(label.role(), Some(Role::Store), "{label:?}");
        // Now it has a partition table: refused without --wipe, accepted with it.
        let e = prepare_store_disk(&req(false), |_| panic!("asked before refusing")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} holds an MBR (a DOS partition table or a boot sector); pass --wipe to erase it (everything on {} is lost)",
                disk.display(),
                disk.display()
            )
        );
        let mut asked = String::new();
        prepare_store_disk(&req(true), |d| {
            asked = d.to_string();
            true
        })
        .unwrap();
        assert!(asked.contains("holding an MBR"), "{asked}");
    }

    #[test]
    fn prepare_disk_refuses_the_boot_disk_a_partition_and_a_mounted_disk() {
        let root = tempfile::tempdir().unwrap();
        let class = root.path().join("sys/class/block");
        let sdb = root.path().join("sys/devices/pci0/block/sdb");
        std::fs::create_dir_all(sdb.join("sdb3")).unwrap();
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(sdb.join("size"), "131072\n").unwrap();
        std::fs::write(sdb.join("sdb3/size"), "8192\n").unwrap();
        std::fs::write(sdb.join("sdb3/partition"), "3\n").unwrap();
        std::os::unix::fs::symlink(&sdb, class.join("sdb")).unwrap();
        std::os::unix::fs::symlink(sdb.join("sdb3"), class.join("sdb3")).unwrap();
        std::fs::File::create(root.path().join("dev/sdb")).unwrap().set_len(64 << 20).unwrap();
        let part = root.path().join("dev/sdb3");
        if !tool(&["mkfs.vfat", "-C", "-n", "SHOAL", part.to_str().unwrap(), "4096"]) {
            return;
        }
        let never = |_: &str| -> bool { panic!("asked before refusing") };
        let try_prepare = |dev: &Path, wipe| {
            prepare_store_disk(&PrepareDisk { root: root.path(), device: dev, wipe }, never).unwrap_err().to_string()
        };
        let sdb_dev = root.path().join("dev/sdb");
        assert!(
            try_prepare(&sdb_dev, true).ends_with(
                "is the disk this live system booted from (it holds the SHOAL partition); give another disk"
            )
        );
        assert!(
            try_prepare(&part, true)
                .ends_with("is a partition of sdb; give the whole disk (/dev/sdb): it becomes one store partition")
        );
        // Another disk, one of whose partitions is mounted.
        let sdc = root.path().join("sys/devices/pci0/block/sdc");
        std::fs::create_dir_all(sdc.join("sdc1")).unwrap();
        std::fs::write(sdc.join("size"), "131072\n").unwrap();
        std::fs::write(sdc.join("sdc1/size"), "8192\n").unwrap();
        std::fs::write(sdc.join("sdc1/partition"), "1\n").unwrap();
        std::os::unix::fs::symlink(&sdc, class.join("sdc")).unwrap();
        std::os::unix::fs::symlink(sdc.join("sdc1"), class.join("sdc1")).unwrap();
        std::fs::File::create(root.path().join("dev/sdc")).unwrap().set_len(64 << 20).unwrap();
        std::fs::write(root.path().join("proc/mounts"), "/dev/sdc1 /mnt ext4 rw 0 0\n").unwrap();
        let e = try_prepare(&root.path().join("dev/sdc"), true);
        assert!(e.ends_with("is in use (mounted: `/dev/sdc1 /mnt ext4 rw 0 0`); unmount it first"), "{e}");
    }
}
