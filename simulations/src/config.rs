//! What a run simulates: the mesh's size, workload, network, churn and partitions, and the
//! protocol's settings (`shoal node`'s unless tuned), with the named scenarios `--scenario` picks.

use shoal_mesh::Settings;
use shoal_mesh::topics::TopicMode;

use crate::Rng;
use crate::workload::{WorkDist, Workload};

/// One-way message latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    Uniform {
        lo_ms: u64,
        hi_ms: u64,
    },
    /// Log-normal around a median (a long tail, as across the internet), capped.
    LogNormal {
        median_ms: u64,
        sigma: f64,
        max_ms: u64,
    },
}

impl Latency {
    pub(crate) fn sample(&self, rng: &mut Rng) -> u64 {
        match *self {
            Latency::Uniform { lo_ms, hi_ms } => rng.range(lo_ms, hi_ms),
            Latency::LogNormal { median_ms, sigma, max_ms } => {
                ((median_ms as f64 * (sigma * rng.normal()).exp()) as u64).clamp(1, max_ms)
            }
        }
    }
}

/// How a site's hosts reach the public bridge, as the network lab (tests/it/fedlab.rs) builds
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteNat {
    /// On the public bridge itself: no NAT. The first node of the first such site is the relay.
    Public,
    /// Endpoint-independent NAT: hole punching works, so its nodes reach others directly.
    Eim,
    /// Symmetric NAT: no hole punch works, so every connection to or from its nodes goes
    /// through the relay, which carries (receives and sends) each of their messages once more.
    Symmetric,
}

/// A site of the lab's shape: `nodes` hosts on one LAN (a bridge: under a millisecond, so no
/// delay at the simulator's resolution) behind a router whose WAN link to the public bridge
/// delays each frame `one_way_ms` ± `jitter_ms` (uniform) and drops `loss_pct` % of them, each
/// way. Two nodes of different sites are the two sites' one-way delays apart. Messages travel
/// over TCP there: a dropped frame is sent again after Linux's retransmission timeout (the
/// round trip plus [`TCP_RTO_MIN_MS`], doubling while it is lost again), so loss delays a
/// message, never loses it.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    pub name: String,
    pub nodes: usize,
    pub one_way_ms: u64,
    pub jitter_ms: u64,
    pub loss_pct: f64,
    pub nat: SiteNat,
}

/// Linux's least TCP retransmission timeout (`TCP_RTO_MIN`), ms.
pub const TCP_RTO_MIN_MS: u64 = 200;

impl Site {
    /// Parses `name=east,nodes=5,one_way_ms=20,jitter_ms=2,loss_pct=1,nat=eim` (`jitter_ms`,
    /// `loss_pct` default to 0, `nat` to `public`).
    pub fn parse(text: &str) -> Result<Site, String> {
        let mut site =
            Site { name: String::new(), nodes: 0, one_way_ms: 0, jitter_ms: 0, loss_pct: 0.0, nat: SiteNat::Public };
        for part in text.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("site `{text}`: `{part}` is not key=value (e.g. name=east,nodes=5,one_way_ms=20)"));
            };
            let number = |what: &str| -> Result<u64, String> {
                value.parse().map_err(|_| format!("site `{text}`: {what}={value} is not a whole number"))
            };
            match key {
                "name" => site.name = value.to_string(),
                "nodes" => site.nodes = number("nodes")? as usize,
                "one_way_ms" => site.one_way_ms = number("one_way_ms")?,
                "jitter_ms" => site.jitter_ms = number("jitter_ms")?,
                "loss_pct" => {
                    site.loss_pct = value
                        .parse()
                        .ok()
                        .filter(|l| (0.0..100.0).contains(l))
                        .ok_or_else(|| format!("site `{text}`: loss_pct={value}: give a percentage in [0, 100)"))?
                }
                "nat" => {
                    site.nat = match value {
                        "public" => SiteNat::Public,
                        "eim" => SiteNat::Eim,
                        "symmetric" => SiteNat::Symmetric,
                        _ => return Err(format!("site `{text}`: nat={value}: give public, eim or symmetric")),
                    }
                }
                _ => {
                    return Err(format!(
                        "site `{text}`: unknown key `{key}`: name, nodes, one_way_ms, jitter_ms, loss_pct or nat"
                    ));
                }
            }
        }
        if site.name.is_empty() || site.nodes == 0 {
            return Err(format!("site `{text}`: give it a name and at least one node (name=east,nodes=5)"));
        }
        if site.jitter_ms > site.one_way_ms {
            return Err(format!(
                "site `{}`: jitter_ms {} exceeds one_way_ms {}: give jitter_ms <= one_way_ms",
                site.name, site.jitter_ms, site.one_way_ms
            ));
        }
        Ok(site)
    }
}

