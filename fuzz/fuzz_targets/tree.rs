#![no_main]
//! `cargo fuzz run tree`: see crates/fuzz-entry (`shoal_fuzz_entry::tree`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::tree(data));
