#![no_main]
//! `cargo fuzz run record`: see crates/fuzz-entry (`shoal_fuzz_entry::record`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::record(data));
