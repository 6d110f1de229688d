//! Outputs: who keeps a copy, and what happens when nobody can serve one.
//!
//! Copies: a node that learns of another node's Done hands it to its own
//! `shoal_mesh::replicas::Replicas` with the peers its `Liveness` calls alive, as the daemon does;
//! when that says to keep a copy, the node fetches it from the providers given (the runner first)
//! and holds it from then on. The outputs weigh nothing here, so the copy is there at once if a
//! provider that holds them is up and reachable; otherwise it fails, as the daemon's does (logged,
//! not retried).
//!
//! Inputs: a node that starts a claimed job first fetches its dependencies' outputs from their
//! runner and its live peers. If none serves one, it asks again after `Settings::lost_recheck_ms`
//! (the daemon's wait); if still none does, `shoal_mesh::lost::judge` decides with the
//! node's ledger and live peers: `Report` (or `NotCurrent`, when the ledger counts another
//! completion) gives the claim up with `Finished::Lost`, so the dependency runs again; while the
//! runner is still live, or the node hears nobody, it keeps asking every `lost_recheck_ms`.

use shoal_dag::Hash;
use shoal_mesh::core::Finished;
use shoal_mesh::ledger::{JobState, NodeId};
use shoal_mesh::lost::{self, Unfetchable, Verdict};
use shoal_mesh::replicas::Copy;

use super::{Ev, Sim};

impl Sim {
    /// A Done of `runner`'s on `topic`, new to node `n`: its `Replicas` decides whether `n`
    /// keeps a copy, among the live nodes that hear of it (with a topic per DAG, its topic's
    /// members, as `shoal node` ranks a DAG's group).
    pub(super) fn keep_copies(&mut self, n: u32, topic: u32, record: Hash, runner: NodeId) {
        let now = self.now;
        let members: Option<std::collections::BTreeSet<NodeId>> = (self.cfg.group_nodes() > 0)
            .then(|| self.topics[topic as usize].members.iter().map(|&m| self.nodes[m as usize].id).collect());
        let node = &mut self.nodes[n as usize];
        let mut live = node.liveness.live(now);
        if let Some(members) = members {
            live.retain(|p| members.contains(p));
        }
        node.replicas.handle_done(now, record, runner, &live);
        while let Some(copy) = self.nodes[n as usize].replicas.poll_copy() {
            self.copy(n, copy);
        }
    }

    /// Node `n` fetches the outputs of `record` from the first provider that has them.
    fn copy(&mut self, n: u32, Copy { record, providers }: Copy) {
        let Some(&(d, j)) = self.job_of_record.get(&record) else { return };
        let held = providers.iter().filter_map(|p| self.index_of.get(p).copied()).any(|p| {
            self.truth[d as usize][j as usize].holders.contains(&(record, p)) && self.up(p) && self.reachable(n, p)
        });
        let t = &mut self.truth[d as usize][j as usize];
        if !held {
            self.report.copies_failed += 1;
        } else if !t.holders.contains(&(record, n)) {
            t.holders.push((record, n));
            self.report.copies += 1;
        }
    }

    /// The first dependency of job `j` of DAG `d` whose outputs node `n` can fetch from nobody:
    /// itself, the dependency's runner, or a peer its `Liveness` calls alive, that holds them, is
    /// up and is on its side of a partition.
    pub(super) fn unfetchable_input(&self, n: u32, d: u32, j: u32) -> Option<Unfetchable> {
        let node = &self.nodes[n as usize];
        let core = node.core.as_ref().expect("up");
        let sd = &self.dags[d as usize];
        for &k in &sd.deps[j as usize] {
            let job = &sd.dag.jobs[k as usize].id;
            let (record, runner) = match core.ledger().job_state(&sd.hash, job, self.clock(n)) {
                Some(JobState::Done { record, node, .. }) => (record, Some(node)),
                // Another completion of it counts now, or none: the record the run started with
                // is gone from this view (`lost::judge` says `NotCurrent`).
                _ => (self.truth[d as usize][k as usize].holders.last().map_or(Hash::of(b""), |h| h.0), None),
            };
            let fetchable = self.truth[d as usize][k as usize].holders.iter().any(|&(r, h)| {
                if r != record {
                    return false;
                }
                let id = self.nodes[h as usize].id;
                (h == n || Some(id) == runner || node.liveness.is_live(self.now, &id))
                    && self.up(h)
                    && self.reachable(n, h)
            });
            if !fetchable {
                return Some(Unfetchable { dag: sd.hash, job: job.clone(), record, runner });
            }
        }
        None
    }

    /// Node `n` asks once more for the inputs of its claim `claim`: it runs, reports an input
    /// lost, or waits another `lost_recheck_ms`, as `lost::judge` says.
    pub(super) fn recheck(&mut self, n: u32, claim: Hash) {
        let Some(&(d, j, _)) = self.nodes[n as usize].running.get(&claim) else { return };
        let Some(u) = self.unfetchable_input(n, d, j) else {
            return self.run_job(n, claim, d, j);
        };
        let now = self.now;
        let node = &self.nodes[n as usize];
        let core = node.core.as_ref().expect("up");
        let verdict = lost::judge(core.ledger(), self.clock(n), node.id, &node.liveness.live(now), &u);
        match verdict {
            _ if lost::reader_gives_up(verdict) => {
                if verdict == Verdict::Report {
                    self.report.lost_reported += 1;
                }
                self.nodes[n as usize].running.remove(&claim);
                self.truth[d as usize][j as usize].live.retain(|(_, c)| *c != claim);
                let lost = Finished::Lost { job: u.job, record: u.record };
                let clock = self.clock(n);
                self.nodes[n as usize].core.as_mut().expect("up").handle_job_finished(clock, claim, lost);
                self.drain(n);
            }
            _ => {
                let epoch = self.nodes[n as usize].epoch;
                self.push(now + self.cfg.settings.lost_recheck_ms, Ev::Recheck { node: n, epoch, claim });
            }
        }
    }
}
