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
