//! The scheduler core's unit tests: a few cores gossiping by hand, no network.

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
        vm_accel: None,
        speed: crate::capabilities::SPEED_REFERENCE,
        emulated: Vec::new(),
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
    nodes[0].handle_job_finished(
        5,
        claim,
        Finished::Done { record: Hash::of(b"record a"), bytes: 3, action: None, result: None },
    );
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
fn a_job_only_one_node_can_run_is_claimed_at_once_once_peers_capabilities_are_known() {
    // Many peers that lack the label the job needs: without their capabilities the one node
    // that has it waits behind those that rank first; with them it claims at once.
    let text = r#"{"version": 1, "jobs": [
      {"id": "only-b", "image": "b:1", "command": ["x"], "requirements": {"labels": {"name": "b"}}}]}"#;
    let h = Hash::of(text.as_bytes());
    let dag = parse_dag("d.json", text).unwrap();
    let others: Vec<NodeId> = (10..30u8).map(|i| SigningKey::from_bytes(&[i; 32]).verifying_key().to_bytes()).collect();
    let mut b_caps = caps(1);
    b_caps.labels.insert("name".into(), "b".into());
    let start_at = |with_caps: bool| {
        let mut b = NodeCore::new(SigningKey::from_bytes(&[2; 32]), b_caps.clone());
        b.handle_peers(0, others.clone());
        if with_caps {
            b.handle_peer_caps(0, others.iter().map(|n| (*n, caps(1))));
        }
        b.submit(0, h, dag.clone(), 1);
        let mut now = 0;
        loop {
            if starts(&mut b).iter().any(|a| matches!(a, Action::Start { .. })) {
                return now;
            }
            now = b.poll_timeout(now).expect("a wake-up while the job waits");
            b.handle_tick(now);
        }
    };
    let without = start_at(false);
    assert!(without > 0, "20 peers rank before b for some of them, so b waited: {without} ms");
    assert_eq!(start_at(true), 0, "no capable peer ranks before b");
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
fn one_alive_per_dag_keeps_every_claim_and_capacity_is_respected() {
    let text = r#"{"version": 1, "jobs": [
      {"id": "x", "image": "b:1", "command": ["x"], "requirements": {"cores": 2}},
      {"id": "y", "image": "b:1", "command": ["x"], "requirements": {"cores": 2}},
      {"id": "z", "image": "b:1", "command": ["x"], "requirements": {"cores": 2}},
      {"id": "big", "image": "b:1", "command": ["x"], "requirements": {"cores": 8}}]}"#;
    let h = Hash::of(text.as_bytes());
    let mut n = NodeCore::new(SigningKey::from_bytes(&[3; 32]), caps(4));
    n.submit(0, h, parse_dag("d.json", text).unwrap(), 1);
    let s = starts(&mut n);
    assert_eq!(s.len(), 2, "4 cores hold two 2-core jobs; the 8-core job never fits: {s:?}");
    std::iter::from_fn(|| n.poll_fact()).for_each(drop);
    let alive_at = n.poll_timeout(0).unwrap();
    assert_eq!(alive_at, LEASE_MS / 2);
    n.handle_tick(alive_at);
    let facts: Vec<Fact> = std::iter::from_fn(|| n.poll_fact()).collect();
    assert!(
        matches!(&facts[..], [Fact { body: Body::Alive { dag, lease_until_ms, .. }, .. }] if *dag == h && *lease_until_ms == alive_at + LEASE_MS),
        "one Alive for the two claims, no renewal: {facts:?}"
    );
    let claimed: Vec<u64> = n.ledger().state(LEASE_MS + 1).dags[&h]
        .jobs
        .values()
        .filter_map(|j| if let JobState::Claimed { lease_until_ms, .. } = j { Some(*lease_until_ms) } else { None })
        .collect();
    assert_eq!(claimed, vec![alive_at + LEASE_MS; 2], "both claims live past their own lease");
    // The next Alive replaces this one in the ledger.
    n.handle_tick(alive_at + LEASE_MS / 2);
    let alives = n.ledger().verified_facts().filter(|f| matches!(f.fact().body, Body::Alive { .. })).count();
    assert_eq!(alives, 1);
}

