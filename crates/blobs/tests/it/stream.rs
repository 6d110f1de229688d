//! Blobs over the stream path (`shoal_blobs::net::stream`): two stores whose iroh endpoints do
//! not know each other's address, joined by in-memory byte pipes (tokio's `duplex`) that stand in
//! for the node's libp2p streams. Both ends run the real `BlobNode` code and iroh-blobs'
//! protocol; only the transport is a pipe.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use shoal_blobs::Store;
use shoal_blobs::net::stream::OpenStream;
use shoal_blobs::net::{BlobNode, NetError, PeerStream, StreamDialer};
use tokio::io::AsyncWrite;

use crate::net::{node, random_bytes, sample_dir, snapshot};
use crate::store;

/// Bytes a pipe buffers each way.
const PIPE_BYTES: usize = 64 << 10;

/// Opens pipes to the providers it knows: each one's `serve_stream` on the far end, told the
/// stream comes from `me`. A provider with a `flip_at` corrupts byte `flip_at` of what it sends.
struct Pipes {
    me: [u8; 32],
    providers: HashMap<[u8; 32], (BlobNode, Option<u64>)>,
    opened: AtomicU64,
    /// Streams still to be dropped unread by the far end, as a transport with no room does.
    drop_next: AtomicU64,
}

impl StreamDialer for Pipes {
    fn open(&self, peer: [u8; 32]) -> OpenStream {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let Some((provider, flip_at)) = self.providers.get(&peer).cloned() else {
            return Box::pin(async { Err(io::Error::new(io::ErrorKind::NotConnected, "no pipe to that peer")) });
        };
        let me = self.me;
        let dropped = self.drop_next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        Box::pin(async move {
            let (near, far) = tokio::io::duplex(PIPE_BYTES);
            if dropped {
                drop(far);
                let (r, w) = tokio::io::split(near);
                return Ok(PeerStream { reader: Box::new(r), writer: Box::new(w) });
            }
            let (far_r, far_w) = tokio::io::split(far);
            let writer: Box<dyn AsyncWrite + Send + Unpin> = match flip_at {
                Some(at) => Box::new(Flip { inner: far_w, at, written: 0 }),
                None => Box::new(far_w),
            };
            tokio::spawn(
                async move { provider.serve_stream(me, PeerStream { reader: Box::new(far_r), writer }).await },
            );
            let (r, w) = tokio::io::split(near);
            Ok(PeerStream { reader: Box::new(r), writer: Box::new(w) })
        })
    }
}

