#![no_main]
//! `cargo fuzz run archive`: see crates/fuzz-entry (`shoal_fuzz_entry::archive`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::archive(data));
