//! The simulator proper: every node's `shoal-mesh` machines under one virtual clock and one event
//! queue. This file holds the nodes, topics and events, the event loop, and what a node's core asks
//! for (submits, DAG files, runs, facts to publish); the rest is by concern:
//! - [`net`]: the message layer (uplink, latency, loss, partitions) and what messages weigh.
//! - [`gossip`]: topic meshes and fact gossip (gossipsub-like relaying in batches).
//! - [`anti_entropy`]: the node's `Sync` over mesh links (one topic), or over each DAG topic's
//!   mesh peers (a topic per DAG, one scope per DAG).
//! - [`liveness`]: each node's own `Liveness`, fed by the heartbeats it receives.
//! - [`outputs`]: copies of outputs (each node's `Replicas`), and inputs nobody can serve (the
//!   daemon's recheck, then `lost::judge`).
//! - [`churn`]: crashes, restarts, leaves and joins, and the dropped connections the gossip mesh
//!   notices.
//! - [`invariants`]: what is checked after every step, and convergence.
//! - [`metrics`]: samples over time and the final report.

mod anti_entropy;
mod churn;
mod compaction;
mod gossip;
mod invariants;
mod liveness;
mod metrics;
mod net;
mod outputs;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use shoal_dag::{Arch, Hash};
use shoal_mesh::capabilities::{Capabilities, SPEED_REFERENCE};
use shoal_mesh::core::{Action, Finished, NodeCore, PeerTable};
use shoal_mesh::ledger::{Body, NodeId, VerifiedFact};
use shoal_mesh::liveness::Liveness;
use shoal_mesh::replicas::Replicas;
use shoal_mesh::sync::Sync;
use shoal_mesh::topics;
use shoal_mesh::wire::{self, SyncReq, SyncResp};

use crate::workload::{self, SimDag};
use crate::{Config, Report, Rng};
use invariants::CONVERGE_CHECK_MS;
use net::MESSAGE_OVERHEAD_BYTES;

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
    /// The gossip mesh noticed a node's connections gone (its topics drop it).
    Detect {
        node: u32,
        epoch: u32,
    },
    /// A heartbeat of `from` reaches `to`.
    Heartbeat {
        from: u32,
        to: Vec<u32>,
        /// One hop (a greeting or heartbeat), not a gossiped mesh announcement.
        direct: bool,
    },
    /// Node `node`'s `Liveness` is due (a heartbeat to send, a peer to forget).
    Liveness {
        node: u32,
        generation: u32,
    },
    /// Node `node` asks the holders of its claim's inputs once more (the daemon's recheck).
    Recheck {
        node: u32,
        epoch: u32,
        claim: Hash,
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
    /// How far its wall clock is off, ms (positive ahead): its core reads the virtual time plus
    /// this (see `Config::clock_offsets_ms`).
    clock_offset_ms: i64,
    core: Option<NodeCore>,
    /// Anti-entropy with its mesh peers, when there is one topic (rebuilt at a restart).
    sync: Option<Sync>,
    /// Heartbeats and which peers are alive, from what this node heard (rebuilt at a restart).
    liveness: Liveness,
    /// Which outputs of other nodes' runs it keeps a copy of (rebuilt at a restart).
    replicas: Replicas,
    /// When its `Liveness` event is queued for, and that event's generation.
    liveness_at: u64,
    liveness_gen: u32,
    /// When it last sent a heartbeat.
    last_beat_at: u64,
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
    /// The DAGs its ledger compacted or adopted as compacted (their summaries are in the store:
    /// [`Sim::summaries`]); they survive a crash.
    compacted: Vec<Hash>,
    /// Restarted from persisted facts and not caught up with the mesh yet: it claims nothing
    /// until this says, as `shoal node`.
    catch_up: Option<shoal_mesh::sync::CatchUp>,
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
    /// The topic it travels on (its DAG's).
    topic: u32,
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
    /// Nodes that hold the outputs of a completion: (its run record, the node).
    holders: Vec<(Hash, u32)>,
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
    /// How long each peer a node forgot had been silent, ms.
    forgotten_silent_ms: Vec<u64>,
    /// (DAG, job) by run record.
    job_of_record: HashMap<Hash, (u32, u32)>,
    /// Every compacted DAG's summary (every node makes the same one; a node that adopts a
    /// compaction fetches it from a peer, as the daemon does).
    summaries: HashMap<Hash, shoal_mesh::ledger::DagSummary>,
}

