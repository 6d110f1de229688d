//! Output collection: from a root directory and the declared outputs to ONE tar stream, and
//! back on the host.
//!
//! Runs where the job ran, after every process of the job is dead: inside the namespace
//! sandbox (root `/` after `pivot_root`) or inside the microVM (guest-init). Paths of specs are
//! resolved against `root` with symlinks interpreted *inside* it, so a link to `/etc` means the
//! sandbox's `/etc`, never the host's. Inside the trees, symlinks are archived as symlinks
//! and never followed; modes are kept; uid/gid and mtimes are not (trees do not keep mtimes,
//! and zeros make the stream reproducible).
//!
//! Tar layout: a `file:` output `x` is the regular-file entry `x`; a `dir:` or `glob:` output
//! `d` is the directory entry `d` followed by `d/<relative path>` entries (for a glob,
//! relative to the pattern's fixed prefix, e.g. `/output` for `/output/**/*.txt`).
//! `stdout`/`stderr` outputs are the host's business and never appear.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::{CollectedOutput, OutputSpec};

/// Size counted for each archived entry on top of its data (a tar header).
pub const ENTRY_OVERHEAD_BYTES: u64 = 512;
/// Symlinks followed while resolving one path, as the kernel's limit.
const SYMLINKS_MAX: u32 = 40;

/// What [`collect`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Outputs written to the tar.
    pub collected: BTreeMap<String, Kind>,
    /// Declared outputs that are absent or of the wrong kind, with a message for the user.
    pub problems: BTreeMap<String, String>,
    /// Bytes counted against the limit (data + [`ENTRY_OVERHEAD_BYTES`] per entry).
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The outputs together exceed the limit; nothing was written.
    #[error("outputs exceed {limit_bytes} bytes; the largest is `{output}`")]
    TooLarge { output: String, limit_bytes: u64 },
    #[error("output spec `{name}`: {message}")]
    BadSpec { name: String, message: String },
    #[error("collecting {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CollectError + '_ {
    move |source| CollectError::Io { path: path.to_path_buf(), source }
}

/// One tar entry to write.
#[derive(Debug)]
struct Item {
    /// Path in the archive (`name` or `name/rel`).
    archive_path: PathBuf,
    /// Real path under `root`.
    source: PathBuf,
    what: ItemKind,
    mode: u32,
}

#[derive(Debug)]
enum ItemKind {
    File {
        size: u64,
    },
    Dir,
    Symlink {
        target: PathBuf,
    },
    /// A file the sandbox holds open (an `fd:N` output's), read by reopening its
    /// `/proc/self/fd` link, which O_NOFOLLOW would refuse.
    Opened {
        size: u64,
    },
    /// A FIFO, socket or device: no tree can hold it, and dropping it silently would lose it.
    Special {
        kind: &'static str,
    },
}

/// Checks an output or input name: one plain path component.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// The files the sandbox gave the job for its `fd:N` outputs.
#[derive(Debug, Clone, Default)]
pub struct FdFiles {
    /// N → the fd the sandbox's PID 1 keeps of the file (read back by `/proc/self/fd`).
    pub fds: BTreeMap<u32, i32>,
    /// Most bytes of each, as stdout's cap.
    pub cap_bytes: u64,
}

/// Collects `specs` from under `root` into one tar written to `out`, refusing (before writing
/// anything but an empty archive) when the total exceeds `limit_bytes`.
pub fn collect<W: Write>(
    root: &Path,
    specs: &BTreeMap<String, OutputSpec>,
    limit_bytes: u64,
    out: W,
) -> Result<CollectReport, CollectError> {
    collect_with_fds(root, specs, &FdFiles::default(), limit_bytes, out)
}

