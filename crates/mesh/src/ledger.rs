//! The ledger: a grow-only set of signed facts, and the pure fold that turns any set into the
//! state of every DAG and job. Two nodes holding the same facts agree, whatever order the facts
//! arrived in; merging is set union, so it is commutative, associative and idempotent.
//!
//! Facts: `Submit` (a DAG and its jobs), `Claim` (a node takes a job until its lease ends),
//! `Alive` (the node is alive and extends the leases of all its claims in one DAG: one fact per
//! node and DAG every half-lease, not one per claim), `Renew` (the claimant extends one claim's
//! lease; what nodes of protocol 1 sent, still folded so their stored ledgers read), `Done` (the claim produced a run record), `Fail` (the
//! attempt failed, with why), `Cancel` (the DAG is abandoned), `Lost` (no node holds the outputs
//! of a completion any more: it no longer counts, and the job is open to be run again), `Release`
//! (the claimant gives its claim up without it counting as a failed attempt). Among the live
//! claims of a job, the one with the smallest (hybrid logical clock, node id) wins; a claim's lease
//! ends at the later of its own and its author's latest `Alive` for the DAG, and when it ends
//! the job is open again (so the claims of a node that stopped, or is cut off, expire); a job whose attempts failed `max_attempts`
//! times has failed for good, every attempt's reason kept. Only a claim's author may renew,
//! finish, fail or release it; any node may report a completion's outputs lost.
//!
//! The set grows, except that a node's `Alive` for a DAG replaces its earlier ones (the latest by
//! (HLC, id) wins, and the ledger keeps only it): a deterministic function of the facts seen, so
//! two ledgers that saw the same facts, in any order, hold the same set.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use shoal_dag::{Hash, canonical_cbor};

mod compact;
pub use compact::{Compacted, DagSummary, SummaryJob};

/// A node's ed25519 public key.
pub type NodeId = [u8; 32];

/// Hashed before a fact's CBOR, so a fact id never equals another kind of hash.
const FACT_DOMAIN: &[u8] = b"shoal-fact-v1\0";
/// Longest failure reason kept in a fact, in bytes.
pub const REASON_BYTES_MAX: usize = 4096;
/// Most jobs one `Submit` may name.
pub const JOBS_PER_DAG_MAX: usize = 100_000;

/// A hybrid logical clock reading: wall-clock ms, and a counter for events within one ms or
/// when a remote clock is ahead. Ordered by (wall, counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub wall_ms: u64,
    pub counter: u32,
}

impl Hlc {
    /// The next reading for a local event at `now_ms`.
    pub fn tick(self, now_ms: u64) -> Hlc {
        if now_ms > self.wall_ms {
            Hlc { wall_ms: now_ms, counter: 0 }
        } else {
            Hlc { counter: self.counter + 1, ..self }
        }
    }

    /// The next reading after receiving `remote` at `now_ms`: after both, except that a remote
    /// wall clock is believed at most `skew_max_ms` ahead of `now_ms`
    /// ([`CLOCK_SKEW_MAX_MS`](crate::settings::CLOCK_SKEW_MAX_MS)). Without the bound one node whose
    /// clock reads a year ahead would drag every HLC of the mesh a year ahead, and every fact made
    /// after it would sort after any fact an honest clock makes for that year. (Nodes refuse facts
    /// ahead by more than the bound, so the clamp only guards callers that do not.)
    pub fn observe(self, remote: Hlc, now_ms: u64, skew_max_ms: u64) -> Hlc {
        let believed = now_ms.saturating_add(skew_max_ms);
        let remote = if remote.wall_ms > believed { Hlc { wall_ms: believed, counter: 0 } } else { remote };
        let wall = now_ms.max(self.wall_ms).max(remote.wall_ms);
        let counter = match (wall == self.wall_ms, wall == remote.wall_ms) {
            (true, true) => self.counter.max(remote.counter) + 1,
            (true, false) => self.counter + 1,
            (false, true) => remote.counter + 1,
            (false, false) => 0,
        };
        Hlc { wall_ms: wall, counter }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a fact says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A DAG (the hash of its file) and the ids of its jobs.
    Submit {
        dag: Hash,
        jobs: Vec<String>,
        max_attempts: u32,
        /// 0: the DAG's facts travel on the mesh's one topic. Otherwise the size of the group
        /// of nodes that subscribe to a topic of the DAG's own and schedule it
        /// (`topics::group_for`); its other facts then travel there only, and the mesh's
        /// anti-entropy leaves them to the DAG's scope (see [`Ledger::mesh_digest`]). Chosen by
        /// the submitter, so every node agrees on it whatever it knows of the mesh's size.
        #[serde(default, skip_serializing_if = "is_zero")]
        topic_nodes: u32,
        /// Whose completions of its jobs count (the submitter's trust policy); absent: every
        /// member's first completion does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quorum: Option<Quorum>,
    },
    Claim {
        dag: Hash,
        job: String,
        lease_until_ms: u64,
    },
    /// Protocol 1's renewal of one claim; nodes now send [`Body::Alive`].
    Renew {
        claim: Hash,
        lease_until_ms: u64,
    },
    /// Its author is alive: each of its claims on `dag`'s jobs made at `since` or later holds
    /// until `lease_until_ms` at least. `since` is when the author's process started claiming
    /// (its first claim's HLC), so claims of an earlier run of the node, which nothing runs any
    /// more, are not kept alive. The latest (by HLC, then id) of an author for a DAG replaces the
    /// others.
    Alive {
        dag: Hash,
        lease_until_ms: u64,
        since: Hlc,
    },
    /// The claim's run succeeded with this run record, whose outputs weigh `bytes` in all
    /// (placement prefers the nodes that hold a job's inputs).
    Done {
        claim: Hash,
        record: Hash,
        #[serde(default)]
        bytes: u64,
        /// The job's action key (the record names it too): any node about to run the same
        /// action, in any DAG, finds this completion by it (the mesh-wide action cache). Absent
        /// in the facts of nodes that did not say it, which answer no lookup.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<Hash>,
        /// The digest of the run's outputs and exit ([`RunRecord::result_digest`]
        /// (shoal_dag::RunRecord::result_digest)): completions of a DAG with a [`Quorum`] agree
        /// when theirs are equal. Absent in the facts of nodes that did not say it, which agree
        /// with none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Hash>,
    },
    Fail {
        claim: Hash,
        reason: String,
    },
    Cancel {
        dag: Hash,
    },
    /// Every node this one could ask has lost the outputs of `record` (a completion of `job`):
    /// the completions naming it no longer count, so the job runs again.
    Lost {
        dag: Hash,
        job: String,
        record: Hash,
    },
    /// The claimant gives the claim up unfinished (an input was lost, the node is stopping): the
    /// job is open again at once and the attempt does not count as failed.
    Release {
        claim: Hash,
    },
    /// Its author ran the action of `record` again (`shoal verify`) and its outputs differ from
    /// what `node`, which made `record`, signed: `node`'s results no longer answer the mesh-wide
    /// cache, and it claims no job. `rerun` is the author's own record of that run (the evidence,
    /// fetchable by hash like any record); `reason` names the outputs that differ.
    Quarantine {
        node: NodeId,
        record: Hash,
        rerun: Hash,
        reason: String,
    },
}

impl Body {
    /// Its kind, as the API and the simulator name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Submit { .. } => "submit",
            Body::Claim { .. } => "claim",
            Body::Renew { .. } => "renew",
            Body::Alive { .. } => "alive",
            Body::Done { .. } => "done",
            Body::Fail { .. } => "fail",
            Body::Cancel { .. } => "cancel",
            Body::Lost { .. } => "lost",
            Body::Release { .. } => "release",
            Body::Quarantine { .. } => "quarantine",
        }
    }
}

