//! Writes the seed corpora under `fuzz/corpus/<target>/`: real examples of every input kind, made
//! with shoal's own encoders (records, facts, messages, trees) and the tar, gzip and zstd crates
//! (layers, `docker save` and OCI archives, registry answers), so the fuzzers start from inputs
//! that reach deep into each parser. Run from the repository root after changing an encoding:
//!
//! ```sh
//! cargo run -p shoal-fuzz-entry --example seed_corpus
//! ```
//!
//! Files are named by content (the first 16 hex digits of their BLAKE3), as libFuzzer names
//! what it adds, so a rerun rewrites the same files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde_json::json;
use sha2::Digest as _;
use shoal_blobs::image::{Image, ImageConfig};
use shoal_blobs::tree::{Entry, EntryKind, Tree};
use shoal_dag::{Digest, DigestKind, Exit, Hash, Machine, Requirements, ResolvedJob, RunRecord, Timing};
use shoal_fuzz_entry::MULTIPART_BOUNDARY;
use shoal_mesh::ledger::{Body, Fact, Hlc};
use shoal_mesh::wire::{self, Announce, DagText, FactBatch, SyncReq, SyncResp, WIRE_VERSION};

const REGISTRY_SEPARATOR: &[u8] = b"\n--next--\n";

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut w = Writer { root };

    // DAG JSON: the example, and small DAGs each touching other fields and mistakes.
    w.put("dag_json", &std::fs::read(repo.join("examples/pipeline.json")).unwrap());
    for dag in DAGS {
        w.put("dag_json", dag.as_bytes());
    }

    // Run records: bare and signed, with every exit kind.
    let key = SigningKey::from_bytes(&[7; 32]);
    for exit in [
        Exit::Code(0),
        Exit::Signal(9),
        Exit::Timeout,
        Exit::Oom,
        Exit::OutputTooLarge { output: "out".into(), limit_bytes: 1 << 20 },
        Exit::Error("the image is missing".into()),
    ] {
        let rec = record(exit);
        w.put("record", &rec.to_cbor());
        w.put("record", &rec.sign(&key).to_cbor());
    }

    // Facts: one of each kind, and a delivery sequence of a job's life.
    let dag = Hash::of(b"dag");
    let facts = facts(&key, dag);
    for f in &facts {
        w.put("fact", &wire::encode(f));
    }
    w.put("fact", &wire::encode(&facts));

    // Mesh messages, the first byte naming the kind.
    let text = std::fs::read_to_string(repo.join("examples/pipeline.json")).unwrap();
    let batch = FactBatch {
        v: WIRE_VERSION,
        facts: facts.clone(),
        dags: vec![DagText { hash: Hash::of(text.as_bytes()), text }],
    };
    w.put("wire", &[&[0u8][..], &wire::encode(&batch)].concat());
    let announce = Announce {
        v: WIRE_VERSION,
        node: key.verifying_key().to_bytes(),
        version: "0.1.0".into(),
        hostname: "n1".into(),
        caps: None,
        blob_addrs: vec!["127.0.0.1:7172".parse().unwrap()],
        listen: vec!["/ip4/127.0.0.1/tcp/7171".into()],
        http: Some("http://127.0.0.1:7170".into()),
        running: 1,
        free_cores: 3,
        facts: 12,
        ledger_digest: Hash::of(b"digest"),
        sent_unix_ms: 1_700_000_000_000,
    };
    w.put("wire", &[&[1u8][..], &wire::encode(&announce)].concat());
    for req in [
        SyncReq::Digest { digest: Hash::of(b"d"), count: 3, dag: None },
        SyncReq::Digest { digest: Hash::of(b"d"), count: 3, dag: Some(Hash::of(b"a dag")) },
        SyncReq::Get { ids: vec![facts[0].id(), facts[1].id()] },
        SyncReq::Put { facts: facts[..2].to_vec() },
    ] {
        w.put("wire", &[&[2u8][..], &wire::encode(&req)].concat());
    }
    for resp in [
        SyncResp::Same,
        SyncResp::Ids { ids: vec![facts[0].id()], dag: None },
        SyncResp::Facts { facts: facts[2..4].to_vec() },
        SyncResp::Stored { added: 2, refused: 1, compacted: vec![] },
        SyncResp::Refused { reason: "another wire version".into() },
    ] {
        w.put("wire", &[&[3u8][..], &wire::encode(&resp)].concat());
    }

    // Tree and image blobs.
    let entry = |name: &str, kind| Entry { name: name.into(), kind, mode: 0o644, uid: 0, gid: 0 };
    let tree = Tree {
        entries: vec![
            entry("bin", EntryKind::Dir { hash: Hash::of(b"bin") }),
            entry("data.txt", EntryKind::File { hash: Hash::of(b"data"), size: 4 }),
            entry("sh", EntryKind::Symlink { target: "/bin/busybox".into() }),
        ],
    };
    w.put("tree", &tree.encode());
    let image = Image {
        config: ImageConfig {
            env: vec!["PATH=/bin".into()],
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            workdir: Some("/".into()),
            user: Some("0:0".into()),
            arch: "x86_64".into(),
        },
        rootfs: Hash::of(b"rootfs"),
        oci_digest: Some(format!("sha256:{}", "ab".repeat(32))),
    };
    w.put("tree", &image.encode());

    // OCI JSON: a config, a manifest, an index.
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/", "User": "0"},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let layer_gz = gzip(&layer_tar());
    let manifest = manifest_json(&config, &[&layer_gz]);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest),
             "size": manifest.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest),
             "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"},
             "annotations": {"org.opencontainers.image.ref.name": "latest"}}
        ]
    }))
    .unwrap();
    for b in [&config, &manifest, &index] {
        w.put("oci", b);
    }

    // Layers: plain, gzip and zstd, with whiteouts, an opaque directory, links.
    let tar = layer_tar();
    w.put("layer", &tar);
    w.put("layer", &gzip(&tar));
    w.put("layer", &zstd::encode_all(&tar[..], 3).unwrap());

    // Archives: `docker save` and an OCI archive of the same image.
    w.put("archive", &docker_archive(&config, &tar));
    w.put("archive", &oci_archive(&config, &layer_gz));

    // Registry answers, in the order a pull asks: manifest, config, layer; with a token first;
    // through an index.
    let answers = |list: &[&[u8]]| list.join(REGISTRY_SEPARATOR);
    let ok = |b: &[u8]| [b"O", b].concat();
    w.put("registry", &answers(&[&ok(&manifest), &ok(&config), &ok(&layer_gz)]));
    w.put(
        "registry",
        &answers(&[
            b"Aservice=\"fuzz\",scope=\"repository:fuzz/image:pull\"",
            &ok(br#"{"token":"t0k3n"}"#),
            &ok(&index),
            &ok(&manifest),
            &ok(&config),
            &ok(&layer_gz),
        ]),
    );
    w.put("registry", &answers(&[b"N{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}"]));

    // Explorer requests against the built-in catalogue.
    w.put(
        "multipart",
        &multipart(&[
            ("request", None, br#"{"entry":"gcc","options":{"std":"c11","opt":"-O2","wall":true},"main":"main.c"}"#),
            ("file", Some("main.c"), b"int main(void) { return 0; }\n"),
            ("file", Some("util.h"), b"#define N 3\n"),
            ("stdin", None, b"input\n"),
        ]),
    );
    w.put(
        "multipart",
        &multipart(&[
            ("request", None, br#"{"entry":"python3","options":{"args":"a b"}}"#),
            ("file", Some("main.py"), b"print('hi')\n"),
        ]),
    );
    w.put("multipart", &multipart(&[("request", None, br#"{"entry":"dot","options":{"format":"svg"}}"#)]));

    // Catalogues: the built-in one and a small one using every option type.
    w.put("catalogue", shoal_node::explorer::catalogue::BUILTIN.as_bytes());
    w.put("catalogue", SMALL_CATALOGUE.as_bytes());
}

struct Writer {
    root: PathBuf,
}

impl Writer {
    fn put(&mut self, target: &str, data: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let name = blake3_short(data);
        std::fs::write(dir.join(name), data).unwrap();
    }
}

fn blake3_short(data: &[u8]) -> String {
    Hash::of(data).to_string().trim_start_matches("blake3:")[..16].to_string()
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn record(exit: Exit) -> RunRecord {
    let d = |s: &[u8], kind| Digest { hash: Hash::of(s), kind, size: s.len() as u64 };
    let job = ResolvedJob {
        image: Hash::of(b"image"),
        command: vec!["sh".into(), "-c".into(), "echo hi > /output/x".into()],
        env: BTreeMap::from([("LANG".into(), "C".into())]),
        workdir: Some("/scratch".into()),
        user: Some("1000:1000".into()),
        stdin: Some(d(b"in", DigestKind::File)),
        inputs: BTreeMap::from([
            ("text".into(), d(b"text", DigestKind::File)),
            ("dir".into(), d(b"t", DigestKind::Tree)),
        ]),
        outputs: BTreeMap::new(),
        arch: None,
        cpu_flags: vec!["avx2".into()],
        network: false,
    };
    RunRecord {
        version: 1,
        job_id: "count".into(),
        action_key: job.action_key(),
        job,
        requirements: Requirements::default(),
        outputs: BTreeMap::from([("x".into(), d(b"hi\n", DigestKind::File))]),
        stdout: d(b"", DigestKind::File),
        stderr: d(b"warning\n", DigestKind::File),
        exit,
        timing: Timing {
            queued_unix_ms: 1,
            started_unix_ms: 2,
            finished_unix_ms: 30,
            wall_ms: 28,
            user_ms: 3,
            sys_ms: 4,
            peak_memory_bytes: 1 << 20,
        },
        machine: Machine {
            node_id: "n1".into(),
            hostname: "h".into(),
            kernel: "6.1".into(),
            cpu_model: "cpu".into(),
            cpu_flags: vec!["sse2".into()],
            arch: "x86_64".into(),
            cores: 2,
            memory_bytes: 8 << 30,
            backend: "namespace".into(),
            accelerator: None,
            qemu: None,
            guest_kernel: None,
            emulation: None,
            gpus: Vec::new(),
            kernel_config: None,
            shoal_version: None,
        },
        holders: vec!["n1".into()],
    }
}

fn facts(key: &SigningKey, dag: Hash) -> Vec<Fact> {
    let hlc = |ms| Hlc { wall_ms: ms, counter: 0 };
    let submit = Fact::sign(
        key,
        hlc(1),
        Body::Submit { dag, jobs: vec!["a".into(), "b".into()], max_attempts: 2, topic_nodes: 0, quorum: None },
    );
    let claim = Fact::sign(key, hlc(2), Body::Claim { dag, job: "a".into(), lease_until_ms: 10_002 });
    let c = claim.id();
    let other = SigningKey::from_bytes(&[9; 32]);
    vec![
        submit,
        claim.clone(),
        Fact::sign(key, hlc(3), Body::Renew { claim: c, lease_until_ms: 20_000 }),
        Fact::sign(
            key,
            hlc(4),
            Body::Done { claim: c, record: Hash::of(b"rec"), bytes: 12, action: None, result: None },
        ),
        Fact::sign(&other, hlc(5), Body::Claim { dag, job: "b".into(), lease_until_ms: 10_005 }),
        Fact::sign(key, hlc(6), Body::Fail { claim: c, reason: "exit 1".into() }),
        Fact::sign(&other, hlc(7), Body::Lost { dag, job: "a".into(), record: Hash::of(b"rec") }),
        Fact::sign(key, hlc(8), Body::Release { claim: c }),
        Fact::sign(key, hlc(9), Body::Cancel { dag }),
    ]
}

/// A layer: directories, files, a symlink, a hard link, a whiteout and an opaque directory.
fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("etc/", tar::EntryType::Directory, b"", None);
    add("etc/hostname", tar::EntryType::Regular, b"box\n", None);
    add("etc/.wh.passwd", tar::EntryType::Regular, b"", None);
    add("bin/", tar::EntryType::Directory, b"", None);
    add("bin/busybox", tar::EntryType::Regular, b"\x7fELF...", None);
    add("bin/ls", tar::EntryType::Link, b"", Some("bin/busybox"));
    add("bin/sh", tar::EntryType::Symlink, b"", Some("busybox"));
    add("tmp/.wh..wh..opq", tar::EntryType::Regular, b"", None);
    add("tmp/new", tar::EntryType::Regular, b"x", None);
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn manifest_json(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(l), "size": l.len()}))
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": config.len()},
        "layers": layers
    }))
    .unwrap()
}

fn archive_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn docker_archive(config: &[u8], layer: &[u8]) -> Vec<u8> {
    let manifest =
        serde_json::to_vec(&json!([{"Config": "config.json", "RepoTags": ["fuzz:1"], "Layers": ["l1/layer.tar"]}]))
            .unwrap();
    archive_of(&[("manifest.json", &manifest), ("config.json", config), ("l1/layer.tar", layer)])
}

fn oci_archive(config: &[u8], layer: &[u8]) -> Vec<u8> {
    let manifest = manifest_json(config, &[layer]);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest),
                       "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "fuzz:2"}}]
    }))
    .unwrap();
    let blob = |d: &[u8]| format!("blobs/sha256/{}", &sha(d)[7..]);
    let (m, c, l) = (blob(&manifest), blob(config), blob(layer));
    archive_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
        (&m, &manifest),
        (&c, config),
        (&l, layer),
    ])
}

fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{MULTIPART_BOUNDARY}\r\n").as_bytes());
        let file = file.map(|f| format!("; filename=\"{f}\"")).unwrap_or_default();
        body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{MULTIPART_BOUNDARY}--\r\n").as_bytes());
    body
}

const DAGS: &[&str] = &[
    r#"{"version": 1, "jobs": [{"id": "a", "image": "busybox:latest", "command": ["true"]}]}"#,
    r#"{"version": 1, "jobs": [
  {"id": "a", "image": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
   "command": ["sh", "-c", "cat /input/x > /output/y"], "env": {"A": "1"}, "workdir": "/scratch", "user": "1000",
   "stdin": "blake3:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
   "inputs": {"x": "file:data.txt"}, "outputs": {"y": "file:/output/y", "d": "dir:/scratch/d", "g": "glob:/output/*.txt", "o": "stdout", "e": "stderr"},
   "requirements": {"cores": 2, "memory": "256MiB", "arch": "x86_64", "cpu_flags": ["avx2"], "gpu": {"count": 1, "model": "a100"},
                    "network": true, "scratch": "1GiB", "output_size": "10MiB", "timeout": "1h30m", "isolation": "vm", "labels": {"team": "x"}}},
  {"id": "b", "image": "jobs:a/y", "command": ["run"], "inputs": {"y": "jobs:a/y"}}
]}"#,
    r#"{"version": 2, "jobs": [{"id": "a", "image": "x", "command": [], "bogus": 1},
  {"id": "a", "image": 3, "inputs": {"x": "jobs:zz/out"}, "requirements": {"memory": "1KiB", "cores": 0}}]}"#,
    r#"{"version": 1, "jobs": [{"id": "a", "image": "i", "command": ["x"], "inputs": {"b": "jobs:b/o"}, "outputs": {"o": "stdout"}},
  {"id": "b", "image": "i", "command": ["x"], "inputs": {"a": "jobs:a/o"}, "outputs": {"o": "stdout"}}]}"#,
    "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\",, }\n",
    "[1, 2.5e-3, -0, true, false, null, \"\\u00e9\\n\\ud83d\\ude00\"]",
];

const SMALL_CATALOGUE: &str = r#"version = 1
[types]
"text/plain" = ["txt"]

[[image]]
id = "cat"
title = "cat"
image = "busybox:latest"
inputs = ["text/plain"]
command = ["sh", "-c", "cat {main} {files}; echo {{literal}} ${x%.*}", "{n}", "{flag}", "{word}", "{pick}"]
env = { N = "{n}" }
timeout = "5s"
memory = "64MiB"
output_size = "1MiB"

[[image.options]]
name = "n"
type = "integer"
min = 1
max = 9
default = 3

[[image.options]]
name = "flag"
type = "boolean"
flag = "-v"
off = "-q"

[[image.options]]
name = "word"
type = "string"
max_len = 12
default = "hi"

[[image.options]]
name = "pick"
type = "choice"
choices = ["a", { value = "b", label = "Bee" }]

[[image.example]]
name = "a.txt"
text = "hello"
"#;
