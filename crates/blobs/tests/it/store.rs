use std::time::Instant;

use shoal_blobs::{Durability, Hash, SignedRecord, Store, StoreError};

use crate::store;

#[tokio::test]
async fn put_get_export_list() {
    let (home, s) = store().await;
    let h = s.put_bytes(&b"hello"[..]).await.unwrap();
    assert_eq!(h, Hash::of(b"hello"));
    assert_eq!(&s.get_bytes(h).await.unwrap().unwrap()[..], b"hello");
    assert!(s.has(h).await.unwrap());
    assert_eq!(s.size(h).await.unwrap(), Some(5));

    // A file larger than the in-memory threshold, streamed, with its sha256 indexed.
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let p = home.path().join("big");
    std::fs::write(&p, &big).unwrap();
    let (bh, size) = s.put_file(&p).await.unwrap();
    assert_eq!(size, big.len() as u64);
    assert_eq!(bh, Hash::of(&big));
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&big))
    };
    assert_eq!(s.by_sha256(&sha).unwrap(), Some(bh));
    let out = home.path().join("out");
    s.export(bh, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == big);

    // The empty blob is written nowhere and read back like any other, also by export.
    let e = s.put_bytes(&b""[..]).await.unwrap();
    assert_eq!(e, Hash::of(b""));
    assert!(s.has(e).await.unwrap());
    assert_eq!(s.get_bytes(e).await.unwrap().as_deref(), Some(&b""[..]));
    let empty_out = home.path().join("empty-out");
    s.export(e, &empty_out).await.unwrap();
    assert_eq!(std::fs::read(&empty_out).unwrap(), b"");

    let list = s.list().await.unwrap();
    assert!(list.contains(&(h, 5)));
    assert!(list.contains(&(bh, big.len() as u64)));
    s.shutdown().await;

    // Everything is still there after reopening.
    drop(s);
    let s = shoal_blobs::Store::open(home.path()).await.unwrap();
    assert_eq!(&s.get_bytes(h).await.unwrap().unwrap()[..], b"hello");
    assert_eq!(s.size(bh).await.unwrap(), Some(big.len() as u64));
    s.shutdown().await;
}

#[tokio::test]
async fn missing_blob() {
    let (home, s) = store().await;
    let h = Hash::of(b"never stored");
    assert_eq!(s.get_bytes(h).await.unwrap(), None);
    assert!(!s.has(h).await.unwrap());
    assert_eq!(s.size(h).await.unwrap(), None);
    let err = s.export(h, &home.path().join("x")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { hash } if hash == h));
    let msg = err.to_string();
    assert!(msg.contains(&h.to_string()) && msg.contains("import"), "{msg}");
    let err = s.materialize(h, &home.path().join("m")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    s.shutdown().await;
}

fn fake_record(job: &str, hashes: &[Hash]) -> SignedRecord {
    use ciborium::Value;
    let outs = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            (Value::Text(format!("o{i}")), Value::Map(vec![(Value::Text("hash".into()), Value::Bytes(h.0.to_vec()))]))
        })
        .collect();
    let v = Value::Map(vec![
        (Value::Text("job_id".into()), Value::Text(job.into())),
        (Value::Text("outputs".into()), Value::Map(outs)),
    ]);
    let mut record = Vec::new();
    ciborium::into_writer(&v, &mut record).unwrap();
    SignedRecord { record, signer: [7; 32], signature: vec![1; 64] }
}

#[tokio::test]
async fn records_and_action_cache() {
    let (_home, s) = store().await;
    let out = s.put_bytes(&b"out"[..]).await.unwrap();
    let r1 = fake_record("build", &[out]);
    let h1 = s.put_record(&r1, Durability::Now).await.unwrap();
    assert_eq!(s.get_record(h1).await.unwrap(), Some(r1.clone()));
    assert_eq!(s.latest_record_for_job("build").unwrap(), Some(h1));
    let r2 = fake_record("build", &[]);
    let h2 = s.put_record(&r2, Durability::Now).await.unwrap();
    assert_eq!(s.latest_record_for_job("build").unwrap(), Some(h2));
    assert_eq!(s.latest_record_for_job("other").unwrap(), None);
    // The record is also a plain blob.
    assert_eq!(SignedRecord::from_cbor(&s.get_bytes(h1).await.unwrap().unwrap()).unwrap(), r1);

    let key = Hash::of(b"action");
    assert_eq!(s.action_get(&key).await.unwrap(), None);
    s.action_put(&key, &h1).unwrap();
    assert_eq!(s.action_get(&key).await.unwrap(), Some(h1));

    // The hot path of a fully cached run: 1000 x (action_get + get_record).
    let mut keys = Vec::new();
    let t = Instant::now();
    for i in 0..1000u32 {
        let k = Hash::of(&i.to_le_bytes());
        let r = fake_record(&format!("j{i}"), &[out]);
        let h = s.put_record(&r, Durability::Soon).await.unwrap();
        s.action_put(&k, &h).unwrap();
        keys.push(k);
    }
    let put_ms = t.elapsed().as_millis();
    let t = Instant::now();
    for k in &keys {
        let h = s.action_get(k).await.unwrap().unwrap();
        assert!(s.get_record(h).await.unwrap().is_some());
    }
    let get_ms = t.elapsed().as_millis();
    eprintln!("MEASURE 1000 x (put_record + action_put): {put_ms} ms; 1000 x (action_get + get_record): {get_ms} ms");
    s.shutdown().await;
}

