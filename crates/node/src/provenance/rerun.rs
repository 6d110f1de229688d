//! `shoal rerun REPO[@COMMIT]`: run what a commit's `pinned.json` says, then compare each output
//! with the one recorded and each fact of the machine with the recorded machine's.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use shoal_blobs::Store;
use shoal_dag::{Dag, Hash, InputRef, Machine, RunRecord};

use super::Committed;

/// The DAG of a commit as a rerun runs it: `pinned.json` without its uploads (a rerun checks
/// results; it does not publish them again).
pub fn rerun_dag_text(committed: &Committed) -> Result<String> {
    let mut value: serde_json::Value = serde_json::from_str(&committed.pinned)?;
    if let Some(jobs) = value.get_mut("jobs").and_then(serde_json::Value::as_array_mut) {
        for job in jobs {
            if let Some(obj) = job.as_object_mut() {
                obj.remove("upload");
            }
        }
    }
    let mut text = serde_json::to_string_pretty(&value)?;
    text.push('\n');
    Ok(text)
}

/// Parses a commit's DAG, located in `pinned.json` of that commit.
pub fn parse(committed: &Committed, text: &str) -> Result<Dag> {
    shoal_dag::parse_dag(&format!("{}@{}", super::PINNED, &committed.id[..12]), text).map_err(|d| anyhow!("{d}"))
}

/// Every blob the pinned DAG names that this store lacks: (what, hash). A rerun without a mesh
/// to fetch them from cannot start without them.
pub async fn missing_blobs(store: &Store, dag: &Dag) -> Result<Vec<(String, Hash)>> {
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for job in &dag.jobs {
        if let shoal_dag::ImageRef::Blake3(id) = &job.image
            && seen.insert(*id)
            && !store.has(*id).await?
        {
            missing.push((format!("the image of job `{}`", job.id), *id));
        }
        for (name, input) in job.inputs.iter() {
            if let Some(h) = input.known_blake3().or(match input {
                InputRef::Path { .. } | InputRef::Select { .. } => input.root().known_blake3(),
                _ => None,
            }) && seen.insert(h)
                && !store.has(h).await?
            {
                missing.push((format!("input `{name}` of job `{}`", job.id), h));
            }
        }
        if let Some(h) = job.stdin.as_ref().and_then(InputRef::known_blake3)
            && seen.insert(h)
            && !store.has(h).await?
        {
            missing.push((format!("the stdin of job `{}`", job.id), h));
        }
    }
    Ok(missing)
}

/// The error for blobs nowhere to be had.
pub fn missing_error(missing: &[(String, Hash)]) -> anyhow::Error {
    let list: Vec<String> = missing.iter().map(|(what, h)| format!("  {h} ({what})")).collect();
    anyhow!(
        "{} blob(s) the commit names are not in this store:\n{}\nrun it where they are, fetch them from a mesh \
         (`shoal rerun REPO@COMMIT --join <peer multiaddr>`), or import the image and `shoal blob put` the inputs",
        missing.len(),
        list.join("\n")
    )
}

/// One output compared.
#[derive(Debug, Clone, Serialize)]
pub struct OutputCompared {
    pub job: String,
    pub output: String,
    pub recorded: Option<Hash>,
    pub now: Option<Hash>,
    pub equal: bool,
}

/// One machine fact compared (for the machine of each job's recorded run).
#[derive(Debug, Clone, Serialize)]
pub struct FactCompared {
    pub fact: String,
    pub recorded: String,
    pub now: String,
    pub equal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    pub commit: String,
    pub outputs: Vec<OutputCompared>,
    pub machine: Vec<FactCompared>,
    /// Jobs that did not finish this time: (job, why).
    pub failed: Vec<(String, String)>,
    /// Every output equal and every job done.
    pub matched: bool,
    /// The facts that differ and can change results: kernel, CPU flags, accelerator, arch.
    pub warnings: Vec<String>,
}

/// Facts, as (name, text), in the order the table shows them.
fn facts(m: &Machine) -> Vec<(&'static str, String)> {
    vec![
        ("arch", m.arch.clone()),
        ("kernel", m.kernel.clone()),
        ("kernel config", m.kernel_config.map(|h| h.short().to_string()).unwrap_or_else(|| "-".into())),
        ("cpu", m.cpu_model.clone()),
        ("cpu flags", format!("{} flags", m.cpu_flags.len())),
        ("cores", m.cores.to_string()),
        ("memory", crate::output::bytes(m.memory_bytes)),
        ("backend", m.backend.clone()),
        ("accelerator", m.accelerator.clone().unwrap_or_else(|| "-".into())),
        ("guest kernel", m.guest_kernel.clone().unwrap_or_else(|| "-".into())),
        ("shoal", m.shoal_version.clone().unwrap_or_else(|| "-".into())),
    ]
}

/// The facts whose difference can change a result, named in a warning.
const WARNED_FACTS: &[&str] = &["arch", "kernel", "kernel config", "cpu flags", "accelerator", "guest kernel"];

