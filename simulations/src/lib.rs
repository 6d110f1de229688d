//! A deterministic discrete-event simulator around the real sans-IO machines of `shoal-mesh` (the
//! scheduler `NodeCore` and its ledger, anti-entropy `Sync`, the replica and topic choices, with
//! `shoal node`'s `Settings` unless told otherwise): thousands of nodes under a virtual clock,
//! talking through a seeded message layer. Same seed, same run, event for event.
//!
//! # Layout
//! - [`config`]: what a run simulates (nodes, workload, network, churn, partitions, the
//!   protocol's settings) and the named scenarios.
//! - [`workload`]: the DAGs a run submits (layered, fan-out, chains, an overnight mix) as real
//!   DAG files through the real parser, with each job's work.
//! - [`sim`]: the simulator. Nodes are heterogeneous (arch, cores, memory, GPU, speed) and
//!   churn (crash and restart from their persisted facts, leave, join). Facts travel by
//!   gossip over a mesh of degree ~[`Config::mesh_degree`] per topic (gossipsub-like: a node
//!   relays a fact it has not seen to its mesh peers, except those it came from, in batches),
//!   repaired by anti-entropy. With one topic (`TopicMode::One`, as `shoal node` has it) each
//!   node runs the real `shoal_mesh::sync::Sync` with its mesh peers as its connections, its
//!   requests and answers carried as messages; with a topic per DAG (`TopicMode::PerDag`, the
//!   federation design, which the node does not have yet) a per-topic digest exchange is modelled
//!   there. Messages have a latency distribution, loss, an uplink bandwidth, and partitions; or,
//!   with [`Config::sites`], the network lab's topology (sites behind NATs with a WAN delay,
//!   jitter and TCP-retransmitted loss each, a relay carrying a symmetric-NAT site's messages),
//!   so a lab run can be simulated as it was set up; every byte is counted from real CBOR sizes. A DAG topic is subscribed by the group that
//!   `shoal_mesh::topics::group_for` picks, and only they hold its facts and run its jobs.
//!   Outputs are kept by their runner and the holders `shoal_mesh::replicas` picks.
//! - [`report`]: what a run measured; [`output`]: its table, CSV and SVG plots.
//! - [`rng`]: the only randomness, from the seed.
//!
//! Invariants are checked as the run goes (after every step, and at each sample) and at the end;
//! each violation names the seed, and `SHOAL_SIM_SEED=N` replays the run.

pub mod config;
pub mod output;
pub mod report;
pub mod rng;
pub mod sim;
pub mod workload;

pub use config::{Config, GivenDag, Latency, Partition, Site, SiteNat};
pub use report::{Percentiles, Report, SampleRow};
pub use rng::Rng;
pub use sim::Sim;
pub use workload::{SimDag, WorkDist, Workload, given};

/// One run of `cfg`.
pub fn run(cfg: &Config) -> Report {
    Sim::new(cfg.clone()).run()
}
