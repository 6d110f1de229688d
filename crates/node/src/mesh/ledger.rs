//! The ledger: a grow-only set of signed facts, and the pure fold that turns any set into the
//! state of every DAG and job. Two nodes holding the same facts agree, whatever order the facts
//! arrived in; merging is set union, so it is commutative, associative and idempotent.
//!
//! Facts: `Submit` (a DAG and its jobs), `Claim` (a node takes a job until its lease ends),
//! `Renew` (the claimant extends the lease), `Done` (the claim produced a run record), `Fail` (the
//! attempt failed, with why), `Cancel` (the DAG is abandoned). Among the live claims of a job,
//! the one with the smallest (hybrid logical clock, node id) wins; a lease not renewed in time
//! expires and the job is open again; a job whose attempts failed `max_attempts` times has failed
//! for good, every attempt's reason kept. Only a claim's author may renew, finish or fail it.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use shoal_dag::{Hash, canonical_cbor};

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

    /// The next reading after receiving `remote` at `now_ms`: after both.
    pub fn observe(self, remote: Hlc, now_ms: u64) -> Hlc {
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

/// What a fact says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A DAG (the hash of its file) and the ids of its jobs.
    Submit {
        dag: Hash,
        jobs: Vec<String>,
        max_attempts: u32,
    },
    Claim {
        dag: Hash,
        job: String,
        lease_until_ms: u64,
    },
    Renew {
        claim: Hash,
        lease_until_ms: u64,
    },
    Done {
        claim: Hash,
        record: Hash,
    },
    Fail {
        claim: Hash,
        reason: String,
    },
    Cancel {
        dag: Hash,
    },
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
            Body::Submit { jobs, max_attempts, .. } => {
                if jobs.is_empty() || jobs.len() > JOBS_PER_DAG_MAX {
                    return Err(LedgerError::Malformed(format!("a DAG names 1 to {JOBS_PER_DAG_MAX} jobs")));
                }
                if *max_attempts == 0 {
                    return Err(LedgerError::Malformed("max_attempts must be at least 1".into()));
                }
            }
            Body::Fail { reason, .. } if reason.len() > REASON_BYTES_MAX => {
                return Err(LedgerError::Malformed(format!("a failure reason is at most {REASON_BYTES_MAX} bytes")));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The facts a node holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    facts: BTreeMap<Hash, Fact>,
}

/// Where one job stands in a view of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

struct ClaimView<'a> {
    id: Hash,
    fact: &'a Fact,
    lease_until_ms: u64,
    done: Option<(Hlc, NodeId, Hash)>,
    failed: Option<String>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// Adds a fact after checking it; Ok(false) if it was already here.
    pub fn insert(&mut self, fact: Fact) -> Result<bool, LedgerError> {
        fact.verify()?;
        let id = fact.id();
        Ok(self.facts.insert(id, fact).is_none())
    }

    /// Union with `other` (whose facts are checked again: it may come from anywhere). Returns how
    /// many facts were new; a bad fact is refused and the rest still merged.
    pub fn merge(&mut self, other: &Ledger) -> (usize, Vec<LedgerError>) {
        let mut added = 0;
        let mut refused = Vec::new();
        for fact in other.facts.values() {
            match self.insert(fact.clone()) {
                Ok(true) => added += 1,
                Ok(false) => {}
                Err(e) => refused.push(e),
            }
        }
        (added, refused)
    }

    pub fn ids(&self) -> BTreeSet<Hash> {
        self.facts.keys().copied().collect()
    }

    pub fn get(&self, id: &Hash) -> Option<&Fact> {
        self.facts.get(id)
    }

    /// The facts this ledger has that a peer holding `theirs` lacks (anti-entropy).
    pub fn missing_from<'a>(&'a self, theirs: &'a BTreeSet<Hash>) -> impl Iterator<Item = &'a Fact> + 'a {
        self.facts.iter().filter(move |(id, _)| !theirs.contains(id)).map(|(_, f)| f)
    }

    /// One hash of the whole set: equal digests, equal ledgers.
    pub fn digest(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        for id in self.facts.keys() {
            h.update(&id.0);
        }
        Hash(*h.finalize().as_bytes())
    }

    /// Every DAG and job as the facts say at `now_ms`.
    pub fn state(&self, now_ms: u64) -> State {
        let mut submits: BTreeMap<Hash, (&Fact, &Vec<String>, u32)> = BTreeMap::new();
        let mut cancelled: BTreeSet<Hash> = BTreeSet::new();
        let mut claims: BTreeMap<(Hash, &str), Vec<ClaimView<'_>>> = BTreeMap::new();
        let mut claim_of: BTreeMap<Hash, (Hash, &str)> = BTreeMap::new();
        for (id, fact) in &self.facts {
            match &fact.body {
                Body::Submit { dag, jobs, max_attempts } => {
                    // One DAG hash is one DAG; the earliest submission sets its attempt budget.
                    let key = (fact.hlc, fact.author);
                    match submits.get(dag) {
                        Some((f, ..)) if (f.hlc, f.author) <= key => {}
                        _ => {
                            submits.insert(*dag, (fact, jobs, *max_attempts));
                        }
                    }
                }
                Body::Cancel { dag } => {
                    cancelled.insert(*dag);
                }
                Body::Claim { dag, job, lease_until_ms } => {
                    claim_of.insert(*id, (*dag, job.as_str()));
                    claims.entry((*dag, job.as_str())).or_default().push(ClaimView {
                        id: *id,
                        fact,
                        lease_until_ms: *lease_until_ms,
                        done: None,
                        failed: None,
                    });
                }
                _ => {}
            }
        }
        // Renewals, completions and failures count only from the claim's own author.
        for fact in self.facts.values() {
            let (claim, apply): (&Hash, &dyn Fn(&mut ClaimView<'_>)) = match &fact.body {
                Body::Renew { claim, lease_until_ms } => {
                    (claim, &move |c: &mut ClaimView<'_>| c.lease_until_ms = c.lease_until_ms.max(*lease_until_ms))
                }
                Body::Done { claim, record } => (claim, &move |c: &mut ClaimView<'_>| {
                    let candidate = (fact.hlc, fact.author, *record);
                    if c.done.is_none_or(|d| candidate < d) {
                        c.done = Some(candidate);
                    }
                }),
                Body::Fail { claim, reason } => (claim, &move |c: &mut ClaimView<'_>| {
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
        for (dag, (_, jobs, max_attempts)) in submits {
            let mut job_states = BTreeMap::new();
            for job in jobs {
                let mut list = claims.remove(&(dag, job.as_str())).unwrap_or_default();
                list.sort_by_key(|c| (c.fact.hlc, c.fact.author));
                let js = if let Some(done) =
                    list.iter().filter_map(|c| c.done.map(|d| (d, c.id, c.fact.author))).min_by_key(|(d, ..)| *d)
                {
                    JobState::Done { claim: done.1, node: done.2, record: done.0.2 }
                } else if cancelled.contains(&dag) {
                    JobState::Cancelled
                } else {
                    let failures: Vec<String> = list.iter().filter_map(|c| c.failed.clone()).collect();
                    if failures.len() >= max_attempts as usize {
                        JobState::Failed { failures }
                    } else if let Some(w) =
                        list.iter().find(|c| c.done.is_none() && c.failed.is_none() && c.lease_until_ms > now_ms)
                    {
                        JobState::Claimed {
                            claim: w.id,
                            node: w.fact.author,
                            lease_until_ms: w.lease_until_ms,
                            failures,
                        }
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
