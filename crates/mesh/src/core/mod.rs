//! One node's scheduler as a sans-IO state machine: facts, capabilities and job results come in
//! through `handle_*(now_ms, ..)`; facts to gossip and jobs to start or stop come out of
//! `poll_*()`; `poll_timeout()` says when to call `handle_tick` next. No clock, no I/O, no
//! randomness: `shoal node` drives it with real time and libp2p, `simulations/` with a virtual clock.
//!
//! Policy: a node claims a job when the job is open, its dependencies are done, it fits this node
//! and this node has the cores free; at half its claims' lease it says it is alive, one `Alive`
//! per DAG it runs jobs of (not a renewal per claim), and gives up a claim of its own it does not
//! run (one made before a restart); when a smaller claim
//! wins a job it is running, it stops it (the race costs one attempt, results are content-addressed).
//!
//! Placement: every node ranks the peers that could run a job the same way and waits its place's
//! stagger before claiming, so the first in rank usually runs it. The order: peers holding at
//! least [`LOCALITY_BYTES_MIN`] of the job's inputs (its dependencies' runners) first, the most
//! bytes first; then weighted rendezvous hashing with weight speed^k, k up to
//! [`SPEED_EXPONENT`] for jobs that start a DAG's longest chain, so faster nodes take most jobs
//! (and a critical path runs near the fastest nodes' speed) while load still spreads. The order uses only what every node sees alike (the ledger's completions, announced
//! capabilities), not the load a node's view shows: views of load differ while claims travel, and
//! two nodes that each think they rank first both claim (simulated: 10 × the duplicate runs).
//! A job whose input is lost with every holder is reported with [`Finished::Lost`]: the core says
//! so in the ledger, gives its claim up, and the upstream job runs again.
//!
//! Cost: every input re-evaluates only the jobs it can change (a fact: its job, or its DAG for a
//! submit or cancel; time: the jobs whose lease ended), against the ledger's incremental view.
//! Claimable jobs wait in a queue ordered by when this node may claim them, one queue per core
//! count, so an event costs O(log jobs), not a scan of every job (at 10k nodes and 100k jobs a scan
//! per event was the whole budget).
//!
//! Layout: this file holds the core's inputs and outputs and the claim and lease logic (`evaluate`,
//! `settle`); `rank` the placement order and the peers' capabilities it reads ([`PeerTable`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use shoal_dag::{Dag, Hash};

use crate::capabilities::{Capabilities, mismatches};
use crate::ledger::{Body, Fact, Hlc, JobState, Ledger, LedgerError, NodeId, Quorum, Touched, VerifiedFact};

mod rank;

pub use rank::PeerTable;
use rank::{key64, ln_speed, point};

/// How long a claim holds unless its node says it is alive (`Body::Alive`), in ms.
pub const LEASE_MS: u64 = 10_000;
/// How long a node waits, per place it ranks behind for a job, before claiming it: the node that
/// ranks first for a job (rendezvous hashing over the known peers) claims at once, the second
/// after this long if the job is still open, and so on. Without it every node claims every job
/// that opens and all but one of those runs are stopped. The least the core uses: it waits
/// longer when facts take longer to arrive (see [`STAGGER_PER_PROPAGATION_P99`]).
pub const CLAIM_STAGGER_MS: u64 = 200;
/// The stagger per rank place is at least this many times the p99 of how long peers' claims took
/// to reach this node, so the next-ranked node hears the first one's claim before its own turn
/// (simulated at 200 nodes: a stagger below propagation made a third of the claims race).
pub const STAGGER_PER_PROPAGATION_P99: u64 = 3;
/// Claims whose propagation delay the core keeps, the latest ones: the p99 is over these.
pub const PROPAGATION_WINDOW_CLAIMS: usize = 256;
/// A claim that took longer than this to arrive, in ms, is not a gossip delay but anti-entropy
/// repairing a loss, a healed partition, or a clock that is off: it is not counted. This bounds the
/// adaptive stagger at [`STAGGER_PER_PROPAGATION_P99`] × this.
pub const PROPAGATION_SAMPLE_MAX_MS: u64 = 2_000;

/// Inputs a node must hold of a job, in bytes, before it ranks ahead of faster free peers for it:
/// below this, moving the inputs costs less than a slower node's time.
pub const LOCALITY_BYTES_MIN: u64 = 1 << 20;
/// How strongly placement prefers fast nodes: a node's weight in the rendezvous is its speed to
/// this power for the jobs that start a DAG's longest chain (speed 1.5 against 1.0 weighs 650 ×),
/// falling to a quarter of it (5 ×) for jobs nothing reads, so the critical path runs on the
/// fastest nodes while the bulk of the work spreads (and a crash of a fast node loses few runs).
/// Chosen by simulation (docs/SIMULATIONS.md): 8 for every job left 1.13 × the makespan bound
/// at 10k nodes; 16 for every job cost 2 % re-runs after crashes.
pub const SPEED_EXPONENT: u32 = 16;