/// Most nodes a DAG's [`Quorum`] may ask to agree.
pub const QUORUM_AGREE_MAX: u32 = 16;
/// Most nodes a DAG's [`Quorum`] may name as trusted.
pub const QUORUM_TRUSTED_MAX: usize = 256;

/// Whose completions of a DAG's jobs count, redundant runs BOINC's way: a completion by a
/// `trusted` node counts alone; any other only once the completions of `agree` different nodes
/// name the same result (outputs and exit). Until then the job is open to nodes that have not run
/// it, which run it without the action cache. The submitter writes its policy into the DAG's
/// submit, so every node folds the DAG alike whatever its own policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    pub agree: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted: Vec<NodeId>,
}

/// How a job's completions stand under its DAG's [`Quorum`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreement<T> {
    /// This completion counts (the first, without a quorum; a trusted node's; the first of the
    /// first `agree` that agree).
    Counts(T),
    /// No completion counts yet; `runs` nodes completed it.
    Waiting { runs: u32 },
}

/// Weighs a job's completions, in (hlc, author, record) order with lost ones left out, each as
/// (author, result, what to return); the fold and the incremental view both ask this.
pub fn agreement<T: Copy>(
    quorum: Option<&Quorum>,
    dones: impl IntoIterator<Item = (NodeId, Option<Hash>, T)>,
) -> Agreement<T> {
    let mut groups: BTreeMap<Hash, (T, BTreeSet<NodeId>)> = BTreeMap::new();
    let mut authors: BTreeSet<NodeId> = BTreeSet::new();
    for (author, result, t) in dones {
        let Some(q) = quorum.filter(|q| q.agree > 1) else { return Agreement::Counts(t) };
        if q.trusted.contains(&author) {
            return Agreement::Counts(t);
        }
        authors.insert(author);
        if let Some(r) = result {
            let (first, group) = groups.entry(r).or_insert_with(|| (t, BTreeSet::new()));
            group.insert(author);
            if group.len() >= q.agree as usize {
                return Agreement::Counts(*first);
            }
        }
    }
    Agreement::Waiting { runs: authors.len() as u32 }
}

/// A job done by a quorum, as [`Ledger::dissent`] tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dissent {
    /// The author whose completion made the quorum (the last of the agreeing group, by order).
    pub completer: NodeId,
    /// Its record.
    pub agreed: Hash,
    /// Every completion of another result, as (author, record).
    pub outvoted: Vec<(NodeId, Hash)>,
}

/// Whether a job waiting for agreement has run out of attempts: the runs of `agree +
/// max_attempts - 1` nodes and no `agree` of them the same.
fn disagreement(quorum: Option<&Quorum>, max_attempts: u32, runs: u32) -> Option<String> {
    let q = quorum.filter(|q| q.agree > 1)?;
    (runs >= q.agree + max_attempts.saturating_sub(1)).then(|| {
        format!("the runs of {runs} nodes disagree: no {} of them made the same outputs (the DAG's quorum)", q.agree)
    })
}

/// A signed fact. Its id is the BLAKE3 of a domain prefix and the canonical CBOR of
/// (author, hlc, body); the signature is over the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub author: NodeId,
    pub hlc: Hlc,
    pub body: Body,
    #[serde(with = "serde_bytes_sig")]
    pub signature: [u8; 64],
}

#[derive(Serialize)]
struct Signed<'a> {
    author: &'a NodeId,
    hlc: &'a Hlc,
    body: &'a Body,
}

fn signed_bytes(author: &NodeId, hlc: &Hlc, body: &Body) -> Vec<u8> {
    let mut bytes = FACT_DOMAIN.to_vec();
    bytes.extend_from_slice(&canonical_cbor(&Signed { author, hlc, body }));
    bytes
}

/// Why a fact was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("the fact's author is not a valid ed25519 key")]
    BadAuthor,
    #[error("the fact's signature does not verify: it was altered, or not signed by its author")]
    BadSignature,
    #[error("the fact is malformed: {0}")]
    Malformed(String),
    /// Not a bad fact but a bad clock (its author's, or this node's): see
    /// [`CLOCK_SKEW_MAX_MS`](crate::settings::CLOCK_SKEW_MAX_MS).
    #[error(
        "the fact's clock reads {ahead_ms} ms ahead of this node's, more than the {skew_max_ms} ms a remote clock \
         is believed: refused until this node's clock reaches it (one of the two clocks is wrong: NTP, or \
         `shoal node --clock-from-mesh`)"
    )]
    Ahead { ahead_ms: u64, skew_max_ms: u64 },
}

impl Fact {
    pub fn sign(key: &SigningKey, hlc: Hlc, body: Body) -> Fact {
        let author = key.verifying_key().to_bytes();
        let signature = key.sign(&signed_bytes(&author, &hlc, &body)).to_bytes();
        Fact { author, hlc, body, signature }
    }

    pub fn id(&self) -> Hash {
        Hash::of(&signed_bytes(&self.author, &self.hlc, &self.body))
    }

