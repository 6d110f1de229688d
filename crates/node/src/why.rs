//! `shoal why JOB`: why a job's action key differs from another run's, the last run of the same
//! job id by default. The two records' resolved jobs are compared part by part, as the action key
//! hashes them: the image (the files of its root filesystem that differ), each input and stdin
//! (for trees, the files that differ), the command, the environment, the workdir and user, the
//! declared outputs, and the requirements the key covers (arch, CPU flags, network).

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use shoal_blobs::Store;
use shoal_blobs::tree::{EntryKind, Tree};
use shoal_dag::{Digest, DigestKind, Hash, ResolvedJob, RunRecord};

/// Paths listed per changed tree; the rest are counted.
const PATHS_SHOWN_MAX: usize = 20;

/// One part of the action that differs, with what differs in it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    /// `image`, `command`, `env`, `input <name>`, `stdin`, `outputs`, `arch`, ...
    pub part: String,
    /// One line each: `FOO: "1" → "2"`, `~ lib/a.c` (changed), `+ new.h` (added), `- old.h`.
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Why {
    pub job: String,
    pub record: Hash,
    pub against: Hash,
    pub action_key: Hash,
    pub against_action_key: Hash,
    pub changes: Vec<Change>,
}

impl Why {
    /// The explanation as a short tree.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.action_key == self.against_action_key {
            out.push_str(&format!(
                "job `{}`: the same action as run {} ({}): the cache answers one with the other's result\n",
                self.job,
                self.against.short(),
                self.action_key.short()
            ));
            return out;
        }
        out.push_str(&format!(
            "job `{}`: action {} (run {}) differs from {} (run {}) in {} part(s):\n",
            self.job,
            self.action_key.short(),
            self.record.short(),
            self.against_action_key.short(),
            self.against.short(),
            self.changes.len()
        ));
        for (i, c) in self.changes.iter().enumerate() {
            let last = i + 1 == self.changes.len();
            out.push_str(&format!("{} {}\n", if last { "└─" } else { "├─" }, c.part));
            for (j, d) in c.details.iter().enumerate() {
                let bar = if last { "   " } else { "│  " };
                let end = if j + 1 == c.details.len() { "└─" } else { "├─" };
                out.push_str(&format!("{bar}{end} {d}\n"));
            }
        }
        out
    }
}

/// What a run is compared with.
pub enum Against {
    /// A record in this store.
    Record(Hash),
    /// The job's record in a provenance commit (verified when the commit was read).
    Committed { record: Box<RunRecord>, hash: Option<Hash>, commit: String },
}

/// Why the latest run of `job` differs from `against`, or from the run of the same job before it.
pub async fn why(store: &Store, job: &str, against: Option<Against>) -> Result<Why> {
    let record = store.latest_record_for_job(job)?.ok_or_else(|| {
        anyhow!("no run of a job `{job}` is recorded here; run a DAG with `shoal run DAG.json` first")
    })?;
    let a = load(store, record).await?;
    let (against, b) = match against {
        Some(Against::Record(h)) => (h, load(store, h).await.with_context(|| format!("the run to compare with, {h}"))?),
        Some(Against::Committed { record, hash, commit }) => {
            let hash = hash.ok_or_else(|| anyhow!("commit {commit} names no record of job `{job}`"))?;
            (hash, *record)
        }
        None => {
            let h = store.previous_record_for_job(job)?.ok_or_else(|| {
                anyhow!(
                    "job `{job}` has one recorded run here ({}); run it again after a change, or compare with \
                     another run: `shoal why {job} --against blake3:<record>` or `--against REPO@COMMIT`",
                    record.short()
                )
            })?;
            (h, load(store, h).await.with_context(|| format!("the run to compare with, {h}"))?)
        }
    };
    let changes = diff(store, &a.job, &b.job).await?;
    Ok(Why {
        job: job.to_string(),
        record,
        against,
        action_key: a.action_key,
        against_action_key: b.action_key,
        changes,
    })
}

async fn load(store: &Store, hash: Hash) -> Result<RunRecord> {
    let signed = store.get_record(hash).await?.ok_or_else(|| anyhow!("no run record {hash} is stored here"))?;
    Ok(signed.record_trusted()?)
}

