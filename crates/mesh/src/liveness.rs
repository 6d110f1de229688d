//! Heartbeats and the failure detector. A node announces itself every
//! [`Settings::heartbeat_ms`] (and soon after a new connection, so the newcomer learns its
//! addresses and capabilities); a peer heard from within [`Settings::liveness_timeout_ms`] is
//! live (it ranks jobs, keeps replicas, serves blobs), and one silent for
//! [`Settings::forget_after_ms`] is forgotten.
//!
//! Sans-IO: the driver reports connections and the announcements it receives, sends a heartbeat
//! whenever [`Liveness::poll_heartbeat`] gives one, and tells the scheduler core the live peers
//! when [`Liveness::handle_heard`] says a peer is new or [`Liveness::poll_forgotten`] gives one.
//! Time is any monotonic clock in ms (`shoal node` counts from its start, so a change of the wall
//! clock never makes every peer look dead).

use std::collections::{BTreeMap, VecDeque};

use crate::Settings;
use crate::ledger::NodeId;

/// An announcement to send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Whether it carries the full capabilities (every [`Settings::caps_every`]th, and the first
    /// ones after a new connection or a new peer).
    pub with_caps: bool,
}

/// One node's heartbeats and its view of which peers are alive.
#[derive(Debug)]
pub struct Liveness {
    heartbeat_ms: u64,
    heartbeat_after_connect_ms: u64,
    caps_every: u64,
    caps_after_connect: u32,
    timeout_ms: u64,
    forget_after_ms: u64,
    /// When each peer was last heard from.
    heard: BTreeMap<NodeId, u64>,
    /// When the next regular heartbeat is due; 0 at first, so a node announces as it starts.
    next_heartbeat_ms: u64,
    /// A heartbeat out of turn is wanted (a new peer): it does not move the regular ones.
    heartbeat_now: bool,
    /// Heartbeats sent so far, and how many of the next ones carry capabilities whatever.
    sent: u64,
    caps_soon: u32,
    forgotten: VecDeque<NodeId>,
}

impl Liveness {
    pub fn new(settings: &Settings) -> Liveness {
        Liveness {
            heartbeat_ms: settings.heartbeat_ms.max(1),
            heartbeat_after_connect_ms: settings.heartbeat_after_connect_ms,
            caps_every: settings.caps_every.max(1),
            caps_after_connect: settings.caps_after_connect,
            timeout_ms: settings.liveness_timeout_ms,
            forget_after_ms: settings.forget_after_ms.max(settings.liveness_timeout_ms),
            heard: BTreeMap::new(),
            next_heartbeat_ms: 0,
            heartbeat_now: false,
            sent: 0,
            caps_soon: 0,
            forgotten: VecDeque::new(),
        }
    }

    /// A connection opened (a newcomer, or a peer back from a restart): it learns our addresses
    /// from our next heartbeat, so that comes soon (once gossip subscriptions are exchanged)
    /// rather than at the next regular time, and the next few carry the capabilities.
    pub fn handle_connected(&mut self, now_ms: u64) {
        self.next_heartbeat_ms = now_ms + self.heartbeat_after_connect_ms;
        self.caps_soon = self.caps_after_connect;
    }

    /// An announcement of `peer` arrived. Returns whether the peer is new to this node (then the
    /// core should be told the live peers, and a heartbeat goes out at once, so the newcomer
    /// learns of us without waiting for the next tick).
    pub fn handle_heard(&mut self, now_ms: u64, peer: NodeId) -> bool {
        let new = self.heard.insert(peer, now_ms).is_none();
        if new {
            self.heartbeat_now = true;
        }
        new
    }

    /// Forgets the peers silent for too long (see [`Liveness::poll_forgotten`]).
    pub fn handle_tick(&mut self, now_ms: u64) {
        let forget = self.forget_after_ms;
        let gone: Vec<NodeId> =
            self.heard.iter().filter(|(_, t)| now_ms.saturating_sub(**t) >= forget).map(|(n, _)| *n).collect();
        for n in gone {
            self.heard.remove(&n);
            self.forgotten.push_back(n);
        }
    }

    /// A heartbeat to send now, if one is due.
    pub fn poll_heartbeat(&mut self, now_ms: u64) -> Option<Heartbeat> {
        let due = now_ms >= self.next_heartbeat_ms;
        if !due && !std::mem::take(&mut self.heartbeat_now) {
            return None;
        }
        if due {
            self.next_heartbeat_ms = now_ms + self.heartbeat_ms;
            self.heartbeat_now = false;
        }
        let with_caps = self.sent.is_multiple_of(self.caps_every) || self.caps_soon > 0;
        self.sent += 1;
        self.caps_soon = self.caps_soon.saturating_sub(1);
        Some(Heartbeat { with_caps })
    }