fn node_key(i: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

impl Sim {
    pub fn new(cfg: Config) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let dags = match &cfg.given {
            Some(g) => {
                let mut dag = workload::given(&g.text, g.work_ms).expect("the given DAG is valid");
                if !g.job_work_ms.is_empty() {
                    assert_eq!(g.job_work_ms.len(), dag.work_ms.len(), "one work per job of the given DAG");
                    dag.work_ms.clone_from(&g.job_work_ms);
                }
                vec![dag]
            }
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
            job_of_record: HashMap::new(),
            summaries: HashMap::new(),
            forgotten_silent_ms: Vec::new(),
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
            // A warm start: the mesh has been up a while, so every node has heard every other.
            for n in &mut sim.nodes {
                let clock = virtual_ms(0, -n.clock_offset_ms);
                n.core.as_mut().expect("up").handle_peers(clock, ids.iter().copied());
                for id in ids.iter().filter(|id| **id != n.id) {
                    n.liveness.handle_heard(0, *id, true);
                }
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
        for n in 0..sim.nodes.len() as u32 {
            // Heartbeats in phase with when each node started, not all at once.
            let at = sim.rng.range(0, sim.cfg.settings.heartbeat_ms);
            sim.schedule_liveness(n, at);
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
        for m in 0..self.nodes.len() as u32 {
            if self.up(m) {
                let (table, now) = (self.peer_table.clone(), self.clock(m));
                self.nodes[m as usize].core.as_mut().expect("up").handle_peer_table(now, table);
            }
        }
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
            let gpus = if self.rng.range(0, 19) == 0 {
                vec![shoal_mesh::capabilities::GpuCap::model("sim-gpu")]
            } else {
                vec![]
            };
            let caps = Capabilities {
                arch,
                cores,
                memory_bytes: u64::from(cores) * (2 << 30),
                cpu_flags: BTreeSet::new(),
                gpus,
                labels: BTreeMap::new(),
                microvm: true,
                // The simulator runs no microVMs: no accelerator to rank by.
                vm_accel: None,
                speed: SPEED_REFERENCE,
                emulated: Vec::new(),
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
                vm_accel: None,
                speed: SPEED_REFERENCE,
                emulated: Vec::new(),
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
            sync: Some(Sync::new(&self.cfg.settings)),
            liveness: Liveness::new(&self.cfg.settings),
            replicas: Replicas::new(id, &self.cfg.settings),
            liveness_at: u64::MAX,
            liveness_gen: 0,
            last_beat_at: 0,
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
            compacted: vec![],
            catch_up: None,
            side,
            clock_offset_ms: self.cfg.clock_offsets_ms.iter().find(|(k, _)| *k == i).map_or(0, |(_, o)| *o),
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
    /// What node `n`'s wall clock reads now (the virtual time plus its offset), as its core is
    /// told.
    pub(super) fn clock(&self, n: u32) -> u64 {
        virtual_ms(self.now, -self.nodes[n as usize].clock_offset_ms)
    }

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
            Ev::Finished { .. } | Ev::Recheck { .. } => "finished",
            Ev::Heartbeat { .. } | Ev::Liveness { .. } => "liveness",
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
                    let now = self.clock(node);
                    self.nodes[node as usize].core.as_mut().expect("up").handle_tick(now);
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
                        // A run record is signed and carries its run's times: each run's differs
                        // (a record reported lost never counts again, so a rerun must not reuse it).
                        let record = Hash::of(format!("{}/{job}/{claim}", self.dags[dag as usize].hash).as_bytes());
                        self.job_of_record.insert(record, (dag, job));
                        Finished::Done { record, bytes: 0, action: None, result: None }
                    } else {
                        Finished::Failed("simulated failure".to_string())
                    };
                    let now = self.clock(node);
                    self.nodes[node as usize].core.as_mut().expect("up").handle_job_finished(now, claim, result);
                    self.drain(node);
                }
            }
            Ev::AntiEntropy { node, epoch } => {
                if self.nodes[node as usize].epoch == epoch && self.up(node) {
                    self.sync_dag_peers(node);
                    // The daemon compacts from its loop; here at each anti-entropy turn, when
                    // the core says it is due.
                    self.compact(node);
                    let next = self.sync_tick(node);
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
            Ev::Heartbeat { from, to, direct } => self.on_heartbeat(from, &to, direct),
            Ev::Liveness { node, generation } => {
                let n = &mut self.nodes[node as usize];
                if n.liveness_gen == generation && n.status == Status::Up {
                    n.liveness_at = u64::MAX;
                    n.liveness.handle_tick(self.now);
                    self.drive_liveness(node);
                }
            }
            Ev::Recheck { node, epoch, claim } => {
                if self.nodes[node as usize].epoch == epoch && self.up(node) {
                    self.recheck(node, claim);
                }
            }
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

    /// The DAG is submitted by `Config::submitter` if it is up, else by a random node; its
    /// topic's members get its file.
    fn submit(&mut self, d: u32) {
        let up: Vec<u32> = (0..self.nodes.len() as u32).filter(|&n| self.up(n)).collect();
        if up.is_empty() {
            return self.violation("no node is up to submit a DAG".into());
        }
        let submitter = match self.cfg.submitter.map(|n| n as u32).filter(|n| up.contains(n)) {
            Some(n) => n,
            None => up[self.rng.range(0, up.len() as u64 - 1) as usize],
        };
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
        let now = self.clock(submitter);
        let attempts = self.cfg.max_attempts;
        let topic_nodes = self.cfg.group_nodes() as u32;
        self.nodes[submitter as usize].core.as_mut().expect("up").submit_to_group(
            now,
            hash,
            dag,
            attempts,
            topic_nodes,
        );
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
        let now = self.clock(m);
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
        for m in members {
            if !self.up(m) {
                continue;
            }
            let now = self.clock(m);
            for h in &dags {
                self.nodes[m as usize].core.as_mut().expect("up").handle_dag_peers(now, *h, ids.iter().copied());
            }
            self.drain(m);
        }
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
        let (clock, offset) = (self.clock(n), self.nodes[n as usize].clock_offset_ms);
        let node = &mut self.nodes[n as usize];
        // The core's deadline is by its own clock; the event queue's by the virtual one.
        if let Some(t) = node.core.as_ref().expect("up").poll_timeout(clock).map(|t| virtual_ms(t, offset))
            && t < node.tick_at
        {
            node.tick_at = t;
            node.tick_gen += 1;
            let generation = node.tick_gen;
            self.push(t, Ev::Tick { node: n, generation });
        }
        self.check_node(n);
    }

    fn start(&mut self, n: u32, claim: Hash, dag: Hash, job: &str) {
        let d = self.dag_of[&dag];
        let j: u32 = job[1..].parse().expect("simulated job ids are j<index>");
        let t = &mut self.truth[d as usize][j as usize];
        t.starts += 1;
        if t.live.iter().any(|(m, _)| *m != n) {
            t.concurrent += 1;
        }
        t.first_start.get_or_insert(self.now);
        t.live.push((n, claim));
        self.report.starts += 1;
        self.nodes[n as usize].running.insert(claim, (d, j, self.now));
        if self.unfetchable_input(n, d, j).is_some() {
            // The daemon asks every provider once more after a while (`Settings::lost_recheck_ms`).
            let epoch = self.nodes[n as usize].epoch;
            self.push(self.now + self.cfg.settings.lost_recheck_ms, Ev::Recheck { node: n, epoch, claim });
        } else {
            self.run_job(n, claim, d, j);
        }
    }

    /// Node `n` has its claim's inputs: the run takes the job's work at the node's speed.
    fn run_job(&mut self, n: u32, claim: Hash, d: u32, j: u32) {
        let node = &self.nodes[n as usize];
        let run_ms = ((self.dags[d as usize].work_ms[j as usize] as f64 / node.speed) as u64).max(1);
        let epoch = node.epoch;
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
            Body::Alive { dag, .. } => self.topic_of_dag[self.dag_of[dag] as usize],
            Body::Renew { claim, .. }
            | Body::Done { claim, .. }
            | Body::Fail { claim, .. }
            | Body::Release { claim } => *self.claim_topic.get(claim).expect("a node finishes only claims it made"),
            // The simulated nodes verify nothing, so quarantine no one.
            Body::Quarantine { .. } => unreachable!("no simulated node quarantines"),
        };
        if matches!(f.fact().body, Body::Claim { .. }) {
            self.claim_topic.insert(id, topic);
        }
        if let Body::Done { claim, record, .. } = &f.fact().body
            && let Some((d, j)) = self.claim_job(claim, n)
        {
            self.job_done(d, j, n, *record);
        }
        let bytes = wire::encode(f.fact()).len() as u32;
        self.meta.insert(id, FactMeta { bytes, fact: f.clone(), topic });
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

    fn job_done(&mut self, d: u32, j: u32, n: u32, record: Hash) {
        let t = &mut self.truth[d as usize][j as usize];
        if t.done_at.is_some() {
            if !t.holders.contains(&(record, n)) {
                t.holders.push((record, n));
            }
            return;
        }
        t.done_at = Some(self.now);
        // The runner holds the outputs; the nodes whose `Replicas` pick them copy them as the
        // Done reaches them (`outputs::keep_copies`).
        t.holders.push((record, n));
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
}

/// `t` moved back by `offset` ms (a node's clock reading to virtual time), floored at 0.
fn virtual_ms(t: u64, offset: i64) -> u64 {
    u64::try_from(i128::from(t) - i128::from(offset)).unwrap_or(0)
}
