//! The loop's side of the mesh: connections, gossip (facts and announcements), anti-entropy
//! requests and answers, this node's own announcement and its ready file.

use libp2p::{Multiaddr, PeerId};
use shoal_blobs::net::BlobPeer;
use shoal_mesh::capabilities::Capabilities;
use shoal_mesh::clock::{ClockStep, describe_offset};
use shoal_mesh::ledger::LedgerError;
use shoal_mesh::ledger::{Body, Fact, NodeId};
use shoal_mesh::liveness::{Audience, Heartbeat};
use shoal_mesh::sync::Inbound;
use shoal_mesh::wire::{self, Announce, FactBatch, SyncReq, SyncResp};
use tracing::{debug, error, info, warn};

use crate::api::NodeFile;
use crate::mesh::net::{NetEvent, SyncRequest, SyncResponse, Topic};

use super::{DIRECT_PEERS_MAX, Node, PeerInfo, node_of_peer, now_unix_ms, peer_id_of_node};
use crate::clock;

/// Whether an address goes through a relay.
fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit)
}

/// Refused peers `shoal peers` lists; past it the oldest is dropped.
const REFUSED_LISTED_MAX: usize = 256;
/// Authors named in the log for a clock far ahead; past it further ones are named at debug level.
const AHEAD_LOGGED_MAX: usize = 1024;

impl Node {
    pub(super) fn on_net(&mut self, ev: NetEvent) {
        let now = now_unix_ms();
        match ev {
            NetEvent::Listening(addr) => {
                let relayed = is_relayed(&addr);
                self.listen_addrs.push(addr);
                self.write_ready_file();
                // Behind NAT this is the address the mesh reaches us at, and it comes after the
                // first announcement (AutoNAT and the reservation take seconds): tell it now rather
                // than at the next mesh announcement, minutes away.
                if relayed {
                    self.announce(Heartbeat { with_caps: true, to: Audience::Mesh });
                }
            }
            // A relay's reservation lost or given up: no longer announced, so peers stop dialing it.
            NetEvent::NotListening(addr) => {
                self.listen_addrs.retain(|a| *a != addr);
                self.write_ready_file();
            }
            NetEvent::Connected(peer) => {
                self.connected.insert(peer);
                // It passed pnet (the mesh key) and noise (its id): a member, so it may fetch
                // this node's blobs.
                if let Some(node) = node_of_peer(&peer) {
                    self.shared.blobs.admit(&node);
                    let now = self.mono_ms();
                    if let Some(wait) = self.claim_waits.catch_up.as_mut() {
                        wait.handle_peer(now);
                    }
                    self.sync.handle_connected(now, node);
                    self.liveness.handle_connected(now, node);
                }
            }
            NetEvent::Disconnected(peer) => {
                self.connected.remove(&peer);
                if let Some(node) = node_of_peer(&peer) {
                    self.sync.handle_disconnected(self.mono_ms(), node);
                    self.redial(peer, node);
                }
            }
            NetEvent::Refused(refusal) => {
                if let Some(node) = node_of_peer(&refusal.peer) {
                    self.sync.handle_disconnected(self.mono_ms(), node);
                }
                if self.refused.len() >= REFUSED_LISTED_MAX {
                    self.refused.pop_first();
                }
                self.refused.insert(refusal.peer, (refusal, now));
            }
            NetEvent::Gossip { topic: Topic::Facts | Topic::Dag(_), from, data } => {
                match wire::decode::<FactBatch>(&data) {
                    Ok(batch) if batch.v == self.opts.protocol => {
                        self.take_facts(now, batch.facts, &from);
                        self.inline_dags.extend(batch.dags);
                    }
                    Ok(_) => debug!(%from, "a fact batch of another wire version; ignored"),
                    Err(e) => warn!(%from, "{e}"),
                }
            }
            NetEvent::Gossip { topic: Topic::Caps, from, data } => match wire::decode::<Announce>(&data) {
                Ok(a) => self.on_announce(now, from, a, false),
                Err(e) => warn!(%from, "{e}"),
            },
            NetEvent::Request { peer, request, channel } => {
                let resp = match wire::decode::<SyncReq>(&request.0) {
                    // Answered once held, or with its progress a moment later.
                    Ok(SyncReq::Hold { dag }) => return self.hold(dag, &peer, channel),
                    Ok(SyncReq::Announce { announce }) => {
                        self.on_announce(now, peer, *announce, true);
                        SyncResp::Heard
                    }
                    Ok(req) => match self.sync.handle_request(self.mono_ms(), self.core.ledger(), req) {
                        Inbound::Answer(resp) => resp,
                        Inbound::Store { facts, compacted } => {
                            let (added, refused) = self.take_facts(now, facts, &peer);
                            SyncResp::Stored { added, refused, compacted }
                        }
                    },
                    Err(e) => SyncResp::Refused { reason: e.to_string() },
                };
                self.net.respond(channel, SyncResponse(wire::encode(&resp)));
            }
            NetEvent::Response { peer, id, response } => {
                if let Some((dag, node)) = self.hold.requests.remove(&id) {
                    self.on_hold_response(dag, node, &response.0);
                } else {
                    self.on_sync_response(now, &peer, &response.0);
                }
            }
            NetEvent::RequestFailed { peer, id, error } => {
                if let Some((dag, node)) = self.hold.requests.remove(&id) {
                    self.hold_failed(dag, node, format!("the request failed: {error}"));
                } else {
                    debug!(%peer, "sync request failed: {error}");
                }
            }
        }
    }

