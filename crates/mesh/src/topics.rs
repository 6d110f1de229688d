//! Topic membership: which gossip topic carries a DAG's facts, and which nodes subscribe to it.
//! One topic that every node subscribes to ([`TopicMode::One`]), or for each DAG a topic of its
//! own, subscribed by a group of the nodes that fit it ([`TopicMode::PerDag`]): `shoal node` gives
//! a DAG one when its submitter saw a mesh above `Settings::dag_topics_above_nodes` (the size goes
//! into the DAG's submit), and works the group out with [`group_for`], as the simulator does.

use std::collections::BTreeSet;

use shoal_dag::{Dag, Hash, Requirements};

use crate::capabilities::{Capabilities, SPEED_REFERENCE, mismatches};
use crate::ledger::NodeId;

/// Nodes fitting each rarer requirement of a DAG (a GPU, aarch64) its topic takes in at least.
pub const FIT_PER_KIND_MIN: usize = 8;

/// How DAGs map to topics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TopicMode {
    /// One topic carries every fact to every node (`shoal node` up to 500 nodes).
    One,
    /// Each DAG has its own topic, subscribed by `group_nodes` nodes chosen by weighted
    /// rendezvous on the DAG's hash among those that fit it.
    PerDag {
        group_nodes: usize,
        /// A node's rendezvous weight for a topic is its speed to this power (0: blind). Lower
        /// than the core's placement exponent, or the fastest nodes join nearly every topic
        /// and carry its gossip.
        speed_exponent: f64,
    },
}