    /// Checks the signature and the bounds of what the fact carries.
    pub fn verify(&self) -> Result<(), LedgerError> {
        let key = VerifyingKey::from_bytes(&self.author).map_err(|_| LedgerError::BadAuthor)?;
        key.verify(&signed_bytes(&self.author, &self.hlc, &self.body), &Signature::from_bytes(&self.signature))
            .map_err(|_| LedgerError::BadSignature)?;
        match &self.body {
            Body::Submit { jobs, max_attempts, quorum, .. } => {
                if jobs.is_empty() || jobs.len() > JOBS_PER_DAG_MAX {
                    return Err(LedgerError::Malformed(format!("a DAG names 1 to {JOBS_PER_DAG_MAX} jobs")));
                }
                if *max_attempts == 0 {
                    return Err(LedgerError::Malformed("max_attempts must be at least 1".into()));
                }
                if let Some(q) = quorum
                    && (q.agree == 0 || q.agree > QUORUM_AGREE_MAX || q.trusted.len() > QUORUM_TRUSTED_MAX)
                {
                    return Err(LedgerError::Malformed(format!(
                        "a quorum asks 1 to {QUORUM_AGREE_MAX} nodes to agree and trusts at most {QUORUM_TRUSTED_MAX}"
                    )));
                }
            }
            Body::Fail { reason, .. } | Body::Quarantine { reason, .. } if reason.len() > REASON_BYTES_MAX => {
                return Err(LedgerError::Malformed(format!("a reason is at most {REASON_BYTES_MAX} bytes")));
            }
            Body::Quarantine { node, .. } if *node == self.author => {
                return Err(LedgerError::Malformed("a node cannot quarantine itself".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A fact whose signature and bounds were checked once, with its id computed once. Cheap to
/// clone (the fact is shared): a process verifies a fact when it first sees it, and every copy it
/// hands on (to sled, to its ledger, to a simulated peer) carries that proof in its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedFact {
    id: Hash,
    fact: Arc<Fact>,
}

impl VerifiedFact {
    pub fn id(&self) -> Hash {
        self.id
    }

    pub fn fact(&self) -> &Fact {
        &self.fact
    }
}

impl VerifiedFact {
    /// A fact this process just signed with its own key: nothing to check.
    pub(crate) fn own(fact: Fact) -> VerifiedFact {
        VerifiedFact { id: fact.id(), fact: Arc::new(fact) }
    }
}

impl Fact {
    /// Checks the fact and wraps it with its id.
    pub fn verified(self) -> Result<VerifiedFact, LedgerError> {
        self.verify()?;
        Ok(VerifiedFact { id: self.id(), fact: Arc::new(self) })
    }
}

/// What a newly inserted fact may have changed in the fold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touched {
    /// The fact was already here, or is an `Alive` older than the one held (it is not kept).
    Duplicate,
    /// New, but no job's state depends on it yet (a renewal whose claim has not arrived, a fact
    /// about a claim by someone else than its author).
    Nothing,
    /// The state of this one job.
    Job { dag: Hash, job: String },
    /// The state of these jobs of one DAG (an `Alive`: the jobs its author holds unfinished
    /// claims on).
    Jobs { dag: Hash, jobs: Vec<String> },
    /// Any job of this DAG (a submit or a cancel).
    Dag(Hash),
}

/// The facts a node holds, and the fold kept up to date as they arrive.
#[derive(Clone, Debug)]
pub struct Ledger {
    facts: BTreeMap<Hash, Arc<Fact>>,
    view: View,
    /// How long past its fact's HLC a lease is believed, in ms (see [`Ledger::with_lease_ms`]).
    lease_ms: u64,
    /// [`Ledger::digest`] once computed, until the next new fact: anti-entropy asks for it at
    /// every exchange, and hashing every id each time was most of a busy simulation's time.
    digest: std::sync::OnceLock<Hash>,
    /// [`Ledger::mesh_digest`] and its count once computed, until the next new fact.
    mesh_digest: std::sync::OnceLock<(Hash, usize)>,
    /// Ids of `Alive` facts replaced by a later one, and of facts compaction dropped, since
    /// [`Ledger::take_replaced`] last ran: a driver that stores facts deletes them.
    replaced: Vec<Hash>,
    /// DAGs compacted out (see `compact.rs`): their tombstones.
    compacted: BTreeMap<Hash, Compacted>,
    /// The completions of compacted DAGs by action key, as (record, maker): the mesh-wide cache
    /// of what compaction dropped.
    archived: BTreeMap<Hash, BTreeSet<(Hash, NodeId)>>,
    /// Facts older than this (HLC wall ms) about no DAG here are refused (see `compact.rs`).
    horizon_ms: u64,
    /// [`Ledger::compacted_digest`] once computed, until the next tombstone.
    compacted_digest: std::sync::OnceLock<(Hash, usize)>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger::with_lease_ms(crate::core::LEASE_MS)
    }
}

impl PartialEq for Ledger {
    /// Equal fact sets; the view is a function of them.
    fn eq(&self, other: &Ledger) -> bool {
        self.facts == other.facts
    }
}

impl Eq for Ledger {}

/// Where one job stands in a view of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Claimable; `failures` attempts failed so far.
    Open {
        failures: Vec<String>,
    },
    /// The winning live claim.
    Claimed {
        claim: Hash,
        node: NodeId,
        lease_until_ms: u64,
        failures: Vec<String>,
    },
    Done {
        claim: Hash,
        node: NodeId,
        record: Hash,
        /// The bytes of its outputs.
        bytes: u64,
    },
    /// Failed `max_attempts` times; every attempt's reason, in claim order.
    Failed {
        failures: Vec<String>,
    },
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DagState {
    pub max_attempts: u32,
    pub jobs: BTreeMap<String, JobState>,
}

/// The fold of a ledger at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct State {
    pub dags: BTreeMap<Hash, DagState>,
}

/// The incremental fold: per claim and per job what the reference fold would compute, updated
/// by each fact in O(log facts + claims of its job), so a job's state costs O(its claims).
#[derive(Clone, Debug, Default)]
struct View {
    dags: BTreeMap<Hash, DagView>,
    cancelled: BTreeSet<Hash>,
    claims: BTreeMap<Hash, ClaimIx>,
    /// Renewals, completions and failures whose claim has not arrived yet, by claim id: applied
    /// when it does (delivery order is arbitrary).
    orphans: BTreeMap<Hash, Vec<Hash>>,
    /// Per DAG and job: its claims, whether or not the DAG's submit has arrived.
    jobs: BTreeMap<Hash, BTreeMap<String, JobIx>>,
    /// Per (author, DAG): its latest `Alive`, as (hlc, id), the lease end believed and `since`.
    alive: BTreeMap<(NodeId, Hash), AliveIx>,
    /// Per (author, DAG): its claims not finished, failed or released, which its `Alive` keeps.
    unfinished: BTreeMap<(NodeId, Hash), BTreeSet<Hash>>,
    /// Per DAG, the ids of its facts: those naming it, and those about its claims once the
    /// claim is here (anti-entropy of one DAG's topic compares these).
    by_dag: BTreeMap<Hash, DagIds>,
    /// The mesh-wide action cache: per action key, every completion that names it, as (hlc,
    /// author, record), in any DAG.
    actions: BTreeMap<Hash, BTreeSet<(Hlc, NodeId, Hash)>>,
    /// Per record, its earliest completion's (hlc, author): who made it (a later completion
    /// naming it took it from a cache).
    made: BTreeMap<Hash, (Hlc, NodeId)>,
    /// Records some node reported lost, in any DAG: they answer no lookup.
    lost: BTreeSet<Hash>,
    /// Quarantined nodes: the earliest `Quarantine` of each, as (hlc, its id).
    quarantined: BTreeMap<NodeId, (Hlc, Hash)>,
}

#[derive(Clone, Debug)]
struct DagView {
    /// The winning submit: the earliest by (hlc, author), and its id.
    key: (Hlc, NodeId, Hash),
    max_attempts: u32,
    /// The winning submit's `topic_nodes`.
    topic_nodes: u32,
    /// The winning submit's `quorum`.
    quorum: Option<Quorum>,
}

#[derive(Clone, Debug)]
struct ClaimIx {
    dag: Hash,
    job: String,
    author: NodeId,
    hlc: Hlc,
    lease_until_ms: u64,
    /// Its author's completions: (hlc, author, record) and what else they say.
    dones: Vec<(OrderKey, Completion)>,
    /// The smallest reason among its author's failures.
    failed: Option<String>,
    /// Its author gave it up.
    released: bool,
}

impl ClaimIx {
    /// Holds its job: not finished (a completion whose outputs were lost still ends it), not
    /// failed, not released, lease running.
    fn live(&self, lease_until_ms: u64, now_ms: u64) -> bool {
        !self.finished_or_given_up() && lease_until_ms > now_ms
    }

    /// Done, failed or released: nothing keeps it any more.
    fn finished_or_given_up(&self) -> bool {
        !self.dones.is_empty() || self.failed.is_some() || self.released
    }
}

/// One DAG's fact ids, and their digest once asked for (anti-entropy asks every period; a change
/// clears it).
#[derive(Clone, Debug, Default)]
struct DagIds {
    ids: BTreeSet<Hash>,
    digest: std::sync::OnceLock<Hash>,
}

impl DagIds {
    fn insert(&mut self, id: Hash) {
        if self.ids.insert(id) {
            self.digest.take();
        }
    }

    fn remove(&mut self, id: &Hash) {
        if self.ids.remove(id) {
            self.digest.take();
        }
    }
}

/// (hlc, author, id or record): the order facts compete in.
type OrderKey = (Hlc, NodeId, Hash);

/// What a completion says besides its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Completion {
    /// The bytes of the record's outputs.
    bytes: u64,
    result: Option<Hash>,
}

/// A node's latest `Alive` for a DAG: its (hlc, id), which a later one must exceed, the lease end
/// believed, and `since`.
type AliveIx = ((Hlc, Hash), u64, Hlc);

#[derive(Clone, Debug, Default)]
struct JobIx {
    /// Named by the winning submit of its DAG.
    listed: bool,
    /// (hlc, author, id) of every claim on it, ascending: the first live one wins.
    claims: Vec<(Hlc, NodeId, Hash)>,
    /// Every completion: (done key, claim key) -> what else it says; the smallest whose record
    /// is not lost wins (under a quorum, [`agreement`] picks).
    dones: BTreeMap<(OrderKey, OrderKey), Completion>,
    /// Records reported lost.
    lost: BTreeSet<Hash>,
}

/// One claim as the reference fold sees it.
struct FoldClaim<'a> {
    id: Hash,
    fact: &'a Fact,
    lease_until_ms: u64,
    dones: Vec<(OrderKey, Completion)>,
    failed: Option<String>,
    released: bool,
}

