//! Which nodes keep copies: of a run's outputs (so they outlive the runner), and of a submitted
//! DAG's blobs (so they outlive the submitter). Both by rendezvous hashing over the nodes a node
//! sees alive: every node computes the same holders without talking, and a node that leaves moves
//! only its own share.
//!
//! Sans-IO: the driver hands in each completion it learns of from another node
//! ([`Replicas::handle_done`]) and the live peers; [`Replicas::poll_copy`] says which outputs
//! this node should fetch and from whom.

use std::collections::VecDeque;

use shoal_dag::Hash;

use crate::Settings;
use crate::ledger::NodeId;

/// Outputs to fetch and keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// The run record whose outputs to keep.
    pub record: Hash,
    /// Who may serve them: the runner first, then the other live peers.
    pub providers: Vec<NodeId>,
}

/// One node's choice of the outputs it keeps a copy of.
#[derive(Debug)]
pub struct Replicas {
    me: NodeId,
    /// Nodes besides the runner that keep each output.
    others: usize,
    out: VecDeque<Copy>,
}

impl Replicas {
    pub fn new(me: NodeId, settings: &Settings) -> Replicas {
        Replicas { me, others: settings.replicas.saturating_sub(1), out: VecDeque::new() }
    }

    /// A run of another node finished with `record` (a Done fact arrived): this node keeps a
    /// copy when it is among the `replicas - 1` nodes that rank first for the record among the
    /// live nodes (`live`, this one excluded), the runner left out.
    pub fn handle_done(&mut self, _now_ms: u64, record: Hash, runner: NodeId, live: &[NodeId]) {
        if self.others == 0 || runner == self.me {
            return;
        }
        let nodes: Vec<NodeId> = live.iter().copied().chain([self.me]).collect();
        if !output_holders(record, runner, &nodes, self.others).contains(&self.me) {
            return;
        }
        let providers =
            std::iter::once(runner).chain(live.iter().copied().filter(|n| *n != runner && *n != self.me)).collect();
        self.out.push_back(Copy { record, providers });
    }

    /// Outputs this node should fetch and keep.
    pub fn poll_copy(&mut self) -> Option<Copy> {
        self.out.pop_front()
    }
}

/// The `count` nodes of `nodes` (the runner left out) that keep copies of `record`'s outputs,
/// best ranked first.
pub fn output_holders(record: Hash, runner: NodeId, nodes: &[NodeId], count: usize) -> Vec<NodeId> {
    let mut ranked: Vec<(blake3::Hash, NodeId)> = nodes
        .iter()
        .filter(|n| **n != runner)
        .map(|n| {
            let mut h = blake3::Hasher::new();
            h.update(&record.0);
            h.update(n);
            (h.finalize(), *n)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    ranked.into_iter().take(count).map(|(_, n)| n).collect()
}

/// `peers` ranked for holding the blobs of submitted DAG `dag`, best first: every submitter of
/// one DAG asks the same peers first.
pub fn dag_holders(dag: Hash, peers: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
    let mut ranked: Vec<(blake3::Hash, NodeId)> = peers
        .into_iter()
        .map(|n| {
            let mut h = blake3::Hasher::new();
            h.update(b"shoal hold");
            h.update(&dag.0);
            h.update(&n);
            (h.finalize(), n)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    ranked.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u8) -> Vec<NodeId> {
        (1..=n).map(|i| [i; 32]).collect()
    }

    #[test]
    fn every_node_picks_the_same_holders_and_never_the_runner() {
        let all = nodes(6);
        let record = Hash::of(b"a record");
        let runner = all[0];
        let holders = output_holders(record, runner, &all, 2);
        assert_eq!(holders.len(), 2);
        assert!(!holders.contains(&runner));
        let mut keepers = Vec::new();
        for me in &all {
            let mut r = Replicas::new(*me, &Settings { replicas: 3, ..Settings::default() });
            let live: Vec<NodeId> = all.iter().copied().filter(|n| n != me).collect();
            r.handle_done(0, record, runner, &live);
            if let Some(c) = r.poll_copy() {
                assert_eq!(c.providers[0], runner, "the runner is asked first");
                assert!(!c.providers.contains(me));
                keepers.push(*me);
            }
        }
        keepers.sort();
        let mut expected = holders;
        expected.sort();
        assert_eq!(keepers, expected);
    }

    #[test]
    fn one_replica_keeps_no_copy_and_a_node_never_copies_its_own_run() {
        let all = nodes(3);
        let mut one = Replicas::new(all[1], &Settings { replicas: 1, ..Settings::default() });
        one.handle_done(0, Hash::of(b"r"), all[0], &all);
        assert!(one.poll_copy().is_none());
        let mut own = Replicas::new(all[0], &Settings { replicas: 16, ..Settings::default() });
        own.handle_done(0, Hash::of(b"r"), all[0], &all[1..]);
        assert!(own.poll_copy().is_none());
    }

    #[test]
    fn a_node_leaving_moves_only_its_share() {
        let all = nodes(20);
        let runner = [99; 32];
        let mut moved = 0;
        for i in 0..200u32 {
            let record = Hash::of(&i.to_le_bytes());
            let before = output_holders(record, runner, &all, 1);
            let after = output_holders(record, runner, &all[1..], 1);
            if before != after {
                assert_eq!(before, vec![all[0]], "only the records the leaver held move");
                moved += 1;
            }
        }
        assert!(moved > 0 && moved < 40, "{moved} of 200 moved");
    }

    #[test]
    fn dag_holders_rank_alike_whatever_the_order_given() {
        let mut all = nodes(5);
        let a = dag_holders(Hash::of(b"dag"), all.clone());
        all.reverse();
        assert_eq!(a, dag_holders(Hash::of(b"dag"), all));
    }
}
