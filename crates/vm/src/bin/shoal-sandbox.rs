//! The namespace backend's sandbox helper (see `shoal_vm::sandbox`). Started by the backend,
//! never by hand.

fn main() {
    shoal_vm::sandbox_helper_main()
}