/// [`collect`], with the files of the job's `fd:N` outputs.
pub fn collect_with_fds<W: Write>(
    root: &Path,
    specs: &BTreeMap<String, OutputSpec>,
    fds: &FdFiles,
    limit_bytes: u64,
    out: W,
) -> Result<CollectReport, CollectError> {
    let mut report = CollectReport::default();
    let mut plan: Vec<(String, Vec<Item>, u64)> = Vec::new();
    for (name, spec) in specs {
        if !valid_name(name) {
            return Err(CollectError::BadSpec { name: name.clone(), message: "not a plain name".into() });
        }
        let items = match spec {
            OutputSpec::Stdout | OutputSpec::Stderr => continue,
            OutputSpec::File(path) => plan_file(root, name, path, &mut report)?,
            OutputSpec::Dir(path) => plan_dir(root, name, path, &mut report)?,
            OutputSpec::Glob(pattern) => plan_glob(root, name, pattern, &mut report)?,
            OutputSpec::Fd(n) => plan_fd(name, *n, fds, &mut report)?,
        };
        let Some(items) = items else { continue };
        let bytes = items
            .iter()
            .map(|i| {
                ENTRY_OVERHEAD_BYTES
                    + match i.what {
                        ItemKind::File { size } | ItemKind::Opened { size } => size,
                        _ => 0,
                    }
            })
            .sum();
        report.total_bytes += bytes;
        plan.push((name.clone(), items, bytes));
    }
    if report.total_bytes > limit_bytes {
        let largest = plan.iter().max_by_key(|(_, _, b)| *b).map(|(n, _, _)| n.clone()).unwrap_or_default();
        tar::Builder::new(out).into_inner().map_err(io_err(Path::new("<tar>")))?;
        return Err(CollectError::TooLarge { output: largest, limit_bytes });
    }
    let mut builder = tar::Builder::new(out);
    for (name, items, _) in plan {
        let kind = match spec_kind(&specs[&name]) {
            Some(k) => k,
            None => continue,
        };
        for item in items {
            write_item(&mut builder, &item)?;
        }
        report.collected.insert(name, kind);
    }
    builder.into_inner().map_err(io_err(Path::new("<tar>")))?;
    Ok(report)
}

fn spec_kind(spec: &OutputSpec) -> Option<Kind> {
    match spec {
        OutputSpec::File(_) | OutputSpec::Fd(_) => Some(Kind::File),
        OutputSpec::Dir(_) | OutputSpec::Glob(_) => Some(Kind::Dir),
        OutputSpec::Stdout | OutputSpec::Stderr => None,
    }
}

/// Where output `name`'s `path` is inside `root`, with its metadata; `None`, with a problem
/// naming it, when the job did not create it.
fn planned_path(
    root: &Path,
    name: &str,
    path: &str,
    report: &mut CollectReport,
) -> Result<Option<(PathBuf, fs::Metadata)>, CollectError> {
    let Some(real) = resolve_in_root(root, path)? else {
        report.problems.insert(name.into(), format!("output `{name}`: {path} was not created"));
        return Ok(None);
    };
    let meta = fs::symlink_metadata(&real).map_err(io_err(&real))?;
    Ok(Some((real, meta)))
}

fn plan_file(
    root: &Path,
    name: &str,
    path: &str,
    report: &mut CollectReport,
) -> Result<Option<Vec<Item>>, CollectError> {
    let Some((real, meta)) = planned_path(root, name, path, report)? else { return Ok(None) };
    if !meta.is_file() {
        report.problems.insert(name.into(), format!("output `{name}`: {path} is not a regular file"));
        return Ok(None);
    }
    Ok(Some(vec![Item {
        archive_path: PathBuf::from(name),
        source: real,
        what: ItemKind::File { size: meta.len() },
        mode: meta.mode() & 0o7777,
    }]))
}

/// The file behind fd `n`: not a path of the job's, so read through PID 1's own fd of it.
fn plan_fd(name: &str, n: u32, fds: &FdFiles, report: &mut CollectReport) -> Result<Option<Vec<Item>>, CollectError> {
    let Some(fd) = fds.fds.get(&n) else {
        report.problems.insert(name.into(), format!("output `{name}`: fd {n} was not given to the job"));
        return Ok(None);
    };
    let source = PathBuf::from(format!("/proc/self/fd/{fd}"));
    let size = fs::metadata(&source).map_err(io_err(&source))?.len();
    if size > fds.cap_bytes {
        return Err(CollectError::TooLarge { output: name.into(), limit_bytes: fds.cap_bytes });
    }
    Ok(Some(vec![Item { archive_path: PathBuf::from(name), source, what: ItemKind::Opened { size }, mode: 0o644 }]))
}

