//! The `shoal` program as a library: everything but the command line, which is `main.rs` and
//! `cli/` in the binary. Its callers are that binary, the tests and the fuzz targets
//! (`crates/fuzz-entry`), which only print its errors, so it reports them with `anyhow` like an
//! application; the crates under it (`shoal-dag`, `shoal-blobs`, `shoal-vm`, `shoal-mesh`) have
//! typed errors.
//!
//! # Layout
//! - `run`: the runner (one per process: key, machine facts, one core budget, backends) and
//!   `shoal run DAG`, the embedded single-node pipeline (resolve, cache lookup, execute, record).
//! - `daemon`: `shoal node`, a mesh peer: the loop around the sans-IO core (`shoal-mesh`), its
//!   HTTP API, the executor.
//! - `data`: URL and `s3://` inputs the node fetches, outputs it uploads, and their records.
//! - `mesh`: the libp2p transport the daemon moves the protocol's bytes over.
//! - `explorer`: the Program Explorer, a web page on every node that runs catalogue images on
//!   your files.
//! - `api`: the HTTP API's request and answer bodies, built by the daemon, read by `client` and
//!   `held`.
//! - `client`: the CLI side of the HTTP API (`submit`, `status`, `watch`, `cancel`, `peers`,
//!   `get --node`).
//! - `held`: the CLI on the home of a running node: its commands go through that node.
//! - `why`: `shoal why JOB`, the parts of two runs' actions that differ.
//! - `machine`: facts about this host for run records; `identity`: the node's ed25519 key, which
//!   signs run records; `tokens`: API tokens, kept hashed in `$SHOAL_HOME/tokens.json`.
//! - `output`, `human`: tables, stderr tails and other human output; `api_error`: the API's
//!   error bodies; `clock`: wall-clock milliseconds.

#![forbid(unsafe_code)]

pub mod api;
pub mod api_error;
pub mod client;
pub mod clock;
pub mod daemon;
pub mod data;
pub mod explorer;
pub mod gpu;
pub mod held;
pub mod human;
pub mod identity;
pub mod live;
pub mod machine;
pub mod mesh;
pub mod output;
pub mod run;
pub mod tokens;
pub mod provenance;
pub mod why;

/// Exit code when the command worked but a job it ran failed.
pub const EXIT_JOB_FAILED: u8 = 1;
/// Exit code for bad input or an error of the machinery; the message says which.
pub const EXIT_ERROR: u8 = 2;
