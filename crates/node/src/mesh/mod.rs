//! The mesh's transport. The protocol itself (ledger, wire, scheduler core, sync, liveness,
//! replicas) is the sans-IO crate `shoal-mesh`; this is the libp2p layer that carries it.
//!
//! - [`net`]: the libp2p swarm (TCP + pnet + noise + yamux; gossipsub, identify, ping, Kademlia,
//!   sync request-response, block and allow lists, opt-in mDNS) that carries facts between nodes.

pub mod net;
