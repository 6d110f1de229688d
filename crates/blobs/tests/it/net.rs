//! Blobs between stores over iroh on loopback: each store in its own temp home with its own
//! `BlobNode` on 127.0.0.1:0, all in this process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bao_tree::io::outboard::PostOrderMemOutboard;
use bao_tree::{BlockSize, ChunkRanges};
use iroh::endpoint::{Connection, PortmapperConfig, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, NetReportConfig, RelayMode, SecretKey};
use shoal_blobs::image::{ImageConfig, build_oci_layout_from_dir};
use shoal_blobs::net::{BlobNode, BlobPeer, NetError};
use shoal_blobs::{Hash, Store};

use crate::{mode, store, write};

pub(crate) fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub(crate) async fn node(store: &Store, seed: u8) -> BlobNode {
    store.serve_blobs([seed; 32], loopback()).await.unwrap()
}

/// Each node learns the others' addresses and admits them (members of one mesh).
fn introduce(nodes: &[&BlobNode]) {
    for a in nodes {
        for b in nodes {
            a.add_peer(&b.me());
            a.admit(&b.me().id);
        }
    }
}

/// Deterministic incompressible bytes.
pub(crate) fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

#[tokio::test]
async fn fetch_a_5_mib_blob() {
    let (_ha, a) = store().await;
    let (_hb, b) = store().await;
    let (na, nb) = (node(&a, 1).await, node(&b, 2).await);
    let me = na.me();
    assert!(!me.addrs.is_empty() && me.addrs.iter().all(|s| s.ip().is_loopback()), "{me:?}");
    introduce(&[&na, &nb]);

    let data = random_bytes("five", 5 << 20);
    let hash = a.put_bytes(data.clone()).await.unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    let got = nb.fetch_with_progress(hash, &[me.id], move |n| seen2.store(n, Ordering::Relaxed)).await.unwrap();
    assert_eq!(got, 5 << 20);
    assert_eq!(seen.load(Ordering::Relaxed), 5 << 20, "progress reaches the size");
    assert_eq!(b.get_bytes(hash).await.unwrap().unwrap(), data);
    // Already here: nothing is fetched, no provider is needed.
    assert_eq!(nb.fetch(hash, &[me.id]).await.unwrap(), 0);
    assert_eq!(nb.fetch(hash, &[]).await.unwrap(), 0);

    // BlobPeer survives CBOR (it is gossiped).
    let mut cbor = Vec::new();
    ciborium::into_writer(&me, &mut cbor).unwrap();
    assert_eq!(ciborium::from_reader::<BlobPeer, _>(&cbor[..]).unwrap(), me);

    na.shutdown().await;
    nb.shutdown().await;
}

/// What a directory holds: relative path -> (kind, mode, content or link target).
pub(crate) fn snapshot(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = e.file_type();
        let v = if ft.is_symlink() {
            ('l', 0, std::fs::read_link(e.path()).unwrap().into_os_string().into_encoded_bytes())
        } else if ft.is_dir() {
            ('d', mode(e.path()), Vec::new())
        } else {
            ('f', mode(e.path()), std::fs::read(e.path()).unwrap())
        };
        out.insert(rel, v);
    }
    out
}

