//! The namespace backend: `shoal-sandbox`'s [`NamespaceBackend`] as a [`Backend`], the output
//! tar unpacked (and checked) into `work_dir/outputs` as it streams.

use std::collections::BTreeMap;

use shoal_sandbox::namespace::make_private_dir;

use crate::{Backend, NamespaceBackend, Outcome, Request, RunError, collect};

impl Backend for NamespaceBackend {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn run(&self, req: Request) -> Result<Outcome, RunError> {
        run_job(self, req, None)
    }

    fn run_gated(&self, req: Request, gate: &mut dyn FnMut()) -> Result<Outcome, RunError> {
        run_job(self, req, Some(gate))
    }
}
/// Runs the job with its outputs unpacked into `work_dir/outputs`; a successful job whose output
/// stream does not unpack is a machinery failure, a failed one keeps what it has.
fn run_job(backend: &NamespaceBackend, req: Request, gate: Option<&mut dyn FnMut()>) -> Result<Outcome, RunError> {
    let span = tracing::info_span!("vm", backend = "namespace");
    let _enter = span.enter();
    let outputs_dir = req.work_dir.join("outputs");
    make_private_dir(&outputs_dir)?;

    let specs = req.outputs.clone();
    let raw = backend.run_streaming(&req, move |tar| collect::unpack(tar, &outputs_dir, &specs), gate)?;
    let outputs = match raw.outputs {
        Ok(o) => o,
        Err(e) if raw.exit.success() => return Err(RunError::Helper(e.to_string())),
        Err(e) => {
            tracing::debug!("outputs of a failed job not unpacked: {e}");
            BTreeMap::new()
        }
    };
    Ok(Outcome {
        exit: raw.exit,
        stdout: raw.stdout,
        stderr: raw.stderr,
        outputs,
        wall_ms: raw.wall_ms,
        user_ms: raw.user_ms,
        sys_ms: raw.sys_ms,
        peak_memory_bytes: raw.peak_memory_bytes,
        backend: "namespace".into(),
        accelerator: None,
        vm: None,
    })
}
