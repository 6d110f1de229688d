//! Our addresses as peers observe them, handed to DCUtR unaltered.
//!
//! libp2p-identify reports an observed address whose port differs from our listen port with the
//! listen port put in its place: it takes a differing port for an ephemeral one (a dial that did
//! not reuse the listen port). Behind a NAT that had to give our listen port another outside port
//! (a second machine of a site listening on the same port as the first), that turns the right
//! address into the first machine's mapping, and every hole punch to us aims there. This
//! behaviour reports each observed address as it is as well, so DCUtR tries both.

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

#[derive(Default)]
pub(super) struct Observed {
    queued: VecDeque<Multiaddr>,
    waker: Option<Waker>,
}

impl Observed {
    /// A peer saw us at `addr` (identify's `observed_addr`).
    pub(super) fn report(&mut self, addr: Multiaddr) {
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
