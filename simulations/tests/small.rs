//! Fixed-seed runs of the real node core: every job ends done, every ledger converges, the run is
//! deterministic, and races cost few duplicate starts.

use shoal_simulations::{Config, run};

fn cfg(seed: u64) -> Config {
    Config {
        nodes: 8,
        jobs: 30,
        seed,
        cores_per_node: 2,
        latency_ms: (1, 20),
        job_ms: (1_000, 30_000),
        limit_ms: 86_400_000,
        crash: None,
    }
}

#[test]
fn a_dag_completes_and_every_ledger_converges() {
    for seed in 1..=3 {
        let r = run(&cfg(seed));
        assert_eq!(r.done, r.jobs, "seed {seed}: {r:?}");
        assert!(r.converged, "seed {seed}: {r:?}");
        assert!(r.makespan_ms >= r.lower_bound_ms, "seed {seed}: {r:?}");
        // Every started run either finished its job or was stopped when a smaller claim won.
        assert!(r.starts >= r.jobs && r.starts - r.stopped <= r.jobs + r.jobs / 2, "seed {seed}: {r:?}");
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    assert_eq!(run(&cfg(7)), run(&cfg(7)));
}

#[test]
fn the_dag_completes_when_any_node_dies_mid_run() {
    // Each node in turn (node 0 submitted the DAG) dies 5 s in, while the first layer runs: its
    // claims lapse, other nodes finish the DAG, and a job it held costs one attempt, not the DAG.
    let healthy = run(&cfg(3));
    let mut retried = 0;
    for node in 0..cfg(3).nodes {
        let mut c = cfg(3);
        c.crash = Some((node, 5_000));
        let r = run(&c);
        assert_eq!(r.done, r.jobs, "node {node} died: {r:?}");
        assert!(r.converged, "node {node} died: {r:?}");
        if r.starts > r.jobs {
            retried += 1;
            assert!(r.makespan_ms > healthy.makespan_ms, "a lost run costs time: {r:?} vs {healthy:?}");
        }
    }
    assert!(retried > 0, "no node held a run when it died: the test proves nothing");
}