/// The timing a core runs with; `Default` is what `shoal node` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// How long a claim holds unless its node says it is alive; an `Alive` goes out at half of it.
    pub lease_ms: u64,
    /// The least wait per rank place before claiming (see [`CLAIM_STAGGER_MS`] and
    /// [`NodeCore::claim_stagger_ms`]).
    pub claim_stagger_ms: u64,
    /// See [`LOCALITY_BYTES_MIN`].
    pub locality_bytes_min: u64,
    /// See [`SPEED_EXPONENT`]; 0 ranks by hash alone.
    pub speed_exponent: u32,
    /// See [`CLOCK_SKEW_MAX_MS`](crate::settings::CLOCK_SKEW_MAX_MS).
    pub clock_skew_max_ms: u64,
    /// How long an ended DAG stays in the ledger after its last fact, ms (see
    /// [`LEDGER_RETENTION_MS`] and [`NodeCore::compact`]).
    pub ledger_retention_ms: u64,
}

/// [`CoreConfig::ledger_retention_ms`] unless told otherwise: a day, so `shoal status` of last
/// night's DAG reads its facts, and the ledger holds about a day of DAGs.
pub const LEDGER_RETENTION_MS: u64 = 86_400_000;

/// How often a node looks for DAGs to compact: a quarter of the retention, between a second and
/// an hour, ms.
pub fn compact_every_ms(retention_ms: u64) -> u64 {
    (retention_ms / 4).clamp(1_000, 3_600_000)
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            lease_ms: LEASE_MS,
            claim_stagger_ms: CLAIM_STAGGER_MS,
            locality_bytes_min: LOCALITY_BYTES_MIN,
            speed_exponent: SPEED_EXPONENT,
            clock_skew_max_ms: crate::settings::CLOCK_SKEW_MAX_MS,
            ledger_retention_ms: LEDGER_RETENTION_MS,
        }
    }
}

/// How a run this node started ended (see [`NodeCore::handle_job_finished`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// It succeeded with this run record, whose outputs weigh `bytes`; `action` is the job's
    /// action key (the mesh-wide cache's index), where the runner knows it.
    /// `result` is the digest of its outputs and exit (`RunRecord::result_digest`), which
    /// completions under a DAG's [`Quorum`] compare.
    Done { record: Hash, bytes: u64, action: Option<Hash>, result: Option<Hash> },
    /// It failed: the attempt counts.
    Failed(String),
    /// It could not start: the outputs of `record`, the completion of its dependency `job`, could
    /// be fetched from no node. The job `job` runs again and this one waits for it; the attempt
    /// does not count.
    Lost { job: String, record: Hash },
}

/// What the node should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run `job` of `dag`; report with `handle_job_finished(claim, ..)`.
    Start { claim: Hash, dag: Hash, job: String },
    /// Another claim won, or the DAG was cancelled: stop the run of `claim`.
    Stop { claim: Hash },
}

/// A claim this node holds and is running.
struct Running {
    dag: Hash,
    job: u32,
    cores: u32,
    lease_until_ms: u64,
}

/// A job this node may claim: open, dependencies done, fits.
#[derive(Clone, Copy)]
struct Candidate {
    /// When this node may claim it: when it saw it open, plus its rank's stagger.
    eligible_ms: u64,
    cores: u32,
}

/// A DAG whose content and submit this node both have, as the scheduler tracks it.
struct Sched {
    dag: Arc<Dag>,
    index: BTreeMap<String, u32>,
    dependants: Vec<Vec<u32>>,
    /// Per job, how many of its dependencies are not done yet in this node's view.
    waiting: Vec<u32>,
    done: Vec<bool>,
    /// Per job, whether its requirements fit this node (capabilities do not change).
    fits: Vec<bool>,
    /// Per job, the first 8 bytes of BLAKE3(dag, job): its rendezvous point.
    point: Vec<u64>,
    /// Per job, the jobs it depends on.
    deps: Vec<Vec<u32>>,
    /// Per job, the longest chain of jobs from it to the DAG's end (1 for a job nothing reads),
    /// and the longest in the DAG: how critical the job is to when the DAG ends.
    height: Vec<u32>,
    max_height: u32,
}

pub struct NodeCore {
    key: SigningKey,
    id: NodeId,
    /// This node's rendezvous key (the first 8 bytes of its id).
    me: u64,
    caps: Capabilities,
    cfg: CoreConfig,
    hlc: Hlc,
    ledger: Ledger,
    /// DAG contents by hash, once known (submitted here or fetched).
    dags: BTreeMap<Hash, Arc<Dag>>,
    /// DAGs both known and submitted.
    sched: BTreeMap<Hash, Sched>,
    running: BTreeMap<Hash, Running>,
    /// The claim this node runs for a job, by (dag, job index).
    running_by_job: BTreeMap<(Hash, u32), Hash>,
    /// Rendezvous keys of the known peers, this node included; ranks jobs among nodes.
    peers: Vec<u64>,
    /// Per DAG, the peers that schedule it, when a DAG is scheduled by a group of the mesh rather
    /// than by everyone (its gossip topic's subscribers).
    dag_peers: BTreeMap<Hash, Vec<u64>>,
    /// DAGs scheduled by a group this node is not in: it claims none of their jobs.
    outside: BTreeSet<Hash>,
    candidates: BTreeMap<(Hash, u32), Candidate>,
    /// The candidates by core count, each in the order this node may claim them.
    queues: BTreeMap<u32, BTreeSet<(u64, Hash, u32)>>,
    /// Lease ends of jobs claimed elsewhere that this node could take over (dependencies done,
    /// fitting): the job is looked at again then. One entry per job, moved when the lease is
    /// renewed, so a node wakes when a lease really ends, not at every renewal in its view.
    leases: BTreeSet<(u64, Hash, u32)>,
    lease_of: BTreeMap<(Hash, u32), u64>,
    out_facts: VecDeque<VerifiedFact>,
    out_actions: VecDeque<Action>,
    /// Peers' announced capabilities (see [`NodeCore::handle_peer_caps`]).
    peer_caps: Arc<PeerTable>,
    /// ln(this node's speed).
    ln_speed: f64,
    /// Whether it claims jobs (see [`NodeCore::set_claiming`]).
    claiming: bool,
    /// How long peers' claims took to arrive, and the stagger that follows from it.
    propagation: Propagation,
    /// The HLC of this core's first claim: its `Alive`s keep its claims from then on, not those
    /// of an earlier run of the node (`Body::Alive::since`).
    since: Option<Hlc>,
    /// The trust policy written into the DAGs this node submits ([`NodeCore::set_quorum`]).
    quorum: Option<Quorum>,
    /// When `handle_tick` next looks for DAGs to compact, ms.
    next_compact_ms: u64,
}

