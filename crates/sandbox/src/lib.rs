//! What the host and the microVM's guest share to run one job in isolation: the namespace
//! sandbox, its output collector, job cgroups, the messages between them, and the disks that
//! carry a job into a microVM and its results out. `shoal-vm` (the host's backends) and
//! `guest-init` (PID 1 of the microVM, and the namespace backend's helper) both build on it;
//! it knows nothing of QEMU, the warm pool or the store.
//!
//! # Layout
//!
//! - [`Request`], [`Limits`], [`Captured`], [`CollectedOutput`], [`RunError`] (this file): one
//!   job to run, what a run captured, and how the machinery fails.
//! - [`namespace`]: runs a job in the sandbox from the outside ([`NamespaceBackend`]). It
//!   starts the helper (`posix_spawn` of a [`HelperCommand`], or a fork of a single-threaded
//!   guest-init), feeds it the request, reads stdout/stderr/outputs/status from pipes, enforces
//!   the outer timeout and owns the job's cgroup. The result is a [`RawRun`] whose output tar
//!   went to a caller-chosen sink.
//! - [`sandbox`]: the helper process ([`sandbox_helper_main`]). Single-threaded; it clones
//!   PID 1 of the new namespaces, which builds the root (overlay, /dev, /proc, /input,
//!   /output, /scratch), runs the job, enforces the timeout and collects the outputs.
//! - [`collect`]: the output collector: a root directory + output specs -> one tar stream
//!   (inside the sandbox), and [`collect::unpack`], which checks and unpacks it (the host).
//! - [`wire`]: the messages between the runner and the helper (request, status line).
//! - [`disk`]: the microVM's request and reply disks (header + JSON + data) and the layout of
//!   the initramfs that guest-init reads.
//! - [`cgroup`]: per-job cgroups, v2 or v1 (memory, cpu, pids), peak memory and OOM kills.
//! - [`sys`]: the few raw syscalls nix does not wrap (clone without a stack, pidfds, spawn).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod cgroup;
pub mod collect;
pub mod disk;
pub mod namespace;
pub mod sandbox;
pub mod sys;
pub mod wire;

pub use namespace::{HelperCommand, NamespaceBackend, ProbeError, RawRun};
pub use sandbox::sandbox_helper_main;
pub use shoal_dag::{Exit, OutputSpec};

/// One job to run. Paths are host paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Materialized image root, the read-only lower layer (never written).
    pub rootfs: PathBuf,
    /// Program and arguments; `argv[0]` without a `/` is looked up in the job's `PATH`
    /// (or the usual system directories when the job has none).
    pub argv: Vec<String>,
    /// Exactly the environment the job gets: nothing from the host is added.
    pub env: Vec<(String, String)>,
    /// Absolute working directory inside the sandbox.
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
    /// Host file fed as the job's stdin (otherwise /dev/null).
    pub stdin: Option<PathBuf>,
    /// Appear read-only at `/input/<name>`.
    pub inputs: Vec<InputMount>,
    /// Declared outputs by name.
    pub outputs: BTreeMap<String, OutputSpec>,
    pub limits: Limits,
    /// false: own network namespace with only `lo`; true: the host network (weaker).
    pub network: bool,
    /// A fresh host directory the backend may use; the caller deletes it.
    pub work_dir: PathBuf,
    /// Host device nodes and files shown at their own paths (a GPU's nodes, its driver's
    /// libraries: see [`HostMount`]); the namespace sandbox only.
    #[serde(default)]
    pub host_mounts: Vec<HostMount>,
    /// Host PCI devices passed whole to the job's microVM by VFIO (a GPU bound to vfio-pci);
    /// the microVM backend only: the namespace sandbox refuses a request that has any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci_devices: Vec<PciDevice>,
}

/// A host PCI device bound to vfio-pci, as QEMU's `-device vfio-pci,host=` takes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PciDevice {
    /// Its address, `domain:bus:device.function` (`0000:01:00.0`).
    pub address: String,
    /// Its IOMMU group (`/dev/vfio/<group>`), which only it and devices no one uses are in.
    pub group: u32,
}

impl PciDevice {
    /// Whether `address` is a PCI address as sysfs spells it: `0000:01:00.0` (hex digits), nothing
    /// QEMU's option parser would read otherwise (no `,`).
    pub fn valid_address(address: &str) -> bool {
        let b = address.as_bytes();
        b.len() == 12
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b':',
                10 => *c == b'.',
                11 => (b'0'..=b'7').contains(c),
                _ => c.is_ascii_hexdigit(),
            })
    }
}

/// A host file shown in the sandbox at `path` (absolute): a device node (usable: the sandbox's
/// `/dev` allows devices) or, read-only, a file such as a GPU driver's library. A symlink is made
/// again as a symlink with the same target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMount {
    pub host_path: PathBuf,
    pub path: String,
    /// A device node: bound as it is (not read-only).
    pub device: bool,
}

