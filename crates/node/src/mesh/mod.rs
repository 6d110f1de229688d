//! The mesh. This module holds only the sans-IO core: no sockets, no clock, no randomness of its
//! own; time comes in as `now_ms` arguments. The networking around it (libp2p, iroh-blobs) is
//! issue 4's next step.
//!
//! - [`ledger`]: the replicated ledger, a grow-only set of signed facts folded into job states.
//! - [`capabilities`]: what a node offers, whether a job fits it, and why no node can run a job.
//! - [`core`]: one node's scheduler as a state machine around the ledger (`handle_*` in, `poll_*` out).

pub mod capabilities;
pub mod core;
pub mod ledger;
