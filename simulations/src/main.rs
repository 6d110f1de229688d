//! `cargo run -p shoal-simulations --release -- --nodes 10000 --jobs 100000 --seed 1 --scenario churn`:
//! one deterministic run of the mesh protocol, with `shoal node`'s settings unless `--tuned` or a
//! flag says otherwise; prints a table row and writes CSV and SVG plots
//! into `--out`. `--sweep N` runs seeds `seed..seed+N` and names every seed that broke an invariant.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use shoal_mesh::topics::TopicMode;
use shoal_simulations::{Config, GivenDag, Site, output, run};

/// How strongly DAG topics prefer fast nodes when `--group-nodes` asks for them and nothing else
/// says (see `TopicMode::PerDag`).
const TOPIC_SPEED_EXPONENT: f64 = 4.0;

#[derive(Parser)]
#[command(about = "Deterministic simulation of shoal's mesh protocol (the shoal-mesh machines)")]
struct Args {
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// The first seed; `SHOAL_SIM_SEED=N` replays a failed run.
    #[arg(long, env = "SHOAL_SIM_SEED", default_value_t = 1)]
    seed: u64,
    /// basic, layered, fanout, chains, mixed, overnight, churn, partition or skew (a node a year
    /// ahead, one ten minutes behind, one 30 s ahead).
    #[arg(long, default_value = "churn")]
    scenario: String,
    /// Runs this many seeds from `--seed` on; prints one row each, writes no plots.
    #[arg(long)]
    sweep: Option<u64>,
    /// Where CSV and SVG files go.
    #[arg(long, default_value = "target/sim")]
    out: PathBuf,
    /// Nodes per DAG topic (0: one topic, every node holds every DAG).
    #[arg(long)]
    group_nodes: Option<usize>,
    #[arg(long)]
    mesh_degree: Option<usize>,
    /// Claim lease, ms (renewed at half).
    #[arg(long)]
    lease_ms: Option<u64>,
    /// How long an ended DAG stays in the ledger before it is compacted, ms (the node's
    /// `--ledger-retention-s`, a day; 0: never, to see the ledger grow without compaction).
    #[arg(long)]
    ledger_retention_ms: Option<u64>,
    /// Claim stagger per rank place, ms.
    #[arg(long)]
    stagger_ms: Option<u64>,
    /// How strongly placement prefers fast nodes (the rendezvous weight is speed^this; 0: blind).
    #[arg(long)]
    speed_exponent: Option<u32>,
    /// How strongly DAG topics prefer fast nodes (a node's weight is speed^this).
    #[arg(long)]
    topic_speed_exponent: Option<f64>,

    /// Anti-entropy period per node, ms.
    #[arg(long)]
    anti_entropy_ms: Option<u64>,
    /// How long a node is not heard from before the mesh takes it as gone, ms.
    #[arg(long)]
    liveness_timeout_ms: Option<u64>,
    /// Nodes that keep a copy of each output, the runner included.
    #[arg(long)]
    replicas: Option<usize>,
    /// Start from the tuned settings (docs/SIMULATIONS.md) instead of `shoal node`'s defaults;
    /// the flags above still apply on top.
    #[arg(long)]
    tuned: bool,
    /// Churn per hour, as a fraction of the nodes.
    #[arg(long)]
    churn: Option<f64>,
    /// Fraction of messages lost.
    #[arg(long)]
    loss: Option<f64>,
    /// Median job work, ms at speed 1.
    #[arg(long)]
    job_ms: Option<u64>,
    /// Heterogeneous nodes' speeds are uniform in 1 ± this (0: all alike).
    #[arg(long)]
    speed_spread: Option<f64>,
    /// A line per metrics sample on stderr.
    #[arg(long)]
    progress: bool,
    /// Cores per node (homogeneous scenarios).
    #[arg(long)]
    cores: Option<u32>,
    /// A site of the network lab's shape, once per site, in node order:
    /// `name=east,nodes=5,one_way_ms=20,jitter_ms=2,loss_pct=1,nat=eim` (nat: public, eim or
    /// symmetric; the first public site's first node is the relay). Their nodes sum to
    /// `--nodes`; between sites a message takes both sites' WAN delays, and a lost frame costs a
    /// TCP retransmission instead of the message (see `Site`).
    #[arg(long = "site")]
    sites: Vec<String>,
    /// The node (index, from 0 in `--site` order) that submits the DAGs.
    #[arg(long)]
    submitter: Option<usize>,
    /// Runs this DAG file instead of the scenario's workload, each job taking `--job-ms` (its
    /// jobs named j0, j1, … in file order, each reading only earlier ones).
    #[arg(long)]
    dag: Option<PathBuf>,
    /// With `--dag`: a file of each job's work, whole ms in the DAG file's order, separated by
    /// commas or white space (a JSON array; a lab run's measured times), instead of `--job-ms`
    /// for all.
    #[arg(long)]
    job_work: Option<PathBuf>,
    /// Runs nothing: plots column `--plot-column` of these `*-metrics.csv` files (repeatable,
    /// `LABEL=FILE`) on one chart, written to `--plot-out` (an SVG).
    #[arg(long = "plot-csv")]
    plot_csv: Vec<String>,
    #[arg(long, default_value = "ledger_bytes_mean")]
    plot_column: String,
    #[arg(long, default_value = "target/sim/plot.svg")]
    plot_out: PathBuf,
}

