//! DAG topics: a DAG whose submit names a group size (`Body::Submit::topic_nodes`, written by a
//! node that saw a mesh larger than `--dag-topics-above-nodes`) is scheduled by a group of that
//! many nodes, chosen by `shoal_mesh::topics::group_for` over the capabilities this node has heard
//! (the rule the simulator runs), and its facts travel on a gossip topic of its own
//! (`shoal/dag/<hash>/1`) that the group subscribes to; its submit and cancel also go on the
//! mesh's topic, so every node knows the DAG and what became of it.
//!
//! Here each node works out the groups of the DAGs it knows, tells its core which it schedules
//! (`NodeCore::handle_dag_peers`) and its anti-entropy whom to compare each DAG with, and joins or
//! leaves the topics. A node outside a DAG's group follows its topic too for [`WATCH_MS`] after
//! it was asked about the DAG (`shoal status`, the API, its own submit), so it can answer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shoal_dag::Hash;
use shoal_mesh::capabilities::Capabilities;
use shoal_mesh::ledger::{Fact, JobState, NodeId};
use shoal_mesh::settings::TOPIC_SPEED_EXPONENT;
use shoal_mesh::topics::{self, TopicMode};
use tracing::{debug, info};

use super::{Node, node_of_peer, now_unix_ms, peer_id_of_node};
use crate::mesh::net::Topic;

/// How long a node outside a DAG's group follows its topic after it was last asked about it
/// (or submitted it), in ms.
pub const WATCH_MS: u64 = 10 * 60 * 1000;
/// How often the groups are worked out again while nothing new asks for it (peers come and go,
/// gossipsub learns who subscribes), in ms.
const REGROUP_MS: u64 = 2_000;
/// How long a node waits before it dials again a member of a group it follows that it has no
/// connection with, in ms. Members connect to each other past `DIRECT_PEERS_MAX` (a DAG's gossip
/// and anti-entropy run over connections), groups being small.
const GROUP_REDIAL_MS: u64 = 30_000;
/// How long a group member keeps following a DAG's topic after every job of it ended (done,
/// failed or cancelled), in ms: a late report of a lost output still reaches the group. Past it
/// the DAG's group is no longer worked out (it keeps the last one).
pub const FOLLOW_AFTER_END_MS: u64 = 10 * 60 * 1000;
/// DAG topics a node follows at once, group member or watcher; past it the DAGs it was asked
/// about least recently are left (a node still schedules those it is a member of).
pub const DAG_TOPICS_MAX: usize = 1024;

/// What a node knows of DAG topics.
#[derive(Default)]
pub(super) struct DagTopics {
    /// Per DAG with a topic, the group this node worked out last.
    groups: BTreeMap<Hash, BTreeSet<NodeId>>,
    /// DAGs this node follows without being in their group, until when.
    watching: BTreeMap<Hash, Instant>,
    /// When the groups were last worked out; None: at the next step.
    last: Option<Instant>,
    /// Members of followed groups dialed for lack of a connection, and when.
    dialed: BTreeMap<NodeId, Instant>,
    /// DAGs seen with every job ended, and since when.
    ended: BTreeMap<Hash, Instant>,
}

impl DagTopics {
    /// Someone asked about `dag` here: follow its topic for [`WATCH_MS`].
    pub(super) fn watch(&mut self, dag: Hash) {
        self.watching.insert(dag, Instant::now() + Duration::from_millis(WATCH_MS));
        self.last = None;
    }

    /// Work the groups out at the next step (a DAG or a peer's capabilities arrived).
    pub(super) fn dirty(&mut self) {
        self.last = None;
    }

    /// The group `dag` has, if it has a topic of its own and its content is here.
    pub(super) fn group(&self, dag: &Hash) -> Option<&BTreeSet<NodeId>> {
        self.groups.get(dag)
    }
}

impl Node {
    /// The topic a fact travels on: its DAG's own, or the mesh's.
    pub(super) fn topic_of(&self, fact: &Fact) -> Topic {
        let ledger = self.core.ledger();
        match ledger.dag_of(fact) {
            Some(dag) if ledger.in_dag_topic(fact) => Topic::Dag(dag),
            _ => Topic::Facts,
        }
    }

    /// The nodes that may keep copies of a DAG's outputs: the live ones of its group when it
    /// has one (only they hear of its completions), else every live peer.
    pub(super) fn replica_candidates(&self, dag: Option<Hash>) -> Vec<NodeId> {
        let live = self.live_peers();
        match dag.and_then(|d| self.dag_topics.group(&d)) {
            Some(group) => live.into_iter().filter(|n| group.contains(n)).collect(),
            None => live,
        }
    }

    /// The group of `dag` for the API, if its submit names one.
    pub(super) fn group_view(&self, dag: &Hash) -> Option<crate::api::DagGroup> {
        let size = self.core.ledger().topic_nodes(dag);
        (size > 0).then(|| {
            let me = self.core.id();
            let group = self.dag_topics.group(dag);
            crate::api::DagGroup {
                size,
                nodes: group.into_iter().flatten().map(hex::encode).collect(),
                member: group.is_some_and(|g| g.contains(&me)),
            }
        })
    }

    /// Asked about `dag`: when it has a topic of its own and this node is not in its group,
    /// follow the topic for [`WATCH_MS`] so the answers that follow show its progress (the
    /// first shows what this node held, its submit at least).
    pub(super) fn watch_if_outside(&mut self, dag: Hash) {
        let me = self.core.id();
        let member = self.dag_topics.group(&dag).is_some_and(|g| g.contains(&me));
        if self.core.ledger().topic_nodes(&dag) > 0 && !member {
            self.dag_topics.watch(dag);
            self.drive_topics();
            self.drive_mesh();
        }
    }

