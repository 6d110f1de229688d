//! Anti-entropy: each node's own `shoal_mesh::sync::Sync`, requests and answers carried as
//! messages. With one topic it compares the whole ledger with its mesh links; with a topic per
//! DAG, each DAG's facts with its mesh peers in that DAG's topic (the `Sync` scopes the node uses).

use std::collections::BTreeMap;

use shoal_dag::Hash;
use shoal_mesh::ledger::{Body, Fact, NodeId};
use shoal_mesh::sync::{Inbound, Sync};
use shoal_mesh::wire::{SyncReq, SyncResp};

use super::net::{request_bytes, response_bytes};
use super::{Ev, Sim, Status};

impl Sim {
    /// A mesh link between `a` and `b` came up (or went down): with one topic it is the
    /// connection each side's `Sync` compares the whole ledger over.
    pub(super) fn link(&mut self, a: u32, b: u32, up: bool) {
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.nodes[y as usize].id;
            if up && self.nodes[x as usize].status == Status::Up {
                // A new connection: the daemon's `Liveness` greets the peer.
                self.nodes[x as usize].liveness.handle_connected(now, peer);
                let at = self.nodes[x as usize].liveness.poll_timeout().unwrap_or(now);
                self.schedule_liveness(x, at);
            }
            // With a topic per DAG the links are a DAG topic's, which `sync_dag_peers` hands to
            // that DAG's scope; the whole ledger is compared only with one topic for all.
            let one_topic = self.cfg.group_nodes() == 0;
            if let Some(sync) = self.nodes[x as usize].sync.as_mut().filter(|_| one_topic) {
                if up {
                    sync.handle_connected(now, peer);
                } else {
                    sync.handle_disconnected(now, peer);
                }
            }
        }
    }

    /// Node `n`'s `Sync` starts an exchange when one is due; returns when it is next due.
    pub(super) fn sync_tick(&mut self, n: u32) -> u64 {
        let now = self.now;
        let node = &mut self.nodes[n as usize];
        let (Some(sync), Some(core)) = (node.sync.as_mut(), node.core.as_ref()) else {
            return now + self.cfg.settings.sync_period_ms;
        };
        sync.handle_tick(now, core.ledger());
        let next = sync.poll_timeout().unwrap_or(now + self.cfg.settings.sync_period_ms);
        self.end_catch_up(n);
        self.send_sync_requests(n);
        next.max(now + 1)
    }

    /// Sends what node `n`'s `Sync` wants to send.
    pub(super) fn send_sync_requests(&mut self, n: u32) {
        while let Some((peer, req)) = self.nodes[n as usize].sync.as_mut().and_then(Sync::poll_request) {
            let to = self.index_of[&peer];
            let bytes = request_bytes(&req, &self.meta);
            let at = self.transmit(n, Some(to), bytes);
            if !self.reachable(n, to) || (self.cfg.loss > 0.0 && self.rng.unit() < self.cfg.loss) {
                continue;
            }
            self.nodes[to as usize].bytes_in += bytes;
            self.push(at, Ev::SyncRequest { to, from: n, req });
        }
    }

    /// A peer's anti-entropy request reaches node `to`: its `Sync` answers, facts pushed to it
    /// are stored (not relayed: the node does not gossip what sync brought).
    pub(super) fn on_sync_request(&mut self, to: u32, from: u32, req: SyncReq) {
        if !self.up(to) {
            return;
        }
        let now = self.now;
        let node = &mut self.nodes[to as usize];
        let (Some(sync), Some(core)) = (node.sync.as_mut(), node.core.as_ref()) else { return };
        let resp = match sync.handle_request(now, core.ledger(), req) {
            Inbound::Answer(resp) => resp,
            Inbound::Store { facts, compacted } => {
                let added = self.store_synced(to, facts);
                SyncResp::Stored { added, refused: 0, compacted }
            }
        };
        let bytes = response_bytes(&resp, &self.meta);
        let at = self.transmit(to, Some(from), bytes);
        if !self.reachable(to, from) || (self.cfg.loss > 0.0 && self.rng.unit() < self.cfg.loss) {
            return;
        }
        self.nodes[from as usize].bytes_in += bytes;
        self.push(at, Ev::SyncResponse { to: from, from: to, resp });
    }

    /// An answer reaches node `to`: facts it carries are stored, and the `Get`/`Put` its `Sync`
    /// decides on are sent.
    pub(super) fn on_sync_response(&mut self, to: u32, from: u32, resp: SyncResp) {
        if !self.up(to) {
            return;
        }
        let now = self.now;
        let peer = self.nodes[from as usize].id;
        let node = &mut self.nodes[to as usize];
        let (Some(sync), Some(core)) = (node.sync.as_mut(), node.core.as_ref()) else { return };
        let facts = sync.handle_response(now, core.ledger(), peer, resp);
        self.store_synced(to, facts);
        let node = &mut self.nodes[to as usize];
        let mut adopted = Vec::new();
        if let (Some(sync), Some(core)) = (node.sync.as_mut(), node.core.as_mut()) {
            while let Some((dag, c, _)) = sync.poll_compacted() {
                if core.adopt_compacted(now, dag, c) {
                    adopted.push(dag);
                }
            }
        }
        for dag in adopted {
            self.adopted(to, dag);
        }
        self.end_catch_up(to);
        self.send_sync_requests(to);
    }

    /// A node restarted from its facts claims again when its [`shoal_mesh::sync::CatchUp`] says
    /// (the daemon's `update_claiming`).
    pub(super) fn end_catch_up(&mut self, n: u32) {
        let now = self.now;
        let node = &mut self.nodes[n as usize];
        let Some(wait) = node.catch_up else { return };
        let caught_up = node.sync.as_ref().is_some_and(|s| s.caught_up());
        if wait.poll(now, caught_up).is_none() {
            return;
        }
        node.catch_up = None;
        let clock = self.clock(n);
        if let Some(core) = self.nodes[n as usize].core.as_mut() {
            core.set_claiming(clock, true);
        }
        self.drain(n);
    }

    /// Hands facts anti-entropy brought to node `n`'s core; returns how many were new.
    pub(super) fn store_synced(&mut self, n: u32, facts: Vec<Fact>) -> u64 {
        if facts.is_empty() {
            return 0;
        }
        let now = self.clock(n);
        let mut added = 0;
        for f in facts {
            let Some((vf, topic)) = self.meta.get(&f.id()).map(|m| (m.fact.clone(), m.topic)) else { continue };
            let id = vf.id();
            let done = match &vf.fact().body {
                Body::Done { record, .. } if vf.fact().author != self.nodes[n as usize].id => {
                    Some((*record, vf.fact().author))
                }
                _ => None,
            };
            let core = self.nodes[n as usize].core.as_mut().expect("up");
            if core.admissible(now, vf.fact()).is_err() {
                self.report.refused_ahead += 1;
                continue;
            }
            if core.handle_verified_fact(now, vf) {
                added += 1;
                self.hold(n, topic, id);
                if let Some((record, runner)) = done {
                    self.keep_copies(n, topic, record, runner);
                }
            }
        }
        self.drain(n);
        added
    }

    /// With a topic per DAG: tells node `n`'s `Sync` the peers of each DAG topic it is in (its
    /// mesh peers there, as gossipsub's mesh gives the daemon), and to stop comparing the DAGs
    /// whose topics it left. A DAG new to it is compared at its next tick.
    pub(super) fn sync_dag_peers(&mut self, n: u32) {
        if self.cfg.group_nodes() == 0 {
            return;
        }
        let now = self.now;
        let node = &self.nodes[n as usize];
        let want: BTreeMap<Hash, Vec<NodeId>> = node
            .topics
            .iter()
            .filter_map(|&t| {
                let topic = &self.topics[t as usize];
                let d = *topic.dags.first()?;
                let peers = topic.mesh.get(&n)?.iter().map(|&p| self.nodes[p as usize].id).collect();
                Some((self.dags[d as usize].hash, peers))
            })
            .collect();
        let Some(sync) = self.nodes[n as usize].sync.as_mut() else { return };
        let left: Vec<Hash> = sync.dags().filter(|d| !want.contains_key(d)).collect();
        for dag in left {
            sync.handle_dag_peers(now, dag, []);
        }
        for (dag, peers) in want {
            sync.handle_dag_peers(now, dag, peers);
        }
    }

    pub(super) fn advance_synced(&mut self, n: u32, topic: u32) -> usize {
        let list = &self.topics[topic as usize].facts;
        let node = &mut self.nodes[n as usize];
        let Some(core) = node.core.as_ref() else { return 0 };
        let s = node.synced.entry(topic).or_insert(0);
        while *s < list.len() && core.ledger().get(&list[*s]).is_some() {
            *s += 1;
        }
        *s
    }
}