/// A host file or directory shown read-only at `/input/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputMount {
    pub name: String,
    pub host_path: PathBuf,
}

/// Resource bounds of one job. Units are in the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU quota: `cores` x 100 ms per 100 ms.
    pub cores: u32,
    /// Memory of everything in the sandbox, tmpfs pages included.
    pub memory_bytes: u64,
    /// Size of the `/scratch` tmpfs.
    pub scratch_bytes: u64,
    /// Total size of the collected outputs (and of the `/output` tmpfs).
    pub output_bytes_max: u64,
    /// Cap on each of stdout and stderr.
    pub stdout_bytes_max: u64,
    pub timeout_ms: u64,
    /// Most processes and threads in the sandbox at once (cgroup `pids.max`).
    #[serde(default = "default_pids_max")]
    pub pids_max: u32,
}

fn default_pids_max() -> u32 {
    shoal_dag::PIDS_MAX_DEFAULT
}

impl Limits {
    /// Bound on a run's output tar stream: twice the output limit plus 64 MiB of tar headers. The
    /// collector enforces the output limit inside the sandbox; this only stops a stream gone wrong.
    pub fn output_stream_bytes_max(&self) -> u64 {
        self.output_bytes_max.saturating_mul(2).saturating_add(64 << 20)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cores: 1,
            memory_bytes: 512 << 20,
            scratch_bytes: 1 << 30,
            output_bytes_max: 1 << 30,
            stdout_bytes_max: 64 << 20,
            timeout_ms: 3_600_000,
            pids_max: shoal_dag::PIDS_MAX_DEFAULT,
        }
    }
}

/// A job's stdout or stderr: in memory while small, in a file of the job's work directory past
/// [`Captured::MEMORY_BYTES_MAX`] (a job writing gigabytes never has them in the runner's memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    Bytes(Vec<u8>),
    File { path: PathBuf, len: u64 },
}

impl Default for Captured {
    fn default() -> Self {
        Captured::Bytes(Vec::new())
    }
}

impl Captured {
    /// Bytes kept in memory before the stream goes to a file.
    pub const MEMORY_BYTES_MAX: usize = 1 << 20;

    pub fn len(&self) -> u64 {
        match self {
            Captured::Bytes(b) => b.len() as u64,
            Captured::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All of it in memory (tests, small streams); a file that cannot be read gives what could.
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Captured::Bytes(b) => b.clone(),
            Captured::File { path, .. } => std::fs::read(path).unwrap_or_default(),
        }
    }

    /// Its last `max` bytes at most (for a failed job's stderr tail).
    pub fn tail(&self, max: u64) -> Vec<u8> {
        match self {
            Captured::Bytes(b) => b[b.len().saturating_sub(max as usize)..].to_vec(),
            Captured::File { path, len } => {
                use std::io::{Read, Seek, SeekFrom};
                let mut out = Vec::new();
                if let Ok(mut f) = std::fs::File::open(path)
                    && f.seek(SeekFrom::Start(len.saturating_sub(max))).is_ok()
                {
                    let _ = f.take(max).read_to_end(&mut out);
                }
                out
            }
        }
    }

    /// Copies it to `w`.
    pub fn copy_to(&self, w: &mut impl std::io::Write) -> std::io::Result<u64> {
        match self {
            Captured::Bytes(b) => w.write_all(b).map(|()| b.len() as u64),
            Captured::File { path, .. } => std::io::copy(&mut std::fs::File::open(path)?, w),
        }
    }
}

/// One collected output on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectedOutput {
    /// A regular file (a `file:` output).
    File(PathBuf),
    /// A directory holding the tree (a `dir:` or `glob:` output).
    Dir(PathBuf),
}

/// Failures of the machinery, not of the job: a job that exits non-zero, times out, runs out
/// of memory or writes too much is a normal result ([`RawRun`], `shoal_vm::Outcome`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The request itself cannot be run as given.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The image root filesystem is not where the request says.
    #[error("rootfs {path} is missing or not a directory: materialize the image first")]
    RootfsMissing { path: PathBuf },
    /// The sandbox helper program could not be started.
    #[error(
        "cannot start the sandbox helper {program}: {source} (build it with `cargo build -p shoal-vm --bin shoal-sandbox`, or run `shoal __sandbox` from the shoal binary)"
    )]
    HelperSpawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The helper could not build the sandbox (namespaces, mounts, ...).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The helper died or spoke nonsense.
    #[error("sandbox helper failed: {0}")]
    Helper(String),
    /// What came back does not read: a region of a microVM's reply disk (its header, stdout,
    /// stderr) is missing, out of bounds or malformed.
    #[error("the reply does not read: {what}: {source}")]
    Reply {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Host-side I/O around the run (pipes, work_dir, unpacking outputs).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// An I/O failure around the run, named by what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> RunError {
        RunError::Io { what: what.into(), source }
    }
}
