//! The entry points of shoal's fuzz targets: one function per parser of outside bytes, each
//! feeding the bytes to the real parser and checking what must hold whatever the bytes are (no
//! panic, errors located, decode-encode round trips, bad input never a server error). Nightly
//! fuzzing (`fuzz/fuzz_targets/<name>.rs`, cargo-fuzz) and the stable replay of the committed
//! corpora (`tests/it`) call these same functions, so a crash found by one is replayed by the other.
//!
//! # Layout
//! - this file: [`TARGETS`] and the entry points that need no store.
//! - `env`: the process-wide tokio runtime and temp store the store-backed targets share.
//! - `registry`: a fake OCI registry on 127.0.0.1 answering with the fuzz input.
//!
//! A violated invariant panics: that is what libFuzzer and the replay test report.

mod env;
mod registry;

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Multipart};
use axum::http::{Request, header};
use ed25519_dalek::SigningKey;
use shoal_blobs::image::fuzz as image;
use shoal_blobs::tree::{EntryKind, Tree};
use shoal_dag::{Hash, ResolvedJob, RunRecord, SignedRecord, canonical_cbor, parse_dag};
use shoal_mesh::ledger::{Fact, Ledger};
use shoal_mesh::wire::{self, Announce, FactBatch, SyncReq, SyncResp};
use shoal_node::explorer::catalogue::{Catalogue, input_name};
use shoal_node::explorer::request::{INPUT_FILES_MAX, Open, receive};

/// An entry point: takes any bytes, panics only when an invariant breaks.
pub type Entry = fn(&[u8]);

/// Every target: its name (the directory of its corpus, the file in `fuzz/fuzz_targets/`) and
/// its entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("dag_json", dag_json),
    ("record", record),
    ("fact", fact),
    ("wire", wire),
    ("tree", tree),
    ("oci", oci),
    ("layer", layer),
    ("archive", archive),
    ("registry", registry),
    ("multipart", multipart),
    ("catalogue", catalogue),
];

/// The entry point named `name`.
pub fn target(name: &str) -> Option<Entry> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A DAG file: parsed and validated; every problem carries a location inside the text, a
/// message and a fix; a valid DAG orders topologically and hashes.
pub fn dag_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_dag("fuzz.json", &text) {
        Err(diags) => {
            assert!(!diags.0.is_empty(), "a refused DAG names at least one problem");
            let lines: Vec<&str> = text.split('\n').collect();
            for d in &diags.0 {
                let (line, col) = (d.location.line as usize, d.location.col as usize);
                assert_eq!(d.location.file, "fuzz.json");
                assert!(line >= 1 && line <= lines.len(), "{d}: line outside the text ({} lines)", lines.len());
                let width = lines[line - 1].chars().count();
                assert!(col >= 1 && col <= width + 1, "{d}: column outside its line ({width} characters)");
                assert!(!d.message.is_empty() && !d.help.is_empty(), "{d}: a problem says what and how to fix it");
            }
            let _ = diags.to_string();
        }
        Ok(dag) => {
            assert!(!dag.jobs.is_empty());
            let mut order = dag.topo_order();
            order.sort_unstable();
            assert_eq!(order, (0..dag.jobs.len()).collect::<Vec<_>>(), "topo_order is a permutation of the jobs");
            for job in &dag.jobs {
                let _ = ResolvedJob::from_job(job, Hash::of(b"image"), BTreeMap::new(), None).action_key();
            }
            let _ = canonical_cbor(&dag);
        }
    }
}

/// The key the entry points sign with, to reach the code behind a signature check.
fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n.max(1); 32])
}