pub(crate) fn sample_dir(src: &Path) {
    write(&src.join("bin/run"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&src.join("a/b/c/deep.txt"), b"deep", 0o644);
    write(&src.join("a/b/same.txt"), b"deep", 0o600);
    write(&src.join("a/empty"), b"", 0o644);
    write(&src.join("data/big.bin"), &random_bytes("big", (4 << 20) + 12_345), 0o644);
    write(&src.join("data/mid.bin"), &random_bytes("mid", 100_000), 0o640);
    std::os::unix::fs::symlink("../bin/run", src.join("a/run-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", src.join("dangling")).unwrap();
    std::fs::create_dir_all(src.join("a/empty-dir")).unwrap();
    std::fs::set_permissions(src.join("a/b"), std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
}

#[tokio::test]
async fn fetch_a_tree_and_materialize_it() {
    let (ha, a) = store().await;
    let (hb, b) = store().await;
    let (na, nb) = (node(&a, 3).await, node(&b, 4).await);
    introduce(&[&na, &nb]);
    let src = ha.path().join("src");
    sample_dir(&src);
    let digest = a.put_tree_from_dir(&src).await.unwrap();

    let got = nb.fetch_digest(&digest, &[na.me().id]).await.unwrap();
    // Every distinct blob arrived once: the files (`deep` twice, stored once) and the trees.
    assert!(got > digest.size - 4, "fetched {got} bytes for {} bytes of files", digest.size);
    assert!(b.is_tree(digest.hash));
    let sub = b.get_tree(digest.hash).await.unwrap();
    let shoal_blobs::tree::EntryKind::Dir { hash: a_tree } = sub.get("a").unwrap().kind else { panic!() };
    assert!(b.is_tree(a_tree), "subtrees are recorded as trees too");
    assert_eq!(nb.fetch_tree(digest.hash, &[na.me().id]).await.unwrap(), 0, "nothing left to fetch");

    let dest = hb.path().join("out");
    b.materialize(digest.hash, &dest).await.unwrap();
    assert_eq!(snapshot(&dest), snapshot(&src));
    assert_eq!(mode(&dest.join("bin/run")), 0o755);

    // gc follows the fetched tree like a local one.
    b.pin(digest.hash).unwrap();
    b.gc().await.unwrap();
    let again = hb.path().join("again");
    b.materialize(digest.hash, &again).await.unwrap();
    assert_eq!(snapshot(&again), snapshot(&src));

    // A file's hash fetched as a tree is refused as not a tree.
    let file = a.put_bytes(&b"not a tree"[..]).await.unwrap();
    let err = nb.fetch_tree(file, &[na.me().id]).await.unwrap_err();
    assert!(matches!(err, NetError::NotATree { .. }), "{err}");
    assert!(!b.is_tree(file));

    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test]
async fn falls_back_to_the_next_provider() {
    let (_ha, a) = store().await;
    let (_hb, b) = store().await;
    let (_hc, c) = store().await;
    let (na, nb, nc) = (node(&a, 5).await, node(&b, 6).await, node(&c, 7).await);
    introduce(&[&na, &nb, &nc]);
    let data = random_bytes("fallback", 300_000);
    let hash = b.put_bytes(data.clone()).await.unwrap();
    // An id nobody told us the address of, then a peer without the blob, then one with it.
    let unknown = *SecretKey::from_bytes(&[99; 32]).public().as_bytes();
    let t = Instant::now();
    let got = nc.fetch(hash, &[unknown, na.me().id, nb.me().id]).await.unwrap();
    assert_eq!(got, data.len() as u64);
    assert_eq!(c.get_bytes(hash).await.unwrap().unwrap(), data);
    eprintln!("MEASURE fallback over 2 failing providers: {} ms", t.elapsed().as_millis());
    for n in [na, nb, nc] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_hash_nobody_has_fails_clearly_and_soon() {
    let (_ha, a) = store().await;
    let (_hb, b) = store().await;
    let (_hc, c) = store().await;
    let (na, nb, nc) = (node(&a, 8).await, node(&b, 9).await, node(&c, 10).await);
    introduce(&[&na, &nb, &nc]);
    let missing = Hash::of(b"nobody stored this");
    let t = Instant::now();
    let err = nc.fetch(missing, &[na.me().id, nb.me().id]).await.unwrap_err();
    let ms = t.elapsed().as_millis();
    assert!(ms < 5_000, "took {ms} ms");
    let text = err.to_string();
    eprintln!("{text}");
    let NetError::Unavailable { hash, tried } = &err else { panic!("{err:?}") };
    assert_eq!(*hash, missing);
    assert_eq!(tried.len(), 2);
    assert!(text.contains(&missing.to_string()), "{text}");
    assert!(text.contains(&hex::encode(&na.me().id[..5])) && text.contains(&hex::encode(&nb.me().id[..5])), "{text}");
    assert!(text.contains("does not have it"), "{text}");

    // No providers at all, or only ourselves.
    assert!(matches!(nc.fetch(missing, &[]).await, Err(NetError::NoProviders { .. })));
    assert!(matches!(nc.fetch(missing, &[nc.me().id]).await, Err(NetError::NoProviders { .. })));
    // A tree and an image fail the same way.
    assert!(matches!(nc.fetch_tree(missing, &[na.me().id]).await, Err(NetError::Unavailable { .. })));
    assert!(matches!(nc.fetch_image(missing, &[na.me().id]).await, Err(NetError::Unavailable { .. })));

    // A peer whose address nobody gave us.
    let unknown = *SecretKey::from_bytes(&[98; 32]).public().as_bytes();
    let t = Instant::now();
    let err = nc.fetch(missing, &[unknown]).await.unwrap_err();
    eprintln!("unknown peer after {} ms: {err}", t.elapsed().as_millis());
    assert!(t.elapsed() < Duration::from_secs(5));

    // A peer that is gone: its address is known, nothing answers there.
    let gone = nb.me();
    nb.shutdown().await;
    let t = Instant::now();
    let err = nc.fetch(missing, &[gone.id]).await.unwrap_err();
    let ms = t.elapsed().as_millis();
    eprintln!("gone peer after {ms} ms: {err}");
    assert!(ms < 10_000, "took {ms} ms");
    na.shutdown().await;
    nc.shutdown().await;
}

/// A provider on the iroh-blobs protocol that answers every request with `data` except for its
/// last byte, flipped, under the size and BLAKE3 tree of the true `data`: every group of the
/// stream verifies but the last.
#[derive(Debug, Clone)]
struct Liar {
    data: Arc<Vec<u8>>,
}

impl ProtocolHandler for Liar {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let _request = recv.read_to_end(64 << 10).await.map_err(AcceptError::from_err)?;
            let mut bad = (*self.data).clone();
            *bad.last_mut().unwrap() ^= 1;
            let outboard = PostOrderMemOutboard::create(&self.data[..], BlockSize::from_chunk_log(4));
            let mut out = (self.data.len() as u64).to_le_bytes().to_vec();
            bao_tree::io::sync::encode_ranges(&bad[..], &outboard, &ChunkRanges::all(), &mut out).unwrap();
            send.write_all(&out).await.map_err(AcceptError::from_err)?;
            send.finish().map_err(AcceptError::from_err)?;
            send.stopped().await.ok();
        }
        Ok(())
    }
}

#[tokio::test]
async fn bytes_that_do_not_match_their_hash_are_refused() {
    let (_ha, a) = store().await;
    let (_hb, b) = store().await;
    let (na, nb) = (node(&a, 11).await, node(&b, 12).await);
    let data = Arc::new(random_bytes("liar", (1 << 20) + 777));
    let hash = a.put_bytes(data.to_vec()).await.unwrap();

    let liar_ep = Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(&[13; 32]))
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .clear_ip_transports()
        .bind_addr(loopback())
        .unwrap()
        .bind()
        .await
        .unwrap();
    let liar = BlobPeer { id: *liar_ep.id().as_bytes(), addrs: liar_ep.bound_sockets() };
    let router = Router::builder(liar_ep).accept(iroh_blobs::ALPN, Liar { data: data.clone() }).spawn();
    introduce(&[&na, &nb]);
    nb.add_peer(&liar);

    let err = nb.fetch(hash, &[liar.id]).await.unwrap_err();
    eprintln!("{err}");
    assert!(err.to_string().contains("do not match the hash"), "{err}");
    assert!(!b.has(hash).await.unwrap(), "a blob with a refused group is not complete");
    assert!(b.get_bytes(hash).await.unwrap().is_none());

    // The honest peer after the liar: only the refused group is fetched again, and the blob
    // read back is the true one.
    let got = nb.fetch(hash, &[liar.id, na.me().id]).await.unwrap();
    assert_eq!(got, 777, "the last 16 KiB group (777 bytes here) is all that was missing");
    assert_eq!(&b.get_bytes(hash).await.unwrap().unwrap()[..], &data[..]);

    router.shutdown().await.unwrap();
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test]
async fn fetch_an_image() {
    let (ha, a) = store().await;
    let (_hb, b) = store().await;
    let (na, nb) = (node(&a, 14).await, node(&b, 15).await);
    introduce(&[&na, &nb]);
    let src = ha.path().join("rootfs");
    sample_dir(&src);
    let config = ImageConfig {
        env: vec!["PATH=/bin".into()],
        cmd: vec!["/bin/run".into()],
        arch: "x86_64".into(),
        ..Default::default()
    };
    let layout = ha.path().join("layout");
    build_oci_layout_from_dir(&src, &config, &layout, "latest").unwrap();
    let id = a.import_oci_layout(&layout, Some("net-test")).await.unwrap();
    let image = a.get_image(id).await.unwrap().unwrap();

    assert!(b.get_image(id).await.unwrap().is_none());
    let t = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(60), nb.fetch_image(id, &[na.me().id])).await.unwrap().unwrap();
    eprintln!("MEASURE fetch_image ({got} bytes): {} ms", t.elapsed().as_millis());
    assert_eq!(b.get_image(id).await.unwrap().unwrap(), image);
    assert!(b.is_tree(image.rootfs));
    let root = b.rootfs(image.rootfs).await.unwrap();
    assert_eq!(snapshot(&root), snapshot(&src));

    // Tagged on this side, it survives gc with its rootfs.
    b.tag_image("fetched", id).unwrap();
    b.gc().await.unwrap();
    assert_eq!(b.get_image(id).await.unwrap().unwrap(), image);
    assert_eq!(nb.fetch_image(id, &[]).await.unwrap(), 0, "everything is still here");

    na.shutdown().await;
    nb.shutdown().await;
}

