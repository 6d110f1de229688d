//! Blob fetch throughput over loopback: shoal's `BlobNode::fetch` between two stores against raw
//! iroh-blobs (a plain `FsStore`, endpoint and downloader, no shoal code) between two endpoints
//! configured alike. Both ends live in this process. For reference it also times raw iroh-blobs'
//! `remote().fetch` on one connection, the path `BlobNode::fetch` takes (the downloader adds a
//! per-group progress channel and measured about a third slower here).
//!
//! `cargo run --release -p shoal-blobs --example blob_throughput`

use std::net::SocketAddr;
use std::time::Instant;

use iroh::address_lookup::memory::MemoryLookup;
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::protocol::Router;
use iroh::{Endpoint, NetReportConfig, RelayMode, SecretKey};
use iroh_blobs::BlobsProtocol;
use iroh_blobs::store::fs::FsStore;
use shoal_blobs::Store;

/// Size of the blob fetched.
const BLOB_BYTES: usize = 200 << 20;
/// Runs of each kind; the median is reported.
const RUNS: usize = 3;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An endpoint configured as `Store::serve_blobs` configures its own.
async fn raw_endpoint(seed: u8, lookup: &MemoryLookup) -> Endpoint {
    Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(&[seed; 32]))
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .address_lookup(lookup.clone())
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .clear_ip_transports()
        .bind_addr(loopback())
        .unwrap()
        .bind()
        .await
        .unwrap()
}

fn mib_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; BLOB_BYTES];
    blake3::Hasher::new().update(b"blob throughput").finalize_xof().fill(&mut data);
    let data = bytes::Bytes::from(data);

    // shoal: A serves, a fresh B fetches each run.
    let a = Store::open(&tmp.path().join("shoal-a")).await.unwrap();
    let hash = a.put_bytes(data.clone()).await.unwrap();
    let na = a.serve_blobs([1; 32], loopback()).await.unwrap();
    // Raw iroh-blobs: the same.
    let ra = FsStore::load(tmp.path().join("raw-a")).await.unwrap();
    let tt = ra.add_bytes(data.clone()).temp_tag().await.unwrap();
    assert_eq!(tt.hash().as_bytes(), &hash.0);
    let ea = raw_endpoint(3, &MemoryLookup::new()).await;
    let router_a = Router::builder(ea.clone()).accept(iroh_blobs::ALPN, BlobsProtocol::new(&ra, None)).spawn();
    drop(data);

    // Runs alternate, so that drift (page cache, clock) touches both alike.
    let (mut shoal, mut raw, mut raw_remote) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let b = Store::open(&tmp.path().join(format!("shoal-b{run}"))).await.unwrap();
        let nb = b.serve_blobs([2; 32], loopback()).await.unwrap();
        nb.add_peer(&na.me());
        na.admit(&nb.me().id);
        let t = Instant::now();
        let got = nb.fetch(hash, &[na.me().id]).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(got, BLOB_BYTES as u64);
        shoal.push(mib_per_s(BLOB_BYTES, secs));
        eprintln!("shoal run {run}: {:.0} MiB/s", shoal[run]);
        nb.shutdown().await;
        b.shutdown().await;

        let rb = FsStore::load(tmp.path().join(format!("raw-b{run}"))).await.unwrap();
        let lookup = MemoryLookup::new();
        lookup.add_endpoint_info(ea.addr());
        let eb = raw_endpoint(4, &lookup).await;
        let t = Instant::now();
        rb.downloader(&eb).download(tt.hash(), vec![ea.id()]).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(rb.has(tt.hash()).await.unwrap());
        raw.push(mib_per_s(BLOB_BYTES, secs));
        eprintln!("raw run {run}: {:.0} MiB/s", raw[run]);
        eb.close().await;
        // iroh-blobs' shutdown may answer "sender closed" as its actor stops; that is fine here.
        rb.shutdown().await.ok();

        // For reference: raw iroh-blobs without the downloader (one connection, `remote().fetch`),
        // which is the path `BlobNode::fetch` takes.
        let rb = FsStore::load(tmp.path().join(format!("raw-remote-b{run}"))).await.unwrap();
        let eb = raw_endpoint(5, &lookup).await;
        let t = Instant::now();
        let conn = eb.connect(ea.id(), iroh_blobs::ALPN).await.unwrap();
        rb.remote().fetch(conn, tt.hash()).complete().await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(rb.has(tt.hash()).await.unwrap());
        raw_remote.push(mib_per_s(BLOB_BYTES, secs));
        eprintln!("raw remote().fetch run {run}: {:.0} MiB/s", raw_remote[run]);
        eb.close().await;
        rb.shutdown().await.ok();
        for dir in ["shoal-b", "raw-b", "raw-remote-b"] {
            std::fs::remove_dir_all(tmp.path().join(format!("{dir}{run}"))).ok();
        }
    }
    na.shutdown().await;
    a.shutdown().await;
    router_a.shutdown().await.ok();
    drop(tt);
    ra.shutdown().await.ok();

    eprintln!("raw iroh-blobs through remote().fetch (no downloader): {:.0} MiB/s", median(raw_remote));
    let (s, r) = (median(shoal), median(raw));
    println!("blob throughput: shoal {s:.0} MiB/s, raw iroh-blobs {r:.0} MiB/s, ratio {:.2}", s / r);
}