/// How long peers' claims take to reach this node: now minus the claim's HLC when it arrives,
/// over the latest [`PROPAGATION_WINDOW_CLAIMS`] claims. The HLC is never behind its author's
/// clock, so with clocks in step this is the gossip delay; a clock that is off shifts it, and
/// [`PROPAGATION_SAMPLE_MAX_MS`] bounds what that can do to the stagger.
#[derive(Debug, Default)]
struct Propagation {
    /// Delays in ms, oldest first.
    window: VecDeque<u64>,
    /// Their p99, kept up to date.
    p99_ms: u64,
}

impl Propagation {
    fn record(&mut self, delay_ms: u64) {
        if delay_ms > PROPAGATION_SAMPLE_MAX_MS {
            return;
        }
        if self.window.len() == PROPAGATION_WINDOW_CLAIMS {
            self.window.pop_front();
        }
        self.window.push_back(delay_ms);
        let mut sorted: Vec<u64> = self.window.iter().copied().collect();
        let at = (sorted.len() * 99).div_ceil(100).saturating_sub(1);
        self.p99_ms = *sorted.select_nth_unstable(at).1;
    }
}

impl NodeCore {
    pub fn new(key: SigningKey, caps: Capabilities) -> NodeCore {
        NodeCore::with_config(key, caps, CoreConfig::default())
    }

    pub fn with_config(key: SigningKey, caps: Capabilities, cfg: CoreConfig) -> NodeCore {
        let id = key.verifying_key().to_bytes();
        // A zero lease would make every claim lapse the moment it is made.
        let cfg = CoreConfig { lease_ms: cfg.lease_ms.max(2), ..cfg };
        NodeCore {
            key,
            id,
            me: key64(&id),
            ln_speed: ln_speed(caps.speed),
            caps,
            cfg,
            hlc: Hlc::default(),
            ledger: Ledger::with_lease_ms(cfg.lease_ms),
            dags: BTreeMap::new(),
            sched: BTreeMap::new(),
            running: BTreeMap::new(),
            running_by_job: BTreeMap::new(),
            peers: vec![key64(&id)],
            dag_peers: BTreeMap::new(),
            outside: BTreeSet::new(),
            candidates: BTreeMap::new(),
            queues: BTreeMap::new(),
            leases: BTreeSet::new(),
            lease_of: BTreeMap::new(),
            out_facts: VecDeque::new(),
            out_actions: VecDeque::new(),
            peer_caps: Arc::default(),
            claiming: true,
            propagation: Propagation::default(),
            since: None,
            quorum: None,
            next_compact_ms: 0,
        }
    }

    /// Whether this node claims jobs; on by default. A node that does not yet know what time it
    /// is (`shoal node --clock-from-mesh` before it heard a peer's) keeps folding facts and
    /// ranking, but claims nothing: its claims would carry leases by a clock it knows to be wrong.
    pub fn set_claiming(&mut self, now_ms: u64, on: bool) {
        self.claiming = on;
        self.settle(now_ms);
    }

    /// The trust policy of the DAGs this node submits from now on: their jobs' completions
    /// count once `agree` nodes made the same outputs, a completion by this node or one of
    /// `trusted` alone (see [`Quorum`]). `agree` of 1 or less: every completion counts alone.
    pub fn set_quorum(&mut self, agree: u32, trusted: impl IntoIterator<Item = NodeId>) {
        self.quorum = (agree > 1).then(|| {
            let mut trusted: BTreeSet<NodeId> = trusted.into_iter().collect();
            trusted.insert(self.id);
            Quorum { agree: agree.min(crate::ledger::QUORUM_AGREE_MAX), trusted: trusted.into_iter().collect() }
        });
    }

