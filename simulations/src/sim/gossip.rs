//! Topic meshes and gossip: a node subscribes to a topic's mesh of ~`Config::mesh_degree` peers
//! (gossipsub-like grafting), relays each fact it had not seen to its mesh peers in batches, never
//! back to a peer it came from.

use shoal_dag::Hash;
use shoal_mesh::ledger::{Body, VerifiedFact};

use super::net::MESSAGE_OVERHEAD_BYTES;
use super::{Ev, Pending, Sim};

impl Sim {
    /// Adds a node to a topic and to the mesh of `mesh_degree` random members.
    pub(super) fn subscribe(&mut self, n: u32, topic: u32) {
        let t = &mut self.topics[topic as usize];
        if t.members.contains(&n) {
            return;
        }
        // Half the degree out, the other half comes in from later members: ~`mesh_degree` each.
        let want = self.cfg.mesh_degree.div_ceil(2).min(t.members.len());
        let mut peers: Vec<u32> = Vec::new();
        let mut tries = 0;
        while peers.len() < want && tries < want * 8 {
            tries += 1;
            let p = t.members[self.rng.range(0, t.members.len() as u64 - 1) as usize];
            // gossipsub's D_high: a peer with this many mesh links takes no more.
            let full = t.mesh.get(&p).is_some_and(|m| m.len() >= self.cfg.mesh_degree * 3 / 2);
            if !peers.contains(&p) && !full {
                peers.push(p);
            }
        }
        for &p in &peers {
            t.mesh.entry(p).or_default().push(n);
        }
        t.mesh.insert(n, peers.clone());
        t.members.push(n);
        for p in peers {
            self.link(n, p, true);
        }
        let node = &mut self.nodes[n as usize];
        node.topics.insert(topic);
        node.digest.entry(topic).or_insert(([0; 32], 0));
        node.synced.entry(topic).or_insert(0);
    }

    /// Takes a node out of a topic; its mesh peers left with few peers take new ones.
    pub(super) fn unsubscribe(&mut self, n: u32, topic: u32) {
        let t = &mut self.topics[topic as usize];
        t.members.retain(|&m| m != n);
        let peers = t.mesh.remove(&n).unwrap_or_default();
        let mut links = Vec::new();
        for p in peers {
            links.push((n, p, false));
            let t = &mut self.topics[topic as usize];
            let Some(pm) = t.mesh.get_mut(&p) else { continue };
            pm.retain(|&x| x != n);
            // gossipsub's D_low: below it a node grafts new mesh peers.
            if pm.len() < self.cfg.mesh_degree / 2 + 1 && t.members.len() > pm.len() + 1 {
                for _ in 0..4 {
                    let q = t.members[self.rng.range(0, t.members.len() as u64 - 1) as usize];
                    let pm = t.mesh.get_mut(&p).expect("member");
                    if q != p && !pm.contains(&q) {
                        pm.push(q);
                        t.mesh.entry(q).or_default().push(p);
                        links.push((p, q, true));
                        break;
                    }
                }
            }
        }
        for (a, b, up) in links {
            self.link(a, b, up);
        }
        self.nodes[n as usize].topics.remove(&topic);
    }

    /// Node `n` now holds fact `id` of `topic`.
    pub(super) fn hold(&mut self, n: u32, topic: u32, id: Hash) {
        let node = &mut self.nodes[n as usize];
        // An `Alive` this fact replaced is no longer held (it was on the same DAG's topic).
        let replaced = node.core.as_mut().map(|c| c.take_replaced_facts()).unwrap_or_default();
        let e = node.digest.entry(topic).or_insert(([0; 32], 0));
        for (a, b) in e.0.iter_mut().zip(id.0) {
            *a ^= b;
        }
        e.1 += 1;
        for old in replaced {
            for (a, b) in e.0.iter_mut().zip(old.0) {
                *a ^= b;
            }
            e.1 -= 1;
        }
    }

    pub(super) fn queue_relay(&mut self, n: u32, topic: u32, f: VerifiedFact, from: Option<u32>) {
        let node = &mut self.nodes[n as usize];
        let batch = node.pending.entry(topic).or_default();
        batch.entry(f.id()).or_insert(Pending { fact: f, from: vec![] }).from.extend(from);
        if !node.flush_scheduled {
            node.flush_scheduled = true;
            let epoch = node.epoch;
            self.push(self.now + self.cfg.flush_ms, Ev::Flush { node: n, epoch });
        }
    }

    /// Sends a node's batched facts to its mesh peers, each without what it sent us.
    pub(super) fn flush(&mut self, n: u32) {
        let pending = std::mem::take(&mut self.nodes[n as usize].pending);
        self.nodes[n as usize].flush_scheduled = false;
        for (topic, batch) in pending {
            let peers = self.topics[topic as usize].mesh.get(&n).cloned().unwrap_or_default();
            for p in peers {
                let facts: Vec<VerifiedFact> =
                    batch.values().filter(|x| !x.from.contains(&p)).map(|x| x.fact.clone()).collect();
                if facts.is_empty() {
                    continue;
                }
                let bytes =
                    MESSAGE_OVERHEAD_BYTES + facts.iter().map(|f| u64::from(self.meta[&f.id()].bytes)).sum::<u64>();
                self.send(n, p, topic, facts, bytes);
            }
        }
    }

    pub(super) fn deliver(&mut self, to: u32, from: u32, topic: u32, facts: Vec<VerifiedFact>) {
        if !self.up(to) {
            return;
        }
        let now = self.clock(to);
        for f in facts {
            let id = f.id();
            let core = self.nodes[to as usize].core.as_mut().expect("up");
            if core.admissible(now, f.fact()).is_err() {
                self.report.refused_ahead += 1;
                continue;
            }
            let new = core.handle_verified_fact(now, f.clone());
            if new {
                self.hold(to, topic, id);
                if let Body::Done { record, .. } = &f.fact().body
                    && f.fact().author != self.nodes[to as usize].id
                {
                    self.keep_copies(to, topic, *record, f.fact().author);
                }
                if let Body::Done { claim, .. } = &f.fact().body
                    && let Some((d, j)) = self.claim_job(claim, to)
                    && self.truth[d as usize][j as usize].holders.is_empty()
                {
                    // A Done whose job no holder remembers (cannot happen: the maker holds it).
                    self.violation(format!("a Done for {d}/j{j} with no holder"));
                }
                self.queue_relay(to, topic, f, Some(from));
            } else if let Some(p) = self.nodes[to as usize].pending.get_mut(&topic).and_then(|b| b.get_mut(&id)) {
                p.from.push(from);
            }
        }
        self.drain(to);
    }
}
