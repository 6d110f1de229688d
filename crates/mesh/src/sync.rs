//! Anti-entropy: the exchange that repairs what gossip lost. Every [`Settings::sync_period_ms`]
//! a node sends one connected peer, in turn, its ledger's digest (`SyncReq::Digest`); a peer whose
//! digest differs answers with every fact id it holds (`SyncResp::Ids`); the asker then fetches
//! what it lacks (`SyncReq::Get`) and pushes what the peer lacks (`SyncReq::Put`). Equal digests
//! cost one round trip of ~100 bytes, which is all an idle mesh sends.
//!
//! Sans-IO: the driver says which peers are connected, hands in the requests and responses that
//! arrive (with the ledger, which the scheduler core owns), sends what [`Sync::poll_request`]
//! gives, and stores the facts [`Sync::handle_request`] and [`Sync::handle_response`] return
//! through the core. A `Hold` is not anti-entropy: the driver answers it elsewhere.

use std::collections::{BTreeSet, VecDeque};

use shoal_dag::Hash;

use crate::Settings;
use crate::ledger::{Fact, Ledger, NodeId};
use crate::wire::{self, SyncReq, SyncResp};

/// What to do with a peer's request.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Answer with this.
    Answer(SyncResp),
    /// Store these facts (through the core), then answer `SyncResp::Stored` with the counts.
    Store(Vec<Fact>),
}

/// One node's side of anti-entropy.
#[derive(Debug)]
pub struct Sync {
    period_ms: u64,
    /// When the next exchange starts; 0 at first, so a node starts one as soon as it runs.
    next_ms: u64,
    /// Connected peers, in the order turns go round.
    peers: BTreeSet<NodeId>,
    /// The peer asked last, as an index into `peers`.
    turn: usize,
    out: VecDeque<(NodeId, SyncReq)>,
}

impl Sync {
    pub fn new(settings: &Settings) -> Sync {
        Sync {
            period_ms: settings.sync_period_ms.max(1),
            next_ms: 0,
            peers: BTreeSet::new(),
            turn: 0,
            out: VecDeque::new(),
        }
    }

    /// A connection to `peer` opened.
    pub fn handle_connected(&mut self, _now_ms: u64, peer: NodeId) {
        self.peers.insert(peer);
    }

