//! Error types, one enum per operation area. Each variant's message names the thing and says what
//! to do.

use std::path::PathBuf;

use crate::Hash;

/// Opening a store. Each variant names the file and what to do; none is a panic.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A directory of the store could not be created.
    #[error(
        "cannot create the shoal store directory {path}: {source}; check its permissions or set SHOAL_HOME to a writable directory"
    )]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// Something other than a directory is where the store keeps one.
    #[error(
        "{path} is not a directory, and the store keeps its {what} there: move it away (`mv {path} {path}.old`) or set SHOAL_HOME to another directory"
    )]
    NotADir { path: PathBuf, what: &'static str },
    /// Another process holds the store's lock (sled's, or iroh-blobs' redb's): one process at a
    /// time opens a store.
    #[error(
        "the store {home} is in use by {holder} ({path} is locked): one process at a time opens a store; wait for it to end or stop it{hint}, or set SHOAL_HOME to another directory"
    )]
    Locked { home: PathBuf, path: PathBuf, holder: String, hint: String },
    /// A database file does not decode: damaged on disk, or written by something else.
    #[error(
        "the {what} {path} is damaged ({message}): move it aside (`mv {path} {path}.damaged`) and run again to start it empty — {loses}; or put back a copy from a backup"
    )]
    Damaged { what: &'static str, path: PathBuf, message: String, loses: &'static str },
    /// A file or directory of the store cannot be read or written by this user.
    #[error(
        "cannot open the {what} {path}: {message}; the user running shoal must be able to read and write it and the directories above it (`ls -ld {path}`, then chown or chmod), or set SHOAL_HOME to a directory of your own"
    )]
    Access { what: &'static str, path: PathBuf, message: String },
}

/// Storing, reading, trees, records and garbage collection.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A blob that an operation needs is not in the store.
    #[error(
        "blob {hash} is not in the local store; import it (`shoal import`), fetch it from a peer, or run the job that makes it"
    )]
    NotFound { hash: Hash },
    /// Reading or writing a host file failed.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The iroh-blobs store reported an error.
    #[error("blob store: {op} failed: {message}; check the disk under the shoal home (df, permissions)")]
    Blobs { op: &'static str, message: String },
    /// The sled metadata database reported an error.
    #[error("metadata database: {op} failed: {source}; check the disk under the shoal home")]
    Meta { op: &'static str, source: sled::Error },
    /// A directory holds something a tree cannot represent.
    #[error(
        "{path} is a {kind}; trees hold only files, directories and symlinks: remove it or leave it out of the directory"
    )]
    Unsupported { path: PathBuf, kind: &'static str },
    /// A directory is nested deeper than a tree may be.
    #[error(
        "{path} is more than {max} directories below the directory being stored; flatten it, or pack it in an archive",
        max = crate::tree::TREE_DEPTH_MAX
    )]
    TooDeep { path: PathBuf },
    /// A file name is not UTF-8.
    #[error("the name of {path} is not UTF-8; rename it")]
    NonUtf8Name { path: PathBuf },
    /// A stored tree blob is malformed or unsafe (a name with `/`, `.` or `..`, unsorted entries...).
    #[error("tree {hash} is invalid: {reason}; it was not made by shoal: re-create it from its directory")]
    BadTree { hash: Hash, reason: String },
    /// A stored blob's bytes on disk do not hash to its name.
    #[error(
        "blob {hash} is corrupted in this store ({path}: its bytes hash to {actual}); it is no longer \
         served and `shoal gc` removes it: fetch it again from a peer, re-import it (`shoal blob put`, \
         `shoal image import`), or rerun the job that made it"
    )]
    Corrupt { hash: Hash, actual: Hash, path: String },
    /// A file to store is not a regular file.
    #[error(
        "{path} is a {kind}, not a regular file or directory: inputs and imports must be files or \
         directories (copy the data into a file first)"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    /// A file to store does not fit on the store's file system.
    #[error(
        "cannot store {path} ({len} bytes): the file system holding {fs} has {free_bytes} bytes free; free \
         space there (`shoal gc`) or move the store (SHOAL_HOME) to a larger file system"
    )]
    NoRoom { path: PathBuf, len: u64, fs: PathBuf, free_bytes: u64 },
    /// A write failed on a file system that is full.
    #[error(
        "blob store: {op} failed: the file system holding {fs} is full ({free_bytes} bytes free): free space \
         there (`shoal gc` drops what nothing references) or move the store (SHOAL_HOME) to a larger file \
         system; what is already stored is intact ({message})"
    )]
    NoSpace { op: &'static str, fs: PathBuf, free_bytes: u64, message: String },
    /// A stored record does not decode.
    #[error("record {hash} is not a signed run record: {reason}")]
    BadRecord { hash: Hash, reason: String },
    /// `materialize` was pointed at a path that exists.
    #[error("{path} already exists; materialize writes a new directory: remove it or choose another destination")]
    DestinationExists { path: PathBuf },
}

impl StoreError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { what, path, source }
    }
    pub(crate) fn blobs(op: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> StoreError {
        move |e| StoreError::Blobs { op, message: e.to_string() }
    }
    pub(crate) fn meta(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
        move |source| StoreError::Meta { op, source }
    }
}

/// Importing, pulling, naming and resolving images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A store operation failed during an image operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No image carries the tag.
    #[error("no image tagged `{tag}`; run `shoal image ls`, or `shoal image import`/`pull` it")]
    UnknownTag { tag: String },
    /// The tag's image is for another platform than the job's, and no import gave the tag one
    /// for the job's.
    #[error(
        "image `{tag}` is linux/{has}, the job asks for {wants}; import the image's linux/{wants_oci} \
         entry too (`shoal image import --platform linux/{wants_oci} ...` or `shoal image pull --platform \
         linux/{wants_oci} ...`), or drop `requirements.arch`"
    )]
    WrongPlatform { tag: String, has: String, wants: String, wants_oci: String },
    /// No image has the OCI digest.
    #[error("no image with digest `sha256:{digest}`; run `shoal image ls`, or `shoal image import`/`pull` it")]
    UnknownDigest { digest: String },
    /// No image has the blake3 id.
    #[error("no image with id `{id}`; run `shoal image ls`, or `shoal image import`/`pull` it")]
    UnknownId { id: Hash },
    /// A `jobs:` image reference cannot be resolved here.
    #[error("image `jobs:{job}/{output}` is built by a job; resolve it after that job ran (the node does this)")]
    JobImage { job: String, output: String },
    /// The image source is malformed.
    #[error("{source_name}: {reason}")]
    Format { source_name: String, reason: String },
    /// A blob's content does not match its digest.
    #[error(
        "{what}: expected sha256:{expected}, got sha256:{actual}; the source is corrupt or was changed: fetch it again"
    )]
    DigestMismatch { what: String, expected: String, actual: String },
    /// Reading a host file failed.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// A registry request failed.
    #[error("registry {url}: {reason}")]
    Registry { url: String, reason: String },
    /// A layer entry cannot be expanded.
    #[error("layer {layer}: entry `{entry}`: {reason}")]
    Layer { layer: String, entry: String, reason: String },
}

impl ImageError {
    pub(crate) fn format(source_name: impl std::fmt::Display, reason: impl Into<String>) -> ImageError {
        ImageError::Format { source_name: source_name.to_string(), reason: reason.into() }
    }
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { what, path, source }
    }
}
