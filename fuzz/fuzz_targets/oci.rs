#![no_main]
//! `cargo fuzz run oci`: see crates/fuzz-entry (`shoal_fuzz_entry::oci`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::oci(data));