/// A partition: from `at_ms` for `for_ms`, `fraction` of the nodes (chosen by the seed) are cut off
/// from the rest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Partition {
    pub at_ms: u64,
    pub for_ms: u64,
    pub fraction: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub nodes: usize,
    pub jobs: usize,
    pub seed: u64,
    pub workload: Workload,
    pub work: WorkDist,
    /// The mixed workload's DAGs are submitted over this long.
    pub submit_window_ms: u64,
    /// Nodes of several kinds (cores, speed, memory, GPU, arch); else all alike.
    pub heterogeneous: bool,
    /// Heterogeneous nodes' speeds are uniform in 1 ± this.
    pub speed_spread: f64,
    /// Cores of every node when not heterogeneous.
    pub cores_per_node: u32,
    /// One-way latency between two nodes when [`Config::sites`] is empty (or for nodes beyond
    /// the sites', those that join later).
    pub latency: Latency,
    /// The lab's topology: nodes `0..sites[0].nodes` are at the first site, the next ones at the
    /// second, and so on; their sum is `nodes`. Empty: every pair is [`Config::latency`] apart.
    pub sites: Vec<Site>,
    /// The node that submits the DAGs; else a random up one each time.
    pub submitter: Option<usize>,
    /// Probability that one message is lost.
    pub loss: f64,
    /// Uplink of every node, bits per second.
    pub uplink_bps: u64,
    /// Node churn per hour, as a fraction of the nodes: crashes (back after a while, from their
    /// persisted facts), leaves and joins.
    pub churn_per_hour: f64,
    /// Single crashes: (node, at_ms); the node stays down.
    pub crashes: Vec<(usize, u64)>,
    /// Nodes whose wall clock is off: (node, offset ms, positive ahead). Their cores read the
    /// virtual time plus the offset (what `shoal node` reads from a wrong clock without
    /// `--clock-from-mesh`); liveness and anti-entropy run on monotonic time, as in the node.
    pub clock_offsets_ms: Vec<(usize, i64)>,
    pub partition: Option<Partition>,
    /// The protocol's settings (lease, stagger, sync period, liveness timeout, replicas,
    /// topics): `shoal node`'s by default, [`Config::tune`] for the tuned ones.
    pub settings: Settings,
    /// Mesh peers per node per topic.
    pub mesh_degree: usize,
    /// How long a node batches facts before relaying them, ms.
    pub flush_ms: u64,
    /// Fraction of runs that fail (and are retried, up to `max_attempts`).
    pub job_failure: f64,
    pub max_attempts: u32,
    /// Metrics are sampled this often, ms of simulated time.
    pub sample_ms: u64,
    /// Stop after this much simulated time.
    pub limit_ms: u64,
    /// Print a line per sample to stderr (long runs).
    pub progress: bool,
    /// Run this one DAG instead of the workload (see [`workload::given`]); the report then
    /// carries each job's history.
    pub given: Option<GivenDag>,
}

/// A DAG to run as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct GivenDag {
    /// Its JSON text: jobs named `j0`, `j1`, … in file order, each reading only earlier ones.
    pub text: String,
    /// Every job's work, ms at speed 1.0, unless `job_work_ms` names each one's.
    pub work_ms: u64,
    /// Each job's own work in file order, ms at speed 1.0 (a lab run's measured times, to replay
    /// them); empty: every job takes `work_ms`.
    pub job_work_ms: Vec<u64>,
}

impl Config {
    /// A small, homogeneous, reliable run of one layered DAG.
    pub fn basic(nodes: usize, jobs: usize, seed: u64) -> Config {
        Config {
            nodes,
            jobs,
            seed,
            workload: Workload::Layered,
            work: WorkDist { median_ms: 20_000, sigma: 0.6, max_ms: 120_000 },
            submit_window_ms: 0,
            heterogeneous: false,
            speed_spread: 0.5,
            cores_per_node: 2,
            latency: Latency::Uniform { lo_ms: 1, hi_ms: 20 },
            sites: vec![],
            submitter: None,
            loss: 0.0,
            uplink_bps: 100_000_000,
            churn_per_hour: 0.0,
            crashes: vec![],
            clock_offsets_ms: vec![],
            partition: None,
            settings: Settings::default(),
            mesh_degree: 6,
            flush_ms: 20,
            job_failure: 0.0,
            max_attempts: 3,
            sample_ms: 60_000,
            limit_ms: 7 * 86_400_000,
            progress: false,
            given: None,
        }
    }

