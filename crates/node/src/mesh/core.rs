//! One node's scheduler as a sans-IO state machine: facts, capabilities and job results come in
//! through `handle_*(now_ms, ..)`; facts to gossip and jobs to start or stop come out of
//! `poll_*()`; `poll_timeout()` says when to call `handle_tick` next. No clock, no I/O, no
//! randomness: `shoal node` drives it with real time and libp2p, `simulations/` with a virtual clock.
//!
//! Policy: a node claims a job when the job is open, its dependencies are done, it fits this node
//! and this node has the cores free; it renews its claims at half their lease; when a smaller claim
//! wins a job it is running, it stops it (the race costs one attempt, results are content-addressed).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;
use shoal_dag::{Dag, Hash};

use super::capabilities::{Capabilities, mismatches};
use super::ledger::{Body, Fact, Hlc, JobState, Ledger, LedgerError, NodeId};

/// How long a claim holds without a renewal, in ms.
pub const LEASE_MS: u64 = 10_000;
/// How long a node waits, per place it ranks behind for a job, before claiming it: the node that
/// ranks first for a job (rendezvous hashing over the known peers) claims at once, the second
/// after this long if the job is still open, and so on. Without it every node claims every job
/// that opens and all but one of those runs are stopped.
pub const CLAIM_STAGGER_MS: u64 = 200;

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
    job: String,
    cores: u32,
    lease_until_ms: u64,
}

pub struct NodeCore {
    key: SigningKey,
    id: NodeId,
    caps: Capabilities,
    hlc: Hlc,
    ledger: Ledger,
    /// DAG contents by hash, once known (submitted here or fetched).
    dags: BTreeMap<Hash, Dag>,
    running: BTreeMap<Hash, Running>,
    /// Known peers, this node included; ranks jobs among nodes.
    peers: BTreeSet<NodeId>,
    /// When this node first saw each job open.
    open_since: BTreeMap<(Hash, String), u64>,
    /// The earliest lease of a job claimed elsewhere, as of the last schedule: when a job may
    /// become claimable with no new fact (only facts can make a claim live, so it stays valid).
    next_expiry: Option<u64>,
    out_facts: VecDeque<Fact>,
    out_actions: VecDeque<Action>,
}

