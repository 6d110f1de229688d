//! Properties of the ledger's sans-IO core: merging is set union (commutative, associative,
//! idempotent), any delivery order gives the same state, the incremental view equals the full
//! fold after every fact of any delivery order, no view has two live winners for a job, forged
//! or unsigned facts are refused, leases expire (an `Alive` of the claimant extends them, the latest
//! of each author and DAG alone is kept), attempts are counted.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use shoal_dag::Hash;
use shoal_mesh::ledger::{Body, Fact, Hlc, JobState, Ledger, LedgerError, Quorum, Touched};

fn node_id(n: u8) -> [u8; 32] {
    key(n).verifying_key().to_bytes()
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n.max(1); 32])
}

fn dag() -> Hash {
    Hash::of(b"a dag file")
}

const JOBS: [&str; 3] = ["a", "b", "c"];

/// A random history over one DAG of three jobs and four nodes: claims, renewals, `Alive`s,
/// completions, failures and a possible cancel, each referring to earlier claims, signed by their
/// claimant.
fn history() -> impl Strategy<Value = Vec<Fact>> {
    prop::collection::vec((0u8..10, 0u8..4, 0usize..3, 0u64..100, 0usize..64), 1..40).prop_map(|steps| {
        let submit = Body::Submit {
            dag: dag(),
            jobs: JOBS.iter().map(|j| j.to_string()).collect(),
            max_attempts: 2,
            topic_nodes: 0,
            quorum: None,
        };
        let mut facts = vec![Fact::sign(&key(1), Hlc { wall_ms: 1, counter: 0 }, submit)];
        let mut claims: Vec<(Hash, u8)> = Vec::new();
        for (i, (kind, node, job, t, pick)) in steps.into_iter().enumerate() {
            let hlc = Hlc { wall_ms: t, counter: i as u32 };
            let earlier = claims.get(pick % claims.len().max(1)).copied();
            let (signer, body) = match (kind, earlier) {
                (0 | 1, _) | (2..=4, None) => {
                    (node, Body::Claim { dag: dag(), job: JOBS[job].into(), lease_until_ms: t + 30 })
                }
                (2, Some((claim, owner))) => (owner, Body::Renew { claim, lease_until_ms: t + 60 }),
                (3, Some((claim, owner))) => (
                    owner,
                    Body::Done { claim, record: Hash::of(&[owner, job as u8]), bytes: t, action: None, result: None },
                ),
                (4, Some((claim, owner))) => (owner, Body::Fail { claim, reason: format!("attempt {i}") }),
                // Any node may report a completion's outputs lost; only the claimant releases.
                (6, _) => (
                    node,
                    Body::Lost { dag: dag(), job: JOBS[job].into(), record: Hash::of(&[pick as u8 % 4, job as u8]) },
                ),
                (7, Some((claim, owner))) => (owner, Body::Release { claim }),
                // The node is alive: its claims on the DAG hold 50 ms past its clock.
                (8 | 9, _) => (node, Body::Alive { dag: dag(), lease_until_ms: t + 50, since: Hlc::default() }),
                _ => (node, Body::Cancel { dag: dag() }),
            };
            let fact = Fact::sign(&key(signer + 2), hlc, body);
            if matches!(fact.body, Body::Claim { .. }) {
                claims.push((fact.id(), signer));
            }
            facts.push(fact);
        }
        facts
    })
}

