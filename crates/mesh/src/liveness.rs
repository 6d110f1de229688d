//! Heartbeats and the failure detector. A node greets each peer it connects to with its
//! addresses and capabilities, sends every peer it has a connection with a heartbeat every
//! [`Settings::heartbeat_ms`] (one hop, no forwarding: a mesh of N nodes costs each node N
//! small messages a period, where gossip would cost it N × the gossip degree), and announces
//! itself to the whole mesh by gossip once it has a connection and every
//! [`Settings::announce_mesh_ms`] after, so nodes it has no connection with learn of it and can
//! dial it. A peer heard from directly is live while its heartbeats keep coming (within
//! [`Settings::liveness_timeout_ms`]); one only ever heard through gossip while
//! [`Settings::mesh_liveness_timeout_ms`] (three mesh announcements). A peer silent for long enough is forgotten.
//!
//! Sans-IO: the driver reports connections and the announcements it receives (and whether one
//! came directly), sends a heartbeat to the [`Audience`] [`Liveness::poll_heartbeat`] names,
//! and tells the scheduler core the live peers when [`Liveness::handle_heard`] says a peer is new
//! or [`Liveness::poll_forgotten`] gives one. Time is any monotonic clock in ms (`shoal node`
//! counts from its start, so a change of the wall clock never makes every peer look dead).

use std::collections::{BTreeMap, VecDeque};

use crate::Settings;
use crate::ledger::NodeId;

/// Who a heartbeat goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Every node, by gossip (the announcement topic): how nodes without a connection to this
    /// one learn its addresses and capabilities.
    Mesh,
    /// Each peer this node has a connection with, one hop: the regular heartbeat.
    Connected,
    /// One peer: a newcomer greeted with our capabilities (if we have a connection to it).
    Peer(NodeId),
}

/// An announcement to send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Whether it carries the full capabilities (greetings, mesh announcements, and every
    /// [`Settings::caps_every`]th regular heartbeat, in case they changed).
    pub with_caps: bool,
    pub to: Audience,
}

/// When a peer was last heard, and whether ever directly.
#[derive(Clone, Copy, Debug)]
struct Heard {
    at_ms: u64,
    /// Heard through a direct heartbeat since it was last new: then only direct ones count,
    /// so a peer that died is not kept alive by an old gossip announcement.
    direct: bool,
}

/// One node's heartbeats and its view of which peers are alive.
#[derive(Debug)]
pub struct Liveness {
    heartbeat_ms: u64,
    heartbeat_after_connect_ms: u64,
    announce_mesh_ms: u64,
    caps_every: u64,
    timeout_ms: u64,
    mesh_timeout_ms: u64,
    forget_after_ms: u64,
    heard: BTreeMap<NodeId, Heard>,
    /// When the next regular heartbeat is due; 0 at first, so a node beats as it starts.
    next_heartbeat_ms: u64,
    /// When the next mesh announcement is due; `u64::MAX` until the first connection (gossip
    /// with nobody to carry it is lost).
    next_mesh_ms: u64,
    /// Peers to greet, oldest first (each once).
    greet: VecDeque<NodeId>,
    /// Regular heartbeats sent so far.
    sent: u64,
    forgotten: VecDeque<NodeId>,
}

impl Liveness {
    pub fn new(settings: &Settings) -> Liveness {
        Liveness {
            heartbeat_ms: settings.heartbeat_ms.max(1),
            heartbeat_after_connect_ms: settings.heartbeat_after_connect_ms,
            announce_mesh_ms: settings.announce_mesh_ms.max(1),
            caps_every: settings.caps_every.max(1),
            timeout_ms: settings.liveness_timeout_ms,
            mesh_timeout_ms: settings.mesh_liveness_timeout_ms,
            forget_after_ms: settings.forget_after_ms.max(settings.liveness_timeout_ms),
            heard: BTreeMap::new(),
            next_heartbeat_ms: 0,
            next_mesh_ms: u64::MAX,
            greet: VecDeque::new(),
            sent: 0,
            forgotten: VecDeque::new(),
        }
    }

    /// A connection to `peer` opened (a newcomer, or a peer back from a restart): it is greeted
    /// at once with our addresses and capabilities. The first connection also brings this
    /// node's first mesh announcement, once gossip subscriptions had a moment to be exchanged.
    pub fn handle_connected(&mut self, now_ms: u64, peer: NodeId) {
        if !self.greet.contains(&peer) {
            self.greet.push_back(peer);
        }
        if self.next_mesh_ms == u64::MAX {
            self.next_mesh_ms = now_ms + self.heartbeat_after_connect_ms;
        }
    }

