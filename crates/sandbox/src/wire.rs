//! Messages between the host and the sandbox helper.
//!
//! The host writes a [`HelperRequest`] as JSON into a memfd the helper inherits as fd 5 and
//! passes `/proc/self/fd/5` as the helper's last argument (any readable path serves). The
//! helper inherits: fd 0 = the job's stdin, fd 1/2 = pipes the host reads, fd [`STATUS_FD`] =
//! a pipe for one JSON [`Status`] line, fd [`TAR_FD`] = a pipe for the output tar (see
//! [`crate::collect`]).
//!
//! [`JobSpec`] and [`Status`] do not mention host paths or namespaces: guest-init receives a
//! `JobSpec` (inside [`crate::disk::GuestRequest`]) and runs this same helper.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Exit, InputMount, Limits, OutputSpec};

/// Inherited fd of the status pipe in the helper.
pub const STATUS_FD: i32 = 3;
/// Inherited fd of the output tar pipe in the helper.
pub const TAR_FD: i32 = 4;
/// Inherited fd of the start gate in the helper (with [`HelperRequest::gated`]): PID 1 reads
/// one byte from it before it starts the job.
pub const GATE_FD: i32 = 6;
/// Bound on the status line the host reads.
pub const STATUS_BYTES_MAX: u64 = 1 << 20;

/// What to run inside a prepared root; the same for every backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
    pub outputs: BTreeMap<String, OutputSpec>,
    pub limits: Limits,
    pub network: bool,
}

impl JobSpec {
    /// The part of a request that says what to run, without host paths.
    pub fn of(req: &crate::Request) -> JobSpec {
        JobSpec {
            argv: req.argv.clone(),
            env: req.env.clone(),
            workdir: req.workdir.clone(),
            uid: req.uid,
            gid: req.gid,
            outputs: req.outputs.clone(),
            limits: req.limits,
            network: req.network,
        }
    }
}

/// How user and group ids of the sandbox map onto the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdMap {
    /// Container ids `0..count` are host ids `0..count`. Used when the caller is host root:
    /// a file the image owns as uid 1000 must still be owned by 1000 inside, and the job may
    /// run as any uid the image uses. Host root inside the sandbox is fenced by the user
    /// namespace (no capabilities over host objects), the mount namespace and the read-only
    /// lower layer; files created on tmpfs never reach the host except through the tar.
    Identity { count: u32 },
    /// Only container 0 -> the caller's own uid/gid (an unprivileged caller may map nothing
    /// else); the job must then run as 0.
    Single { host_uid: u32, host_gid: u32 },
}

/// Everything the namespace helper needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperRequest {
    pub job: JobSpec,
    /// Read-only lower layer of the overlay.
    pub rootfs: PathBuf,
    pub inputs: Vec<InputMount>,
    /// See [`crate::Request::host_mounts`].
    #[serde(default)]
    pub host_mounts: Vec<crate::HostMount>,
    /// An empty host directory the sandbox mounts its staging tmpfs on.
    pub staging_dir: PathBuf,
    /// cgroup v1 `tasks` files the helper writes `0` into, joining the job's cgroups itself
    /// before it forks PID 1 (see [`crate::cgroup::Cgroup::join_files`]).
    #[serde(default)]
    pub cgroup_tasks: Vec<PathBuf>,
    /// `cgroup.procs` files the helper writes PID 1's pid into before releasing it (v2).
    pub cgroup_procs: Vec<PathBuf>,
    pub id_map: IdMap,
    /// PID 1 reports [`Status::Ready`] once the root is built and waits on [`GATE_FD`] for the
    /// go-ahead (the host holds the job's cores only from then on).
    #[serde(default)]
    pub gated: bool,
    /// PID 1 stays after its report, every fd of it closed, and the helper with it: for a
    /// caller that discards the whole machine next (a microVM's guest-init powers off), which
    /// then never waits for the kernel's teardown of the sandbox's namespaces (40 ms under TCG).
    #[serde(default)]
    pub linger: bool,
}

/// The one status line the sandbox writes after the job (or instead of it), after a `Ready`
/// line when the request is gated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The root is built; PID 1 waits for the go-ahead on [`GATE_FD`].
    Ready,
    /// The job ran (or was killed at its timeout); outputs follow or preceded on the tar fd.
    Finished(Finished),
    /// The sandbox could not be built; nothing ran.
    SetupFailed { message: String },
    /// PID 1 of the sandbox died without reporting (written by the helper).
    Pid1Died { signal: Option<i32>, code: Option<i32> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub exit: Exit,
    pub user_ms: u64,
    pub sys_ms: u64,
    /// Largest max RSS among waited children.
    pub max_rss_bytes: u64,
    /// Bytes in the collected tar's files (and headers).
    pub output_bytes: u64,
}
