//! A deterministic discrete-event simulator around the real sans-IO node core
//! (`shoal_node::mesh::core::NodeCore`): virtual time, a seeded message layer with latency, jobs
//! that take simulated time. Same seed, same run, event for event. A first cut of issue 5: no
//! churn, loss, partitions or heterogeneous nodes yet.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use ed25519_dalek::SigningKey;
use shoal_dag::{Arch, Dag, Hash, parse_dag};
use shoal_node::mesh::capabilities::Capabilities;
use shoal_node::mesh::core::{Action, NodeCore};
use shoal_node::mesh::ledger::{Fact, JobState};

/// xorshift64*: the simulator's only randomness, from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: usize,
    pub jobs: usize,
    pub seed: u64,
    pub cores_per_node: u32,
    /// One-way message latency, uniform, ms.
    pub latency_ms: (u64, u64),
    /// Job run time, uniform, ms.
    pub job_ms: (u64, u64),
    /// Stop after this much simulated time.
    pub limit_ms: u64,
    /// (node, at_ms): that node dies then — nothing it would do or receive happens after.
    pub crash: Option<(usize, u64)>,
}

enum Event {
    Deliver { to: usize, fact: Box<Fact> },
    Tick { node: usize },
    Finished { node: usize, claim: Hash },
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub done: usize,
    pub jobs: usize,
    pub makespan_ms: u64,
    /// max(critical path, total work / capacity), both in ms of job time.
    pub lower_bound_ms: u64,
    pub starts: usize,
    pub stopped: usize,
    pub events: u64,
    pub converged: bool,
}

/// A layered random DAG: each job reads up to two jobs of the previous layer.
pub fn layered_dag(jobs: usize, rng: &mut Rng) -> (Hash, Dag, Vec<Vec<usize>>) {
    let width = (jobs as f64).sqrt().ceil() as usize;
    let mut text = String::from(r#"{"version": 1, "jobs": ["#);
    let mut deps = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let layer = i / width;
        let mut inputs = BTreeSet::new();
        if layer > 0 {
            for _ in 0..2 {
                inputs.insert((layer - 1) * width + rng.range(0, width as u64 - 1) as usize);
            }
        }
        let ins: Vec<String> = inputs.iter().map(|d| format!(r#""i{d}": "jobs:j{d}/o""#)).collect();
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"id": "j{i}", "image": "b:1", "command": ["x"], "outputs": {{"o": "stdout"}}, "inputs": {{{}}}}}"#,
            ins.join(", ")
        ));
        deps.push(inputs.into_iter().collect());
    }
    text.push_str("]}");
    let dag = parse_dag("sim.json", &text).expect("the generated DAG is valid");
    (Hash::of(text.as_bytes()), dag, deps)
}

