//! Churn: crashes (back later from what the node persisted), leaves and joins, and what the mesh
//! does once it notices a node gone.

use std::sync::Arc;

use shoal_dag::{Dag, Hash};
use shoal_mesh::capabilities::Capabilities;
use shoal_mesh::core::NodeCore;
use shoal_mesh::ledger::NodeId;
use shoal_mesh::liveness::Liveness;
use shoal_mesh::replicas::Replicas;
use shoal_mesh::sync::{CatchUp, Sync};
use shoal_mesh::topics;

use super::{Ev, Sim, Status};

/// Mean time a crashed node stays down before it restarts, ms.
pub(super) const DOWNTIME_MEAN_MS: f64 = 10.0 * 60_000.0;

impl Sim {
    pub(super) fn churn_gap(&mut self) -> u64 {
        let per_ms = self.cfg.churn_per_hour * self.cfg.nodes as f64 / 3_600_000.0;
        (self.rng.exp(1.0 / per_ms) as u64).max(1)
    }

    /// One churn event: a crash (back later), a leave, or a join, in proportion 2 : 1 : 1.
    pub(super) fn churn(&mut self) {
        let up: Vec<u32> = (0..self.nodes.len() as u32).filter(|&n| self.up(n)).collect();
        match self.rng.range(0, 3) {
            0 => {
                let i = self.nodes.len();
                self.add_node(i);
                self.share_peer_table();
                self.report.joins += 1;
                let n = i as u32;
                let epoch = 0;
                // A node's `Sync` starts an exchange as soon as it runs.
                self.push(self.now, Ev::AntiEntropy { node: n, epoch });
                if self.cfg.group_nodes() == 0 {
                    self.join_global(n);
                }
                self.schedule_liveness(n, self.now);
            }
            r => {
                if up.len() > 1 {
                    let n = up[self.rng.range(0, up.len() as u64 - 1) as usize];
                    self.crash(n, r == 1);
                }
            }
        }
    }

    /// A new or restarted node on the one topic: it connects to its mesh peers (and learns the
    /// others from their heartbeats) and gets every live DAG.
    pub(super) fn join_global(&mut self, n: u32) {
        self.subscribe(n, 0);
        for d in self.topics[0].dags.clone() {
            if self.left[d as usize] > 0 && !self.nodes[n as usize].persisted_dags.contains(&self.dags[d as usize].hash)
            {
                self.give_dag(n, d);
            }
        }
    }

    pub(super) fn crash(&mut self, n: u32, permanent: bool) {
        if !self.up(n) {
            return;
        }
        let now = self.now;
        let node = &mut self.nodes[n as usize];
        let core = node.core.take().expect("up");
        node.persisted = core.ledger().verified_facts().collect();
        node.status = if permanent { Status::Gone } else { Status::Down };
        node.epoch += 1;
        node.pending.clear();
        node.flush_scheduled = false;
        node.tick_at = u64::MAX;
        node.liveness_at = u64::MAX;
        node.liveness_gen += 1;
        let lost: Vec<(Hash, (u32, u32, u64))> = std::mem::take(&mut node.running).into_iter().collect();
        let epoch = node.epoch;
        for (claim, (d, j, started)) in lost {
            self.report.wasted_ms += now - started;
            self.truth[d as usize][j as usize].live.retain(|(_, c)| *c != claim);
        }
        if permanent {
            self.report.leaves += 1;
            self.nodes[n as usize].persisted.clear();
            self.nodes[n as usize].compacted.clear();
        } else {
            self.report.crashes += 1;
            let back = self.rng.exp(DOWNTIME_MEAN_MS) as u64;
            self.push(now + back.max(1), Ev::Restart { node: n });
        }
        // Its connections are noticed gone after the liveness timeout (each peer's `Liveness`
        // notices the silence on its own, from the heartbeats it no longer hears).
        self.push(now + self.cfg.settings.liveness_timeout_ms, Ev::Detect { node: n, epoch });
    }

