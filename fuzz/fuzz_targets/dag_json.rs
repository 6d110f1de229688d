#![no_main]
//! `cargo fuzz run dag_json`: see crates/fuzz-entry (`shoal_fuzz_entry::dag_json`) for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_entry::dag_json(data));
