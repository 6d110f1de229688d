//! The mesh. This module holds only the sans-IO core: no sockets, no clock, no randomness of its
//! own; time comes in as `now_ms` arguments — except [`net`], the libp2p layer around it (iroh-blobs
//! is issue 4's next step).
//!
//! - [`ledger`]: the replicated ledger, a grow-only set of signed facts folded into job states.
//! - [`capabilities`]: what a node offers, whether a job fits it, and why no node can run a job.
//! - [`wire`]: the messages nodes exchange (gossip, announcements, anti-entropy), as CBOR.
//! - [`core`]: one node's scheduler as a state machine around the ledger (`handle_*` in, `poll_*` out).
//! - [`net`]: the libp2p swarm (TCP + pnet + noise + yamux; gossipsub, identify, ping, Kademlia,
//!   sync request-response, block and allow lists, opt-in mDNS) that carries facts between nodes.

pub mod capabilities;
pub mod core;
pub mod ledger;
pub mod net;
pub mod wire;
