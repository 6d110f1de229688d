//! Automatic relays: which relays a node behind NAT reserves a slot on, and when it gives them up.
//!
//! The bookkeeping only; [`super::net::Net`] feeds it what the swarm says (a peer speaks the relay
//! hop protocol, AutoNAT's verdict, a relayed listener closed) and carries out what it answers (listen
//! on `<relay>/p2p/<id>/p2p-circuit`, remove a listener). A node reserves only while it is private
//! (AutoNAT said so, or [`super::net::NetConfig::force_private`]), on up to [`RELAYS_WANTED`] relays
//! counting the ones named with `--listen …/p2p-circuit`; a relay whose reservation failed or closed
//! waits [`RELAY_RETRY_S`] before it is tried again (at once if a connection to it comes up), and
//! another takes its place meanwhile.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::ListenerId;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// Relays a private node keeps a reservation on at once: two, so that when one dies the node is
/// still reachable through the other while it reserves on a third.
pub const RELAYS_WANTED: usize = 2;
/// How long a relay whose reservation failed or was lost waits before it is tried again, in
/// seconds (unless a connection to it comes up first: then at once).
pub const RELAY_RETRY_S: u64 = 30;
/// Relays remembered as candidates; past it a newly heard one is not kept (a mesh runs a handful).
pub const RELAY_CANDIDATES_MAX: usize = 64;
/// Addresses remembered per relay.
const RELAY_ADDRS_MAX: usize = 8;

/// Whether AutoNAT (or the configuration) says this node can be dialed from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// Not known yet: no probe answered.
    Unknown,
    /// A peer dialed one of our addresses back.
    Public,
    /// Peers could not dial us back: we are reached through relays.
    Private,
}

impl Reachability {
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

/// A relay we know of: where it can be dialed, and when it may be tried again.
#[derive(Debug, Default)]
struct Candidate {
    addrs: Vec<Multiaddr>,
    /// The address the next attempt dials, rotating through `addrs` after failures.
    next_addr: usize,
    retry_at: Option<Instant>,
}

/// A reservation under way or held.
#[derive(Debug)]
struct Reservation {
    relay: PeerId,
    accepted: bool,
}

#[derive(Debug)]
pub(super) struct AutoRelays {
    reachability: Reachability,
    /// The configuration says private: AutoNAT's verdict is not waited for.
    forced: bool,
    candidates: HashMap<PeerId, Candidate>,
    reservations: HashMap<ListenerId, Reservation>,
}

impl AutoRelays {
    pub(super) fn new(force_private: bool) -> AutoRelays {
        AutoRelays {
            reachability: if force_private { Reachability::Private } else { Reachability::Unknown },
            forced: force_private,
            candidates: HashMap::new(),
            reservations: HashMap::new(),
        }
    }

    pub(super) fn reachability(&self) -> Reachability {
        self.reachability
    }

    /// AutoNAT's new verdict. Public (and not forced private): the listeners to remove, every
    /// reservation is given up.
    pub(super) fn set_reachability(&mut self, r: Reachability) -> Vec<ListenerId> {
        if self.forced {
            return Vec::new();
        }
        self.reachability = r;
        if r == Reachability::Public { self.reservations.drain().map(|(id, _)| id).collect() } else { Vec::new() }
    }

    /// No verdict yet, but a probe's dial-back is slow to come: take it as private for now (a
    /// verdict replaces it). Whether that changed anything.
    pub(super) fn presume_private(&mut self) -> bool {
        let unknown = self.reachability == Reachability::Unknown;
        if unknown {
            self.reachability = Reachability::Private;
        }
        unknown
    }

    /// A peer that serves as a relay, at these addresses (already judged dialable). Whether it is
    /// new.
    pub(super) fn learn(&mut self, relay: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) -> bool {
        if !self.candidates.contains_key(&relay) && self.candidates.len() >= RELAY_CANDIDATES_MAX {
            return false;
        }
        let new = !self.candidates.contains_key(&relay);
        let c = self.candidates.entry(relay).or_default();
        for addr in addrs {
            if !c.addrs.contains(&addr) && c.addrs.len() < RELAY_ADDRS_MAX {
                c.addrs.push(addr);
            }
        }
        new
    }

    pub(super) fn is_relay(&self, peer: &PeerId) -> bool {
        self.candidates.contains_key(peer)
    }

    /// A direct connection to `peer` came up: if it is a relay that failed, it may be tried at once.
    pub(super) fn reachable_again(&mut self, peer: &PeerId) {
        if let Some(c) = self.candidates.get_mut(peer) {
            c.retry_at = None;
        }
    }

