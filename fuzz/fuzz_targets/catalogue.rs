#![no_main]
//! `cargo fuzz run catalogue`: see crates/fuzz-entry (`shoal_fuzz_entry::catalogue`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::catalogue(data));
