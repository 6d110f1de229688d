//! A deterministic discrete-event simulator around the real sans-IO machines of `shoal-mesh` (the
//! scheduler `NodeCore` and its ledger, anti-entropy `Sync`, the replica and topic choices, with
//! `shoal node`'s `Settings` unless told otherwise): thousands of nodes under a virtual clock,
//! talking through a seeded message layer. Same seed, same run, event for event.
//!
//! # Layout
//! - [`workload`]: the DAGs a run submits (layered, fan-out, chains, an overnight mix) as real
//!   DAG files through the real parser, with each job's work.
//! - this file: the simulator. Nodes are heterogeneous (arch, cores, memory, GPU, speed) and
//!   churn (crash and restart from their persisted facts, leave, join). Facts travel by
//!   gossip over a mesh of degree ~[`Config::mesh_degree`] per topic (gossipsub-like: a node
//!   relays a fact it has not seen to its mesh peers, except those it came from, in batches),
//!   repaired by anti-entropy. With one topic (`TopicMode::One`, as `shoal node` has it) each
//!   node runs the real `shoal_mesh::sync::Sync` with its mesh peers as its connections, its
//!   requests and answers carried as messages; with a topic per DAG (`TopicMode::PerDag`, the
//!   federation design, which the node does not have yet) a per-topic digest exchange is modelled
//!   here. Messages have a latency distribution, loss, an uplink bandwidth, and partitions; every
//!   byte is counted from real CBOR sizes. A DAG topic is subscribed by the group that
//!   `shoal_mesh::topics::group_for` picks, and only they hold its facts and run its jobs.
//!   Outputs are kept by their runner and the holders `shoal_mesh::replicas` picks.
//! - [`output`]: the table, CSV and SVG plots of a run.
//!
//! Invariants are checked as the run goes (see [`Sim::check_node`] and [`Sim::sample`]) and at
//! the end; each violation names the seed, and `SHOAL_SIM_SEED=N` replays the run.

pub mod output;
pub mod workload;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use shoal_dag::{Arch, Dag, Hash};
use shoal_mesh::Settings;
use shoal_mesh::capabilities::{Capabilities, SPEED_REFERENCE};
use shoal_mesh::core::{Action, Finished, NodeCore, PeerTable};
use shoal_mesh::ledger::{Body, Fact, JobState, NodeId, VerifiedFact};
use shoal_mesh::replicas::output_holders;
use shoal_mesh::sync::{Inbound, Sync};
use shoal_mesh::topics::{self, TopicMode};
use shoal_mesh::wire::{self, SyncReq, SyncResp};

pub use workload::{SimDag, WorkDist, Workload, given};

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

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Exponential with this mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).max(1e-12).ln()
    }
}

/// One-way message latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    Uniform {
        lo_ms: u64,
        hi_ms: u64,
    },
    /// Log-normal around a median (a long tail, as across the internet), capped.
    LogNormal {
        median_ms: u64,
        sigma: f64,
        max_ms: u64,
    },
}

impl Latency {
    fn sample(&self, rng: &mut Rng) -> u64 {
        match *self {
            Latency::Uniform { lo_ms, hi_ms } => rng.range(lo_ms, hi_ms),
            Latency::LogNormal { median_ms, sigma, max_ms } => {
                ((median_ms as f64 * (sigma * rng.normal()).exp()) as u64).clamp(1, max_ms)
            }
        }
    }
}

/// A partition: from `at_ms` for `for_ms`, `fraction` of the nodes (chosen by the seed) are cut off
/// from the rest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Partition {
    pub at_ms: u64,
    pub for_ms: u64,
    pub fraction: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub nodes: usize,
    pub jobs: usize,
    pub seed: u64,
    pub workload: Workload,
    pub work: WorkDist,
    /// The mixed workload's DAGs are submitted over this long.
    pub submit_window_ms: u64,
    /// Nodes of several kinds (cores, speed, memory, GPU, arch); else all alike.
    pub heterogeneous: bool,
    /// Heterogeneous nodes' speeds are uniform in 1 ± this.
    pub speed_spread: f64,
    /// Cores of every node when not heterogeneous.
    pub cores_per_node: u32,
    pub latency: Latency,
    /// Probability that one message is lost.
    pub loss: f64,
    /// Uplink of every node, bits per second.
    pub uplink_bps: u64,
    /// Node churn per hour, as a fraction of the nodes: crashes (back after a while, from their
    /// persisted facts), leaves and joins.
    pub churn_per_hour: f64,
    /// Single crashes: (node, at_ms); the node stays down.
    pub crashes: Vec<(usize, u64)>,
    pub partition: Option<Partition>,
    /// The protocol's settings (lease, stagger, sync period, liveness timeout, replicas,
    /// topics): `shoal node`'s by default, [`Config::tune`] for the tuned ones.
    pub settings: Settings,
    /// Mesh peers per node per topic.
    pub mesh_degree: usize,
    /// How long a node batches facts before relaying them, ms.
    pub flush_ms: u64,
    /// Fraction of runs that fail (and are retried, up to `max_attempts`).
    pub job_failure: f64,
    pub max_attempts: u32,
    /// Metrics are sampled this often, ms of simulated time.
    pub sample_ms: u64,
    /// Stop after this much simulated time.
    pub limit_ms: u64,
    /// Print a line per sample to stderr (long runs).
    pub progress: bool,
    /// Run this one DAG instead of the workload (see [`workload::given`]); the report then
    /// carries each job's history.
    pub given: Option<GivenDag>,
}

/// A DAG to run as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct GivenDag {
    /// Its JSON text: jobs named `j0`, `j1`, … in file order, each reading only earlier ones.
    pub text: String,
    /// Every job's work, ms at speed 1.0.
    pub work_ms: u64,
}

impl Config {
    /// A small, homogeneous, reliable run of one layered DAG.
    pub fn basic(nodes: usize, jobs: usize, seed: u64) -> Config {
        Config {
            nodes,
            jobs,
            seed,
            workload: Workload::Layered,
            work: WorkDist { median_ms: 20_000, sigma: 0.6, max_ms: 120_000 },
            submit_window_ms: 0,
            heterogeneous: false,
            speed_spread: 0.5,
            cores_per_node: 2,
            latency: Latency::Uniform { lo_ms: 1, hi_ms: 20 },
            loss: 0.0,
            uplink_bps: 100_000_000,
            churn_per_hour: 0.0,
            crashes: vec![],
            partition: None,
            settings: Settings::default(),
            mesh_degree: 6,
            flush_ms: 20,
            job_failure: 0.0,
            max_attempts: 3,
            sample_ms: 60_000,
            limit_ms: 7 * 86_400_000,
            progress: false,
            given: None,
        }
    }

    /// A named scenario (what `--scenario` picks).
    pub fn scenario(name: &str, nodes: usize, jobs: usize, seed: u64) -> Result<Config, String> {
        let mut c = Config::basic(nodes, jobs, seed);
        let overnight = |c: &mut Config| {
            c.workload = Workload::Mixed;
            c.heterogeneous = true;
            c.work = WorkDist { median_ms: 5 * 60_000, sigma: 0.7, max_ms: 3_600_000 };
            c.submit_window_ms = 3_600_000;
            c.latency = Latency::LogNormal { median_ms: 30, sigma: 0.6, max_ms: 2_000 };
            c.loss = 0.01;
            c.uplink_bps = 10_000_000;
            c.sample_ms = 300_000;
        };
        match name {
            "basic" => {}
            "layered" | "fanout" | "chains" | "mixed" => c.workload = name.parse()?,
            "overnight" => overnight(&mut c),
            "churn" => {
                overnight(&mut c);
                c.churn_per_hour = 0.01;
            }
            "partition" => {
                overnight(&mut c);
                c.partition = Some(Partition { at_ms: 20 * 60_000, for_ms: 20 * 60_000, fraction: 0.3 });
            }
            _ => {
                return Err(format!(
                    "unknown scenario `{name}`: basic, layered, fanout, chains, mixed, overnight, churn or partition"
                ));
            }
        }
        Ok(c)
    }

    /// The settings docs/SIMULATIONS.md found better than `shoal node`'s defaults for big meshes
    /// and long jobs (switching the node to them is the federation issue's).
    pub fn tune(&mut self) {
        let s = &mut self.settings;
        // Leases of minutes: renewals are most of the gossip (see docs/SIMULATIONS.md).
        s.core.lease_ms = 600_000;
        // Above the p99 of gossip propagation over a few hops, or the next-ranked node claims
        // before it hears the first one's claim (200 ms gave 32% concurrent duplicates).
        s.core.claim_stagger_ms = 1_000;
        s.topics =
            if self.nodes > 500 { TopicMode::PerDag { group_nodes: 32, speed_exponent: 4.0 } } else { TopicMode::One };
    }

    /// Nodes per DAG topic; 0 with one topic for all.
    pub fn group_nodes(&self) -> usize {
        match self.settings.topics {
            TopicMode::One => 0,
            TopicMode::PerDag { group_nodes, .. } => group_nodes,
        }
    }
}

