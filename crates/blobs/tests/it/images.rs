use std::io::Write;
use std::path::Path;
use std::time::Instant;

use sha2::Digest as _;
use shoal_blobs::image::{ImageConfig, build_oci_layout_from_dir};
use shoal_blobs::tree::EntryKind;
use shoal_blobs::{Hash, ImageError, ImageRef, SignedRecord, Store};

use crate::{mode, store, write};

pub enum L<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

pub fn layer_tar(entries: &[L]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            L::Dir(p, m) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*m);
                h.set_size(0);
                b.append_data(&mut h, format!("{p}/"), std::io::empty()).unwrap();
            }
            L::File(p, d, m) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*m);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, p, *d).unwrap();
            }
            L::Sym(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            L::Hard(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn put_blob(dir: &Path, data: &[u8]) -> String {
    let hex = sha(data);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// Writes an OCI layout with the given (already compressed) layers; returns the manifest digest.
pub fn write_layout(dir: &Path, layers: &[(Vec<u8>, &str)], ref_name: &str) -> String {
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "A=1"], "Cmd": ["/bin/sh"], "WorkingDir": "/work", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cd = put_blob(dir, &config);
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(data, mt)| serde_json::json!({"mediaType": mt, "digest": put_blob(dir, data), "size": data.len()}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": layer_descs
    }))
    .unwrap();
    let md = put_blob(dir, &manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
         "annotations": {"org.opencontainers.image.ref.name": ref_name}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

async fn names(s: &Store, tree: Hash) -> Vec<String> {
    s.get_tree(tree).await.unwrap().entries.into_iter().map(|e| e.name).collect()
}

async fn sub(s: &Store, tree: Hash, name: &str) -> Hash {
    match s.get_tree(tree).await.unwrap().get(name).unwrap().kind {
        EntryKind::Dir { hash } => hash,
        ref k => panic!("{name} is {k:?}"),
    }
}

#[tokio::test]
async fn oci_layout_whiteouts_opaque_hardlinks() {
    let (home, s) = store().await;
    let l1 = layer_tar(&[
        L::Dir("a", 0o755),
        L::File("a/x", b"x", 0o644),
        L::File("a/y", b"y", 0o644),
        L::Dir("b", 0o755),
        L::File("b/z", b"z", 0o644),
        L::File("keep", b"keep", 0o644),
        L::File("del", b"del", 0o644),
        L::Dir("d", 0o700),
        L::File("d/old", b"old", 0o644),
        L::Sym("lnk", "/etc/passwd"),
    ]);
    let l2 = gzip(&layer_tar(&[
        L::File(".wh.del", b"", 0o644),
        L::File("a/.wh.x", b"", 0o644),
        L::Dir("b", 0o750),
        L::File("b/.wh..wh..opq", b"", 0o644),
        L::File("b/new", b"new", 0o600),
        L::File("c/file", b"c", 0o644),
        L::File(".wh.d", b"", 0o644),
        L::Dir("d", 0o755),
        L::File("d/fresh", b"fresh", 0o644),
    ]));
    let l3 = zstd::encode_all(
        &layer_tar(&[
            L::Dir("h", 0o755),
            L::File("h/f1", b"suid", 0o4755),
            L::Hard("h/f2", "h/f1"),
            L::Dir("tmp", 0o1777),
        ])[..],
        3,
    )
    .unwrap();
    let dir = home.path().join("layout");
    let md = write_layout(
        &dir,
        &[
            (l1, "application/vnd.oci.image.layer.v1.tar"),
            (l2, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (l3, "application/vnd.oci.image.layer.v1.tar+zstd"),
        ],
        "test:1",
    );
    let id = s.import_oci_layout(&dir, None).await.unwrap();
    let (rid, img) = s.resolve_image(&ImageRef::Tag("test:1".into())).await.unwrap();
    assert_eq!(rid, id);
    assert_eq!(img.oci_digest.as_deref(), Some(md.as_str()));
    assert_eq!(img.config.env, ["PATH=/bin", "A=1"]);
    assert_eq!(img.config.cmd, ["/bin/sh"]);
    assert_eq!(img.config.workdir.as_deref(), Some("/work"));
    assert_eq!(img.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(img.config.arch, "x86_64");
    let (sid, _) = s.resolve_image(&ImageRef::Sha256(md.trim_start_matches("sha256:").into())).await.unwrap();
    assert_eq!(sid, id);
    let (bid, _) = s.resolve_image(&ImageRef::Blake3(id)).await.unwrap();
    assert_eq!(bid, id);

    let root = img.rootfs;
    assert_eq!(names(&s, root).await, ["a", "b", "c", "d", "h", "keep", "lnk", "tmp"]);
    assert_eq!(names(&s, sub(&s, root, "a").await).await, ["y"]);
    assert_eq!(names(&s, sub(&s, root, "b").await).await, ["new"]);
    assert_eq!(names(&s, sub(&s, root, "d").await).await, ["fresh"]);
    assert_eq!(names(&s, sub(&s, root, "h").await).await, ["f1", "f2"]);
    let t = s.get_tree(root).await.unwrap();
    assert_eq!(t.get("b").unwrap().mode, 0o750, "the upper layer's directory metadata wins");
    assert_eq!(t.get("tmp").unwrap().mode, 0o1777);
    let h = s.get_tree(sub(&s, root, "h").await).await.unwrap();
    assert_eq!(h.get("f1").unwrap().kind, h.get("f2").unwrap().kind);
    assert_eq!(h.get("f2").unwrap().mode, 0o4755);

    let fs = s.rootfs(root).await.unwrap();
    assert_eq!(std::fs::read(fs.join("b/new")).unwrap(), b"new");
    assert_eq!(mode(&fs.join("h/f2")), 0o4755);
    assert_eq!(mode(&fs.join("tmp")), 0o1777);
    assert!(!fs.join("del").exists() && !fs.join("a/x").exists() && !fs.join("b/z").exists());
    assert_eq!(std::fs::read_link(fs.join("lnk")).unwrap(), Path::new("/etc/passwd"));

    // Re-importing is cheap and gives the same id.
    let t0 = Instant::now();
    assert_eq!(s.import_oci_layout(&dir, Some("again")).await.unwrap(), id);
    eprintln!("MEASURE re-import of a cached 3-layer image: {} ms", t0.elapsed().as_millis());
    assert_eq!(s.resolve_image(&ImageRef::Tag("again".into())).await.unwrap().0, id, "a bare name means :latest");
    let tags: Vec<String> = s.images().unwrap().into_iter().map(|e| e.tag).collect();
    assert_eq!(tags, ["again:latest", "test:1"]);
    s.shutdown().await;
}

#[tokio::test]
async fn images_sharing_a_layer_share_blobs() {
    let (home, s) = store().await;
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let base = gzip(&layer_tar(&[L::Dir("lib", 0o755), L::File("lib/big.so", &big, 0o755)]));
    let top1 = layer_tar(&[L::File("app1", b"one", 0o755)]);
    let top2 = layer_tar(&[L::File("app2", b"two", 0o755)]);
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let tar = "application/vnd.oci.image.layer.v1.tar";
    write_layout(&home.path().join("one"), &[(base.clone(), gz), (top1, tar)], "one:1");
    write_layout(&home.path().join("two"), &[(base, gz), (top2, tar)], "two:1");
    let a = s.import_oci_layout(&home.path().join("one"), None).await.unwrap();
    let n1 = s.list().await.unwrap().len();
    let b = s.import_oci_layout(&home.path().join("two"), None).await.unwrap();
    let n2 = s.list().await.unwrap().len();
    assert_ne!(a, b);
    let ia = s.get_image(a).await.unwrap().unwrap();
    let ib = s.get_image(b).await.unwrap().unwrap();
    assert_eq!(sub(&s, ia.rootfs, "lib").await, sub(&s, ib.rootfs, "lib").await, "the shared layer's tree is shared");
    let bigs = s.list().await.unwrap().into_iter().filter(|(_, n)| *n == big.len() as u64).count();
    assert_eq!(bigs, 1, "the big file is stored once");
    // The second image added only its own layer (blob, tree, file), its merged root, config,
    // manifest and image blob: nothing of the base layer.
    assert!(n2 - n1 <= 7, "second import added {} blobs", n2 - n1);
    s.shutdown().await;
}

fn tar_dir(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[tokio::test]
async fn docker_save_and_oci_archives() {
    let (home, s) = store().await;
    // `docker save` format: manifest.json, config, one layer.tar per layer directory.
    let d = home.path().join("save");
    std::fs::create_dir_all(d.join("l1")).unwrap();
    std::fs::write(d.join("l1/layer.tar"), layer_tar(&[L::Dir("bin", 0o755), L::File("bin/hello", b"hi", 0o755)]))
        .unwrap();
    std::fs::create_dir_all(d.join("l2")).unwrap();
    std::fs::write(
        d.join("l2/layer.tar"),
        layer_tar(&[L::File("bin/.wh.hello", b"", 0o644), L::File("bin/bye", b"bye", 0o700)]),
    )
    .unwrap();
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["X=1"],"Entrypoint":["/bin/bye"]}}"#;
    let config_hex = sha(config);
    std::fs::write(d.join(format!("{config_hex}.json")), config).unwrap();
    let manifest = serde_json::json!([{"Config": format!("{config_hex}.json"), "RepoTags": ["saved:2"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}]);
    std::fs::write(d.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let archive = home.path().join("saved.tar");
    tar_dir(&d, &archive);
    let id = s.import_docker_archive(&archive, None).await.unwrap();
    let (rid, img) = s.resolve_image(&ImageRef::Tag("saved:2".into())).await.unwrap();
    assert_eq!(rid, id);
    assert_eq!(img.config.entrypoint, ["/bin/bye"]);
    assert_eq!(img.oci_digest, None);
    assert_eq!(names(&s, sub(&s, img.rootfs, "bin").await).await, ["bye"]);
    // docker's image id (the config digest) finds it too.
    assert_eq!(s.resolve_image(&ImageRef::Sha256(config_hex)).await.unwrap().0, id);

    // An OCI archive: a layout packed in a tar.
    let layout = home.path().join("layout");
    write_layout(
        &layout,
        &[(layer_tar(&[L::File("f", b"f", 0o644)]), "application/vnd.oci.image.layer.v1.tar")],
        "latest",
    );
    let oci_tar = home.path().join("oci.tar");
    tar_dir(&layout, &oci_tar);
    let id2 = s.import_image_path(&oci_tar, Some("fromarchive")).await.unwrap();
    assert_eq!(s.resolve_image(&ImageRef::Tag("fromarchive:latest".into())).await.unwrap().0, id2);
    assert_eq!(s.import_image_path(&layout, None).await.unwrap(), id2, "the same image from its directory");
    s.shutdown().await;
}

#[tokio::test]
async fn resolve_errors_say_what_to_do() {
    let (_home, s) = store().await;
    let err = s.resolve_image(&ImageRef::Tag("foo:1".into())).await.unwrap_err();
    assert!(matches!(err, ImageError::UnknownTag { .. }));
    assert_eq!(err.to_string(), "no image tagged `foo:1`; run `shoal image ls`, or `shoal image import`/`pull` it");
    let err = s.resolve_image(&ImageRef::Tag("foo".into())).await.unwrap_err();
    assert!(err.to_string().contains("`foo:latest`"), "{err}");
    let err = s.resolve_image(&ImageRef::Sha256("ab".repeat(32))).await.unwrap_err();
    assert!(err.to_string().contains("shoal image import"), "{err}");
    let err = s.resolve_image(&ImageRef::Blake3(Hash::of(b"x"))).await.unwrap_err();
    assert!(matches!(err, ImageError::UnknownId { .. }), "{err}");
    s.shutdown().await;
}

/// A busybox root filesystem from Debian's busybox-static: `/bin/busybox` and one symlink per applet.
pub fn busybox_rootfs(dir: &Path) -> bool {
    let Ok(out) = std::process::Command::new("/bin/busybox").arg("--list").output() else { return false };
    if !out.status.success() {
        return false;
    }
    write(&dir.join("bin/busybox"), &std::fs::read("/bin/busybox").unwrap(), 0o755);
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    for d in ["etc", "tmp", "proc", "dev", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(dir.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    write(&dir.join("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
    true
}

#[tokio::test]
async fn build_layout_then_import() {
    let (home, s) = store().await;
    let src = home.path().join("rootfs");
    write(&src.join("usr/bin/tool"), b"tool", 0o4755);
    write(&src.join("etc/a"), b"a", 0o640);
    std::fs::hard_link(src.join("etc/a"), src.join("etc/b")).unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", src.join("etc/tool")).unwrap();
    std::fs::create_dir_all(src.join("tmp")).unwrap();
    std::fs::set_permissions(src.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let long = "n".repeat(150);
    write(&src.join(&long).join(&long), b"long names", 0o644);
    let config = ImageConfig {
        env: vec!["PATH=/usr/bin".into()],
        cmd: vec!["/usr/bin/tool".into()],
        arch: "x86_64".into(),
        ..Default::default()
    };
    let out = home.path().join("layout");
    build_oci_layout_from_dir(&src, &config, &out, "latest").unwrap();
    // Deterministic: building again gives the same manifest.
    let index1 = std::fs::read(out.join("index.json")).unwrap();
    build_oci_layout_from_dir(&src, &config, &out, "latest").unwrap();
    assert_eq!(std::fs::read(out.join("index.json")).unwrap(), index1);
    let id = s.import_oci_layout(&out, Some("built")).await.unwrap();
    let img = s.get_image(id).await.unwrap().unwrap();
    assert_eq!(img.config, config);
    let expected = s.put_tree_from_dir(&src).await.unwrap();
    assert_eq!(img.rootfs, expected.hash, "the imported rootfs is the source directory exactly");

    if crate::have_tools(&["skopeo"]) {
        let st = std::process::Command::new("skopeo")
            .args(["inspect", &format!("oci:{}:latest", out.display())])
            .output()
            .unwrap();
        assert!(st.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&st.stderr));
    }

    // The busybox image the setup script builds: measure its import.
    let bb = home.path().join("bb");
    if busybox_rootfs(&bb) {
        let layout = home.path().join("bb-layout");
        build_oci_layout_from_dir(
            &bb,
            &ImageConfig { cmd: vec!["/bin/sh".into()], arch: "x86_64".into(), ..Default::default() },
            &layout,
            "busybox:latest",
        )
        .unwrap();
        let t = Instant::now();
        let id = s.import_oci_layout(&layout, None).await.unwrap();
        let import_ms = t.elapsed().as_millis();
        let img = s.get_image(id).await.unwrap().unwrap();
        let t = Instant::now();
        let fs = s.rootfs(img.rootfs).await.unwrap();
        let rootfs_ms = t.elapsed().as_millis();
        assert!(std::fs::symlink_metadata(fs.join("bin/sh")).unwrap().file_type().is_symlink());
        assert_eq!(s.resolve_image(&ImageRef::Tag("busybox".into())).await.unwrap().0, id);
        eprintln!(
            "MEASURE busybox image ({} KiB layer): import {import_ms} ms, rootfs materialize {rootfs_ms} ms",
            std::fs::metadata("/bin/busybox").unwrap().len() / 1024
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn gc_keeps_reachable_drops_the_rest() {
    let (home, s) = store().await;
    // Reachable from a record: a file output, and a tree output with a file inside.
    let out = s.put_bytes(&b"output"[..]).await.unwrap();
    let dir = home.path().join("outdir");
    write(&dir.join("inner/f"), b"inside the output tree", 0o644);
    let tree = s.put_tree_from_dir(&dir).await.unwrap();
    let inner_file = Hash::of(b"inside the output tree");
    let rec = {
        use ciborium::Value;
        let v = Value::Map(vec![
            (Value::Text("job_id".into()), Value::Text("j".into())),
            (
                Value::Text("stdout".into()),
                Value::Map(vec![(Value::Text("hash".into()), Value::Bytes(out.0.to_vec()))]),
            ),
            (
                Value::Text("outputs".into()),
                Value::Map(vec![(
                    Value::Text("d".into()),
                    Value::Map(vec![(Value::Text("hash".into()), Value::Bytes(tree.hash.0.to_vec()))]),
                )]),
            ),
        ]);
        let mut record = Vec::new();
        ciborium::into_writer(&v, &mut record).unwrap();
        SignedRecord { record, signer: [0; 32], signature: vec![] }
    };
    let rh = s.put_record(&rec, shoal_blobs::Durability::Now).await.unwrap();
    s.action_put(&Hash::of(b"key"), &rh).unwrap();
    // Pinned.
    let pinned = s.put_bytes(&b"pinned"[..]).await.unwrap();
    s.pin(pinned).unwrap();
    // An image.
    let layout = home.path().join("layout");
    write_layout(
        &layout,
        &[(layer_tar(&[L::File("imgfile", b"image file", 0o644)]), "application/vnd.oci.image.layer.v1.tar")],
        "img:1",
    );
    let id = s.import_oci_layout(&layout, None).await.unwrap();
    let img = s.get_image(id).await.unwrap().unwrap();
    let live_rootfs = s.rootfs(img.rootfs).await.unwrap();
    // Garbage: a blob, a tree with its own file, and that tree's materialized rootfs.
    let junk = s.put_bytes(&b"junk"[..]).await.unwrap();
    let jdir = home.path().join("junkdir");
    write(&jdir.join("j"), &vec![9u8; 100_000], 0o644);
    let jtree = s.put_tree_from_dir(&jdir).await.unwrap();
    let dead_rootfs = s.rootfs(jtree.hash).await.unwrap();
    // The microVM backend's squashfs images sit beside the roots and share their fate.
    let (live_sqfs, dead_sqfs) = (live_rootfs.with_extension("sqfs"), dead_rootfs.with_extension("sqfs"));
    std::fs::write(&live_sqfs, b"live image").unwrap();
    std::fs::write(&dead_sqfs, b"dead image").unwrap();

    let report = s.gc().await.unwrap();
    eprintln!("{report:?}");
    for h in [out, tree.hash, inner_file, rh, pinned, id, img.rootfs, Hash::of(b"image file")] {
        assert!(s.has(h).await.unwrap(), "{h} must survive gc");
    }
    for h in [junk, jtree.hash, Hash::of(&vec![9u8; 100_000])] {
        assert!(!s.has(h).await.unwrap(), "{h} must be collected");
    }
    assert!(report.blobs_removed >= 3, "{report:?}");
    assert!(report.bytes_freed >= 100_000, "{report:?}");
    assert_eq!(report.rootfs_removed, 1);
    assert!(live_rootfs.exists() && !dead_rootfs.exists());
    assert!(live_sqfs.exists() && !dead_sqfs.exists());
    // The image still materializes after gc, and a second gc removes nothing.
    assert!(s.resolve_image(&ImageRef::Tag("img:1".into())).await.is_ok());
    let again = s.gc().await.unwrap();
    assert_eq!(again.blobs_removed, 0, "{again:?}");

    // Unpinning and untagging release their blobs.
    s.unpin(pinned).unwrap();
    assert!(s.untag_image("img:1").unwrap());
    s.gc().await.unwrap();
    assert!(!s.has(pinned).await.unwrap());
    assert!(!s.has(id).await.unwrap());
    assert!(!live_rootfs.exists());
    assert!(s.has(out).await.unwrap());
    s.shutdown().await;
}

#[tokio::test]
async fn measure_busybox_parts() {
    let (home, s) = store().await;
    let bb = home.path().join("bb");
    if !busybox_rootfs(&bb) {
        return;
    }
    let t = Instant::now();
    s.put_file(Path::new("/bin/busybox")).await.unwrap();
    let pf = t.elapsed().as_millis();
    let t = Instant::now();
    s.put_bytes(std::fs::read("/bin/busybox").unwrap()).await.unwrap();
    let pb = t.elapsed().as_millis();
    let t = Instant::now();
    s.put_tree_from_dir(&bb).await.unwrap();
    let pt = t.elapsed().as_millis();
    eprintln!("MEASURE busybox parts: put_file {pf} ms, put_bytes {pb} ms, put_tree_from_dir {pt} ms");
    s.shutdown().await;
}

/// Bytes of the files in `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// sled rewrites every free segment of its file at each open, so after a gc removed most of
/// the metadata, the next open rewrites the database with what is left: it shrinks, and
/// everything live is still there.
#[tokio::test]
async fn the_open_after_a_gc_compacts_the_metadata_database() {
    let (home, s) = store().await;
    let record = |n: u32| {
        use ciborium::Value;
        let v = Value::Map(vec![
            (Value::Text("job_id".into()), Value::Text("j".into())),
            (Value::Text("n".into()), Value::Integer(n.into())),
            (Value::Text("padding".into()), Value::Bytes(vec![7; 2000])),
        ]);
        let mut record = Vec::new();
        ciborium::into_writer(&v, &mut record).unwrap();
        SignedRecord { record, signer: [0; 32], signature: vec![] }
    };
    // 3000 runs of job `j`: only the last stays reachable, through records_by_job and an action.
    let mut last = None;
    for n in 0..3000 {
        last = Some(s.put_record(&record(n), shoal_blobs::Durability::Soon).await.unwrap());
    }
    let last = last.unwrap();
    s.action_put(&Hash::of(b"key"), &last).unwrap();
    let report = s.gc().await.unwrap();
    assert!(report.blobs_removed >= 2999, "{report:?}");
    let marker = home.path().join("meta.compact");
    assert!(marker.exists(), "gc asks the next open to compact");
    s.shutdown().await;
    drop(s);
    let before = dir_bytes(&home.path().join("meta"));

    let s = Store::open(home.path()).await.unwrap();
    let after = dir_bytes(&home.path().join("meta"));
    assert!(!marker.exists(), "the open compacted and took the marker away");
    assert!(after * 2 < before, "the database shrank: {before} -> {after} bytes");
    assert_eq!(s.action_get(&Hash::of(b"key")).await.unwrap(), Some(last));
    assert_eq!(s.get_record(last).await.unwrap().unwrap().record, record(2999).record);
    // Nothing left beside it, and an open without the marker leaves it alone.
    let names: Vec<String> = std::fs::read_dir(home.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("meta.")), "{names:?}");
    s.shutdown().await;
}

/// A crash between moving the old database aside and moving its compacted copy in leaves no
/// `meta/`: the next open takes the copy, not a fresh empty database.
#[tokio::test]
async fn an_open_after_a_compaction_cut_short_keeps_the_database() {
    let (home, s) = store().await;
    s.pin(Hash::of(b"pinned")).unwrap();
    s.shutdown().await;
    drop(s);
    std::fs::rename(home.path().join("meta"), home.path().join("meta.new")).unwrap();

    let s = Store::open(home.path()).await.unwrap();
    assert_eq!(s.pins().unwrap(), vec![Hash::of(b"pinned")], "the compacted copy was taken");
    assert!(!home.path().join("meta.new").exists());
    s.shutdown().await;
}

/// An archive (or layout) whose files are links out of it: `tar` unpacks a symlink as written,
/// and the import used to follow it, so a hostile archive read host files into an image (its
/// config from a file of the host, a layer from /dev/null; /dev/zero never ended and filled
/// the disk). Found while writing the `archive` fuzz target; the input of the /dev/null case is
/// fuzz/regressions/archive/layer-link-to-dev-null.
#[tokio::test]
async fn archive_links_leading_out_are_refused() {
    let (home, s) = store().await;
    let outside = home.path().join("host-config.json");
    std::fs::write(&outside, br#"{"architecture":"host-file-was-read"}"#).unwrap();
    let layer = layer_tar(&[L::File("f", b"f", 0o644)]);
    let archive = |config: L, layer_entry: L| {
        let mut b = tar::Builder::new(Vec::new());
        let manifest = br#"[{"Config":"config.json","RepoTags":["links:1"],"Layers":["l1/layer.tar"]}]"#;
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(manifest.len() as u64);
        b.append_data(&mut h, "manifest.json", &manifest[..]).unwrap();
        for e in [config, layer_entry] {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match e {
                L::File(p, d, _) => {
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, p, d).unwrap();
                }
                L::Sym(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                _ => unreachable!(),
            }
        }
        b.into_inner().unwrap()
    };
    let config = br#"{"architecture":"amd64"}"#;
    let cases = [
        ("config", archive(L::Sym("config.json", outside.to_str().unwrap()), L::File("l1/layer.tar", &layer, 0))),
        ("layer", archive(L::File("config.json", config, 0), L::Sym("l1/layer.tar", "/dev/null"))),
    ];
    for (what, bytes) in cases {
        let path = home.path().join(format!("{what}.tar"));
        std::fs::write(&path, &bytes).unwrap();
        let err = s.import_docker_archive(&path, None).await.expect_err(what).to_string();
        assert!(err.contains("outside the archive") || err.contains("not a regular file"), "{what}: {err}");
    }
    // A link inside the archive (docker save links identical layers) still imports.
    let inner = archive(L::File("config.json", config, 0), L::Sym("l1/layer.tar", "../l0/layer.tar"));
    let mut with_target = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(layer.len() as u64);
    with_target.append_data(&mut h, "l0/layer.tar", &layer[..]).unwrap();
    let mut a = tar::Archive::new(&inner[..]);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let p = e.path().unwrap().into_owned();
        if h.entry_type() == tar::EntryType::Symlink {
            with_target.append_link(&mut h, &p, e.link_name().unwrap().unwrap()).unwrap();
        } else {
            with_target.append_data(&mut h, &p, &mut e).unwrap();
        }
    }
    let path = home.path().join("inner.tar");
    std::fs::write(&path, with_target.into_inner().unwrap()).unwrap();
    s.import_docker_archive(&path, None).await.expect("a link inside the archive");
    s.shutdown().await;
}
