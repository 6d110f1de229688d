#![no_main]
//! `cargo fuzz run wire`: see crates/fuzz-entry (`shoal_fuzz_entry::wire`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::wire(data));