#[test]
fn a_silent_or_cut_off_node_s_claims_expire_and_are_taken_over() {
    let (h, dag) = chain();
    let mut nodes = vec![
        NodeCore::new(SigningKey::from_bytes(&[1; 32]), caps(1)),
        NodeCore::new(SigningKey::from_bytes(&[2; 32]), caps(1)),
    ];
    for n in nodes.iter_mut() {
        n.handle_peers(0, [id_of(1), id_of(2)]);
    }
    nodes[0].submit(0, h, dag.clone(), 2);
    nodes[1].handle_dag(0, h, dag);
    gossip(&mut nodes, 0);
    let runner = (0..2).find(|&i| !net_running(&starts(&mut nodes[i])).is_empty()).expect("one runs a");
    let other = 1 - runner;
    // The runner's Alives reach the other node for a while: a stays claimed past the claim's lease.
    for t in [LEASE_MS / 2, LEASE_MS] {
        nodes[runner].handle_tick(t);
        nodes[other].handle_tick(t);
        gossip(&mut nodes, t);
    }
    let at = LEASE_MS + LEASE_MS / 4;
    nodes[other].handle_tick(at);
    assert!(starts(&mut nodes[other]).is_empty(), "a is held by the runner's Alive");
    assert!(matches!(nodes[other].ledger().job_state(&h, "a", at), Some(JobState::Claimed { .. })));
    // Then the runner is cut off: it goes on saying it is alive, but nothing reaches the other
    // node, whose view lets the claim expire when the last Alive it heard ends.
    nodes[runner].handle_tick(LEASE_MS * 3 / 2);
    std::iter::from_fn(|| nodes[runner].poll_fact()).for_each(drop);
    let expiry = nodes[other].poll_timeout(at).unwrap();
    assert_eq!(expiry, LEASE_MS * 2, "woken when the last Alive's lease ends");
    nodes[other].handle_tick(expiry);
    // It claims at once or, ranking second, one stagger later.
    let mut started = starts(&mut nodes[other]);
    nodes[other].handle_tick(expiry + CLAIM_STAGGER_MS);
    started.extend(starts(&mut nodes[other]));
    assert!(matches!(&started[..], [Action::Start { job, .. }] if job == "a"), "{started:?}");
}

#[test]
fn a_restarted_node_gives_up_the_claims_it_no_longer_runs() {
    let (h, dag) = chain();
    let key = SigningKey::from_bytes(&[1; 32]);
    let mut before = NodeCore::new(key.clone(), caps(1));
    before.submit(0, h, dag.clone(), 2);
    assert_eq!(net_running(&starts(&mut before)), vec!["a".to_string()]);
    before.handle_tick(LEASE_MS / 2);
    // Killed; restarted with the facts it had stored and the DAG.
    let stored: Vec<VerifiedFact> = before.ledger().verified_facts().collect();
    let mut after = NodeCore::new(key, caps(1));
    after.handle_dag(1_000, h, dag);
    for f in stored {
        after.restore_fact(1_000, f);
    }
    let facts: Vec<Fact> = std::iter::from_fn(|| after.poll_fact()).collect();
    assert!(facts.iter().any(|f| matches!(f.body, Body::Release { .. })), "{facts:?}");
    // The job is open again, and this node (the only one) claims it anew.
    assert!(matches!(&starts(&mut after)[..], [Action::Start { job, .. }] if job == "a"));
    assert!(facts.iter().any(|f| matches!(f.body, Body::Claim { .. })), "{facts:?}");
}

fn id_of(seed: u8) -> NodeId {
    SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes()
}