/// Rendezvous score of a node for a DAG's topic (a fast mixer of the first 8 bytes of each).
pub fn affinity(dag: &Hash, node: &NodeId) -> u64 {
    let mut h = [0u8; 8];
    for (i, b) in h.iter_mut().enumerate() {
        *b = dag.0[i] ^ node[i];
    }
    let x = u64::from_le_bytes(h).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// The nodes that subscribe to `dag`'s topic under [`TopicMode::PerDag`]: the `group_nodes` of
/// `candidates` that rank highest for the DAG's hash among those fitting its most common
/// requirement, topped up with the highest ranking of those fitting each rarer requirement (a
/// GPU, aarch64) until [`FIT_PER_KIND_MIN`] of them are in. Under [`TopicMode::One`], every
/// candidate.
pub fn group_for(mode: TopicMode, hash: &Hash, dag: &Dag, candidates: &[(NodeId, &Capabilities)]) -> BTreeSet<NodeId> {
    let TopicMode::PerDag { group_nodes, speed_exponent } = mode else {
        return candidates.iter().map(|(n, _)| *n).collect();
    };
    let kinds = requirement_kinds(dag);
    let mut out: BTreeSet<NodeId> = BTreeSet::new();
    for (i, (req, _)) in kinds.into_iter().enumerate() {
        let fits = |caps: &Capabilities| mismatches(req, caps).is_empty();
        let want = if i == 0 { group_nodes } else { FIT_PER_KIND_MIN.min(group_nodes) };
        let have = candidates.iter().filter(|(n, c)| out.contains(n) && fits(c)).count();
        if have >= want {
            continue;
        }
        // Weighted rendezvous, as the core ranks jobs: faster nodes serve more DAGs (smallest
        // score first).
        let mut fit: Vec<(f64, NodeId)> = candidates
            .iter()
            .filter(|(n, c)| !out.contains(n) && fits(c))
            .map(|(n, c)| (score(hash, n, c, speed_exponent), *n))
            .collect();
        let g = (want - have).min(fit.len());
        if g > 0 {
            fit.select_nth_unstable_by(g - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
        out.extend(fit[..g].iter().map(|(_, n)| *n));
    }
    out
}

/// A node's rendezvous score for a DAG's topic, smallest first: ln(−ln u) − k·ln(speed), u
/// uniform from [`affinity`] (weighted rendezvous, as the core ranks jobs).
fn score(hash: &Hash, node: &NodeId, caps: &Capabilities, speed_exponent: f64) -> f64 {
    let u = ((affinity(hash, node) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let speed = f64::from(caps.speed.max(1)) / f64::from(SPEED_REFERENCE);
    (-u.ln()).ln() - speed_exponent * speed.ln()
}

/// The node that takes the place of a member gone from `dag`'s topic: of `candidates` (up, not
/// members) fitting the DAG's most common requirement, the next in [`group_for`]'s rank, so
/// every node that knows the same candidates names the same one. None under
/// [`TopicMode::One`] (every node is a member) or if none fits.
pub fn replacement(mode: TopicMode, hash: &Hash, dag: &Dag, candidates: &[(NodeId, &Capabilities)]) -> Option<NodeId> {
    let TopicMode::PerDag { speed_exponent, .. } = mode else { return None };
    let common = most_common_requirements(dag)?;
    candidates
        .iter()
        .filter(|(_, c)| mismatches(common, c).is_empty())
        .map(|(n, c)| (score(hash, n, c, speed_exponent), *n))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, n)| n)
}

/// The requirements most of a DAG's jobs share (the first of the most common, as `group_for`
/// orders them).
fn most_common_requirements(dag: &Dag) -> Option<&Requirements> {
    requirement_kinds(dag).first().map(|k| k.0)
}

/// Each distinct set of requirements of a DAG's jobs with how many jobs ask for it, the most
/// common first (a stable sort: ties in the order the jobs name them).
fn requirement_kinds(dag: &Dag) -> Vec<(&Requirements, usize)> {
    let mut kinds: Vec<(&Requirements, usize)> = Vec::new();
    for j in &dag.jobs {
        match kinds.iter_mut().find(|(r, _)| *r == &j.requirements) {
            Some(k) => k.1 += 1,
            None => kinds.push((&j.requirements, 1)),
        }
    }
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dag::{Arch, parse_dag};

    fn caps(speed: u32, gpu: bool) -> Capabilities {
        Capabilities {
            arch: Arch::X86_64,
            cores: 4,
            memory_bytes: 8 << 30,
            cpu_flags: BTreeSet::new(),
            gpus: if gpu { vec![crate::capabilities::GpuCap::model("g")] } else { vec![] },
            labels: Default::default(),
            microvm: true,
            vm_accel: None,
            speed,
            emulated: Vec::new(),
        }
    }

    fn dag(text: &str) -> Dag {
        parse_dag("t.json", text).expect("parses")
    }

    #[test]
    fn one_topic_is_everyone() {
        let c = caps(SPEED_REFERENCE, false);
        let nodes: Vec<(NodeId, &Capabilities)> = (1..=5u8).map(|i| ([i; 32], &c)).collect();
        let d = dag(r#"{"version": 1, "jobs": [{"id": "a", "image": "b:1", "command": ["x"]}]}"#);
        assert_eq!(group_for(TopicMode::One, &Hash::of(b"d"), &d, &nodes).len(), 5);
    }

    #[test]
    fn a_group_takes_its_size_and_enough_of_each_rarer_kind() {
        let plain = caps(SPEED_REFERENCE, false);
        let gpu = caps(SPEED_REFERENCE, true);
        let mut nodes: Vec<(NodeId, &Capabilities)> = (1..=40u8).map(|i| ([i; 32], &plain)).collect();
        nodes.extend((41..=50u8).map(|i| ([i; 32], &gpu)));
        let d = dag(r#"{"version": 1, "jobs": [{"id": "a", "image": "b:1", "command": ["x"]},
            {"id": "b", "image": "b:1", "command": ["x"]},
            {"id": "g", "image": "b:1", "command": ["x"], "requirements": {"gpu": 1}}]}"#);
        let mode = TopicMode::PerDag { group_nodes: 12, speed_exponent: 4.0 };
        let g = group_for(mode, &Hash::of(b"d"), &d, &nodes);
        let gpus = g.iter().filter(|n| n[0] > 40).count();
        assert!(gpus >= FIT_PER_KIND_MIN, "{gpus} GPU nodes in {g:?}");
        assert!(g.len() >= 12 && g.len() <= 12 + FIT_PER_KIND_MIN);
        assert_eq!(g, group_for(mode, &Hash::of(b"d"), &d, &nodes), "deterministic");
    }

    #[test]
    fn a_member_gone_is_replaced_by_the_next_in_rank_and_everyone_names_the_same() {
        let speeds: Vec<Capabilities> = (0..30u32).map(|i| caps(SPEED_REFERENCE / 2 + i * 40, false)).collect();
        let nodes: Vec<(NodeId, &Capabilities)> = (0..30u8).map(|i| ([i + 1; 32], &speeds[i as usize])).collect();
        let d = dag(r#"{"version": 1, "jobs": [{"id": "a", "image": "b:1", "command": ["x"]}]}"#);
        let (h, mode) = (Hash::of(b"d"), TopicMode::PerDag { group_nodes: 8, speed_exponent: 4.0 });
        let group = group_for(mode, &h, &d, &nodes);
        assert_eq!(group.len(), 8);
        for gone in &group {
            // The nodes still up that are not members: the replacement is the one node the
            // group of the survivors takes in.
            let up: Vec<(NodeId, &Capabilities)> = nodes.iter().filter(|(n, _)| n != gone).copied().collect();
            let outside: Vec<(NodeId, &Capabilities)> =
                up.iter().filter(|(n, _)| !group.contains(n)).copied().collect();
            let next = replacement(mode, &h, &d, &outside).expect("a node is left");
            let regroup = group_for(mode, &h, &d, &up);
            let mut want = group.clone();
            want.remove(gone);
            want.insert(next);
            assert_eq!(regroup, want, "replacing {gone:?}");
            // Another node knowing the candidates in another order names the same one.
            let mut shuffled = outside.clone();
            shuffled.reverse();
            assert_eq!(replacement(mode, &h, &d, &shuffled), Some(next));
        }
        assert_eq!(replacement(TopicMode::One, &h, &d, &nodes), None);
    }
}