    /// The connection to `peer` closed.
    pub fn handle_disconnected(&mut self, _now_ms: u64, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// Starts an exchange with the next connected peer when one is due.
    pub fn handle_tick(&mut self, now_ms: u64, ledger: &Ledger) {
        if now_ms < self.next_ms {
            return;
        }
        self.next_ms = now_ms + self.period_ms;
        if self.peers.is_empty() {
            return;
        }
        self.turn = (self.turn + 1) % self.peers.len();
        let peer = *self.peers.iter().nth(self.turn).expect("turn < peers");
        self.out.push_back((peer, SyncReq::Digest { digest: ledger.digest(), count: ledger.len() as u64 }));
    }

    /// When [`Sync::handle_tick`] has something to do next.
    pub fn poll_timeout(&self) -> Option<u64> {
        Some(self.next_ms)
    }

    /// A request to send.
    pub fn poll_request(&mut self) -> Option<(NodeId, SyncReq)> {
        self.out.pop_front()
    }

    /// A peer's request, answered from `ledger`.
    pub fn handle_request(&mut self, _now_ms: u64, ledger: &Ledger, req: SyncReq) -> Inbound {
        match req {
            SyncReq::Digest { digest, .. } => {
                if digest == ledger.digest() {
                    Inbound::Answer(SyncResp::Same)
                } else {
                    Inbound::Answer(SyncResp::Ids {
                        ids: ledger.ids().into_iter().take(wire::IDS_PER_MESSAGE_MAX).collect(),
                    })
                }
            }
            SyncReq::Get { ids } => Inbound::Answer(SyncResp::Facts {
                facts: ids.iter().take(wire::FACTS_PER_MESSAGE_MAX).filter_map(|id| ledger.get(id).cloned()).collect(),
            }),
            SyncReq::Put { facts } => Inbound::Store(facts.into_iter().take(wire::FACTS_PER_MESSAGE_MAX).collect()),
            SyncReq::Hold { dag } => {
                Inbound::Answer(SyncResp::Refused { reason: format!("a Hold of {dag} is answered apart") })
            }
            SyncReq::Announce { .. } => {
                Inbound::Answer(SyncResp::Refused { reason: "an announcement is answered apart".into() })
            }
        }
    }

    /// A peer's answer to one of our requests: queues the `Get` of what we lack and the `Put` of
    /// what it lacks after its ids; returns the facts it sent, to store (through the core).
    pub fn handle_response(&mut self, _now_ms: u64, ledger: &Ledger, from: NodeId, resp: SyncResp) -> Vec<Fact> {
        match resp {
            SyncResp::Ids { ids } => {
                let theirs: BTreeSet<Hash> = ids.into_iter().collect();
                let mine = ledger.ids();
                let want: Vec<Hash> = theirs.difference(&mine).take(wire::FACTS_PER_MESSAGE_MAX).copied().collect();
                if !want.is_empty() {
                    self.out.push_back((from, SyncReq::Get { ids: want }));
                }
                let give: Vec<Fact> = ledger.missing_from(&theirs).take(wire::FACTS_PER_MESSAGE_MAX).cloned().collect();
                if !give.is_empty() {
                    self.out.push_back((from, SyncReq::Put { facts: give }));
                }
                Vec::new()
            }
            SyncResp::Facts { facts } => facts,
            SyncResp::Same
            | SyncResp::Stored { .. }
            | SyncResp::Holding { .. }
            | SyncResp::Refused { .. }
            | SyncResp::Heard => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Body, Hlc};
    use ed25519_dalek::SigningKey;

    fn ledger_with(n: u64) -> Ledger {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut l = Ledger::new();
        for i in 0..n {
            let body = Body::Submit { dag: Hash::of(&i.to_le_bytes()), jobs: vec!["a".into()], max_attempts: 1 };
            l.insert(Fact::sign(&key, Hlc { wall_ms: i, counter: 0 }, body)).expect("valid");
        }
        l
    }

    /// Sends every request `me` has to `peer` and takes the answers; whether there was any.
    /// `from` is `peer`'s id as `me` knows it.
    fn drain(me: &mut (Sync, Ledger), peer: &mut (Sync, Ledger), from: NodeId) -> bool {
        let mut any = false;
        while let Some((_, req)) = me.0.poll_request() {
            any = true;
            let resp = match peer.0.handle_request(0, &peer.1, req) {
                Inbound::Answer(r) => r,
                Inbound::Store(facts) => {
                    let n = facts.len() as u64;
                    for f in facts {
                        peer.1.insert(f).expect("valid");
                    }
                    SyncResp::Stored { added: n, refused: 0 }
                }
            };
            for f in me.0.handle_response(0, &me.1, from, resp) {
                me.1.insert(f).expect("valid");
            }
        }
        any
    }

    /// Two nodes' sync machines wired to each other until neither has anything to send.
    fn exchange(a: &mut (Sync, Ledger), b: &mut (Sync, Ledger), ids: (NodeId, NodeId)) {
        for _ in 0..8 {
            let a_sent = drain(a, b, ids.0);
            let b_sent = drain(b, a, ids.1);
            if !a_sent && !b_sent {
                return;
            }
        }
        panic!("the exchange did not end");
    }

    #[test]
    fn one_exchange_makes_two_ledgers_equal() {
        let settings = Settings::default();
        let (ida, idb) = ([1; 32], [2; 32]);
        let mut a = (Sync::new(&settings), ledger_with(5));
        let mut b = (Sync::new(&settings), ledger_with(2));
        // b also holds a fact a lacks.
        let extra = Fact::sign(
            &SigningKey::from_bytes(&[9; 32]),
            Hlc { wall_ms: 99, counter: 0 },
            Body::Cancel { dag: Hash::of(b"x") },
        );
        b.1.insert(extra).expect("valid");
        a.0.handle_connected(0, idb);
        b.0.handle_connected(0, ida);
        a.0.handle_tick(0, &a.1);
        exchange(&mut a, &mut b, (idb, ida));
        assert_eq!(a.1.digest(), b.1.digest());
        assert_eq!(a.1.len(), 6);
    }

    #[test]
    fn equal_ledgers_cost_one_digest_and_a_same() {
        let mut s = Sync::new(&Settings::default());
        let l = ledger_with(3);
        s.handle_connected(0, [2; 32]);
        s.handle_tick(0, &l);
        let (to, req) = s.poll_request().expect("a digest is due at once");
        assert_eq!(to, [2; 32]);
        let mut peer = Sync::new(&Settings::default());
        assert_eq!(peer.handle_request(0, &ledger_with(3), req), Inbound::Answer(SyncResp::Same));
        assert!(s.handle_response(0, &l, to, SyncResp::Same).is_empty());
        assert!(s.poll_request().is_none());
    }

    #[test]
    fn exchanges_are_spaced_by_the_period_and_go_round_the_peers() {
        let settings = Settings { sync_period_ms: 1_000, ..Settings::default() };
        let mut s = Sync::new(&settings);
        let l = ledger_with(1);
        for p in [[1; 32], [2; 32], [3; 32]] {
            s.handle_connected(0, p);
        }
        let mut asked = Vec::new();
        for now in (0..3_000).step_by(250) {
            s.handle_tick(now, &l);
            while let Some((p, _)) = s.poll_request() {
                asked.push((now, p[0]));
            }
        }
        assert_eq!(asked, vec![(0, 2), (1_000, 3), (2_000, 1)]);
        assert_eq!(s.poll_timeout(), Some(3_000));
    }

    #[test]
    fn no_peer_no_request() {
        let mut s = Sync::new(&Settings::default());
        s.handle_tick(0, &ledger_with(1));
        assert!(s.poll_request().is_none());
        s.handle_connected(0, [4; 32]);
        s.handle_disconnected(0, [4; 32]);
        s.handle_tick(10_000, &ledger_with(1));
        assert!(s.poll_request().is_none());
    }
}