    /// A named scenario (what `--scenario` picks).
    pub fn scenario(name: &str, nodes: usize, jobs: usize, seed: u64) -> Result<Config, String> {
        let mut c = Config::basic(nodes, jobs, seed);
        let overnight = |c: &mut Config| {
            c.workload = Workload::Mixed;
            c.heterogeneous = true;
            c.work = WorkDist { median_ms: 5 * 60_000, sigma: 0.7, max_ms: 3_600_000 };
            c.submit_window_ms = 3_600_000;
            c.latency = Latency::LogNormal { median_ms: 30, sigma: 0.6, max_ms: 2_000 };
            c.loss = 0.01;
            c.uplink_bps = 10_000_000;
            c.sample_ms = 300_000;
        };
        match name {
            "basic" => {}
            "layered" | "fanout" | "chains" | "mixed" => c.workload = name.parse()?,
            "overnight" => overnight(&mut c),
            "churn" => {
                overnight(&mut c);
                c.churn_per_hour = 0.01;
            }
            "partition" => {
                overnight(&mut c);
                c.partition = Some(Partition { at_ms: 20 * 60_000, for_ms: 20 * 60_000, fraction: 0.3 });
            }
            "month" => {
                // A month of a pool's steady traffic under 1 %/h churn, for the ledger's size
                // per node over time (compaction after `ledger_retention_ms`, a day as in the
                // node). The node's settings, with per-DAG topics as `shoal node` takes them
                // above 500 nodes and its periods scaled ×30 (heartbeat 5 min, anti-entropy
                // 2.5 min, leases 10 min) so that a month of 1,000 nodes fits in minutes: the
                // ledger's size follows the DAGs and the retention, not these periods.
                overnight(&mut c);
                c.workload = Workload::Steady;
                c.heterogeneous = false;
                c.work = WorkDist { median_ms: 2 * 60_000, sigma: 0.7, max_ms: 3_600_000 };
                c.submit_window_ms = 30 * 86_400_000;
                c.limit_ms = 33 * 86_400_000;
                c.sample_ms = 6 * 3_600_000;
                c.churn_per_hour = 0.01;
                let s = &mut c.settings;
                s.heartbeat_ms *= 30;
                s.liveness_timeout_ms = 3 * s.heartbeat_ms + 1_000;
                s.forget_after_ms = 4 * s.liveness_timeout_ms;
                s.sync_period_ms *= 30;
                s.catch_up_max_ms = 3 * s.sync_period_ms;
                s.core.lease_ms = 600_000;
                s.core.claim_stagger_ms = 1_000;
                s.topics = shoal_mesh::settings::topic_mode(shoal_mesh::settings::DAG_TOPIC_NODES, nodes);
            }
            "skew" => {
                // A PC whose clock reads a year ahead, one ten minutes behind, one 30 s ahead
                // (within the mesh's bound): the first two have their facts refused (the
                // year-ahead one's by everyone, the one behind refuses everyone's); the third
                // takes part as any other.
                overnight(&mut c);
                const YEAR_MS: i64 = 365 * 24 * 3_600_000;
                c.clock_offsets_ms = vec![(0, YEAR_MS), (1, -10 * 60_000), (2, 30_000)];
            }
            _ => {
                return Err(format!(
                    "unknown scenario `{name}`: basic, layered, fanout, chains, mixed, overnight, churn, partition, skew or month"
                ));
            }
        }
        Ok(c)
    }

    /// The settings docs/SIMULATIONS.md found better than `shoal node`'s defaults for big meshes
    /// and long jobs (switching the node to them is the federation issue's).
    pub fn tune(&mut self) {
        let s = &mut self.settings;
        // Leases of minutes: renewals are most of the gossip (see docs/SIMULATIONS.md).
        s.core.lease_ms = 600_000;
        // Above the p99 of gossip propagation over a few hops, or the next-ranked node claims
        // before it hears the first one's claim (200 ms gave 32% concurrent duplicates).
        s.core.claim_stagger_ms = 1_000;
        s.topics = shoal_mesh::settings::topic_mode(shoal_mesh::settings::DAG_TOPIC_NODES, self.nodes);
    }

    /// The site of node `n`, if it is one of the sites' nodes.
    pub fn site_of(&self, n: usize) -> Option<&Site> {
        let mut first = 0;
        self.sites.iter().find(|s| {
            first += s.nodes;
            n < first
        })
    }

    /// The relay: the first node of the first public site, if a site is public.
    pub fn relay(&self) -> Option<usize> {
        let mut first = 0;
        for s in &self.sites {
            if s.nat == SiteNat::Public {
                return Some(first);
            }
            first += s.nodes;
        }
        None
    }

    /// Checks that the sites hold exactly the run's nodes and that a symmetric site has a relay.
    pub fn check_sites(&self) -> Result<(), String> {
        if self.sites.is_empty() {
            return Ok(());
        }
        let sum: usize = self.sites.iter().map(|s| s.nodes).sum();
        if sum != self.nodes {
            return Err(format!("the sites hold {sum} nodes but the run has {}: make --nodes their sum", self.nodes));
        }
        if self.sites.iter().any(|s| s.nat == SiteNat::Symmetric) && self.relay().is_none() {
            return Err("a site behind a symmetric NAT needs a relay: add a site with nat=public".into());
        }
        if let Some(n) = self.submitter.filter(|&n| n >= self.nodes) {
            return Err(format!("the submitter is node {n} but the run has {} nodes", self.nodes));
        }
        Ok(())
    }

    /// Nodes per DAG topic; 0 with one topic for all.
    pub fn group_nodes(&self) -> usize {
        match self.settings.topics {
            TopicMode::One => 0,
            TopicMode::PerDag { group_nodes, .. } => group_nodes,
        }
    }
}