fn plan_dir(
    root: &Path,
    name: &str,
    path: &str,
    report: &mut CollectReport,
) -> Result<Option<Vec<Item>>, CollectError> {
    let Some((real, meta)) = planned_path(root, name, path, report)? else { return Ok(None) };
    if !meta.is_dir() {
        report.problems.insert(name.into(), format!("output `{name}`: {path} is not a directory"));
        return Ok(None);
    }
    let mut items = Vec::new();
    walk_tree(&real, Path::new(name), &mut |_| true, &mut items)?;
    Ok(refuse_special(name, &real, items, report))
}

/// `None`, with a problem naming it, when `items` hold a special file (the first one found).
fn refuse_special(name: &str, real: &Path, items: Vec<Item>, report: &mut CollectReport) -> Option<Vec<Item>> {
    let Some((item, kind)) = items.iter().find_map(|i| match i.what {
        ItemKind::Special { kind } => Some((i, kind)),
        _ => None,
    }) else {
        return Some(items);
    };
    let rel = item.archive_path.strip_prefix(name).unwrap_or(&item.archive_path);
    report.problems.insert(
        name.into(),
        format!(
            "output `{name}`: {} is a {kind}; outputs hold only files, directories and symlinks: remove it \
             before the job ends, or write its data to a regular file",
            real.join(rel).display()
        ),
    );
    None
}

fn plan_glob(
    root: &Path,
    name: &str,
    pattern: &str,
    report: &mut CollectReport,
) -> Result<Option<Vec<Item>>, CollectError> {
    let bad = |message: String| CollectError::BadSpec { name: name.into(), message };
    if !pattern.starts_with('/') {
        return Err(bad(format!("glob `{pattern}` is not absolute")));
    }
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| bad(format!("glob `{pattern}`: {e}")))?
        .compile_matcher();
    // The fixed prefix: the leading components without glob syntax.
    let mut prefix = PathBuf::from("/");
    for c in pattern.split('/').filter(|c| !c.is_empty()) {
        if c.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            break;
        }
        prefix.push(c);
    }
    if prefix.as_os_str() == pattern {
        // No wildcard at all: the path itself, as a one-entry tree.
        prefix.pop();
    }
    let mut items = Vec::new();
    let root_item =
        Item { archive_path: PathBuf::from(name), source: PathBuf::new(), what: ItemKind::Dir, mode: 0o755 };
    let Some(real) = resolve_in_root(root, &prefix.to_string_lossy())? else {
        return Ok(Some(vec![root_item])); // nothing matched: an empty tree
    };
    if !fs::symlink_metadata(&real).map_err(io_err(&real))?.is_dir() {
        return Ok(Some(vec![root_item]));
    }
    // Keep a match, the subtree under a matched directory, and the directories leading to a
    // match (so the tree holds every match at its relative path).
    let mut all = Vec::new();
    walk_tree(&real, Path::new(name), &mut |_| true, &mut all)?;
    let rel_of = |item: &Item| item.archive_path.strip_prefix(name).map(Path::to_path_buf).unwrap_or_default();
    let mut keep: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
    let mut matched_dirs: Vec<PathBuf> = Vec::new();
    for item in &all {
        let rel = rel_of(item);
        if rel.as_os_str().is_empty() {
            continue;
        }
        let inside = prefix.join(&rel);
        let under_matched_dir = matched_dirs.iter().any(|d| rel.starts_with(d));
        if under_matched_dir || matcher.is_match(&inside) {
            if matches!(item.what, ItemKind::Dir) {
                matched_dirs.push(rel.clone());
            }
            let mut a = rel.as_path();
            keep.insert(a.to_path_buf());
            while let Some(p) = a.parent() {
                keep.insert(p.to_path_buf());
                a = p;
            }
        }
    }
    for item in all {
        if keep.contains(&rel_of(&item)) {
            items.push(item);
        }
    }
    if items.is_empty() {
        items.push(root_item);
    }
    Ok(refuse_special(name, &real, items, report))
}

