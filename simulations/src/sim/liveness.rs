//! Each node's own failure detector, `shoal_mesh::liveness::Liveness`, driven as the daemon drives
//! it: a heartbeat (the daemon's `Announce`, its CBOR size counted) goes out whenever
//! `poll_heartbeat` gives one, to the audience it names (one peer, every connected peer — with one
//! topic every node, as in a mesh within `shoal node`'s direct-peer limit, each copy counted on
//! the sender's uplink — or the whole mesh by gossip), and each receiver's `handle_heard` notes it; a new peer gets the core's peer set updated and a heartbeat at once, a
//! forgotten one (silent for `forget_after_ms`) the same update. What counts as alive for replica
//! copies and lost outputs is each node's `live()`.
//!
//! With one topic a heartbeat reaches every node, as on the daemon's announcement topic. With a
//! topic per DAG (the federation design, which the node does not have yet) it reaches the members
//! of the sender's topics whose DAGs still run: at 10,000 nodes a heartbeat to every node every 10 s is 10 million
//! receipts a second and every node's table of every other, which the simulator cannot carry.
//! Heartbeats are not lost (gossipsub delivers one over several mesh paths).

use std::collections::BTreeSet;

use shoal_dag::Hash;
use shoal_mesh::liveness::{Audience, Heartbeat};
use shoal_mesh::wire::{self, Announce, WIRE_VERSION};

use super::net::MESSAGE_OVERHEAD_BYTES;
use super::{Ev, Sim};

impl Sim {
    /// Queues node `n`'s `Liveness` event for `at`, unless one is queued earlier.
    pub(super) fn schedule_liveness(&mut self, n: u32, at: u64) {
        let node = &mut self.nodes[n as usize];
        if at < node.liveness_at {
            node.liveness_at = at;
            node.liveness_gen += 1;
            let generation = node.liveness_gen;
            self.push(at, Ev::Liveness { node: n, generation });
        }
    }

    /// What node `n`'s `Liveness` decided: heartbeats to send, peers forgotten (the core then
    /// ranks among the live ones); then its next event.
    pub(super) fn drive_liveness(&mut self, n: u32) {
        let now = self.now;
        while let Some(beat) = self.nodes[n as usize].liveness.poll_heartbeat(now) {
            self.heartbeat(n, beat);
        }
        let mut forgot = false;
        while let Some(peer) = self.nodes[n as usize].liveness.poll_forgotten() {
            forgot = true;
            let silent = now.saturating_sub(self.nodes[self.index_of[&peer] as usize].last_beat_at);
            self.forgotten_silent_ms.push(silent);
        }
        if forgot {
            self.tell_core_live_peers(n);
        }
        if let Some(at) = self.nodes[n as usize].liveness.poll_timeout() {
            self.schedule_liveness(n, at.max(now + 1));
        }
    }

    /// The core of node `n` ranks jobs among the peers its `Liveness` calls alive (as the daemon
    /// tells it when a peer is new or forgotten).
    fn tell_core_live_peers(&mut self, n: u32) {
        let (now, clock) = (self.now, self.clock(n));
        let node = &mut self.nodes[n as usize];
        let live = node.liveness.live(now);
        node.core.as_mut().expect("up").handle_peers(clock, live);
        self.drain(n);
    }

    /// Node `n` announces itself: one message on its uplink, received by every node that hears it.
    fn heartbeat(&mut self, n: u32, beat: Heartbeat) {
        let bytes = self.announce_bytes(n, beat) + MESSAGE_OVERHEAD_BYTES;
        self.report.heartbeats += 1;
        if beat.to == Audience::Connected {
            // The beat every peer hears (what `forgotten_silent_ms` counts silence from).
            self.nodes[n as usize].last_beat_at = self.now;
        }
        let to: Vec<u32> = if let Audience::Peer(id) = beat.to {
            self.index_of.get(&id).copied().filter(|&m| self.reachable(n, m)).into_iter().collect()
        } else if self.cfg.group_nodes() == 0 {
            (0..self.nodes.len() as u32).filter(|&m| m != n && self.reachable(n, m)).collect()
        } else {
            let members: BTreeSet<u32> = self.nodes[n as usize]
                .topics
                .iter()
                .map(|&t| &self.topics[t as usize])
                .filter(|t| t.dags.iter().any(|&d| self.left[d as usize] > 0))
                .flat_map(|t| t.members.iter().copied())
                .filter(|&m| m != n)
                .collect();
            members.into_iter().filter(|&m| self.reachable(n, m)).collect()
        };
        for &m in &to {
            self.nodes[m as usize].bytes_in += bytes;
        }
        // Gossip leaves the sender once (the mesh carries it on); one-hop heartbeats once per peer.
        let copies = if beat.to == Audience::Mesh { 1 } else { to.len().max(1) as u64 };
        let at = self.transmit(n, None, bytes * copies);
        if !to.is_empty() {
            let direct = beat.to != Audience::Mesh;
            self.push(at, Ev::Heartbeat { from: n, to, direct });
        }
    }

    /// The daemon's announcement of node `n`, in bytes of CBOR: its addresses as a node on a LAN
    /// has them, its capabilities when the heartbeat carries them.
    fn announce_bytes(&self, n: u32, beat: Heartbeat) -> u64 {
        let node = &self.nodes[n as usize];
        let core = node.core.as_ref().expect("up");
        let a = Announce {
            v: WIRE_VERSION,
            node: node.id,
            // The node's, sized as the node's release string.
            version: "0.1.0".into(),
            hostname: format!("sim-node-{n:05}"),
            caps: beat.with_caps.then(|| node.caps.clone()),
            blob_addrs: vec![
                "10.1.2.3:41234".parse().expect("an address"),
                "[fd00::1:2:3]:41234".parse().expect("an address"),
            ],
            listen: vec!["/ip4/10.1.2.3/tcp/4001".into(), "/ip4/10.1.2.3/udp/4001/quic-v1".into()],
            http: Some("http://10.1.2.3:8700".into()),
            running: core.running_count() as u32,
            free_cores: core.free_cores(),
            facts: core.ledger().len() as u64,
            // The digest's size, not its value: hashing every id at every heartbeat would cost
            // the simulator more than the rest of the step.
            ledger_digest: Hash::of(b""),
            sent_unix_ms: self.now,
        };
        let a = if beat.with_caps { a } else { a.lite() };
        wire::encode(&a).len() as u64
    }

    /// A heartbeat of `from` reaches the nodes `to`.
    pub(super) fn on_heartbeat(&mut self, from: u32, to: &[u32], direct: bool) {
        let now = self.now;
        let id = self.nodes[from as usize].id;
        for &m in to {
            if !self.up(m) {
                continue;
            }
            if let Some(wait) = self.nodes[m as usize].catch_up.as_mut() {
                wait.handle_peer(now);
            }
            if self.nodes[m as usize].liveness.handle_heard(now, id, direct) {
                // A new peer: the core ranks with it, and it gets a heartbeat of ours at once.
                self.tell_core_live_peers(m);
                self.drive_liveness(m);
            }
        }
    }
}