impl View {
    /// Folds one new fact in; says which job states may have changed.
    fn apply(&mut self, facts: &BTreeMap<Hash, Arc<Fact>>, id: Hash, fact: &Fact, lease_ms: u64) -> Touched {
        match &fact.body {
            Body::Done { record, action, .. } => {
                // Indexed whether or not its claim is here yet: a lookup checks the record itself
                // (its signature and its action key) before it uses it.
                if let Some(action) = action {
                    self.actions.entry(*action).or_default().insert((fact.hlc, fact.author, *record));
                }
                let made = self.made.entry(*record).or_insert((fact.hlc, fact.author));
                if (fact.hlc, fact.author) < *made {
                    *made = (fact.hlc, fact.author);
                }
            }
            Body::Lost { record, .. } => {
                self.lost.insert(*record);
            }
            Body::Quarantine { node, .. } => {
                let q = self.quarantined.entry(*node).or_insert((fact.hlc, id));
                if (fact.hlc, id) < *q {
                    *q = (fact.hlc, id);
                }
            }
            _ => {}
        }
        match &fact.body {
            Body::Submit { dag, .. }
            | Body::Cancel { dag }
            | Body::Claim { dag, .. }
            | Body::Lost { dag, .. }
            | Body::Alive { dag, .. } => {
                let ids = self.by_dag.entry(*dag).or_default();
                ids.insert(id);
                if matches!(fact.body, Body::Claim { .. })
                    && let Some(later) = self.orphans.get(&id)
                {
                    later.iter().for_each(|l| ids.insert(*l));
                }
            }
            Body::Renew { claim, .. }
            | Body::Done { claim, .. }
            | Body::Fail { claim, .. }
            | Body::Release { claim } => {
                if let Some(c) = self.claims.get(claim) {
                    self.by_dag.entry(c.dag).or_default().insert(id);
                }
            }
            // The mesh's, of no DAG (and folded above).
            Body::Quarantine { .. } => {}
        }
        match &fact.body {
            Body::Submit { dag, jobs, max_attempts, topic_nodes, quorum } => {
                let key = (fact.hlc, fact.author, id);
                // Ties on (hlc, author) go to the smaller id, as in the fold (which meets ids in order).
                if self.dags.get(dag).is_some_and(|d| d.key <= key) {
                    return Touched::Nothing;
                }
                let listing = self.jobs.entry(*dag).or_default();
                if self.dags.contains_key(dag) {
                    // An earlier submit of the same hash with another job list (only a forger's
                    // or a buggy client's): the fold takes the earliest one's list.
                    listing.values_mut().for_each(|j| j.listed = false);
                }
                for job in jobs {
                    listing.entry(job.clone()).or_default().listed = true;
                }
                self.dags.insert(
                    *dag,
                    DagView { key, max_attempts: *max_attempts, topic_nodes: *topic_nodes, quorum: quorum.clone() },
                );
                Touched::Dag(*dag)
            }
            Body::Cancel { dag } => {
                if self.cancelled.insert(*dag) {
                    Touched::Dag(*dag)
                } else {
                    Touched::Nothing
                }
            }
            Body::Claim { dag, job, lease_until_ms } => {
                let mut claim = ClaimIx {
                    dag: *dag,
                    job: job.clone(),
                    author: fact.author,
                    hlc: fact.hlc,
                    lease_until_ms: believed_lease(fact, *lease_until_ms, lease_ms),
                    dones: Vec::new(),
                    failed: None,
                    released: false,
                };
                for later in self.orphans.remove(&id).unwrap_or_default() {
                    if let Some(f) = facts.get(&later) {
                        Self::amend(&mut claim, f, lease_ms);
                    }
                }
                let ix = self.jobs.entry(*dag).or_default().entry(job.clone()).or_default();
                let key = (fact.hlc, fact.author, id);
                let at = ix.claims.partition_point(|c| *c < key);
                ix.claims.insert(at, key);
                ix.dones.extend(claim.dones.iter().map(|(d, c)| ((*d, key), *c)));
                if !claim.finished_or_given_up() {
                    self.unfinished.entry((fact.author, *dag)).or_default().insert(id);
                }
                self.claims.insert(id, claim);
                Touched::Job { dag: *dag, job: job.clone() }
            }
            Body::Renew { claim, .. }
            | Body::Done { claim, .. }
            | Body::Fail { claim, .. }
            | Body::Release { claim } => {
                let Some(c) = self.claims.get_mut(claim) else {
                    self.orphans.entry(*claim).or_default().push(id);
                    return Touched::Nothing;
                };
                if !Self::amend(c, fact, lease_ms) {
                    return Touched::Nothing;
                }
                let (dag, job, key) = (c.dag, c.job.clone(), (c.hlc, c.author, *claim));
                if c.finished_or_given_up()
                    && let Some(set) = self.unfinished.get_mut(&(c.author, dag))
                {
                    set.remove(claim);
                    if set.is_empty() {
                        self.unfinished.remove(&(c.author, dag));
                    }
                }
                if let Body::Done { record, bytes, result, .. } = &fact.body
                    && let Some(ix) = self.jobs.get_mut(&dag).and_then(|j| j.get_mut(&job))
                {
                    ix.dones
                        .insert(((fact.hlc, fact.author, *record), key), Completion { bytes: *bytes, result: *result });
                }
                Touched::Job { dag, job }
            }
            Body::Lost { dag, job, record } => {
                if self.jobs.entry(*dag).or_default().entry(job.clone()).or_default().lost.insert(*record) {
                    Touched::Job { dag: *dag, job: job.clone() }
                } else {
                    Touched::Nothing
                }
            }
            Body::Quarantine { .. } => Touched::Nothing,
            Body::Alive { dag, lease_until_ms, since } => {
                // The ledger let it in only if it is the author's latest for the DAG.
                let until = believed_lease(fact, *lease_until_ms, lease_ms);
                self.alive.insert((fact.author, *dag), ((fact.hlc, id), until, *since));
                let Some(claims) = self.unfinished.get(&(fact.author, *dag)) else { return Touched::Nothing };
                let mut jobs: Vec<String> = claims.iter().map(|c| self.claims[c].job.clone()).collect();
                jobs.sort_unstable();
                jobs.dedup();
                Touched::Jobs { dag: *dag, jobs }
            }
        }
    }