/// Per-message framing beyond the CBOR of the facts: gossipsub's protobuf envelope, yamux and
/// noise framing, in bytes (measured order of magnitude, not exact).
const MESSAGE_OVERHEAD_BYTES: u64 = 64;
/// A digest request or a `Same` answer of anti-entropy, in bytes (framing included).
const DIGEST_BYTES: u64 = 112;
/// One fact id in an `Ids`/`Get` message, in bytes.
const ID_BYTES: u64 = 34;
/// How often convergence is checked after a partition heals and at the end, ms.
const CONVERGE_CHECK_MS: u64 = 1_000;
/// How long after the last job is first done the mesh may take to converge and every view to
/// see every DAG ended, ms: a Done lost with a node that left costs a lease and a rerun.
const CONVERGE_LIMIT_MS: u64 = 3 * 3_600_000;
/// Mean time a crashed node stays down before it restarts, ms.
const DOWNTIME_MEAN_MS: f64 = 10.0 * 60_000.0;
/// DAG topics whose views are compared at each sample (the check costs O(jobs) per topic).
const VIEW_CHECKS_PER_SAMPLE: usize = 8;

enum Ev {
    /// Facts from `from` on `topic` (gossip or anti-entropy).
    Deliver {
        to: u32,
        from: u32,
        topic: u32,
        facts: Vec<VerifiedFact>,
    },
    Flush {
        node: u32,
        epoch: u32,
    },
    /// An anti-entropy request (one topic: the real `Sync`).
    SyncRequest {
        to: u32,
        from: u32,
        req: SyncReq,
    },
    /// Its answer.
    SyncResponse {
        to: u32,
        from: u32,
        resp: SyncResp,
    },
    Tick {
        node: u32,
        generation: u32,
    },
    Finished {
        node: u32,
        epoch: u32,
        claim: Hash,
        ok: bool,
    },
    AntiEntropy {
        node: u32,
        epoch: u32,
    },
    Submit {
        dag: u32,
    },
    Churn,
    Crash {
        node: u32,
        permanent: bool,
    },
    Restart {
        node: u32,
    },
    Detect {
        node: u32,
        epoch: u32,
    },
    PartitionStart,
    PartitionEnd,
    Sample,
    Converge,
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Reversed: the heap pops the earliest (then the first queued).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Up,
    Down,
    Gone,
}

/// A fact waiting in a node's outgoing batch, and the peers it came from (not sent back there).
struct Pending {
    fact: VerifiedFact,
    from: Vec<u32>,
}

struct Node {
    key: SigningKey,
    id: NodeId,
    caps: Capabilities,
    /// Work per ms of run time: a job of work w takes w / speed.
    speed: f64,
    core: Option<NodeCore>,
    /// Anti-entropy with its mesh peers, when there is one topic (rebuilt at a restart).
    sync: Option<Sync>,
    status: Status,
    /// Bumped at each crash: events meant for an earlier life are dropped.
    epoch: u32,
    tick_at: u64,
    tick_gen: u32,
    /// Runs in progress: claim -> (dag, job, started at).
    running: BTreeMap<Hash, (u32, u32, u64)>,
    pending: BTreeMap<u32, BTreeMap<Hash, Pending>>,
    flush_scheduled: bool,
    link_free_at: u64,
    topics: BTreeSet<u32>,
    /// Per topic: XOR of the ids held and their count (an order-free digest the simulator keeps
    /// beside each ledger; the bytes counted are those of the real digest exchange).
    digest: BTreeMap<u32, ([u8; 32], u32)>,
    /// Per topic: every fact before this index of the topic's list is held.
    synced: BTreeMap<u32, usize>,
    /// What survives a crash: the ledger's facts and the DAG files (sled and the blob store).
    persisted: Vec<VerifiedFact>,
    persisted_dags: Vec<Hash>,
    ae_turn: usize,
    /// Partition side.
    side: bool,
    bytes_in: u64,
    bytes_out: u64,
}

struct Topic {
    members: Vec<u32>,
    /// Mesh peers of each member.
    mesh: BTreeMap<u32, Vec<u32>>,
    /// Every fact published on it, in the order they were first made.
    facts: Vec<Hash>,
    dags: Vec<u32>,
}

/// What the simulator knows of one fact (HashMap: looked up, never iterated).
#[derive(Clone)]
struct FactMeta {
    /// Its CBOR size (`mesh::wire::encode`).
    bytes: u32,
    /// The fact, verified once when it was made: facts that anti-entropy carries as plain
    /// `Fact`s are handed to cores as this, as a node verifies each fact once.
    fact: VerifiedFact,
}

/// The truth about one job, as no node sees it.
#[derive(Clone, Default)]
struct JobTruth {
    ready_at: Option<u64>,
    first_start: Option<u64>,
    done_at: Option<u64>,
    starts: u32,
    /// Starts while another run of it was going on (a race, or a partition).
    concurrent: u32,
    /// Runs of it now: (node, claim).
    live: Vec<(u32, Hash)>,
    holders: Vec<u32>,
}

/// One sample of the metrics over time.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRow {
    pub t_s: f64,
    pub done: usize,
    pub running: usize,
    pub up_nodes: usize,
    /// Bytes received per up node per second over the interval.
    pub gossip_bytes_per_node_s: f64,
    pub starts: u64,
    pub duplicates: u64,
    pub events: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub jobs: usize,
    pub dags: usize,
    pub done: usize,
    pub failed: usize,
    pub makespan_ms: u64,
    /// max(latest submit + its critical path, first submit + total work / capacity), the critical
    /// path at the fastest node's speed.
    pub lower_bound_ms: u64,
    /// The same with the critical path at the nodes' mean speed: what a placement blind to speed
    /// can hope for (not a strict bound).
    pub lower_bound_mean_speed_ms: u64,
    pub starts: u64,
    /// Starts beyond one per job.
    pub extra_starts: u64,
    /// Starts while another run of the same job went on.
    pub concurrent_duplicates: u64,
    pub stopped: u64,
    /// Run time of stopped or lost runs, ms.
    pub wasted_ms: u64,
    pub claim_latency_ms: Percentiles,
    /// Bytes received per node per second, averaged over the run and the nodes up.
    pub gossip_bytes_per_node_s: f64,
    /// The busiest node's.
    pub gossip_bytes_per_node_s_max: f64,
    /// After the partition healed, until every fact made before it was held by every member.
    pub converge_after_heal_ms: Option<u64>,
    /// After the last DAG ended, until every member held every fact of its topic.
    pub converge_at_end_ms: Option<u64>,
    pub events: u64,
    pub crashes: u64,
    pub joins: u64,
    pub leaves: u64,
    /// Done jobs whose every holder left (recomputable from their lineage).
    pub outputs_lost: usize,
    /// Facts held, summed over nodes, at the end (memory).
    pub facts_held: u64,
    /// Distinct facts made in the run.
    pub facts_made: u64,
    pub violations: Vec<String>,
    pub samples: Vec<SampleRow>,
    /// Events handled, by kind.
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// With a [`Config::given`] DAG: each job's facts' kinds in clock order, from the ledger of
    /// the first node up at the end (`Ledger::history`, as `/v1/dags/{dag}/facts` shows it).
    pub histories: BTreeMap<String, Vec<&'static str>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(mut v: Vec<u64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        Percentiles { mean: v.iter().sum::<u64>() as f64 / v.len() as f64, p50: at(0.5), p99: at(0.99), max: at(1.0) }
    }
}

pub struct Sim {
    cfg: Config,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    nodes: Vec<Node>,
    topics: Vec<Topic>,
    dags: Vec<SimDag>,
    dag_of: BTreeMap<Hash, u32>,
    /// Per DAG, per job.
    truth: Vec<Vec<JobTruth>>,
    /// Per DAG: jobs not done yet, and the topic it is on.
    left: Vec<usize>,
    topic_of_dag: Vec<u32>,
    meta: HashMap<Hash, FactMeta>,
    claim_topic: HashMap<Hash, u32>,
    partitioned: bool,
    heal: Option<(u64, Vec<usize>)>,
    finished_at: Option<u64>,
    report: Report,
    last_sample: (u64, u64),
    processed: u64,
    violations: BTreeSet<String>,
    /// Every node's capabilities as gossip would announce them (speed included), one table
    /// shared by all cores.
    peer_table: Arc<PeerTable>,
    /// Node index by id (anti-entropy names peers by id).
    index_of: HashMap<NodeId, u32>,
}

