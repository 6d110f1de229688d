//! Blobs over a byte stream that is not iroh's: the second path to a peer, for when its iroh
//! endpoint is out of reach (behind a NAT that iroh, with relays off, cannot cross). The node
//! carries these streams over its libp2p mesh (`/shoal/blobs/1`), which reaches peers through
//! the mesh's relays and DCUtR-upgraded connections; this crate never links libp2p, so it sees
//! only a [`PeerStream`] (a tokio reader and writer) and a [`StreamDialer`] that opens one.
//!
//! The bytes on the stream are iroh-blobs' own protocol, run by iroh-blobs' own code on both
//! sides: the request, then the BLAKE3 (bao) encoding of the blob, each 16 KiB group checked
//! against the hash before it is written ([`iroh_blobs::api::remote::Remote::fetch`] on the
//! receiving side, [`iroh_blobs::provider::handle_stream`] on the serving side). So what holds
//! for iroh holds here: a wrong byte ends the transfer from that peer and is never stored, and
//! what matched before it stays for the next provider to complete.
//!
//! What a byte stream lacks next to a QUIC stream, and what stands in for it:
//! - *Finishing the request*: iroh-blobs drops its request writer after one `sync`; a QUIC stream
//!   finishes on drop, a byte stream does not, so the requester's writer half-closes on `sync`.
//! - *Error codes*: a QUIC reset carries a code (iroh-blobs' "not found", "permission"). Here the
//!   serving side first writes one status byte ([`Status`]): serving, refused (not a member), or
//!   busy; a stream that ends before it was dropped unread (a transport may drop an inbound
//!   stream it has no room for) and is opened again, up to [`STREAM_OPEN_ATTEMPTS`] times. A
//!   missing blob is then the stream ending before the blob's header, read as "does not have it".
//! - *Who is asking*: the caller names the peer the stream comes from (the transport proved it);
//!   it is served only if admitted ([`BlobNode::admit`]), as on iroh.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::VarInt;
use iroh_blobs::util::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use super::BlobNode;

/// One bidirectional byte stream to or from a peer's blob service.
pub struct PeerStream {
    pub reader: BoxRead,
    pub writer: BoxWrite,
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerStream")
    }
}

/// A future that opens a stream.
pub type OpenStream = Pin<Box<dyn Future<Output = io::Result<PeerStream>> + Send>>;

/// Opens a stream to a peer's blob service over another transport than iroh (the node's libp2p
/// mesh). Given to [`BlobNode::set_stream_dialer`].
pub trait StreamDialer: Send + Sync + 'static {
    /// A new stream to the peer whose endpoint id (ed25519 public key) is `peer`.
    fn open(&self, peer: [u8; 32]) -> OpenStream;
}

/// How long opening a stream (dialing through a relay included) may take, in milliseconds.
pub const STREAM_OPEN_TIMEOUT_MS: u64 = 10_000;
/// Streams served at once; one more is answered [`Status::Busy`] (its requester tries again).
pub const STREAMS_SERVED_MAX: usize = 64;
/// Times a requester opens a stream to one provider while the stream ends before its status
/// byte or says busy, the waits between them doubling from [`STREAM_RETRY_FIRST_MS`].
pub const STREAM_OPEN_ATTEMPTS: u32 = 6;
/// The first wait before a stream is opened again, in milliseconds.
pub const STREAM_RETRY_FIRST_MS: u64 = 20;

/// The first byte the serving side writes on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The request is read and answered next, with iroh-blobs' protocol.
    Serving = 1,
    /// The requester is not a member of the mesh (not admitted): nothing is served.
    Refused = 2,
    /// [`STREAMS_SERVED_MAX`] streams are being served: ask again.
    Busy = 3,
}

/// Stream ids for iroh-blobs' logs and statistics: unique within the process.
static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// The reading half as iroh-blobs' [`RecvStream`]. (Its provider holds `&StreamPair` across
/// awaits, so the halves must be `Sync`; a `Mutex` makes a `Send` one so, and `&mut self`
/// reaches it without locking.)
pub(super) struct Recv<R> {
    inner: std::sync::Mutex<R>,
    id: u64,
}

