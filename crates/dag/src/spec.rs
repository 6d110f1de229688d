//! The DAG as typed values: jobs, references, outputs, requirements. [`crate::validate`] makes
//! them from a file, reporting every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::location::{S3Object, UploadTarget, UrlPin, redact};
use crate::record::DigestKind;
use crate::sorted_map::SortedMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dag {
    pub version: u32,
    pub jobs: Vec<Job>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub image: ImageRef,
    pub command: Vec<String>,
    /// Maps as sorted vectors: a DAG holds every job's for its whole run (see [`SortedMap`]).
    pub env: SortedMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub stdin: Option<InputRef>,
    pub inputs: SortedMap<String, InputRef>,
    pub outputs: SortedMap<String, OutputSpec>,
    pub requirements: Requirements,
    /// Where outputs are sent after the job succeeds, by output name. Not part of the action
    /// key: the destination does not change what the job computes.
    #[serde(default)]
    pub uploads: SortedMap<String, UploadTarget>,
}

/// Which image a job runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageRef {
    /// A tag in the local index, e.g. `busybox:1.35` or `registry:5000/name:tag`.
    Tag(String),
    /// An OCI manifest digest (64 hex digits).
    Sha256(String),
    /// shoal's own image id.
    Blake3(Hash),
    /// An OCI layout or archive produced by another job.
    Job { job: String, output: String },
}

/// Where an input comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRef {
    Blake3(Hash),
    Sha256(String),
    Job {
        job: String,
        output: String,
    },
    /// A host path, relative to the DAG file; hashed and stored when the DAG is run.
    File(String),
    /// The file or directory at `path` inside the tree `base` names (`blake3:<tree>/lib/a.c`,
    /// `jobs:<id>/<output>/dir`): only its bytes enter the job and its action key. `path` is
    /// relative and normalised (no `.`, `..`, empty components or trailing `/`).
    Path {
        base: Box<InputRef>,
        path: String,
    },
    /// The tree `base` names narrowed to the entries `include` matches (every one when empty) and
    /// `exclude` does not, each at its path (`{"tree": ..., "include": ["*.h"], "exclude":
    /// ["test/**"]}`); the action key covers the narrowed tree. Globs match paths relative to the
    /// tree: `*` and `?` within a component, `**` across them, `[...]` classes.
    Select {
        base: Box<InputRef>,
        include: Vec<String>,
        exclude: Vec<String>,
    },
    /// The bytes at an `https:`/`http:` URL, fetched by the node (never the job), checked
    /// against `pin` when there is one. A node pins an unpinned URL when the DAG is submitted or
    /// run, so the action key and the record name exact bytes.
    Url {
        url: String,
        pin: Option<UrlPin>,
    },
    /// An object the node reads with its own credentials.
    S3 {
        object: S3Object,
        pin: Option<UrlPin>,
    },
}

impl InputRef {
    /// The reference a sub-path or selection starts from (itself for the plain ones): what is
    /// fetched, pinned or waited for.
    pub fn root(&self) -> &InputRef {
        match self {
            InputRef::Path { base, .. } | InputRef::Select { base, .. } => base.root(),
            other => other,
        }
    }

    /// The `blake3:` hash this reference's bytes are known to have without fetching anything:
    /// a `blake3:` reference's, or a URL's or object's pinned by BLAKE3.
    pub fn known_blake3(&self) -> Option<Hash> {
        match self {
            InputRef::Blake3(h)
            | InputRef::Url { pin: Some(UrlPin::Blake3(h)), .. }
            | InputRef::S3 { pin: Some(UrlPin::Blake3(h)), .. } => Some(*h),
            _ => None,
        }
    }

    /// This reference with its [`root`](InputRef::root) replaced (pinning a `file:` tree under a
    /// selection to its `blake3:` hash).
    pub fn with_root(&self, root: InputRef) -> InputRef {
        match self {
            InputRef::Path { base, path } => {
                InputRef::Path { base: Box::new(base.with_root(root)), path: path.clone() }
            }
            InputRef::Select { base, include, exclude } => InputRef::Select {
                base: Box::new(base.with_root(root)),
                include: include.clone(),
                exclude: exclude.clone(),
            },
            _ => root,
        }
    }

    /// As a DAG file writes it: the reference's string, or a selection's object.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            InputRef::Select { base, include, exclude } => {
                let mut m = serde_json::Map::new();
                m.insert("tree".into(), base.to_json());
                if !include.is_empty() {
                    m.insert("include".into(), include.clone().into());
                }
                if !exclude.is_empty() {
                    m.insert("exclude".into(), exclude.clone().into());
                }
                serde_json::Value::Object(m)
            }
            other => serde_json::Value::String(other.to_string()),
        }
    }
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputRef::Blake3(h) => write!(f, "{h}"),
            InputRef::Sha256(hex) => write!(f, "sha256:{hex}"),
            InputRef::Job { job, output } => write!(f, "jobs:{job}/{output}"),
            InputRef::File(p) => write!(f, "file:{p}"),
            InputRef::Path { base, path } => write!(f, "{base}/{path}"),
            InputRef::Url { url, pin } => {
                f.write_str(&redact(url))?;
                pin.as_ref().map_or(Ok(()), |p| write!(f, "#{p}"))
            }
            InputRef::S3 { object, pin } => {
                write!(f, "{object}")?;
                pin.as_ref().map_or(Ok(()), |p| write!(f, "#{p}"))
            }
            InputRef::Select { base, include, exclude } => {
                write!(f, "{base} [include {}; exclude {}]", include.join(" "), exclude.join(" "))
            }
        }
    }
}

