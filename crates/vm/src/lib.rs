//! Job execution backends for shoal: run one job in isolation, return its exit, stdout,
//! stderr, outputs and measurements.
//!
//! # Layout
//!
//! - [`Backend`], [`Outcome`] (this file): the contract every backend implements. Backends
//!   block; async callers use `spawn_blocking`. A job ([`Request`]) and the machinery's errors
//!   ([`RunError`]) are `shoal-sandbox`'s, re-exported here with the sandbox's other types.
//! - [`namespace`]: the namespace backend: [`NamespaceBackend`] (`shoal-sandbox`'s runner) as a
//!   [`Backend`], its outputs unpacked into the job's work directory.
//! - [`microvm`]: the microVM backend (QEMU `microvm`, KVM or TCG): the backend in
//!   `microvm`, its warm pool, host probe and QEMU command line beside it, the guest kernel and
//!   initramfs in `kernel` and `initramfs`. The guest's side (PID 1) is crates/guest-init; the
//!   disks between them are [`shoal_sandbox::disk`].
//! - `sys`: the host side's few raw calls (QEMU's parent-death signal, the TSC), the only
//!   `unsafe` here.

use std::collections::BTreeMap;

pub mod microvm;
pub mod namespace;
mod sys;

pub use microvm::{MicrovmBackend, MicrovmConfig};
pub use shoal_sandbox::{
    Captured, CollectedOutput, Exit, HelperCommand, HostMount, InputMount, Limits, NamespaceBackend, OutputSpec,
    PciDevice, RawRun, Request, RunError, cgroup, collect, sandbox_helper_main, wire,
};

/// What a run produced. A job that failed is still an `Outcome`; see `exit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    pub stdout: Captured,
    pub stderr: Captured,
    /// Collected outputs by name (stdout/stderr outputs are in `stdout`/`stderr`, not here);
    /// paths are inside `work_dir/outputs`.
    pub outputs: BTreeMap<String, CollectedOutput>,
    pub wall_ms: u64,
    pub user_ms: u64,
    pub sys_ms: u64,
    /// cgroup peak when cgroups are available, else the largest child's max RSS.
    pub peak_memory_bytes: u64,
    /// `namespace`, `microvm`.
    pub backend: String,
    /// `kvm` or `tcg` for the microVM; None for the namespace backend.
    pub accelerator: Option<String>,
    /// QEMU, guest kernel and boot timeline, for the microVM backend.
    pub vm: Option<microvm::VmDetails>,
}

/// A backend runs jobs. Blocking; dyn-compatible.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn run(&self, req: Request) -> Result<Outcome, RunError>;
    /// [`Backend::run`], calling `gate` once right before the job starts (the caller takes the
    /// job's cores there). A backend that builds its sandbox first calls it when the sandbox
    /// is ready; by default it is called at once.
    fn run_gated(&self, req: Request, gate: &mut dyn FnMut()) -> Result<Outcome, RunError> {
        gate();
        self.run(req)
    }
}