fn config(a: &Args, seed: u64) -> anyhow::Result<Config> {
    let mut c = Config::scenario(&a.scenario, a.nodes, a.jobs, seed).map_err(anyhow::Error::msg)?;
    if a.tuned {
        c.tune();
    }
    let topic_speed_exponent = match c.settings.topics {
        TopicMode::PerDag { speed_exponent, .. } => speed_exponent,
        TopicMode::One => TOPIC_SPEED_EXPONENT,
    };
    let topic_speed_exponent = a.topic_speed_exponent.unwrap_or(topic_speed_exponent);
    match a.group_nodes {
        Some(0) => c.settings.topics = TopicMode::One,
        Some(g) => c.settings.topics = TopicMode::PerDag { group_nodes: g, speed_exponent: topic_speed_exponent },
        None => {
            if let TopicMode::PerDag { group_nodes, .. } = c.settings.topics {
                c.settings.topics = TopicMode::PerDag { group_nodes, speed_exponent: topic_speed_exponent };
            }
        }
    }
    if let Some(d) = a.mesh_degree {
        c.mesh_degree = d;
    }
    if let Some(l) = a.lease_ms {
        c.settings.core.lease_ms = l;
    }
    if let Some(r) = a.ledger_retention_ms {
        c.settings.core.ledger_retention_ms = if r == 0 { u64::MAX / 4 } else { r };
    }
    if let Some(k) = a.speed_exponent {
        c.settings.core.speed_exponent = k;
    }
    if let Some(x) = a.stagger_ms {
        c.settings.core.claim_stagger_ms = x;
    }
    if let Some(x) = a.anti_entropy_ms {
        c.settings.sync_period_ms = x;
    }
    if let Some(x) = a.liveness_timeout_ms {
        c.settings.liveness_timeout_ms = x;
    }
    if let Some(x) = a.replicas {
        c.settings.replicas = x;
    }
    if let Some(x) = a.churn {
        c.churn_per_hour = x;
    }
    if let Some(x) = a.loss {
        c.loss = x;
    }
    if let Some(x) = a.job_ms {
        c.work.median_ms = x;
    }
    if let Some(x) = a.speed_spread {
        c.speed_spread = x;
    }
    c.progress = a.progress;
    if let Some(x) = a.cores {
        c.cores_per_node = x;
    }
    c.sites = a.sites.iter().map(|s| Site::parse(s)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    c.submitter = a.submitter;
    c.check_sites().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(a.job_work.is_none() || a.dag.is_some(), "--job-work gives the works of --dag's jobs: give --dag");
    if let Some(path) = &a.dag {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading --dag {}", path.display()))?;
        // Checked here, where a bad file is named, not in the run.
        let dag = shoal_simulations::given(&text, c.work.median_ms)
            .map_err(|e| anyhow::anyhow!("--dag {}: {e}", path.display()))?;
        c.jobs = dag.work_ms.len();
        let job_work_ms = match &a.job_work {
            None => vec![],
            Some(w) => {
                let text = std::fs::read_to_string(w).with_context(|| format!("reading --job-work {}", w.display()))?;
                // Whole ms separated by commas or white space: a JSON array of them reads too.
                let ms: Vec<u64> = text
                    .split(|c: char| c == ',' || c == '[' || c == ']' || c.is_whitespace())
                    .filter(|t| !t.is_empty())
                    .map(|t| {
                        t.parse::<u64>()
                            .map_err(|_| anyhow::anyhow!("--job-work {}: `{t}` is not whole ms", w.display()))
                    })
                    .collect::<anyhow::Result<_>>()?;
                anyhow::ensure!(
                    ms.len() == c.jobs,
                    "--job-work {}: {} works for the {} jobs of --dag {}: give one per job, in file order",
                    w.display(),
                    ms.len(),
                    c.jobs,
                    path.display()
                );
                ms
            }
        };
        c.given = Some(GivenDag { text, work_ms: c.work.median_ms, job_work_ms });
    }
    Ok(c)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !a.plot_csv.is_empty() {
        let runs = a
            .plot_csv
            .iter()
            .map(|s| {
                let (label, file) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--plot-csv `{s}`: write LABEL=FILE (a *-metrics.csv)"))?;
                Ok((label.to_string(), PathBuf::from(file)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        output::plot_runs(&runs, &a.plot_column, &a.plot_out)?;
        eprintln!("wrote {}", a.plot_out.display());
        return Ok(());
    }
    println!("{}", output::TABLE_HEADER);
    let seeds = a.seed..a.seed + a.sweep.unwrap_or(1);
    let mut failed = Vec::new();
    for seed in seeds {
        let cfg = config(&a, seed)?;
        let started = Instant::now();
        let r = run(&cfg);
        let wall_s = started.elapsed().as_secs_f64();
        println!("{}", output::table_row(&a.scenario, &r, wall_s));
        if a.sweep.is_none() {
            let name = format!("{}-{}n-{}j-s{}", a.scenario, cfg.nodes, cfg.jobs, seed);
            for p in output::write(&a.out, &name, &r, wall_s)? {
                eprintln!("wrote {}", p.display());
            }
            eprintln!(
                "claim latency mean {:.1} s, max {:.1} s; stopped {}, wasted {:.1} core-h; crashes {}, joins {}, leaves {}; outputs lost {}; facts held {}; converged {} s after the end",
                r.claim_latency_ms.mean / 1000.0,
                r.claim_latency_ms.max as f64 / 1000.0,
                r.stopped,
                r.wasted_ms as f64 / 3.6e6,
                r.crashes,
                r.joins,
                r.leaves,
                r.outputs_lost,
                r.facts_held,
                r.converge_at_end_ms.map_or("-".into(), |m| format!("{:.1}", m as f64 / 1000.0)),
            );
            if r.refused_ahead > 0 {
                eprintln!("facts refused as ahead of the receiver's clock by more than the bound: {}", r.refused_ahead);
            }
            eprintln!(
                "heartbeats {}, peers forgotten {} (silent {:.1} to {:.1} s); output copies {} ({} found no provider); outputs reported lost {}",
                r.heartbeats,
                r.forgotten,
                r.forgotten_silent_ms.min as f64 / 1000.0,
                r.forgotten_silent_ms.max as f64 / 1000.0,
                r.copies,
                r.copies_failed,
                r.lost_reported,
            );
            eprintln!("events by kind: {:?}", r.events_by_kind);
        }
        for v in &r.violations {
            eprintln!("invariant broken: {v}");
        }
        if !r.violations.is_empty() {
            failed.push(seed);
        }
    }
    if !failed.is_empty() {
        eprintln!("seeds with a broken invariant: {failed:?} (replay one: SHOAL_SIM_SEED=N, same flags)");
        std::process::exit(1);
    }
    Ok(())
}
