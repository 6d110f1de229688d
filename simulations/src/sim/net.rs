//! The message layer: a node's uplink (messages queue behind each other), one-way latency, loss,
//! partitions and dead receivers; and what each message weighs on the wire.

use std::collections::HashMap;

use shoal_dag::Hash;
use shoal_mesh::ledger::{Fact, VerifiedFact};
use shoal_mesh::wire::{self, SyncReq, SyncResp};

use super::{Ev, FactMeta, Sim};

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
        SyncReq::Digest { .. } => DIGEST_BYTES,
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
        _ => DIGEST_BYTES,
    }
}

pub(super) fn facts_bytes(facts: &[Fact], meta: &HashMap<Hash, FactMeta>) -> u64 {
    facts.iter().map(|f| meta.get(&f.id()).map_or_else(|| wire::encode(f).len() as u64, |m| u64::from(m.bytes))).sum()
}

impl Sim {
    /// One message on the wire: uplink time, latency, loss, partitions, dead receivers.
    pub(super) fn send(&mut self, from: u32, to: u32, topic: u32, facts: Vec<VerifiedFact>, bytes: u64) {
        let at = self.transmit(from, bytes);
        if !self.reachable(from, to) || (self.cfg.loss > 0.0 && self.rng.unit() < self.cfg.loss) {
            return;
        }
        self.nodes[to as usize].bytes_in += bytes;
        self.push(at, Ev::Deliver { to, from, topic, facts });
    }

    /// Queues `bytes` on a node's uplink; when they arrive at the far end (before loss).
    pub(super) fn transmit(&mut self, from: u32, bytes: u64) -> u64 {
        let lat = self.cfg.latency.sample(&mut self.rng);
        let node = &mut self.nodes[from as usize];
        node.bytes_out += bytes;
        let wire_ms = bytes * 8 * 1000 / self.cfg.uplink_bps.max(1);
        node.link_free_at = node.link_free_at.max(self.now) + wire_ms;
        node.link_free_at + lat
    }

    pub(super) fn reachable(&self, a: u32, b: u32) -> bool {
        self.up(b) && !(self.partitioned && self.nodes[a as usize].side != self.nodes[b as usize].side)
    }
}
