//! Why a store did not open: sled's and iroh-blobs' errors turned into [`OpenError`]s that name
//! the file and what to do (another process holds the lock, a damaged database, permissions).
//! Both libraries report through their own types (iroh-blobs only as text), so the kind is read
//! from the error and, for access, checked again on the files themselves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::OpenError;

/// What is lost when the metadata database is started empty.
const META_LOSES: &str = "the blobs are kept, but image tags, the action cache, pins and a node's ledger are \
                          lost (re-import or re-pull images; a node gets the ledger back from its peers)";
/// What is lost when the blob store is started empty.
const BLOBS_LOSES: &str = "every blob of this store is lost to it (a node fetches again what its peers \
                           hold; jobs run again); the data files go too, since only that database lists them";
/// Longest command line quoted in a lock holder's description, in chars.
const CMDLINE_CHARS_MAX: usize = 200;

/// The error for sled's refusal to open the metadata database `dir` of the store at `home`.
pub(crate) fn meta_error(home: &Path, dir: &Path, e: sled::Error) -> OpenError {
    let what = "metadata database";
    match e {
        // sled wraps fs2's `WouldBlock` into an `Other` error with this text.
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("acquire lock") =>
        {
            locked(home, &dir.join("db"))
        }
        sled::Error::Io(io) => match first_inaccessible(dir) {
            Some(path) => OpenError::Access { what, path, message: io.to_string() },
            // Readable, yet an I/O error: an unexpected end of a file is a damaged file.
            None if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                OpenError::Damaged { what, path: dir.to_owned(), message: io.to_string(), loses: META_LOSES }
            }
            None => OpenError::Access { what, path: dir.to_owned(), message: io.to_string() },
        },
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) | sled::Error::ReportableBug(_) => {
            OpenError::Damaged { what, path: dir.to_owned(), message: sled_message(&e), loses: META_LOSES }
        }
        sled::Error::CollectionNotFound(_) => {
            OpenError::Damaged { what, path: dir.to_owned(), message: e.to_string(), loses: META_LOSES }
        }
    }
}

/// sled's `Corruption` prints an empty backtrace and a file offset: the offset is worth keeping.
fn sled_message(e: &sled::Error) -> String {
    match e {
        sled::Error::Corruption { at: Some(at), .. } => format!("sled: corrupted data at file offset {at:?}"),
        sled::Error::Corruption { at: None, .. } => "sled: corrupted data".to_string(),
        other => format!("sled: {other}"),
    }
}

/// The error for iroh-blobs' refusal to open the blob store in `dir` (its database is
/// `dir/blobs.db`, redb); iroh-blobs gives only the text of redb's and the file system's errors.
pub(crate) fn blobs_error(home: &Path, dir: &Path, message: String) -> OpenError {
    let what = "blob store";
    let db = dir.join("blobs.db");
    // redb panics on some damaged pages (an `unreachable!`, and its debug assertions in debug
    // builds); iroh-blobs' runtime catches it and reports "task N panicked with message ...".
    if let Some((_, panic)) = message.split_once("panicked with message ") {
        let message = format!("redb: {}", panic.trim_matches('"'));
        return OpenError::Damaged { what, path: dir.to_owned(), message, loses: BLOBS_LOSES };
    }
    if message.contains("already open") || message.contains("Cannot acquire lock") {
        return locked(home, &db);
    }
    if let Some(path) = first_inaccessible(dir) {
        return OpenError::Access { what, path, message };
    }
    // A directory where `blobs.db` belongs reads as damaged too: the same fix (move it aside).
    let damaged =
        ["corrupt", "magic number", "Not a redb database", "truncated", "checksum", "invalid", "Is a directory"]
            .iter()
            .any(|w| message.to_ascii_lowercase().contains(&w.to_ascii_lowercase()));
    if damaged {
        return OpenError::Damaged { what, path: dir.to_owned(), message, loses: BLOBS_LOSES };
    }
    OpenError::Access { what, path: db, message }
}

/// Stores whose blob database is being opened right now (see [`is_blob_store_open_panic`]).
static OPENING_BLOBS: AtomicUsize = AtomicUsize::new(0);

