//! The request and reply disks: how a job goes into the microVM and its results come out
//! (written by `shoal_vm::microvm` on the host, read by guest-init, and the other way round).
//!
//! Both are raw virtio-blk disks, found in the guest by their serial (`shoal-req`,
//! `shoal-reply`). A disk starts with a header block: an 8-byte magic, a u32 LE version, a u32 LE
//! length, then that many bytes of JSON. Data follows at [`DATA_OFFSET`].
//!
//! - request (read-only): [`GuestRequest`], then a tar of the inputs (`input/<name>` entries)
//!   and of stdin (`stdin`), `tar_bytes` long.
//! - reply (written by the guest, read by the host after QEMU exits): the output tar (the
//!   collector's stream, see [`crate::collect`]) at [`DATA_OFFSET`], then stdout, then stderr;
//!   the header, written last, says where each is. No header means the guest never finished.

use std::io::{self, Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};

use crate::Exit;
use crate::wire::JobSpec;

pub const REQUEST_MAGIC: &[u8; 8] = b"SHOALREQ";
pub const REPLY_MAGIC: &[u8; 8] = b"SHOALRPY";
pub const VERSION: u32 = 1;
/// Where data starts on both disks; the header must fit before it.
pub const DATA_OFFSET: u64 = 1 << 20;
/// Largest header JSON, in bytes.
pub const HEADER_BYTES_MAX: u32 = (DATA_OFFSET as u32) - 16;
pub const REQUEST_SERIAL: &str = "shoal-req";
pub const REPLY_SERIAL: &str = "shoal-reply";
pub const ROOTFS_SERIAL: &str = "shoal-rootfs";
/// What a warm VM's guest-init prints on the console when it waits for its go-ahead.
pub const WARM_READY_MARKER: &str = "SHOAL-WARM-READY";
/// The modules' directory inside the initramfs; guest-init loads its files in name order.
pub const MODULES_DIR: &str = "modules";
/// Network modules, loaded only when the VM has a network device.
pub const NET_MODULES_DIR: &str = "modules-net";

/// A fault guest-init injects on purpose, so tests can prove the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// PID 1 exits: the kernel panics.
    Panic,
    /// PID 1 sleeps forever without replying.
    Hang,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRequest {
    pub job: JobSpec,
    /// Input names, each present in the tar under `input/<name>`.
    pub inputs: Vec<String>,
    /// Whether the tar holds a `stdin` file.
    pub stdin: bool,
    pub tar_bytes: u64,
    pub fault: Option<Fault>,
}

/// Guest clock readings (CLOCK_BOOTTIME, ms since the kernel started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestTimeline {
    pub init_start_ms: u64,
    /// A warm VM: when the go-ahead came (0 for a cold one).
    #[serde(default)]
    pub go_ms: u64,
    pub job_start_ms: u64,
    pub job_end_ms: u64,
    pub reply_written_ms: u64,
}

/// A region of the reply disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestReply {
    Ran {
        exit: Exit,
        user_ms: u64,
        sys_ms: u64,
        peak_memory_bytes: u64,
        wall_ms: u64,
        tar: Span,
        /// Why the output stream could not be written whole (the host then has no outputs).
        tar_error: Option<String>,
        stdout: Span,
        stderr: Span,
        timeline: GuestTimeline,
    },
    /// The guest could not run the job; nothing ran.
    SetupFailed { message: String, timeline: GuestTimeline },
}

pub fn write_header<W: Write + Seek>(w: &mut W, magic: &[u8; 8], json: &[u8]) -> io::Result<()> {
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| *l <= HEADER_BYTES_MAX)
        .ok_or_else(|| io::Error::other(format!("header of {} bytes is over {HEADER_BYTES_MAX}", json.len())))?;
    w.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(16 + json.len());
    head.extend_from_slice(magic);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(json);
    w.write_all(&head)
}

/// Reads a header; Ok(None) when the magic is absent (e.g. a reply disk the guest never wrote).
pub fn read_header<R: Read + Seek>(r: &mut R, magic: &[u8; 8]) -> io::Result<Option<Vec<u8>>> {
    r.seek(SeekFrom::Start(0))?;
    let mut head = [0u8; 16];
    if let Err(e) = r.read_exact(&mut head) {
        return if e.kind() == io::ErrorKind::UnexpectedEof { Ok(None) } else { Err(e) };
    }
    if &head[..8] != magic {
        return Ok(None);
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(io::Error::other(format!("disk format version {version}, this shoal speaks {VERSION}")));
    }
    let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    if len > HEADER_BYTES_MAX {
        return Err(io::Error::other(format!("header length {len} is over {HEADER_BYTES_MAX}")));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json)?;
    Ok(Some(json))
}

/// Reads a region of at most `max` bytes that must lie within `disk_len`.
pub fn read_span<R: Read + Seek>(r: &mut R, span: Span, max: u64, disk_len: u64) -> io::Result<Vec<u8>> {
    check_span(span, max, disk_len)?;
    r.seek(SeekFrom::Start(span.offset))?;
    let mut buf = vec![0u8; span.len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// A region of the reply as a [`crate::Captured`]: in memory when small, else copied to `file`.
pub fn capture_span<R: Read + Seek>(
    r: &mut R,
    span: Span,
    max: u64,
    disk_len: u64,
    file: &std::path::Path,
) -> io::Result<crate::Captured> {
    if span.len as usize <= crate::Captured::MEMORY_BYTES_MAX {
        return read_span(r, span, max, disk_len).map(crate::Captured::Bytes);
    }
    check_span(span, max, disk_len)?;
    r.seek(SeekFrom::Start(span.offset))?;
    let mut out = std::fs::File::create(file)?;
    let len = io::copy(&mut r.take(span.len), &mut out)?;
    if len != span.len {
        return Err(io::Error::other(format!("reply region {span:?} ends early")));
    }
    Ok(crate::Captured::File { path: file.to_owned(), len })
}

fn check_span(span: Span, max: u64, disk_len: u64) -> io::Result<()> {
    let end = span.offset.checked_add(span.len);
    if span.len > max || end.is_none_or(|e| e > disk_len) || span.offset < DATA_OFFSET {
        return Err(io::Error::other(format!("reply region {span:?} is out of bounds")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_absent_magic() {
        let mut disk = io::Cursor::new(vec![0u8; 4096]);
        assert_eq!(read_header(&mut disk, REPLY_MAGIC).unwrap(), None);
        write_header(&mut disk, REPLY_MAGIC, b"{\"a\":1}").unwrap();
        assert_eq!(read_header(&mut disk, REPLY_MAGIC).unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(read_header(&mut disk, REQUEST_MAGIC).unwrap(), None);
        let mut bad = disk.clone();
        bad.get_mut()[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_header(&mut bad, REPLY_MAGIC).is_err());
        assert!(read_span(&mut disk, Span { offset: 0, len: 4 }, 10, 4096).is_err());
    }
}