    /// A peer forgotten: no longer listed, ranked or asked.
    pub fn poll_forgotten(&mut self) -> Option<NodeId> {
        self.forgotten.pop_front()
    }

    /// When a heartbeat is due or a peer is to be forgotten next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let forget = self.heard.values().min().map(|t| t + self.forget_after_ms);
        Some(forget.map_or(self.next_heartbeat_ms, |f| f.min(self.next_heartbeat_ms)))
    }

    /// Peers heard from within the liveness timeout, freshest first.
    pub fn live(&self, now_ms: u64) -> Vec<NodeId> {
        let mut live: Vec<(NodeId, u64)> = self
            .heard
            .iter()
            .filter(|(_, t)| now_ms.saturating_sub(**t) < self.timeout_ms)
            .map(|(n, t)| (*n, *t))
            .collect();
        live.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        live.into_iter().map(|(n, _)| n).collect()
    }

    /// Whether `peer` was heard from within the liveness timeout.
    pub fn is_live(&self, now_ms: u64, peer: &NodeId) -> bool {
        self.heard.get(peer).is_some_and(|t| now_ms.saturating_sub(*t) < self.timeout_ms)
    }

    /// When `peer` was last heard from, unless it was forgotten or never heard.
    pub fn last_heard(&self, peer: &NodeId) -> Option<u64> {
        self.heard.get(peer).copied()
    }

    /// Peers heard from and not forgotten, live or not.
    pub fn known(&self) -> impl Iterator<Item = &NodeId> {
        self.heard.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beats(l: &mut Liveness, from: u64, to: u64, step: u64) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            while let Some(h) = l.poll_heartbeat(t) {
                out.push((t, h.with_caps));
            }
            t += step;
        }
        out
    }

    #[test]
    fn heartbeats_are_regular_and_carry_caps_every_so_often() {
        let s = Settings { heartbeat_ms: 100, caps_every: 3, ..Settings::default() };
        let mut l = Liveness::new(&s);
        let got = beats(&mut l, 0, 500, 10);
        assert_eq!(got, vec![(0, true), (100, false), (200, false), (300, true), (400, false)]);
    }

    #[test]
    fn a_connection_brings_the_next_heartbeat_forward_with_caps() {
        let s =
            Settings { heartbeat_ms: 1_000, heartbeat_after_connect_ms: 30, caps_every: 100, ..Settings::default() };
        let mut l = Liveness::new(&s);
        assert_eq!(beats(&mut l, 0, 10, 10), vec![(0, true)]);
        l.handle_connected(500);
        assert_eq!(beats(&mut l, 500, 600, 10), vec![(530, true)]);
        // The next is a period after that one, and carries caps (two after a connection).
        assert_eq!(beats(&mut l, 600, 2_600, 10), vec![(1_530, true), (2_530, false)]);
    }

    #[test]
    fn a_new_peer_gets_a_heartbeat_at_once_without_moving_the_regular_ones() {
        let s = Settings { heartbeat_ms: 1_000, ..Settings::default() };
        let mut l = Liveness::new(&s);
        l.poll_heartbeat(0).expect("first");
        assert!(l.handle_heard(400, [1; 32]));
        assert!(l.poll_heartbeat(400).is_some());
        assert!(l.poll_heartbeat(401).is_none());
        assert!(!l.handle_heard(500, [1; 32]), "heard before");
        assert!(l.poll_heartbeat(999).is_none());
        assert!(l.poll_heartbeat(1_000).is_some());
    }

    #[test]
    fn live_means_heard_within_the_timeout_freshest_first_and_silence_is_forgotten() {
        let s = Settings { liveness_timeout_ms: 100, forget_after_ms: 400, ..Settings::default() };
        let mut l = Liveness::new(&s);
        l.handle_heard(0, [1; 32]);
        l.handle_heard(50, [2; 32]);
        assert_eq!(l.live(60), vec![[2; 32], [1; 32]]);
        assert_eq!(l.live(100), vec![[2; 32]]);
        assert!(!l.is_live(100, &[1; 32]) && l.is_live(100, &[2; 32]));
        assert_eq!(l.poll_timeout(), Some(0), "the first heartbeat is due");
        l.poll_heartbeat(0);
        assert_eq!(l.poll_timeout(), Some(400), "peer 1 is forgotten at 400");
        l.handle_tick(399);
        assert!(l.poll_forgotten().is_none());
        l.handle_tick(400);
        assert_eq!(l.poll_forgotten(), Some([1; 32]));
        assert_eq!(l.last_heard(&[1; 32]), None);
        assert_eq!(l.known().count(), 1);
        assert!(l.handle_heard(500, [1; 32]), "a forgotten peer is new again");
    }
}
