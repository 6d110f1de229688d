//! What goes into a VM: the image root as a squashfs (built once per rootfs, kept beside it)
//! and the request disk (header, then a tar of the inputs and stdin; [`disk`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use super::disk::{self, DATA_OFFSET, Fault, GuestRequest, REQUEST_MAGIC};
use super::round_up;
use crate::wire::JobSpec;
use crate::{Request, RunError};

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
pub(super) fn write_request_disk(
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
    // Whole sectors: QEMU ignores a partial last one. A warm VM's disk keeps its length, and
    // nothing is flushed: the guest drops its own cached blocks of the disk before reading
    // (BLKFLSBUF), and QEMU reads the file through the same page cache.
    if fixed_len.is_none() {
        file.set_len(round_up(end, 4096)).map_err(io_err("padding"))?;
    }
    Ok(())
}
