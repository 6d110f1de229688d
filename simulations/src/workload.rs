//! Workloads: DAG files generated from the seed (real JSON through the real parser), each job's
//! work in ms at speed 1.0, and when each DAG is submitted.

use std::collections::BTreeSet;
use std::sync::Arc;

use shoal_dag::{Dag, Hash, parse_dag};

use crate::Rng;

/// The shape of the jobs a run submits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One layered random DAG: each job reads up to two jobs of the previous layer (√n layers).
    Layered,
    /// DAGs of one root, a wide fan-out and one reduce.
    FanOut,
    /// Deep chains: each job reads the one before it.
    Chains,
    /// An overnight mix: DAGs of every shape and size (10 to 500 jobs), some needing several
    /// cores, a GPU or aarch64, submitted over the first part of the night.
    Mixed,
    /// A pool's steady traffic: layered DAGs of [`STEADY_DAG_JOBS`] jobs submitted at random
    /// over the whole submit window (a month, for the ledger's size over time).
    Steady,
}

/// Jobs per DAG of the steady workload (issue 20 measures the ledger after DAGs of 20 jobs).
pub const STEADY_DAG_JOBS: usize = 20;

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Workload, String> {
        Ok(match s {
            "layered" => Workload::Layered,
            "fanout" => Workload::FanOut,
            "chains" => Workload::Chains,
            "mixed" => Workload::Mixed,
            "steady" => Workload::Steady,
            _ => return Err(format!("unknown workload `{s}`: layered, fanout, chains, mixed or steady")),
        })
    }
}

/// Job work, at speed 1.0: log-normal around a median, capped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkDist {
    pub median_ms: u64,
    /// σ of ln(work): 0 gives every job the median.
    pub sigma: f64,
    pub max_ms: u64,
}

impl WorkDist {
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let w = self.median_ms as f64 * (self.sigma * rng.normal()).exp();
        (w as u64).clamp(1, self.max_ms)
    }
}

/// One DAG of a workload, as the simulator needs it.
pub struct SimDag {
    pub hash: Hash,
    pub dag: Arc<Dag>,
    /// Length of the DAG file: what a node fetching it by hash receives.
    pub text_bytes: usize,
    /// Per job: work in ms at speed 1.0.
    pub work_ms: Vec<u64>,
    /// Per job: the jobs it reads.
    pub deps: Vec<Vec<u32>>,
    pub submit_at_ms: u64,
}

impl SimDag {
    /// The longest chain of work through the DAG at `speed`, in ms.
    pub fn critical_path_ms(&self, speed: f64) -> u64 {
        let mut finish = vec![0u64; self.work_ms.len()];
        for i in 0..finish.len() {
            let start = self.deps[i].iter().map(|&d| finish[d as usize]).max().unwrap_or(0);
            finish[i] = start + (self.work_ms[i] as f64 / speed) as u64;
        }
        finish.into_iter().max().unwrap_or(0)
    }
}

/// What a job needs beyond one core, as JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Plain,
    Cores(u32),
    Gpu,
    Aarch64,
}

