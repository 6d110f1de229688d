//! The anti-entropy request-response messages: opaque bytes the caller encodes, carried by
//! libp2p's CBOR codec as one byte string each.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An anti-entropy request: opaque CBOR the caller encodes (on the wire as one CBOR byte string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest(pub Vec<u8>);

/// An anti-entropy response: opaque CBOR the caller encodes (on the wire as one CBOR byte string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResponse(pub Vec<u8>);

// By hand rather than derived: serde serializes a `Vec<u8>` as an array of integers, which would
// nearly double the bytes on the wire; a byte string is one header and the bytes.
macro_rules! bytes_newtype_serde {
    ($t:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_byte_buf(BytesVisitor).map($t)
            }
        }
    };
}
bytes_newtype_serde!(SyncRequest);
bytes_newtype_serde!(SyncResponse);

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    // Accepted too, so a peer that encodes the bytes as an array still interoperates.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(v)
    }
}