/// A history that also holds what the simple one never makes: competing submits of the same DAG
/// hash (other job lists, other attempt budgets), renewals, completions and failures signed by
/// someone other than the claimant, and facts about claims that never arrive.
fn rich_history() -> impl Strategy<Value = Vec<Fact>> {
    prop::collection::vec((0u8..15, 0u8..4, 0usize..4, 0u64..100, 0usize..64), 1..60).prop_map(|steps| {
        let jobs_of = |mask: usize| -> Vec<String> {
            let list: Vec<String> =
                JOBS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, j)| j.to_string()).collect();
            if list.is_empty() { vec!["a".into()] } else { list }
        };
        let mut facts = Vec::new();
        let mut claims: Vec<(Hash, u8)> = Vec::new();
        for (i, (kind, node, job, t, pick)) in steps.into_iter().enumerate() {
            let hlc = Hlc { wall_ms: t, counter: (i % 3) as u32 };
            let earlier = claims.get(pick % claims.len().max(1)).copied();
            let job_name = ["a", "b", "c", "z"][job].to_string();
            let (signer, body) = match (kind, earlier) {
                (0, _) => (
                    node,
                    Body::Submit {
                        dag: dag(),
                        jobs: jobs_of(pick),
                        max_attempts: 1 + (pick % 3) as u32,
                        topic_nodes: 0,
                        // Some submits ask 2 or 3 nodes to agree, one trusting signer 0's key.
                        quorum: (pick % 4 != 0).then(|| Quorum {
                            agree: 1 + (pick % 3) as u32,
                            trusted: if pick % 5 == 0 { vec![node_id(2)] } else { vec![] },
                        }),
                    },
                ),
                (1 | 2, _) | (3..=5, None) => (node, Body::Claim { dag: dag(), job: job_name, lease_until_ms: t + 30 }),
                (3, Some((claim, owner))) => (owner, Body::Renew { claim, lease_until_ms: t + 60 }),
                (4, Some((claim, owner))) => {
                    {
                        // Results: two that agree, one that does not, or none said.
                        let result = [Some(Hash::of(b"r")), Some(Hash::of(b"r")), Some(Hash::of(b"x")), None][pick % 4];
                        (
                            owner,
                            Body::Done {
                                claim,
                                record: Hash::of(&[owner, pick as u8 % 3]),
                                bytes: t,
                                action: None,
                                result,
                            },
                        )
                    }
                }
                (5, Some((claim, owner))) => (owner, Body::Fail { claim, reason: format!("attempt {}", pick % 5) }),
                // Someone else than the claimant renews, finishes or fails it: ignored by the fold.
                (6, Some((claim, owner))) => (
                    (owner + 1) % 4,
                    Body::Done { claim, record: Hash::of(b"forged"), bytes: 1, action: None, result: None },
                ),
                (10, Some((claim, owner))) => (owner, Body::Release { claim }),
                // A release by someone else than the claimant: ignored.
                (11, Some((claim, owner))) => ((owner + 1) % 4, Body::Release { claim }),
                (12, _) => (
                    node,
                    Body::Lost { dag: dag(), job: job_name, record: Hash::of(&[pick as u8 % 4, pick as u8 % 3]) },
                ),
                (7, Some((claim, owner))) => ((owner + 1) % 4, Body::Fail { claim, reason: "not mine".into() }),
                // A fact about a claim nobody holds.
                (6..=8, _) => (node, Body::Renew { claim: Hash::of(&[pick as u8]), lease_until_ms: t + 90 }),
                // Alive for this DAG (some reading a lease past what is believed), or another one.
                // Some from a later run of the node than some of its claims (`since`).
                (9 | 13, _) => {
                    let since = Hlc { wall_ms: (pick as u64 * 7) % 100, counter: 0 };
                    (node, Body::Alive { dag: dag(), lease_until_ms: t + 20 * (pick as u64 % 8), since })
                }
                (14, _) => (node, Body::Alive { dag: Hash::of(b"another"), lease_until_ms: t + 90, since: hlc }),
                _ => (node, Body::Cancel { dag: dag() }),
            };
            let fact = Fact::sign(&key(signer + 2), hlc, body);
            if matches!(fact.body, Body::Claim { .. }) {
                claims.push((fact.id(), signer));
            }
            facts.push(fact);
        }
        facts
    })
}