/// A declared output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputSpec {
    Stdout,
    Stderr,
    File(String),
    Dir(String),
    Glob(String),
    /// File descriptor N (3 to [`FD_OUTPUT_MAX`]) the sandbox opens for the job: what it
    /// writes there is the output, capped like stdout.
    Fd(u32),
}

/// The highest fd an `fd:N` output may name.
pub const FD_OUTPUT_MAX: u32 = 63;

impl OutputSpec {
    pub fn kind(&self) -> DigestKind {
        match self {
            OutputSpec::Stdout | OutputSpec::Stderr | OutputSpec::File(_) | OutputSpec::Fd(_) => DigestKind::File,
            OutputSpec::Dir(_) | OutputSpec::Glob(_) => DigestKind::Tree,
        }
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputSpec::Stdout => f.write_str("stdout"),
            OutputSpec::Stderr => f.write_str("stderr"),
            OutputSpec::File(p) => write!(f, "file:{p}"),
            OutputSpec::Dir(p) => write!(f, "dir:{p}"),
            OutputSpec::Glob(p) => write!(f, "glob:{p}"),
            OutputSpec::Fd(n) => write!(f, "fd:{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
    Riscv64,
}

impl Arch {
    /// As DAGs, images and `uname -m` say it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Riscv64 => "riscv64",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub count: u32,
    pub model: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    Vm,
    Namespace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    pub cores: u32,
    pub memory_bytes: u64,
    pub arch: Option<Arch>,
    pub cpu_flags: Vec<String>,
    pub gpu: Option<Gpu>,
    pub network: bool,
    pub scratch_bytes: u64,
    pub output_bytes_max: u64,
    pub timeout_ms: u64,
    /// Most processes and threads the job may have at once (a fork bomb stops there).
    #[serde(default = "default_pids_max")]
    pub pids_max: u32,
    /// None: the run's default (a microVM). `Some(Vm)`: never the namespace backend.
    /// `Some(Namespace)`: the lighter sandbox is fine.
    pub isolation: Option<Isolation>,
    pub labels: BTreeMap<String, String>,
}

impl Default for Requirements {
    fn default() -> Self {
        Requirements {
            cores: 1,
            memory_bytes: 512 << 20,
            arch: None,
            cpu_flags: Vec::new(),
            gpu: None,
            network: false,
            scratch_bytes: 1 << 30,
            output_bytes_max: 1 << 30,
            timeout_ms: 3_600_000,
            pids_max: PIDS_MAX_DEFAULT,
            isolation: None,
            labels: BTreeMap::new(),
        }
    }
}

impl Dag {
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// Indices of the jobs `idx` reads from (inputs, stdin, image), each once, ascending.
    pub fn dependencies(&self, idx: usize) -> Vec<usize> {
        self.deps_with(&self.id_index(), idx)
    }

    /// [`Dag::dependencies`] of every job, the id index built once (a 1000-job DAG would build
    /// it a thousand times).
    pub fn all_dependencies(&self) -> Vec<Vec<usize>> {
        let index = self.id_index();
        (0..self.jobs.len()).map(|i| self.deps_with(&index, i)).collect()
    }

    fn id_index(&self) -> BTreeMap<&str, usize> {
        self.jobs.iter().enumerate().map(|(i, j)| (j.id.as_str(), i)).collect()
    }

    fn deps_with(&self, index: &BTreeMap<&str, usize>, idx: usize) -> Vec<usize> {
        job_refs(&self.jobs[idx])
            .iter()
            .filter_map(|(id, _)| index.get(id.as_str()).copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Every job after the jobs it depends on; among jobs ready at once, file order.
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.jobs.len();
        let deps = self.all_dependencies();
        let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut dependants = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependants[d].push(i);
            }
        }
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &d in &dependants[i] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        order
    }
}

/// (job id, output name) of every `jobs:` reference a job makes.
pub(crate) fn job_refs(job: &Job) -> Vec<(String, String)> {
    let mut refs = Vec::new();
    if let ImageRef::Job { job, output } = &job.image {
        refs.push((job.clone(), output.clone()));
    }
    for input in job.inputs.values().chain(job.stdin.iter()) {
        if let InputRef::Job { job, output } = input.root() {
            refs.push((job.clone(), output.clone()));
        }
    }
    refs
}

/// The `pids` requirement when a job names none: processes and threads at once.
pub const PIDS_MAX_DEFAULT: u32 = 1024;

fn default_pids_max() -> u32 {
    PIDS_MAX_DEFAULT
}