    /// An announcement of `peer` arrived, `direct`ly (a greeting or heartbeat over a connection
    /// with it) or by gossip. Returns whether the peer is new to this node (then the core should
    /// be told the live peers, and the peer is greeted, so it learns of us without waiting).
    pub fn handle_heard(&mut self, now_ms: u64, peer: NodeId, direct: bool) -> bool {
        match self.heard.get_mut(&peer) {
            Some(h) if h.direct && !direct => false,
            Some(h) => {
                *h = Heard { at_ms: now_ms, direct };
                false
            }
            None => {
                self.heard.insert(peer, Heard { at_ms: now_ms, direct });
                if !self.greet.contains(&peer) {
                    self.greet.push_back(peer);
                }
                true
            }
        }
    }

    /// How long a peer counts as live after it was heard, and when it is forgotten.
    fn limits(&self, h: &Heard) -> (u64, u64) {
        if h.direct {
            (self.timeout_ms, self.forget_after_ms)
        } else {
            (self.mesh_timeout_ms, self.mesh_timeout_ms.max(self.forget_after_ms))
        }
    }

    /// Forgets the peers silent for too long (see [`Liveness::poll_forgotten`]).
    pub fn handle_tick(&mut self, now_ms: u64) {
        let gone: Vec<NodeId> = self
            .heard
            .iter()
            .filter(|(_, h)| now_ms.saturating_sub(h.at_ms) >= self.limits(h).1)
            .map(|(n, _)| *n)
            .collect();
        for n in gone {
            self.heard.remove(&n);
            self.forgotten.push_back(n);
        }
    }

