#![no_main]
//! `cargo fuzz run registry`: see crates/fuzz-entry (`shoal_fuzz_entry::registry`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::registry(data));
