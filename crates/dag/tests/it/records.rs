//! Hashes, canonical CBOR and signed run records.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use shoal_dag::{
    Digest, DigestKind, Exit, Hash, Machine, RecordError, Requirements, ResolvedJob, RunRecord, SignedRecord, Timing,
    canonical_cbor,
};

fn record() -> RunRecord {
    let d = |s: &str| Digest { hash: Hash::of(s.as_bytes()), kind: DigestKind::File, size: s.len() as u64 };
    let job = ResolvedJob {
        image: Hash::of(b"image"),
        command: vec!["echo".into(), "hi".into()],
        env: BTreeMap::from([("A".into(), "1".into())]),
        workdir: None,
        user: None,
        stdin: None,
        inputs: BTreeMap::from([("x".into(), d("x"))]),
        outputs: BTreeMap::new(),
        arch: None,
        cpu_flags: vec![],
        network: false,
    };
    RunRecord {
        version: 1,
        job_id: "j".into(),
        action_key: job.action_key(),
        job,
        requirements: Requirements::default(),
        outputs: BTreeMap::from([("out".into(), d("hi\n"))]),
        stdout: d("hi\n"),
        stderr: d(""),
        exit: Exit::Code(0),
        timing: Timing {
            queued_unix_ms: 1,
            started_unix_ms: 2,
            finished_unix_ms: 3,
            wall_ms: 1,
            user_ms: 0,
            sys_ms: 0,
            peak_memory_bytes: 1 << 20,
        },
        machine: Machine {
            node_id: "n".into(),
            hostname: "h".into(),
            kernel: "6.1".into(),
            cpu_model: "cpu".into(),
            cpu_flags: vec!["avx2".into()],
            arch: "x86_64".into(),
            cores: 2,
            memory_bytes: 1 << 30,
            backend: "namespace".into(),
            accelerator: None,
            qemu: None,
            guest_kernel: None,
            emulation: None,
            gpus: Vec::new(),
            kernel_config: None,
            shoal_version: None,
        },
        holders: vec!["n".into()],
    }
}

#[test]
fn hash_text_form_round_trips_and_rejects_bad_text() {
    let h = Hash::of(b"abc");
    // BLAKE3("abc"), from the BLAKE3 reference test vectors.
    assert_eq!(h.to_hex(), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
    assert_eq!(h.to_string(), format!("blake3:{}", h.to_hex()));
    assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
    assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
    for bad in [
        "",
        "blake3:",
        "blake3:xyz",
        "sha256:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
        &h.to_hex()[..63],
    ] {
        assert!(bad.parse::<Hash>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn hash_is_32_bytes_in_cbor_and_text_in_json() {
    let h = Hash::of(b"abc");
    let cbor = canonical_cbor(&h);
    assert_eq!(cbor.len(), 34, "a 2-byte header and 32 bytes");
    assert_eq!(&cbor[2..], h.0.as_slice());
    let back: Hash = ciborium::from_reader(cbor.as_slice()).unwrap();
    assert_eq!(back, h);
    assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{h}\""));
}

#[test]
fn canonical_cbor_sorts_map_keys_by_encoded_bytes() {
    // RFC 8949 section 4.2.1: shorter keys first, then bytewise.
    #[derive(serde::Serialize)]
    struct S {
        zz: u8,
        a: u8,
        bb: u8,
    }
    let bytes = canonical_cbor(&S { zz: 1, a: 2, bb: 3 });
    let expect = [0xa3, 0x61, b'a', 0x02, 0x62, b'b', b'b', 0x03, 0x62, b'z', b'z', 0x01];
    assert_eq!(bytes, expect);
    let m1: BTreeMap<String, u8> = [("b".to_string(), 1), ("aa".to_string(), 2)].into();
    assert_eq!(canonical_cbor(&m1), [0xa2, 0x61, b'b', 0x01, 0x62, b'a', b'a', 0x02]);
}

#[test]
fn a_signed_record_verifies_and_round_trips() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let rec = record();
    let signed = rec.sign(&key);
    assert_eq!(signed.verify().unwrap(), rec);
    let back = SignedRecord::from_cbor(&signed.to_cbor()).unwrap();
    assert_eq!(back, signed);
    assert_eq!(back.verify().unwrap(), rec);
    // The same record signs to the same bytes (canonical CBOR, deterministic ed25519).
    assert_eq!(rec.sign(&key).to_cbor(), signed.to_cbor());
}

#[test]
fn an_altered_or_re_signed_record_is_refused() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let signed = record().sign(&key);

    let mut tampered = signed.clone();
    let mut changed = record();
    changed.exit = Exit::Code(1);
    tampered.record = changed.to_cbor();
    assert!(matches!(tampered.verify(), Err(RecordError::BadSignature)));

    let mut other_signer = signed.clone();
    other_signer.signer = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
    assert!(matches!(other_signer.verify(), Err(RecordError::BadSignature)));

    let mut flipped = signed.clone();
    flipped.signature[0] ^= 1;
    assert!(matches!(flipped.verify(), Err(RecordError::BadSignature)));

    let mut short = signed;
    short.signature.truncate(10);
    assert!(matches!(short.verify(), Err(RecordError::BadSignature)));

    assert!(matches!(SignedRecord::from_cbor(b"not cbor"), Err(RecordError::Decode(_))));
}

#[test]
fn exits_serialise_in_snake_case() {
    let j = |e: &Exit| serde_json::to_string(e).unwrap();
    assert_eq!(j(&Exit::Code(3)), r#"{"code":3}"#);
    assert_eq!(j(&Exit::Timeout), r#""timeout""#);
    assert_eq!(j(&Exit::Oom), r#""oom""#);
    assert_eq!(
        j(&Exit::OutputTooLarge { output: "o".into(), limit_bytes: 5 }),
        r#"{"output_too_large":{"output":"o","limit_bytes":5}}"#
    );
    assert!(Exit::Code(0).success() && !Exit::Code(1).success() && !Exit::Signal(9).success());
}

/// Sizes of the encoded record to try: around ciborium's 4 KiB scratch buffer (records past it
/// were unreadable: "invalid type: bytes, expected bytes"), and well past it.
const RECORD_SIZES: [usize; 7] = [4000, 4096, 4097, 5000, 64 << 10, (64 << 10) + 1, (1 << 20) + 7];

#[test]
fn records_of_any_size_round_trip() {
    let key = SigningKey::from_bytes(&[7; 32]);
    for size in RECORD_SIZES {
        // The three ways a user made one: a long argument, a long env value, many outputs.
        let mut long_arg = record();
        long_arg.job.command.push("a".repeat(size));
        let mut long_env = record();
        long_env.job.env.insert("LONG".into(), "é".repeat(size / 2));
        let mut many_outputs = record();
        for i in 0..size / 64 {
            let d = Digest { hash: Hash::of(&i.to_le_bytes()), kind: DigestKind::File, size: i as u64 };
            many_outputs.outputs.insert(format!("out{i}"), d);
        }
        for rec in [long_arg, long_env, many_outputs] {
            let signed = rec.sign(&key);
            assert!(signed.record.len() >= size.min(4000), "record of {} bytes for {size}", signed.record.len());
            let back = SignedRecord::from_cbor(&signed.to_cbor())
                .unwrap_or_else(|e| panic!("a record of {} bytes does not decode: {e}", signed.record.len()));
            assert_eq!(back, signed);
            assert_eq!(back.verify().unwrap(), rec);
        }
    }
}
