//! The `shoal` binary: the command line (`cli`: the clap command tree and dispatch) over the
//! `shoal_node` library, which holds everything else (see its `lib.rs`).

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox helper must start before any thread exists (it forks and unshares), so it is
    // dispatched here, before tokio or tracing are set up.
    if std::env::args().nth(1).as_deref() == Some(shoal_node::run::SANDBOX_SUBCOMMAND) {
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
