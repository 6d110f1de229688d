//! What the simulator checks as the run goes: after every step, that a node runs only what its own
//! view says it holds; and whether the mesh converged (after a partition heals, and at the end).

use shoal_mesh::ledger::JobState;

use super::{Ev, Sim};

/// How often convergence is checked after a partition heals and at the end, ms.
pub(super) const CONVERGE_CHECK_MS: u64 = 1_000;
/// How long after the last job is first done the mesh may take to converge and every view to
/// see every DAG ended, ms: a Done lost with a node that left costs a lease and a rerun.
pub(super) const CONVERGE_LIMIT_MS: u64 = 3 * 3_600_000;

impl Sim {
    /// Invariant after every step: a node runs only jobs its own view says its claim holds — so
    /// no view has two winners it acts on — and every claim it runs is in its ledger.
    pub(super) fn check_node(&mut self, n: u32) {
        let node = &self.nodes[n as usize];
        let core = node.core.as_ref().expect("up");
        let mut bad = Vec::new();
        for (claim, &(d, j, _)) in &node.running {
            let sd = &self.dags[d as usize];
            let state = core.ledger().job_state(&sd.hash, &sd.dag.jobs[j as usize].id, self.clock(n));
            if !matches!(state, Some(JobState::Claimed { claim: c, node: w, .. }) if c == *claim && w == node.id) {
                bad.push(format!("node {n} runs {}/j{j} but its view says {state:?}", sd.hash.short()));
            }
        }
        for b in bad {
            self.violation(b);
        }
    }

    /// Whether node `n`'s clock is within the bound the mesh believes (`clock_skew_max_ms`): one
    /// further off refuses its peers' facts or has its own refused, so it holds other facts than
    /// they do, by design, and is left out of the convergence checks (the run counts what was
    /// refused in `refused_ahead`).
    pub(super) fn clock_in_bound(&self, n: u32) -> bool {
        self.nodes[n as usize].clock_offset_ms.unsigned_abs() <= self.cfg.settings.core.clock_skew_max_ms
    }

    /// With `marks`: every fact made before the mark that some up member of its topic holds, every
    /// up member holds. Without: the up members of every topic hold the same facts (equal digests).
    /// Members whose clock is off beyond the bound are not counted.
    pub(super) fn converged(&mut self, marks: Option<&[usize]>) -> bool {
        for t in 0..self.topics.len() {
            let up: Vec<u32> =
                self.topics[t].members.iter().copied().filter(|&m| self.up(m) && self.clock_in_bound(m)).collect();
            if up.len() < 2 {
                continue;
            }
            match marks {
                None if self.compacting(t, &up) => {}
                None => {
                    let d0 = self.nodes[up[0] as usize].digest.get(&(t as u32));
                    if up.iter().any(|&m| self.nodes[m as usize].digest.get(&(t as u32)) != d0) {
                        return false;
                    }
                }
                Some(marks) => {
                    let want = marks.get(t).copied().unwrap_or(0);
                    let from = up.iter().map(|&m| self.advance_synced(m, t as u32)).min().unwrap_or(0);
                    for id in &self.topics[t].facts[from.min(want)..want] {
                        let held = up
                            .iter()
                            .filter(|&&m| self.nodes[m as usize].core.as_ref().expect("up").ledger().get(id).is_some())
                            .count();
                        if held > 0 && held < up.len() {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// Every DAG ended in the view of every up member of its topic (whose clock is in bound).
    pub(super) fn views_ended(&self) -> bool {
        (0..self.dags.len()).all(|d| {
            let t = self.topic_of_dag[d];
            t != u32::MAX
                && self.topics[t as usize]
                    .members
                    .iter()
                    .filter(|&&m| self.clock_in_bound(m))
                    .all(|&m| self.ended_at(m, d))
        })
    }

    pub(super) fn converge_check(&mut self) -> bool {
        if let Some((healed, marks)) = self.heal.take() {
            if self.converged(Some(&marks)) {
                self.report.converge_after_heal_ms = Some(self.now - healed);
            } else {
                self.heal = Some((healed, marks));
            }
        }
        if let Some(end) = self.finished_at {
            if self.heal.is_none() && self.converged(None) && self.views_ended() {
                self.report.converge_at_end_ms = Some(self.now - end);
                return true;
            }
            if self.now > end + CONVERGE_LIMIT_MS {
                self.violation(format!(
                    "the mesh did not converge within {CONVERGE_LIMIT_MS} ms of the last DAG ending"
                ));
                return true;
            }
        }
        self.push(self.now + CONVERGE_CHECK_MS, Ev::Converge);
        false
    }
}
