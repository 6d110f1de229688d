//! Every setting of the protocol in one place, with `shoal node`'s values as `Default`: the
//! simulator runs with these unless told otherwise, so a simulated figure describes the node.

use crate::core::CoreConfig;
use crate::topics::TopicMode;

/// How often a node announces itself (its heartbeat), in ms.
pub const HEARTBEAT_MS: u64 = 10_000;
/// How soon after its first connection a node announces itself to the whole mesh, in ms
/// (gossipsub needs a moment to exchange subscriptions first).
pub const HEARTBEAT_AFTER_CONNECT_MS: u64 = 300;
/// How often a node announces itself to the whole mesh by gossip, in ms: for the nodes it has no
/// connection with (past `shoal node`'s direct-peer limit), which learn its addresses from it.
/// Heartbeats go to connected peers only; gossiped, each would cost every node the gossip degree
/// in copies (32 idle nodes sent 16 KB/s each with a gossiped 10-s heartbeat, 1 with direct ones).
pub const ANNOUNCE_MESH_MS: u64 = 300_000;
/// One regular heartbeat in this many carries the full capabilities (greetings and mesh
/// announcements always do; these are for capabilities that changed).
pub const CAPS_EVERY: u64 = 30;
/// A peer heard from directly and then not for this long is taken as gone (ranks, replicas,
/// providers), in ms: three heartbeats missed, and a second for the one on its way.
pub const LIVENESS_TIMEOUT_MS: u64 = 3 * HEARTBEAT_MS + 1_000;
/// The same for a peer only ever heard through mesh announcements (no connection with it), in ms.
pub const MESH_LIVENESS_TIMEOUT_MS: u64 = 3 * ANNOUNCE_MESH_MS + 1_000;
/// A peer not heard from for this long is forgotten altogether (`shoal peers` stops listing
/// it), in ms.
pub const FORGET_AFTER_MS: u64 = 4 * LIVENESS_TIMEOUT_MS;
/// How often a node compares its ledger with one peer's (anti-entropy), in ms.
pub const SYNC_PERIOD_MS: u64 = 5_000;
/// Nodes that keep a copy of each output, the runner included (`shoal node --replicas`).
pub const REPLICAS: usize = 2;
/// How long a node waits before it asks every provider once more for an upstream output none
/// delivered, before it reports the output lost (its job then runs again), in ms: a holder that
/// was restarting or busy gets a second chance, so a passing failure does not cost a rerun.
pub const LOST_RECHECK_MS: u64 = 2_000;

/// How long a node restarted from stored facts waits at most for its first anti-entropy
/// exchange before it claims jobs (`Sync::caught_up`), in ms: three exchanges' time, for a node
/// whose peers are slow to answer or gone (alone, it claims after this).
pub const CATCH_UP_MAX_MS: u64 = 3 * SYNC_PERIOD_MS;

/// How long a node restarted from stored facts that name other nodes waits to hear any peer
/// before it claims jobs from its stored view alone, in ms. A node that reaches nobody after a
/// restart is more likely the one cut off (its network, its relay) than the last one standing:
/// in the federation lab a restarted node behind NAT reached its relay only after 42 s and,
/// claiming from its stale view at 15 s, ran 50 jobs done long before (issue 19). The
/// [`CATCH_UP_MAX_MS`] wait starts when the first peer is heard.
pub const CATCH_UP_ALONE_MAX_MS: u64 = 300_000;

/// How far ahead of a receiver's clock a remote time is believed, in ms: a fact whose HLC reads
/// more than this ahead is refused (anti-entropy offers it again, so it is admitted once the
/// receiver's clock reaches it), [`Hlc::observe`](crate::ledger::Hlc::observe) never moves further
/// ahead of local time, and a node whose peers' median clock is further off than this says so
/// (`shoal node --clock-from-mesh` then takes the mesh's time). A minute: NTP keeps honest clocks
/// within milliseconds, a PC with a dead CMOS battery is months or years off.
pub const CLOCK_SKEW_MAX_MS: u64 = 60_000;

/// Nodes subscribed to a DAG's own gossip topic (*G*): the simulator's 1,000- and 10,000-node
/// rows ran with 32 (docs/SIMULATIONS.md).
pub const DAG_TOPIC_NODES: usize = 32;
/// Meshes of more nodes than this give each DAG a topic of its own; up to it one topic carries
/// every fact (what the simulator validated: one topic up to 200 nodes, a topic per DAG at 1,000
/// and 10,000; below a few hundred nodes a DAG's topic would hold most of the mesh anyway).
pub const DAG_TOPICS_ABOVE_NODES: usize = 500;
/// A node's rendezvous weight for a DAG's topic is its speed to this power: milder than the
/// core's placement exponent, or the fastest nodes join nearly every topic and carry its gossip
/// (docs/SIMULATIONS.md: 16 made the busiest node receive 36.9 kbit/s, 4 keeps it at 13.8).
pub const TOPIC_SPEED_EXPONENT: f64 = 4.0;