/// Walks `dir` (not following symlinks), pushing `base` and `base/<rel>` items, sorted by
/// name so the stream is reproducible. Sockets, fifos and devices come back as
/// [`ItemKind::Special`], for the caller to refuse.
fn walk_tree(
    dir: &Path,
    base: &Path,
    filter: &mut dyn FnMut(&Path) -> bool,
    items: &mut Vec<Item>,
) -> Result<(), CollectError> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf());
            CollectError::Io { path, source: e.into() }
        })?;
        let rel = entry.path().strip_prefix(dir).expect("walkdir stays under its root");
        if !filter(rel) {
            continue;
        }
        let meta = entry.metadata().map_err(|e| CollectError::Io { path: entry.path().into(), source: e.into() })?;
        let what = if meta.is_dir() {
            ItemKind::Dir
        } else if meta.is_file() {
            ItemKind::File { size: meta.len() }
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(entry.path()).map_err(io_err(entry.path()))?;
            ItemKind::Symlink { target }
        } else {
            let ft = meta.file_type();
            let kind = if ft.is_fifo() {
                "FIFO"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_char_device() {
                "character device"
            } else if ft.is_block_device() {
                "block device"
            } else {
                "special file"
            };
            ItemKind::Special { kind }
        };
        let archive_path = if rel.as_os_str().is_empty() { base.to_path_buf() } else { base.join(rel) };
        items.push(Item { archive_path, source: entry.path().to_path_buf(), what, mode: meta.mode() & 0o7777 });
    }
    Ok(())
}

fn write_item<W: Write>(builder: &mut tar::Builder<W>, item: &Item) -> Result<(), CollectError> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(item.mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let err = io_err(&item.source);
    match &item.what {
        ItemKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, &item.archive_path, io::empty()).map_err(err)
        }
        // Refused while planning (`refuse_special`); never written, never dropped.
        ItemKind::Special { kind } => Err(err(io::Error::new(io::ErrorKind::InvalidInput, format!("a {kind}")))),
        ItemKind::Symlink { target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            // The target exactly as written: `set_link_name` (and `append_link` for short
            // targets) rewrites it by path components, so `/` came back as `//` and `a//b` as
            // `a/b`. A target too long for the header goes in a GNU long-link record, verbatim.
            let bytes = target.as_os_str().as_encoded_bytes();
            if bytes.len() < 100 {
                header.set_link_name_literal(bytes).map_err(io_err(&item.source))?;
                builder.append_data(&mut header, &item.archive_path, io::empty()).map_err(err)
            } else {
                builder.append_link(&mut header, &item.archive_path, target).map_err(err)
            }
        }
        ItemKind::File { size } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(*size);
            // O_NOFOLLOW: the planned path was a regular file; if it changed since, fail
            // rather than follow anything.
            let file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&item.source)
                .map_err(io_err(&item.source))?;
            let mut data = ExactReader { inner: file.take(*size), left: *size };
            builder.append_data(&mut header, &item.archive_path, &mut data).map_err(err)
        }
        ItemKind::Opened { size } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(*size);
            let file = fs::File::open(&item.source).map_err(io_err(&item.source))?;
            let mut data = ExactReader { inner: file.take(*size), left: *size };
            builder.append_data(&mut header, &item.archive_path, &mut data).map_err(err)
        }
    }
}

/// Fails when the file turned out shorter than its header says (a corrupt archive otherwise).
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being archived"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Resolves the absolute `path` as if `root` were `/`: `..` stops at `root`, and symlinks
/// (including the last component) are followed with absolute targets taken relative to
/// `root`. Returns None when a component does not exist.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<Option<PathBuf>, CollectError> {
    let mut todo: VecDeque<OsString> = VecDeque::new();
    push_front_components(&mut todo, Path::new(path));
    let mut cur = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let candidate = cur.join(&c);
        let real = root.join(&candidate);
        let meta = match fs::symlink_metadata(&real) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Ok(None);
            }
            Err(e) => return Err(CollectError::Io { path: real, source: e }),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > SYMLINKS_MAX {
                return Err(CollectError::Io { path: real, source: io::Error::from_raw_os_error(libc::ELOOP) });
            }
            let target = fs::read_link(&real).map_err(io_err(&real))?;
            if target.is_absolute() {
                cur = PathBuf::new();
            }
            push_front_components(&mut todo, &target);
        } else {
            cur = candidate;
        }
    }
    Ok(Some(root.join(cur)))
}

