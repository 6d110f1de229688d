//! Metrics over time (a sample every `Config::sample_ms`, with the costlier invariants), the end's
//! checks and the final report.

use shoal_mesh::ledger::JobState;

use super::{Node, Sim, Status};
use crate::{Percentiles, Report, SampleRow};

/// DAG topics whose views are compared at each sample (the check costs O(jobs) per topic).
pub(super) const VIEW_CHECKS_PER_SAMPLE: usize = 8;

impl Sim {
    /// Metrics over time, and the invariants that cost more than a step: two members of a topic
    /// holding the same facts agree on every job of it.
    pub(super) fn sample(&mut self) {
        let bytes: u64 = self.nodes.iter().map(|n| n.bytes_in).sum();
        let dt_s = (self.now - self.last_sample.0) as f64 / 1000.0;
        let ups: Vec<u32> = (0..self.nodes.len() as u32).filter(|&n| self.up(n)).collect();
        let ledger: Vec<u64> = ups.iter().map(|&n| self.ledger_bytes(n)).collect();
        let facts: usize =
            ups.iter().filter_map(|&n| self.nodes[n as usize].core.as_ref()).map(|c| c.ledger().len()).sum();
        let up: Vec<&Node> = self.nodes.iter().filter(|n| n.status == Status::Up).collect();
        let row = SampleRow {
            t_s: self.now as f64 / 1000.0,
            done: self.truth.iter().flatten().filter(|t| t.done_at.is_some()).count(),
            running: up.iter().map(|n| n.running.len()).sum(),
            up_nodes: up.len(),
            gossip_bytes_per_node_s: (bytes - self.last_sample.1) as f64 / up.len().max(1) as f64 / dt_s.max(1e-9),
            starts: self.report.starts,
            duplicates: self.truth.iter().flatten().map(|t| u64::from(t.concurrent)).sum(),
            events: self.processed,
            ledger_bytes_mean: ledger.iter().sum::<u64>() as f64 / ledger.len().max(1) as f64,
            ledger_bytes_max: ledger.iter().copied().max().unwrap_or(0),
            ledger_facts_mean: facts as f64 / ups.len().max(1) as f64,
        };
        self.last_sample = (self.now, bytes);
        if self.cfg.progress {
            eprintln!(
                "t={:.2} h: {} of {} jobs done, {} running, {} nodes up, {:.2} kbit/s/node, ledger {:.1} KB/node, {} events",
                row.t_s / 3600.0,
                row.done,
                self.report.jobs,
                row.running,
                row.up_nodes,
                row.gossip_bytes_per_node_s * 8.0 / 1000.0,
                row.ledger_bytes_mean / 1000.0,
                row.events
            );
        }
        self.report.samples.push(row);
        for _ in 0..VIEW_CHECKS_PER_SAMPLE.min(self.topics.len()) {
            let t = self.rng.range(0, self.topics.len() as u64 - 1) as usize;
            let members: Vec<u32> = self.topics[t].members.iter().copied().filter(|&m| self.up(m)).collect();
            if members.len() < 2 {
                continue;
            }
            let a = members[self.rng.range(0, members.len() as u64 - 1) as usize];
            let b = members[self.rng.range(0, members.len() as u64 - 1) as usize];
            let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
            if a == b || na.digest.get(&(t as u32)) != nb.digest.get(&(t as u32)) {
                continue;
            }
            let mut bad = Vec::new();
            for &d in &self.topics[t].dags {
                let h = self.dags[d as usize].hash;
                let sa = na.core.as_ref().expect("up").ledger().dag_state(&h, self.now);
                let sb = nb.core.as_ref().expect("up").ledger().dag_state(&h, self.now);
                if sa != sb {
                    bad.push(format!("nodes {a} and {b} hold the same facts of DAG {} but disagree", h.short()));
                }
            }
            for what in bad {
                self.violation(what);
            }
        }
    }