pub fn run(cfg: &Config) -> Report {
    let mut rng = Rng::new(cfg.seed);
    let caps = Capabilities {
        arch: Arch::X86_64,
        cores: cfg.cores_per_node,
        memory_bytes: 16 << 30,
        cpu_flags: BTreeSet::new(),
        gpus: vec![],
        labels: BTreeMap::new(),
        microvm: true,
    };
    let mut nodes: Vec<NodeCore> = (0..cfg.nodes)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            NodeCore::new(SigningKey::from_bytes(&seed), caps.clone())
        })
        .collect();
    let (dag_hash, dag, deps) = layered_dag(cfg.jobs, &mut rng);
    let durations: Vec<u64> = (0..cfg.jobs).map(|_| rng.range(cfg.job_ms.0, cfg.job_ms.1)).collect();
    let index: BTreeMap<String, usize> = dag.jobs.iter().enumerate().map(|(i, j)| (j.id.clone(), i)).collect();

    let mut queue: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    let mut events: BTreeMap<u64, Event> = BTreeMap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, events: &mut BTreeMap<u64, Event>, at: u64, ev: Event| {
        seq += 1;
        events.insert(seq, ev);
        queue.push(Reverse((at, seq, 0usize)));
    };
    let ids: Vec<_> = nodes.iter().map(NodeCore::id).collect();
    for n in nodes.iter_mut() {
        n.handle_peers(0, ids.iter().copied());
        n.handle_dag(0, dag_hash, dag.clone());
    }
    nodes[0].submit(0, dag_hash, dag.clone(), 3);
    let (mut starts, mut stopped, mut processed) = (0usize, 0usize, 0u64);
    let mut now = 0u64;
    let mut pending_ticks: BTreeSet<(usize, u64)> = BTreeSet::new();
    let mut outbox = |node: usize,
                      now: u64,
                      nodes: &mut Vec<NodeCore>,
                      rng: &mut Rng,
                      queue: &mut BinaryHeap<_>,
                      events: &mut BTreeMap<u64, Event>,
                      starts: &mut usize,
                      stopped: &mut usize,
                      pending_ticks: &mut BTreeSet<(usize, u64)>| {
        while let Some(fact) = nodes[node].poll_fact() {
            for to in 0..nodes.len() {
                if to != node {
                    let at = now + rng.range(cfg.latency_ms.0, cfg.latency_ms.1);
                    push(queue, events, at, Event::Deliver { to, fact: Box::new(fact.clone()) });
                }
            }
        }
        while let Some(action) = nodes[node].poll_action() {
            match action {
                Action::Start { claim, job, .. } => {
                    *starts += 1;
                    push(queue, events, now + durations[index[&job]], Event::Finished { node, claim });
                }
                Action::Stop { .. } => *stopped += 1,
            }
        }
        if let Some(t) = nodes[node].poll_timeout(now)
            && pending_ticks.insert((node, t))
        {
            push(queue, events, t, Event::Tick { node });
        }
    };
    outbox(0, 0, &mut nodes, &mut rng, &mut queue, &mut events, &mut starts, &mut stopped, &mut pending_ticks);
    let done_all = |nodes: &[NodeCore], now: u64| {
        nodes[0]
            .ledger()
            .state(now)
            .dags
            .get(&dag_hash)
            .is_some_and(|d| d.jobs.values().all(|j| matches!(j, JobState::Done { .. })))
    };
    let dead = |node: usize, at: u64| cfg.crash.is_some_and(|(n, t)| n == node && at >= t);
    while let Some(Reverse((at, id, _))) = queue.pop() {
        if at > cfg.limit_ms {
            break;
        }
        now = at;
        processed += 1;
        let event = events.remove(&id).expect("queued");
        let target = match &event {
            Event::Deliver { to, .. } => *to,
            Event::Tick { node } | Event::Finished { node, .. } => *node,
        };
        if dead(target, at) {
            continue;
        }
        let node = match event {
            Event::Deliver { to, fact } => {
                nodes[to].handle_fact(now, *fact).expect("facts from the core verify");
                to
            }
            Event::Tick { node } => {
                pending_ticks.retain(|(n, t)| !(*n == node && *t <= now));
                nodes[node].handle_tick(now);
                node
            }
            Event::Finished { node, claim } => {
                nodes[node].handle_job_finished(now, claim, Ok(Hash::of(&claim.0)));
                node
            }
        };
        outbox(node, now, &mut nodes, &mut rng, &mut queue, &mut events, &mut starts, &mut stopped, &mut pending_ticks);
        let live: Vec<usize> = (0..nodes.len()).filter(|&n| !dead(n, now)).collect();
        let first = live[0];
        if queue.is_empty()
            || (done_all(&nodes[first..=first], now)
                && live.iter().all(|&n| nodes[n].ledger().len() == nodes[first].ledger().len()))
        {
            break;
        }
    }
    // Let the last facts land, then compare the views of the nodes still alive.
    while let Some(Reverse((at, id, _))) = queue.pop() {
        if let Some(Event::Deliver { to, fact }) = events.remove(&id)
            && !dead(to, at)
        {
            nodes[to].handle_fact(at, *fact).expect("facts verify");
        }
    }
    let live: Vec<usize> = (0..nodes.len()).filter(|&n| !dead(n, now)).collect();
    let digest = nodes[live[0]].ledger().digest();
    let converged = live.iter().all(|&n| nodes[n].ledger().digest() == digest);
    let state = nodes[live[0]].ledger().state(now);
    let done =
        state.dags.get(&dag_hash).map_or(0, |d| d.jobs.values().filter(|j| matches!(j, JobState::Done { .. })).count());
    let mut finish = vec![0u64; cfg.jobs];
    for i in 0..cfg.jobs {
        finish[i] = deps[i].iter().map(|&d| finish[d]).max().unwrap_or(0) + durations[i];
    }
    let critical = finish.iter().copied().max().unwrap_or(0);
    let work: u64 = durations.iter().sum();
    let capacity = (cfg.nodes as u64 * u64::from(cfg.cores_per_node)).max(1);
    Report {
        done,
        jobs: cfg.jobs,
        makespan_ms: now,
        lower_bound_ms: critical.max(work / capacity),
        starts,
        stopped,
        events: processed,
        converged,
    }
}