#[tokio::test]
async fn a_record_written_soon_is_kept_at_shutdown_and_an_entry_without_its_record_is_a_miss() {
    let (home, s) = store().await;
    let out = s.put_bytes(&b"soon"[..]).await.unwrap();
    let rec = fake_record("soon", &[out]);
    let key = Hash::of(b"soon-action");
    let h = s.put_record_for_action(&rec, &key, Durability::Soon).await.unwrap();
    assert_eq!(s.action_get(&key).await.unwrap(), Some(h));
    // What a crash between the two databases' commits leaves: an entry whose record blob is
    // not in the blob store.
    let lost = Hash::of(b"a record lost in a crash");
    let orphan = Hash::of(b"orphan-action");
    s.action_put(&orphan, &lost).unwrap();
    assert_eq!(s.action_get(&orphan).await.unwrap(), None);
    s.shutdown().await;
    drop(s);

    let s = Store::open(home.path()).await.unwrap();
    assert_eq!(s.action_get(&key).await.unwrap(), Some(h));
    assert_eq!(s.get_record(h).await.unwrap(), Some(rec));
    assert!(s.has(out).await.unwrap());
    s.shutdown().await;
}

#[tokio::test]
async fn throughput() {
    let (home, s) = store().await;
    let data: Vec<u8> = (0..(128u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
    let p = home.path().join("f");
    std::fs::write(&p, &data).unwrap();
    let t = Instant::now();
    let (h, _) = s.put_file(&p).await.unwrap();
    let put = t.elapsed();
    let t = Instant::now();
    let b = s.get_bytes(h).await.unwrap().unwrap();
    let get = t.elapsed();
    assert_eq!(b.len(), data.len());
    let t = Instant::now();
    s.export(h, &home.path().join("g")).await.unwrap();
    let export = t.elapsed();
    let mib = 128.0;
    eprintln!(
        "MEASURE 128 MiB: put_file {:.0} MiB/s, get_bytes {:.0} MiB/s, export {:.0} MiB/s",
        mib / put.as_secs_f64(),
        mib / get.as_secs_f64(),
        mib / export.as_secs_f64()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn measure_durability_costs() {
    let (_home, s) = store().await;
    let t = Instant::now();
    for i in 0..200u32 {
        s.put_bytes(i.to_le_bytes().to_vec()).await.unwrap();
    }
    let put = t.elapsed().as_micros() / 200;
    let t = Instant::now();
    for _ in 0..200 {
        s.flush().await.unwrap();
    }
    let flush = t.elapsed().as_micros() / 200;
    let t = Instant::now();
    for i in 0..200u32 {
        s.action_put(&Hash::of(&i.to_le_bytes()), &Hash::of(b"r")).unwrap();
    }
    let action = t.elapsed().as_micros() / 200;
    eprintln!(
        "MEASURE per op: put_bytes(4 B) {put} us, flush (iroh sync_db + sled flush) {flush} us, action_put {action} us"
    );
    s.shutdown().await;
}

/// Many readers of one hash at once (200 jobs starting on one image): iroh-blobs refuses
/// operations past a per-hash inbox as busy, and the store must retry them, not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_reads_of_one_blob_all_succeed() {
    let (home, s) = store().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let h = s.put_bytes(data.clone()).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400 {
        let s = s.clone();
        let dest = home.path().join(format!("out-{i}"));
        tasks.spawn(async move {
            if i % 2 == 0 {
                s.get_bytes(h).await.map(|b| b.map(|b| b.len()))
            } else {
                s.export(h, &dest).await.map(|()| Some(std::fs::metadata(&dest).unwrap().len() as usize))
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(Some(n)) => assert_eq!(n, data.len()),
            other => failures.push(format!("{other:?}")),
        }
    }
    assert!(failures.is_empty(), "{} of 400 reads failed, e.g. {}", failures.len(), failures[0]);
    s.shutdown().await;
}

/// Flips one byte of a stored blob's data file, as a failing disk would.
fn flip_a_byte(home: &std::path::Path, hash: Hash, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let path = home.join("blobs/data").join(format!("{}.data", hash.to_hex()));
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x20]).unwrap();
    f.sync_all().unwrap();
}

/// A byte flipped on disk was served as the blob (iroh-blobs verifies what arrives, not what it
/// reads back): reads must refuse it, name it, keep it out of use until the right bytes come
/// back, and gc removes it.
#[tokio::test]
async fn a_corrupted_blob_is_refused_named_and_repaired() {
    let (home, s) = store().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let h = s.put_bytes(data.clone()).await.unwrap();
    flip_a_byte(home.path(), h, 5000);

    let err = s.get_bytes(h).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { hash, .. } if hash == h), "{err}");
    assert!(err.to_string().contains(&h.to_string()) && err.to_string().contains("corrupted"), "{err}");
    assert!(!s.has(h).await.unwrap(), "a corrupted blob still counts as held");
    assert!(s.get_bytes(h).await.unwrap().is_none());
    let out = home.path().join("out");
    assert!(matches!(s.export(h, &out).await, Err(StoreError::NotFound { .. })));
    assert!(!out.exists());

    // Stored again (a re-import): rewritten in place, in use again.
    assert_eq!(s.put_bytes(data.clone()).await.unwrap(), h);
    assert!(s.has(h).await.unwrap());
    assert_eq!(s.get_bytes(h).await.unwrap().unwrap(), data);

    // Corrupted again, found by an export this time, and the open after a restart remembers it.
    flip_a_byte(home.path(), h, 99_999);
    let err = s.export(h, &out).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!out.exists(), "the corrupted bytes were left at the destination");
    s.shutdown().await;
    drop(s);
    let s = Store::open(home.path()).await.unwrap();
    assert!(!s.has(h).await.unwrap());
    s.pin(h).unwrap();
    let report = s.gc().await.unwrap();
    assert_eq!(report.corrupt_removed, 1);
    assert!(!s.is_corrupt(h));
    assert_eq!(s.put_bytes(data.clone()).await.unwrap(), h);
    assert_eq!(s.get_bytes(h).await.unwrap().unwrap(), data);
}