    /// Prints, for the DAGs that ended latest past their own bound, the chain of jobs that made
    /// them end when they did: per job its wait for a claim, its run, and what it needed.
    pub(super) fn explain_slowest(&self, fastest: f64) {
        let mut late: Vec<(i64, usize)> = self
            .dags
            .iter()
            .enumerate()
            .filter_map(|(d, sd)| {
                let end = self.truth[d].iter().filter_map(|t| t.done_at).max()?;
                Some((end as i64 - (sd.submit_at_ms + sd.critical_path_ms(fastest)) as i64, d))
            })
            .collect();
        late.sort_unstable_by(|a, b| b.cmp(a));
        for &(over, d) in late.iter().take(3) {
            let (sd, truth) = (&self.dags[d], &self.truth[d]);
            let mut j = (0..truth.len()).max_by_key(|&j| truth[j].done_at.unwrap_or(0)).unwrap_or(0);
            let (mut wait, mut run, mut ideal, mut chain) = (0u64, 0u64, 0u64, Vec::new());
            loop {
                let t = &truth[j];
                let (ready, start, done) =
                    (t.ready_at.unwrap_or(0), t.first_start.unwrap_or(0), t.done_at.unwrap_or(0));
                wait += start.saturating_sub(ready);
                run += done.saturating_sub(start);
                ideal += (sd.work_ms[j] as f64 / fastest) as u64;
                let req = &sd.dag.jobs[j].requirements;
                chain.push(format!(
                    "{}(wait {}s run {}s{}{}{})",
                    sd.dag.jobs[j].id,
                    start.saturating_sub(ready) / 1000,
                    done.saturating_sub(start) / 1000,
                    if req.gpu.is_some() { " gpu" } else { "" },
                    if req.arch.is_some() { " arch" } else { "" },
                    if t.starts > 1 { format!(" starts {}", t.starts) } else { String::new() },
                ));
                match sd.deps[j].iter().max_by_key(|&&p| truth[p as usize].done_at.unwrap_or(0)) {
                    Some(&p) => j = p as usize,
                    None => break,
                }
            }
            chain.reverse();
            eprintln!(
                "DAG {d}: {over_s} s past its bound; its last chain waited {w} s, ran {r} s (at the fastest speed {i} s): {}",
                chain.join(" -> "),
                over_s = over / 1000,
                w = wait / 1000,
                r = run / 1000,
                i = ideal / 1000
            );
        }
    }