    /// Works out the group of every DAG with a topic, tells the core and anti-entropy, and
    /// joins or leaves topics; at most every [`REGROUP_MS`] unless something asked for it.
    pub(super) fn drive_topics(&mut self) {
        let now = Instant::now();
        if self.dag_topics.last.is_some_and(|t| now < t + Duration::from_millis(REGROUP_MS)) {
            return;
        }
        self.dag_topics.last = Some(now);
        let me = self.core.id();
        let live: BTreeSet<NodeId> = self.live_peers().into_iter().collect();
        let mut caps: Vec<(NodeId, &Capabilities)> = self
            .peers
            .iter()
            .filter(|(n, _)| live.contains(*n))
            .filter_map(|(n, p)| p.caps.as_ref().map(|c| (*n, c)))
            .collect();
        caps.push((me, self.core.caps()));
        let mut groups = BTreeMap::new();
        let after_end = Duration::from_millis(FOLLOW_AFTER_END_MS);
        for (dag, topic_nodes) in self.core.ledger().topic_dags() {
            // A DAG that ended long ago keeps the group it had: nothing of it is followed any
            // more, and working out every old DAG's group every round would grow with the ledger.
            if let (Some(at), Some(group)) = (self.dag_topics.ended.get(dag), self.dag_topics.groups.get(dag))
                && now >= *at + after_end
            {
                groups.insert(*dag, group.clone());
                continue;
            }
            let Some(content) = self.core.dag(dag) else { continue };
            let mode = TopicMode::PerDag { group_nodes: topic_nodes as usize, speed_exponent: TOPIC_SPEED_EXPONENT };
            groups.insert(*dag, topics::group_for(mode, dag, content, &caps));
        }
        drop(caps);
        let unix = now_unix_ms();
        for (dag, group) in &groups {
            if self.dag_topics.groups.get(dag) != Some(group) {
                let member = group.contains(&me);
                debug!(%dag, nodes = group.len(), member, "a DAG's group");
                if member && !self.dag_topics.groups.get(dag).is_some_and(|g| g.contains(&me)) {
                    info!(%dag, nodes = group.len(), "in the group that schedules a DAG: following its topic");
                }
                self.core.handle_dag_peers(unix, *dag, group.iter().copied());
            }
        }
        self.dag_topics.watching.retain(|_, until| *until > now);
        // Follow the DAGs this node is in the group of, until a while after they ended, and
        // those it watches (most recently asked first), up to the limit.
        let ledger = self.core.ledger();
        for dag in groups.keys() {
            if self.dag_topics.ended.get(dag).is_some_and(|at| now >= *at + after_end) {
                continue;
            }
            let ended = ledger.dag_state(dag, unix).is_some_and(|s| {
                s.jobs
                    .values()
                    .all(|j| matches!(j, JobState::Done { .. } | JobState::Failed { .. } | JobState::Cancelled))
            });
            if !ended {
                self.dag_topics.ended.remove(dag);
            } else if !self.dag_topics.ended.contains_key(dag) {
                self.dag_topics.ended.insert(*dag, now);
            }
        }
        self.dag_topics.ended.retain(|d, _| groups.contains_key(d));
        let running = |d: &Hash| self.dag_topics.ended.get(d).is_none_or(|at| now < *at + after_end);
        let mut watched: Vec<(&Hash, &Instant)> = self.dag_topics.watching.iter().collect();
        watched.sort_by(|a, b| b.1.cmp(a.1));
        let mut follow: BTreeSet<Hash> = BTreeSet::new();
        let candidates = groups
            .iter()
            .filter(|(d, g)| g.contains(&me) && running(d))
            .map(|(d, _)| *d)
            .chain(watched.into_iter().map(|(d, _)| *d).filter(|d| ledger.topic_nodes(d) > 0));
        for dag in candidates {
            if follow.len() >= DAG_TOPICS_MAX {
                break;
            }
            follow.insert(dag);
        }
        let joined: BTreeSet<Hash> = self.net.dag_topics().collect();
        for dag in joined.difference(&follow) {
            self.net.unsubscribe(Topic::Dag(*dag));
            self.sync.handle_dag_peers(self.mono_ms(), *dag, []);
        }
        let mono = self.mono_ms();
        for dag in &follow {
            self.net.subscribe(Topic::Dag(*dag));
            // Compared with the connected peers on its topic, and the connected members of its
            // group (gossipsub may not have told us their subscription yet).
            let group = groups.get(dag);
            let mut peers: BTreeSet<NodeId> =
                self.net.topic_peers(Topic::Dag(*dag)).iter().filter_map(node_of_peer).collect();
            peers.extend(
                group
                    .into_iter()
                    .flatten()
                    .filter(|n| **n != me && peer_id_of_node(n).is_some_and(|p| self.connected.contains(&p))),
            );
            self.sync.handle_dag_peers(mono, *dag, peers);
        }
        // Connect to the members of the groups followed, which a large mesh may not have made.
        let redial = Duration::from_millis(GROUP_REDIAL_MS);
        self.dag_topics.dialed.retain(|_, at| now < *at + redial);
        let unconnected: BTreeSet<NodeId> = follow
            .iter()
            .filter_map(|d| groups.get(d))
            .flatten()
            .filter(|n| **n != me && !self.dag_topics.dialed.contains_key(*n))
            .filter(|n| peer_id_of_node(n).is_some_and(|p| !self.connected.contains(&p)))
            .copied()
            .collect();
        for node in unconnected {
            if let Some(peer) = peer_id_of_node(&node) {
                debug!(%peer, "dialing a member of a DAG's group");
                self.dag_topics.dialed.insert(node, now);
                self.dial_announced(peer, node);
            }
        }
        self.dag_topics.groups = groups;
    }
}