    /// An announcement of the peer `from`, straight from it (`direct`: a greeting or heartbeat)
    /// or by gossip.
    fn on_announce(&mut self, now: u64, from: PeerId, a: Announce, direct: bool) {
        if a.v != self.opts.protocol {
            return;
        }
        if peer_id_of_node(&a.node) != Some(from) {
            warn!(%from, "an announcement for another node's id; ignored");
            return;
        }
        let a = match self.peers.get(&a.node) {
            Some(prev) => a.filled_from(&prev.announce),
            None => a,
        };
        self.shared.blobs.add_peer(&BlobPeer { id: a.node, addrs: a.blob_addrs.clone() });
        // Signed by its author and carried only over connections that passed pnet: the
        // author is a member (this reaches peers we have no direct connection to),
        // unless `--allow` leaves it out of this node's mesh.
        if self.opts.allow.as_ref().is_none_or(|allow| allow.contains(&from)) {
            self.shared.blobs.admit(&a.node);
        }
        // Where to dial it when something needs a connection (a blob stream), connected or not.
        let announced: Vec<Multiaddr> = a.listen.iter().filter_map(|t| t.parse().ok()).collect();
        if !direct || a.caps.is_some() {
            self.net.add_peer_addresses(from, announced);
        }
        // Gossip reached us through others: connect directly, so the mesh stays
        // whole when the node everyone joined through leaves, and heartbeats go one hop.
        if !self.connected.contains(&from) && self.connected.len() < DIRECT_PEERS_MAX {
            let addrs = a.listen.iter().filter_map(|t| t.parse::<Multiaddr>().ok()).collect();
            if let Err(e) = self.net.dial_peer(from, addrs) {
                debug!(%from, "cannot dial an announced address: {e}");
            }
        }
        let node = a.node;
        self.refused.remove(&from);
        self.mesh_clock.handle_announce(node, a.sent_unix_ms, clock::local_unix_ms());
        self.follow_mesh_clock();
        // A new peer also gets a greeting of ours at once (`drive_mesh`).
        let new = self.liveness.handle_heard(self.mono_ms(), node, direct);
        let had_caps = self.peers.get(&node).and_then(|p| p.caps.as_ref()).is_some();
        let caps = a.caps.clone().or_else(|| self.peers.get(&a.node).and_then(|p| p.caps.clone()));
        let a = Announce { caps: None, ..a };
        self.peers.insert(a.node, PeerInfo { announce: a, caps });
        if had_caps != self.peers.get(&node).and_then(|p| p.caps.as_ref()).is_some() || new {
            let caps: Vec<(NodeId, Capabilities)> =
                self.peers.iter().filter_map(|(n, p)| Some((*n, p.caps.clone()?))).collect();
            self.core.handle_peer_caps(now, caps);
        }
        if new {
            let live = self.live_peers();
            self.core.handle_peers(now, live);
        }
    }