/// A signed run record, and a bare run record: what decodes re-encodes to canonical bytes that
/// decode to the same value; a record signed again verifies to itself.
pub fn record(data: &[u8]) {
    if let Ok(signed) = SignedRecord::from_cbor(data) {
        let _ = signed.verify();
        let again = SignedRecord::from_cbor(&signed.to_cbor()).expect("a decoded signed record re-decodes");
        assert_eq!(again, signed);
    }
    let bare = SignedRecord { record: data.to_vec(), signer: [0; 32], signature: Vec::new() };
    if let Ok(rec) = bare.record_trusted() {
        let canonical = rec.to_cbor();
        let again: RunRecord = SignedRecord { record: canonical.clone(), ..bare.clone() }
            .record_trusted()
            .expect("a decoded record's canonical bytes decode");
        assert_eq!(again, rec);
        assert_eq!(again.to_cbor(), canonical, "canonical CBOR is a fixed point");
        let signed = rec.sign(&key(7));
        let decoded = SignedRecord::from_cbor(&signed.to_cbor()).expect("a signed record decodes");
        assert_eq!(decoded.verify().expect("a record signed here verifies"), rec);
    }
}

/// Ledger facts, alone and as a delivery sequence: a fact that decodes re-encodes to itself and
/// keeps its id; facts signed again by a few keys (so they pass the signature check and reach
/// the fold) fold incrementally to what the reference fold says.
pub fn fact(data: &[u8]) {
    if let Ok(f) = wire::decode::<Fact>(data) {
        let _ = f.verify();
        let again: Fact = wire::decode(&wire::encode(&f)).expect("a decoded fact re-decodes");
        assert_eq!(again.id(), f.id());
        assert_eq!(again, f);
    }
    if let Ok(facts) = wire::decode::<Vec<Fact>>(data) {
        let mut ledger = Ledger::new();
        let mut latest = 0u64;
        for f in facts.into_iter().take(256) {
            latest = latest.max(f.hlc.wall_ms);
            let resigned = Fact::sign(&key(f.author[0] % 4), f.hlc, f.body);
            let _ = ledger.insert(resigned);
        }
        for now_ms in [0, latest, latest.saturating_add(10_000), u64::MAX] {
            assert_eq!(ledger.state(now_ms), ledger.fold(now_ms), "incremental fold differs at {now_ms} ms");
        }
    }
}

/// Mesh messages (the first byte picks which): what decodes re-encodes to the same value.
pub fn wire(data: &[u8]) {
    fn round_trip<T>(bytes: &[u8])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        if let Ok(v) = wire::decode::<T>(bytes) {
            assert_eq!(wire::decode::<T>(&wire::encode(&v)).expect("a decoded message re-decodes"), v);
        }
    }
    let Some((&kind, rest)) = data.split_first() else { return };
    match kind % 4 {
        0 => {
            round_trip::<FactBatch>(rest);
            if let Ok(batch) = wire::decode::<FactBatch>(rest) {
                for f in batch.facts {
                    let _ = f.verified();
                }
                for d in batch.dags {
                    let _ = parse_dag("gossip", &d.text);
                }
            }
        }
        1 => round_trip::<Announce>(rest),
        2 => round_trip::<SyncReq>(rest),
        _ => round_trip::<SyncResp>(rest),
    }
}

/// Tree and image blobs (what a peer serves by hash): a blob that decodes re-encodes to one that
/// decodes to the same tree.
pub fn tree(data: &[u8]) {
    if let Ok(t) = Tree::decode(data) {
        assert_eq!(Tree::decode(&t.encode()).expect("an encoded tree decodes"), t);
    }
    if let Ok(i) = shoal_blobs::image::Image::decode(data) {
        assert_eq!(shoal_blobs::image::Image::decode(&i.encode()).expect("an encoded image decodes"), i);
    }
}

