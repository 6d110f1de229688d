//! What a run measured: the report, its samples over time and percentiles.

use std::collections::BTreeMap;

/// One sample of the metrics over time.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRow {
    pub t_s: f64,
    pub done: usize,
    pub running: usize,
    pub up_nodes: usize,
    /// Bytes received per up node per second over the interval.
    pub gossip_bytes_per_node_s: f64,
    pub starts: u64,
    pub duplicates: u64,
    pub events: u64,
    /// The bytes of each up node's ledger (its facts' CBOR, 64 per compacted DAG): the mean and
    /// the largest.
    pub ledger_bytes_mean: f64,
    pub ledger_bytes_max: u64,
    /// Facts per up node's ledger, mean.
    pub ledger_facts_mean: f64,
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub jobs: usize,
    pub dags: usize,
    pub done: usize,
    pub failed: usize,
    pub makespan_ms: u64,
    /// max(latest submit + its critical path, first submit + total work / capacity), the critical
    /// path at the fastest node's speed.
    pub lower_bound_ms: u64,
    /// The same with the critical path at the nodes' mean speed: what a placement blind to speed
    /// can hope for (not a strict bound).
    pub lower_bound_mean_speed_ms: u64,
    pub starts: u64,
    /// Starts beyond one per job.
    pub extra_starts: u64,
    /// Starts while another run of the same job went on.
    pub concurrent_duplicates: u64,
    pub stopped: u64,
    /// Run time of stopped or lost runs, ms.
    pub wasted_ms: u64,
    pub claim_latency_ms: Percentiles,
    /// Bytes received per node per second, averaged over the run and the nodes up.
    pub gossip_bytes_per_node_s: f64,
    /// The busiest node's.
    pub gossip_bytes_per_node_s_max: f64,
    /// After the partition healed, until every fact made before it was held by every member.
    pub converge_after_heal_ms: Option<u64>,
    /// After the last DAG ended, until every member held every fact of its topic.
    pub converge_at_end_ms: Option<u64>,
    pub events: u64,
    pub crashes: u64,
    pub joins: u64,
    pub leaves: u64,
    /// Done jobs whose every holder left (recomputable from their lineage).
    pub outputs_lost: usize,
    /// Facts a core refused because their clock read more than `clock_skew_max_ms` ahead of its
    /// own (from or to a node with a skewed clock, `Config::clock_offsets_ms`).
    pub refused_ahead: u64,
    /// Heartbeats sent (each received by every node that hears its sender).
    pub heartbeats: u64,
    /// Peers forgotten by a node's own `Liveness`, and how long each had been silent then (since
    /// the last heartbeat it sent), ms.
    pub forgotten: u64,
    pub forgotten_silent_ms: Percentiles,
    /// Copies of outputs a node's `Replicas` asked for that it made, and that found no provider.
    pub copies: u64,
    pub copies_failed: u64,
    /// Outputs reported lost (`lost::judge` said `Report` after the recheck): their jobs ran again.
    pub lost_reported: u64,
    /// Facts held, summed over nodes, at the end (memory).
    pub facts_held: u64,
    /// Distinct facts made in the run.
    pub facts_made: u64,
    /// DAGs compacted out of a node's ledger, summed over nodes (adoptions not counted).
    pub compacted: u64,
    pub violations: Vec<String>,
    pub samples: Vec<SampleRow>,
    /// Events handled, by kind.
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// With a [`Config::given`] DAG: each job's facts' kinds in clock order, from the ledger of
    /// the first node up at the end (`Ledger::history`, as `/v1/dags/{dag}/facts` shows it).
    pub histories: BTreeMap<String, Vec<&'static str>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub(crate) fn of(mut v: Vec<u64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        Percentiles {
            min: v[0],
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}
