//! The namespace backend's sandbox helper (see `shoal_sandbox::sandbox`). Started by the backend,
//! never by hand.

fn main() {
    shoal_sandbox::sandbox_helper_main()
}