impl<R> Recv<R> {
    fn new(inner: R, id: u64) -> Self {
        Recv { inner: std::sync::Mutex::new(inner), id }
    }

    fn get(&mut self) -> &mut R {
        self.inner.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl<R: AsyncRead + Send + Unpin> RecvStream for Recv<R> {
    async fn recv_bytes(&mut self, len: usize) -> io::Result<Bytes> {
        let mut buf = vec![0; len];
        let mut n = 0;
        while n < len {
            let read = self.get().read(&mut buf[n..]).await?;
            if read == 0 {
                break;
            }
            n += read;
        }
        buf.truncate(n);
        Ok(buf.into())
    }

    async fn recv_bytes_exact(&mut self, len: usize) -> io::Result<Bytes> {
        let mut buf = vec![0; len];
        self.get().read_exact(&mut buf).await?;
        Ok(buf.into())
    }

    async fn recv_exact(&mut self, target: &mut [u8]) -> io::Result<()> {
        self.get().read_exact(target).await.map(|_| ())
    }

    fn stop(&mut self, _code: VarInt) -> io::Result<()> {
        // No code to send: the other side learns it from the stream's end.
        Ok(())
    }

    fn id(&self) -> u64 {
        self.id
    }
}

/// The writing half as iroh-blobs' [`SendStream`].
pub(super) struct Sender<W> {
    inner: std::sync::Mutex<W>,
    id: u64,
    /// Half-close at `sync`: the requester's side, whose one write is the request (see the
    /// module doc).
    close_on_sync: bool,
}

impl<W> Sender<W> {
    fn new(inner: W, id: u64, close_on_sync: bool) -> Self {
        Sender { inner: std::sync::Mutex::new(inner), id, close_on_sync }
    }

    fn get(&mut self) -> &mut W {
        self.inner.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: AsyncWrite + Send + Unpin> SendStream for Sender<W> {
    async fn send_bytes(&mut self, bytes: Bytes) -> io::Result<()> {
        self.get().write_all(&bytes).await
    }

    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.get().write_all(buf).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.get().flush().await?;
        if self.close_on_sync { self.get().shutdown().await } else { Ok(()) }
    }

    fn reset(&mut self, _code: VarInt) -> io::Result<()> {
        // No code to send: the serving side ends the stream right after (`serve_stream`).
        Ok(())
    }

    async fn stopped(&mut self) -> io::Result<Option<VarInt>> {
        // Only iroh-blobs' observe requests wait on this; a byte stream never says it was
        // stopped, so they run until the stream breaks.
        std::future::pending().await
    }

    fn id(&self) -> u64 {
        self.id
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Why a stream to a provider did not get to the request.
#[derive(Debug)]
pub(super) enum OpenFailure {
    /// The transport could not open one, or not in time.
    Open(String),
    /// The provider refused us (not a member).
    Refused,
    /// Every attempt ended unread or busy.
    Dropped { attempts: u32 },
    /// The status byte was not one of [`Status`].
    Garbled(u8),
}

impl std::fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenFailure::Open(e) => write!(f, "no stream through the mesh: {e}"),
            OpenFailure::Refused => write!(
                f,
                "refused us: it serves blobs only to members of its mesh, the peers it has met over the mesh's \
                 libp2p connections (which need the mesh key); join its mesh first"
            ),
            OpenFailure::Dropped { attempts } => {
                write!(
                    f,
                    "dropped or was busy with {attempts} streams in a row (it serves {STREAMS_SERVED_MAX} at once)"
                )
            }
            OpenFailure::Garbled(b) => {
                write!(f, "began its answer with {b:#04x}, not a status byte (not a shoal node?)")
            }
        }
    }
}

/// A stream to `peer` on which the provider said it serves, opened again while it is dropped
/// unread or busy ([`STREAM_OPEN_ATTEMPTS`]).
pub(super) async fn open_serving(dialer: &dyn StreamDialer, peer: [u8; 32]) -> Result<PeerStream, OpenFailure> {
    let mut wait_ms = STREAM_RETRY_FIRST_MS;
    for attempt in 1..=STREAM_OPEN_ATTEMPTS {
        let open = dialer.open(peer);
        let mut stream = match tokio::time::timeout(Duration::from_millis(STREAM_OPEN_TIMEOUT_MS), open).await {
            Err(_) => return Err(OpenFailure::Open(format!("none within {STREAM_OPEN_TIMEOUT_MS} ms"))),
            Ok(Err(e)) => return Err(OpenFailure::Open(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        let mut status = [0u8];
        let read =
            tokio::time::timeout(Duration::from_millis(STREAM_OPEN_TIMEOUT_MS), stream.reader.read_exact(&mut status))
                .await;
        match read {
            Err(_) => return Err(OpenFailure::Open(format!("no answer within {STREAM_OPEN_TIMEOUT_MS} ms"))),
            Ok(Ok(_)) if status[0] == Status::Serving as u8 => return Ok(stream),
            Ok(Ok(_)) if status[0] == Status::Refused as u8 => return Err(OpenFailure::Refused),
            Ok(Ok(_)) if status[0] != Status::Busy as u8 => return Err(OpenFailure::Garbled(status[0])),
            // Busy, or ended unread.
            Ok(_) => {}
        }
        if attempt < STREAM_OPEN_ATTEMPTS {
            debug!(peer = %hex::encode(&peer[..5]), attempt, "a blob stream was dropped or busy: opening another");
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            wait_ms *= 2;
        }
    }
    Err(OpenFailure::Dropped { attempts: STREAM_OPEN_ATTEMPTS })
}

/// The requester's halves of `stream`, for [`iroh_blobs::api::remote::Remote::fetch`].
pub(super) fn requester_pair(stream: PeerStream) -> iroh_blobs::get::StreamPair<Recv<BoxRead>, Sender<BoxWrite>> {
    let id = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
    iroh_blobs::get::StreamPair::new(id, Recv::new(stream.reader, id), Sender::new(stream.writer, id, true))
}

impl BlobNode {
    /// Serves one request that arrived on `stream` from `peer` (an endpoint id the transport
    /// proved), as the iroh endpoint serves a request stream: only to an admitted peer, with
    /// iroh-blobs' provider. The stream is closed when the answer is written, or at once when
    /// `peer` is not admitted or [`STREAMS_SERVED_MAX`] are being served.
    pub async fn serve_stream(&self, peer: [u8; 32], stream: PeerStream) {
        let PeerStream { reader, mut writer } = stream;
        let short = hex::encode(&peer[..5]);
        let end = |mut writer: BoxWrite, status: Status| async move {
            let _ = writer.write_all(&[status as u8]).await;
            let _ = writer.shutdown().await;
        };
        if !self.is_admitted(&peer) {
            info!(peer = %short, "refused a blob stream from a peer that is not a member of the mesh");
            return end(writer, Status::Refused).await;
        }
        let Ok(_permit) = self.inner.streams_served.clone().try_acquire_owned() else {
            debug!(peer = %short, max = STREAMS_SERVED_MAX, "too many blob streams served at once: one is told busy");
            return end(writer, Status::Busy).await;
        };
        if writer.write_all(&[Status::Serving as u8]).await.is_err() {
            return;
        }
        let id = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
        let mut recv = Recv::new(reader, id);
        let mut send = Sender::new(writer, id, false);
        let pair = iroh_blobs::provider::StreamPair::new(
            id,
            &mut recv,
            &mut send,
            iroh_blobs::provider::events::EventSender::DEFAULT,
        );
        if let Err(e) = iroh_blobs::provider::handle_stream(pair, self.store().iroh().clone()).await {
            debug!(peer = %short, "blob stream ended: {e:#}");
        }
        // The requester reads to the end of the stream: end it, whatever happened.
        let _ = send.get().shutdown().await;
    }
}