/// Many nodes fetching one blob from one provider at once (an image everyone needs), and one node
/// fetching the same tree several times at once (jobs sharing an input).
#[tokio::test(flavor = "multi_thread")]
async fn fetches_at_once() {
    const FETCHERS: usize = 24;
    const SAME_TREE_FETCHES: usize = 4;
    let (ha, a) = store().await;
    let na = node(&a, 20).await;
    let data = random_bytes("crowd", 3 << 20);
    let hash = a.put_bytes(data.clone()).await.unwrap();
    let mut fetchers = Vec::new();
    for i in 0..FETCHERS {
        let (h, s) = store().await;
        let n = node(&s, 30 + i as u8).await;
        n.add_peer(&na.me());
        na.admit(&n.me().id);
        fetchers.push((h, s, n));
    }
    let provider = na.me().id;
    let mut tasks = tokio::task::JoinSet::new();
    for (_, _, n) in &fetchers {
        let n = n.clone();
        tasks.spawn(async move { n.fetch(hash, &[provider]).await });
    }
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.unwrap() {
            failed.push(e.to_string());
        }
    }
    assert!(failed.is_empty(), "{} of {FETCHERS} failed: {:?}", failed.len(), failed.first());
    for (_, s, _) in &fetchers {
        assert_eq!(s.get_bytes(hash).await.unwrap().unwrap(), data);
    }

    let src = ha.path().join("src");
    sample_dir(&src);
    let digest = a.put_tree_from_dir(&src).await.unwrap();
    let (hb, b, nb) = &fetchers[0];
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SAME_TREE_FETCHES {
        let nb = nb.clone();
        tasks.spawn(async move { nb.fetch_tree(digest.hash, &[provider]).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let dest = hb.path().join("out");
    b.materialize(digest.hash, &dest).await.unwrap();
    assert_eq!(snapshot(&dest), snapshot(&src));
    for (_, _, n) in fetchers {
        n.shutdown().await;
    }
    na.shutdown().await;
}

/// A blob corrupted on disk here comes back whole from a peer that holds it (iroh-blobs' own
/// fetch would skip it: its database says the blob is complete).
#[tokio::test]
async fn a_corrupted_blob_is_fetched_again_from_a_peer() {
    let (_ha, a) = store().await;
    let (hb, b) = store().await;
    let (na, nb) = (node(&a, 1).await, node(&b, 2).await);
    introduce(&[&na, &nb]);
    let data = random_bytes("corrupt", 300_000);
    let hash = a.put_bytes(data.clone()).await.unwrap();
    assert_eq!(b.put_bytes(data.clone()).await.unwrap(), hash);
    let path = hb.path().join("blobs/data").join(format!("{}.data", hash.to_hex()));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1234] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(b.get_bytes(hash).await.is_err());
    assert!(!b.has(hash).await.unwrap());
    assert_eq!(nb.fetch(hash, &[na.me().id]).await.unwrap(), data.len() as u64);
    assert!(!b.is_corrupt(hash));
    assert_eq!(b.get_bytes(hash).await.unwrap().unwrap(), data);
}

/// An endpoint that was never admitted (an outsider: it knows the address and the hash, not the
/// mesh) is refused before it can read a byte; once admitted, the same endpoint is served.
#[tokio::test]
async fn only_admitted_endpoints_are_served() {
    let (_ha, a) = store().await;
    let (_hb, b) = store().await;
    let (_hc, c) = store().await;
    let (na, outsider, member) = (node(&a, 40).await, node(&b, 41).await, node(&c, 42).await);
    for n in [&outsider, &member] {
        n.add_peer(&na.me());
    }
    na.admit(&member.me().id);
    let data = random_bytes("members only", 100_000);
    let hash = a.put_bytes(data.clone()).await.unwrap();

    let err = outsider.fetch(hash, &[na.me().id]).await.unwrap_err();
    eprintln!("{err}");
    assert!(err.to_string().contains("serves blobs only to members of its mesh"), "{err}");
    assert!(!b.has(hash).await.unwrap() && b.get_bytes(hash).await.unwrap().is_none(), "nothing arrived");
    assert!(!na.is_admitted(&outsider.me().id));

    assert_eq!(member.fetch(hash, &[na.me().id]).await.unwrap(), data.len() as u64);
    assert_eq!(c.get_bytes(hash).await.unwrap().unwrap(), data);

    // Admitted later (it proved its membership on the mesh's side): served from then on.
    assert!(na.admit(&outsider.me().id), "newly admitted");
    assert!(!na.admit(&outsider.me().id), "admitting twice changes nothing");
    assert_eq!(outsider.fetch(hash, &[na.me().id]).await.unwrap(), data.len() as u64);
    assert_eq!(b.get_bytes(hash).await.unwrap().unwrap(), data);

    for n in [na, outsider, member] {
        n.shutdown().await;
    }
}

/// A peer that comes back on another port (killed, restarted with port 0) is fetched from at its
/// new address as soon as it is announced there, though a connection to its old address was open.
#[tokio::test]
async fn a_peer_back_on_a_new_port_is_reached_there() {
    let (_ha, a) = store().await;
    let (_hb, b) = store().await;
    let (na, nb) = (node(&a, 1).await, node(&b, 2).await);
    introduce(&[&na, &nb]);
    let first = b.put_bytes(random_bytes("before", 100_000)).await.unwrap();
    assert_eq!(na.fetch(first, &[nb.me().id]).await.unwrap(), 100_000);
    let old = nb.me().addrs;
    // Gone without a goodbye, as a kill -9 leaves it: the endpoint is dropped, not closed.
    drop(nb);
    let nb2 = node(&b, 2).await;
    assert_ne!(nb2.me().addrs, old, "the restarted peer must be on a new port for this test");
    nb2.admit(&na.me().id);
    na.add_peer(&nb2.me());
    let second = b.put_bytes(random_bytes("after", 100_000)).await.unwrap();
    let started = Instant::now();
    let got = na.fetch(second, &[nb2.me().id]).await;
    assert_eq!(got.unwrap(), 100_000, "after {:?}", started.elapsed());
}
