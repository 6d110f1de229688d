//! Ledger compaction (`shoal_mesh::ledger::compact`), as the daemon runs it: each node's core
//! compacts the DAGs that ended more than the retention ago when its `next_compact_ms` comes,
//! the summaries go to its store (here [`Sim::summaries`]), and a restarted node restores them
//! before its facts. What a node's ledger holds is sampled for the ledger's size over time.

use std::collections::BTreeMap;

use shoal_dag::Hash;

use super::Sim;

/// What a compacted DAG costs a node's ledger besides its summary blob: its entry in the
/// store's `compacted` index, bytes (the daemon's: a 32-byte key and a 32-byte summary hash).
pub(super) const TOMBSTONE_BYTES: u64 = 64;

impl Sim {
    /// Node `n` compacts when its core says it is due.
    pub(super) fn compact(&mut self, n: u32) {
        let clock = self.clock(n);
        let Some(core) = self.nodes[n as usize].core.as_mut() else { return };
        if core.next_compact_ms() > clock {
            return;
        }
        let summaries = core.compact(clock);
        // Facts may go without a DAG of them compacted now (a late fact of one compacted before):
        // the digest is counted again whatever it dropped.
        self.recount_digest(n);
        if summaries.is_empty() {
            return;
        }
        self.report.compacted += summaries.len() as u64;
        for s in summaries {
            self.nodes[n as usize].compacted.push(s.dag);
            self.summaries.entry(s.dag).or_insert(s);
        }
        self.drain(n);
    }

    /// Node `n` adopted a peer's compaction of `dag` (anti-entropy's tombstones).
    pub(super) fn adopted(&mut self, n: u32, dag: Hash) {
        self.nodes[n as usize].compacted.push(dag);
        self.recount_digest(n);
    }

    /// The simulator's per-topic digest of what node `n` holds, counted again from its ledger
    /// (compaction removed facts from it).
    pub(super) fn recount_digest(&mut self, n: u32) {
        let Some(core) = self.nodes[n as usize].core.as_mut() else { return };
        // The ids compaction dropped come out with the replaced `Alive`s; counted from the
        // ledger below, they must not be taken off again at the next fact held.
        core.take_replaced_facts();
        let core = &*core;
        let mut digest: BTreeMap<u32, ([u8; 32], u32)> = BTreeMap::new();
        for f in core.ledger().verified_facts() {
            let id = f.id();
            let Some(meta) = self.meta.get(&id) else { continue };
            let e = digest.entry(meta.topic).or_insert(([0; 32], 0));
            for (a, b) in e.0.iter_mut().zip(id.0) {
                *a ^= b;
            }
            e.1 += 1;
        }
        self.nodes[n as usize].digest = digest;
    }

    /// The bytes node `n`'s ledger holds: its facts' CBOR and a tombstone per compacted DAG.
    pub(super) fn ledger_bytes(&self, n: u32) -> u64 {
        let Some(core) = self.nodes[n as usize].core.as_ref() else { return 0 };
        let facts: u64 =
            core.ledger().verified_facts().map(|f| self.meta.get(&f.id()).map_or(0, |m| u64::from(m.bytes))).sum();
        facts + core.ledger().compacted_count() as u64 * TOMBSTONE_BYTES
    }

    /// Whether node `n`'s view has DAG `d` ended: every job done, failed or cancelled, or
    /// compacted (which only an ended DAG is).
    pub(super) fn ended_at(&self, n: u32, d: usize) -> bool {
        let Some(core) = self.nodes[n as usize].core.as_ref() else { return true };
        let hash = self.dags[d].hash;
        core.ledger().compacted(&hash).is_some()
            || core.ledger().dag_state(&hash, self.clock(n)).is_some_and(|s| {
                s.jobs.values().all(|j| {
                    matches!(
                        j,
                        shoal_mesh::ledger::JobState::Done { .. }
                            | shoal_mesh::ledger::JobState::Failed { .. }
                            | shoal_mesh::ledger::JobState::Cancelled
                    )
                })
            })
    }

    /// Whether some up member of topic `t` compacted one of its DAGs: members then hold other
    /// facts by design (each compacts when its own timer comes), and agree by the compaction's
    /// rule, not by digests.
    pub(super) fn compacting(&self, t: usize, members: &[u32]) -> bool {
        self.topics[t].dags.iter().any(|&d| {
            let hash = self.dags[d as usize].hash;
            members
                .iter()
                .any(|&m| self.nodes[m as usize].core.as_ref().is_some_and(|c| c.ledger().compacted(&hash).is_some()))
        })
    }
}
