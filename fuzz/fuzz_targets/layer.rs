#![no_main]
//! `cargo fuzz run layer`: see crates/fuzz-entry (`shoal_fuzz_entry::layer`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::layer(data));