    /// The relays to reserve on now, with the circuit address to listen on: none unless private;
    /// enough to hold [`RELAYS_WANTED`] with `explicit` (relays named in the configuration, which
    /// are not picked again), connected relays first.
    pub(super) fn wanted(
        &self,
        now: Instant,
        explicit: &HashSet<PeerId>,
        connected: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Multiaddr)> {
        if self.reachability != Reachability::Private {
            return Vec::new();
        }
        let held: HashSet<PeerId> = self.reservations.values().map(|r| r.relay).collect();
        let want = RELAYS_WANTED.saturating_sub(held.len() + explicit.len());
        let mut eligible: Vec<(&PeerId, &Candidate)> = self
            .candidates
            .iter()
            .filter(|(p, c)| {
                !held.contains(p) && !explicit.contains(p) && c.retry_at.is_none_or(|t| t <= now) && !c.addrs.is_empty()
            })
            .collect();
        // Connected first (the reservation rides the connection), then by id, so that every run
        // of a test picks the same ones.
        eligible.sort_by_key(|(p, _)| (!connected(p), **p));
        eligible
            .into_iter()
            .take(want)
            .map(|(p, c)| {
                let addr = c.addrs[c.next_addr % c.addrs.len()].clone();
                (*p, addr.with(Protocol::P2p(*p)).with(Protocol::P2pCircuit))
            })
            .collect()
    }

    /// A reservation was asked for on `relay` through `listener`.
    pub(super) fn reserving(&mut self, relay: PeerId, listener: ListenerId) {
        self.reservations.insert(listener, Reservation { relay, accepted: false });
    }

    /// `listener` is one of ours and the relay accepted (its address is listened on). The relay.
    pub(super) fn accepted(&mut self, listener: ListenerId) -> Option<PeerId> {
        let r = self.reservations.get_mut(&listener)?;
        r.accepted = true;
        Some(r.relay)
    }

    /// `listener` closed (refused, the relay gone, or removed): the relay, if it was one of ours,
    /// waits [`RELAY_RETRY_S`] before it is tried again, at its next address if it was never
    /// reached.
    pub(super) fn closed(&mut self, listener: ListenerId, now: Instant) -> Option<PeerId> {
        let r = self.reservations.remove(&listener)?;
        if let Some(c) = self.candidates.get_mut(&r.relay) {
            c.retry_at = Some(now + Duration::from_secs(RELAY_RETRY_S));
            if !r.accepted {
                c.next_addr = c.next_addr.wrapping_add(1);
            }
        }
        Some(r.relay)
    }

    /// The relays with an accepted reservation.
    pub(super) fn held(&self) -> Vec<PeerId> {
        let mut held: Vec<PeerId> = self.reservations.values().filter(|r| r.accepted).map(|r| r.relay).collect();
        held.sort();
        held
    }
}

/// Whether `addr` may serve to dial a relay from elsewhere: a direct TCP address (no circuit) at an
/// IP that is not loopback, unspecified, link-local or multicast, and global unless
/// `allow_private` (a lab or a private WAN, `--autonat-private-ips`).
pub(super) fn relay_dialable(addr: &Multiaddr, allow_private: bool) -> bool {
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::P2pCircuit => return false,
            _ => {}
        }
    }
    match ip {
        Some(IpAddr::V4(a)) => {
            !(a.is_loopback() || a.is_unspecified() || a.is_link_local() || a.is_multicast() || a.is_broadcast())
                && (allow_private || is_global_v4(a))
        }
        Some(IpAddr::V6(a)) => {
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
            !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || link_local)
                && (allow_private || is_global_v6(a))
        }
        // A DNS name: the operator named it, so it is taken as given.
        None => true,
    }
}

/// `Ipv4Addr::is_global` (unstable in std): not private, shared (100.64/10), benchmarking
/// (198.18/15, the lab's public side), documentation or reserved.
fn is_global_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    !(a.is_private()
        || a.is_documentation()
        || o0 == 0
        || (o0 == 100 && (o1 & 0xc0) == 64)
        || (o0 == 198 && (o1 & 0xfe) == 18)
        || (o0 == 192 && o1 == 0 && o2 == 0)
        || o0 >= 240)
}