#[test]
fn a_job_whose_input_is_lost_runs_its_upstream_again_and_the_release_costs_no_attempt() {
    let (h, dag) = chain();
    let mut nodes = vec![
        NodeCore::new(SigningKey::from_bytes(&[1; 32]), caps(1)),
        NodeCore::new(SigningKey::from_bytes(&[2; 32]), caps(1)),
    ];
    nodes[0].submit(0, h, dag.clone(), 1);
    nodes[1].handle_dag(0, h, dag);
    let Some(Action::Start { claim, .. }) = starts(&mut nodes[0]).pop() else { panic!("a starts") };
    gossip(&mut nodes, 1);
    let lost_record = Hash::of(b"record a");
    nodes[0].handle_job_finished(
        2,
        claim,
        Finished::Done { record: lost_record, bytes: 10, action: None, result: None },
    );
    gossip(&mut nodes, 3);
    // Whoever runs b finds a's outputs gone.
    let (runner, b_claim) = (0..2)
        .find_map(|i| {
            let acts = starts(&mut nodes[i]);
            net_running(&acts).contains(&"b".to_string()).then(|| {
                let claim = acts.iter().rev().find_map(|a| match a {
                    Action::Start { claim, job, .. } if job == "b" => Some(*claim),
                    _ => None,
                });
                (i, claim.unwrap())
            })
        })
        .expect("someone runs b");
    gossip(&mut nodes, 4);
    nodes[runner].handle_job_finished(5, b_claim, Finished::Lost { job: "a".into(), record: lost_record });
    gossip(&mut nodes, 6);
    let state = nodes[0].ledger().state(6);
    assert_eq!(state, nodes[1].ledger().state(6));
    let jobs = &state.dags[&h].jobs;
    assert!(matches!(&jobs["a"], JobState::Claimed { .. } | JobState::Open { .. }), "a runs again: {:?}", jobs["a"]);
    assert_eq!(jobs["b"], JobState::Open { failures: vec![] }, "b waits for a, no attempt spent");
    // a is claimed again, and once done with a new record, b runs.
    let again: Vec<(usize, Hash)> = (0..2)
        .flat_map(|i| {
            starts(&mut nodes[i])
                .into_iter()
                .filter_map(move |a| match a {
                    Action::Start { claim, job, .. } if job == "a" => Some((i, claim)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!again.is_empty(), "a is claimed again");
    let (i, c) = again[0];
    nodes[i].handle_job_finished(
        7,
        c,
        Finished::Done { record: Hash::of(b"record a, again"), bytes: 10, action: None, result: None },
    );
    gossip(&mut nodes, 8);
    let running_b: Vec<String> = (0..2).flat_map(|i| net_running(&starts(&mut nodes[i]))).collect();
    assert!(running_b.contains(&"b".to_string()), "b runs once a is done again: {running_b:?}");
}

/// A DAG of `n` independent one-core jobs.
fn flat(n: usize) -> (Hash, Dag) {
    let jobs: Vec<String> = (0..n).map(|i| format!(r#"{{"id": "j{i}", "image": "b:1", "command": ["x"]}}"#)).collect();
    let text = format!(r#"{{"version": 1, "jobs": [{}]}}"#, jobs.join(","));
    (Hash::of(text.as_bytes()), parse_dag("d.json", &text).unwrap())
}

#[test]
fn faster_peers_rank_first_for_most_jobs() {
    let (h, dag) = flat(200);
    let peers: Vec<NodeId> = (10..20).map(id_of).collect();
    // A node 1.5 x as fast as its 10 peers, and one as fast as them, each ranking itself.
    let first_for = |speed: u32| {
        let mut n = NodeCore::new(SigningKey::from_bytes(&[4; 32]), Capabilities { speed, ..caps(1000) });
        n.handle_peers(0, peers.clone());
        n.handle_peer_caps(0, peers.iter().map(|p| (*p, caps(4))));
        n.submit(0, h, dag.clone(), 1);
        (0..200).filter(|&i| n.rank_for(&h, i, 0) == 0).count()
    };
    let (fast, equal) = (first_for(1500), first_for(1000));
    assert!(fast > 180, "weight 1.5^16 = 657 against 10 x 1: first for {fast}/200");
    assert!((5..45).contains(&equal), "one of 11 equals: first for about 18 of 200, got {equal}");
    // A peer that could not run the jobs does not count.
    let mut lone = NodeCore::new(SigningKey::from_bytes(&[4; 32]), caps(1000));
    lone.handle_peers(0, peers.clone());
    lone.handle_peer_caps(0, peers.iter().map(|p| (*p, Capabilities { speed: 9000, ..caps(0) })));
    lone.submit(0, h, dag.clone(), 1);
    assert!((0..200).all(|i| lone.rank_for(&h, i, 0) == 0));
}

#[test]
fn a_native_node_ranks_before_one_that_emulates_the_jobs_arch() {
    let jobs: Vec<String> = (0..200)
        .map(|i| {
            format!(r#"{{"id": "j{i}", "image": "b:1", "command": ["x"], "requirements": {{"arch": "aarch64"}}}}"#)
        })
        .collect();
    let text = format!(r#"{{"version": 1, "jobs": [{}]}}"#, jobs.join(","));
    let (h, dag) = (Hash::of(text.as_bytes()), parse_dag("d.json", &text).unwrap());
    let emulating = Capabilities {
        emulated: vec![crate::capabilities::Emulated { arch: Arch::Aarch64, speed: 150 }],
        ..caps(1000)
    };
    let native = Capabilities { arch: Arch::Aarch64, ..caps(1000) };
    // An x86 node that emulates aarch64, among 3 native aarch64 peers of its own speed: it is
    // first for almost no job; with no native peer it is first for all of them.
    let peers: Vec<NodeId> = (10..13).map(id_of).collect();
    let mut n = NodeCore::new(SigningKey::from_bytes(&[4; 32]), emulating.clone());
    n.handle_peers(0, peers.clone());
    n.handle_peer_caps(0, peers.iter().map(|p| (*p, native.clone())));
    n.submit(0, h, dag.clone(), 1);
    let first = (0..200).filter(|&i| n.rank_for(&h, i, 0) == 0).count();
    assert!(first < 5, "native peers come first: the emulating node first for {first}/200");
    let mut alone = NodeCore::new(SigningKey::from_bytes(&[4; 32]), emulating);
    alone.handle_peers(0, peers.clone());
    alone.handle_peer_caps(0, peers.iter().map(|p| (*p, caps(1000))));
    alone.submit(0, h, dag, 1);
    assert!((0..200).all(|i| alone.rank_for(&h, i, 0) == 0), "x86 peers that do not emulate cannot run them");
}

#[test]
fn the_holder_of_big_inputs_ranks_first_and_of_small_ones_does_not() {
    let text = r#"{"version": 1, "jobs": [
      {"id": "a", "image": "b:1", "command": ["x"], "outputs": {"o": "stdout"}},
      {"id": "b", "image": "b:1", "command": ["x"], "stdin": "jobs:a/o"}]}"#;
    let h = Hash::of(text.as_bytes());
    let dag = parse_dag("d.json", text).unwrap();
    let holder = SigningKey::from_bytes(&[10; 32]);
    let fast = id_of(11);
    for (bytes, want) in [(64u64 << 20, 0), (4 << 10, 1)] {
        // This node made a's outputs; a 4x faster peer is free.
        let mut me = NodeCore::new(holder.clone(), caps(2));
        me.handle_peers(0, [fast]);
        me.handle_peer_caps(0, [(fast, Capabilities { speed: 4000, ..caps(2) })]);
        let submit = Fact::sign(
            &holder,
            Hlc::default(),
            Body::Submit { dag: h, jobs: vec!["a".into(), "b".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
        );
        let claim = Fact::sign(
            &holder,
            Hlc { wall_ms: 0, counter: 1 },
            Body::Claim { dag: h, job: "a".into(), lease_until_ms: 10_000 },
        );
        let done = Fact::sign(
            &holder,
            Hlc { wall_ms: 1, counter: 0 },
            Body::Done { claim: claim.id(), record: Hash::of(b"a"), bytes, action: None, result: None },
        );
        me.handle_dag(0, h, dag.clone());
        for f in [submit, claim, done] {
            me.handle_fact(1, f).unwrap();
        }
        assert_eq!(me.rank_for(&h, 1, 2), want, "b's input is {bytes} bytes, held here");
    }
}

const YEAR_MS: u64 = 365 * 86_400_000;
const SKEW: u64 = crate::settings::CLOCK_SKEW_MAX_MS;

/// A node whose clock reads a year ahead: its facts are refused by an honest node until the honest
/// clock reaches them, and it cannot drag the honest node's HLC along.
#[test]
fn facts_from_a_clock_far_ahead_are_refused_and_do_not_move_the_hlc() {
    let (h, dag) = chain();
    let now = 1_000_000;
    let liar = SigningKey::from_bytes(&[20; 32]);
    let mut honest = NodeCore::new(SigningKey::from_bytes(&[21; 32]), caps(0));
    let ahead = |wall_ms, body| Fact::sign(&liar, Hlc { wall_ms, counter: 0 }, body);
    let submit = |wall_ms| {
        ahead(
            wall_ms,
            Body::Submit { dag: h, jobs: vec!["a".into(), "b".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
        )
    };
    let err = honest.handle_fact(now, submit(now + YEAR_MS)).unwrap_err();
    assert_eq!(err, LedgerError::Ahead { ahead_ms: YEAR_MS, skew_max_ms: SKEW });
    assert!(!honest.handle_verified_fact(now, submit(now + YEAR_MS).verified().unwrap()));
    assert!(honest.ledger().is_empty(), "a refused fact is not held");
    // At the bound it is believed, and the HLC follows it that far and no further.
    honest.handle_fact(now, submit(now + SKEW)).unwrap();
    honest.handle_dag(now, h, dag);
    honest.cancel(now, h);
    let own = std::iter::from_fn(|| honest.poll_fact()).last().unwrap();
    assert_eq!(own.hlc.wall_ms, now + SKEW, "the cancel sorts after the submit it saw");
    // The same year-ahead fact later, once this node's clock has reached it: admitted.
    honest.handle_fact(now + YEAR_MS, submit(now + YEAR_MS)).unwrap();
    assert_eq!(honest.ledger().len(), 3);
}

#[test]
fn observe_never_moves_more_than_the_bound_ahead_of_local_time() {
    let now = 5_000;
    let far = Hlc { wall_ms: now + YEAR_MS, counter: 9 };
    let next = Hlc { wall_ms: now, counter: 0 }.observe(far, now, SKEW);
    assert_eq!(next, Hlc { wall_ms: now + SKEW, counter: 1 });
    // Within the bound a remote reading is taken whole (the usual HLC rule).
    let near = Hlc { wall_ms: now + 10, counter: 4 };
    assert_eq!(Hlc::default().observe(near, now, SKEW), Hlc { wall_ms: now + 10, counter: 5 });
}

/// A lease that says it ends next year holds its job for `lease_ms` past its fact's HLC only,
/// in the incremental view and the reference fold alike.
#[test]
fn a_lease_is_believed_for_lease_ms_past_its_fact_at_most() {
    let (h, dag) = chain();
    let lease_ms = CoreConfig::default().lease_ms;
    let grabber = SigningKey::from_bytes(&[22; 32]);
    let mut me = NodeCore::new(SigningKey::from_bytes(&[23; 32]), caps(1));
    me.handle_dag(0, h, dag);
    let submit = Fact::sign(
        &grabber,
        Hlc::default(),
        Body::Submit { dag: h, jobs: vec!["a".into(), "b".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
    );
    let claim = Fact::sign(
        &grabber,
        Hlc { wall_ms: 100, counter: 0 },
        Body::Claim { dag: h, job: "a".into(), lease_until_ms: 100 + YEAR_MS },
    );
    let renew = Fact::sign(
        &grabber,
        Hlc { wall_ms: 200, counter: 0 },
        Body::Renew { claim: claim.id(), lease_until_ms: 200 + YEAR_MS },
    );
    // The claim first: a submit alone would have this node claim the open job at once.
    for f in [claim.clone(), renew, submit] {
        me.handle_fact(100, f).unwrap();
    }
    let claimed = JobState::Claimed {
        claim: claim.id(),
        node: grabber.verifying_key().to_bytes(),
        lease_until_ms: 200 + lease_ms,
        failures: vec![],
    };
    assert_eq!(me.ledger().job_state(&h, "a", 150), Some(claimed.clone()));
    assert_eq!(me.ledger().fold(150).dags[&h].jobs["a"], claimed);
    assert!(starts(&mut me).is_empty(), "held by the grabber's lease");
    // Once the believed lease ends, the job is open and this node takes it.
    let after = 200 + lease_ms;
    assert!(matches!(me.ledger().fold(after).dags[&h].jobs["a"], JobState::Open { .. }));
    assert_eq!(me.ledger().state(after), me.ledger().fold(after));
    me.handle_tick(after);
    assert!(matches!(starts(&mut me)[..], [Action::Start { ref job, .. }] if job == "a"));
}

/// A node that does not know what time it is claims nothing until told it may.
#[test]
fn a_node_not_claiming_queues_jobs_and_claims_when_it_may() {
    let (h, dag) = chain();
    let mut me = NodeCore::new(SigningKey::from_bytes(&[24; 32]), caps(1));
    me.set_claiming(0, false);
    me.submit(0, h, dag, 1);
    assert!(starts(&mut me).is_empty());
    assert_eq!(me.poll_timeout(0), None, "no wake-up for a claim it may not make");
    assert_eq!(me.candidate_count(), 1);
    me.set_claiming(10, true);
    assert!(matches!(starts(&mut me)[..], [Action::Start { ref job, .. }] if job == "a"));
}

/// An `isolation: vm` job goes to a KVM node before a TCG node of like speed, and a TCG node
/// still takes it after its place's stagger: preferred, not unschedulable. Other jobs ignore the
/// accelerator.
#[test]
fn vm_jobs_prefer_kvm_nodes_and_stay_schedulable_on_tcg() {
    use crate::capabilities::VmAccel;
    let text = r#"{"version": 1, "jobs": [
      {"id": "vm", "image": "b:1", "command": ["x"], "requirements": {"isolation": "vm"}},
      {"id": "plain", "image": "b:1", "command": ["x"]}]}"#;
    let h = Hash::of(text.as_bytes());
    let dag = parse_dag("d.json", text).unwrap();
    let with = |accel| Capabilities { vm_accel: Some(accel), ..caps(1) };
    // Many points, so the hash alone would put the TCG node first about half the time.
    let (mut first_vm, mut first_plain) = (0, 0);
    for i in 0..40u8 {
        let me_key = SigningKey::from_bytes(&[100 + i; 32]);
        let kvm = id_of(200u8.wrapping_add(i));
        // No cores of its own: it ranks, and claims nothing.
        let mut me = NodeCore::new(me_key, Capabilities { vm_accel: Some(VmAccel::Tcg), ..caps(0) });
        me.handle_peers(0, [kvm]);
        me.handle_peer_caps(0, [(kvm, with(VmAccel::Kvm))]);
        me.submit(0, h, dag.clone(), 1);
        first_vm += u32::from(me.rank_for(&h, 0, 0) == 0);
        first_plain += u32::from(me.rank_for(&h, 1, 0) == 0);
    }
    assert_eq!(first_vm, 0, "the TCG node never ranks first for a vm job");
    assert!(first_plain > 5, "for other jobs it does, by hash: {first_plain} of 40");
    // Alone with its TCG, or with the KVM node busy, it still claims the vm job.
    let two_cores = Capabilities { vm_accel: Some(VmAccel::Tcg), ..caps(2) };
    let mut me = NodeCore::new(SigningKey::from_bytes(&[99; 32]), two_cores);
    me.handle_peers(0, [id_of(98)]);
    me.handle_peer_caps(0, [(id_of(98), with(VmAccel::Kvm))]);
    me.submit(0, h, dag, 1);
    let later = 10 * CLAIM_STAGGER_MS;
    me.handle_tick(later);
    let started = starts(&mut me);
    assert!(started.iter().any(|a| matches!(a, Action::Start { job, .. } if job == "vm")), "{started:?}");
}

/// A node restarted with its clock a year behind keeps what its own store held.
#[test]
fn stored_facts_are_restored_whatever_the_clock() {
    let (h, _) = chain();
    let author = SigningKey::from_bytes(&[30; 32]);
    let submit = Fact::sign(
        &author,
        Hlc { wall_ms: YEAR_MS, counter: 0 },
        Body::Submit { dag: h, jobs: vec!["a".into(), "b".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
    );
    let mut me = NodeCore::new(SigningKey::from_bytes(&[31; 32]), caps(0));
    assert!(me.handle_fact(0, submit.clone()).is_err(), "from a peer: refused");
    assert!(me.restore_fact(0, submit.clone().verified().unwrap()), "from its own store: restored");
    assert!(!me.restore_fact(0, submit.verified().unwrap()), "once");
}

#[test]
fn the_stagger_follows_how_long_claims_take_to_arrive() {
    let mut me = NodeCore::new(SigningKey::from_bytes(&[1; 32]), caps(1));
    assert_eq!((me.propagation_p99_ms(), me.claim_stagger_ms()), (0, CLAIM_STAGGER_MS));
    let peer = SigningKey::from_bytes(&[2; 32]);
    let claim_made_at = |i: u64, at: u64| {
        Fact::sign(
            &peer,
            Hlc { wall_ms: at, counter: 0 },
            Body::Claim { dag: Hash::of(b"d"), job: format!("j{i}"), lease_until_ms: at + 10_000 },
        )
    };
    // Fast gossip: 20 ms. The configured stagger is the larger.
    for i in 0..100 {
        me.handle_fact(1_000 + i, claim_made_at(i, 980 + i)).unwrap();
    }
    assert_eq!((me.propagation_p99_ms(), me.claim_stagger_ms()), (20, CLAIM_STAGGER_MS));
    // Slow gossip, 150 to 400 ms: the stagger is three times the p99.
    for i in 100..100 + PROPAGATION_WINDOW_CLAIMS as u64 {
        let delay = 150 + (i % 251);
        me.handle_fact(10_000 + i, claim_made_at(i, 10_000 + i - delay)).unwrap();
    }
    let p99 = me.propagation_p99_ms();
    assert!((390..=400).contains(&p99), "{p99}");
    assert_eq!(me.claim_stagger_ms(), STAGGER_PER_PROPAGATION_P99 * p99);
    // A claim repaired by anti-entropy a minute late, and a duplicate, measure nothing.
    me.handle_fact(100_000, claim_made_at(9_999, 40_000)).unwrap();
    me.handle_fact(100_000, claim_made_at(100, 10_000 + 100 - 250)).unwrap();
    assert_eq!(me.propagation_p99_ms(), p99);
    // A job that opens now waits the adapted stagger per place: a node ranking second claims
    // 3 × p99 after it saw the job open, not 200 ms.
    let (h, dag) = flat(40);
    let mut n = NodeCore::new(SigningKey::from_bytes(&[2; 32]), caps(64));
    n.handle_peers(0, [id_of(1)]);
    let other = SigningKey::from_bytes(&[3; 32]);
    for i in 0..PROPAGATION_WINDOW_CLAIMS as u32 {
        let f = Fact::sign(
            &other,
            Hlc { wall_ms: 0, counter: i },
            Body::Claim { dag: Hash::of(b"x"), job: format!("x{i}"), lease_until_ms: 1 },
        );
        n.handle_fact(1_000, f).unwrap();
    }
    assert_eq!(n.claim_stagger_ms(), 3_000);
    n.submit(1_000, h, dag, 1);
    let first = net_running(&starts(&mut n)).len();
    assert!(first > 0 && first < 40, "node 2 ranks first for some jobs only: {first}");
    assert_eq!(n.poll_timeout(1_000), Some(4_000), "the others after 3 s");
    n.handle_tick(3_999);
    assert!(starts(&mut n).is_empty());
    n.handle_tick(4_000);
    assert_eq!(net_running(&starts(&mut n)).len(), 40 - first);
}

#[test]
fn two_cores_with_the_same_peers_agree_on_a_dags_group_and_only_its_members_claim() {
    use crate::topics::{TopicMode, group_for, replacement};
    let (h, dag) = flat(24);
    let ids: Vec<NodeId> = (1..=6).map(id_of).collect();
    let c = caps(4);
    let known: Vec<(NodeId, &Capabilities)> = ids.iter().map(|n| (*n, &c)).collect();
    let mode = TopicMode::PerDag { group_nodes: 3, speed_exponent: 4.0 };
    // Each node computes the group from the peers it knows: the same peers, the same group.
    let mut shuffled = known.clone();
    shuffled.rotate_left(2);
    let group = group_for(mode, &h, &dag, &known);
    assert_eq!(group, group_for(mode, &h, &dag, &shuffled));
    assert_eq!(group.len(), 3);
    let mut nodes: Vec<NodeCore> = (1..=6).map(|i| NodeCore::new(SigningKey::from_bytes(&[i; 32]), caps(4))).collect();
    let submitter = nodes.iter().position(|n| !group.contains(&n.id())).expect("a non-member submits");
    for n in nodes.iter_mut() {
        n.handle_peers(0, ids.iter().copied());
        n.handle_dag_peers(0, h, group.iter().copied());
        n.handle_dag(0, h, dag.clone());
    }
    nodes[submitter].submit(0, h, dag.clone(), 1);
    gossip(&mut nodes, 0);
    let mut ran: BTreeMap<NodeId, usize> = BTreeMap::new();
    for t in (0..=10 * CLAIM_STAGGER_MS).step_by(CLAIM_STAGGER_MS as usize) {
        for n in nodes.iter_mut() {
            n.handle_tick(t);
            let count = net_running(&starts(n)).len();
            *ran.entry(n.id()).or_default() += count;
        }
        gossip(&mut nodes, t);
    }
    assert_eq!(ran.values().sum::<usize>(), 12, "the three members' 4 cores each: {ran:?}");
    assert!(ran.iter().all(|(n, k)| group.contains(n) || *k == 0), "non-members claim nothing: {ran:?}");
    assert!(!nodes[submitter].schedules(&h) && nodes[submitter].ledger().has_dag(&h));
    // A member dies: every node names the same replacement, which then claims.
    let gone = *group.iter().next().unwrap();
    let outside: Vec<(NodeId, &Capabilities)> = known.iter().filter(|(n, _)| !group.contains(n)).copied().collect();
    let next = replacement(mode, &h, &dag, &outside).expect("three are left outside");
    let mut regroup = group.clone();
    regroup.remove(&gone);
    regroup.insert(next);
    let alive: Vec<NodeId> = ids.iter().filter(|n| **n != gone).copied().collect();
    assert_eq!(
        regroup,
        group_for(mode, &h, &dag, &known.iter().filter(|(n, _)| *n != gone).copied().collect::<Vec<_>>())
    );
    let newcomer = nodes.iter().position(|n| n.id() == next).unwrap();
    nodes[newcomer].handle_peers(100_000, alive.iter().copied());
    nodes[newcomer].handle_dag_peers(100_000, h, regroup.iter().copied());
    assert!(nodes[newcomer].schedules(&h));
    // The dead member's claims expire at the end of their lease; the newcomer takes jobs then.
    nodes[newcomer].handle_tick(100_000);
    assert!(!net_running(&starts(&mut nodes[newcomer])).is_empty(), "the replacement claims");
}

#[test]
fn a_dag_whose_submit_names_a_group_waits_for_the_group_before_any_claim() {
    let (h, dag) = flat(8);
    let me = NodeCore::new(SigningKey::from_bytes(&[1; 32]), caps(4));
    let peer = NodeCore::new(SigningKey::from_bytes(&[2; 32]), caps(4));
    let mut nodes = vec![me, peer];
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    for n in nodes.iter_mut() {
        n.handle_peers(0, ids.iter().copied());
    }
    nodes[1].submit_to_group(0, h, dag.clone(), 1, 1);
    nodes[0].handle_dag(0, h, dag.clone());
    gossip(&mut nodes, 0);
    assert_eq!(nodes[0].ledger().topic_nodes(&h), 1);
    // Without its group named, neither node claims, whatever the time: it may not be in it.
    for t in [0, 10 * CLAIM_STAGGER_MS] {
        for n in nodes.iter_mut() {
            n.handle_tick(t);
            assert!(net_running(&starts(n)).is_empty(), "no claim before the group is known");
        }
    }
    // Named: the member claims at once, the other never.
    let t = 10 * CLAIM_STAGGER_MS;
    for n in nodes.iter_mut() {
        n.handle_dag_peers(t, h, [ids[0]]);
    }
    assert_eq!(net_running(&starts(&mut nodes[0])).len(), 4, "the member fills its 4 cores");
    nodes[1].handle_tick(t + 10 * CLAIM_STAGGER_MS);
    assert!(net_running(&starts(&mut nodes[1])).is_empty());
}

/// Runs `dags` on `nodes` to the end: every started job finishes at once, Done with the result
/// `result_of(node index)`, each run its own record. Returns the time it ended.
fn drive(nodes: &mut [NodeCore], dags: &[Hash], result_of: impl Fn(usize) -> Hash) -> u64 {
    let mut now = 1;
    for _ in 0..10_000 {
        gossip(nodes, now);
        let mut acted = false;
        for (i, node) in nodes.iter_mut().enumerate() {
            for a in starts(node) {
                if let Action::Start { claim, .. } = a {
                    acted = true;
                    let record = Hash::of(&[&claim.0[..], b"record"].concat());
                    let done = Finished::Done { record, bytes: 1, action: None, result: Some(result_of(i)) };
                    node.handle_job_finished(now, claim, done);
                }
            }
        }
        let ended = dags.iter().all(|d| {
            nodes[0]
                .ledger()
                .dag_state(d, now)
                .is_some_and(|s| s.jobs.values().all(|j| matches!(j, JobState::Done { .. } | JobState::Failed { .. })))
        });
        if ended {
            return now;
        }
        if !acted {
            now = nodes.iter().filter_map(|n| n.poll_timeout(now)).min().unwrap_or(now + 1).max(now + 1);
            nodes.iter_mut().for_each(|n| n.handle_tick(now));
        }
    }
    panic!("the DAGs did not end");
}

/// Workers labelled `pool=w` and a submitter without the label (it runs nothing), which asks
/// for `agree` agreeing runs.
fn quorum_mesh(workers: u8, agree: u32) -> Vec<NodeCore> {
    let mut w = caps(1);
    w.labels.insert("pool".into(), "w".into());
    let mut nodes = vec![NodeCore::new(SigningKey::from_bytes(&[1; 32]), caps(1))];
    nodes.extend((0..workers).map(|i| NodeCore::new(SigningKey::from_bytes(&[10 + i; 32]), w.clone())));
    nodes[0].set_quorum(agree, []);
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    for n in nodes.iter_mut() {
        n.handle_peers(0, ids.clone());
        n.handle_peer_caps(0, ids.iter().skip(1).map(|id| (*id, w.clone())));
    }
    nodes
}

fn pooled_dag(n: usize) -> (Hash, Dag) {
    let text = format!(
        r#"{{"version": 1, "jobs": [{{"id": "j{n}", "image": "b:1", "command": ["x"], "outputs": {{"o": "stdout"}},
           "requirements": {{"labels": {{"pool": "w"}}}}}}]}}"#
    );
    (Hash::of(text.as_bytes()), parse_dag("d.json", &text).unwrap())
}

#[test]
fn under_a_quorum_a_job_counts_once_two_nodes_agree_and_the_node_that_disagreed_is_quarantined() {
    let mut nodes = quorum_mesh(3, 2);
    let flipper = nodes[3].id();
    let dags: Vec<(Hash, Dag)> = (0..8).map(pooled_dag).collect();
    for (h, d) in &dags {
        nodes[0].submit(0, *h, d.clone(), 3);
    }
    for n in nodes.iter_mut().skip(1) {
        for (h, d) in &dags {
            n.handle_dag(0, *h, d.clone());
        }
    }
    let hashes: Vec<Hash> = dags.iter().map(|(h, _)| *h).collect();
    let now = drive(&mut nodes, &hashes, |i| if i == 3 { Hash::of(b"flipped") } else { Hash::of(b"right") });
    let mut flipper_ran = 0;
    for (h, d) in &dags {
        let job = &d.jobs[0].id;
        let l = nodes[0].ledger();
        let Some(JobState::Done { node, record, .. }) = l.job_state(h, job, now) else {
            panic!("{job} is done: {:?}", l.job_state(h, job, now))
        };
        assert_ne!(node, flipper, "the counted run is not the flipper's");
        let runs = l.completions(h, job);
        let right: Vec<_> = runs.iter().filter(|(_, _, r)| *r == Some(Hash::of(b"right"))).collect();
        assert_eq!(right.len(), 2, "two runs agree: {runs:?}");
        assert!(right.iter().any(|(_, r, _)| *r == record), "the counted record is one of them");
        let mut authors: Vec<_> = runs.iter().map(|(a, ..)| *a).collect();
        authors.sort();
        authors.dedup();
        assert_eq!(authors.len(), runs.len(), "no node ran a job twice: {runs:?}");
        flipper_ran += runs.iter().filter(|(a, ..)| *a == flipper).count();
        assert!(!l.confirming(h, job, now));
    }
    assert!(flipper_ran >= 1, "the flipper ran something (else the test shows nothing)");
    for n in &nodes {
        let q = n.ledger().quarantine_of(&flipper).expect("every node knows the flipper is quarantined");
        assert!(matches!(&q.body, Body::Quarantine { reason, .. } if reason.contains("differ")), "{q:?}");
        assert_eq!(n.ledger().quarantined().count(), 1, "only the flipper");
    }
    assert_eq!(nodes[0].ledger().state(now), nodes[1].ledger().state(now));
    assert_eq!(nodes[0].ledger().state(now), nodes[0].ledger().fold(now));
}

#[test]
fn under_a_quorum_runs_that_never_agree_fail_the_job_and_a_dag_without_one_counts_the_first_run() {
    let mut nodes = quorum_mesh(2, 2);
    let (h, d) = pooled_dag(0);
    nodes[0].submit(0, h, d.clone(), 1);
    nodes[1].handle_dag(0, h, d.clone());
    nodes[2].handle_dag(0, h, d.clone());
    let now = drive(&mut nodes, &[h], |i| Hash::of(&[i as u8]));
    let Some(JobState::Failed { failures }) = nodes[0].ledger().job_state(&h, "j0", now) else { panic!() };
    assert!(failures.iter().any(|f| f.contains("the runs of 2 nodes disagree")), "{failures:?}");
    assert_eq!(nodes[0].ledger().quarantined().count(), 0, "no quorum outvoted anyone");

    // The same with no quorum: the first run counts, one run in all.
    let mut nodes = quorum_mesh(2, 1);
    let (h, d) = pooled_dag(1);
    nodes[0].submit(0, h, d.clone(), 1);
    nodes[1].handle_dag(0, h, d.clone());
    nodes[2].handle_dag(0, h, d);
    let now = drive(&mut nodes, &[h], |i| Hash::of(&[i as u8]));
    assert!(matches!(nodes[0].ledger().job_state(&h, "j1", now), Some(JobState::Done { .. })));
    assert_eq!(nodes[0].ledger().completions(&h, "j1").len(), 1);
}