/// Compares the rerun's records (`now`, by job) with the commit's.
pub fn compare(committed: &Committed, now: &BTreeMap<String, RunRecord>, failed: Vec<(String, String)>) -> Compared {
    let mut outputs = Vec::new();
    for job in &committed.run.jobs {
        let recorded = committed.records.get(&job.job);
        let rerun = now.get(&job.job);
        let names: BTreeSet<&String> =
            recorded.iter().flat_map(|r| r.outputs.keys()).chain(rerun.iter().flat_map(|r| r.outputs.keys())).collect();
        for name in names {
            let a = recorded.and_then(|r| r.outputs.get(name)).map(|d| d.hash);
            let b = rerun.and_then(|r| r.outputs.get(name)).map(|d| d.hash);
            outputs.push(OutputCompared {
                job: job.job.clone(),
                output: name.clone(),
                recorded: a,
                now: b,
                equal: a.is_some() && a == b,
            });
        }
    }
    // The machine facts: each recorded machine against the machine that reran its jobs.
    let mut machine = Vec::new();
    let mut warnings = Vec::new();
    let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
    for (job, rec) in &committed.records {
        let Some(new) = now.get(job) else { continue };
        if !pairs.insert((rec.machine.node_id.clone(), new.machine.node_id.clone())) {
            continue;
        }
        let (a, b) = (facts(&rec.machine), facts(&new.machine));
        let mut differ = Vec::new();
        for ((name, x), (_, y)) in a.into_iter().zip(b) {
            let equal = if name == "cpu flags" { rec.machine.cpu_flags == new.machine.cpu_flags } else { x == y };
            let (x, y) = if name == "cpu flags" && !equal {
                let old: BTreeSet<&String> = rec.machine.cpu_flags.iter().collect();
                let new_: BTreeSet<&String> = new.machine.cpu_flags.iter().collect();
                let gone: Vec<&str> = old.difference(&new_).map(|s| s.as_str()).take(12).collect();
                let added: Vec<&str> = new_.difference(&old).map(|s| s.as_str()).take(12).collect();
                (format!("{x}; not now: {}", gone.join(" ")), format!("{y}; new: {}", added.join(" ")))
            } else {
                (x, y)
            };
            if !equal && WARNED_FACTS.contains(&name) {
                differ.push(name);
            }
            machine.push(FactCompared { fact: name.to_string(), recorded: x, now: y, equal });
        }
        if !differ.is_empty() {
            warnings.push(format!(
                "the machine differs from the recorded one ({}) in: {}; outputs that differ may come from that",
                short_node(&rec.machine.node_id),
                differ.join(", ")
            ));
        }
    }
    let matched = failed.is_empty() && outputs.iter().all(|o| o.equal);
    Compared { commit: committed.id.clone(), outputs, machine, failed, matched, warnings }
}

fn short_node(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl Compared {
    pub fn render(&self) -> String {
        use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
        let mut out = String::new();
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec!["job", "output", "recorded", "now", ""]);
        let h = |h: Option<Hash>| h.map(|h| h.short().to_string()).unwrap_or_else(|| "-".into());
        for o in &self.outputs {
            t.add_row(vec![
                o.job.clone(),
                o.output.clone(),
                h(o.recorded),
                h(o.now),
                if o.equal { "equal".into() } else { "DIFFERENT".into() },
            ]);
        }
        out.push_str(&format!("{t}\n"));
        if !self.machine.is_empty() {
            let mut m = Table::new();
            m.load_preset(UTF8_FULL_CONDENSED);
            m.set_header(vec!["machine", "recorded", "now", ""]);
            for f in &self.machine {
                m.add_row(vec![
                    f.fact.clone(),
                    f.recorded.clone(),
                    f.now.clone(),
                    if f.equal { "equal".into() } else { "different".into() },
                ]);
            }
            out.push_str(&format!("{m}\n"));
        }
        for (job, why) in &self.failed {
            out.push_str(&format!("job `{job}` did not finish: {why}\n"));
        }
        let differ = self.outputs.iter().filter(|o| !o.equal).count();
        out.push_str(&if self.matched {
            format!("commit {}: every output matches ({} outputs)\n", &self.commit[..12], self.outputs.len())
        } else {
            format!(
                "commit {}: {differ} of {} outputs differ{}\n",
                &self.commit[..12],
                self.outputs.len(),
                if self.failed.is_empty() {
                    String::new()
                } else {
                    format!(", {} job(s) did not finish", self.failed.len())
                }
            )
        });
        out
    }
}

/// Checks, before anything runs, every job's requirements that name the machine (arch, CPU
/// flags, memory, GPUs) against this one, as the runner would one job at a time: a rerun that
/// cannot be exact here is refused whole, each job named with what this machine lacks.
pub fn check_compatible(dag: &Dag, here: &Machine) -> Result<()> {
    let refused: Vec<String> = dag
        .jobs
        .iter()
        .filter_map(|job| crate::run::unmet_here(&job.requirements, here).map(|why| format!("job `{}`: {why}", job.id)))
        .collect();
    if !refused.is_empty() {
        bail!("this machine cannot rerun the commit as recorded:\n  {}", refused.join("\n  "));
    }
    Ok(())
}