#[tokio::test]
async fn a_pin_with_an_end_keeps_its_blob_until_then_and_only_grows() {
    let (_home, s) = store().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (past, future, forever) = (
        s.put_bytes(&b"pinned until yesterday"[..]).await.unwrap(),
        s.put_bytes(&b"pinned until next week"[..]).await.unwrap(),
        s.put_bytes(&b"pinned for good"[..]).await.unwrap(),
    );
    assert_eq!(s.pin_until(past, now - 86_400_000).unwrap(), now - 86_400_000);
    let week = now + 7 * 86_400_000;
    assert_eq!(s.pin_until(future, week).unwrap(), week);
    // A shorter pin later does not shorten it; a pin for good is not turned into one with an end.
    assert_eq!(s.pin_until(future, now + 1000).unwrap(), week);
    s.pin(forever).unwrap();
    assert_eq!(s.pin_until(forever, week).unwrap(), u64::MAX);
    assert_eq!(s.pinned_until(future).unwrap(), Some(week));
    assert_eq!(s.pinned_until(Hash::of(b"never stored")).unwrap(), None);
    s.gc().await.unwrap();
    assert!(!s.has(past).await.unwrap(), "a pin whose end passed keeps nothing");
    assert_eq!(s.pinned_until(past).unwrap(), None, "and is dropped");
    assert!(s.has(future).await.unwrap() && s.has(forever).await.unwrap());
    s.shutdown().await;
}

/// A blob over `BLOB_INLINE_BYTES_MAX` (a run record is ~2 KB) is a file of its own, not a value
/// in iroh-blobs' redb, which keeps every page it touches in memory (4 KB a job of a big DAG).
#[tokio::test]
async fn blobs_over_the_inline_size_are_files_of_their_own() {
    let (home, s) = store().await;
    let data = home.path().join("blobs").join("data");
    let small = vec![b's'; shoal_blobs::BLOB_INLINE_BYTES_MAX as usize];
    let record_sized = vec![b'r'; 2000];
    let (hs, hr) = (s.put_bytes(small.clone()).await.unwrap(), s.put_bytes(record_sized.clone()).await.unwrap());
    assert!(!data.join(format!("{}.data", hs.to_hex())).exists(), "a small blob left the database");
    assert!(data.join(format!("{}.data", hr.to_hex())).is_file(), "a 2 KB blob stayed in the database");
    assert_eq!(s.get_bytes(hr).await.unwrap().as_deref(), Some(&record_sized[..]));
    assert_eq!(s.get_bytes(hs).await.unwrap().as_deref(), Some(&small[..]));
}

