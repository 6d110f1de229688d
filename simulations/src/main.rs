//! `cargo run -p shoal-simulations --release -- --nodes 50 --jobs 400 --seed 1`: one deterministic
//! run of the real node core; prints what it measured.

use clap::Parser;
use shoal_simulations::{Config, run};

#[derive(Parser)]
#[command(about = "Deterministic simulation of shoal's scheduler core")]
struct Args {
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    #[arg(long, default_value_t = 400)]
    jobs: usize,
    #[arg(long, env = "SHOAL_SIM_SEED", default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    cores: u32,
}

fn main() {
    let a = Args::parse();
    let cfg = Config {
        nodes: a.nodes,
        jobs: a.jobs,
        seed: a.seed,
        cores_per_node: a.cores,
        latency_ms: (1, 20),
        job_ms: (1_000, 60_000),
        limit_ms: 7 * 86_400_000,
        crash: None,
    };
    let started = std::time::Instant::now();
    let r = run(&cfg);
    let wall = started.elapsed();
    println!(
        "| nodes | jobs | seed | done | makespan s | lower bound s | ratio | starts | stopped | events | events/s | converged |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {:.0} | {} |",
        cfg.nodes,
        cfg.jobs,
        cfg.seed,
        r.done,
        r.makespan_ms as f64 / 1000.0,
        r.lower_bound_ms as f64 / 1000.0,
        r.makespan_ms as f64 / r.lower_bound_ms.max(1) as f64,
        r.starts,
        r.stopped,
        r.events,
        r.events as f64 / wall.as_secs_f64(),
        r.converged
    );
    if r.done != r.jobs || !r.converged {
        eprintln!("invariant broken with seed {} (replay: SHOAL_SIM_SEED={})", cfg.seed, cfg.seed);
        std::process::exit(1);
    }
}
