//! Integration tests of shoal-dag, one binary: malformed and well-formed specs, action-key
//! properties, hashes, canonical CBOR, signed records and run files.

mod action_key;
mod malformed;
mod records;
mod runfile;
mod wellformed;
