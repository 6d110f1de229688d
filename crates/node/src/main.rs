//! The `shoal` binary: a thin CLI over the libraries.
//!
//! # Layout
//! - `cli`: the clap command tree and dispatch.
//! - `daemon`: `shoal node`, a mesh peer: the loop around the sans-IO core, its HTTP API, the executor.
//! - `explorer`: the Program Explorer, a web page on every node that runs catalogue images on your files.
//! - `client`: the CLI side of the HTTP API (`submit`, `status`, `watch`, `cancel`, `peers`, `get --node`).
//! - `held`: the CLI on the home of a running node: its commands go through that node.
//! - `run`: `shoal run DAG`, the embedded single-node runner (resolve, cache lookup, execute, record).
//! - `machine`: facts about this host for run records.
//! - `identity`: the node's ed25519 key, which signs run records.
//! - `output`: tables, stderr tails and other human output.
//! - `tokens`: API tokens (`shoal token`), kept hashed in `$SHOAL_HOME/tokens.json`.

mod cli;
mod client;
mod daemon;
mod explorer;
mod held;
mod identity;
mod machine;
mod output;
mod run;
mod tokens;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox helper must start before any thread exists (it forks and unshares), so it is
    // dispatched here, before tokio or tracing are set up.
    if std::env::args().nth(1).as_deref() == Some(run::SANDBOX_SUBCOMMAND) {
        shoal_vm::sandbox_helper_main();
    }
    quiet_store_open_panics();
    cli::main()
}

/// redb panics on some damaged pages of a blob database; the store's open turns that into an
/// error naming the file and the fix, so the panic's own text and backtrace are left out.
fn quiet_store_open_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !shoal_blobs::is_blob_store_open_panic(std::thread::current().name()) {
            default(info);
        }
    }));
}