    /// The gossip mesh noticed a node's connections gone: its topics drop it, and a DAG topic left
    /// with fewer than `group_nodes` members takes the next node in rendezvous order. (Each core
    /// stops ranking it when its own `Liveness` forgets it.)
    pub(super) fn forget(&mut self, n: u32) {
        let topics: Vec<u32> = self.nodes[n as usize].topics.iter().copied().collect();
        for t in topics {
            self.unsubscribe(n, t);
            if self.cfg.group_nodes() == 0 {
                continue;
            }
            let live_dags: Vec<u32> =
                self.topics[t as usize].dags.iter().copied().filter(|&d| self.left[d as usize] > 0).collect();
            if live_dags.is_empty() {
                continue;
            }
            let up_members = self.topics[t as usize].members.iter().filter(|&&m| self.up(m)).count();
            if up_members < self.cfg.group_nodes() {
                let d = live_dags[0];
                let up: Vec<(NodeId, &Capabilities)> = (0..self.nodes.len() as u32)
                    .filter(|&m| self.up(m) && !self.topics[t as usize].members.contains(&m))
                    .map(|m| (self.nodes[m as usize].id, &self.nodes[m as usize].caps))
                    .collect();
                let sd = &self.dags[d as usize];
                let next = topics::replacement(self.cfg.settings.topics, &sd.hash, &sd.dag, &up);
                if let Some(m) = next.map(|id| self.index_of[&id]) {
                    self.subscribe(m, t);
                    for d in live_dags {
                        self.give_dag(m, d);
                    }
                    // Its `Sync` compares the DAG's facts with a topic peer at once.
                    self.sync_dag_peers(m);
                    self.sync_tick(m);
                }
            }
            self.tell_topic_peers(t);
        }
    }

    /// A crashed node comes back with what it persisted: its ledger's facts and DAG files.
    pub(super) fn restart(&mut self, n: u32) {
        if self.nodes[n as usize].status != Status::Down {
            return;
        }
        // The core reads the node's own clock; the rest of the restart is on virtual time.
        let (now, clock) = (self.now, self.clock(n));
        let node = &mut self.nodes[n as usize];
        let mut core = NodeCore::with_config(node.key.clone(), node.caps.clone(), self.cfg.settings.core);
        core.handle_peer_table(clock, self.peer_table.clone());
        // Its stored view has every other node's lease run out: no claim before it caught up.
        let others = node.persisted.iter().any(|f| f.fact().author != node.id);
        node.catch_up = CatchUp::after_restart(now, others, &self.cfg.settings);
        if node.catch_up.is_some() {
            core.set_claiming(clock, false);
        }
        // The compacted DAGs' summaries first, as the daemon: their facts are refused after.
        for dag in &node.compacted {
            if let Some(s) = self.summaries.get(dag) {
                core.restore_compacted(s);
            }
        }
        for f in std::mem::take(&mut node.persisted) {
            // What it stored, it admitted before: not judged by the clock again, as the daemon.
            core.restore_fact(clock, f);
        }
        node.core = Some(core);
        node.sync = Some(Sync::new(&self.cfg.settings));
        // A new process: it has heard nobody yet.
        node.liveness = Liveness::new(&self.cfg.settings);
        node.replicas = Replicas::new(node.id, &self.cfg.settings);
        node.status = Status::Up;
        node.tick_at = u64::MAX;
        let epoch = node.epoch;
        for h in node.persisted_dags.clone() {
            let dag: Arc<Dag> = self.dags[self.dag_of[&h] as usize].dag.clone();
            self.nodes[n as usize].core.as_mut().expect("up").handle_dag(clock, h, dag);
        }
        // What the core made while reloading (claims, as `shoal node` would make them) is
        // published by the drain below.
        // A node's `Sync` starts an exchange as soon as it runs (after its topics below).
        self.push(now, Ev::AntiEntropy { node: n, epoch });
        if self.cfg.group_nodes() == 0 {
            let was = self.nodes[n as usize].topics.contains(&0);
            if was {
                self.unsubscribe(n, 0);
            }
            self.join_global(n);
        } else {
            // Back into the topics of its DAGs that are still running.
            let mine: Vec<u32> = self.nodes[n as usize].persisted_dags.iter().map(|h| self.dag_of[h]).collect();
            for d in mine {
                let t = self.topic_of_dag[d as usize];
                if self.left[d as usize] == 0 || t == u32::MAX {
                    continue;
                }
                if self.topics[t as usize].members.contains(&n) {
                    self.unsubscribe(n, t);
                }
                self.subscribe(n, t);
                self.tell_topic_peers(t);
            }
        }
        self.drain(n);
        self.schedule_liveness(n, now);
    }
}