impl NodeCore {
    pub fn new(key: SigningKey, caps: Capabilities) -> NodeCore {
        let id = key.verifying_key().to_bytes();
        NodeCore {
            key,
            id,
            caps,
            hlc: Hlc::default(),
            ledger: Ledger::new(),
            dags: BTreeMap::new(),
            running: BTreeMap::new(),
            peers: [id].into(),
            open_since: BTreeMap::new(),
            next_expiry: None,
            out_facts: VecDeque::new(),
            out_actions: VecDeque::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// The content of a DAG, if this node has it.
    pub fn dag(&self, hash: &Hash) -> Option<&Dag> {
        self.dags.get(hash)
    }

    /// Jobs this node is running now.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Abandons a DAG: its open and claimed jobs end as cancelled (done ones stay done).
    pub fn cancel(&mut self, now_ms: u64, dag: Hash) {
        self.emit(now_ms, Body::Cancel { dag });
        self.schedule(now_ms);
    }

    fn emit(&mut self, now_ms: u64, body: Body) -> Hash {
        self.hlc = self.hlc.tick(now_ms);
        let fact = Fact::sign(&self.key, self.hlc, body);
        let id = fact.id();
        self.ledger.insert(fact.clone()).expect("our own facts verify");
        self.out_facts.push_back(fact);
        id
    }

    /// Submits a DAG from here; its content is known at once.
    pub fn submit(&mut self, now_ms: u64, dag_hash: Hash, dag: Dag, max_attempts: u32) {
        let jobs = dag.jobs.iter().map(|j| j.id.clone()).collect();
        self.dags.insert(dag_hash, dag);
        self.emit(now_ms, Body::Submit { dag: dag_hash, jobs, max_attempts });
        self.schedule(now_ms);
    }

    /// The content of a DAG this node learned about from a `Submit` (fetched by hash).
    pub fn handle_dag(&mut self, now_ms: u64, dag_hash: Hash, dag: Dag) {
        self.dags.insert(dag_hash, dag);
        self.schedule(now_ms);
    }

    /// DAGs named by the ledger whose content this node lacks: fetch them by hash.
    pub fn wanted_dags(&self, now_ms: u64) -> Vec<Hash> {
        self.ledger.state(now_ms).dags.keys().filter(|h| !self.dags.contains_key(h)).copied().collect()
    }

    /// The nodes of the mesh as gossip knows them (this node is always among them).
    pub fn handle_peers(&mut self, now_ms: u64, peers: impl IntoIterator<Item = NodeId>) {
        self.peers = peers.into_iter().chain([self.id]).collect();
        self.schedule(now_ms);
    }

    /// This node's place among the known peers for a job: 0 claims first.
    fn rank(&self, dag: &Hash, job: &str) -> u64 {
        let score = |node: &NodeId| {
            let mut h = blake3::Hasher::new();
            h.update(&dag.0);
            h.update(job.as_bytes());
            h.update(node);
            *h.finalize().as_bytes()
        };
        let mine = score(&self.id);
        self.peers.iter().filter(|p| score(p) < mine).count() as u64
    }

    /// A fact from a peer. A refused fact changes nothing.
    pub fn handle_fact(&mut self, now_ms: u64, fact: Fact) -> Result<(), LedgerError> {
        let hlc = fact.hlc;
        if self.ledger.insert(fact)? {
            self.hlc = self.hlc.observe(hlc, now_ms);
            self.schedule(now_ms);
        }
        Ok(())
    }

    /// A run this node started has ended: `Ok(record)` or `Err(reason)`.
    pub fn handle_job_finished(&mut self, now_ms: u64, claim: Hash, result: Result<Hash, String>) {
        if self.running.remove(&claim).is_none() {
            return;
        }
        match result {
            Ok(record) => self.emit(now_ms, Body::Done { claim, record }),
            Err(reason) => {
                let mut reason = reason;
                reason.truncate(super::ledger::REASON_BYTES_MAX);
                self.emit(now_ms, Body::Fail { claim, reason })
            }
        };
        self.schedule(now_ms);
    }

    /// Time passed: renew leases, claim what became claimable.
    pub fn handle_tick(&mut self, now_ms: u64) {
        let due: Vec<(Hash, u64)> = self
            .running
            .iter()
            .filter(|(_, r)| r.lease_until_ms.saturating_sub(now_ms) <= LEASE_MS / 2)
            .map(|(c, _)| (*c, now_ms + LEASE_MS))
            .collect();
        for (claim, lease) in due {
            self.emit(now_ms, Body::Renew { claim, lease_until_ms: lease });
            if let Some(r) = self.running.get_mut(&claim) {
                r.lease_until_ms = lease;
            }
        }
        self.schedule(now_ms);
    }

    /// When `handle_tick` is next needed: the earliest renewal, or a lease elsewhere expiring.
    pub fn poll_timeout(&self, now_ms: u64) -> Option<u64> {
        let renewals = self.running.values().map(|r| r.lease_until_ms.saturating_sub(LEASE_MS / 2));
        let expiries = self.next_expiry.filter(|t| *t > now_ms);
        let staggered =
            self.open_since.iter().map(|((dag, job), since)| since + self.rank(dag, job) * CLAIM_STAGGER_MS);
        renewals.chain(expiries).chain(staggered.filter(|t| *t > now_ms)).min().map(|t| t.max(now_ms))
    }

    pub fn poll_fact(&mut self) -> Option<Fact> {
        self.out_facts.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.out_actions.pop_front()
    }

    pub fn free_cores(&self) -> u32 {
        self.caps.cores.saturating_sub(self.running.values().map(|r| r.cores).sum())
    }

    /// Stops runs that lost their job; claims what fits.
    fn schedule(&mut self, now_ms: u64) {
        let state = self.ledger.state(now_ms);
        self.next_expiry = state
            .dags
            .values()
            .flat_map(|d| d.jobs.values())
            .filter_map(|js| match js {
                JobState::Claimed { lease_until_ms, .. } => Some(*lease_until_ms),
                _ => None,
            })
            .min();
        // Runs whose claim no longer holds the job.
        let lost: Vec<Hash> = self
            .running
            .iter()
            .filter(|(claim, r)| {
                !matches!(state.dags.get(&r.dag).and_then(|d| d.jobs.get(&r.job)),
                    Some(JobState::Claimed { claim: c, .. }) if c == *claim)
            })
            .map(|(c, _)| *c)
            .collect();
        for claim in lost {
            self.running.remove(&claim);
            self.out_actions.push_back(Action::Stop { claim });
        }
        let mut claimable = Vec::new();
        let mut open_now = BTreeSet::new();
        for (dag_hash, dag_state) in &state.dags {
            let Some(dag) = self.dags.get(dag_hash) else { continue };
            let done: BTreeSet<&str> = dag_state
                .jobs
                .iter()
                .filter(|(_, js)| matches!(js, JobState::Done { .. }))
                .map(|(j, _)| j.as_str())
                .collect();
            let deps = dag.all_dependencies();
            for (i, job) in dag.jobs.iter().enumerate() {
                if !matches!(dag_state.jobs.get(&job.id), Some(JobState::Open { .. })) {
                    continue;
                }
                if !deps[i].iter().all(|&d| done.contains(dag.jobs[d].id.as_str())) {
                    continue;
                }
                if !mismatches(&job.requirements, &self.caps).is_empty() {
                    continue;
                }
                let key = (*dag_hash, job.id.clone());
                let since = *self.open_since.entry(key.clone()).or_insert(now_ms);
                open_now.insert(key);
                if now_ms < since + self.rank(dag_hash, &job.id) * CLAIM_STAGGER_MS {
                    continue;
                }
                claimable.push((*dag_hash, job.id.clone(), job.requirements.cores));
            }
        }
        self.open_since.retain(|k, _| open_now.contains(k));
        for (dag, job, cores) in claimable {
            if cores > self.free_cores() {
                continue;
            }
            let lease_until_ms = now_ms + LEASE_MS;
            let claim = self.emit(now_ms, Body::Claim { dag, job: job.clone(), lease_until_ms });
            self.running.insert(claim, Running { dag, job: job.clone(), cores, lease_until_ms });
            self.out_actions.push_back(Action::Start { claim, dag, job });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dag::{Arch, parse_dag};

    fn caps(cores: u32) -> Capabilities {
        Capabilities {
            arch: Arch::X86_64,
            cores,
            memory_bytes: 8 << 30,
            cpu_flags: BTreeSet::new(),
            gpus: vec![],
            labels: BTreeMap::new(),
            microvm: true,
        }
    }

    fn chain() -> (Hash, Dag) {
        let text = r#"{"version": 1, "jobs": [
          {"id": "a", "image": "b:1", "command": ["x"], "outputs": {"o": "stdout"}},
          {"id": "b", "image": "b:1", "command": ["x"], "stdin": "jobs:a/o"}]}"#;
        (Hash::of(text.as_bytes()), parse_dag("d.json", text).unwrap())
    }

    /// Delivers every pending fact of each node to every other node.
    fn gossip(nodes: &mut [NodeCore], now: u64) {
        loop {
            let mut moved = false;
            for i in 0..nodes.len() {
                while let Some(f) = nodes[i].poll_fact() {
                    moved = true;
                    for (j, n) in nodes.iter_mut().enumerate() {
                        if j != i {
                            n.handle_fact(now, f.clone()).unwrap();
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn starts(n: &mut NodeCore) -> Vec<Action> {
        std::iter::from_fn(|| n.poll_action()).collect()
    }

    /// The jobs a node is left running after these actions: started and not stopped.
    fn net_running(actions: &[Action]) -> Vec<String> {
        let stopped: BTreeSet<Hash> =
            actions.iter().filter_map(|a| if let Action::Stop { claim } = a { Some(*claim) } else { None }).collect();
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { claim, job, .. } if !stopped.contains(claim) => Some(job.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_submitted_chain_runs_in_order_on_the_node_that_claims_first() {
        let (h, dag) = chain();
        let mut nodes = vec![
            NodeCore::new(SigningKey::from_bytes(&[1; 32]), caps(1)),
            NodeCore::new(SigningKey::from_bytes(&[2; 32]), caps(1)),
        ];
        nodes[0].submit(0, h, dag.clone(), 2);
        let a0 = starts(&mut nodes[0]);
        assert!(matches!(&a0[..], [Action::Start { job, .. }] if job == "a"), "{a0:?}");
        gossip(&mut nodes, 1);
        assert_eq!(nodes[1].wanted_dags(1), vec![h]);
        nodes[1].handle_dag(1, h, dag);
        assert!(starts(&mut nodes[1]).is_empty(), "a is claimed and b waits for a");
        let Action::Start { claim, .. } = a0[0].clone() else { unreachable!() };
        nodes[0].handle_job_finished(5, claim, Ok(Hash::of(b"record a")));
        gossip(&mut nodes, 6);
        // Both may claim b the moment a is done (each claims before it hears the other); the smaller
        // claim wins and the other run is stopped: one node is left running b.
        let (b0, b1) = (net_running(&starts(&mut nodes[0])), net_running(&starts(&mut nodes[1])));
        let mut all = [b0, b1].concat();
        all.sort();
        assert_eq!(all, vec!["b".to_string()]);
        assert_eq!(nodes[0].ledger().state(7), nodes[1].ledger().state(7));
    }

    #[test]
    fn a_dead_claimants_job_is_taken_over_when_its_lease_ends() {
        let (h, dag) = chain();
        let mut a = NodeCore::new(SigningKey::from_bytes(&[1; 32]), caps(1));
        let mut b = NodeCore::new(SigningKey::from_bytes(&[2; 32]), caps(1));
        a.submit(0, h, dag.clone(), 3);
        assert_eq!(starts(&mut a).len(), 1);
        b.handle_dag(0, h, dag);
        while let Some(f) = a.poll_fact() {
            b.handle_fact(1, f).unwrap();
        }
        assert!(net_running(&starts(&mut b)).is_empty(), "a's claim holds the job");
        // a dies: no renewals. b wakes at each lease end (a's, then its own losing claim's, which
        // still counts until it lapses) and takes the job within a few ms of a's lease.
        let mut now = 1;
        let mut started = Vec::new();
        for _ in 0..3 {
            now = b.poll_timeout(now).unwrap();
            b.handle_tick(now);
            started = net_running(&starts(&mut b));
            if !started.is_empty() {
                break;
            }
        }
        assert_eq!(started, vec!["a".to_string()]);
        assert!(now <= LEASE_MS + 2, "taken over at {now} ms, lease {LEASE_MS} ms");
    }

    #[test]
    fn racing_claims_leave_one_runner() {
        let (h, dag) = chain();
        let mut nodes = vec![
            NodeCore::new(SigningKey::from_bytes(&[1; 32]), caps(1)),
            NodeCore::new(SigningKey::from_bytes(&[2; 32]), caps(1)),
        ];
        // Both know the DAG before either sees the other's claim (a partition, a race).
        let submit = {
            nodes[0].submit(0, h, dag.clone(), 2);
            nodes[0].poll_fact().unwrap()
        };
        nodes[1].handle_dag(0, h, dag);
        nodes[1].handle_fact(0, submit).unwrap();
        let s0 = starts(&mut nodes[0]);
        let s1 = starts(&mut nodes[1]);
        assert_eq!((s0.len(), s1.len()), (1, 1), "both claimed a");
        gossip(&mut nodes, 1);
        let stops: usize =
            nodes.iter_mut().map(|n| starts(n).iter().filter(|a| matches!(a, Action::Stop { .. })).count()).sum();
        assert_eq!(stops, 1, "exactly one of the two runs is stopped");
        assert_eq!(nodes[0].ledger().state(2), nodes[1].ledger().state(2));
    }

    #[test]
    fn leases_are_renewed_while_running_and_capacity_is_respected() {
        let text = r#"{"version": 1, "jobs": [
          {"id": "x", "image": "b:1", "command": ["x"], "requirements": {"cores": 2}},
          {"id": "y", "image": "b:1", "command": ["x"], "requirements": {"cores": 2}},
          {"id": "big", "image": "b:1", "command": ["x"], "requirements": {"cores": 8}}]}"#;
        let h = Hash::of(text.as_bytes());
        let mut n = NodeCore::new(SigningKey::from_bytes(&[3; 32]), caps(2));
        n.submit(0, h, parse_dag("d.json", text).unwrap(), 1);
        let s = starts(&mut n);
        assert_eq!(s.len(), 1, "2 cores hold one 2-core job; the 8-core job never fits: {s:?}");
        let renew_at = n.poll_timeout(0).unwrap();
        assert_eq!(renew_at, LEASE_MS / 2);
        n.handle_tick(renew_at);
        let facts: Vec<Fact> = std::iter::from_fn(|| n.poll_fact()).collect();
        assert!(facts.iter().any(|f| matches!(f.body, Body::Renew { .. })), "{facts:?}");
        assert!(matches!(
            n.ledger().state(LEASE_MS + 1).dags[&h].jobs.values().find(|j| matches!(j, JobState::Claimed { .. })),
            Some(JobState::Claimed { lease_until_ms, .. }) if *lease_until_ms == renew_at + LEASE_MS
        ));
    }
}
