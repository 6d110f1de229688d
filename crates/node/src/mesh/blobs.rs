//! Blobs over the mesh's libp2p connections: the protocol `/shoal/blobs/1`, a stream per request
//! (libp2p-stream), carrying what `shoal_blobs::net::stream` speaks (iroh-blobs' verified protocol
//! behind one status byte). It is the second path to a peer's blobs, taken when the peer's iroh
//! endpoint cannot be reached (docs/adr/0005-blobs-across-nats.md): libp2p reaches peers behind
//! NAT through the mesh's relays and DCUtR-upgraded connections, and every connection has passed
//! pnet (the mesh key), so only members of the mesh open these streams.
//!
//! [`MeshDialer`] opens streams for `BlobNode`'s fetches (dialing the peer by its id if it is not
//! connected); [`serve`] takes the streams peers open and hands each to `BlobNode::serve_stream`.

use std::io;
use std::sync::Arc;

use futures::StreamExt;
use libp2p::StreamProtocol;
use shoal_blobs::net::stream::OpenStream;
use shoal_blobs::net::{BlobNode, PeerStream, StreamDialer};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, warn};

use super::keys::{node_of_peer, peer_id_of_node};

/// The stream protocol of blobs over the mesh.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/blobs/1");

/// Opens `/shoal/blobs/1` streams to peers through the swarm.
pub struct MeshDialer {
    control: libp2p_stream::Control,
}

impl MeshDialer {
    pub fn new(control: libp2p_stream::Control) -> MeshDialer {
        MeshDialer { control }
    }
}

/// A libp2p stream as the tokio halves `shoal-blobs` reads and writes.
fn halves(stream: libp2p::Stream) -> PeerStream {
    let (reader, writer) = tokio::io::split(stream.compat());
    PeerStream { reader: Box::new(reader), writer: Box::new(writer) }
}

impl StreamDialer for MeshDialer {
    fn open(&self, peer: [u8; 32]) -> OpenStream {
        // One control per stream: libp2p-stream gives each control one slot of its queue, so
        // concurrent opens (a tree's blobs) do not wait on each other.
        let mut control = self.control.clone();
        Box::pin(async move {
            let id = peer_id_of_node(&peer).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "the peer's id is not an ed25519 public key")
            })?;
            let stream = control.open_stream(id, BLOB_PROTOCOL).await.map_err(|e| match e {
                libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the peer does not serve blobs over the mesh (a shoal older than this path)",
                ),
                other => io::Error::other(other.to_string()),
            })?;
            Ok(halves(stream))
        })
    }
}

/// Serves the `/shoal/blobs/1` streams peers open, each on its own task, until the swarm ends.
/// A peer that opened one has passed the mesh key (pnet) and the allow list, so it is admitted to
/// the blob endpoint like a peer met over a connection.
pub async fn serve(mut control: libp2p_stream::Control, blobs: Arc<BlobNode>) {
    let mut incoming = match control.accept(BLOB_PROTOCOL) {
        Ok(incoming) => incoming,
        Err(e) => {
            warn!("blobs over the mesh are not served: {e}");
            return;
        }
    };
    while let Some((peer, stream)) = incoming.next().await {
        let Some(node) = node_of_peer(&peer) else {
            debug!(%peer, "a blob stream from a peer id that is no ed25519 key: dropped");
            continue;
        };
        blobs.admit(&node);
        let blobs = blobs.clone();
        tokio::spawn(async move { blobs.serve_stream(node, halves(stream)).await });
    }
}
