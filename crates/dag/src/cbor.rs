//! Canonical CBOR: the only encoding shoal hashes.

use ciborium::Value;
use serde::Serialize;

/// Encodes `value` as canonical CBOR (RFC 8949 section 4.2.1): definite lengths, integers in their
/// shortest form (ciborium does both), and every map's entries sorted by the bytes of their encoded
/// keys, so that field order in a struct or insertion order in a map never changes the bytes.
pub fn canonical_cbor<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let value = Value::serialized(value).expect("shoal's hashed types always serialize to CBOR");
    let mut out = Vec::new();
    ciborium::into_writer(&canonicalize(value), &mut out).expect("writing to a Vec cannot fail");
    out
}

fn encoded(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writing to a Vec cannot fail");
    out
}

fn canonicalize(value: Value) -> Value {
    match value {
        Value::Map(entries) => {
            let mut keyed: Vec<(Vec<u8>, Value, Value)> = entries
                .into_iter()
                .map(|(k, v)| {
                    let k = canonicalize(k);
                    (encoded(&k), k, canonicalize(v))
                })
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        Value::Tag(tag, inner) => Value::Tag(tag, Box::new(canonicalize(*inner))),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    #[derive(Serialize)]
    struct Ab {
        a: u32,
        bb: &'static str,
    }
    #[derive(Serialize)]
    struct Ba {
        bb: &'static str,
        a: u32,
    }

    #[test]
    fn field_order_does_not_matter() {
        assert_eq!(canonical_cbor(&Ab { a: 1, bb: "x" }), canonical_cbor(&Ba { bb: "x", a: 1 }));
    }

    #[test]
    fn map_insertion_order_does_not_matter() {
        let mut one = HashMap::new();
        let mut two = BTreeMap::new();
        for i in 0..50u32 {
            one.insert(format!("k{i}"), i);
        }
        for i in (0..50u32).rev() {
            two.insert(format!("k{i}"), i);
        }
        assert_eq!(canonical_cbor(&one), canonical_cbor(&two));
    }

    #[test]
    fn shorter_keys_sort_first() {
        // Bytewise order of encoded keys puts the shorter text first (its length byte is smaller).
        let bytes = canonical_cbor(&Ab { a: 1, bb: "x" });
        let a = bytes.windows(2).position(|w| w == [0x61, b'a']).unwrap();
        let bb = bytes.windows(3).position(|w| w == [0x62, b'b', b'b']).unwrap();
        assert!(a < bb);
    }
}