/// OCI manifests, indexes and configs as an import reads them: any digest it goes on with is
/// 64 lowercase hex.
pub fn oci(data: &[u8]) {
    let hex = |d: &str| d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match image::manifest(data) {
        Ok(image::ManifestRead::Index { picked }) => assert!(hex(&picked), "{picked}"),
        Ok(image::ManifestRead::Image { config, layers }) => {
            assert!(hex(&config), "{config}");
            assert!(layers.iter().all(|(d, _)| hex(d)));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let _ = image::config(data);
}

/// A layer tar (plain, gzip or zstd): expanded into a tree and merged onto nothing and onto a
/// small base; a merged tree holds no whiteout at any depth, and the temp files are gone.
pub fn layer(data: &[u8]) {
    env::with_store(|store, rt| {
        let path = env::input_file(data);
        let expanded = rt.block_on(image::expand_layer(store, &path));
        let _ = std::fs::remove_file(&path);
        if let Ok(tree) = expanded {
            let base = rt.block_on(env::base_tree(store));
            for lower in [None, Some(base)] {
                let merged = rt.block_on(image::merge_layers(store, lower, tree)).expect("a stored layer tree merges");
                rt.block_on(no_whiteouts(store, merged, 0));
            }
        }
        env::assert_tmp_empty(store);
    });
}

async fn no_whiteouts(store: &shoal_blobs::Store, tree: Hash, depth: usize) {
    assert!(depth < 4096, "a merged tree deeper than any tar path");
    let t = store.get_tree(tree).await.expect("a merged tree is stored");
    for e in &t.entries {
        assert!(!e.name.starts_with(".wh."), "whiteout `{}` left in a merged tree", e.name);
        if let EntryKind::Dir { hash } = e.kind {
            Box::pin(no_whiteouts(store, hash, depth + 1)).await;
        }
    }
}

/// A `docker save` or OCI archive: imported (or refused) with every temp file removed.
pub fn archive(data: &[u8]) {
    env::with_store(|store, rt| {
        let path = env::input_file(data);
        let result = rt.block_on(store.import_docker_archive(&path, Some("fuzz:latest")));
        let _ = std::fs::remove_file(&path);
        if let Ok(id) = result {
            rt.block_on(store.get_image(id)).expect("an imported image reads").expect("an imported image is stored");
        }
        env::assert_tmp_empty(store);
    });
}

/// Registry responses: the fuzz input, split into answers, served by a registry on 127.0.0.1
/// to a real pull; references and auth challenges parsed as the pull parses them.
pub fn registry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = image::reference(text.lines().next().unwrap_or(""));
    let _ = image::bearer_params(&text);
    env::with_store(|store, rt| {
        let reference = registry::serve(data);
        let _ = rt.block_on(store.pull(&reference, Default::default()));
        env::assert_tmp_empty(store);
    });
}

/// The boundary of the multipart bodies of the corpus.
pub const MULTIPART_BOUNDARY: &str = "shoal-fuzz-boundary";

/// The explorer's run request (a multipart body) read against the built-in catalogue: refused
/// with a client error (4xx, never 500), or read with at most [`INPUT_FILES_MAX`] well-named
/// files, each in the store at its size.
pub fn multipart(data: &[u8]) {
    let catalogue =
        Catalogue::parse("builtin", shoal_node::explorer::catalogue::BUILTIN).expect("the built-in catalogue");
    env::with_store(|store, rt| {
        let dir = env::scratch_dir();
        let req = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"))
            .body(axum::body::Body::from(data.to_vec()))
            .expect("a request");
        let result = rt.block_on(async {
            let mp = Multipart::from_request(req, &()).await.expect("a multipart content type");
            receive(store, &catalogue, mp, dir.path(), &mut Open).await
        });
        match result {
            Ok(r) => {
                assert!(r.inputs.len() <= INPUT_FILES_MAX);
                assert!(r.inputs.keys().all(|name| input_name(name)), "{:?}", r.inputs.keys());
                for d in r.inputs.values().chain(&r.stdin) {
                    assert_eq!(rt.block_on(store.size(d.hash)).expect("a stored size"), Some(d.size));
                }
            }
            Err(e) => assert!(e.status.is_client_error(), "bad input answered {}: {}", e.status, e.message),
        }
    });
}

/// A catalogue file: refused with its problems named, or every entry's defaults are valid
/// options and render.
pub fn catalogue(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Catalogue::parse("fuzz.toml", &text) {
        Err(e) => assert!(e.starts_with("fuzz.toml"), "a catalogue error names the file: {e}"),
        Ok(cat) => {
            for entry in &cat.entries {
                let options = entry.normalize(&BTreeMap::new()).expect("an entry's defaults are valid options");
                let _ = entry.render(&options, Some("main.c"), &["main.c".to_string()]);
                let _ = cat.media_type_of("x.c");
            }
            let _ = serde_json::to_string(&cat).expect("a catalogue serializes");
        }
    }
}