impl Need {
    fn json(self) -> String {
        match self {
            Need::Plain => String::new(),
            Need::Cores(n) => format!(r#", "requirements": {{"cores": {n}}}"#),
            Need::Gpu => r#", "requirements": {"gpu": {"count": 1}}"#.into(),
            Need::Aarch64 => r#", "requirements": {"arch": "aarch64"}"#.into(),
        }
    }
}

fn build(
    name: usize,
    deps: Vec<Vec<u32>>,
    needs: &[Need],
    work: &WorkDist,
    submit_at_ms: u64,
    rng: &mut Rng,
) -> SimDag {
    let mut text = format!(
        r#"{{"version": 1, "jobs": [{{"id": "j0", "image": "sim:{name}", "command": ["x"], "outputs": {{"o": "stdout"}}{}}}"#,
        needs[0].json()
    );
    for (i, ds) in deps.iter().enumerate().skip(1) {
        let ins: Vec<String> = ds.iter().map(|d| format!(r#""i{d}": "jobs:j{d}/o""#)).collect();
        text.push_str(&format!(
            r#", {{"id": "j{i}", "image": "sim:{name}", "command": ["x"], "outputs": {{"o": "stdout"}}, "inputs": {{{}}}{}}}"#,
            ins.join(", "),
            needs[i].json()
        ));
    }
    text.push_str("]}");
    let dag = parse_dag("sim.json", &text).expect("a generated DAG is valid");
    let work_ms = (0..deps.len()).map(|_| work.sample(rng)).collect();
    SimDag { hash: Hash::of(text.as_bytes()), dag: Arc::new(dag), text_bytes: text.len(), work_ms, deps, submit_at_ms }
}

/// A DAG given as its text, each job taking `work_ms` at speed 1.0, submitted at once: a
/// scenario to run both here and on real nodes. Its jobs must be named `j0`, `j1`, … in file
/// order and read only jobs before them (the simulator names jobs by index).
pub fn given(text: &str, work_ms: u64) -> Result<SimDag, String> {
    let dag = parse_dag("given.json", text).map_err(|d| d.to_string())?;
    for (i, j) in dag.jobs.iter().enumerate() {
        if j.id != format!("j{i}") {
            return Err(format!("job {i} is `{}`: name the jobs j0, j1, … in file order", j.id));
        }
    }
    let deps: Vec<Vec<u32>> =
        dag.all_dependencies().into_iter().map(|ds| ds.into_iter().map(|d| d as u32).collect()).collect();
    if let Some(i) = (0..deps.len()).find(|&i| deps[i].iter().any(|&d| d as usize >= i)) {
        return Err(format!("job j{i} reads a job after it: order the jobs so each reads only earlier ones"));
    }
    Ok(SimDag {
        hash: Hash::of(text.as_bytes()),
        text_bytes: text.len(),
        work_ms: vec![work_ms; dag.jobs.len()],
        dag: Arc::new(dag),
        deps,
        submit_at_ms: 0,
    })
}

/// Longest chain in the mixed workload, in jobs.
const CHAIN_JOBS_MAX: usize = 20;
/// Most map-reduce stages in one pipeline of the mixed workload.
const STAGES_MAX: usize = 6;

fn layered(jobs: usize, rng: &mut Rng) -> Vec<Vec<u32>> {
    let width = (jobs as f64).sqrt().ceil().max(1.0) as usize;
    (0..jobs)
        .map(|i| {
            let layer = i / width;
            let mut inputs = BTreeSet::new();
            if layer > 0 {
                for _ in 0..2 {
                    inputs.insert(((layer - 1) * width + rng.range(0, width as u64 - 1) as usize) as u32);
                }
            }
            inputs.into_iter().collect()
        })
        .collect()
}

fn fan_out(jobs: usize) -> Vec<Vec<u32>> {
    let jobs = jobs.max(3);
    let mut deps: Vec<Vec<u32>> = (0..jobs - 1).map(|i| if i == 0 { vec![] } else { vec![0] }).collect();
    deps.push((1..jobs as u32 - 1).collect());
    deps
}

fn chain(jobs: usize) -> Vec<Vec<u32>> {
    (0..jobs).map(|i| if i == 0 { vec![] } else { vec![i as u32 - 1] }).collect()
}

/// The DAGs of a workload, `jobs` jobs in all. `submit_window_ms` spreads the mixed workload's
/// submissions (the others are submitted at once).
pub fn generate(kind: Workload, jobs: usize, work: &WorkDist, submit_window_ms: u64, rng: &mut Rng) -> Vec<SimDag> {
    let plain = |n: usize| vec![Need::Plain; n];
    match kind {
        Workload::Layered => vec![build(0, layered(jobs, rng), &plain(jobs), work, 0, rng)],
        Workload::FanOut | Workload::Chains => {
            // DAGs of 100 jobs (fewer if the run has fewer), so a run of 100k jobs is 1000 DAGs.
            let per = jobs.clamp(1, 100);
            let mut out = Vec::new();
            let mut left = jobs;
            while left > 0 {
                let n = per.min(left);
                let deps = if kind == Workload::FanOut { fan_out(n) } else { chain(n) };
                let n = deps.len();
                out.push(build(out.len(), deps, &plain(n), work, 0, rng));
                left = left.saturating_sub(n);
            }
            out
        }
        Workload::Steady => {
            let mut out: Vec<SimDag> = (0..jobs.div_ceil(STEADY_DAG_JOBS))
                .map(|i| {
                    let n = STEADY_DAG_JOBS.min(jobs - i * STEADY_DAG_JOBS);
                    let at = if submit_window_ms == 0 { 0 } else { rng.range(0, submit_window_ms) };
                    build(i, layered(n, rng), &plain(n), work, at, rng)
                })
                .collect();
            out.sort_by_key(|d| d.submit_at_ms);
            out
        }
        Workload::Mixed => {
            let mut out = Vec::new();
            let mut left = jobs;
            while left > 0 {
                let n = (rng.range(10, 500) as usize).min(left).max(3);
                let deps = match rng.range(0, 9) {
                    0..=3 => layered(n, rng),
                    4..=6 => fan_out(n),
                    7 => chain(n.min(CHAIN_JOBS_MAX)),
                    _ => {
                        // A pipeline of fan-outs: map, reduce, map, reduce, in `STAGES_MAX` stages.
                        let mut d: Vec<Vec<u32>> = vec![vec![]];
                        let stage_width = n.div_ceil(STAGES_MAX).max(2);
                        while d.len() < n {
                            let head = d.len() as u32 - 1;
                            let width = stage_width.min(n - d.len());
                            for _ in 0..width {
                                d.push(vec![head]);
                            }
                            if d.len() < n {
                                d.push((d.len() as u32 - width as u32..d.len() as u32).collect());
                            }
                        }
                        d
                    }
                };
                let n = deps.len();
                // Most jobs need one core; some several, a few a GPU or an aarch64 machine.
                let needs: Vec<Need> = (0..n)
                    .map(|_| match rng.range(0, 99) {
                        0..=79 => Need::Plain,
                        80..=94 => Need::Cores(if rng.range(0, 1) == 0 { 2 } else { 4 }),
                        95..=97 => Need::Gpu,
                        _ => Need::Aarch64,
                    })
                    .collect();
                let at = if submit_window_ms == 0 { 0 } else { rng.range(0, submit_window_ms) };
                out.push(build(out.len(), deps, &needs, work, at, rng));
                left = left.saturating_sub(n);
            }
            out.sort_by_key(|d| d.submit_at_ms);
            out
        }
    }
}