/// Not unique-local (fc00::/7) nor documentation (2001:db8::/32).
fn is_global_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    !((s[0] & 0xfe00) == 0xfc00 || (s[0] == 0x2001 && s[1] == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        let mut s = [0u8; 32];
        s[0] = n;
        let key = libp2p::identity::Keypair::ed25519_from_bytes(s).unwrap();
        key.public().to_peer_id()
    }

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserves_only_while_private_and_up_to_the_wanted_number() {
        let now = Instant::now();
        let mut r = AutoRelays::new(false);
        for n in 1..=3 {
            r.learn(peer(n), [addr(&format!("/ip4/198.18.0.{}/tcp/7000", 9 + n))]);
        }
        assert!(r.wanted(now, &HashSet::new(), |_| true).is_empty(), "unknown: no reservation");
        // A slow dial-back: presumed private until a verdict; a verdict is not overridden.
        assert!(r.presume_private());
        assert_eq!(r.wanted(now, &HashSet::new(), |_| true).len(), RELAYS_WANTED);
        r.set_reachability(Reachability::Public);
        assert!(!r.presume_private(), "a verdict stands");
        assert_eq!(r.reachability(), Reachability::Public);
        r.set_reachability(Reachability::Private);
        let want = r.wanted(now, &HashSet::new(), |p| *p == peer(3));
        assert_eq!(want.len(), RELAYS_WANTED);
        assert_eq!(want[0].0, peer(3), "a connected relay first");
        assert_eq!(want[0].1, addr(&format!("/ip4/198.18.0.12/tcp/7000/p2p/{}/p2p-circuit", peer(3))));
        // A relay named in the configuration counts.
        assert_eq!(r.wanted(now, &HashSet::from([peer(1)]), |_| false).len(), RELAYS_WANTED - 1);
        // Public again: every reservation is given up.
        for (p, _) in &want {
            r.reserving(*p, ListenerId::next());
        }
        assert!(r.wanted(now, &HashSet::new(), |_| true).is_empty(), "enough held");
        assert_eq!(r.set_reachability(Reachability::Public).len(), RELAYS_WANTED);
        assert!(r.wanted(now, &HashSet::new(), |_| true).is_empty());
    }

    #[test]
    fn a_lost_relay_is_replaced_and_retried_later() {
        let now = Instant::now();
        let mut r = AutoRelays::new(true);
        r.learn(peer(1), [addr("/ip4/198.18.0.10/tcp/7000"), addr("/dns4/relay.example/tcp/7000")]);
        r.learn(peer(2), [addr("/ip4/198.18.0.11/tcp/7000")]);
        r.learn(peer(3), [addr("/ip4/198.18.0.12/tcp/7000")]);
        let first = ListenerId::next();
        r.reserving(peer(1), first);
        let second = ListenerId::next();
        r.reserving(peer(2), second);
        assert_eq!(r.accepted(second), Some(peer(2)));
        assert_eq!(r.held(), vec![peer(2)], "only accepted ones are held");
        // Relay 1 never answered: replaced by 3, and tried at its next address after the wait.
        assert_eq!(r.closed(first, now), Some(peer(1)));
        let want = r.wanted(now, &HashSet::new(), |_| false);
        assert_eq!(want.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![peer(3)]);
        r.reserving(peer(3), ListenerId::next());
        // Relay 2, reached once, is lost later: it keeps its address.
        let later = now + Duration::from_secs(RELAY_RETRY_S);
        assert_eq!(r.closed(second, later - Duration::from_secs(1)), Some(peer(2)));
        let want = r.wanted(later, &HashSet::new(), |_| false);
        assert_eq!(want.len(), 1);
        assert_eq!(want[0].0, peer(1));
        assert!(want[0].1.to_string().starts_with("/dns4/relay.example"), "the next address: {}", want[0].1);
        assert_eq!(r.closed(ListenerId::next(), now), None, "not ours");
        // A connection to a waiting relay ends its wait.
        assert!(r.wanted(now, &HashSet::new(), |_| false).is_empty());
        r.reachable_again(&peer(2));
        assert_eq!(r.wanted(now, &HashSet::new(), |_| false)[0].0, peer(2));
        // Forced private stays private.
        assert!(r.set_reachability(Reachability::Public).is_empty());
        assert_eq!(r.reachability(), Reachability::Private);
    }

    #[test]
    fn relay_addresses_must_be_dialable_from_elsewhere() {
        for (a, private, ok) in [
            ("/ip4/203.0.113.5/tcp/1", false, false),
            ("/ip4/8.8.8.8/tcp/1", false, true),
            ("/ip4/198.18.0.10/tcp/1", false, false),
            ("/ip4/198.18.0.10/tcp/1", true, true),
            ("/ip4/10.1.0.1/tcp/1", true, true),
            ("/ip4/127.0.0.1/tcp/1", true, false),
            ("/ip4/0.0.0.0/tcp/1", true, false),
            ("/ip6/::1/tcp/1", true, false),
            ("/ip6/fe80::1/tcp/1", true, false),
            ("/ip6/fd00::1/tcp/1", false, false),
            ("/ip6/2a00::1/tcp/1", false, true),
            ("/dns4/relay.example/tcp/1", false, true),
            ("/ip4/8.8.8.8/tcp/1/p2p-circuit", true, false),
        ] {
            assert_eq!(relay_dialable(&addr(a), private), ok, "{a} (private IPs allowed: {private})");
        }
    }
}
