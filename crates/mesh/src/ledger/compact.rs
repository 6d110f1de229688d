//! Compaction: a bounded ledger. A DAG whose every job ended (done, failed or cancelled) and
//! whose latest fact is older than the retention leaves the ledger: its facts (claims, `Alive`s,
//! completions, failures, releases) are dropped, and what became of it stays as a [`DagSummary`]
//! (each job's final state, the records by hash) that the driver keeps as a blob, plus a
//! tombstone of 40 bytes here ([`Compacted`]). Every node applies the same rule to the same facts,
//! so nodes drop the same facts and keep equal digests; a fact of a compacted DAG that arrives
//! later (a peer that has not compacted yet, a node back from a long absence) is refused, so
//! anti-entropy cannot bring it back. Facts older than the retention that belong to no DAG this
//! ledger holds (completions whose claim was compacted) are refused and dropped likewise.
//!
//! The records stay in the nodes' stores and the summary names them; the mesh-wide cache keeps
//! answering for compacted DAGs from the summaries' actions ([`Ledger::cached`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_dag::{Hash, canonical_cbor};

use super::{Body, JobState, Ledger, NodeId};

/// What became of a compacted DAG: kept by the driver as a blob named by [`DagSummary::hash`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagSummary {
    pub dag: Hash,
    pub max_attempts: u32,
    /// Each listed job's final state, and the action key its completion named.
    pub jobs: BTreeMap<String, SummaryJob>,
    /// The HLC wall time of the DAG's latest fact, ms.
    pub last_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryJob {
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Hash>,
}

impl DagSummary {
    pub fn to_cbor(&self) -> Vec<u8> {
        canonical_cbor(self)
    }

    pub fn hash(&self) -> Hash {
        Hash::of(&self.to_cbor())
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<DagSummary, String> {
        shoal_dag::from_cbor(bytes).map_err(|e| format!("not a DAG summary: {e}"))
    }
}

/// A compacted DAG's tombstone: its summary's hash and when its last fact was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    pub summary: Hash,
    pub last_ms: u64,
}

impl Ledger {
    /// Compacts every DAG that ended with its latest fact before `now_ms - retention_ms`, and
    /// drops facts older than that which belong to no DAG here. Returns the summaries of the DAGs
    /// compacted; the ids of the facts dropped come out of [`Ledger::take_replaced`], for a
    /// driver to delete. O(facts) when it compacts (the view is folded again from what is
    /// left), O(DAGs) when there is nothing to do.
    pub fn compact(&mut self, now_ms: u64, retention_ms: u64) -> Vec<DagSummary> {
        let horizon = now_ms.saturating_sub(retention_ms);
        self.horizon_ms = self.horizon_ms.max(horizon);
        let mut summaries = Vec::new();
        let mut drop: BTreeSet<Hash> = BTreeSet::new();
        let dags: Vec<Hash> = self.view.dags.keys().copied().collect();
        for dag in dags {
            let Some(state) = self.dag_state(&dag, now_ms) else { continue };
            let ended = state
                .jobs
                .values()
                .all(|j| matches!(j, JobState::Done { .. } | JobState::Failed { .. } | JobState::Cancelled));
            if !ended {
                continue;
            }
            let ids: Vec<Hash> = self.dag_ids(&dag).copied().collect();
            let last_ms = ids.iter().filter_map(|id| self.facts.get(id)).map(|f| f.hlc.wall_ms).max().unwrap_or(0);
            if last_ms >= horizon {
                continue;
            }
            let mut actions: BTreeMap<Hash, Hash> = BTreeMap::new();
            for f in ids.iter().filter_map(|id| self.facts.get(id)) {
                if let Body::Done { record, action: Some(action), .. } = &f.body {
                    actions.insert(*record, *action);
                }
            }
            let jobs = state
                .jobs
                .into_iter()
                .map(|(job, state)| {
                    let action = match &state {
                        JobState::Done { record, .. } => actions.get(record).copied(),
                        _ => None,
                    };
                    (job, SummaryJob { state, action })
                })
                .collect();
            let summary = DagSummary { dag, max_attempts: state.max_attempts, jobs, last_ms };
            drop.extend(ids);
            summaries.push(summary);
        }
        // Completions, failures and releases whose claim never came, now too old for it to.
        for id in self.view.orphans.values().flatten() {
            if self.facts.get(id).is_some_and(|f| f.hlc.wall_ms < horizon) {
                drop.insert(*id);
            }
        }
        if drop.is_empty() {
            return summaries;
        }
        for s in &summaries {
            self.archive(s);
        }
        self.rebuild_without(drop);
        summaries
    }