/// A writer that flips one bit of byte `at` of what passes through it.
struct Flip<W> {
    inner: W,
    at: u64,
    written: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Flip<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let (start, at) = (self.written, self.at);
        let mut owned;
        let buf = if (start..start + buf.len() as u64).contains(&at) {
            owned = buf.to_vec();
            owned[(at - start) as usize] ^= 0x10;
            &owned[..]
        } else {
            buf
        };
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A requester (`seed`) and providers, each admitting the requester; no iroh address is
/// exchanged, so iroh has no path and every fetch goes over the pipes.
async fn over_pipes(requester: &Store, seed: u8, providers: &[(&BlobNode, Option<u64>)]) -> (BlobNode, Arc<Pipes>) {
    let node = node(requester, seed).await;
    let me = node.me().id;
    let mut map = HashMap::new();
    for (p, flip) in providers {
        p.admit(&me);
        node.admit(&p.me().id);
        map.insert(p.me().id, ((*p).clone(), *flip));
    }
    let pipes = Arc::new(Pipes { me, providers: map, opened: AtomicU64::new(0), drop_next: AtomicU64::new(0) });
    assert!(node.set_stream_dialer(pipes.clone()));
    (node, pipes)
}

#[tokio::test]
async fn a_blob_and_a_tree_arrive_over_the_stream_when_iroh_has_no_path() {
    let (ha, a) = store().await;
    let (hb, b) = store().await;
    let na = node(&a, 31).await;
    let (nb, pipes) = over_pipes(&b, 32, &[(&na, None)]).await;

    let data = random_bytes("over a pipe", (3 << 20) + 12_345);
    let hash = a.put_bytes(data.clone()).await.unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    let got = nb.fetch_with_progress(hash, &[na.me().id], move |n| seen2.store(n, Ordering::Relaxed)).await.unwrap();
    assert_eq!(got, data.len() as u64);
    assert_eq!(seen.load(Ordering::Relaxed), data.len() as u64, "progress reaches the size");
    assert_eq!(b.get_bytes(hash).await.unwrap().unwrap(), data);
    assert_eq!(pipes.opened.load(Ordering::Relaxed), 1);

    // Streams the far end drops unread are opened again.
    let again = a.put_bytes(random_bytes("dropped twice", 70_000)).await.unwrap();
    pipes.drop_next.store(2, Ordering::Relaxed);
    nb.fetch(again, &[na.me().id]).await.unwrap();
    assert_eq!(pipes.opened.load(Ordering::Relaxed), 4, "two dropped, the third served");
    // ... but not forever.
    pipes.drop_next.store(u64::from(shoal_blobs::net::stream::STREAM_OPEN_ATTEMPTS), Ordering::Relaxed);
    let never = a.put_bytes(random_bytes("dropped always", 1_000)).await.unwrap();
    let err = nb.fetch(never, &[na.me().id]).await.unwrap_err();
    assert!(err.to_string().contains("dropped or was busy"), "{err}");

    // A tree, its blobs fetched at once over as many streams (iroh is not tried again for this
    // peer: it was found unreachable).
    let src = ha.path().join("src");
    sample_dir(&src);
    let digest = a.put_tree_from_dir(&src).await.unwrap();
    nb.fetch_digest(&digest, &[na.me().id]).await.unwrap();
    let dest = hb.path().join("out");
    b.materialize(digest.hash, &dest).await.unwrap();
    assert_eq!(snapshot(&dest), snapshot(&src));

    // A blob the provider does not have: the stream ends, the provider is named.
    let missing = shoal_blobs::Hash::of(b"nobody has this");
    let err = nb.fetch(missing, &[na.me().id]).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&hex::encode(&na.me().id[..5])) && text.contains("over the mesh"), "{text}");
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test]
async fn a_corrupted_stream_is_refused_and_its_peer_named() {
    let (_ha, a) = store().await;
    let (_hc, c) = store().await;
    let (_hb, b) = store().await;
    let data = random_bytes("flipped", (2 << 20) + 999);
    let hash = a.put_bytes(data.clone()).await.unwrap();
    assert_eq!(c.put_bytes(data.clone()).await.unwrap(), hash);
    let liar = node(&a, 33).await;
    let honest = node(&c, 34).await;
    // Byte 1 MiB + 100 of the answer: inside the bao encoding, past its first groups.
    let (nb, _pipes) = over_pipes(&b, 35, &[(&liar, Some((1 << 20) + 100)), (&honest, None)]).await;

    let err = nb.fetch(hash, &[liar.me().id]).await.unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    let NetError::Unavailable { tried, .. } = &err else { panic!("{err:?}") };
    assert_eq!(tried[0].peer, liar.me().id, "the liar is named");
    assert!(text.contains("do not match the hash"), "{text}");
    assert!(!b.has(hash).await.unwrap(), "a blob with a refused group is not complete");

    // The honest peer next: only what was refused and what followed it is fetched again.
    let got = nb.fetch(hash, &[liar.me().id, honest.me().id]).await.unwrap();
    assert!(got < data.len() as u64 && got > 0, "fetched {got} of {}", data.len());
    assert_eq!(b.get_bytes(hash).await.unwrap().unwrap(), data);
    for n in [liar, honest, nb] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_peer_not_admitted_is_not_served_over_the_stream() {
    let (_ha, a) = store().await;
    let (_hb, b) = store().await;
    let na = node(&a, 36).await;
    let hash = a.put_bytes(random_bytes("private", 100_000)).await.unwrap();
    let nb = node(&b, 37).await;
    // The requester has a pipe to `na`, but `na` never admitted it.
    let pipes = Arc::new(Pipes {
        me: nb.me().id,
        providers: HashMap::from([(na.me().id, (na.clone(), None))]),
        opened: AtomicU64::new(0),
        drop_next: AtomicU64::new(0),
    });
    nb.set_stream_dialer(pipes.clone());
    let err = nb.fetch(hash, &[na.me().id]).await.unwrap_err();
    eprintln!("{err}");
    assert_eq!(pipes.opened.load(Ordering::Relaxed), 1, "the stream was opened, and refused");
    assert!(
        err.to_string().contains("refused us") && err.to_string().contains(&hex::encode(&na.me().id[..5])),
        "{err}"
    );
    assert!(!b.has(hash).await.unwrap());
    na.shutdown().await;
    nb.shutdown().await;
}
