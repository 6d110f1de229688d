//! Anti-entropy. With one topic, each node's own `shoal_mesh::sync::Sync` over its mesh links,
//! requests and answers carried as messages; with a topic per DAG, a per-topic digest exchange
//! modelled here (the node has no per-DAG topics yet).

use std::collections::HashMap;

use shoal_dag::Hash;
use shoal_mesh::ledger::{Body, Fact, VerifiedFact};
use shoal_mesh::sync::{Inbound, Sync};
use shoal_mesh::wire::{SyncReq, SyncResp};

use super::net::{DIGEST_BYTES, ID_BYTES, MESSAGE_OVERHEAD_BYTES, request_bytes, response_bytes};
use super::{Ev, FactMeta, Sim, Status};

impl Sim {
    /// A mesh link between `a` and `b` came up (or went down): with one topic it is the
    /// connection each side's `Sync` takes turns over.
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
            if let Some(sync) = self.nodes[x as usize].sync.as_mut() {
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
        self.send_sync_requests(n);
        next.max(now + 1)
    }

    /// Sends what node `n`'s `Sync` wants to send.
    pub(super) fn send_sync_requests(&mut self, n: u32) {
        while let Some((peer, req)) = self.nodes[n as usize].sync.as_mut().and_then(Sync::poll_request) {
            let to = self.index_of[&peer];
            let bytes = request_bytes(&req, &self.meta);
            let at = self.transmit(n, bytes);
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
            Inbound::Store(facts) => {
                let added = self.store_synced(to, facts);
                SyncResp::Stored { added, refused: 0 }
            }
        };
        let bytes = response_bytes(&resp, &self.meta);
        let at = self.transmit(to, bytes);
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
        self.send_sync_requests(to);
    }

    /// Hands facts anti-entropy brought to node `n`'s core; returns how many were new.
    pub(super) fn store_synced(&mut self, n: u32, facts: Vec<Fact>) -> u64 {
        if facts.is_empty() {
            return 0;
        }
        let now = self.now;
        let mut added = 0;
        for f in facts {
            let Some(vf) = self.meta.get(&f.id()).map(|m| m.fact.clone()) else { continue };
            let id = vf.id();
            let done = match &vf.fact().body {
                Body::Done { record, .. } if vf.fact().author != self.nodes[n as usize].id => {
                    Some((*record, vf.fact().author))
                }
                _ => None,
            };
            if self.nodes[n as usize].core.as_mut().expect("up").handle_verified_fact(now, vf) {
                added += 1;
                self.hold(n, 0, id);
                if let Some((record, runner)) = done {
                    self.keep_copies(n, record, runner);
                }
            }
        }
        self.drain(n);
        added
    }

    /// With a topic per DAG, one anti-entropy exchange of node `n` with a mesh peer on one of its
    /// topics, modelled here: per-topic digests; if they differ, the peer's ids, then what each
    /// lacks, both ways. `shoal_mesh::sync::Sync` exchanges whole-ledger digests, which is what one
    /// topic needs; a per-topic sync machine comes with per-DAG topics in the node.
    pub(super) fn anti_entropy(&mut self, n: u32, only: Option<(u32, u32)>) {
        let (topic, peer) = match only {
            Some(tp) => tp,
            None => {
                let topics: Vec<u32> = self.nodes[n as usize].topics.iter().copied().collect();
                if topics.is_empty() {
                    return;
                }
                let node = &mut self.nodes[n as usize];
                node.ae_turn = node.ae_turn.wrapping_add(1);
                let topic = topics[node.ae_turn % topics.len()];
                let Some(mesh) = self.topics[topic as usize].mesh.get(&n).filter(|m| !m.is_empty()) else { return };
                let peer = mesh[self.rng.range(0, mesh.len() as u64 - 1) as usize];
                (topic, peer)
            }
        };
        let arrive = self.transmit(n, DIGEST_BYTES);
        if !self.reachable(n, peer) {
            return;
        }
        self.nodes[peer as usize].bytes_in += DIGEST_BYTES;
        let mine = self.nodes[n as usize].digest.get(&topic).copied();
        let theirs = self.nodes[peer as usize].digest.get(&topic).copied();
        if mine == theirs {
            // `Same`: one small answer.
            self.transmit(peer, DIGEST_BYTES);
            self.nodes[n as usize].bytes_in += DIGEST_BYTES;
            return;
        }
        let list = &self.topics[topic as usize].facts;
        let from = self.nodes[n as usize].synced[&topic]
            .min(self.nodes[peer as usize].synced.get(&topic).copied().unwrap_or(0));
        let (mut i_lack, mut they_lack) = (Vec::new(), Vec::new());
        let (a, b) =
            (self.nodes[n as usize].core.as_ref().expect("up"), self.nodes[peer as usize].core.as_ref().expect("up"));
        for id in &list[from..] {
            match (a.ledger().get(id).is_some(), b.ledger().get(id).is_some()) {
                (false, true) => i_lack.push(b.ledger().verified(id).expect("held")),
                (true, false) => they_lack.push(a.ledger().verified(id).expect("held")),
                _ => {}
            }
        }
        let peer_count = u64::from(theirs.map_or(0, |t| t.1));
        let size = |v: &[VerifiedFact], meta: &HashMap<Hash, FactMeta>| {
            v.iter().map(|f| u64::from(meta[&f.id()].bytes)).sum::<u64>()
        };
        // The peer answers with its ids; we ask for what we lack and push what it lacks.
        let ids_bytes = MESSAGE_OVERHEAD_BYTES + ID_BYTES * peer_count;
        let get_bytes = MESSAGE_OVERHEAD_BYTES + ID_BYTES * i_lack.len() as u64;
        let put_bytes = MESSAGE_OVERHEAD_BYTES + size(&they_lack, &self.meta);
        let facts_bytes = MESSAGE_OVERHEAD_BYTES + size(&i_lack, &self.meta);
        let t1 = self.transmit(peer, ids_bytes);
        self.nodes[n as usize].bytes_in += ids_bytes;
        let _ = self.transmit(n, get_bytes + put_bytes);
        self.nodes[peer as usize].bytes_in += get_bytes + put_bytes;
        let t2 = self.transmit(peer, facts_bytes);
        self.nodes[n as usize].bytes_in += facts_bytes;
        let rtt = t1.max(arrive) + (t2 - self.now);
        if !i_lack.is_empty() {
            self.push(rtt, Ev::Deliver { to: n, from: peer, topic, facts: i_lack });
        }
        if !they_lack.is_empty() {
            self.push(rtt, Ev::Deliver { to: peer, from: n, topic, facts: they_lack });
        }
        self.advance_synced(n, topic);
        self.advance_synced(peer, topic);
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
