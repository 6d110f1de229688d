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

/// Decodes CBOR bytes into `T`, the one way shoal decodes CBOR (records, facts, wire messages,
/// trees, image entries). A value whose byte strings are read with `deserialize_bytes` fails on
/// ciborium past its 4 KiB scratch buffer; shoal's byte-string types use `deserialize_byte_buf`,
/// and the tests decode every kind at sizes well past it. Nesting is bounded by ciborium (256
/// levels), and lengths are never preallocated from the header, so hostile bytes cost at most
/// their own size.
pub fn from_cbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| e.to_string())
}

fn encoded(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writing to a Vec cannot fail");
    out
}

fn canonicalize(value: Value) -> Value {
    match value {
        // Every key text (all of shoal's structs): a text key's encoding is its length in a
        // header that grows with the length, then its bytes, so the encoded keys' bytewise order
        // is (length, bytes) order, sorted here without encoding each key.
        Value::Map(entries) if entries.iter().all(|(k, _)| k.is_text()) => {
            let mut entries: Vec<(Value, Value)> = entries.into_iter().map(|(k, v)| (k, canonicalize(v))).collect();
            entries.sort_by(|(a, _), (b, _)| {
                let (a, b) = (a.as_text().unwrap_or_default(), b.as_text().unwrap_or_default());
                (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes()))
            });
            Value::Map(entries)
        }
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

    /// The text-key fast path orders keys exactly as sorting by their encodings does, across
    /// the header sizes (lengths below 24, up to 255, and beyond).
    #[test]
    fn text_keys_sort_as_their_encodings_do() {
        let lengths = [0usize, 1, 2, 23, 24, 25, 255, 256, 300];
        let mut keys = Vec::new();
        for &n in &lengths {
            for c in [b'a', b'b', b'~'] {
                keys.push(String::from_utf8(vec![c; n]).unwrap());
            }
        }
        keys.push("é".into());
        keys.push("z".into());
        let entries: Vec<(Value, Value)> = keys.iter().rev().map(|k| (Value::Text(k.clone()), Value::Null)).collect();
        let Value::Map(fast) = canonicalize(Value::Map(entries.clone())) else { panic!() };
        let mut slow: Vec<(Vec<u8>, Value)> = entries.into_iter().map(|(k, _)| (encoded(&k), k)).collect();
        slow.sort_by(|a, b| a.0.cmp(&b.0));
        let fast: Vec<Value> = fast.into_iter().map(|(k, _)| k).collect();
        let slow: Vec<Value> = slow.into_iter().map(|(_, k)| k).collect();
        assert_eq!(fast, slow);
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