fn node_key(i: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// Bytes of an anti-entropy request on the wire: facts at their CBOR size, ids at
/// [`ID_BYTES`], framing included.
fn request_bytes(req: &SyncReq, meta: &HashMap<Hash, FactMeta>) -> u64 {
    match req {
        SyncReq::Digest { .. } => DIGEST_BYTES,
        SyncReq::Get { ids } => MESSAGE_OVERHEAD_BYTES + ID_BYTES * ids.len() as u64,
        SyncReq::Put { facts } => MESSAGE_OVERHEAD_BYTES + facts_bytes(facts, meta),
        SyncReq::Hold { .. } => DIGEST_BYTES,
    }
}

/// Bytes of an anti-entropy answer on the wire (see [`request_bytes`]).
fn response_bytes(resp: &SyncResp, meta: &HashMap<Hash, FactMeta>) -> u64 {
    match resp {
        SyncResp::Ids { ids } => MESSAGE_OVERHEAD_BYTES + ID_BYTES * ids.len() as u64,
        SyncResp::Facts { facts } => MESSAGE_OVERHEAD_BYTES + facts_bytes(facts, meta),
        _ => DIGEST_BYTES,
    }
}

fn facts_bytes(facts: &[Fact], meta: &HashMap<Hash, FactMeta>) -> u64 {
    facts.iter().map(|f| meta.get(&f.id()).map_or_else(|| wire::encode(f).len() as u64, |m| u64::from(m.bytes))).sum()
}

impl Sim {
    pub fn new(cfg: Config) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let dags = match &cfg.given {
            Some(g) => vec![workload::given(&g.text, g.work_ms).expect("the given DAG is valid")],
            None => workload::generate(cfg.workload, cfg.jobs, &cfg.work, cfg.submit_window_ms, &mut rng),
        };
        let mut sim = Sim {
            truth: dags.iter().map(|d| vec![JobTruth::default(); d.work_ms.len()]).collect(),
            left: dags.iter().map(|d| d.work_ms.len()).collect(),
            topic_of_dag: vec![u32::MAX; dags.len()],
            dag_of: dags.iter().enumerate().map(|(i, d)| (d.hash, i as u32)).collect(),
            dags,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            topics: Vec::new(),
            meta: HashMap::new(),
            claim_topic: HashMap::new(),
            partitioned: false,
            heal: None,
            finished_at: None,
            report: Report { seed: cfg.seed, nodes: cfg.nodes, ..Report::default() },
            last_sample: (0, 0),
            processed: 0,
            violations: BTreeSet::new(),
            peer_table: Arc::default(),
            index_of: HashMap::new(),
            cfg,
        };
        sim.report.jobs = sim.dags.iter().map(|d| d.work_ms.len()).sum();
        sim.report.dags = sim.dags.len();
        for i in 0..sim.cfg.nodes {
            sim.add_node(i);
        }
        sim.share_peer_table();
        if sim.cfg.group_nodes() == 0 {
            sim.topics.push(Topic { members: vec![], mesh: BTreeMap::new(), facts: vec![], dags: vec![] });
            for n in 0..sim.nodes.len() as u32 {
                sim.subscribe(n, 0);
            }
            let ids: Vec<NodeId> = sim.nodes.iter().map(|n| n.id).collect();
            for n in &mut sim.nodes {
                n.core.as_mut().expect("up").handle_peers(0, ids.iter().copied());
            }
        }
        for d in 0..sim.dags.len() {
            let at = sim.dags[d].submit_at_ms;
            sim.push(at, Ev::Submit { dag: d as u32 });
        }
        for n in 0..sim.nodes.len() as u32 {
            let at = sim.rng.range(0, sim.cfg.settings.sync_period_ms);
            sim.push(at, Ev::AntiEntropy { node: n, epoch: 0 });
        }
        for &(node, at) in &sim.cfg.crashes.clone() {
            sim.push(at, Ev::Crash { node: node as u32, permanent: true });
        }
        if sim.cfg.churn_per_hour > 0.0 {
            let gap = sim.churn_gap();
            sim.push(gap, Ev::Churn);
        }
        if let Some(p) = sim.cfg.partition {
            sim.push(p.at_ms, Ev::PartitionStart);
            sim.push(p.at_ms + p.for_ms, Ev::PartitionEnd);
        }
        let s = sim.cfg.sample_ms;
        sim.push(s, Ev::Sample);
        sim
    }

    /// Builds the capabilities table from every node and hands it to every up core (at start and
    /// when a node joins: announcements carry capabilities).
    fn share_peer_table(&mut self) {
        self.peer_table = Arc::new(PeerTable::new(self.nodes.iter().map(|n| (n.id, n.caps.clone()))));
        let now = self.now;
        for m in 0..self.nodes.len() as u32 {
            if self.up(m) {
                let table = self.peer_table.clone();
                self.nodes[m as usize].core.as_mut().expect("up").handle_peer_table(now, table);
            }
        }
    }

    fn churn_gap(&mut self) -> u64 {
        let per_ms = self.cfg.churn_per_hour * self.cfg.nodes as f64 / 3_600_000.0;
        (self.rng.exp(1.0 / per_ms) as u64).max(1)
    }

    fn add_node(&mut self, i: usize) {
        let key = node_key(i);
        let id = key.verifying_key().to_bytes();
        let (caps, speed) = if self.cfg.heterogeneous {
            let r = self.rng.range(0, 99);
            let cores = match r {
                0..=39 => 2,
                40..=74 => 4,
                75..=94 => 8,
                _ => 16,
            };
            let arch = if self.rng.range(0, 9) == 0 { Arch::Aarch64 } else { Arch::X86_64 };
            let gpus = if self.rng.range(0, 19) == 0 { vec!["sim-gpu".to_string()] } else { vec![] };
            let caps = Capabilities {
                arch,
                cores,
                memory_bytes: u64::from(cores) * (2 << 30),
                cpu_flags: BTreeSet::new(),
                gpus,
                labels: BTreeMap::new(),
                microvm: true,
                speed: SPEED_REFERENCE,
            };
            let speed = 1.0 - self.cfg.speed_spread + 2.0 * self.cfg.speed_spread * self.rng.unit();
            let caps = Capabilities { speed: ((speed * f64::from(SPEED_REFERENCE)) as u32).max(1), ..caps };
            (caps, speed)
        } else {
            let caps = Capabilities {
                arch: Arch::X86_64,
                cores: self.cfg.cores_per_node,
                memory_bytes: 16 << 30,
                cpu_flags: BTreeSet::new(),
                gpus: vec![],
                labels: BTreeMap::new(),
                microvm: true,
                speed: SPEED_REFERENCE,
            };
            (caps, 1.0)
        };
        let side = self.rng.unit() < self.cfg.partition.map_or(0.0, |p| p.fraction);
        let core = NodeCore::with_config(key.clone(), caps.clone(), self.cfg.settings.core);
        self.index_of.insert(id, self.nodes.len() as u32);
        self.nodes.push(Node {
            key,
            id,
            caps,
            speed,
            core: Some(core),
            sync: (self.cfg.group_nodes() == 0).then(|| Sync::new(&self.cfg.settings)),
            status: Status::Up,
            epoch: 0,
            tick_at: u64::MAX,
            tick_gen: 0,
            running: BTreeMap::new(),
            pending: BTreeMap::new(),
            flush_scheduled: false,
            link_free_at: 0,
            topics: BTreeSet::new(),
            digest: BTreeMap::new(),
            synced: BTreeMap::new(),
            persisted: vec![],
            persisted_dags: vec![],
            ae_turn: 0,
            side,
            bytes_in: 0,
            bytes_out: 0,
        });
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at: at.max(self.now), seq: self.seq, ev });
    }

    fn up(&self, n: u32) -> bool {
        self.nodes[n as usize].status == Status::Up
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.insert(format!("t={} ms: {what}", self.now));
        }
    }

    /// Runs to the end: every DAG ended and the mesh converged, or the time limit.
    pub fn run(mut self) -> Report {
        while let Some(q) = self.queue.pop() {
            if q.at > self.cfg.limit_ms {
                break;
            }
            self.now = q.at;
            self.processed += 1;
            if self.step(q.ev) {
                break;
            }
        }
        self.finish()
    }

    /// Handles one event; true when the run is over.
    fn step(&mut self, ev: Ev) -> bool {
        let kind = match &ev {
            Ev::Deliver { .. } => "deliver",
            Ev::Flush { .. } => "flush",
            Ev::SyncRequest { .. } | Ev::SyncResponse { .. } => "anti-entropy",
            Ev::Tick { .. } => "tick",
            Ev::Finished { .. } => "finished",
            Ev::AntiEntropy { .. } => "anti-entropy",
            _ => "other",
        };
        *self.report.events_by_kind.entry(kind).or_default() += 1;
        match ev {
            Ev::Deliver { to, from, topic, facts } => self.deliver(to, from, topic, facts),
            Ev::Flush { node, epoch } => {
                if self.nodes[node as usize].epoch == epoch && self.up(node) {
                    self.flush(node);
                }
            }
            Ev::Tick { node, generation } => {
                let n = &mut self.nodes[node as usize];
                if n.tick_gen == generation && n.status == Status::Up {
                    n.tick_at = u64::MAX;
                    let now = self.now;
                    n.core.as_mut().expect("up").handle_tick(now);
                    self.drain(node);
                }
            }
            Ev::Finished { node, epoch, claim, ok } => {
                let n = &mut self.nodes[node as usize];
                if n.epoch == epoch
                    && n.status == Status::Up
                    && let Some((dag, job, _)) = n.running.remove(&claim)
                {
                    self.truth[dag as usize][job as usize].live.retain(|(_, c)| *c != claim);
                    let result = if ok {
                        // Content-addressed: every successful run of a job has the same record.
                        let d = &self.dags[dag as usize];
                        Finished::Done { record: Hash::of(format!("{}/{}", d.hash, job).as_bytes()), bytes: 0 }
                    } else {
                        Finished::Failed("simulated failure".to_string())
                    };
                    let now = self.now;
                    self.nodes[node as usize].core.as_mut().expect("up").handle_job_finished(now, claim, result);
                    self.drain(node);
                }
            }
            Ev::AntiEntropy { node, epoch } => {
                if self.nodes[node as usize].epoch == epoch && self.up(node) {
                    let next = if self.nodes[node as usize].sync.is_some() {
                        self.sync_tick(node)
                    } else {
                        self.anti_entropy(node, None);
                        self.now + self.cfg.settings.sync_period_ms
                    };
                    self.push(next, Ev::AntiEntropy { node, epoch });
                }
            }
            Ev::SyncRequest { to, from, req } => self.on_sync_request(to, from, req),
            Ev::SyncResponse { to, from, resp } => self.on_sync_response(to, from, resp),
            Ev::Submit { dag } => self.submit(dag),
            Ev::Churn => {
                self.churn();
                let gap = self.churn_gap();
                self.push(self.now + gap, Ev::Churn);
            }
            Ev::Crash { node, permanent } => self.crash(node, permanent),
            Ev::Restart { node } => self.restart(node),
            Ev::Detect { node, epoch } => {
                if self.nodes[node as usize].epoch == epoch && !self.up(node) {
                    self.forget(node);
                }
            }
            Ev::PartitionStart => self.partitioned = true,
            Ev::PartitionEnd => {
                self.partitioned = false;
                let marks = self.topics.iter().map(|t| t.facts.len()).collect();
                self.heal = Some((self.now, marks));
                self.push(self.now + CONVERGE_CHECK_MS, Ev::Converge);
            }
            Ev::Sample => {
                self.sample();
                self.push(self.now + self.cfg.sample_ms, Ev::Sample);
            }
            Ev::Converge => return self.converge_check(),
        }
        false
    }

    /// The DAG is submitted by a random node; its topic's members get its file.
    fn submit(&mut self, d: u32) {
        let up: Vec<u32> = (0..self.nodes.len() as u32).filter(|&n| self.up(n)).collect();
        if up.is_empty() {
            return self.violation("no node is up to submit a DAG".into());
        }
        let submitter = up[self.rng.range(0, up.len() as u64 - 1) as usize];
        let hash = self.dags[d as usize].hash;
        let topic = if self.cfg.group_nodes() == 0 {
            0
        } else {
            let t = self.topics.len() as u32;
            self.topics.push(Topic { members: vec![], mesh: BTreeMap::new(), facts: vec![], dags: vec![] });
            let mut members: BTreeSet<u32> = self.group_for(d, &up);
            members.insert(submitter);
            for m in members {
                self.subscribe(m, t);
            }
            t
        };
        self.topics[topic as usize].dags.push(d);
        self.topic_of_dag[d as usize] = topic;
        for j in 0..self.truth[d as usize].len() {
            if self.dags[d as usize].deps[j].is_empty() {
                self.truth[d as usize][j].ready_at = Some(self.now);
            }
        }
        let members = self.topics[topic as usize].members.clone();
        let dag = self.dags[d as usize].dag.clone();
        for &m in &members {
            if m != submitter && self.up(m) {
                self.give_dag(m, d);
            }
        }
        if self.cfg.group_nodes() > 0 {
            self.tell_topic_peers(topic);
        }
        let now = self.now;
        let attempts = self.cfg.max_attempts;
        self.nodes[submitter as usize].core.as_mut().expect("up").submit(now, hash, dag, attempts);
        self.nodes[submitter as usize].persisted_dags.push(hash);
        self.drain(submitter);
    }

    /// The nodes that subscribe to a DAG's topic, among the up ones (`topics::group_for`).
    fn group_for(&self, d: u32, up: &[u32]) -> BTreeSet<u32> {
        let sd = &self.dags[d as usize];
        let candidates: Vec<(NodeId, &Capabilities)> =
            up.iter().map(|&n| (self.nodes[n as usize].id, &self.nodes[n as usize].caps)).collect();
        topics::group_for(self.cfg.settings.topics, &sd.hash, &sd.dag, &candidates)
            .iter()
            .map(|id| self.index_of[id])
            .collect()
    }

    /// A node receives a DAG file it will schedule (fetched by hash from a member).
    fn give_dag(&mut self, m: u32, d: u32) {
        let (hash, dag, bytes) = {
            let sd = &self.dags[d as usize];
            (sd.hash, sd.dag.clone(), sd.text_bytes as u64 + MESSAGE_OVERHEAD_BYTES)
        };
        let now = self.now;
        let n = &mut self.nodes[m as usize];
        n.bytes_in += bytes;
        if !n.persisted_dags.contains(&hash) {
            n.persisted_dags.push(hash);
        }
        n.core.as_mut().expect("up").handle_dag(now, hash, dag);
        self.drain(m);
    }

    /// Every member of a DAG topic learns who schedules it (gossipsub tells a node its topic's peers).
    fn tell_topic_peers(&mut self, topic: u32) {
        let t = &self.topics[topic as usize];
        let ids: Vec<NodeId> = t.members.iter().map(|&m| self.nodes[m as usize].id).collect();
        let members = t.members.clone();
        let dags: Vec<Hash> = t.dags.iter().map(|&d| self.dags[d as usize].hash).collect();
        let now = self.now;
        for m in members {
            if !self.up(m) {
                continue;
            }
            for h in &dags {
                self.nodes[m as usize].core.as_mut().expect("up").handle_dag_peers(now, *h, ids.iter().copied());
            }
            self.drain(m);
        }
    }

    /// Adds a node to a topic and to the mesh of `mesh_degree` random members.
    fn subscribe(&mut self, n: u32, topic: u32) {
        let t = &mut self.topics[topic as usize];
        if t.members.contains(&n) {
            return;
        }
        // Half the degree out, the other half comes in from later members: ~`mesh_degree` each.
        let want = self.cfg.mesh_degree.div_ceil(2).min(t.members.len());
        let mut peers: Vec<u32> = Vec::new();
        let mut tries = 0;
        while peers.len() < want && tries < want * 8 {
            tries += 1;
            let p = t.members[self.rng.range(0, t.members.len() as u64 - 1) as usize];
            // gossipsub's D_high: a peer with this many mesh links takes no more.
            let full = t.mesh.get(&p).is_some_and(|m| m.len() >= self.cfg.mesh_degree * 3 / 2);
            if !peers.contains(&p) && !full {
                peers.push(p);
            }
        }
        for &p in &peers {
            t.mesh.entry(p).or_default().push(n);
        }
        t.mesh.insert(n, peers.clone());
        t.members.push(n);
        for p in peers {
            self.link(n, p, true);
        }
        let node = &mut self.nodes[n as usize];
        node.topics.insert(topic);
        node.digest.entry(topic).or_insert(([0; 32], 0));
        node.synced.entry(topic).or_insert(0);
    }

    /// Takes a node out of a topic; its mesh peers left with few peers take new ones.
    fn unsubscribe(&mut self, n: u32, topic: u32) {
        let t = &mut self.topics[topic as usize];
        t.members.retain(|&m| m != n);
        let peers = t.mesh.remove(&n).unwrap_or_default();
        let mut links = Vec::new();
        for p in peers {
            links.push((n, p, false));
            let t = &mut self.topics[topic as usize];
            let Some(pm) = t.mesh.get_mut(&p) else { continue };
            pm.retain(|&x| x != n);
            // gossipsub's D_low: below it a node grafts new mesh peers.
            if pm.len() < self.cfg.mesh_degree / 2 + 1 && t.members.len() > pm.len() + 1 {
                for _ in 0..4 {
                    let q = t.members[self.rng.range(0, t.members.len() as u64 - 1) as usize];
                    let pm = t.mesh.get_mut(&p).expect("member");
                    if q != p && !pm.contains(&q) {
                        pm.push(q);
                        t.mesh.entry(q).or_default().push(p);
                        links.push((p, q, true));
                        break;
                    }
                }
            }
        }
        for (a, b, up) in links {
            self.link(a, b, up);
        }
        self.nodes[n as usize].topics.remove(&topic);
    }

    /// A mesh link between `a` and `b` came up (or went down): with one topic it is the
    /// connection each side's `Sync` takes turns over.
    fn link(&mut self, a: u32, b: u32, up: bool) {
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.nodes[y as usize].id;
            if let Some(sync) = self.nodes[x as usize].sync.as_mut() {
                if up {
                    sync.handle_connected(now, peer);
                } else {
                    sync.handle_disconnected(now, peer);
                }
            }
        }
    }

    /// Node `n`'s `Sync` starts an exchange when one is due; returns when it is next due.
    fn sync_tick(&mut self, n: u32) -> u64 {
        let now = self.now;
        let node = &mut self.nodes[n as usize];
        let (Some(sync), Some(core)) = (node.sync.as_mut(), node.core.as_ref()) else {
            return now + self.cfg.settings.sync_period_ms;
        };
        sync.handle_tick(now, core.ledger());
        let next = sync.poll_timeout().unwrap_or(now + self.cfg.settings.sync_period_ms);
        self.send_sync_requests(n);
        next.max(now + 1)
    }

    /// Sends what node `n`'s `Sync` wants to send.
    fn send_sync_requests(&mut self, n: u32) {
        while let Some((peer, req)) = self.nodes[n as usize].sync.as_mut().and_then(Sync::poll_request) {
            let to = self.index_of[&peer];
            let bytes = request_bytes(&req, &self.meta);
            let at = self.transmit(n, bytes);
            if !self.reachable(n, to) || (self.cfg.loss > 0.0 && self.rng.unit() < self.cfg.loss) {
                continue;
            }
            self.nodes[to as usize].bytes_in += bytes;
            self.push(at, Ev::SyncRequest { to, from: n, req });
        }
    }

    /// A peer's anti-entropy request reaches node `to`: its `Sync` answers, facts pushed to it
    /// are stored (not relayed: the node does not gossip what sync brought).
    fn on_sync_request(&mut self, to: u32, from: u32, req: SyncReq) {
        if !self.up(to) {
            return;
        }
        let now = self.now;
        let node = &mut self.nodes[to as usize];
        let (Some(sync), Some(core)) = (node.sync.as_mut(), node.core.as_ref()) else { return };
        let resp = match sync.handle_request(now, core.ledger(), req) {
            Inbound::Answer(resp) => resp,
            Inbound::Store(facts) => {
                let added = self.store_synced(to, facts);
                SyncResp::Stored { added, refused: 0 }
            }
        };
        let bytes = response_bytes(&resp, &self.meta);
        let at = self.transmit(to, bytes);
        if !self.reachable(to, from) || (self.cfg.loss > 0.0 && self.rng.unit() < self.cfg.loss) {
            return;
        }
        self.nodes[from as usize].bytes_in += bytes;
        self.push(at, Ev::SyncResponse { to: from, from: to, resp });
    }

    /// An answer reaches node `to`: facts it carries are stored, and the `Get`/`Put` its `Sync`
    /// decides on are sent.
    fn on_sync_response(&mut self, to: u32, from: u32, resp: SyncResp) {
        if !self.up(to) {
            return;
        }
        let now = self.now;
        let peer = self.nodes[from as usize].id;
        let node = &mut self.nodes[to as usize];
        let (Some(sync), Some(core)) = (node.sync.as_mut(), node.core.as_ref()) else { return };
        let facts = sync.handle_response(now, core.ledger(), peer, resp);
        self.store_synced(to, facts);
        self.send_sync_requests(to);
    }

    /// Hands facts anti-entropy brought to node `n`'s core; returns how many were new.
    fn store_synced(&mut self, n: u32, facts: Vec<Fact>) -> u64 {
        if facts.is_empty() {
            return 0;
        }
        let now = self.now;
        let mut added = 0;
        for f in facts {
            let Some(vf) = self.meta.get(&f.id()).map(|m| m.fact.clone()) else { continue };
            let id = vf.id();
            if self.nodes[n as usize].core.as_mut().expect("up").handle_verified_fact(now, vf) {
                added += 1;
                self.hold(n, 0, id);
            }
        }
        self.drain(n);
        added
    }

    /// Everything a node's core wants done after an input: facts to publish, runs to start or
    /// stop, its next timer; then the per-step invariant.
    fn drain(&mut self, n: u32) {
        let now = self.now;
        while let Some(f) = self.nodes[n as usize].core.as_mut().expect("up").poll_verified_fact() {
            self.publish(n, f);
        }
        while let Some(a) = self.nodes[n as usize].core.as_mut().expect("up").poll_action() {
            match a {
                Action::Start { claim, dag, job } => self.start(n, claim, dag, &job),
                Action::Stop { claim } => {
                    if let Some((d, j, started)) = self.nodes[n as usize].running.remove(&claim) {
                        self.report.stopped += 1;
                        self.report.wasted_ms += now - started;
                        self.truth[d as usize][j as usize].live.retain(|(_, c)| *c != claim);
                    }
                }
            }
        }
        let node = &mut self.nodes[n as usize];
        if let Some(t) = node.core.as_ref().expect("up").poll_timeout(now)
            && t < node.tick_at
        {
            node.tick_at = t;
            node.tick_gen += 1;
            let generation = node.tick_gen;
            self.push(t, Ev::Tick { node: n, generation });
        }
        self.check_node(n);
    }

    /// Invariant after every step: a node runs only jobs its own view says its claim holds — so
    /// no view has two winners it acts on — and every claim it runs is in its ledger.
    fn check_node(&mut self, n: u32) {
        let node = &self.nodes[n as usize];
        let core = node.core.as_ref().expect("up");
        let mut bad = Vec::new();
        for (claim, &(d, j, _)) in &node.running {
            let sd = &self.dags[d as usize];
            let state = core.ledger().job_state(&sd.hash, &sd.dag.jobs[j as usize].id, self.now);
            if !matches!(state, Some(JobState::Claimed { claim: c, node: w, .. }) if c == *claim && w == node.id) {
                bad.push(format!("node {n} runs {}/j{j} but its view says {state:?}", sd.hash.short()));
            }
        }
        for b in bad {
            self.violation(b);
        }
    }

    fn start(&mut self, n: u32, claim: Hash, dag: Hash, job: &str) {
        let d = self.dag_of[&dag];
        let j: u32 = job[1..].parse().expect("simulated job ids are j<index>");
        let node = &self.nodes[n as usize];
        let run_ms = ((self.dags[d as usize].work_ms[j as usize] as f64 / node.speed) as u64).max(1);
        let epoch = node.epoch;
        let t = &mut self.truth[d as usize][j as usize];
        t.starts += 1;
        if t.live.iter().any(|(m, _)| *m != n) {
            t.concurrent += 1;
        }
        t.first_start.get_or_insert(self.now);
        t.live.push((n, claim));
        self.report.starts += 1;
        self.nodes[n as usize].running.insert(claim, (d, j, self.now));
        let ok = self.cfg.job_failure == 0.0 || self.rng.unit() >= self.cfg.job_failure;
        self.push(self.now + run_ms, Ev::Finished { node: n, epoch, claim, ok });
    }

    /// A fact made by node `n`: recorded, and queued for its mesh peers.
    fn publish(&mut self, n: u32, f: VerifiedFact) {
        let id = f.id();
        let topic = match &f.fact().body {
            Body::Submit { dag, .. } | Body::Cancel { dag } | Body::Claim { dag, .. } | Body::Lost { dag, .. } => {
                self.topic_of_dag[self.dag_of[dag] as usize]
            }
            Body::Renew { claim, .. }
            | Body::Done { claim, .. }
            | Body::Fail { claim, .. }
            | Body::Release { claim } => *self.claim_topic.get(claim).expect("a node finishes only claims it made"),
        };
        if matches!(f.fact().body, Body::Claim { .. }) {
            self.claim_topic.insert(id, topic);
        }
        if let Body::Done { claim, .. } = &f.fact().body
            && let Some((d, j)) = self.claim_job(claim, n)
        {
            self.job_done(d, j, n);
        }
        let bytes = wire::encode(f.fact()).len() as u32;
        self.meta.insert(id, FactMeta { bytes, fact: f.clone() });
        self.topics[topic as usize].facts.push(id);
        self.hold(n, topic, id);
        self.queue_relay(n, topic, f, None);
    }

    /// The (dag, job) of a claim, read from the claimant's ledger.
    fn claim_job(&self, claim: &Hash, n: u32) -> Option<(u32, u32)> {
        let core = self.nodes[n as usize].core.as_ref()?;
        match &core.ledger().get(claim)?.body {
            Body::Claim { dag, job, .. } => Some((self.dag_of[dag], job[1..].parse().ok()?)),
            _ => None,
        }
    }

    fn job_done(&mut self, d: u32, j: u32, n: u32) {
        let t = &mut self.truth[d as usize][j as usize];
        if t.done_at.is_some() {
            if !t.holders.contains(&n) {
                t.holders.push(n);
            }
            return;
        }
        t.done_at = Some(self.now);
        t.holders.push(n);
        // Outputs are copied to the holders `shoal_mesh::replicas` picks among the topic's up
        // members, as every node of it decides alone.
        let topic = self.topic_of_dag[d as usize];
        let record = Hash::of(format!("{}/{}", self.dags[d as usize].hash, j).as_bytes());
        let live: Vec<NodeId> = self.topics[topic as usize]
            .members
            .iter()
            .filter(|&&m| self.up(m))
            .map(|&m| self.nodes[m as usize].id)
            .collect();
        let runner = self.nodes[n as usize].id;
        let copies = output_holders(record, runner, &live, self.cfg.settings.replicas.saturating_sub(1));
        let t = &mut self.truth[d as usize][j as usize];
        t.holders.extend(copies.iter().map(|id| self.index_of[id]));
        self.left[d as usize] -= 1;
        // Dependants whose inputs are now all done are ready.
        let now = self.now;
        let sd = &self.dags[d as usize];
        for k in 0..sd.deps.len() {
            if sd.deps[k].contains(&j)
                && sd.deps[k].iter().all(|&x| self.truth[d as usize][x as usize].done_at.is_some())
            {
                self.truth[d as usize][k].ready_at = Some(now);
            }
        }
        if self.left.iter().all(|&l| l == 0) && self.finished_at.is_none() {
            self.finished_at = Some(now);
            self.push(now + CONVERGE_CHECK_MS, Ev::Converge);
        }
    }

    /// Node `n` now holds fact `id` of `topic`.
    fn hold(&mut self, n: u32, topic: u32, id: Hash) {
        let node = &mut self.nodes[n as usize];
        let e = node.digest.entry(topic).or_insert(([0; 32], 0));
        for (a, b) in e.0.iter_mut().zip(id.0) {
            *a ^= b;
        }
        e.1 += 1;
    }

    fn queue_relay(&mut self, n: u32, topic: u32, f: VerifiedFact, from: Option<u32>) {
        let node = &mut self.nodes[n as usize];
        let batch = node.pending.entry(topic).or_default();
        batch.entry(f.id()).or_insert(Pending { fact: f, from: vec![] }).from.extend(from);
        if !node.flush_scheduled {
            node.flush_scheduled = true;
            let epoch = node.epoch;
            self.push(self.now + self.cfg.flush_ms, Ev::Flush { node: n, epoch });
        }
    }

    /// Sends a node's batched facts to its mesh peers, each without what it sent us.
    fn flush(&mut self, n: u32) {
        let pending = std::mem::take(&mut self.nodes[n as usize].pending);
        self.nodes[n as usize].flush_scheduled = false;
        for (topic, batch) in pending {
            let peers = self.topics[topic as usize].mesh.get(&n).cloned().unwrap_or_default();
            for p in peers {
                let facts: Vec<VerifiedFact> =
                    batch.values().filter(|x| !x.from.contains(&p)).map(|x| x.fact.clone()).collect();
                if facts.is_empty() {
                    continue;
                }
                let bytes =
                    MESSAGE_OVERHEAD_BYTES + facts.iter().map(|f| u64::from(self.meta[&f.id()].bytes)).sum::<u64>();
                self.send(n, p, topic, facts, bytes);
            }
        }
    }

    /// One message on the wire: uplink time, latency, loss, partitions, dead receivers.
    fn send(&mut self, from: u32, to: u32, topic: u32, facts: Vec<VerifiedFact>, bytes: u64) {
        let at = self.transmit(from, bytes);
        if !self.reachable(from, to) || (self.cfg.loss > 0.0 && self.rng.unit() < self.cfg.loss) {
            return;
        }
        self.nodes[to as usize].bytes_in += bytes;
        self.push(at, Ev::Deliver { to, from, topic, facts });
    }

    /// Queues `bytes` on a node's uplink; when they arrive at the far end (before loss).
    fn transmit(&mut self, from: u32, bytes: u64) -> u64 {
        let lat = self.cfg.latency.sample(&mut self.rng);
        let node = &mut self.nodes[from as usize];
        node.bytes_out += bytes;
        let wire_ms = bytes * 8 * 1000 / self.cfg.uplink_bps.max(1);
        node.link_free_at = node.link_free_at.max(self.now) + wire_ms;
        node.link_free_at + lat
    }

    fn reachable(&self, a: u32, b: u32) -> bool {
        self.up(b) && !(self.partitioned && self.nodes[a as usize].side != self.nodes[b as usize].side)
    }

    fn deliver(&mut self, to: u32, from: u32, topic: u32, facts: Vec<VerifiedFact>) {
        if !self.up(to) {
            return;
        }
        let now = self.now;
        for f in facts {
            let id = f.id();
            let new = self.nodes[to as usize].core.as_mut().expect("up").handle_verified_fact(now, f.clone());
            if new {
                self.hold(to, topic, id);
                if let Body::Done { claim, .. } = &f.fact().body
                    && let Some((d, j)) = self.claim_job(claim, to)
                    && self.truth[d as usize][j as usize].holders.is_empty()
                {
                    // A Done whose job no holder remembers (cannot happen: the maker holds it).
                    self.violation(format!("a Done for {d}/j{j} with no holder"));
                }
                self.queue_relay(to, topic, f, Some(from));
            } else if let Some(p) = self.nodes[to as usize].pending.get_mut(&topic).and_then(|b| b.get_mut(&id)) {
                p.from.push(from);
            }
        }
        self.drain(to);
    }

    /// With a topic per DAG, one anti-entropy exchange of node `n` with a mesh peer on one of its
    /// topics, modelled here: per-topic digests; if they differ, the peer's ids, then what each
    /// lacks, both ways. `shoal_mesh::sync::Sync` exchanges whole-ledger digests, which is what one
    /// topic needs; a per-topic sync machine comes with per-DAG topics in the node.
    fn anti_entropy(&mut self, n: u32, only: Option<(u32, u32)>) {
        let (topic, peer) = match only {
            Some(tp) => tp,
            None => {
                let topics: Vec<u32> = self.nodes[n as usize].topics.iter().copied().collect();
                if topics.is_empty() {
                    return;
                }
                let node = &mut self.nodes[n as usize];
                node.ae_turn = node.ae_turn.wrapping_add(1);
                let topic = topics[node.ae_turn % topics.len()];
                let Some(mesh) = self.topics[topic as usize].mesh.get(&n).filter(|m| !m.is_empty()) else { return };
                let peer = mesh[self.rng.range(0, mesh.len() as u64 - 1) as usize];
                (topic, peer)
            }
        };
        let arrive = self.transmit(n, DIGEST_BYTES);
        if !self.reachable(n, peer) {
            return;
        }
        self.nodes[peer as usize].bytes_in += DIGEST_BYTES;
        let mine = self.nodes[n as usize].digest.get(&topic).copied();
        let theirs = self.nodes[peer as usize].digest.get(&topic).copied();
        if mine == theirs {
            // `Same`: one small answer.
            self.transmit(peer, DIGEST_BYTES);
            self.nodes[n as usize].bytes_in += DIGEST_BYTES;
            return;
        }
        let list = &self.topics[topic as usize].facts;
        let from = self.nodes[n as usize].synced[&topic]
            .min(self.nodes[peer as usize].synced.get(&topic).copied().unwrap_or(0));
        let (mut i_lack, mut they_lack) = (Vec::new(), Vec::new());
        let (a, b) =
            (self.nodes[n as usize].core.as_ref().expect("up"), self.nodes[peer as usize].core.as_ref().expect("up"));
        for id in &list[from..] {
            match (a.ledger().get(id).is_some(), b.ledger().get(id).is_some()) {
                (false, true) => i_lack.push(b.ledger().verified(id).expect("held")),
                (true, false) => they_lack.push(a.ledger().verified(id).expect("held")),
                _ => {}
            }
        }
        let peer_count = u64::from(theirs.map_or(0, |t| t.1));
        let size = |v: &[VerifiedFact], meta: &HashMap<Hash, FactMeta>| {
            v.iter().map(|f| u64::from(meta[&f.id()].bytes)).sum::<u64>()
        };
        // The peer answers with its ids; we ask for what we lack and push what it lacks.
        let ids_bytes = MESSAGE_OVERHEAD_BYTES + ID_BYTES * peer_count;
        let get_bytes = MESSAGE_OVERHEAD_BYTES + ID_BYTES * i_lack.len() as u64;
        let put_bytes = MESSAGE_OVERHEAD_BYTES + size(&they_lack, &self.meta);
        let facts_bytes = MESSAGE_OVERHEAD_BYTES + size(&i_lack, &self.meta);
        let t1 = self.transmit(peer, ids_bytes);
        self.nodes[n as usize].bytes_in += ids_bytes;
        let _ = self.transmit(n, get_bytes + put_bytes);
        self.nodes[peer as usize].bytes_in += get_bytes + put_bytes;
        let t2 = self.transmit(peer, facts_bytes);
        self.nodes[n as usize].bytes_in += facts_bytes;
        let rtt = t1.max(arrive) + (t2 - self.now);
        if !i_lack.is_empty() {
            self.push(rtt, Ev::Deliver { to: n, from: peer, topic, facts: i_lack });
        }
        if !they_lack.is_empty() {
            self.push(rtt, Ev::Deliver { to: peer, from: n, topic, facts: they_lack });
        }
        self.advance_synced(n, topic);
        self.advance_synced(peer, topic);
    }

    fn advance_synced(&mut self, n: u32, topic: u32) -> usize {
        let list = &self.topics[topic as usize].facts;
        let node = &mut self.nodes[n as usize];
        let Some(core) = node.core.as_ref() else { return 0 };
        let s = node.synced.entry(topic).or_insert(0);
        while *s < list.len() && core.ledger().get(&list[*s]).is_some() {
            *s += 1;
        }
        *s
    }

    /// One churn event: a crash (back later), a leave, or a join, in proportion 2 : 1 : 1.
    fn churn(&mut self) {
        let up: Vec<u32> = (0..self.nodes.len() as u32).filter(|&n| self.up(n)).collect();
        match self.rng.range(0, 3) {
            0 => {
                let i = self.nodes.len();
                self.add_node(i);
                self.share_peer_table();
                self.report.joins += 1;
                let n = i as u32;
                let epoch = 0;
                // A node's `Sync` starts an exchange as soon as it runs; the modelled one
                // within a period.
                let at = if self.cfg.group_nodes() == 0 {
                    self.now
                } else {
                    self.now + self.rng.range(0, self.cfg.settings.sync_period_ms)
                };
                self.push(at, Ev::AntiEntropy { node: n, epoch });
                if self.cfg.group_nodes() == 0 {
                    self.join_global(n);
                }
            }
            r => {
                if up.len() > 1 {
                    let n = up[self.rng.range(0, up.len() as u64 - 1) as usize];
                    self.crash(n, r == 1);
                }
            }
        }
    }

    /// A new or restarted node on the one topic: it learns the peers and every live DAG.
    fn join_global(&mut self, n: u32) {
        self.subscribe(n, 0);
        let ids: Vec<NodeId> =
            (0..self.nodes.len() as u32).filter(|&m| self.up(m)).map(|m| self.nodes[m as usize].id).collect();
        let now = self.now;
        for m in 0..self.nodes.len() as u32 {
            if self.up(m) {
                self.nodes[m as usize].core.as_mut().expect("up").handle_peers(now, ids.iter().copied());
                self.drain(m);
            }
        }
        for d in self.topics[0].dags.clone() {
            if self.left[d as usize] > 0 && !self.nodes[n as usize].persisted_dags.contains(&self.dags[d as usize].hash)
            {
                self.give_dag(n, d);
            }
        }
    }

    fn crash(&mut self, n: u32, permanent: bool) {
        if !self.up(n) {
            return;
        }
        let now = self.now;
        let node = &mut self.nodes[n as usize];
        let core = node.core.take().expect("up");
        node.persisted = core.ledger().verified_facts().collect();
        node.status = if permanent { Status::Gone } else { Status::Down };
        node.epoch += 1;
        node.pending.clear();
        node.flush_scheduled = false;
        node.tick_at = u64::MAX;
        let lost: Vec<(Hash, (u32, u32, u64))> = std::mem::take(&mut node.running).into_iter().collect();
        let epoch = node.epoch;
        for (claim, (d, j, started)) in lost {
            self.report.wasted_ms += now - started;
            self.truth[d as usize][j as usize].live.retain(|(_, c)| *c != claim);
        }
        if permanent {
            self.report.leaves += 1;
            self.nodes[n as usize].persisted.clear();
        } else {
            self.report.crashes += 1;
            let back = self.rng.exp(DOWNTIME_MEAN_MS) as u64;
            self.push(now + back.max(1), Ev::Restart { node: n });
        }
        // Noticed once its peers have not heard it for the liveness timeout.
        self.push(now + self.cfg.settings.liveness_timeout_ms, Ev::Detect { node: n, epoch });
    }

    /// The failure detector noticed a node is gone: its topics drop it, and a DAG topic left with
    /// fewer than `group_nodes` members takes the next node in rendezvous order.
    fn forget(&mut self, n: u32) {
        let topics: Vec<u32> = self.nodes[n as usize].topics.iter().copied().collect();
        for t in topics {
            self.unsubscribe(n, t);
            if self.cfg.group_nodes() == 0 {
                continue;
            }
            let live_dags: Vec<u32> =
                self.topics[t as usize].dags.iter().copied().filter(|&d| self.left[d as usize] > 0).collect();
            if live_dags.is_empty() {
                continue;
            }
            let up_members = self.topics[t as usize].members.iter().filter(|&&m| self.up(m)).count();
            if up_members < self.cfg.group_nodes() {
                let d = live_dags[0];
                let up: Vec<NodeId> = (0..self.nodes.len() as u32)
                    .filter(|&m| self.up(m) && !self.topics[t as usize].members.contains(&m))
                    .map(|m| self.nodes[m as usize].id)
                    .collect();
                let hash = self.dags[d as usize].hash;
                if let Some(m) = topics::replacement(&hash, up).map(|id| self.index_of[&id]) {
                    self.subscribe(m, t);
                    for d in live_dags {
                        self.give_dag(m, d);
                    }
                    if let Some(&peer) = self.topics[t as usize].mesh.get(&m).and_then(|x| x.first()) {
                        self.anti_entropy(m, Some((t, peer)));
                    }
                }
            }
            self.tell_topic_peers(t);
        }
        if self.cfg.group_nodes() == 0 {
            let ids: Vec<NodeId> =
                (0..self.nodes.len() as u32).filter(|&m| self.up(m)).map(|m| self.nodes[m as usize].id).collect();
            let now = self.now;
            for m in 0..self.nodes.len() as u32 {
                if self.up(m) {
                    self.nodes[m as usize].core.as_mut().expect("up").handle_peers(now, ids.iter().copied());
                    self.drain(m);
                }
            }
        }
    }

    /// A crashed node comes back with what it persisted: its ledger's facts and DAG files.
    fn restart(&mut self, n: u32) {
        if self.nodes[n as usize].status != Status::Down {
            return;
        }
        let now = self.now;
        let node = &mut self.nodes[n as usize];
        let mut core = NodeCore::with_config(node.key.clone(), node.caps.clone(), self.cfg.settings.core);
        core.handle_peer_table(now, self.peer_table.clone());
        for f in std::mem::take(&mut node.persisted) {
            core.handle_verified_fact(now, f);
        }
        node.core = Some(core);
        node.sync = (self.cfg.group_nodes() == 0).then(|| Sync::new(&self.cfg.settings));
        node.status = Status::Up;
        node.tick_at = u64::MAX;
        let epoch = node.epoch;
        for h in node.persisted_dags.clone() {
            let dag: Arc<Dag> = self.dags[self.dag_of[&h] as usize].dag.clone();
            self.nodes[n as usize].core.as_mut().expect("up").handle_dag(now, h, dag);
        }
        // What the core made while reloading (claims, as `shoal node` would make them) is
        // published by the drain below.
        let at =
            if self.cfg.group_nodes() == 0 { now } else { now + self.rng.range(0, self.cfg.settings.sync_period_ms) };
        self.push(at, Ev::AntiEntropy { node: n, epoch });
        if self.cfg.group_nodes() == 0 {
            let was = self.nodes[n as usize].topics.contains(&0);
            if was {
                self.unsubscribe(n, 0);
            }
            self.join_global(n);
        } else {
            // Back into the topics of its DAGs that are still running.
            let mine: Vec<u32> = self.nodes[n as usize].persisted_dags.iter().map(|h| self.dag_of[h]).collect();
            for d in mine {
                let t = self.topic_of_dag[d as usize];
                if self.left[d as usize] == 0 || t == u32::MAX {
                    continue;
                }
                if self.topics[t as usize].members.contains(&n) {
                    self.unsubscribe(n, t);
                }
                self.subscribe(n, t);
                self.tell_topic_peers(t);
                if let Some(&peer) = self.topics[t as usize].mesh.get(&n).and_then(|x| x.first()) {
                    self.anti_entropy(n, Some((t, peer)));
                }
            }
        }
        self.drain(n);
    }

    /// With `marks`: every fact made before the mark that some up member of its topic holds, every
    /// up member holds. Without: the up members of every topic hold the same facts (equal digests).
    fn converged(&mut self, marks: Option<&[usize]>) -> bool {
        for t in 0..self.topics.len() {
            let up: Vec<u32> = self.topics[t].members.iter().copied().filter(|&m| self.up(m)).collect();
            if up.len() < 2 {
                continue;
            }
            match marks {
                None => {
                    let d0 = self.nodes[up[0] as usize].digest.get(&(t as u32));
                    if up.iter().any(|&m| self.nodes[m as usize].digest.get(&(t as u32)) != d0) {
                        return false;
                    }
                }
                Some(marks) => {
                    let want = marks.get(t).copied().unwrap_or(0);
                    let from = up.iter().map(|&m| self.advance_synced(m, t as u32)).min().unwrap_or(0);
                    for id in &self.topics[t].facts[from.min(want)..want] {
                        let held = up
                            .iter()
                            .filter(|&&m| self.nodes[m as usize].core.as_ref().expect("up").ledger().get(id).is_some())
                            .count();
                        if held > 0 && held < up.len() {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// Every DAG ended in the view of every up member of its topic.
    fn views_ended(&self) -> bool {
        self.dags.iter().enumerate().all(|(d, sd)| {
            let t = self.topic_of_dag[d];
            t != u32::MAX
                && self.topics[t as usize].members.iter().filter_map(|&m| self.nodes[m as usize].core.as_ref()).all(
                    |core| {
                        core.ledger().dag_state(&sd.hash, self.now).is_some_and(|s| {
                            s.jobs.values().all(|j| {
                                matches!(j, JobState::Done { .. } | JobState::Failed { .. } | JobState::Cancelled)
                            })
                        })
                    },
                )
        })
    }

    fn converge_check(&mut self) -> bool {
        if let Some((healed, marks)) = self.heal.take() {
            if self.converged(Some(&marks)) {
                self.report.converge_after_heal_ms = Some(self.now - healed);
            } else {
                self.heal = Some((healed, marks));
            }
        }
        if let Some(end) = self.finished_at {
            if self.heal.is_none() && self.converged(None) && self.views_ended() {
                self.report.converge_at_end_ms = Some(self.now - end);
                return true;
            }
            if self.now > end + CONVERGE_LIMIT_MS {
                self.violation(format!(
                    "the mesh did not converge within {CONVERGE_LIMIT_MS} ms of the last DAG ending"
                ));
                return true;
            }
        }
        self.push(self.now + CONVERGE_CHECK_MS, Ev::Converge);
        false
    }

    /// Metrics over time, and the invariants that cost more than a step: two members of a topic
    /// holding the same facts agree on every job of it.
    fn sample(&mut self) {
        let up: Vec<&Node> = self.nodes.iter().filter(|n| n.status == Status::Up).collect();
        let bytes: u64 = self.nodes.iter().map(|n| n.bytes_in).sum();
        let dt_s = (self.now - self.last_sample.0) as f64 / 1000.0;
        let row = SampleRow {
            t_s: self.now as f64 / 1000.0,
            done: self.truth.iter().flatten().filter(|t| t.done_at.is_some()).count(),
            running: up.iter().map(|n| n.running.len()).sum(),
            up_nodes: up.len(),
            gossip_bytes_per_node_s: (bytes - self.last_sample.1) as f64 / up.len().max(1) as f64 / dt_s.max(1e-9),
            starts: self.report.starts,
            duplicates: self.truth.iter().flatten().map(|t| u64::from(t.concurrent)).sum(),
            events: self.processed,
        };
        self.last_sample = (self.now, bytes);
        if self.cfg.progress {
            eprintln!(
                "t={:.2} h: {} of {} jobs done, {} running, {} nodes up, {:.2} kbit/s/node, {} events",
                row.t_s / 3600.0,
                row.done,
                self.report.jobs,
                row.running,
                row.up_nodes,
                row.gossip_bytes_per_node_s * 8.0 / 1000.0,
                row.events
            );
        }
        self.report.samples.push(row);
        for _ in 0..VIEW_CHECKS_PER_SAMPLE.min(self.topics.len()) {
            let t = self.rng.range(0, self.topics.len() as u64 - 1) as usize;
            let members: Vec<u32> = self.topics[t].members.iter().copied().filter(|&m| self.up(m)).collect();
            if members.len() < 2 {
                continue;
            }
            let a = members[self.rng.range(0, members.len() as u64 - 1) as usize];
            let b = members[self.rng.range(0, members.len() as u64 - 1) as usize];
            let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
            if a == b || na.digest.get(&(t as u32)) != nb.digest.get(&(t as u32)) {
                continue;
            }
            let mut bad = Vec::new();
            for &d in &self.topics[t].dags {
                let h = self.dags[d as usize].hash;
                let sa = na.core.as_ref().expect("up").ledger().dag_state(&h, self.now);
                let sb = nb.core.as_ref().expect("up").ledger().dag_state(&h, self.now);
                if sa != sb {
                    bad.push(format!("nodes {a} and {b} hold the same facts of DAG {} but disagree", h.short()));
                }
            }
            for what in bad {
                self.violation(what);
            }
        }
    }

    /// Prints, for the DAGs that ended latest past their own bound, the chain of jobs that made
    /// them end when they did: per job its wait for a claim, its run, and what it needed.
    fn explain_slowest(&self, fastest: f64) {
        let mut late: Vec<(i64, usize)> = self
            .dags
            .iter()
            .enumerate()
            .filter_map(|(d, sd)| {
                let end = self.truth[d].iter().filter_map(|t| t.done_at).max()?;
                Some((end as i64 - (sd.submit_at_ms + sd.critical_path_ms(fastest)) as i64, d))
            })
            .collect();
        late.sort_unstable_by(|a, b| b.cmp(a));
        for &(over, d) in late.iter().take(3) {
            let (sd, truth) = (&self.dags[d], &self.truth[d]);
            let mut j = (0..truth.len()).max_by_key(|&j| truth[j].done_at.unwrap_or(0)).unwrap_or(0);
            let (mut wait, mut run, mut ideal, mut chain) = (0u64, 0u64, 0u64, Vec::new());
            loop {
                let t = &truth[j];
                let (ready, start, done) =
                    (t.ready_at.unwrap_or(0), t.first_start.unwrap_or(0), t.done_at.unwrap_or(0));
                wait += start.saturating_sub(ready);
                run += done.saturating_sub(start);
                ideal += (sd.work_ms[j] as f64 / fastest) as u64;
                let req = &sd.dag.jobs[j].requirements;
                chain.push(format!(
                    "{}(wait {}s run {}s{}{}{})",
                    sd.dag.jobs[j].id,
                    start.saturating_sub(ready) / 1000,
                    done.saturating_sub(start) / 1000,
                    if req.gpu.is_some() { " gpu" } else { "" },
                    if req.arch.is_some() { " arch" } else { "" },
                    if t.starts > 1 { format!(" starts {}", t.starts) } else { String::new() },
                ));
                match sd.deps[j].iter().max_by_key(|&&p| truth[p as usize].done_at.unwrap_or(0)) {
                    Some(&p) => j = p as usize,
                    None => break,
                }
            }
            chain.reverse();
            eprintln!(
                "DAG {d}: {over_s} s past its bound; its last chain waited {w} s, ran {r} s (at the fastest speed {i} s): {}",
                chain.join(" -> "),
                over_s = over / 1000,
                w = wait / 1000,
                r = run / 1000,
                i = ideal / 1000
            );
        }
    }

    fn finish(mut self) -> Report {
        self.sample();
        let now = self.now;
        let mut r = std::mem::take(&mut self.report);
        let truth = self.truth.iter().flatten();
        r.done = truth.clone().filter(|t| t.done_at.is_some()).count();
        r.makespan_ms = truth.clone().filter_map(|t| t.done_at).max().unwrap_or(0);
        r.extra_starts = truth.clone().map(|t| u64::from(t.starts.saturating_sub(1))).sum();
        r.concurrent_duplicates = truth.clone().map(|t| u64::from(t.concurrent)).sum();
        r.claim_latency_ms =
            Percentiles::of(truth.clone().filter_map(|t| Some(t.first_start?.saturating_sub(t.ready_at?))).collect());
        // Lower bound: no DAG ends before its submit plus its critical path at the fastest speed,
        // and no schedule beats the total work spread over every core of the starting mesh.
        let fastest = self.nodes.iter().map(|n| n.speed).fold(0.0f64, f64::max).max(1e-9);
        let capacity: f64 = self.nodes[..self.cfg.nodes].iter().map(|n| f64::from(n.caps.cores) * n.speed).sum();
        let work: u64 = self.dags.iter().flat_map(|d| d.work_ms.iter()).sum();
        let first = self.dags.iter().map(|d| d.submit_at_ms).min().unwrap_or(0);
        let cp = self.dags.iter().map(|d| d.submit_at_ms + d.critical_path_ms(fastest)).max().unwrap_or(0);
        let by_work = first + (work as f64 / capacity.max(1e-9)) as u64;
        r.lower_bound_ms = cp.max(by_work);
        let mean_speed = self.nodes.iter().map(|n| n.speed).sum::<f64>() / self.nodes.len().max(1) as f64;
        let cp_mean = self.dags.iter().map(|d| d.submit_at_ms + d.critical_path_ms(mean_speed)).max().unwrap_or(0);
        r.lower_bound_mean_speed_ms = cp_mean.max(by_work);
        if std::env::var_os("SHOAL_SIM_EXPLAIN").is_some() {
            self.explain_slowest(fastest);
        }
        // Gossip: bytes received per node per second of the run, over the nodes' up time.
        let span_s = (r.makespan_ms.max(1) as f64) / 1000.0;
        let per_node: Vec<f64> = self.nodes.iter().map(|n| n.bytes_in as f64 / span_s).collect();
        r.gossip_bytes_per_node_s = per_node.iter().sum::<f64>() / per_node.len().max(1) as f64;
        r.gossip_bytes_per_node_s_max = per_node.iter().copied().fold(0.0, f64::max);
        r.events = self.processed;
        r.facts_made = self.meta.len() as u64;
        r.facts_held = self.nodes.iter().filter_map(|n| n.core.as_ref()).map(|n| n.ledger().len() as u64).sum();
        if self.cfg.given.is_some()
            && let Some(core) = self.nodes.iter().find_map(|n| n.core.as_ref())
        {
            r.histories = core
                .ledger()
                .history(&self.dags[0].hash)
                .into_iter()
                .map(|(job, facts)| (job, facts.iter().map(|f| f.body.kind()).collect()))
                .collect();
        }
        // Every submitted DAG ended in every up member's view, once the mesh healed.
        for (d, sd) in self.dags.iter().enumerate() {
            let t = self.topic_of_dag[d];
            if t == u32::MAX {
                self.violations.insert(format!("DAG {d} was never submitted"));
                continue;
            }
            for &m in &self.topics[t as usize].members {
                let Some(core) = self.nodes[m as usize].core.as_ref() else { continue };
                let ended = core.ledger().dag_state(&sd.hash, now).is_some_and(|s| {
                    s.jobs
                        .values()
                        .all(|j| matches!(j, JobState::Done { .. } | JobState::Failed { .. } | JobState::Cancelled))
                });
                if !ended && self.violations.len() < 20 {
                    self.violations.insert(format!("DAG {} has not ended in node {m}'s view", sd.hash.short()));
                }
            }
            if let Some(core) =
                self.topics[t as usize].members.iter().find_map(|&m| self.nodes[m as usize].core.as_ref())
                && let Some(s) = core.ledger().dag_state(&sd.hash, now)
            {
                r.failed += s.jobs.values().filter(|j| matches!(j, JobState::Failed { .. })).count();
            }
        }
        // Every Done job's outputs are held by a node that has not left, or recomputable: its DAG
        // is still held by such a node (the lineage), so it can be run again from its inputs.
        for (d, jobs) in self.truth.iter().enumerate() {
            let t = self.topic_of_dag[d];
            let dag_held = t != u32::MAX
                && self.topics[t as usize].members.iter().any(|&m| self.nodes[m as usize].status != Status::Gone);
            for (j, tr) in jobs.iter().enumerate() {
                if tr.done_at.is_none() {
                    continue;
                }
                if tr.holders.iter().all(|&h| self.nodes[h as usize].status == Status::Gone) {
                    r.outputs_lost += 1;
                    if !dag_held {
                        self.violations.insert(format!("DAG {d} job {j}: outputs lost and its DAG with them"));
                    }
                }
            }
        }
        if self.finished_at.is_none() {
            self.violations.insert(format!("{} of {} jobs done when the run stopped", r.done, r.jobs));
        } else if r.converge_at_end_ms.is_none() {
            self.violations.insert("the ledgers did not converge".into());
        }
        if self.cfg.partition.is_some() && r.converge_after_heal_ms.is_none() {
            self.violations.insert("the mesh did not converge after the partition healed".into());
        }
        if r.makespan_ms < r.lower_bound_ms && r.done == r.jobs {
            self.violations
                .insert(format!("makespan {} ms beats the lower bound {} ms", r.makespan_ms, r.lower_bound_ms));
        }
        r.violations = self
            .violations
            .into_iter()
            .map(|v| format!("seed {}: {v} (replay: SHOAL_SIM_SEED={})", r.seed, r.seed))
            .collect();
        r
    }
}

/// One run of `cfg`.
pub fn run(cfg: &Config) -> Report {
    Sim::new(cfg.clone()).run()
}