    pub fn claiming(&self) -> bool {
        self.claiming
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Ids of the facts the ledger no longer holds since the last call: `Alive`s a later one of
    /// the same node and DAG replaced ([`Ledger::take_replaced`]). A driver that stores facts
    /// deletes them.
    pub fn take_replaced_facts(&mut self) -> Vec<Hash> {
        self.ledger.take_replaced()
    }

    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    pub fn config(&self) -> CoreConfig {
        self.cfg
    }

    /// The p99 of how long peers' claims took to reach this node, in ms, over the latest
    /// [`PROPAGATION_WINDOW_CLAIMS`] (0 before any arrived).
    pub fn propagation_p99_ms(&self) -> u64 {
        self.propagation.p99_ms
    }

    /// The wait per rank place before claiming now, in ms: the configured stagger, or
    /// [`STAGGER_PER_PROPAGATION_P99`] × [`NodeCore::propagation_p99_ms`] if that is longer.
    pub fn claim_stagger_ms(&self) -> u64 {
        self.cfg.claim_stagger_ms.max(STAGGER_PER_PROPAGATION_P99 * self.propagation.p99_ms)
    }

    /// The content of a DAG, if this node has it.
    pub fn dag(&self, hash: &Hash) -> Option<&Dag> {
        self.dags.get(hash).map(|d| &**d)
    }

    /// Jobs this node is running now.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Jobs this node could claim now or later (open, dependencies done, fitting).
    pub fn candidate_count(&self) -> usize {
        self.candidates.len()
    }

    /// Abandons a DAG: its open and claimed jobs end as cancelled (done ones stay done).
    pub fn cancel(&mut self, now_ms: u64, dag: Hash) {
        self.emit(now_ms, Body::Cancel { dag });
        self.settle(now_ms);
    }

    /// Signs, stores and queues for gossip a fact of this node, and folds it in.
    fn emit(&mut self, now_ms: u64, body: Body) -> Hash {
        self.hlc = self.hlc.tick(now_ms);
        let verified = VerifiedFact::own(Fact::sign(&self.key, self.hlc, body));
        let id = verified.id();
        self.out_facts.push_back(verified.clone());
        let touched = self.ledger.insert_verified(verified);
        self.touch(now_ms, touched);
        id
    }

    /// Submits a DAG from here, on the mesh's one topic; its content is known at once.
    pub fn submit(&mut self, now_ms: u64, dag_hash: Hash, dag: impl Into<Arc<Dag>>, max_attempts: u32) {
        self.submit_to_group(now_ms, dag_hash, dag, max_attempts, 0);
    }

    /// Submits a DAG from here, scheduled by a group of `topic_nodes` nodes on a topic of its
    /// own (0: the mesh's one topic; see `Body::Submit`). The driver names the group
    /// ([`NodeCore::handle_dag_peers`]).
    pub fn submit_to_group(
        &mut self,
        now_ms: u64,
        dag_hash: Hash,
        dag: impl Into<Arc<Dag>>,
        max_attempts: u32,
        topic_nodes: u32,
    ) {
        if self.ledger.compacted(&dag_hash).is_some() {
            // It ran and was compacted: what became of it is its summary, not a new run.
            return;
        }
        let dag = dag.into();
        let jobs = dag.jobs.iter().map(|j| j.id.clone()).collect();
        self.dags.insert(dag_hash, dag);
        let quorum = self.quorum.clone();
        self.emit(now_ms, Body::Submit { dag: dag_hash, jobs, max_attempts, topic_nodes, quorum });
        self.settle(now_ms);
    }

    /// The content of a DAG this node learned about from a `Submit` (fetched by hash).
    pub fn handle_dag(&mut self, now_ms: u64, dag_hash: Hash, dag: impl Into<Arc<Dag>>) {
        if self.dags.contains_key(&dag_hash) || self.ledger.compacted(&dag_hash).is_some() {
            return;
        }
        self.dags.insert(dag_hash, dag.into());
        self.touch(now_ms, Touched::Dag(dag_hash));
        self.settle(now_ms);
    }

    /// DAGs named by the ledger whose content this node lacks: fetch them by hash.
    pub fn wanted_dags(&self, _now_ms: u64) -> Vec<Hash> {
        self.ledger.dags().filter(|h| !self.dags.contains_key(h)).copied().collect()
    }

    /// The nodes of the mesh as gossip knows them (this node is always among them). Jobs already
    /// waiting keep their place; the new ranks count for jobs that open from now on (re-ranking
    /// every waiting job on every change of membership would cost O(jobs × peers) per change).
    pub fn handle_peers(&mut self, now_ms: u64, peers: impl IntoIterator<Item = NodeId>) {
        self.peers = peers
            .into_iter()
            .filter(|p| self.ledger.quarantine_of(p).is_none())
            .map(|p| key64(&p))
            .chain([self.me])
            .collect();
        self.peers.sort_unstable();
        self.peers.dedup();
        self.settle(now_ms);
    }

    /// The nodes that schedule one DAG (its topic's members, as `topics::group_for` names them),
    /// when not all of the mesh does: its jobs are ranked among them only, and a node not among
    /// them claims none of its jobs (it may still hold the DAG's submit and facts, to answer
    /// `shoal status`). Same rule as [`NodeCore::handle_peers`] for jobs already waiting; a node
    /// that joins or leaves the group looks at every job of the DAG again.
    pub fn handle_dag_peers(&mut self, now_ms: u64, dag: Hash, peers: impl IntoIterator<Item = NodeId>) {
        let mut keys: Vec<u64> = peers.into_iter().map(|p| key64(&p)).collect();
        let member = keys.contains(&self.me);
        keys.push(self.me);
        keys.sort_unstable();
        keys.dedup();
        // A group named for the first time lets a member schedule a DAG whose submit names one.
        let first = self.dag_peers.insert(dag, keys).is_none();
        let was_member = !self.outside.contains(&dag);
        if member {
            self.outside.remove(&dag);
        } else {
            self.outside.insert(dag);
        }
        if member != was_member || first {
            self.touch(now_ms, Touched::Dag(dag));
        }
        self.settle(now_ms);
    }

    /// Whether this node schedules `dag`'s jobs: yes unless [`NodeCore::handle_dag_peers`] named a
    /// group without it, or the DAG's submit names a group (`Body::Submit::topic_nodes`) and the
    /// driver has not named it yet (until then this node cannot know it is in it).
    pub fn schedules(&self, dag: &Hash) -> bool {
        schedules(&self.ledger, &self.dag_peers, &self.outside, dag)
    }

    /// The capabilities peers announced (a driver with them calls this; without it every known
    /// peer counts as able to run every job, free, and of the reference speed). Used only to rank:
    /// a peer that could never run a job is no reason to wait for it, a faster free one is. Same
    /// rule as [`NodeCore::handle_peers`] for jobs waiting.
    pub fn handle_peer_caps(&mut self, now_ms: u64, caps: impl IntoIterator<Item = (NodeId, Capabilities)>) {
        self.handle_peer_table(now_ms, Arc::new(PeerTable::new(caps)));
    }

    /// [`NodeCore::handle_peer_caps`] with a table built once for many cores.
    pub fn handle_peer_table(&mut self, now_ms: u64, table: Arc<PeerTable>) {
        self.peer_caps = table;
        self.settle(now_ms);
    }

    /// A fact from a peer. A refused fact changes nothing: one that does not verify, and one whose
    /// HLC reads more than `clock_skew_max_ms` ahead of `now_ms` ([`LedgerError::Ahead`]).
    pub fn handle_fact(&mut self, now_ms: u64, fact: Fact) -> Result<(), LedgerError> {
        self.admissible(now_ms, &fact)?;
        self.handle_verified_fact(now_ms, fact.verified()?);
        Ok(())
    }

    /// Whether a fact's clock is believable at `now_ms`: its HLC at most `clock_skew_max_ms` ahead.
    /// Refused rather than held back: holding would cost memory a wrong clock decides (a node a
    /// year ahead makes a year of facts), while anti-entropy offers a refused fact again every
    /// round, so it is admitted once this node's clock reaches it. Until then this node's ledger
    /// lacks it, as a node's ledger lacks a fact still travelling: the fold of the facts held is
    /// the same function on every node.
    pub fn admissible(&self, now_ms: u64, fact: &Fact) -> Result<(), LedgerError> {
        let ahead_ms = fact.hlc.wall_ms.saturating_sub(now_ms);
        if ahead_ms > self.cfg.clock_skew_max_ms {
            return Err(LedgerError::Ahead { ahead_ms, skew_max_ms: self.cfg.clock_skew_max_ms });
        }
        Ok(())
    }

    /// A fact already checked by this process (shared by a simulator that checked it once for all
    /// its nodes). Returns whether it was new; a fact
    /// whose clock reads too far ahead ([`NodeCore::admissible`]) is not taken, and is not new.
    pub fn handle_verified_fact(&mut self, now_ms: u64, fact: VerifiedFact) -> bool {
        if self.admissible(now_ms, fact.fact()).is_err() {
            return false;
        }
        let f = fact.fact();
        let claim_at = (matches!(f.body, Body::Claim { .. }) && f.author != self.id).then_some(f.hlc.wall_ms);
        let new = self.restore_fact(now_ms, fact);
        if let Some(at) = claim_at.filter(|_| new) {
            self.propagation.record(now_ms.saturating_sub(at));
        }
        new
    }

    /// A fact this node admitted before, read back from its own store at start: not judged by the
    /// clock again (a node restarted with its clock still wrong, before `--clock-from-mesh` took
    /// the mesh's time, must not drop what it held). Returns whether it was new.
    pub fn restore_fact(&mut self, now_ms: u64, fact: VerifiedFact) -> bool {
        let hlc = fact.fact().hlc;
        let quarantined = match &fact.fact().body {
            Body::Quarantine { node, .. } if *node != self.id => Some(key64(node)),
            _ => None,
        };
        let touched = self.ledger.insert_verified(fact);
        if touched == Touched::Duplicate {
            return false;
        }
        if let Some(key) = quarantined {
            // Ranked among no job's runners any more (it claims nothing).
            self.peers.retain(|k| *k != key);
        }
        self.hlc = self.hlc.observe(hlc, now_ms, self.cfg.clock_skew_max_ms);
        self.touch(now_ms, touched);
        self.settle(now_ms);
        true
    }

    /// A run this node started has ended.
    pub fn handle_job_finished(&mut self, now_ms: u64, claim: Hash, result: Finished) {
        let Some((dag, job)) = self.running.get(&claim).map(|r| (r.dag, r.job)) else { return };
        if let Finished::Lost { job, record } = &result {
            // Said while the claim still counts as running here: the Lost reopens the upstream
            // job, which makes this one wait again, and a claim of this node's it does not run
            // would be released (and then released a second time below). Released after the
            // Lost, so no peer sees this job open while its input still reads done.
            self.emit(now_ms, Body::Lost { dag, job: job.clone(), record: *record });
        }
        self.running.remove(&claim);
        self.running_by_job.remove(&(dag, job));
        match result {
            Finished::Done { record, bytes, action, result } => {
                let job_id = self.sched.get(&dag).map(|s| s.dag.jobs[job as usize].id.clone());
                if let (Some(r), Some(job_id)) = (result, job_id) {
                    for (node, theirs) in self.ledger.would_outvote(&dag, &job_id, &self.id, r, now_ms) {
                        self.quarantine_outvoted(now_ms, dag, &job_id, node, theirs, record);
                    }
                }
                self.emit(now_ms, Body::Done { claim, record, bytes, action, result });
            }
            Finished::Failed(mut reason) => {
                if reason.len() > crate::ledger::REASON_BYTES_MAX {
                    let mut end = crate::ledger::REASON_BYTES_MAX;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                self.emit(now_ms, Body::Fail { claim, reason });
            }
            Finished::Lost { .. } => {
                self.emit(now_ms, Body::Release { claim });
            }
        }
        self.settle(now_ms);
    }

    /// The outputs of `record`, the completion of `job`, could be fetched from no node (a
    /// reader of them found so): the job runs again.
    pub fn report_lost(&mut self, now_ms: u64, dag: Hash, job: String, record: Hash) {
        self.emit(now_ms, Body::Lost { dag, job, record });
        self.settle(now_ms);
    }

    /// This node ran the action of `record` (a completion of `job` of `dag`, made by `node`)
    /// again and got other outputs (`rerun`, its record; `reason`, which differ): `node` is
    /// quarantined, and the completion reported lost, so the job runs again elsewhere.
    pub fn quarantine(
        &mut self,
        now_ms: u64,
        node: NodeId,
        (dag, job): (Hash, String),
        record: Hash,
        rerun: Hash,
        reason: String,
    ) {
        self.emit(now_ms, Body::Quarantine { node, record, rerun, reason });
        self.emit(now_ms, Body::Lost { dag, job, record });
        self.settle(now_ms);
    }

    /// `node`'s completion `record` of `job` disagreed with the quorum this node's `rerun` made.
    fn quarantine_outvoted(&mut self, now_ms: u64, dag: Hash, job: &str, node: NodeId, record: Hash, rerun: Hash) {
        if node == self.id || self.ledger.quarantine_of(&node).is_some() {
            return;
        }
        let agree = self.ledger.quorum(&dag).map_or(0, |q| q.agree);
        let reason = format!("its outputs of job `{job}` of DAG {dag} differ from those {agree} other nodes agree on");
        self.emit(now_ms, Body::Quarantine { node, record, rerun, reason });
    }

    /// Whether some node found this node's outputs wrong: it claims nothing then.
    pub fn quarantined(&self) -> bool {
        self.ledger.quarantine_of(&self.id).is_some()
    }

    /// Time passed: say this node is alive in each DAG whose claims' leases are half gone (one
    /// `Alive` per DAG, whatever the number of its claims), claim what became claimable.
    pub fn handle_tick(&mut self, now_ms: u64) {
        let half = self.cfg.lease_ms / 2;
        let due: BTreeSet<Hash> =
            self.running.values().filter(|r| r.lease_until_ms.saturating_sub(now_ms) <= half).map(|r| r.dag).collect();
        let lease = now_ms + self.cfg.lease_ms;
        let since = self.since.unwrap_or_default();
        for dag in due {
            for r in self.running.values_mut().filter(|r| r.dag == dag) {
                r.lease_until_ms = lease;
            }
            self.emit(now_ms, Body::Alive { dag, lease_until_ms: lease, since });
        }
        self.settle(now_ms);
    }

    /// When the driver should next call [`NodeCore::compact`], ms.
    pub fn next_compact_ms(&self) -> u64 {
        self.next_compact_ms
    }

    /// Compacts the ledger at `now_ms` (see `ledger/compact.rs`): each DAG that ended more than
    /// the retention ago leaves it, and this core forgets it. Returns their summaries, for the
    /// driver to keep (as blobs; handed back with [`NodeCore::restore_compacted`] at its next
    /// start) before it deletes the facts [`NodeCore::take_replaced_facts`] names. A driver
    /// calls it at start and every [`compact_every_ms`] ([`NodeCore::next_compact_ms`]).
    pub fn compact(&mut self, now_ms: u64) -> Vec<crate::ledger::DagSummary> {
        self.next_compact_ms = now_ms + compact_every_ms(self.cfg.ledger_retention_ms);
        let summaries = self.ledger.compact(now_ms, self.cfg.ledger_retention_ms);
        for s in &summaries {
            self.forget_dag(&s.dag);
        }
        if !summaries.is_empty() {
            self.settle(now_ms);
        }
        summaries
    }

    /// Takes in a DAG compacted before, from the summary a driver stored (see
    /// [`Ledger::restore_compacted`]); before the stored facts, at start.
    pub fn restore_compacted(&mut self, summary: &crate::ledger::DagSummary) {
        self.ledger.restore_compacted(summary);
        self.forget_dag(&summary.dag);
    }

    /// A peer said it compacted `dag` (`Sync::poll_compacted`): this node, which still held facts
    /// of it, compacts it too (see [`Ledger::adopt_compacted`]). Whether it was new here.
    pub fn adopt_compacted(&mut self, now_ms: u64, dag: Hash, compacted: crate::ledger::Compacted) -> bool {
        if !self.ledger.adopt_compacted(dag, compacted) {
            return false;
        }
        self.forget_dag(&dag);
        self.settle(now_ms);
        true
    }

    /// Drops what this core keeps about `dag` besides the ledger (it ended: nothing runs or waits).
    fn forget_dag(&mut self, dag: &Hash) {
        self.dags.remove(dag);
        self.sched.remove(dag);
        self.dag_peers.remove(dag);
        self.outside.remove(dag);
        let stale: Vec<Hash> = self.running.iter().filter(|(_, r)| r.dag == *dag).map(|(c, _)| *c).collect();
        for claim in stale {
            if let Some(r) = self.running.remove(&claim) {
                self.running_by_job.remove(&(r.dag, r.job));
            }
            self.out_actions.push_back(Action::Stop { claim });
        }
        self.candidates.retain(|(d, _), _| d != dag);
        for q in self.queues.values_mut() {
            q.retain(|(_, d, _)| d != dag);
        }
        self.leases.retain(|(_, d, _)| d != dag);
        self.lease_of.retain(|(d, _), _| d != dag);
    }

    /// When `handle_tick` is next needed: the earliest `Alive` due, a lease expiring, or a waiting job
    /// this node may claim with the cores it has free.
    pub fn poll_timeout(&self, now_ms: u64) -> Option<u64> {
        let half = self.cfg.lease_ms / 2;
        let renewals = self.running.values().map(|r| r.lease_until_ms.saturating_sub(half)).min();
        let expiry = self.leases.first().map(|(t, ..)| *t);
        let free = self.free_cores();
        let claimable = self
            .queues
            .range(..=free)
            .filter(|_| self.claiming)
            .filter_map(|(_, q)| q.first().map(|(t, ..)| *t))
            .filter(|t| *t > now_ms)
            .min();
        [renewals, expiry, claimable].into_iter().flatten().min().map(|t| t.max(now_ms))
    }

    pub fn poll_fact(&mut self) -> Option<Fact> {
        self.out_facts.pop_front().map(|f| f.fact().clone())
    }

    /// [`NodeCore::poll_fact`] with its id and proof of checking, for drivers that share facts.
    pub fn poll_verified_fact(&mut self) -> Option<VerifiedFact> {
        self.out_facts.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.out_actions.pop_front()
    }

    pub fn free_cores(&self) -> u32 {
        self.caps.cores.saturating_sub(self.running.values().map(|r| r.cores).sum())
    }

    /// Re-evaluates what a new fact (or DAG content) may have changed.
    fn touch(&mut self, now_ms: u64, touched: Touched) {
        match touched {
            Touched::Duplicate | Touched::Nothing => {}
            Touched::Job { dag, job } => {
                if let Some(idx) = self.sched.get(&dag).and_then(|s| s.index.get(&job)).copied() {
                    self.evaluate(now_ms, dag, idx);
                }
            }
            Touched::Jobs { dag, jobs } => {
                for job in jobs {
                    if let Some(idx) = self.sched.get(&dag).and_then(|s| s.index.get(&job)).copied() {
                        self.evaluate(now_ms, dag, idx);
                    }
                }
            }
            Touched::Dag(dag) => {
                if !self.sched.contains_key(&dag) {
                    self.start_tracking(dag);
                }
                let n = self.sched.get(&dag).map_or(0, |s| s.dag.jobs.len() as u32);
                for idx in 0..n {
                    self.evaluate(now_ms, dag, idx);
                }
            }
        }
    }

    /// Starts scheduling a DAG once both its content and a submit of it are here.
    fn start_tracking(&mut self, hash: Hash) {
        let Some(dag) = self.dags.get(&hash).cloned() else { return };
        if !self.ledger.has_dag(&hash) {
            return;
        }
        let n = dag.jobs.len();
        let deps = dag.all_dependencies();
        let mut dependants = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependants[d].push(i as u32);
            }
        }
        // Heights, from the last jobs back (dependants before the jobs they read: reverse topological).
        let order = dag.topo_order();
        let mut height = vec![1u32; n];
        for &i in order.iter().rev() {
            height[i] = 1 + dependants[i].iter().map(|&k| height[k as usize]).max().unwrap_or(0);
        }
        let sched = Sched {
            index: dag.jobs.iter().enumerate().map(|(i, j)| (j.id.clone(), i as u32)).collect(),
            dependants,
            waiting: deps.iter().map(|d| d.len() as u32).collect(),
            done: vec![false; n],
            fits: dag.jobs.iter().map(|j| mismatches(&j.requirements, &self.caps).is_empty()).collect(),
            point: dag.jobs.iter().map(|j| point(&hash, &j.id)).collect(),
            deps: deps.iter().map(|d| d.iter().map(|&i| i as u32).collect()).collect(),
            max_height: height.iter().copied().max().unwrap_or(1),
            height,
            dag,
        };
        self.sched.insert(hash, sched);
    }

