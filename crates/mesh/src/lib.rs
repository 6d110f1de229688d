//! The mesh protocol as sans-IO state machines: no sockets, no clock, no randomness of their own.
//! Time comes in as `now_ms` arguments, bytes as decoded messages; what to send, start or stop
//! comes out of `poll_*` calls. `shoal node` drives these machines with real time and libp2p
//! (crates/node, `daemon` and `mesh::net`); `simulations/` drives thousands of them with a
//! virtual clock and a seeded message layer. One implementation of the protocol, two drivers
//! (DESIGN section 3), so a simulated figure describes the real node.
//!
//! **Invariant: no I/O, no clock, no randomness.** This crate depends on no async runtime,
//! network, blob store or database (`cargo tree -p shoal-mesh`).
//!
//! # Layout
//! - [`ledger`]: the replicated ledger, a grow-only set of signed facts folded into job states.
//! - [`capabilities`]: what a node offers, whether a job fits it, and why no node can run a job.
//! - [`wire`]: the messages nodes exchange (gossip, announcements, anti-entropy), as CBOR.
//! - [`core`]: one node's scheduler around the ledger (claims, renewals, placement).
//! - [`sync`]: anti-entropy, the digest / ids / get-and-put exchange that repairs lost gossip.
//! - [`liveness`]: heartbeats (announcements) and which peers count as alive.
//! - [`replicas`]: which nodes keep a copy of a run's outputs, and which hold a submitted DAG's
//!   blobs (rendezvous hashing, so every node computes the same holders without talking).
//! - [`lost`]: when an output nobody could serve is reported lost, so its job runs again.
//! - [`topics`]: which gossip topic carries a DAG's facts, and which nodes subscribe to it.
//! - [`clock`]: the mesh's time from peers' announcements (the median offset), for nodes whose
//!   own clock is wrong.
//! - [`settings`]: every setting of the protocol, with `shoal node`'s values as `Default`.

#![forbid(unsafe_code)]

pub mod capabilities;
pub mod clock;
pub mod core;
pub mod ledger;
pub mod liveness;
pub mod lost;
pub mod replicas;
pub mod settings;
pub mod sync;
pub mod topics;
pub mod wire;

pub use settings::Settings;