    /// When a claim's lease ends: its own, or its author's latest `Alive` for the DAG if later
    /// and the claim is of the run of the node that `Alive` speaks for.
    fn lease_of(&self, c: &ClaimIx) -> u64 {
        let alive = self.alive.get(&(c.author, c.dag)).filter(|a| c.hlc >= a.2).map_or(0, |a| a.1);
        c.lease_until_ms.max(alive)
    }

    /// Applies a renewal, completion, failure or release to its claim if its author made the claim.
    fn amend(c: &mut ClaimIx, fact: &Fact, lease_ms: u64) -> bool {
        if fact.author != c.author {
            return false;
        }
        match &fact.body {
            Body::Renew { lease_until_ms, .. } => {
                c.lease_until_ms = c.lease_until_ms.max(believed_lease(fact, *lease_until_ms, lease_ms))
            }
            Body::Done { record, bytes, result, .. } => {
                c.dones.push(((fact.hlc, fact.author, *record), Completion { bytes: *bytes, result: *result }))
            }
            Body::Fail { reason, .. } => {
                if c.failed.as_ref().is_none_or(|f| reason < f) {
                    c.failed = Some(reason.clone());
                }
            }
            Body::Release { .. } => c.released = true,
            _ => return false,
        }
        true
    }

    fn job_state(&self, dag: &Hash, job: &str, now_ms: u64) -> Option<JobState> {
        let d = self.dags.get(dag)?;
        let ix = self.jobs.get(dag)?.get(job).filter(|j| j.listed)?;
        Some(self.state_of(d, ix, dag, now_ms))
    }

    fn state_of(&self, d: &DagView, ix: &JobIx, dag: &Hash, now_ms: u64) -> JobState {
        let dones =
            ix.dones.iter().filter(|((d, _), _)| !ix.lost.contains(&d.2)).map(
                |(((_, author, record), (_, node, claim)), c)| (*author, c.result, (*claim, *node, *record, c.bytes)),
            );
        let runs = match agreement(d.quorum.as_ref(), dones) {
            Agreement::Counts((claim, node, record, bytes)) => return JobState::Done { claim, node, record, bytes },
            Agreement::Waiting { runs } => runs,
        };
        if self.cancelled.contains(dag) {
            return JobState::Cancelled;
        }
        let claims = ix.claims.iter().map(|(.., id)| (id, &self.claims[id]));
        let mut failures: Vec<String> = claims.clone().filter_map(|(_, c)| c.failed.clone()).collect();
        if failures.len() >= d.max_attempts as usize {
            return JobState::Failed { failures };
        }
        if let Some(why) = disagreement(d.quorum.as_ref(), d.max_attempts, runs) {
            failures.push(why);
            return JobState::Failed { failures };
        }
        match claims.clone().find(|(_, c)| c.live(self.lease_of(c), now_ms)) {
            Some((id, c)) => {
                JobState::Claimed { claim: *id, node: c.author, lease_until_ms: self.lease_of(c), failures }
            }
            None => JobState::Open { failures },
        }
    }
}

impl Ledger {
    /// An empty ledger believing leases for [`LEASE_MS`](crate::core::LEASE_MS) past their fact.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// An empty ledger that believes a claim's or renewal's `lease_until_ms` at most `lease_ms`
    /// past that fact's HLC. A claimant's own leases end `lease_ms` after its clock, which its HLC
    /// is never behind, so the bound never shortens an honest lease; it stops a node whose clock
    /// reads a year ahead (or a forger) from holding a job by a lease that ends next year. Nodes
    /// of one mesh must use one `lease_ms` (as their renewals already assume): the fold depends on
    /// it.
    pub fn with_lease_ms(lease_ms: u64) -> Ledger {
        Ledger {
            facts: BTreeMap::new(),
            view: View::default(),
            lease_ms,
            digest: std::sync::OnceLock::new(),
            mesh_digest: std::sync::OnceLock::new(),
            replaced: Vec::new(),
            compacted: BTreeMap::new(),
            archived: BTreeMap::new(),
            horizon_ms: 0,
            compacted_digest: std::sync::OnceLock::new(),
        }
    }

    /// How long past its fact's HLC a lease is believed, in ms.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// Adds a fact after checking it; Ok(false) if it was already here.
    pub fn insert(&mut self, fact: Fact) -> Result<bool, LedgerError> {
        // Checked first: a copy of a stored fact with a broken signature is still refused.
        Ok(self.insert_verified(fact.verified()?) != Touched::Duplicate)
    }

    /// Adds a checked fact and folds it into the view; says what it may have changed.
    pub fn insert_verified(&mut self, fact: VerifiedFact) -> Touched {
        let id = fact.id;
        if self.facts.contains_key(&id) || self.refuses(&fact.fact) {
            return Touched::Duplicate;
        }
        if let Body::Alive { dag, .. } = &fact.fact.body {
            let held = self.view.alive.get(&(fact.fact.author, *dag)).map(|a| a.0);
            match held {
                Some(key) if key >= (fact.fact.hlc, id) => return Touched::Duplicate,
                Some((_, old)) => {
                    self.facts.remove(&old);
                    if let Some(ids) = self.view.by_dag.get_mut(dag) {
                        ids.remove(&old);
                    }
                    self.replaced.push(old);
                }
                None => {}
            }
        }
        self.facts.insert(id, fact.fact.clone());
        self.digest.take();
        self.mesh_digest.take();
        self.view.apply(&self.facts, id, &fact.fact, self.lease_ms)
    }

    /// Union with `other` (whose facts are checked again: it may come from anywhere). Returns how
    /// many facts were new; a bad fact is refused and the rest still merged.
    pub fn merge(&mut self, other: &Ledger) -> (usize, Vec<LedgerError>) {
        let mut added = 0;
        let mut refused = Vec::new();
        for fact in other.facts.values() {
            match self.insert(Fact::clone(fact)) {
                Ok(true) => added += 1,
                Ok(false) => {}
                Err(e) => refused.push(e),
            }
        }
        (added, refused)
    }

    /// Ids of the `Alive` facts a later one replaced since the last call (see the module's
    /// documentation): a driver that stores facts deletes these.
    pub fn take_replaced(&mut self) -> Vec<Hash> {
        std::mem::take(&mut self.replaced)
    }