/// The protocol's settings. `Default` is what `shoal node` runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The scheduler's: lease, claim stagger, locality threshold, speed exponent.
    pub core: CoreConfig,
    /// See [`HEARTBEAT_MS`].
    pub heartbeat_ms: u64,
    /// See [`HEARTBEAT_AFTER_CONNECT_MS`].
    pub heartbeat_after_connect_ms: u64,
    /// See [`ANNOUNCE_MESH_MS`].
    pub announce_mesh_ms: u64,
    /// See [`CAPS_EVERY`].
    pub caps_every: u64,
    /// See [`LIVENESS_TIMEOUT_MS`].
    pub liveness_timeout_ms: u64,
    /// See [`MESH_LIVENESS_TIMEOUT_MS`].
    pub mesh_liveness_timeout_ms: u64,
    /// See [`FORGET_AFTER_MS`].
    pub forget_after_ms: u64,
    /// See [`SYNC_PERIOD_MS`].
    pub sync_period_ms: u64,
    /// See [`REPLICAS`].
    pub replicas: usize,
    /// See [`LOST_RECHECK_MS`].
    pub lost_recheck_ms: u64,
    /// See [`CATCH_UP_MAX_MS`].
    pub catch_up_max_ms: u64,
    /// See [`CATCH_UP_ALONE_MAX_MS`].
    pub catch_up_alone_max_ms: u64,
    /// Which topics carry a DAG's facts and who subscribes to them, as the simulator runs a
    /// whole mesh ([`topic_mode`] gives the validated one for a mesh's size); `shoal node`
    /// decides per DAG at its submit ([`Settings::submit_topic_nodes`]).
    pub topics: TopicMode,
    /// See [`DAG_TOPIC_NODES`] (`shoal node --dag-topic-nodes`; 0: one topic whatever the size).
    pub dag_topic_nodes: usize,
    /// See [`DAG_TOPICS_ABOVE_NODES`] (`shoal node --dag-topics-above-nodes`).
    pub dag_topics_above_nodes: usize,
}

impl Settings {
    /// The `topic_nodes` a node that sees `mesh_nodes` nodes (itself included) writes into the
    /// submit of a DAG: [`Settings::dag_topic_nodes`] when the mesh is larger than
    /// [`Settings::dag_topics_above_nodes`] and the group, else 0 (the mesh's one topic).
    pub fn submit_topic_nodes(&self, mesh_nodes: usize) -> u32 {
        match topic_mode_above(self.dag_topic_nodes, self.dag_topics_above_nodes, mesh_nodes) {
            TopicMode::PerDag { group_nodes, .. } => u32::try_from(group_nodes).unwrap_or(u32::MAX),
            TopicMode::One => 0,
        }
    }
}

/// The topic mode validated for a mesh of `mesh_nodes` with DAG topics of `dag_topic_nodes`
/// (0: one topic whatever the size): a topic per DAG above [`DAG_TOPICS_ABOVE_NODES`].
pub fn topic_mode(dag_topic_nodes: usize, mesh_nodes: usize) -> TopicMode {
    topic_mode_above(dag_topic_nodes, DAG_TOPICS_ABOVE_NODES, mesh_nodes)
}

/// [`topic_mode`] with another size above which DAGs get topics of their own.
pub fn topic_mode_above(dag_topic_nodes: usize, above_nodes: usize, mesh_nodes: usize) -> TopicMode {
    if dag_topic_nodes == 0 || mesh_nodes <= above_nodes.max(dag_topic_nodes) {
        TopicMode::One
    } else {
        TopicMode::PerDag { group_nodes: dag_topic_nodes, speed_exponent: TOPIC_SPEED_EXPONENT }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            core: CoreConfig::default(),
            heartbeat_ms: HEARTBEAT_MS,
            heartbeat_after_connect_ms: HEARTBEAT_AFTER_CONNECT_MS,
            announce_mesh_ms: ANNOUNCE_MESH_MS,
            caps_every: CAPS_EVERY,
            liveness_timeout_ms: LIVENESS_TIMEOUT_MS,
            mesh_liveness_timeout_ms: MESH_LIVENESS_TIMEOUT_MS,
            forget_after_ms: FORGET_AFTER_MS,
            sync_period_ms: SYNC_PERIOD_MS,
            replicas: REPLICAS,
            lost_recheck_ms: LOST_RECHECK_MS,
            catch_up_max_ms: CATCH_UP_MAX_MS,
            catch_up_alone_max_ms: CATCH_UP_ALONE_MAX_MS,
            topics: TopicMode::One,
            dag_topic_nodes: DAG_TOPIC_NODES,
            dag_topics_above_nodes: DAG_TOPICS_ABOVE_NODES,
        }
    }
}