/// Runs `dag` on this machine; returns each job's new record (by job id) and the jobs that did
/// not finish, with why.
pub async fn run_local(
    store: &Store,
    dag: Dag,
    opts: &crate::run::RunOptions,
) -> Result<(BTreeMap<String, RunRecord>, Vec<(String, String)>)> {
    let runner = crate::run::Runner::new(store, opts)?;
    check_compatible(&dag, runner.machine())?;
    let missing = missing_blobs(store, &dag).await?;
    if !missing.is_empty() {
        return Err(missing_error(&missing));
    }
    let reports = crate::run::run_dag(&runner, dag, std::path::PathBuf::new(), opts, Default::default()).await?;
    let mut records = BTreeMap::new();
    let mut failed = Vec::new();
    for r in &reports {
        if let Some(h) = r.record
            && let Some(signed) = store.get_record(h).await?
        {
            records.insert(r.job.clone(), signed.record_trusted()?);
        }
        if r.status != crate::run::Status::Done {
            failed.push((r.job.clone(), r.error.clone().unwrap_or_else(|| r.status.to_string())));
        }
    }
    Ok((records, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dag::{Digest, DigestKind, Exit, ResolvedJob, Timing};

    fn machine(kernel: &str, flags: &[&str]) -> Machine {
        Machine {
            node_id: "n1".into(),
            hostname: "h".into(),
            kernel: kernel.into(),
            cpu_model: "c".into(),
            cpu_flags: flags.iter().map(|f| f.to_string()).collect(),
            arch: "x86_64".into(),
            cores: 2,
            memory_bytes: 8 << 30,
            backend: "microvm".into(),
            accelerator: Some("tcg".into()),
            qemu: None,
            guest_kernel: None,
            emulation: None,
            gpus: Vec::new(),
            kernel_config: None,
            shoal_version: None,
        }
    }

    fn record(out: u8, m: Machine) -> RunRecord {
        let d = |b: u8| Digest { hash: Hash([b; 32]), kind: DigestKind::File, size: 1 };
        RunRecord {
            version: 1,
            job_id: "j".into(),
            action_key: Hash([9; 32]),
            job: ResolvedJob {
                image: Hash([1; 32]),
                command: vec![],
                env: BTreeMap::new(),
                workdir: None,
                user: None,
                stdin: None,
                inputs: BTreeMap::new(),
                outputs: BTreeMap::new(),
                arch: None,
                cpu_flags: vec![],
                network: false,
            },
            requirements: Default::default(),
            outputs: BTreeMap::from([("o".to_string(), d(out))]),
            stdout: d(0),
            stderr: d(0),
            exit: Exit::Code(0),
            timing: Timing {
                queued_unix_ms: 0,
                started_unix_ms: 0,
                finished_unix_ms: 0,
                wall_ms: 0,
                user_ms: 0,
                sys_ms: 0,
                peak_memory_bytes: 0,
            },
            machine: m,
            holders: vec![],
        }
    }

    fn committed(rec: RunRecord) -> Committed {
        Committed {
            id: "0123456789abcdef0123456789abcdef01234567".into(),
            pinned: String::new(),
            run: super::super::RunFile {
                source: "s".into(),
                pinned: Hash([0; 32]),
                ok: true,
                jobs: vec![super::super::JobFact {
                    job: "j".into(),
                    status: crate::run::Status::Done,
                    cached: false,
                    action_key: None,
                    record: None,
                    outputs: BTreeMap::new(),
                    error: None,
                }],
            },
            records: BTreeMap::from([("j".to_string(), rec)]),
            signed: BTreeMap::new(),
        }
    }

    #[test]
    fn another_kernel_and_cpu_flags_are_named_in_a_warning_and_outputs_compared() {
        let was = committed(record(5, machine("6.1.0", &["avx2", "sse4_2"])));
        let same = BTreeMap::from([("j".to_string(), record(5, machine("6.1.0", &["avx2", "sse4_2"])))]);
        let c = compare(&was, &same, vec![]);
        assert!(c.matched && c.warnings.is_empty(), "{c:?}");
        let mut other = machine("6.12.0", &["avx2", "avx512f"]);
        other.accelerator = Some("kvm".into());
        let now = BTreeMap::from([("j".to_string(), record(6, other))]);
        let c = compare(&was, &now, vec![]);
        assert!(!c.matched);
        assert_eq!(c.warnings.len(), 1);
        let w = &c.warnings[0];
        assert!(w.contains("kernel") && w.contains("cpu flags") && w.contains("accelerator"), "{w}");
        assert!(!w.contains("cores"), "{w}");
        let flags = c.machine.iter().find(|f| f.fact == "cpu flags").unwrap();
        assert!(flags.recorded.contains("not now: sse4_2") && flags.now.contains("new: avx512f"), "{flags:?}");
        assert!(c.render().contains("DIFFERENT") && c.render().contains("1 of 1 outputs differ"));
    }
}