/// The parts of `a` that differ from `b` (`a` the newer).
pub async fn diff(store: &Store, a: &ResolvedJob, b: &ResolvedJob) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    let mut simple = |part: &str, x: String, y: String| {
        if x != y {
            changes.push(Change { part: part.into(), details: vec![format!("{y} → {x}")] });
        }
    };
    simple("command", format!("{:?}", a.command), format!("{:?}", b.command));
    simple("workdir", format!("{:?}", a.workdir), format!("{:?}", b.workdir));
    simple("user", format!("{:?}", a.user), format!("{:?}", b.user));
    simple("arch", format!("{:?}", a.arch), format!("{:?}", b.arch));
    simple("cpu_flags", format!("{:?}", a.cpu_flags), format!("{:?}", b.cpu_flags));
    simple("network", a.network.to_string(), b.network.to_string());
    let env = map_diff(&a.env, &b.env, |v| format!("{v:?}"));
    if !env.is_empty() {
        changes.push(Change { part: "env".into(), details: env });
    }
    let outputs = map_diff(&a.outputs, &b.outputs, |v| v.to_string());
    if !outputs.is_empty() {
        changes.push(Change { part: "outputs".into(), details: outputs });
    }
    if a.image != b.image {
        let details = match (image_root(store, a.image).await, image_root(store, b.image).await) {
            (Some(x), Some(y)) => {
                let mut d = tree_diff(store, x, y).await?;
                if d.is_empty() {
                    d.push("the same files; its configuration differs".into());
                }
                d
            }
            _ => vec![format!("{} → {} (not both stored here: files not compared)", b.image.short(), a.image.short())],
        };
        changes.push(Change { part: format!("image ({} → {})", b.image.short(), a.image.short()), details });
    }
    let names: std::collections::BTreeSet<&String> = a.inputs.keys().chain(b.inputs.keys()).collect();
    for name in names {
        if let Some(c) = input_diff(store, &format!("input `{name}`"), a.inputs.get(name), b.inputs.get(name)).await? {
            changes.push(c);
        }
    }
    if let Some(c) = input_diff(store, "stdin", a.stdin.as_ref(), b.stdin.as_ref()).await? {
        changes.push(c);
    }
    Ok(changes)
}

fn map_diff<V: PartialEq>(
    a: &std::collections::BTreeMap<String, V>,
    b: &std::collections::BTreeMap<String, V>,
    show: impl Fn(&V) -> String,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (b.get(k), a.get(k)) {
            (Some(x), Some(y)) if x != y => Some(format!("{k}: {} → {}", show(x), show(y))),
            (None, Some(y)) => Some(format!("+ {k}: {}", show(y))),
            (Some(x), None) => Some(format!("- {k}: {}", show(x))),
            _ => None,
        })
        .collect()
}

async fn input_diff(store: &Store, part: &str, a: Option<&Digest>, b: Option<&Digest>) -> Result<Option<Change>> {
    let details = match (a, b) {
        (Some(x), Some(y)) if x.hash == y.hash => return Ok(None),
        (Some(x), Some(y)) if x.kind == DigestKind::Tree && y.kind == DigestKind::Tree => {
            if store.has(x.hash).await? && store.has(y.hash).await? {
                tree_diff(store, x.hash, y.hash).await?
            } else {
                vec![format!("{} → {} (not both stored here: files not compared)", y.hash.short(), x.hash.short())]
            }
        }
        (Some(x), Some(y)) => vec![format!("{} ({} B) → {} ({} B)", y.hash.short(), y.size, x.hash.short(), x.size)],
        (Some(x), None) => vec![format!("+ {}", x.hash.short())],
        (None, Some(y)) => vec![format!("- {}", y.hash.short())],
        (None, None) => return Ok(None),
    };
    Ok(Some(Change { part: part.into(), details }))
}

async fn image_root(store: &Store, image: Hash) -> Option<Hash> {
    store.get_image(image).await.ok().flatten().map(|i| i.rootfs)
}

/// The paths that differ between trees `a` (newer) and `b`: `~` changed, `+` only in `a`, `-`
/// only in `b`; at most [`PATHS_SHOWN_MAX`], then a count of the rest.
pub async fn tree_diff(store: &Store, a: Hash, b: Hash) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut more = 0usize;
    let mut stack = vec![(String::new(), a, b)];
    while let Some((prefix, x, y)) = stack.pop() {
        let (tx, ty) = (read_tree(store, x).await?, read_tree(store, y).await?);
        let names: std::collections::BTreeSet<&str> =
            tx.entries.iter().chain(ty.entries.iter()).map(|e| e.name.as_str()).collect();
        let mut report = |line: String| {
            if out.len() < PATHS_SHOWN_MAX {
                out.push(line);
            } else {
                more += 1;
            }
        };
        for name in names.into_iter().rev() {
            let path = format!("{prefix}{name}");
            match (tx.get(name), ty.get(name)) {
                (Some(ex), Some(ey)) if ex == ey => {}
                (Some(ex), Some(ey)) => match (&ex.kind, &ey.kind) {
                    (EntryKind::Dir { hash: hx }, EntryKind::Dir { hash: hy }) if hx != hy => {
                        stack.push((format!("{path}/"), *hx, *hy))
                    }
                    _ if ex.kind == ey.kind => report(format!("~ {path} (mode {:o} → {:o})", ey.mode, ex.mode)),
                    _ => report(format!("~ {path}")),
                },
                (Some(_), None) => report(format!("+ {path}")),
                (None, Some(_)) => report(format!("- {path}")),
                (None, None) => {}
            }
        }
    }
    out.sort_by(|p, q| p[2..].cmp(&q[2..]));
    if more > 0 {
        out.push(format!("… and {more} more"));
    }
    Ok(out)
}

async fn read_tree(store: &Store, hash: Hash) -> Result<Tree> {
    let bytes = store.need_bytes(hash).await?;
    Tree::decode(&bytes).map_err(|e| anyhow!("the stored tree {hash} does not decode: {e}"))
}
