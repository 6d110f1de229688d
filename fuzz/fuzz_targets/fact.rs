#![no_main]
//! `cargo fuzz run fact`: see crates/fuzz-entry (`shoal_fuzz_entry::fact`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::fact(data));
