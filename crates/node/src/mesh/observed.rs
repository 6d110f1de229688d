//! Our addresses as peers observe them, handed to DCUtR unaltered.
//!
//! libp2p-identify reports an observed address whose port differs from our listen port with the
//! listen port put in its place: it takes a differing port for an ephemeral one (a dial that did
//! not reuse the listen port). Behind a NAT that had to give our listen port another outside port
//! (a second machine of a site listening on the same port as the first), that turns the right
//! address into the first machine's mapping, and every hole punch to us aims there. This
//! behaviour reports each observed address as it is as well, so DCUtR tries both.
//!
//! Each address is reported once (of the last [`OBSERVED_REPORTED_MAX`]): identify tells it again
//! on every exchange with every peer, and each report of a candidate makes AutoNAT doubt its
//! verdict and probe again ([`super::net::AUTONAT_RETRY_S`]), so a node with many peers never
//! settled and probed its relay every few seconds for as long as it ran.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll, Waker};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    dummy,
};

/// Observed addresses waiting to be reported, at most this many (identify reports one per
/// connection; past it the oldest are dropped).
const OBSERVED_QUEUED_MAX: usize = 64;

/// Addresses remembered as reported already, the most recent this many (a node behind a NAT that
/// maps each connection to a new port would otherwise grow the list forever).
const OBSERVED_REPORTED_MAX: usize = 256;

#[derive(Default)]
pub(super) struct Observed {
    queued: VecDeque<Multiaddr>,
    /// Reported addresses, oldest first.
    reported: VecDeque<Multiaddr>,
    waker: Option<Waker>,
}

impl Observed {
    /// A peer saw us at `addr` (identify's `observed_addr`): reported unless it was already.
    pub(super) fn report(&mut self, addr: Multiaddr) {
        if self.reported.contains(&addr) {
            return;
        }
        if self.reported.len() >= OBSERVED_REPORTED_MAX {
            self.reported.pop_front();
        }
        self.reported.push_back(addr.clone());
        if self.queued.len() >= OBSERVED_QUEUED_MAX {
            self.queued.pop_front();
        }
        self.queued.push_back(addr);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl NetworkBehaviour for Observed {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(addr) = self.queued.pop_front() {
            return Poll::Ready(ToSwarm::NewExternalAddrCandidate(addr));
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &mut Observed) -> Vec<Multiaddr> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(ToSwarm::NewExternalAddrCandidate(a)) = o.poll(&mut cx) {
            out.push(a);
        }
        out
    }

    #[test]
    fn an_address_told_again_is_reported_once() {
        let mut o = Observed::default();
        let a: Multiaddr = "/ip4/198.18.0.2/tcp/40001".parse().unwrap();
        let b: Multiaddr = "/ip4/198.18.0.2/tcp/40002".parse().unwrap();
        o.report(a.clone());
        o.report(a.clone());
        o.report(b.clone());
        assert_eq!(drain(&mut o), vec![a.clone(), b]);
        o.report(a);
        assert_eq!(drain(&mut o), vec![], "told again later: still not a new candidate");
    }

    #[test]
    fn the_remembered_addresses_are_bounded() {
        let mut o = Observed::default();
        for port in 0..(OBSERVED_REPORTED_MAX as u16 + 10) {
            o.report(format!("/ip4/198.18.0.2/tcp/{}", 30000 + port).parse().unwrap());
        }
        assert_eq!(o.reported.len(), OBSERVED_REPORTED_MAX);
        assert_eq!(o.queued.len(), OBSERVED_QUEUED_MAX);
    }
}