    pub(super) fn take_facts(&mut self, now: u64, facts: Vec<Fact>, from: &PeerId) -> (u64, u64) {
        let (mut added, mut refused) = (0, 0);
        for fact in facts {
            let id = fact.id();
            if self.core.ledger().get(&id).is_some() {
                continue;
            }
            match self.core.handle_fact(now, fact.clone()) {
                // An `Alive` older than the one held: not kept, nothing to store.
                Ok(()) if self.core.ledger().get(&id).is_none() => {}
                Ok(()) => {
                    added += 1;
                    if let Body::Done { record, .. } = &fact.body {
                        let live = self.replica_candidates(self.core.ledger().dag_of(&fact));
                        self.replicas.handle_done(self.mono_ms(), *record, fact.author, &live);
                    }
                    self.to_persist.push(fact);
                }
                Err(LedgerError::Ahead { ahead_ms, .. }) => {
                    refused += 1;
                    let ahead = describe_offset(i64::try_from(ahead_ms).unwrap_or(i64::MAX));
                    let ahead = ahead.trim_start_matches('+');
                    // Named once per author, not per fact: anti-entropy offers them again and again.
                    let told = self.ahead_logged.len() >= AHEAD_LOGGED_MAX || !self.ahead_logged.insert(fact.author);
                    // The mesh's median as far ahead as this fact: this node's clock is the wrong one.
                    let skew_max_ms = i64::try_from(self.core.config().clock_skew_max_ms).unwrap_or(i64::MAX);
                    let behind = self.mesh_clock.median_offset_ms().is_some_and(|o| o > skew_max_ms);
                    if told {
                        debug!(%from, "refused a fact from a clock {} ahead", ahead);
                    } else if behind && !self.opts.clock_from_mesh {
                        error!(author = %hex::encode(fact.author), "facts of node {} read {} ahead of this node's clock, as does the mesh's median: this node's clock is behind; its facts are refused until this clock is right (NTP, or run with --clock-from-mesh)", hex::encode(fact.author), ahead);
                    } else {
                        error!(author = %hex::encode(fact.author), "peer {}'s clock is {} ahead of ours: its facts are refused until its clock is right (NTP, or --clock-from-mesh)", hex::encode(fact.author), ahead);
                    }
                }
                Err(e) => {
                    refused += 1;
                    warn!(%from, "refused a fact: {e}");
                }
            }
        }
        (added, refused)
    }

    fn on_sync_response(&mut self, now: u64, peer: &PeerId, bytes: &[u8]) {
        let resp = match wire::decode::<SyncResp>(bytes) {
            Ok(r) => r,
            Err(e) => return warn!(%peer, "{e}"),
        };
        if let SyncResp::Refused { reason } = &resp {
            warn!(%peer, "the peer refused our sync request: {reason}");
        }
        let Some(node) = node_of_peer(peer) else { return };
        let facts = self.sync.handle_response(self.mono_ms(), self.core.ledger(), node, resp);
        if !facts.is_empty() {
            self.take_facts(now, facts, peer);
        }
        while let Some((dag, compacted, from)) = self.sync.poll_compacted() {
            if !self.core.adopt_compacted(now, dag, compacted) {
                continue;
            }
            info!(%dag, from = %hex::encode(&from[..6]), "a peer compacted a DAG this node still held facts of: compacted here too");
            if let Err(e) = self.shared.store.keep_compacted(dag, compacted.summary) {
                warn!(%dag, "cannot record a compacted DAG: {e:#}");
            }
            self.ledger_dropped = true;
            // Its summary, from the peer that has it (for `shoal status` of it here).
            let (blobs, summary) = (self.shared.blobs.clone(), compacted.summary);
            tokio::spawn(async move {
                if let Err(e) = blobs.fetch(summary, &[from]).await {
                    debug!(%summary, "cannot fetch a compacted DAG's summary: {e}");
                }
            });
        }
    }