fn push_front_components(todo: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    for p in parts.into_iter().rev() {
        todo.push_front(p);
    }
}

/// Errors of [`unpack`]: the stream came from the sandbox, so it is checked like any
/// untrusted input.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("output tar: {0}")]
    Invalid(String),
    #[error("output tar: {}", with_causes(source))]
    Io {
        #[from]
        source: io::Error,
    },
    /// The file system the outputs are unpacked to is full.
    #[error(
        "no space left on the file system holding {dest} ({free_bytes} bytes free) while writing the job's \
         outputs ({}): free space there, or move the store (SHOAL_HOME) to a larger file system",
        with_causes(source)
    )]
    NoSpace { dest: PathBuf, free_bytes: u64, source: io::Error },
}

/// An I/O error with its causes: the tar crate wraps the OS error ("No space left on device")
/// inside one that only says which entry failed.
fn with_causes(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    if cause.is_none() {
        cause = e.get_ref().and_then(|inner| inner.source());
    }
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// A full file system named as such: ENOSPC or EDQUOT, as the error kind or in its causes.
fn name_full_disk(e: UnpackError, dest: &Path) -> UnpackError {
    let UnpackError::Io { source } = e else { return e };
    let full = matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
    if !full {
        return UnpackError::Io { source };
    }
    let free_bytes = nix::sys::statvfs::statvfs(dest).map(|st| st.blocks_available() * st.fragment_size()).unwrap_or(0);
    UnpackError::NoSpace { dest: dest.to_owned(), free_bytes, source }
}

/// Unpacks a tar written by [`collect`] into `dest/<name>` for each declared output. Only
/// declared names, only regular files, directories and symlinks; nothing lands outside
/// `dest` (the tar crate checks each entry's parent, and directories are created here one
/// component at a time without following symlinks). Directory modes are applied last, so a
/// read-only directory can still be filled.
pub fn unpack<R: Read>(
    tar: R,
    dest: &Path,
    specs: &BTreeMap<String, OutputSpec>,
) -> Result<BTreeMap<String, CollectedOutput>, UnpackError> {
    unpack_checked(tar, dest, specs).map_err(|e| name_full_disk(e, dest))
}

fn unpack_checked<R: Read>(
    tar: R,
    dest: &Path,
    specs: &BTreeMap<String, OutputSpec>,
) -> Result<BTreeMap<String, CollectedOutput>, UnpackError> {
    let bad = |m: String| UnpackError::Invalid(m);
    let mut out = BTreeMap::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut comps = path.components();
        let name = match comps.next() {
            Some(Component::Normal(n)) => n.to_string_lossy().into_owned(),
            _ => return Err(bad(format!("entry {} is not under an output name", path.display()))),
        };
        if comps.any(|c| !matches!(c, Component::Normal(_))) {
            return Err(bad(format!("entry {} has a non-plain component", path.display())));
        }
        let kind = match specs.get(&name).and_then(spec_kind) {
            Some(k) => k,
            None => return Err(bad(format!("entry {} is not a declared output", path.display()))),
        };
        let etype = entry.header().entry_type();
        let top = path.components().count() == 1;
        match (kind, top, etype) {
            (Kind::File, true, tar::EntryType::Regular) => {}
            (Kind::Dir, _, tar::EntryType::Directory) => {}
            (Kind::Dir, false, tar::EntryType::Regular | tar::EntryType::Symlink) => {}
            _ => return Err(bad(format!("entry {} has an unexpected type {etype:?}", path.display()))),
        }
        let mode = entry.header().mode()? & 0o7777;
        if etype == tar::EntryType::Directory {
            create_dir_nofollow(dest, &path)?;
            dir_modes.push((dest.join(&path), mode));
        } else {
            if let Some(parent) = path.parent() {
                create_dir_nofollow(dest, parent)?;
            }
            entry.set_preserve_permissions(true);
            entry.set_preserve_mtime(false);
            if !entry.unpack_in(dest)? {
                return Err(bad(format!("entry {} escapes the output directory", path.display())));
            }
        }
        let host = dest.join(&name);
        out.insert(name, if kind == Kind::File { CollectedOutput::File(host) } else { CollectedOutput::Dir(host) });
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
    }
    Ok(out)
}