    /// Takes in a peer's word that `dag` was compacted (anti-entropy: this node still held facts
    /// of it, having missed some, or been away): its facts here are dropped (named by
    /// [`Ledger::take_replaced`]) and refused from now on. Its summary, a blob named by
    /// `compacted.summary`, is the driver's to fetch. False if it was compacted here already.
    pub fn adopt_compacted(&mut self, dag: Hash, compacted: Compacted) -> bool {
        if self.compacted.contains_key(&dag) {
            return false;
        }
        self.compacted.insert(dag, compacted);
        self.compacted_digest.take();
        let drop: BTreeSet<Hash> = self.dag_ids(&dag).copied().collect();
        if !drop.is_empty() {
            self.rebuild_without(drop);
        }
        true
    }

    /// The tombstone of the compacted DAG a fact is about, if it is about one: what a node tells
    /// a peer that sent it (see `Sync`).
    pub fn compacted_of(&self, fact: &super::Fact) -> Option<(Hash, Compacted)> {
        let dag = self.dag_of(fact)?;
        self.compacted.get(&dag).map(|c| (dag, *c))
    }

    /// Folds the view again from every fact but `drop`, which [`Ledger::take_replaced`] names.
    fn rebuild_without(&mut self, drop: BTreeSet<Hash>) {
        let kept: Vec<_> = self.facts.iter().filter(|(id, _)| !drop.contains(id)).map(|(_, f)| f.clone()).collect();
        let mut fresh = Ledger::with_lease_ms(self.lease_ms);
        fresh.compacted = std::mem::take(&mut self.compacted);
        fresh.archived = std::mem::take(&mut self.archived);
        fresh.replaced = std::mem::take(&mut self.replaced);
        let mut refused = Vec::new();
        for fact in kept {
            let id = fact.id();
            fresh.insert_verified(super::VerifiedFact { id, fact });
            // Now about a compacted DAG, or an orphan past the horizon: it goes too.
            if !fresh.facts.contains_key(&id) {
                refused.push(id);
            }
        }
        // The horizon only after: facts go back in id order, so a completion may come before its
        // claim (an orphan for a moment) and must not be refused as an old orphan.
        fresh.horizon_ms = self.horizon_ms;
        fresh.replaced.extend(drop);
        fresh.replaced.extend(refused);
        *self = fresh;
    }

    /// Takes in a DAG compacted before (a driver's stored summary, at start): its facts are
    /// refused from now on, and its completions answer the mesh-wide cache.
    pub fn restore_compacted(&mut self, summary: &DagSummary) {
        self.archive(summary);
    }

    fn archive(&mut self, s: &DagSummary) {
        self.compacted.insert(s.dag, Compacted { summary: s.hash(), last_ms: s.last_ms });
        self.compacted_digest.take();
        for job in s.jobs.values() {
            if let (JobState::Done { node, record, .. }, Some(action)) = (&job.state, job.action) {
                self.archived.entry(action).or_default().insert((*record, *node));
            }
        }
    }