    /// Brings one job's place in this node's queues in line with the ledger at `now_ms`, and its
    /// dependants' when it became done.
    fn evaluate(&mut self, now_ms: u64, dag: Hash, idx: u32) {
        let mut work = vec![idx];
        // Claims of ours another claim beat: given up at once, so that if the winner fails or
        // releases, a claim nobody runs does not hold the job until its lease ends.
        let mut beaten = Vec::new();
        // Nodes whose completions a quorum this node completed disagrees with.
        let mut dissenters = Vec::new();
        while let Some(idx) = work.pop() {
            let Some(s) = self.sched.get_mut(&dag) else { break };
            // A handle of its own on the DAG (an Arc), so the job can be read while `self` is.
            let dag_content = s.dag.clone();
            let job = &dag_content.jobs[idx as usize];
            let state = self.ledger.job_state(&dag, &job.id, now_ms);
            let done = matches!(state, Some(JobState::Done { .. }));
            if done != s.done[idx as usize] {
                // Done, or no longer done (its outputs were lost): its dependants wait one
                // dependency less, or one more.
                s.done[idx as usize] = done;
                if done
                    && let Some(d) = self.ledger.dissent(&dag, &job.id, now_ms)
                    && d.completer == self.id
                {
                    dissenters
                        .extend(d.outvoted.into_iter().map(|(node, record)| (node, record, d.agreed, job.id.clone())));
                }
                for &k in &s.dependants[idx as usize] {
                    if done {
                        s.waiting[k as usize] -= 1;
                        if s.waiting[k as usize] == 0 {
                            work.push(k);
                        }
                    } else {
                        s.waiting[k as usize] += 1;
                        if s.waiting[k as usize] == 1 {
                            work.push(k);
                        }
                    }
                }
            }
            let key = (dag, idx);
            let claimable = matches!(state, Some(JobState::Open { .. }))
                && !(self.ledger.quorum(&dag).is_some() && self.ledger.ran(&dag, &job.id, &self.id))
                && s.waiting[idx as usize] == 0
                && s.fits[idx as usize]
                && schedules(&self.ledger, &self.dag_peers, &self.outside, &dag);
            // A claim of this node's that it does not run (made before it restarted): its
            // `Alive` for the DAG would hold the job for ever, so it is given up.
            if let Some(JobState::Claimed { claim, node, .. }) = &state
                && *node == self.id
                && !self.running.contains_key(claim)
            {
                beaten.push(*claim);
            }
            if let Some(claim) = self.running_by_job.get(&(dag, idx)).copied()
                && !matches!(&state, Some(JobState::Claimed { claim: c, .. }) if *c == claim)
            {
                self.running_by_job.remove(&(dag, idx));
                self.running.remove(&claim);
                self.out_actions.push_back(Action::Stop { claim });
                if matches!(&state, Some(JobState::Claimed { .. })) {
                    beaten.push(claim);
                }
            }
            let could_take = s.waiting[idx as usize] == 0
                && s.fits[idx as usize]
                && schedules(&self.ledger, &self.dag_peers, &self.outside, &dag);
            let cores = job.requirements.cores;
            let timer = match &state {
                Some(JobState::Claimed { lease_until_ms, .. })
                    if could_take && !self.running_by_job.contains_key(&key) =>
                {
                    Some(*lease_until_ms)
                }
                _ => None,
            };
            if self.lease_of.get(&key).copied() != timer {
                if let Some(old) = self.lease_of.remove(&key) {
                    self.leases.remove(&(old, dag, idx));
                }
                if let Some(t) = timer {
                    self.lease_of.insert(key, t);
                    self.leases.insert((t, dag, idx));
                }
            }
            match (claimable, self.candidates.get(&key).copied()) {
                (true, None) => {
                    let eligible_ms = now_ms + self.rank_for(&dag, idx, now_ms) * self.claim_stagger_ms();
                    self.candidates.insert(key, Candidate { eligible_ms, cores });
                    self.queues.entry(cores).or_default().insert((eligible_ms, dag, idx));
                }
                (false, Some(c)) => {
                    self.candidates.remove(&key);
                    if let Some(q) = self.queues.get_mut(&c.cores) {
                        q.remove(&(c.eligible_ms, dag, idx));
                    }
                }
                _ => {}
            }
        }
        beaten.dedup();
        for claim in beaten {
            self.emit(now_ms, Body::Release { claim });
        }
        // The quorum this node's run completed outvoted them: their results answer no cache and
        // they claim nothing, as after a failed `shoal verify`.
        for (node, record, rerun, job) in dissenters {
            self.quarantine_outvoted(now_ms, dag, &job, node, record, rerun);
        }
    }

