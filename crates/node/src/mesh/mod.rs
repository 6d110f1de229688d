//! The mesh's transport. The protocol itself (ledger, wire, scheduler core, sync, liveness,
//! replicas) is the sans-IO crate `shoal-mesh`; this is the libp2p layer that carries it.
//!
//! - [`net`]: the libp2p swarm (TCP + pnet + noise + yamux; gossipsub, identify, ping, Kademlia,
//!   sync request-response, block and allow lists, opt-in mDNS) that carries facts between nodes:
//!   the swarm, its events, the relay listeners and the limits.
//! - [`blobs`]: blobs over the mesh's connections (`/shoal/blobs/1`), the path to a peer's blobs
//!   when its iroh endpoint cannot be reached.
//! - `behaviour`: the swarm's behaviours, one per concern, and how each is configured.
//! - `codec`: the anti-entropy request and response, opaque bytes as one CBOR byte string each.
//! - [`keys`]: a node secret's libp2p identity, the mesh key's file format, node ids as peer ids.
//! - `relays`: which relays a node behind NAT reserves on, and when it gives them up.
//! - `traffic`: byte counters under pnet, for `/v1/metrics`.

mod behaviour;
pub mod blobs;
mod codec;
pub mod keys;
pub mod net;
mod observed;
mod relays;
mod traffic;