    /// A heartbeat to send now, if one is due: greetings first, then the mesh announcement, then
    /// the regular heartbeat.
    pub fn poll_heartbeat(&mut self, now_ms: u64) -> Option<Heartbeat> {
        if let Some(peer) = self.greet.pop_front() {
            return Some(Heartbeat { with_caps: true, to: Audience::Peer(peer) });
        }
        if now_ms >= self.next_mesh_ms {
            self.next_mesh_ms = now_ms + self.announce_mesh_ms;
            return Some(Heartbeat { with_caps: true, to: Audience::Mesh });
        }
        if now_ms >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now_ms + self.heartbeat_ms;
            let with_caps = self.sent.is_multiple_of(self.caps_every);
            self.sent += 1;
            return Some(Heartbeat { with_caps, to: Audience::Connected });
        }
        None
    }

    /// A peer forgotten: no longer listed, ranked or asked.
    pub fn poll_forgotten(&mut self) -> Option<NodeId> {
        self.forgotten.pop_front()
    }

    /// When a heartbeat is due or a peer is to be forgotten next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let forget = self.heard.values().map(|h| h.at_ms.saturating_add(self.limits(h).1)).min();
        let beat = if self.greet.is_empty() { self.next_heartbeat_ms.min(self.next_mesh_ms) } else { 0 };
        Some(forget.map_or(beat, |f| f.min(beat)))
    }

    fn live_at(&self, now_ms: u64, h: &Heard) -> bool {
        now_ms.saturating_sub(h.at_ms) < self.limits(h).0
    }

    /// Peers heard from within the liveness timeout, freshest first.
    pub fn live(&self, now_ms: u64) -> Vec<NodeId> {
        let mut live: Vec<(NodeId, u64)> =
            self.heard.iter().filter(|(_, h)| self.live_at(now_ms, h)).map(|(n, h)| (*n, h.at_ms)).collect();
        live.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        live.into_iter().map(|(n, _)| n).collect()
    }

    /// Whether `peer` was heard from within the liveness timeout.
    pub fn is_live(&self, now_ms: u64, peer: &NodeId) -> bool {
        self.heard.get(peer).is_some_and(|h| self.live_at(now_ms, h))
    }

    /// When `peer` was last heard from, unless it was forgotten or never heard.
    pub fn last_heard(&self, peer: &NodeId) -> Option<u64> {
        self.heard.get(peer).map(|h| h.at_ms)
    }

    /// Peers heard from and not forgotten, live or not.
    pub fn known(&self) -> impl Iterator<Item = &NodeId> {
        self.heard.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beats(l: &mut Liveness, from: u64, to: u64, step: u64) -> Vec<(u64, Heartbeat)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            while let Some(h) = l.poll_heartbeat(t) {
                out.push((t, h));
            }
            t += step;
        }
        out
    }

    const fn beat(with_caps: bool, to: Audience) -> Heartbeat {
        Heartbeat { with_caps, to }
    }

    #[test]
    fn heartbeats_go_to_connected_peers_regularly_with_caps_every_so_often() {
        let s = Settings { heartbeat_ms: 100, caps_every: 3, ..Settings::default() };
        let mut l = Liveness::new(&s);
        let got = beats(&mut l, 0, 500, 10);
        let c = Audience::Connected;
        assert_eq!(
            got,
            vec![
                (0, beat(true, c)),
                (100, beat(false, c)),
                (200, beat(false, c)),
                (300, beat(true, c)),
                (400, beat(false, c))
            ]
        );
    }

    #[test]
    fn a_connection_is_greeted_at_once_and_the_first_brings_the_mesh_announcement() {
        let s = Settings {
            heartbeat_ms: 1_000,
            heartbeat_after_connect_ms: 30,
            announce_mesh_ms: 5_000,
            caps_every: 100,
            ..Settings::default()
        };
        let mut l = Liveness::new(&s);
        assert_eq!(beats(&mut l, 0, 10, 10), vec![(0, beat(true, Audience::Connected))]);
        l.handle_connected(500, [1; 32]);
        assert_eq!(
            beats(&mut l, 500, 600, 10),
            vec![(500, beat(true, Audience::Peer([1; 32]))), (530, beat(true, Audience::Mesh))]
        );
        // A second connection: a greeting, no mesh announcement before its period.
        l.handle_connected(700, [2; 32]);
        let got = beats(&mut l, 700, 5_600, 10);
        assert_eq!(got[0], (700, beat(true, Audience::Peer([2; 32]))));
        assert_eq!(
            got.iter().filter(|(_, b)| b.to == Audience::Mesh).map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![5_530]
        );
        assert_eq!(got.iter().filter(|(_, b)| b.to == Audience::Connected).count(), 5, "1,000 .. 5,000");
    }

    #[test]
    fn a_new_peer_is_greeted_at_once_without_moving_the_regular_heartbeats() {
        let s = Settings { heartbeat_ms: 1_000, ..Settings::default() };
        let mut l = Liveness::new(&s);
        l.poll_heartbeat(0).expect("first");
        assert!(l.handle_heard(400, [1; 32], false));
        assert_eq!(l.poll_heartbeat(400), Some(beat(true, Audience::Peer([1; 32]))));
        assert!(l.poll_heartbeat(401).is_none());
        assert!(!l.handle_heard(500, [1; 32], true), "heard before");
        assert!(l.poll_heartbeat(999).is_none());
        assert!(l.poll_heartbeat(1_000).is_some());
    }

    #[test]
    fn live_means_heard_within_the_timeout_freshest_first_and_silence_is_forgotten() {
        let s = Settings { liveness_timeout_ms: 100, forget_after_ms: 400, ..Settings::default() };
        let mut l = Liveness::new(&s);
        l.handle_heard(0, [1; 32], true);
        l.handle_heard(50, [2; 32], true);
        assert_eq!(l.live(60), vec![[2; 32], [1; 32]]);
        assert_eq!(l.live(100), vec![[2; 32]]);
        assert!(!l.is_live(100, &[1; 32]) && l.is_live(100, &[2; 32]));
        while l.poll_heartbeat(0).is_some() {}
        assert_eq!(l.poll_timeout(), Some(400), "peer 1 is forgotten at 400");
        l.handle_tick(399);
        assert!(l.poll_forgotten().is_none());
        l.handle_tick(400);
        assert_eq!(l.poll_forgotten(), Some([1; 32]));
        assert_eq!(l.last_heard(&[1; 32]), None);
        assert_eq!(l.known().count(), 1);
        assert!(l.handle_heard(500, [1; 32], true), "a forgotten peer is new again");
    }

    #[test]
    fn a_peer_heard_only_by_gossip_lives_longer_but_once_heard_directly_only_direct_beats_count() {
        let s = Settings {
            liveness_timeout_ms: 100,
            mesh_liveness_timeout_ms: 1_000,
            forget_after_ms: 400,
            ..Settings::default()
        };
        let mut l = Liveness::new(&s);
        l.handle_heard(0, [1; 32], false);
        assert!(l.is_live(999, &[1; 32]) && !l.is_live(1_000, &[1; 32]));
        l.handle_heard(10, [1; 32], true);
        // Its direct heartbeats stopped (it died); a stale gossip announcement keeps nothing alive.
        l.handle_heard(50, [1; 32], false);
        assert_eq!(l.last_heard(&[1; 32]), Some(10));
        assert!(!l.is_live(110, &[1; 32]));
        l.handle_tick(410);
        assert_eq!(l.poll_forgotten(), Some([1; 32]));
    }
}
