//! The shoal-dag types this crate uses, in one place.

pub use shoal_dag::{Digest, DigestKind, Hash, ImageRef, SignedRecord, canonical_cbor, from_cbor};
