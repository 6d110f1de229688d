//! Stand-ins for the `shoal-dag` types this crate needs, with the names and shapes of
//! docs/CONTRACTS.md, until shoal-dag's own types land. Delete this module and re-export
//! `shoal_dag::{Exit, OutputSpec}` in lib.rs then.

use serde::{Deserialize, Serialize};

/// A declared output: what the job leaves behind and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputSpec {
    /// The job's standard output (collected by the host).
    Stdout,
    /// The job's standard error (collected by the host).
    Stderr,
    /// One regular file at an absolute path under /output or /scratch.
    File(String),
    /// A directory tree.
    Dir(String),
    /// Every match of a glob pattern, as one tree relative to the pattern's fixed prefix.
    Glob(String),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Timeout,
    Oom,
    OutputTooLarge { output: String, limit_bytes: u64 },
    Error(String),
}

impl Exit {
    /// True only for exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }
}