    /// One hash of every tombstone (DAG and summary, in DAG order) and their count: equal digests,
    /// the same DAGs compacted.
    pub fn compacted_digest(&self) -> (Hash, usize) {
        *self.compacted_digest.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            for (dag, c) in &self.compacted {
                h.update(&dag.0);
                h.update(&c.summary.0);
            }
            (Hash(*h.finalize().as_bytes()), self.compacted.len())
        })
    }

    /// Up to `n` tombstones of DAGs after `after` (all from the first without it), in DAG order,
    /// and whether more follow.
    pub fn compacted_page(&self, after: Option<Hash>, n: usize) -> (Vec<(Hash, Compacted)>, bool) {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page: Vec<(Hash, Compacted)> =
            self.compacted.range((from, Bound::Unbounded)).take(n + 1).map(|(d, c)| (*d, *c)).collect();
        let more = page.len() > n;
        page.truncate(n);
        (page, more)
    }

    /// The tombstone of `dag`, if it was compacted.
    pub fn compacted(&self, dag: &Hash) -> Option<Compacted> {
        self.compacted.get(dag).copied()
    }

    /// How many DAGs were compacted (their tombstones).
    pub fn compacted_count(&self) -> usize {
        self.compacted.len()
    }

    /// Whether a fact is refused as compacted: about a compacted DAG, or older than the horizon
    /// and about no DAG here (a completion whose claim was compacted).
    pub(super) fn refuses(&self, fact: &super::Fact) -> bool {
        if self.compacted.is_empty() && self.horizon_ms == 0 {
            return false;
        }
        match self.dag_of(fact) {
            Some(dag) => self.compacted.contains_key(&dag),
            None => !matches!(fact.body, Body::Quarantine { .. }) && fact.hlc.wall_ms < self.horizon_ms,
        }
    }

    /// Completions of `action` in compacted DAGs, as (record, maker).
    pub(super) fn archived_for(&self, action: &Hash) -> impl Iterator<Item = (Hash, NodeId)> + '_ {
        self.archived.get(action).into_iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::super::{Fact, Hlc};
    use super::*;

    const DAY: u64 = 86_400_000;

    fn at(ms: u64) -> Hlc {
        Hlc { wall_ms: ms, counter: 0 }
    }

    /// A DAG of two jobs `a` and `b` submitted at `t`; `a` done by `n1` (with an action key)
    /// and `b` claimed, and done too when `finish`.
    fn dag_facts(dag: Hash, t: u64, finish: bool) -> Vec<Fact> {
        let (n1, n2) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let submit = Fact::sign(
            &n1,
            at(t),
            Body::Submit { dag, jobs: vec!["a".into(), "b".into()], max_attempts: 3, topic_nodes: 0, quorum: None },
        );
        let claim_a = Fact::sign(&n1, at(t + 1), Body::Claim { dag, job: "a".into(), lease_until_ms: t + 60_000 });
        let done_a = Fact::sign(
            &n1,
            at(t + 2),
            Body::Done {
                claim: claim_a.id(),
                record: Hash::of(&[dag.0.as_slice(), b"ra"].concat()),
                bytes: 3,
                action: Some(Hash::of(b"action a")),
                result: None,
            },
        );
        let alive = Fact::sign(&n2, at(t + 3), Body::Alive { dag, lease_until_ms: t + 60_000, since: at(t + 3) });
        let claim_b = Fact::sign(&n2, at(t + 3), Body::Claim { dag, job: "b".into(), lease_until_ms: t + 60_000 });
        let mut facts = vec![submit, claim_a, done_a, alive, claim_b.clone()];
        if finish {
            let record = Hash::of(&[dag.0.as_slice(), b"rb"].concat());
            facts.push(Fact::sign(
                &n2,
                at(t + 4),
                Body::Done { claim: claim_b.id(), record, bytes: 1, action: None, result: None },
            ));
        }
        facts
    }

    fn ledger_of(facts: &[Fact]) -> Ledger {
        let mut l = Ledger::new();
        for f in facts {
            l.insert(f.clone()).unwrap();
        }
        l
    }

    #[test]
    fn an_ended_dag_past_the_retention_leaves_a_summary_and_its_facts_stay_out() {
        let (old, open, young) = (Hash::of(b"old"), Hash::of(b"open"), Hash::of(b"young"));
        let t0 = 10 * DAY;
        let old_facts = dag_facts(old, t0, true);
        let mut facts = old_facts.clone();
        facts.extend(dag_facts(open, t0, false));
        facts.extend(dag_facts(young, t0 + 2 * DAY, true));
        let mut l = ledger_of(&facts);
        let before = l.len();
        let now = t0 + 2 * DAY + 10;
        let summaries = l.compact(now, DAY);
        assert_eq!(summaries.len(), 1, "only the DAG that ended a retention ago: {summaries:?}");
        let s = &summaries[0];
        assert_eq!(s.dag, old);
        assert!(matches!(s.jobs["a"].state, JobState::Done { bytes: 3, .. }));
        assert_eq!(s.jobs["a"].action, Some(Hash::of(b"action a")));
        assert!(matches!(s.jobs["b"].state, JobState::Done { .. }));
        assert_eq!(l.compacted(&old).map(|c| c.summary), Some(s.hash()));
        assert_eq!(l.len(), before - old_facts.len());
        let mut dropped = l.take_replaced();
        dropped.sort();
        let mut want: Vec<Hash> = old_facts.iter().map(Fact::id).collect();
        want.sort();
        assert_eq!(dropped, want, "the driver is told which facts to delete");
        // The others are as they were.
        assert!(l.dag_state(&old, now).is_none());
        assert!(matches!(l.job_state(&open, "b", now), Some(JobState::Open { .. })), "its lease ran out, it is open");
        assert!(matches!(l.job_state(&young, "b", now), Some(JobState::Done { .. })));
        // The cache still answers for the compacted DAG's completion.
        assert!(
            l.cached(&Hash::of(b"action a")).iter().any(|(r, _)| *r == Hash::of(&[old.0.as_slice(), b"ra"].concat()))
        );
        // Anti-entropy from a peer that has not compacted brings none of it back.
        for f in &old_facts {
            assert_eq!(l.insert(f.clone()), Ok(false), "{:?} came back", f.body.kind());
        }
        assert_eq!(l.len(), before - old_facts.len());
        // Nothing more to do at once; the same rule on the same facts elsewhere gives the same.
        assert!(l.compact(now, DAY).is_empty());
        let mut peer = ledger_of(&facts);
        peer.compact(now + 5, DAY);
        assert_eq!(peer.digest(), l.digest());
        assert_eq!(peer.compacted(&old), l.compacted(&old));
    }

    /// A DAG still running after the retention keeps every fact, its old completions included,
    /// through another DAG's compaction (the view is folded again from the facts in id order, where
    /// a completion may come before its claim).
    #[test]
    fn a_long_running_dag_keeps_its_old_completions_when_another_is_compacted() {
        let t0 = 10 * DAY;
        let (long, old) = (Hash::of(b"long"), Hash::of(b"old"));
        let k = SigningKey::from_bytes(&[4; 32]);
        let mut jobs: Vec<String> = (0..8).map(|i| format!("j{i}")).collect();
        jobs.push("last".into());
        let mut facts = vec![Fact::sign(
            &k,
            at(t0),
            Body::Submit { dag: long, jobs: jobs.clone(), max_attempts: 1, topic_nodes: 0, quorum: None },
        )];
        for (i, job) in jobs.iter().enumerate() {
            let claim = Fact::sign(
                &k,
                at(t0 + 1 + 2 * i as u64),
                Body::Claim { dag: long, job: job.clone(), lease_until_ms: u64::MAX },
            );
            if job != "last" {
                let record = Hash::of(job.as_bytes());
                facts.push(Fact::sign(
                    &k,
                    at(t0 + 2 + 2 * i as u64),
                    Body::Done { claim: claim.id(), record, bytes: 0, action: None, result: None },
                ));
            }
            facts.push(claim);
        }
        facts.extend(dag_facts(old, t0, true));
        let mut l = ledger_of(&facts);
        let now = t0 + 2 * DAY;
        // `last` still runs: its claim's lease is believed `lease_ms` past its fact, so keep it
        // alive with a fresh `Alive`.
        l.insert(Fact::sign(&k, at(now - 1), Body::Alive { dag: long, lease_until_ms: now + 60_000, since: at(t0) }))
            .unwrap();
        assert_eq!(l.compact(now, DAY).len(), 1);
        for job in &jobs[..8] {
            assert!(matches!(l.job_state(&long, job, now), Some(JobState::Done { .. })), "{job} lost its completion");
        }
        assert!(matches!(l.job_state(&long, "last", now), Some(JobState::Claimed { .. })));
    }

    #[test]
    fn an_old_completion_whose_claim_was_compacted_is_refused_and_an_orphan_goes_with_age() {
        let dag = Hash::of(b"d");
        let t0 = 10 * DAY;
        let mut l = ledger_of(&dag_facts(dag, t0, true));
        l.compact(t0 + 2 * DAY, DAY);
        let k = SigningKey::from_bytes(&[3; 32]);
        // A completion of a compacted claim, from before the horizon: its DAG is unknown now.
        let late = Fact::sign(
            &k,
            at(t0 + 5),
            Body::Done { claim: Hash::of(b"gone claim"), record: Hash::of(b"r"), bytes: 0, action: None, result: None },
        );
        assert_eq!(l.insert(late), Ok(false));
        // A young orphan is kept until it is as old.
        let young = Fact::sign(&k, at(t0 + 2 * DAY), Body::Release { claim: Hash::of(b"a claim not here yet") });
        assert_eq!(l.insert(young.clone()), Ok(true));
        l.compact(t0 + 2 * DAY + 1, DAY);
        assert!(l.get(&young.id()).is_some());
        l.compact(t0 + 4 * DAY, DAY);
        assert!(l.get(&young.id()).is_none(), "an orphan older than the retention is dropped");
        // A quarantine is of no DAG and never too old.
        let q = Fact::sign(
            &k,
            at(1),
            Body::Quarantine { node: [9; 32], record: Hash::of(b"x"), rerun: Hash::of(b"y"), reason: "r".into() },
        );
        assert_eq!(l.insert(q), Ok(true));
    }

    #[test]
    fn a_restored_summary_keeps_the_dags_facts_out_and_answers_the_cache() {
        let dag = Hash::of(b"d");
        let facts = dag_facts(dag, 10 * DAY, true);
        let mut l = ledger_of(&facts);
        let s = l.compact(12 * DAY, DAY).remove(0);
        let decoded = DagSummary::from_cbor(&s.to_cbor()).unwrap();
        assert_eq!(decoded, s);
        // A node restarting: its summaries first, then whatever facts it still had (a crash
        // between compaction and their deletion), then a compaction at its clock: the DAG's
        // submit and claims are refused, the completions of those claims wait as orphans until
        // the compaction drops them as too old for a claim to come.
        let mut restarted = Ledger::new();
        restarted.restore_compacted(&decoded);
        for f in &facts {
            let kept = restarted.insert(f.clone()).unwrap();
            assert_eq!(kept, matches!(f.body, Body::Done { .. }), "{}", f.body.kind());
        }
        restarted.compact(12 * DAY, DAY);
        assert!(restarted.is_empty());
        assert_eq!(restarted.cached(&Hash::of(b"action a")).len(), 1);
    }
}