/// `mkdir -p dest/rel`, refusing to pass through anything but real directories.
fn create_dir_nofollow(dest: &Path, rel: &Path) -> Result<(), UnpackError> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(UnpackError::Invalid(format!("{} is not a directory", cur.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&cur)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn specs(list: &[(&str, OutputSpec)]) -> BTreeMap<String, OutputSpec> {
        list.iter().map(|(n, s)| (n.to_string(), s.clone())).collect()
    }

    #[test]
    fn resolve_stays_in_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("output")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "inside").unwrap();
        symlink("/etc", root.join("output/a")).unwrap();
        symlink("../../../../etc/passwd", root.join("output/up")).unwrap();
        let check = |p: &str, expected: Option<&str>| {
            assert_eq!(resolve_in_root(root, p).unwrap(), expected.map(|e| root.join(e)), "{p}");
        };
        check("/output/a/passwd", Some("etc/passwd"));
        check("/output/up", Some("etc/passwd"));
        check("/../../output", Some("output"));
        check("/output/missing", None);
        check("/etc/passwd/x", None);
    }

    #[test]
    fn round_trip_keeps_symlinks_modes_and_glob_layout() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("output/d/sub")).unwrap();
        fs::write(root.join("output/d/sub/f"), "f").unwrap();
        fs::set_permissions(root.join("output/d/sub/f"), fs::Permissions::from_mode(0o751)).unwrap();
        symlink("/etc/passwd", root.join("output/d/link")).unwrap();
        fs::create_dir_all(root.join("output/g/x")).unwrap();
        fs::write(root.join("output/g/x/a.txt"), "a").unwrap();
        fs::write(root.join("output/g/x/b.bin"), "b").unwrap();
        fs::write(root.join("output/file"), "hello").unwrap();
        let specs = specs(&[
            ("d", OutputSpec::Dir("/output/d".into())),
            ("g", OutputSpec::Glob("/output/g/**/*.txt".into())),
            ("f", OutputSpec::File("/output/file".into())),
            ("missing", OutputSpec::File("/output/nope".into())),
            ("out", OutputSpec::Stdout),
        ]);
        let mut tar = Vec::new();
        let report = collect(&root, &specs, 1 << 20, &mut tar).unwrap();
        assert_eq!(report.collected.len(), 3);
        assert_eq!(report.problems["missing"], "output `missing`: /output/nope was not created");
        let dest = t.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let got = unpack(&tar[..], &dest, &specs).unwrap();
        assert_eq!(got["f"], CollectedOutput::File(dest.join("f")));
        assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "hello");
        assert_eq!(fs::read_link(dest.join("d/link")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(fs::metadata(dest.join("d/sub/f")).unwrap().mode() & 0o777, 0o751);
        assert!(dest.join("g/x/a.txt").is_file());
        assert!(!dest.join("g/x/b.bin").exists());
    }

    #[test]
    fn too_large_names_the_largest() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("output")).unwrap();
        fs::write(t.path().join("output/big"), vec![0u8; 5000]).unwrap();
        fs::write(t.path().join("output/small"), "x").unwrap();
        let specs = specs(&[
            ("big", OutputSpec::File("/output/big".into())),
            ("small", OutputSpec::File("/output/small".into())),
        ]);
        match collect(t.path(), &specs, 4000, Vec::new()) {
            Err(CollectError::TooLarge { output, limit_bytes: 4000 }) => assert_eq!(output, "big"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unpack_rejects_undeclared_and_escaping_entries() {
        let specs = specs(&[("d", OutputSpec::Dir("/output/d".into()))]);
        let build = |f: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
            let mut b = tar::Builder::new(Vec::new());
            f(&mut b);
            b.into_inner().unwrap()
        };
        let t = tempfile::tempdir().unwrap();
        let evil = build(&|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "d/l", "/etc").unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            b.append_data(&mut h, "d/l/x", &b"x"[..]).unwrap();
        });
        assert!(unpack(&evil[..], t.path(), &specs).is_err());
        assert!(!Path::new("/etc/x").exists());
        let undeclared = build(&|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            b.append_data(&mut h, "other", &b"x"[..]).unwrap();
        });
        assert!(unpack(&undeclared[..], t.path(), &specs).is_err());
    }
}