fn shuffle(facts: &mut [Fact], seed: u64) {
    let mut x = seed | 1;
    for i in (1..facts.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        facts.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn ledger_of(facts: &[Fact]) -> Ledger {
    let mut l = Ledger::new();
    for f in facts {
        l.insert(f.clone()).expect("signed facts are accepted");
    }
    l
}

/// The lease of a claim as the facts say: its own, extended by its author's renewals and by
/// its author's latest `Alive` for the DAG (by clock, then id).
fn lease_of(facts: &[Fact], claim: &Fact) -> u64 {
    let id = claim.id();
    let (own, claim_dag) = match &claim.body {
        Body::Claim { lease_until_ms, dag, .. } => (*lease_until_ms, *dag),
        _ => unreachable!(),
    };
    let by_author = facts.iter().filter(|g| g.author == claim.author);
    let alive = by_author
        .clone()
        .filter_map(|g| match &g.body {
            Body::Alive { dag, lease_until_ms, since } if *dag == claim_dag => {
                Some(((g.hlc, g.id()), *lease_until_ms, *since))
            }
            _ => None,
        })
        .max()
        .filter(|(_, _, since)| claim.hlc >= *since)
        .map_or(0, |(_, lease, _)| lease);
    by_author
        .filter_map(|g| match &g.body {
            Body::Renew { claim, lease_until_ms } if *claim == id => Some(*lease_until_ms),
            _ => None,
        })
        .fold(own.max(alive), u64::max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_commutative_associative_and_idempotent(a in history(), b in history(), c in history()) {
        let (la, lb, lc) = (ledger_of(&a), ledger_of(&b), ledger_of(&c));
        let mut ab = la.clone();
        ab.merge(&lb);
        let mut ba = lb.clone();
        ba.merge(&la);
        prop_assert_eq!(&ab, &ba);
        prop_assert_eq!(ab.digest(), ba.digest());
        let mut ab_c = ab.clone();
        ab_c.merge(&lc);
        let mut bc = lb.clone();
        bc.merge(&lc);
        let mut a_bc = la.clone();
        a_bc.merge(&bc);
        prop_assert_eq!(&ab_c, &a_bc);
        let mut aa = la.clone();
        let (added, refused) = aa.merge(&la);
        prop_assert_eq!((added, refused.len()), (0, 0));
        prop_assert_eq!(&aa, &la);
    }

    #[test]
    fn any_delivery_order_gives_the_same_state(facts in history(), seed in any::<u64>(), now in 0u64..200) {
        let mut shuffled = facts.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(ledger_of(&facts).state(now), ledger_of(&shuffled).state(now));
    }

    #[test]
    fn the_incremental_view_equals_the_full_fold_after_every_fact(
        simple in history(),
        rich in rich_history(),
        seed in any::<u64>(),
        nows in prop::collection::vec(0u64..200, 3),
    ) {
        for facts in [simple, rich] {
            let mut shuffled = facts.clone();
            shuffle(&mut shuffled, seed);
            let mut l = Ledger::new();
            for (i, f) in shuffled.iter().enumerate() {
                // A history may hold the same fact twice (same author, clock and body), and an
                // `Alive` older than the one held is not kept.
                let held_before = l.get(&f.id()).is_some();
                let touched = l.insert_verified(f.clone().verified().unwrap());
                let held = l.get(&f.id()).is_some();
                prop_assert_eq!(touched == Touched::Duplicate, held_before || !held);
                let alive = matches!(f.body, Body::Alive { .. });
                prop_assert!(held || alive, "only an older Alive is not kept");
                prop_assert_eq!(l.insert_verified(f.clone().verified().unwrap()), Touched::Duplicate);
                let now = nows[i % nows.len()];
                let full = l.fold(now);
                prop_assert_eq!(&l.state(now), &full, "after {} of {} facts, at {} ms", i + 1, shuffled.len(), now);
                for (hash, d) in &full.dags {
                    for (job, js) in &d.jobs {
                        let incremental = l.job_state(hash, job, now);
                        prop_assert_eq!(incremental.as_ref(), Some(js));
                    }
                    let incremental = l.dag_state(hash, now);
                    prop_assert_eq!(incremental.as_ref(), Some(d));
                }
                prop_assert_eq!(l.job_state(&dag(), "z", now).is_some(), full.dags.get(&dag()).is_some_and(|d| d.jobs.contains_key("z")));
            }
            for now in &nows {
                prop_assert_eq!(l.state(*now), ledger_of(&facts).fold(*now));
            }
            // A DAG's facts, as anti-entropy of its topic compares them: those naming it, and
            // those about a claim of it that is held.
            for d in [dag(), Hash::of(b"another")] {
                let names = |f: &Fact| match &f.body {
                    Body::Submit { dag, .. } | Body::Cancel { dag } | Body::Claim { dag, .. } | Body::Lost { dag, .. } | Body::Alive { dag, .. } => *dag == d,
                    Body::Renew { claim, .. } | Body::Done { claim, .. } | Body::Fail { claim, .. } | Body::Release { claim } => {
                        l.get(claim).is_some_and(|c| matches!(&c.body, Body::Claim { dag, .. } if *dag == d))
                    }
                    Body::Quarantine { .. } => false,
                };
                let want: std::collections::BTreeSet<Hash> =
                    l.verified_facts().filter(|f| names(f.fact())).map(|f| f.id()).collect();
                let got: std::collections::BTreeSet<Hash> = l.dag_ids(&d).copied().collect();
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(l.dag_digest(&d), ledger_of(&facts).dag_digest(&d));
            }
        }
    }

    #[test]
    fn a_ledger_keeps_one_alive_per_author_and_dag_whatever_the_order(facts in rich_history(), seed in any::<u64>()) {
        let mut shuffled = facts.clone();
        shuffle(&mut shuffled, seed);
        let (mut a, mut b) = (ledger_of(&facts), ledger_of(&shuffled));
        prop_assert_eq!(&a, &b);
        let mut keys: Vec<(Hash, [u8; 32])> = a
            .verified_facts()
            .filter_map(|f| match &f.fact().body {
                Body::Alive { dag, .. } => Some((*dag, f.fact().author)),
                _ => None,
            })
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        prop_assert_eq!(keys.len(), n, "one Alive per author and DAG");
        // What was replaced is reported once, and is not held.
        let replaced: Vec<Hash> = a.take_replaced();
        prop_assert!(replaced.iter().all(|id| a.get(id).is_none()));
        prop_assert!(a.take_replaced().is_empty());
        // Anti-entropy between the two leaves them equal (an older Alive pushed back is refused).
        let (added, refused) = a.merge(&b);
        prop_assert_eq!((added, refused.len()), (0, 0));
        b.merge(&a);
        prop_assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn a_claimed_job_is_held_by_its_smallest_live_claim(facts in history(), now in 0u64..200) {
        let state = ledger_of(&facts).state(now);
        for (job, js) in &state.dags[&dag()].jobs {
            let JobState::Claimed { claim, .. } = js else { continue };
            let live: Vec<&Fact> = facts
                .iter()
                .filter(|f| matches!(&f.body, Body::Claim { job: j, .. } if j == job))
                .filter(|f| {
                    let id = f.id();
                    let ended = facts.iter().any(|g| {
                        g.author == f.author
                            && matches!(&g.body, Body::Done { claim, .. } | Body::Fail { claim, .. } | Body::Release { claim } if *claim == id)
                    });
                    lease_of(&facts, f) > now && !ended
                })
                .collect();
            let winner = live.iter().min_by_key(|f| (f.hlc, f.author));
            prop_assert!(winner.is_some(), "job {} claimed without a live claim", job);
            prop_assert_eq!(*claim, winner.unwrap().id());
        }
    }
}

#[test]
fn forged_altered_and_unsigned_facts_are_refused() {
    let good = Fact::sign(&key(1), Hlc::default(), Body::Cancel { dag: dag() });
    let mut ledger = Ledger::new();
    assert_eq!(ledger.insert(good.clone()), Ok(true));
    assert_eq!(ledger.insert(good.clone()), Ok(false));

    let mut altered = good.clone();
    altered.body = Body::Cancel { dag: Hash::of(b"another dag") };
    assert_eq!(ledger.insert(altered), Err(LedgerError::BadSignature));

    let mut someone_else = good.clone();
    someone_else.author = key(2).verifying_key().to_bytes();
    assert_eq!(ledger.insert(someone_else), Err(LedgerError::BadSignature));

    let mut unsigned = good.clone();
    unsigned.signature = [0; 64];
    assert_eq!(ledger.insert(unsigned), Err(LedgerError::BadSignature));

    let empty = Fact::sign(
        &key(1),
        Hlc::default(),
        Body::Submit { dag: dag(), jobs: vec![], max_attempts: 1, topic_nodes: 0, quorum: None },
    );
    assert!(matches!(ledger.insert(empty), Err(LedgerError::Malformed(_))));
    assert_eq!(ledger.len(), 1, "refused facts leave the ledger as it was");
}

#[test]
fn leases_expire_renewals_extend_and_only_the_claimant_may_renew_or_finish() {
    let mut l = Ledger::new();
    let submit = Body::Submit { dag: dag(), jobs: vec!["a".into()], max_attempts: 3, topic_nodes: 0, quorum: None };
    l.insert(Fact::sign(&key(1), Hlc { wall_ms: 1, counter: 0 }, submit)).unwrap();
    let claim = Body::Claim { dag: dag(), job: "a".into(), lease_until_ms: 100 };
    let claim = Fact::sign(&key(2), Hlc { wall_ms: 10, counter: 0 }, claim);
    let claim_id = claim.id();
    l.insert(claim).unwrap();
    let job = |l: &Ledger, now| l.state(now).dags[&dag()].jobs["a"].clone();
    assert!(matches!(job(&l, 50), JobState::Claimed { claim, .. } if claim == claim_id));
    assert!(matches!(job(&l, 100), JobState::Open { .. }), "the lease ended");
    let renew = |lease| Body::Renew { claim: claim_id, lease_until_ms: lease };
    l.insert(Fact::sign(&key(3), Hlc { wall_ms: 90, counter: 0 }, renew(500))).unwrap();
    assert!(matches!(job(&l, 150), JobState::Open { .. }), "a renewal by another node counts for nothing");
    l.insert(Fact::sign(&key(2), Hlc { wall_ms: 90, counter: 1 }, renew(200))).unwrap();
    assert!(matches!(job(&l, 150), JobState::Claimed { lease_until_ms: 200, .. }));
    let done = |r: &[u8]| Body::Done { claim: claim_id, record: Hash::of(r), bytes: 0, action: None, result: None };
    l.insert(Fact::sign(&key(3), Hlc { wall_ms: 95, counter: 0 }, done(b"x"))).unwrap();
    assert!(matches!(job(&l, 150), JobState::Claimed { .. }), "a Done by another node counts for nothing");
    l.insert(Fact::sign(&key(2), Hlc { wall_ms: 95, counter: 1 }, done(b"r"))).unwrap();
    assert!(matches!(job(&l, 1000), JobState::Done { record, .. } if record == Hash::of(b"r")));
}

#[test]
fn a_job_failed_max_attempts_times_has_failed_with_every_reason() {
    let mut l = Ledger::new();
    let submit = Body::Submit { dag: dag(), jobs: vec!["a".into()], max_attempts: 2, topic_nodes: 0, quorum: None };
    l.insert(Fact::sign(&key(1), Hlc::default(), submit)).unwrap();
    for (i, node) in [2u8, 3].into_iter().enumerate() {
        let claim = Body::Claim { dag: dag(), job: "a".into(), lease_until_ms: 1000 };
        let claim = Fact::sign(&key(node), Hlc { wall_ms: 10 + i as u64, counter: 0 }, claim);
        let id = claim.id();
        l.insert(claim).unwrap();
        let state = l.state(20).dags[&dag()].jobs["a"].clone();
        assert!(matches!(state, JobState::Claimed { .. }), "attempt {i} holds the job: {state:?}");
        let fail = Body::Fail { claim: id, reason: format!("oom on node {node}") };
        l.insert(Fact::sign(&key(node), Hlc { wall_ms: 30, counter: i as u32 }, fail)).unwrap();
    }
    match &l.state(40).dags[&dag()].jobs["a"] {
        JobState::Failed { failures } => assert_eq!(failures, &["oom on node 2", "oom on node 3"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hybrid_logical_clocks_move_forward() {
    let a = Hlc { wall_ms: 100, counter: 3 };
    assert_eq!(a.tick(50), Hlc { wall_ms: 100, counter: 4 }, "a clock behind does not move it back");
    assert_eq!(a.tick(200), Hlc { wall_ms: 200, counter: 0 });
    let remote = Hlc { wall_ms: 300, counter: 7 };
    assert_eq!(a.observe(remote, 150, 1_000), Hlc { wall_ms: 300, counter: 8 });
    assert!(a.observe(remote, 150, 1_000) > remote && a.observe(remote, 150, 1_000) > a);
}

#[test]
fn a_fact_round_trips_through_cbor_with_its_id_and_signature() {
    let f = Fact::sign(&key(4), Hlc { wall_ms: 5, counter: 1 }, Body::Fail { claim: dag(), reason: "why".into() });
    let mut bytes = Vec::new();
    ciborium::into_writer(&f, &mut bytes).unwrap();
    let back: Fact = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(back, f);
    assert_eq!(back.id(), f.id());
    back.verify().unwrap();
}

#[test]
fn a_lost_completion_reopens_its_job_and_a_release_spends_no_attempt() {
    let (k1, k2) = (key(1), key(2));
    let submit = Fact::sign(
        &k1,
        Hlc::default(),
        Body::Submit { dag: dag(), jobs: vec!["a".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
    );
    let claim = Fact::sign(
        &k1,
        Hlc { wall_ms: 1, counter: 0 },
        Body::Claim { dag: dag(), job: "a".into(), lease_until_ms: 1000 },
    );
    let record = Hash::of(b"r1");
    let done = Fact::sign(
        &k1,
        Hlc { wall_ms: 2, counter: 0 },
        Body::Done { claim: claim.id(), record, bytes: 7, action: None, result: None },
    );
    let mut l = Ledger::new();
    for f in [submit, claim.clone(), done] {
        l.insert(f).unwrap();
    }
    assert!(matches!(l.job_state(&dag(), "a", 3), Some(JobState::Done { bytes: 7, .. })));
    // Another node reports the outputs lost: the job is open, the finished claim does not hold it.
    l.insert(Fact::sign(&k2, Hlc { wall_ms: 3, counter: 0 }, Body::Lost { dag: dag(), job: "a".into(), record }))
        .unwrap();
    assert_eq!(l.job_state(&dag(), "a", 4), Some(JobState::Open { failures: vec![] }));
    // A second claim, released by its author: open again, and no attempt spent (max_attempts 1).
    let again = Fact::sign(
        &k2,
        Hlc { wall_ms: 4, counter: 0 },
        Body::Claim { dag: dag(), job: "a".into(), lease_until_ms: 1000 },
    );
    l.insert(again.clone()).unwrap();
    assert!(matches!(l.job_state(&dag(), "a", 5), Some(JobState::Claimed { .. })));
    // A release by someone else than the claimant changes nothing.
    l.insert(Fact::sign(&k1, Hlc { wall_ms: 5, counter: 0 }, Body::Release { claim: again.id() })).unwrap();
    assert!(matches!(l.job_state(&dag(), "a", 6), Some(JobState::Claimed { .. })));
    l.insert(Fact::sign(&k2, Hlc { wall_ms: 6, counter: 0 }, Body::Release { claim: again.id() })).unwrap();
    assert_eq!(l.job_state(&dag(), "a", 7), Some(JobState::Open { failures: vec![] }));
    // Run again with a new record: done, and the fold agrees with the view.
    let third = Fact::sign(
        &k2,
        Hlc { wall_ms: 7, counter: 0 },
        Body::Claim { dag: dag(), job: "a".into(), lease_until_ms: 1000 },
    );
    let r2 = Hash::of(b"r2");
    l.insert(third.clone()).unwrap();
    l.insert(Fact::sign(
        &k2,
        Hlc { wall_ms: 8, counter: 0 },
        Body::Done { claim: third.id(), record: r2, bytes: 7, action: None, result: None },
    ))
    .unwrap();
    assert!(matches!(l.job_state(&dag(), "a", 9), Some(JobState::Done { record, .. }) if record == r2));
    assert_eq!(l.state(9), l.fold(9));
}

#[test]
fn a_jobs_history_is_its_facts_in_clock_order_whatever_the_arrival() {
    let hlc = |t| Hlc { wall_ms: t, counter: 0 };
    let submit = Fact::sign(
        &key(1),
        hlc(1),
        Body::Submit {
            dag: dag(),
            jobs: JOBS.iter().map(|j| j.to_string()).collect(),
            max_attempts: 2,
            topic_nodes: 0,
            quorum: None,
        },
    );
    let claim_a = Fact::sign(&key(2), hlc(2), Body::Claim { dag: dag(), job: "a".into(), lease_until_ms: 100 });
    let renew = Fact::sign(&key(2), hlc(3), Body::Renew { claim: claim_a.id(), lease_until_ms: 200 });
    let fail = Fact::sign(&key(2), hlc(4), Body::Fail { claim: claim_a.id(), reason: "x".into() });
    let claim_b = Fact::sign(&key(3), hlc(5), Body::Claim { dag: dag(), job: "b".into(), lease_until_ms: 100 });
    let claim_a2 = Fact::sign(&key(3), hlc(6), Body::Claim { dag: dag(), job: "a".into(), lease_until_ms: 100 });
    let done = Fact::sign(
        &key(3),
        hlc(7),
        Body::Done { claim: claim_a2.id(), record: Hash::of(b"r"), bytes: 1, action: None, result: None },
    );
    let other_dag =
        Fact::sign(&key(3), hlc(8), Body::Claim { dag: Hash::of(b"other"), job: "a".into(), lease_until_ms: 1 });
    let mut l = Ledger::new();
    // Results before their claims: the history does not depend on arrival.
    for f in [done, fail, renew, claim_b, other_dag, claim_a2, claim_a, submit] {
        l.insert(f).unwrap();
    }
    let kinds: Vec<(String, Vec<&str>)> =
        l.history(&dag()).into_iter().map(|(j, fs)| (j, fs.iter().map(|f| f.body.kind()).collect())).collect();
    assert_eq!(
        kinds,
        vec![("a".to_string(), vec!["claim", "renew", "fail", "claim", "done"]), ("b".to_string(), vec!["claim"])]
    );
}

/// The mesh-wide action cache's index: completions of an action in any DAG, by their records;
/// the maker of a record is its earliest completion's author; a record reported lost answers no
/// lookup; a completion that names no action is in no index.
#[test]
fn completions_are_found_by_action_key_across_dags_until_lost() {
    let (k1, k2) = (key(1), key(2));
    let action = Hash::of(b"action");
    let at = |ms| Hlc { wall_ms: ms, counter: 0 };
    let mut l = Ledger::new();
    let mut done_in = |dag: Hash, k: &SigningKey, ms: u64, record: Hash, action: Option<Hash>| {
        let submit = Fact::sign(
            k,
            at(ms),
            Body::Submit { dag, jobs: vec!["a".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
        );
        let claim = Fact::sign(k, at(ms + 1), Body::Claim { dag, job: "a".into(), lease_until_ms: 1000 });
        let done = Fact::sign(k, at(ms + 2), Body::Done { claim: claim.id(), record, bytes: 1, action, result: None });
        for f in [submit, claim, done] {
            l.insert(f).unwrap();
        }
    };
    let (r1, r2) = (Hash::of(b"r1"), Hash::of(b"r2"));
    let (d1, d2, d3) = (Hash::of(b"d1"), Hash::of(b"d2"), Hash::of(b"d3"));
    done_in(d1, &k1, 10, r1, Some(action));
    // k2 took r1 from the cache in another DAG: still made by k1.
    done_in(d2, &k2, 20, r1, Some(action));
    done_in(d3, &k2, 30, r2, None);
    let (n1, n2) = (k1.verifying_key().to_bytes(), k2.verifying_key().to_bytes());
    assert_eq!(l.cached(&action), vec![(r1, n1)]);
    assert_eq!((l.made_by(&r1), l.made_by(&r2)), (Some(n1), Some(n2)));
    assert!(l.cached(&Hash::of(b"another action")).is_empty());
    l.insert(Fact::sign(&k2, at(40), Body::Lost { dag: d1, job: "a".into(), record: r1 })).unwrap();
    assert!(l.cached(&action).is_empty(), "a lost record answers no lookup");
}
