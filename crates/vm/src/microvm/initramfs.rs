//! The guest's initramfs: a newc cpio archive (the format the kernel unpacks into its first
//! root) holding guest-init as `/init`, the kernel modules it loads in order, and the few
//! directories and device nodes PID 1 needs before it mounts anything.

use std::io::{self, Write};

pub use shoal_sandbox::disk::{MODULES_DIR, NET_MODULES_DIR};

/// Writes a newc ("070701") cpio archive entry by entry.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> CpioWriter<W> {
        CpioWriter { out, ino: 1, written: 0 }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad cpio name `{name}`")));
        }
        let size = u32::try_from(data.len()).map_err(|_| io::Error::other("cpio entries hold at most 4 GiB"))?;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0,
        ];
        self.ino += 1;
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0; 3][..n])
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        // The kernel reads the archive in 512-byte blocks; pad as cpio(1) does.
        let n = (512 - (self.written % 512) as usize) % 512;
        self.write(&vec![0; n])?;
        Ok(self.out)
    }
}

/// The whole initramfs: `/init` = guest-init, `modules/NN-name.ko` and `modules-net/NN-name.ko`
/// in load order (module files already loaded by an earlier list are left out of a later one).
pub fn build(
    guest_init: &[u8],
    modules: &[(String, Vec<u8>)],
    net_modules: &[(String, Vec<u8>)],
) -> io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    for d in ["dev", "proc", "sys", "tmp", "rootfs", MODULES_DIR, NET_MODULES_DIR] {
        w.dir(d, 0o755)?;
    }
    // The kernel opens /dev/console for PID 1's stdio before devtmpfs is mounted.
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.file("init", 0o755, guest_init)?;
    for (dir, list) in [(MODULES_DIR, modules), (NET_MODULES_DIR, net_modules)] {
        for (i, (name, data)) in list.iter().enumerate() {
            w.file(&format!("{dir}/{i:02}-{name}"), 0o644, data)?;
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_the_archive_ends_with_a_trailer() {
        let bytes = build(b"#!init", &[("a.ko".into(), vec![1, 2, 3])], &[("n.ko".into(), vec![4])]).unwrap();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 512, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("modules/00-a.ko\0"));
        assert!(text.contains("modules-net/00-n.ko\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // Every header starts on a 4-byte boundary.
        for (i, _) in text.match_indices("070701") {
            assert_eq!(i % 4, 0);
        }
    }
}