    /// After a peer's time was heard: take the mesh's time (`--clock-from-mesh`), or say once
    /// that it disagrees with this node's clock.
    fn follow_mesh_clock(&mut self) {
        let peers = self.mesh_clock.heard();
        match self.mesh_clock.step(self.opts.clock_from_mesh, clock::mesh_offset_ms()) {
            ClockStep::Keep => {}
            ClockStep::Take(offset) => {
                clock::set_mesh_offset_ms(offset);
                info!(
                    offset_ms = offset,
                    peers,
                    "clock: taking the mesh's time, offset {} (the median of {peers} peer(s))",
                    describe_offset(offset)
                );
            }
            ClockStep::Warn(offset) => {
                if !std::mem::replace(&mut self.clock_warned, true) {
                    let (how, d) = if offset > 0 { ("behind", offset) } else { ("ahead of", offset.saturating_neg()) };
                    error!(
                        offset_ms = offset,
                        peers,
                        "this node's clock is {} {how} the mesh (the median of {peers} peer(s)): fix it (NTP) or run with --clock-from-mesh; if this clock is right, the peers' are wrong",
                        describe_offset(d).trim_start_matches('+')
                    );
                }
            }
        }
        if self.claim_waits.clock {
            self.claim_waits.clock = false;
            self.update_claiming();
        }
    }

    /// Dials a peer we lost at the addresses it announced, once: a node behind NAT whose relay
    /// died is still reachable through its other relay, and nothing else would reconnect us
    /// before its next mesh announcement, minutes away. A peer that left fails these dials and
    /// is not tried again.
    fn redial(&mut self, peer: PeerId, node: NodeId) {
        if self.connected.len() >= DIRECT_PEERS_MAX {
            return;
        }
        self.dial_announced(peer, node);
    }

    /// Dials a peer at the addresses it announced (none known: nothing happens).
    pub(super) fn dial_announced(&mut self, peer: PeerId, node: NodeId) {
        if self.net.is_blocked(&peer) {
            return;
        }
        let Some(p) = self.peers.get(&node) else { return };
        let addrs = p.announce.listen.iter().filter_map(|t| t.parse::<Multiaddr>().ok()).collect();
        if let Err(e) = self.net.dial_peer(peer, addrs) {
            debug!(%peer, "cannot dial a lost peer again: {e}");
        }
    }

    pub(super) fn announce(&mut self, beat: Heartbeat) {
        let ledger = self.core.ledger();
        let a = Announce {
            v: self.opts.protocol,
            node: self.core.id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: self.hostname.clone(),
            caps: beat.with_caps.then(|| self.core.caps().clone()),
            blob_addrs: self.shared.blobs.me().addrs,
            listen: self.listen_addrs.iter().map(ToString::to_string).collect(),
            http: Some(format!("http://{}", self.http_addr)),
            running: self.core.running_count() as u32,
            free_cores: self.core.free_cores(),
            facts: ledger.len() as u64,
            ledger_digest: ledger.digest(),
            sent_unix_ms: now_unix_ms(),
        };
        let a = if beat.with_caps { a } else { a.lite() };
        match beat.to {
            Audience::Mesh => {
                if let Err(e) = self.net.publish(Topic::Caps, wire::encode(&a)) {
                    debug!("announce: {e}");
                }
            }
            Audience::Connected => {
                let req = SyncRequest(wire::encode(&SyncReq::Announce { announce: Box::new(a) }));
                let peers: Vec<PeerId> = self.connected.iter().copied().collect();
                for peer in peers {
                    self.net.request(&peer, req.clone());
                }
            }
            Audience::Peer(node) => {
                // Only over a connection we have: a greeting is no reason to dial.
                if let Some(peer) = peer_id_of_node(&node).filter(|p| self.connected.contains(p)) {
                    self.net.request(&peer, SyncRequest(wire::encode(&SyncReq::Announce { announce: Box::new(a) })));
                }
            }
        }
    }

    /// Writes where this node listens to `$SHOAL_HOME/node.json` (so local commands find it) and
    /// to `--ready-file`.
    pub(super) fn write_ready_file(&self) {
        let ready = NodeFile {
            blobs: self.shared.blobs.me().addrs,
            http: format!("http://{}", self.http_addr),
            listen: self.listen_addrs.iter().map(|a| format!("{a}/p2p/{}", self.net.peer_id())).collect(),
            node: hex::encode(self.core.id()),
            peer_id: self.net.peer_id().to_string(),
        };
        let ready = serde_json::to_string(&ready).expect("a NodeFile serializes");
        let home_file = self.shared.store.home().join("node.json");
        for path in std::iter::once(&home_file).chain(self.opts.ready_file.as_ref()) {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, format!("{ready}\n")).and_then(|()| std::fs::rename(&tmp, path)).is_err() {
                warn!("cannot write {}", path.display());
            }
        }
    }
}