/// Counts one store in [`OPENING_BLOBS`] while it lives.
pub(crate) struct OpeningBlobs(());

impl OpeningBlobs {
    pub(crate) fn start() -> OpeningBlobs {
        OPENING_BLOBS.fetch_add(1, Ordering::SeqCst);
        OpeningBlobs(())
    }
}

impl Drop for OpeningBlobs {
    fn drop(&mut self) {
        OPENING_BLOBS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a panic on the thread named `thread` is redb refusing a damaged blob database while
/// a store opens: iroh-blobs' runtime (threads `iroh-blob-store-N`) catches it and the open
/// returns [`OpenError::Damaged`], which says what to do. A binary's panic hook may leave such a
/// panic unprinted (a backtrace tells the user nothing the error does not); any other panic is
/// not one.
pub fn is_blob_store_open_panic(thread: Option<&str>) -> bool {
    OPENING_BLOBS.load(Ordering::SeqCst) > 0 && thread.is_some_and(|n| n.starts_with("iroh-blob-store"))
}

/// `path` exists and is something other than a directory: the store cannot keep `what` there.
pub(crate) fn check_dir(path: &Path, what: &'static str) -> Result<(), OpenError> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(OpenError::NotADir { path: path.to_owned(), what }),
        _ => Ok(()),
    }
}

fn locked(home: &Path, path: &Path) -> OpenError {
    let (holder, hint) = match lock_holder(path) {
        Some(pid) => {
            let cmdline = process_cmdline(pid);
            let hint = if cmdline.as_deref().is_some_and(|c| c.split(' ').any(|w| w == "node")) {
                format!(
                    " (`kill {pid}`), or send work through that node instead (`shoal submit`, `shoal status`, \
                     `shoal get --node`)"
                )
            } else {
                format!(" (`kill {pid}`)")
            };
            let holder = match cmdline {
                Some(c) => format!("process {pid} (`{c}`)"),
                None => format!("process {pid}"),
            };
            (holder, hint)
        }
        None => ("another process (not visible to this user)".to_string(), String::new()),
    };
    OpenError::Locked { home: home.to_owned(), path: path.to_owned(), holder, hint }
}

/// The process holding a lock on `path`: the owner of its `flock` or `fcntl` lock in
/// `/proc/locks` (sled), else a process with the file open (redb's open-file-description locks
/// carry no pid on older kernels).
fn lock_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id();
    let meta = std::fs::metadata(path).ok()?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let want = format!("{:02x}:{:02x}:{ino}", rustix::fs::major(dev), rustix::fs::minor(dev));
    if let Ok(locks) = std::fs::read_to_string("/proc/locks") {
        for line in locks.lines() {
            // `1: FLOCK  ADVISORY  WRITE 12345 fd:01:1234 0 EOF`; waiters carry `->` and are not holders.
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) == Some(&"->") || fields.len() < 6 || fields[5] != want {
                continue;
            }
            if let Ok(pid) = fields[4].parse::<u32>()
                && pid != me
            {
                return Some(pid);
            }
        }
    }
    let target = std::fs::canonicalize(path).ok()?;
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target)) {
            return Some(pid);
        }
    }
    None
}

/// A process's command line, arguments joined by spaces, control characters escaped, shortened.
fn process_cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text: String = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut out: String = text.chars().flat_map(char::escape_debug).take(CMDLINE_CHARS_MAX).collect();
    if text.chars().count() > CMDLINE_CHARS_MAX {
        out.push('…');
    }
    (!out.is_empty()).then_some(out)
}

/// The first of `dir` and the files in it that this process may not read and write (the
/// directory also needs search), from the top down: what to chown or chmod.
fn first_inaccessible(dir: &Path) -> Option<PathBuf> {
    use rustix::fs::{Access, access};
    let dir_needs = Access::READ_OK | Access::WRITE_OK | Access::EXEC_OK;
    if access(dir, dir_needs).is_err() {
        return Some(dir.to_owned());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
    entries.sort();
    entries.into_iter().find(|p| {
        let needs = if p.is_dir() { dir_needs } else { Access::READ_OK | Access::WRITE_OK };
        access(p, needs).is_err()
    })
}