    pub(super) fn finish(mut self) -> Report {
        self.sample();
        let now = self.now;
        let mut r = std::mem::take(&mut self.report);
        let truth = self.truth.iter().flatten();
        r.done = truth.clone().filter(|t| t.done_at.is_some()).count();
        r.makespan_ms = truth.clone().filter_map(|t| t.done_at).max().unwrap_or(0);
        r.extra_starts = truth.clone().map(|t| u64::from(t.starts.saturating_sub(1))).sum();
        r.concurrent_duplicates = truth.clone().map(|t| u64::from(t.concurrent)).sum();
        r.claim_latency_ms =
            Percentiles::of(truth.clone().filter_map(|t| Some(t.first_start?.saturating_sub(t.ready_at?))).collect());
        // Lower bound: no DAG ends before its submit plus its critical path at the fastest speed,
        // and no schedule beats the total work spread over every core of the starting mesh.
        let fastest = self.nodes.iter().map(|n| n.speed).fold(0.0f64, f64::max).max(1e-9);
        let capacity: f64 = self.nodes[..self.cfg.nodes].iter().map(|n| f64::from(n.caps.cores) * n.speed).sum();
        let work: u64 = self.dags.iter().flat_map(|d| d.work_ms.iter()).sum();
        let first = self.dags.iter().map(|d| d.submit_at_ms).min().unwrap_or(0);
        let cp = self.dags.iter().map(|d| d.submit_at_ms + d.critical_path_ms(fastest)).max().unwrap_or(0);
        let by_work = first + (work as f64 / capacity.max(1e-9)) as u64;
        r.lower_bound_ms = cp.max(by_work);
        let mean_speed = self.nodes.iter().map(|n| n.speed).sum::<f64>() / self.nodes.len().max(1) as f64;
        let cp_mean = self.dags.iter().map(|d| d.submit_at_ms + d.critical_path_ms(mean_speed)).max().unwrap_or(0);
        r.lower_bound_mean_speed_ms = cp_mean.max(by_work);
        if std::env::var_os("SHOAL_SIM_EXPLAIN").is_some() {
            self.explain_slowest(fastest);
        }
        // Gossip: bytes received per node per second of the run, over the nodes' up time.
        let span_s = (r.makespan_ms.max(1) as f64) / 1000.0;
        let per_node: Vec<f64> = self.nodes.iter().map(|n| n.bytes_in as f64 / span_s).collect();
        r.gossip_bytes_per_node_s = per_node.iter().sum::<f64>() / per_node.len().max(1) as f64;
        r.gossip_bytes_per_node_s_max = per_node.iter().copied().fold(0.0, f64::max);
        r.events = self.processed;
        r.forgotten = self.forgotten_silent_ms.len() as u64;
        r.forgotten_silent_ms = Percentiles::of(std::mem::take(&mut self.forgotten_silent_ms));
        r.facts_made = self.meta.len() as u64;
        r.facts_held = self.nodes.iter().filter_map(|n| n.core.as_ref()).map(|n| n.ledger().len() as u64).sum();
        if self.cfg.given.is_some()
            && let Some(core) = self.nodes.iter().find_map(|n| n.core.as_ref())
        {
            r.histories = core
                .ledger()
                .history(&self.dags[0].hash)
                .into_iter()
                .map(|(job, facts)| (job, facts.iter().map(|f| f.body.kind()).collect()))
                .collect();
        }
        // Every submitted DAG ended in every up member's view, once the mesh healed.
        for (d, sd) in self.dags.iter().enumerate() {
            let t = self.topic_of_dag[d];
            if t == u32::MAX {
                self.violations.insert(format!("DAG {d} was never submitted"));
                continue;
            }
            // A node whose clock is off beyond the bound refuses facts or has its own refused: its
            // view may lag for as long as its clock is wrong.
            let members: Vec<u32> =
                self.topics[t as usize].members.iter().copied().filter(|&m| self.clock_in_bound(m)).collect();
            for m in members {
                if self.nodes[m as usize].core.is_none() {
                    continue;
                }
                let ended = self.ended_at(m, d);
                if !ended && self.violations.len() < 20 {
                    self.violations.insert(format!("DAG {} has not ended in node {m}'s view", sd.hash.short()));
                }
            }
            if let Some(core) =
                self.topics[t as usize].members.iter().find_map(|&m| self.nodes[m as usize].core.as_ref())
                && let Some(s) = core.ledger().dag_state(&sd.hash, now)
            {
                r.failed += s.jobs.values().filter(|j| matches!(j, JobState::Failed { .. })).count();
            }
        }
        // Every Done job's outputs are held by a node that has not left, or recomputable: its DAG
        // is still held by such a node (the lineage), so it can be run again from its inputs.
        for (d, jobs) in self.truth.iter().enumerate() {
            let t = self.topic_of_dag[d];
            // A compacted DAG is history: its summary names its records, and what became of
            // their outputs is the holders' (re-replication when they leave is not built).
            let compacted = self.summaries.contains_key(&self.dags[d].hash);
            let dag_held = compacted
                || t != u32::MAX
                    && self.topics[t as usize].members.iter().any(|&m| self.nodes[m as usize].status != Status::Gone);
            for (j, tr) in jobs.iter().enumerate() {
                if tr.done_at.is_none() {
                    continue;
                }
                if tr.holders.iter().all(|&(_, h)| self.nodes[h as usize].status == Status::Gone) {
                    r.outputs_lost += 1;
                    if !dag_held {
                        self.violations.insert(format!("DAG {d} job {j}: outputs lost and its DAG with them"));
                    }
                }
            }
        }
        if self.finished_at.is_none() {
            self.violations.insert(format!("{} of {} jobs done when the run stopped", r.done, r.jobs));
        } else if r.converge_at_end_ms.is_none() {
            self.violations.insert("the ledgers did not converge".into());
        }
        if self.cfg.partition.is_some() && r.converge_after_heal_ms.is_none() {
            self.violations.insert("the mesh did not converge after the partition healed".into());
        }
        if r.makespan_ms < r.lower_bound_ms && r.done == r.jobs {
            self.violations
                .insert(format!("makespan {} ms beats the lower bound {} ms", r.makespan_ms, r.lower_bound_ms));
        }
        r.violations = self
            .violations
            .into_iter()
            .map(|v| format!("seed {}: {v} (replay: SHOAL_SIM_SEED={})", r.seed, r.seed))
            .collect();
        r
    }
}