    /// Looks again at jobs whose lease ended, then claims what this node may, in the order it may.
    fn settle(&mut self, now_ms: u64) {
        while let Some(&(t, dag, idx)) = self.leases.first() {
            if t > now_ms {
                break;
            }
            self.leases.pop_first();
            self.lease_of.remove(&(dag, idx));
            self.evaluate(now_ms, dag, idx);
        }
        while self.claiming && !self.quarantined() {
            let free = self.free_cores();
            let next =
                self.queues.range(..=free).filter_map(|(_, q)| q.first().copied()).filter(|(t, ..)| *t <= now_ms).min();
            let Some((_, dag, idx)) = next else { break };
            let Some(s) = self.sched.get(&dag) else { break };
            let job = &s.dag.jobs[idx as usize];
            let (id, cores) = (job.id.clone(), job.requirements.cores);
            let lease_until_ms = now_ms + self.cfg.lease_ms;
            // Recorded as running before the claim is folded in, so the fold sees it as ours.
            self.hlc = self.hlc.tick(now_ms);
            self.since.get_or_insert(self.hlc);
            let fact = Fact::sign(&self.key, self.hlc, Body::Claim { dag, job: id.clone(), lease_until_ms });
            let verified = VerifiedFact::own(fact);
            let claim = verified.id();
            self.running.insert(claim, Running { dag, job: idx, cores, lease_until_ms });
            self.running_by_job.insert((dag, idx), claim);
            self.out_actions.push_back(Action::Start { claim, dag, job: id });
            self.out_facts.push_back(verified.clone());
            let touched = self.ledger.insert_verified(verified);
            self.touch(now_ms, touched);
        }
    }
}

#[cfg(test)]
mod tests;

/// [`NodeCore::schedules`], on the fields it reads (callers hold other fields mutably).
fn schedules(ledger: &Ledger, dag_peers: &BTreeMap<Hash, Vec<u64>>, outside: &BTreeSet<Hash>, dag: &Hash) -> bool {
    !outside.contains(dag) && (ledger.topic_nodes(dag) == 0 || dag_peers.contains_key(dag))
}
