//! The message layer: a node's uplink (messages queue behind each other), one-way latency (a
//! distribution, or the lab's sites: WAN delay, jitter, TCP retransmissions of lost frames, and
//! the relay that carries a symmetric-NAT site's messages), loss, partitions and dead receivers;
//! and what each message weighs on the wire.

use std::collections::HashMap;

use shoal_dag::Hash;
use shoal_mesh::ledger::{Fact, VerifiedFact};
use shoal_mesh::wire::{self, SyncReq, SyncResp};

use super::{Ev, FactMeta, Sim};
use crate::config::{Site, SiteNat, TCP_RTO_MIN_MS};

/// Per-message framing beyond the CBOR of the facts: gossipsub's protobuf envelope, yamux and
/// noise framing, in bytes (measured order of magnitude, not exact).
pub(super) const MESSAGE_OVERHEAD_BYTES: u64 = 64;
/// A digest request or a `Same` answer of anti-entropy, in bytes (framing included).
pub(super) const DIGEST_BYTES: u64 = 112;
/// One fact id in an `Ids`/`Get` message, in bytes.
pub(super) const ID_BYTES: u64 = 34;

/// Bytes of an anti-entropy request on the wire: facts at their CBOR size, ids at
/// [`ID_BYTES`], framing included.
pub(super) fn request_bytes(req: &SyncReq, meta: &HashMap<Hash, FactMeta>) -> u64 {
    match req {
        SyncReq::Digest { .. } | SyncReq::Tombstones { .. } => DIGEST_BYTES,
        SyncReq::Get { ids } => MESSAGE_OVERHEAD_BYTES + ID_BYTES * ids.len() as u64,
        SyncReq::Put { facts } => MESSAGE_OVERHEAD_BYTES + facts_bytes(facts, meta),
        SyncReq::Hold { .. } => DIGEST_BYTES,
        SyncReq::Announce { announce } => MESSAGE_OVERHEAD_BYTES + wire::encode(announce).len() as u64,
    }
}

/// Bytes of an anti-entropy answer on the wire (see [`request_bytes`]).
pub(super) fn response_bytes(resp: &SyncResp, meta: &HashMap<Hash, FactMeta>) -> u64 {
    match resp {
        SyncResp::Ids { ids, .. } => MESSAGE_OVERHEAD_BYTES + ID_BYTES * ids.len() as u64,
        SyncResp::Facts { facts } => MESSAGE_OVERHEAD_BYTES + facts_bytes(facts, meta),
        // A DAG hash, a summary hash and a time each.
        SyncResp::Tombstones { list, .. } => {
            MESSAGE_OVERHEAD_BYTES + 2 * ID_BYTES * list.len() as u64 + 9 * list.len() as u64
        }
        _ => DIGEST_BYTES,
    }
}

pub(super) fn facts_bytes(facts: &[Fact], meta: &HashMap<Hash, FactMeta>) -> u64 {
    facts.iter().map(|f| meta.get(&f.id()).map_or_else(|| wire::encode(f).len() as u64, |m| u64::from(m.bytes))).sum()
}

impl Sim {
    /// One message on the wire: uplink time, latency, loss, partitions, dead receivers.
    pub(super) fn send(&mut self, from: u32, to: u32, topic: u32, facts: Vec<VerifiedFact>, bytes: u64) {
        let at = self.transmit(from, Some(to), bytes);
        if !self.reachable(from, to) || (self.cfg.loss > 0.0 && self.rng.unit() < self.cfg.loss) {
            return;
        }
        self.nodes[to as usize].bytes_in += bytes;
        self.push(at, Ev::Deliver { to, from, topic, facts });
    }

    /// Queues `bytes` on a node's uplink to `to` (`None`: to the whole mesh, as far as its
    /// farthest site); when they arrive at the far end (before loss). Through the relay, the relay
    /// receives and sends them too.
    pub(super) fn transmit(&mut self, from: u32, to: Option<u32>, bytes: u64) -> u64 {
        let lat = self.latency(from, to);
        if let Some(r) = self.relay_between(from, to) {
            let relay = &mut self.nodes[r as usize];
            relay.bytes_in += bytes;
            relay.bytes_out += bytes;
        }
        let node = &mut self.nodes[from as usize];
        node.bytes_out += bytes;
        let wire_ms = bytes * 8 * 1000 / self.cfg.uplink_bps.max(1);
        node.link_free_at = node.link_free_at.max(self.now) + wire_ms;
        node.link_free_at + lat
    }

    /// One-way latency from `from` to `to` (`None`: to the farthest site), ms.
    fn latency(&mut self, from: u32, to: Option<u32>) -> u64 {
        let Some(a) = self.cfg.site_of(from as usize).cloned() else {
            return self.cfg.latency.sample(&mut self.rng);
        };
        let b = match to {
            Some(to) => match self.cfg.site_of(to as usize) {
                Some(b) => b.clone(),
                None => return self.cfg.latency.sample(&mut self.rng),
            },
            None => {
                let far = self.cfg.sites.iter().filter(|s| s.name != a.name).max_by_key(|s| s.one_way_ms);
                match far {
                    Some(b) => b.clone(),
                    None => return 0,
                }
            }
        };
        if a.name == b.name {
            return 0;
        }
        let rtt = 2 * (a.one_way_ms + b.one_way_ms);
        self.wan_ms(&a, rtt) + self.wan_ms(&b, rtt)
    }

    /// A frame across one site's WAN link: its delay ± jitter, and a retransmission timeout
    /// (doubling) for each time it is lost.
    fn wan_ms(&mut self, site: &Site, rtt_ms: u64) -> u64 {
        let mut ms = site.one_way_ms - site.jitter_ms + self.rng.range(0, 2 * site.jitter_ms);
        let mut rto = rtt_ms + TCP_RTO_MIN_MS;
        while site.loss_pct > 0.0 && self.rng.unit() * 100.0 < site.loss_pct {
            ms += rto;
            rto *= 2;
        }
        ms
    }

    /// The relay node, up, when a message from `from` to `to` goes through it: one end is behind
    /// a symmetric NAT and neither end is the relay.
    fn relay_between(&self, from: u32, to: Option<u32>) -> Option<u32> {
        let r = self.cfg.relay()? as u32;
        let symmetric = |n: u32| self.cfg.site_of(n as usize).is_some_and(|s| s.nat == SiteNat::Symmetric);
        let through = match to {
            Some(to) => from != r && to != r && (symmetric(from) || symmetric(to)),
            None => from != r && symmetric(from),
        };
        (through && self.up(r)).then_some(r)
    }

    pub(super) fn reachable(&self, a: u32, b: u32) -> bool {
        self.up(b) && !(self.partitioned && self.nodes[a as usize].side != self.nodes[b as usize].side)
    }
}