/// A real run record (unsigned: the store trusts what it is given) of `job` whose outputs are
/// `outputs` (files of `size` bytes each) and which read `inputs`.
fn run_record(job: &str, outputs: &[(Hash, u64)], inputs: &[Hash]) -> SignedRecord {
    use shoal_dag::{Digest, DigestKind, Exit, Machine, Requirements, ResolvedJob, RunRecord, Timing};
    let file = |hash: Hash, size: u64| Digest { hash, kind: DigestKind::File, size };
    let empty = file(Hash::of(b""), 0);
    let record = RunRecord {
        version: 1,
        job_id: job.into(),
        action_key: Hash::of(job.as_bytes()),
        job: ResolvedJob {
            image: Hash::of(b"image"),
            command: vec![job.into()],
            env: Default::default(),
            workdir: None,
            user: None,
            stdin: None,
            inputs: inputs.iter().enumerate().map(|(i, h)| (format!("i{i}"), file(*h, 1))).collect(),
            outputs: Default::default(),
            arch: None,
            cpu_flags: Vec::new(),
            network: false,
        },
        requirements: Requirements::default(),
        outputs: outputs.iter().enumerate().map(|(i, (h, size))| (format!("o{i}"), file(*h, *size))).collect(),
        stdout: empty.clone(),
        stderr: empty,
        exit: Exit::Code(0),
        timing: Timing {
            queued_unix_ms: 0,
            started_unix_ms: 0,
            finished_unix_ms: 0,
            wall_ms: 0,
            user_ms: 0,
            sys_ms: 0,
            peak_memory_bytes: 0,
        },
        machine: Machine {
            node_id: "n".into(),
            hostname: "h".into(),
            kernel: "k".into(),
            cpu_model: "c".into(),
            cpu_flags: Vec::new(),
            arch: "x86_64".into(),
            cores: 1,
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
        holders: Vec::new(),
    };
    SignedRecord { record: record.to_cbor(), signer: [7; 32], signature: vec![1; 64] }
}

/// Over its budget, the store evicts the results of the least recently used records first,
/// never those the caller keeps or a running job holds; an evicted record's action-cache entry
/// goes, the record stays, and a result another record reads as an input goes with its maker.
#[tokio::test]
async fn eviction_takes_the_least_recently_used_results_and_spares_the_kept_and_the_held() {
    let (_home, s) = store().await;
    const MIB: u64 = 1 << 20;
    let mut records = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..6u8 {
        let out = s.put_bytes(vec![i; MIB as usize]).await.unwrap();
        // Each reads the one before, as a chain of jobs does.
        let inputs: Vec<Hash> = outputs.last().copied().into_iter().collect();
        let rec = run_record(&format!("step{i}"), &[(out, MIB)], &inputs);
        let h = s.put_record_for_action(&rec, &Hash::of(format!("step{i}").as_bytes()), Durability::Now).await.unwrap();
        records.push(h);
        outputs.push(out);
        // Distinct times of last use, oldest first.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = s.stored_bytes().await.unwrap();
    assert!(before >= 6 * MIB, "{before}");
    // step0 is the oldest, but the caller keeps it; step1 a running job holds.
    let held = s.hold([outputs[1]]);
    let keep = records[0];
    let report = s.evict(4 * MIB, 0, &|r| r == keep).await.unwrap();
    assert!(report.bytes_after <= 4 * MIB, "{report:?}");
    assert!(!report.over);
    let present = |h: Hash| {
        let s = s.clone();
        async move { s.has(h).await.unwrap() }
    };
    assert!(present(outputs[0]).await, "a kept result was evicted");
    assert!(present(outputs[1]).await, "a held result was evicted");
    for (i, out) in outputs.iter().enumerate().take(5).skip(2) {
        assert!(!present(*out).await, "step{i}, among the least recently used, stayed: {report:?}");
    }
    assert!(present(outputs[5]).await, "the most recently used went");
    assert!(s.evicted(records[2]) && !s.evicted(records[5]));
    // The record stays, its cache entry goes.
    assert!(s.get_record(records[2]).await.unwrap().is_some());
    assert_eq!(s.action_get(&Hash::of(b"step2")).await.unwrap(), None);
    assert_eq!(s.action_get(&Hash::of(b"step5")).await.unwrap(), Some(records[5]));

    // Results used in the last minute are spared.
    let report = s.evict(MIB, 60_000, &|_| false).await.unwrap();
    assert!(present(outputs[5]).await && present(outputs[0]).await, "{report:?}");
    assert!(report.over && report.young > 0, "too young to go now, not for good: {report:?}");
    // Once no job holds it, step1 may go too; step0 never while kept.
    drop(held);
    let report = s.evict(MIB, 0, &|r| r == keep).await.unwrap();
    assert!(!present(outputs[1]).await && !present(outputs[5]).await);
    assert!(present(outputs[0]).await);
    assert!(report.over, "only a kept result is left, and it is the budget's size: {report:?}");
    s.shutdown().await;
}