    pub fn ids(&self) -> BTreeSet<Hash> {
        self.facts.keys().copied().collect()
    }

    /// Every fact id, in ascending order, without collecting them.
    pub fn ids_sorted(&self) -> impl Iterator<Item = &Hash> + '_ {
        self.facts.keys()
    }

    /// The size of the group that schedules `dag` on a topic of its own (its winning submit's
    /// `topic_nodes`); 0 when it travels on the mesh's one topic or its submit is not here.
    pub fn topic_nodes(&self, dag: &Hash) -> u32 {
        self.view.dags.get(dag).map_or(0, |d| d.topic_nodes)
    }

    /// The DAGs with a topic of their own (see [`Ledger::topic_nodes`]).
    pub fn topic_dags(&self) -> impl Iterator<Item = (&Hash, u32)> + '_ {
        self.view.dags.iter().filter(|(_, d)| d.topic_nodes > 0).map(|(h, d)| (h, d.topic_nodes))
    }

    /// The DAG a fact is about: named by it, or by the claim it is about once that is here.
    pub fn dag_of(&self, fact: &Fact) -> Option<Hash> {
        match &fact.body {
            Body::Submit { dag, .. }
            | Body::Cancel { dag }
            | Body::Claim { dag, .. }
            | Body::Lost { dag, .. }
            | Body::Alive { dag, .. } => Some(*dag),
            Body::Renew { claim, .. }
            | Body::Done { claim, .. }
            | Body::Fail { claim, .. }
            | Body::Release { claim } => self.view.claims.get(claim).map(|c| c.dag),
            Body::Quarantine { .. } => None,
        }
    }

    /// Whether a fact travels on its DAG's own topic only: it is about a DAG with one (see
    /// [`Ledger::topic_nodes`]) and is not the DAG's submit or cancel, which every node holds
    /// (a node outside the group still learns the DAG exists and what became of it).
    pub fn in_dag_topic(&self, fact: &Fact) -> bool {
        if matches!(fact.body, Body::Submit { .. } | Body::Cancel { .. }) {
            return false;
        }
        self.dag_of(fact).is_some_and(|d| self.topic_nodes(&d) > 0)
    }

    /// The ids every node holds, ascending: all but those [`Ledger::in_dag_topic`] leaves to a
    /// DAG's group. The mesh's anti-entropy compares these.
    pub fn mesh_ids_sorted(&self) -> impl Iterator<Item = &Hash> + '_ {
        let grouped = self.view.dags.values().any(|d| d.topic_nodes > 0);
        self.facts.iter().filter(move |(_, f)| !grouped || !self.in_dag_topic(f)).map(|(id, _)| id)
    }

    /// One hash of [`Ledger::mesh_ids_sorted`] and their count: equal digests, equal facts
    /// outside DAG topics. The whole ledger's [`Ledger::digest`] when no DAG has a topic.
    pub fn mesh_digest(&self) -> (Hash, usize) {
        *self.mesh_digest.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            let mut n = 0;
            for id in self.mesh_ids_sorted() {
                h.update(&id.0);
                n += 1;
            }
            (Hash(*h.finalize().as_bytes()), n)
        })
    }

    pub fn get(&self, id: &Hash) -> Option<&Fact> {
        self.facts.get(id).map(|f| &**f)
    }

    /// One fact with the proof that it was checked when it came in.
    pub fn verified(&self, id: &Hash) -> Option<VerifiedFact> {
        self.facts.get(id).map(|f| VerifiedFact { id: *id, fact: f.clone() })
    }

    /// Every fact, by id, each with the proof that it was checked when it came in.
    pub fn verified_facts(&self) -> impl Iterator<Item = VerifiedFact> + '_ {
        self.facts.iter().map(|(id, f)| VerifiedFact { id: *id, fact: f.clone() })
    }

    /// The facts this ledger has that a peer holding `theirs` lacks (anti-entropy).
    pub fn missing_from<'a>(&'a self, theirs: &'a BTreeSet<Hash>) -> impl Iterator<Item = &'a Fact> + 'a {
        self.facts.iter().filter(move |(id, _)| !theirs.contains(id)).map(|(_, f)| &**f)
    }

    /// The ids of one DAG's facts, in ascending order: those naming it (submit, claims, cancel,
    /// lost, alive) and those about its claims (renewals, results, releases) once the claim is
    /// here.
    pub fn dag_ids(&self, dag: &Hash) -> impl Iterator<Item = &Hash> + '_ {
        self.view.by_dag.get(dag).into_iter().flat_map(|d| &d.ids)
    }

    /// How many facts [`Ledger::dag_ids`] lists.
    pub fn dag_len(&self, dag: &Hash) -> usize {
        self.view.by_dag.get(dag).map_or(0, |d| d.ids.len())
    }

    /// One hash of one DAG's facts ([`Ledger::dag_ids`]): equal digests, equal facts of the DAG.
    /// Kept until the DAG's next fact.
    pub fn dag_digest(&self, dag: &Hash) -> Hash {
        let digest = |ids: &BTreeSet<Hash>| {
            let mut h = blake3::Hasher::new();
            h.update(&dag.0);
            for id in ids {
                h.update(&id.0);
            }
            Hash(*h.finalize().as_bytes())
        };
        match self.view.by_dag.get(dag) {
            Some(d) => *d.digest.get_or_init(|| digest(&d.ids)),
            None => digest(&BTreeSet::new()),
        }
    }

    /// One hash of the whole set: equal digests, equal ledgers.
    pub fn digest(&self) -> Hash {
        *self.digest.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            for id in self.facts.keys() {
                h.update(&id.0);
            }
            Hash(*h.finalize().as_bytes())
        })
    }

    /// Every fact about each job of `dag` (claims and lost reports, and the renewals, results and
    /// releases of its claims), in (HLC, author) order: a job's history as the facts tell it.
    /// Reads every fact (the API's detail view and tests, not the scheduler's path).
    pub fn history(&self, dag: &Hash) -> BTreeMap<String, Vec<&Fact>> {
        let mut out: BTreeMap<String, Vec<&Fact>> = BTreeMap::new();
        let job_of = |f: &Fact| -> Option<String> {
            match &f.body {
                Body::Claim { dag: d, job, .. } | Body::Lost { dag: d, job, .. } if d == dag => Some(job.clone()),
                Body::Renew { claim, .. }
                | Body::Done { claim, .. }
                | Body::Fail { claim, .. }
                | Body::Release { claim } => match &self.facts.get(claim)?.body {
                    Body::Claim { dag: d, job, .. } if d == dag => Some(job.clone()),
                    _ => None,
                },
                _ => None,
            }
        };
        for f in self.facts.values() {
            if let Some(job) = job_of(f) {
                out.entry(job).or_default().push(f);
            }
        }
        for facts in out.values_mut() {
            facts.sort_by_key(|f| (f.hlc, f.author));
        }
        out
    }

    /// Whether some submit names `dag`.
    pub fn has_dag(&self, dag: &Hash) -> bool {
        self.view.dags.contains_key(dag)
    }

    /// The DAGs some submit names.
    pub fn dags(&self) -> impl Iterator<Item = &Hash> + '_ {
        self.view.dags.keys()
    }

    /// The run records of `job` that some node reported lost (no node could serve their
    /// outputs): a completion naming one of them no longer counts, so a run of the job must make
    /// a new record, never answer with one of these from an action cache.
    pub fn lost_records(&self, dag: &Hash, job: &str) -> BTreeSet<Hash> {
        self.view.jobs.get(dag).and_then(|jobs| jobs.get(job)).map(|ix| ix.lost.clone()).unwrap_or_default()
    }

    /// The completions of `job` that count towards its DAG's quorum (records not lost), in order,
    /// as (author, record, result).
    pub fn completions(&self, dag: &Hash, job: &str) -> Vec<(NodeId, Hash, Option<Hash>)> {
        let Some(ix) = self.view.jobs.get(dag).and_then(|jobs| jobs.get(job)) else { return Vec::new() };
        ix.dones
            .iter()
            .filter(|((d, _), _)| !ix.lost.contains(&d.2))
            .map(|(((_, author, record), _), c)| (*author, *record, c.result))
            .collect()
    }

    /// The DAG's quorum, if its submit set one.
    pub fn quorum(&self, dag: &Hash) -> Option<&Quorum> {
        self.view.dags.get(dag)?.quorum.as_ref().filter(|q| q.agree > 1)
    }

    /// Under its DAG's quorum, whether `job` waits for more agreeing runs: some node completed
    /// it and no completion counts yet. Such a run is made afresh (no action cache), by a node
    /// that has not run it ([`Ledger::ran`]).
    pub fn confirming(&self, dag: &Hash, job: &str, now_ms: u64) -> bool {
        self.quorum(dag).is_some()
            && !matches!(self.job_state(dag, job, now_ms), Some(JobState::Done { .. }))
            && !self.completions(dag, job).is_empty()
    }

    /// Whether `node` completed `job` of `dag` with a record not lost: under a quorum it does
    /// not run the job again (its second run would agree with itself).
    pub fn ran(&self, dag: &Hash, job: &str, node: &NodeId) -> bool {
        self.completions(dag, job).iter().any(|(author, ..)| author == node)
    }

    /// Under a quorum, once `job` is done by agreement: who made the quorum and whom it
    /// outvoted (the completer quarantines them); None when a trusted node's completion counted.
    pub fn dissent(&self, dag: &Hash, job: &str, now_ms: u64) -> Option<Dissent> {
        let q = self.quorum(dag)?;
        let Some(JobState::Done { record, .. }) = self.job_state(dag, job, now_ms) else { return None };
        let all = self.completions(dag, job);
        let result = all.iter().find(|(_, r, _)| *r == record)?.2?;
        let mut agreeing = BTreeSet::new();
        let mut completer = None;
        for (author, rec, res) in &all {
            if *res == Some(result) && agreeing.insert(*author) && agreeing.len() == q.agree as usize {
                completer = Some((*author, *rec));
            }
        }
        // Done by a trusted node's completion: nobody made a quorum.
        let (completer, completer_record) = completer?;
        let dissenters: Vec<(NodeId, Hash)> = all
            .iter()
            .filter(|(author, _, res)| *res != Some(result) && res.is_some() && !q.trusted.contains(author))
            .map(|(author, rec, _)| (*author, *rec))
            .collect();
        Some(Dissent { completer, agreed: completer_record, outvoted: dissenters })
    }

    /// Under a quorum, before `author` says it completed `job` with `result`: whether that
    /// completion will make the quorum, and if so the completions of another result it outvotes,
    /// as (author, record). The completer says their quarantine first, so no outvoted node hears
    /// of the job done (and claims its dependants) before it hears it is quarantined.
    pub fn would_outvote(
        &self,
        dag: &Hash,
        job: &str,
        author: &NodeId,
        result: Hash,
        now_ms: u64,
    ) -> Vec<(NodeId, Hash)> {
        let Some(q) = self.quorum(dag) else { return Vec::new() };
        if q.trusted.contains(author) || matches!(self.job_state(dag, job, now_ms), Some(JobState::Done { .. })) {
            return Vec::new();
        }
        let all = self.completions(dag, job);
        let agreeing: BTreeSet<&NodeId> =
            all.iter().filter(|(a, _, r)| *r == Some(result) && a != author).map(|(a, ..)| a).collect();
        if agreeing.len() + 1 != q.agree as usize {
            return Vec::new();
        }
        all.iter()
            .filter(|(a, _, r)| r.is_some_and(|r| r != result) && a != author && !q.trusted.contains(a))
            .map(|(a, rec, _)| (*a, *rec))
            .collect()
    }

    /// The mesh-wide action cache: the completions of `action` in any DAG whose records no node
    /// reported lost, as (record, author), earliest first, then those of compacted DAGs; each
    /// record once.
    pub fn cached(&self, action: &Hash) -> Vec<(Hash, NodeId)> {
        let mut seen = BTreeSet::new();
        self.view
            .actions
            .get(action)
            .into_iter()
            .flatten()
            .map(|(_, author, record)| (*record, *author))
            .chain(self.archived_for(action))
            .filter(|(record, _)| !self.view.lost.contains(record) && seen.insert(*record))
            .filter(|(record, author)| !self.view.quarantined.contains_key(&self.made_by(record).unwrap_or(*author)))
            .collect()
    }

    /// Whether some node found `node`'s outputs wrong (a [`Body::Quarantine`]), and its fact.
    pub fn quarantine_of(&self, node: &NodeId) -> Option<&Fact> {
        self.view.quarantined.get(node).and_then(|(_, id)| self.facts.get(id)).map(|f| &**f)
    }

    /// Every quarantined node, with the earliest fact that says why.
    pub fn quarantined(&self) -> impl Iterator<Item = (&NodeId, &Fact)> + '_ {
        self.view.quarantined.iter().filter_map(|(n, (_, id))| self.facts.get(id).map(|f| (n, &**f)))
    }

    /// Who made `record`: the author of its earliest completion (a later one by another node
    /// took it from a cache), if any completion names it.
    pub fn made_by(&self, record: &Hash) -> Option<NodeId> {
        self.view.made.get(record).map(|(_, author)| *author)
    }

    /// One job as the facts say at `now_ms`, from the incremental view (O(its claims)); None if
    /// no submit of `dag` names it.
    pub fn job_state(&self, dag: &Hash, job: &str, now_ms: u64) -> Option<JobState> {
        self.view.job_state(dag, job, now_ms)
    }

    /// One DAG as the facts say at `now_ms` (O(its jobs)).
    pub fn dag_state(&self, dag: &Hash, now_ms: u64) -> Option<DagState> {
        let d = self.view.dags.get(dag)?;
        let jobs = self.view.jobs.get(dag).map_or_else(BTreeMap::new, |jobs| {
            jobs.iter()
                .filter(|(_, ix)| ix.listed)
                .map(|(job, ix)| (job.clone(), self.view.state_of(d, ix, dag, now_ms)))
                .collect()
        });
        Some(DagState { max_attempts: d.max_attempts, jobs })
    }

    /// Every DAG and job as the facts say at `now_ms`, from the incremental view (O(jobs), not
    /// O(facts)); equal to [`Ledger::fold`].
    pub fn state(&self, now_ms: u64) -> State {
        State { dags: self.view.dags.keys().filter_map(|d| Some((*d, self.dag_state(d, now_ms)?))).collect() }
    }

    /// The reference fold: every DAG and job as the facts say at `now_ms`, computed from the whole
    /// set (O(facts)). [`Ledger::state`] answers the same from the incremental view; property tests
    /// hold the two equal for any delivery order. Kept as the definition the view must match.
    pub fn fold(&self, now_ms: u64) -> State {
        // Per DAG, its winning submit: the fact, its jobs, attempts and quorum.
        type Winner<'a> = (&'a Fact, &'a Vec<String>, u32, Option<&'a Quorum>);
        let mut submits: BTreeMap<Hash, Winner<'_>> = BTreeMap::new();
        let mut cancelled: BTreeSet<Hash> = BTreeSet::new();
        let mut claims: BTreeMap<(Hash, &str), Vec<FoldClaim<'_>>> = BTreeMap::new();
        let mut claim_of: BTreeMap<Hash, (Hash, &str)> = BTreeMap::new();
        let mut lost: BTreeSet<(Hash, &str, Hash)> = BTreeSet::new();
        // Per (author, DAG), its latest Alive by (hlc, id), the lease it holds and since when.
        let mut alive: BTreeMap<(NodeId, Hash), AliveIx> = BTreeMap::new();
        for (id, fact) in self.facts.iter().map(|(id, f)| (id, &**f)) {
            match &fact.body {
                Body::Submit { dag, jobs, max_attempts, quorum, .. } => {
                    // One DAG hash is one DAG; the earliest submission sets its attempt budget.
                    let key = (fact.hlc, fact.author);
                    match submits.get(dag) {
                        Some((f, ..)) if (f.hlc, f.author) <= key => {}
                        _ => {
                            submits.insert(*dag, (fact, jobs, *max_attempts, quorum.as_ref()));
                        }
                    }
                }
                Body::Cancel { dag } => {
                    cancelled.insert(*dag);
                }
                Body::Claim { dag, job, lease_until_ms } => {
                    claim_of.insert(*id, (*dag, job.as_str()));
                    claims.entry((*dag, job.as_str())).or_default().push(FoldClaim {
                        id: *id,
                        fact,
                        lease_until_ms: believed_lease(fact, *lease_until_ms, self.lease_ms),
                        dones: Vec::new(),
                        failed: None,
                        released: false,
                    });
                }
                Body::Lost { dag, job, record } => {
                    lost.insert((*dag, job.as_str(), *record));
                }
                Body::Alive { dag, lease_until_ms, since } => {
                    let entry = ((fact.hlc, *id), believed_lease(fact, *lease_until_ms, self.lease_ms), *since);
                    let e = alive.entry((fact.author, *dag)).or_insert(entry);
                    if entry.0 > e.0 {
                        *e = entry;
                    }
                }
                _ => {}
            }
        }
        // Renewals, completions, failures and releases count only from the claim's own author.
        for fact in self.facts.values().map(|f| &**f) {
            let (claim, apply): (&Hash, &dyn Fn(&mut FoldClaim<'_>)) = match &fact.body {
                Body::Renew { claim, lease_until_ms } => {
                    let until = believed_lease(fact, *lease_until_ms, self.lease_ms);
                    (claim, &move |c: &mut FoldClaim<'_>| c.lease_until_ms = c.lease_until_ms.max(until))
                }
                Body::Done { claim, record, bytes, result, .. } => (claim, &move |c: &mut FoldClaim<'_>| {
                    c.dones.push(((fact.hlc, fact.author, *record), Completion { bytes: *bytes, result: *result }))
                }),
                Body::Release { claim } => (claim, &|c: &mut FoldClaim<'_>| c.released = true),
                Body::Fail { claim, reason } => (claim, &move |c: &mut FoldClaim<'_>| {
                    if c.failed.as_ref().is_none_or(|f| reason < f) {
                        c.failed = Some(reason.clone());
                    }
                }),
                _ => continue,
            };
            let Some(key) = claim_of.get(claim) else { continue };
            if let Some(view) = claims.get_mut(key).and_then(|list| list.iter_mut().find(|c| c.id == *claim))
                && view.fact.author == fact.author
            {
                apply(view);
            }
        }
        let mut state = State::default();
        for (dag, (_, jobs, max_attempts, quorum)) in submits {
            let mut job_states = BTreeMap::new();
            for job in jobs {
                let mut list = claims.remove(&(dag, job.as_str())).unwrap_or_default();
                list.sort_by_key(|c| (c.fact.hlc, c.fact.author));
                let mut dones: Vec<_> = list
                    .iter()
                    .flat_map(|c| c.dones.iter().map(|(d, done)| (*d, (c.fact.hlc, c.fact.author, c.id), *done)))
                    .filter(|(d, ..)| !lost.contains(&(dag, job.as_str(), d.2)))
                    .collect();
                dones.sort_by_key(|(d, claim, _)| (*d, *claim));
                let agreed = agreement(
                    quorum,
                    dones.iter().map(|(d, claim, done)| (d.1, done.result, (claim.2, claim.1, d.2, done.bytes))),
                );
                let js = if let Agreement::Counts((claim, node, record, bytes)) = agreed {
                    JobState::Done { claim, node, record, bytes }
                } else if cancelled.contains(&dag) {
                    JobState::Cancelled
                } else {
                    let mut failures: Vec<String> = list.iter().filter_map(|c| c.failed.clone()).collect();
                    let runs = match agreed {
                        Agreement::Waiting { runs } => runs,
                        Agreement::Counts(_) => 0,
                    };
                    let disagree = disagreement(quorum, max_attempts, runs);
                    if failures.len() >= max_attempts as usize {
                        JobState::Failed { failures }
                    } else if let Some(why) = disagree {
                        failures.push(why);
                        JobState::Failed { failures }
                    } else if let Some((w, until)) = list
                        .iter()
                        .map(|c| {
                            let alive = alive.get(&(c.fact.author, dag)).filter(|a| c.fact.hlc >= a.2);
                            (c, c.lease_until_ms.max(alive.map_or(0, |a| a.1)))
                        })
                        .find(|(c, until)| c.dones.is_empty() && c.failed.is_none() && !c.released && *until > now_ms)
                    {
                        JobState::Claimed { claim: w.id, node: w.fact.author, lease_until_ms: until, failures }
                    } else {
                        JobState::Open { failures }
                    }
                };
                job_states.insert(job.clone(), js);
            }
            state.dags.insert(dag, DagState { max_attempts, jobs: job_states });
        }
        state
    }
}

/// The end of a claim's or renewal's lease as the fold believes it: what the fact says, but no
/// more than `lease_ms` past the fact's own HLC (see [`Ledger::with_lease_ms`]).
fn believed_lease(fact: &Fact, lease_until_ms: u64, lease_ms: u64) -> u64 {
    lease_until_ms.min(fact.hlc.wall_ms.saturating_add(lease_ms))
}

/// A signature as a CBOR byte string (not an array of 64 integers).
mod serde_bytes_sig {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
                v.try_into().map_err(|_| E::custom("a signature is 64 bytes"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}
