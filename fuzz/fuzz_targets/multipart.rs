#![no_main]
//! `cargo fuzz run multipart`: see crates/fuzz-entry (`shoal_fuzz_entry::multipart`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::multipart(data));
