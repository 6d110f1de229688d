//! Integration tests of shoal-dag, one binary: malformed and well-formed specs, action-key
//! properties, hashes, canonical CBOR and signed records.

mod action_key;
mod malformed;
mod records;
mod wellformed;
