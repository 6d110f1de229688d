//! Blobs between peers: an iroh endpoint that serves this store's blobs with iroh-blobs
//! ([`Store::serve_blobs`] -> [`BlobNode`]), and fetching blobs, trees and images from peers into
//! the store.
//!
//! Verification: iroh-blobs checks every 16 KiB group of a blob against the BLAKE3 tree of its
//! hash while it streams, before the group is written; a group that does not match ends the
//! transfer from that peer, and only what matched stays (a partial blob, which no read sees:
//! `has`, `get_bytes` and `export` want a complete one). A fetch is done when the blob is complete
//! in the store, which is checked after every transfer.
//!
//! Network hygiene: the endpoint binds only the address it is given, has no relay, no address
//! lookup but the peers given to [`BlobNode::add_peer`] (in memory), no port mapping and no
//! net-report probes: it sends to no address it was not told about.
//!
//! Who is served: only endpoints admitted with [`BlobNode::admit`] (the node admits the peers the
//! mesh's libp2p side proved to hold the mesh key). Anyone else who reaches the UDP port gets the
//! QUIC handshake (it proves the endpoint id) and then the connection closed with iroh-blobs'
//! permission error, before a single request is read: knowing a hash is not enough to fetch it.
//!
//! Two paths to a peer: its iroh endpoint first, and when that cannot be reached (no address
//! works within [`CONNECT_TIMEOUT_MS`], or a transfer stalls) a byte stream the node's transport
//! opens ([`BlobNode::set_stream_dialer`]; the node's is a libp2p stream through the mesh, which
//! crosses NATs by its relays and DCUtR), carrying the same iroh-blobs protocol, verified the same
//! way ([`stream`]). A peer found unreachable over iroh is asked over the stream for the next
//! [`IROH_UNREACHABLE_RETRY_S`] without waiting on iroh first (doubling while iroh keeps failing,
//! up to [`IROH_UNREACHABLE_RETRY_MAX_S`]).
//!
//! A fetched blob is not a root for `gc`, like a blob just stored: the caller records what uses
//! it (a run record, a tag, a pin) before the next `gc`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_lite::StreamExt;
use iroh::address_lookup::memory::MemoryLookup;
use iroh::endpoint::{Connection, PortmapperConfig, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, NetReportConfig, PublicKey, RelayMode, SecretKey, TransportAddr};
use iroh_blobs::api::remote::GetProgressItem;
use iroh_blobs::get::GetError;
use iroh_blobs::get::fsm::{AtBlobHeaderNextError, DecodeError};
use iroh_blobs::provider::StreamPair;
use iroh_blobs::provider::events::EventSender;
use iroh_blobs::util::connection_pool::{self, ConnectionPool, ConnectionRef, PoolConnectError};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::image::{Image, ImageInfo};
use crate::meta::Meta;
use crate::tree::{EntryKind, Tree};
use crate::{Digest, DigestKind, Hash, Store, StoreError, retry_busy, to_iroh};

pub mod stream;
pub use stream::{PeerStream, StreamDialer};

/// How long connecting to a peer (QUIC handshake included) may take before it counts as failed
/// and the next provider is tried.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How long a transfer from one peer may go without a byte of progress before it counts as
/// failed and the next provider is tried. A whole blob has no deadline: a large one on a slow
/// link takes as long as it takes, as long as it moves.
pub const FETCH_STALL_TIMEOUT_S: u64 = 20;
/// Blobs of one tree fetched at once by [`BlobNode::fetch_tree`].
pub const TREE_FETCHES_IN_FLIGHT_MAX: usize = 16;
/// How long an unused connection to a peer is kept for the next fetch.
pub const CONNECTION_IDLE_TIMEOUT_S: u64 = 30;
/// Connections to peers open at once (attempts included).
pub const CONNECTIONS_MAX: usize = 256;
/// Connection attempts running at once.
pub const CONNECTS_PENDING_MAX: usize = 32;
/// How long a peer whose iroh endpoint could not be reached is fetched from over the stream
/// path alone (when there is one) before iroh is tried again, in seconds: a tree of many blobs
/// would otherwise wait [`CONNECT_TIMEOUT_MS`] on iroh for each.
pub const IROH_UNREACHABLE_RETRY_S: u64 = 60;
/// The longest such wait, in seconds: each failed retry doubles it up to this (a peer behind
/// another NAT is never reachable over iroh, and each retry costs a fetch [`CONNECT_TIMEOUT_MS`];
/// 500 outputs read from 32 such peers waited 3 s once a minute for each peer).
pub const IROH_UNREACHABLE_RETRY_MAX_S: u64 = 1_800;

/// Peers whose iroh endpoint could not be reached: since when the stream path alone serves
/// them, and for how long ([`IROH_UNREACHABLE_RETRY_S`] after a first failure, twice the last
/// wait after each failed retry, up to [`IROH_UNREACHABLE_RETRY_MAX_S`]); at most
/// [`CONNECTIONS_MAX`] peers, those whose wait ended dropped first.
#[derive(Debug, Default)]
struct Unreachable(HashMap<PublicKey, (tokio::time::Instant, Duration)>);

impl Unreachable {
    fn holds(&self, id: &PublicKey, now: tokio::time::Instant) -> bool {
        self.0.get(id).is_some_and(|(at, wait)| now < *at + *wait)
    }

    fn note(&mut self, id: PublicKey, now: tokio::time::Instant) {
        let wait = match self.0.get(&id) {
            Some((_, wait)) => (*wait * 2).min(Duration::from_secs(IROH_UNREACHABLE_RETRY_MAX_S)),
            None => Duration::from_secs(IROH_UNREACHABLE_RETRY_S),
        };
        if self.0.len() >= CONNECTIONS_MAX && !self.0.contains_key(&id) {
            self.0.retain(|_, (at, wait)| now < *at + *wait);
            if self.0.len() >= CONNECTIONS_MAX {
                return;
            }
        }
        self.0.insert(id, (now, wait));
    }

    fn reached(&mut self, id: &PublicKey) {
        self.0.remove(id);
    }
}

/// How to reach a peer's blob endpoint (gossiped inside CBOR): its endpoint id (the ed25519
/// public key of the node's secret) and the socket addresses it listens on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobPeer {
    pub id: [u8; 32],
    pub addrs: Vec<SocketAddr>,
}

/// One provider that could not deliver a blob, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderFailure {
    pub peer: [u8; 32],
    pub reason: String,
}

/// Serving and fetching blobs.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The endpoint could not be bound.
    #[error(
        "cannot start the blob endpoint on {bind}: {reason}; choose an address of this machine and a free port (port 0 picks one)"
    )]
    Bind { bind: SocketAddr, reason: String },
    /// No provider was given but this node itself.
    #[error(
        "cannot fetch {hash}: no peer to fetch it from (none was given, or only this node); ask the mesh which peers hold it (the run record that names it says which node made it)"
    )]
    NoProviders { hash: Hash },
    /// Every provider was tried and none delivered the blob.
    #[error(
        "cannot fetch {hash} from {}: {}; check that a peer holding it is up and its address is known (add_peer), or produce it here",
        plural_peers(.tried.len()),
        failures(.tried)
    )]
    Unavailable { hash: Hash, tried: Vec<ProviderFailure> },
    /// A blob fetched as a tree does not decode as one.
    #[error(
        "{hash} was fetched as a tree but is not one: {reason}; the reference that names it as a tree is wrong (a file's hash?)"
    )]
    NotATree { hash: Hash, reason: String },
    /// A blob fetched as an image does not decode as one.
    #[error(
        "{id} was fetched as an image but is not one: {reason}; check the image id (`shoal image ls` on the peer that has it)"
    )]
    NotAnImage { id: Hash, reason: String },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn plural_peers(n: usize) -> String {
    if n == 1 { "the 1 peer tried".into() } else { format!("any of the {n} peers tried") }
}

fn failures(tried: &[ProviderFailure]) -> String {
    tried.iter().map(|f| format!("peer {}: {}", short_id(&f.peer), f.reason)).collect::<Vec<_>>().join("; ")
}

fn short_id(id: &[u8; 32]) -> String {
    hex::encode(&id[..5])
}

/// An iroh endpoint serving the store's blobs (iroh-blobs' protocol), and fetching from peers.
/// Cheap to clone; [`BlobNode::shutdown`] stops it.
#[derive(Clone)]
pub struct BlobNode {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    store: Store,
    endpoint: Endpoint,
    router: Router,
    lookup: MemoryLookup,
    pool: ConnectionPool,
    /// The endpoints this node serves blobs to (see [`BlobNode::admit`]).
    members: Members,
    /// Peers whose pooled connection must not be used again: they came back on another address,
    /// or a fetch from them stalled or could not connect.
    moved: std::sync::Mutex<HashSet<PublicKey>>,
    /// The connections peers opened to this node.
    incoming: Incoming,
    /// The second path to peers ([`BlobNode::set_stream_dialer`]), when the node has one.
    dialer: std::sync::OnceLock<Arc<dyn StreamDialer>>,
    /// Peers whose iroh endpoint could not be reached, and when that was found.
    iroh_unreachable: std::sync::Mutex<Unreachable>,
    /// Permits for streams served at once ([`stream::STREAMS_SERVED_MAX`]).
    streams_served: Arc<tokio::sync::Semaphore>,
}

/// Endpoint ids allowed to fetch from this node. Shared between the [`BlobNode`] (which adds to
/// it) and the protocol handler (which reads it at each incoming connection).
#[derive(Clone, Debug, Default)]
struct Members(Arc<RwLock<HashSet<PublicKey>>>);

impl Members {
    fn contains(&self, id: &PublicKey) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    fn insert(&self, id: PublicKey) -> bool {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(id)
    }
}

/// iroh-blobs' provider behind the member list, checked at every request stream: one from an
/// endpoint that was not admitted is reset with [`iroh_blobs::protocol::ERR_PERMISSION`] before
/// a byte of it is read (the requester reads that code; a connection close would not carry it
/// reliably, since the requester's connection pool closes the connection locally and that reason
/// replaces the peer's), and its connection is closed after [`REFUSED_CONNECTION_S`]. An endpoint
/// admitted meanwhile is served from its next request on the same connection. (iroh-blobs' own
/// hook, an `EventSender` with `ConnectMode::Intercept`, asks a task over a channel at every
/// connection and closes refused ones; this is the same decision on the handshake-proven remote
/// id, without the round trip.)
#[derive(Clone, Debug)]
struct MembersOnly {
    store: iroh_blobs::api::Store,
    members: Members,
    incoming: Incoming,
}

/// The connections peers opened to this node, by peer, so those of a peer that moved (restarted
/// on another address) can be closed: while one to its old address is open, the endpoint answers
/// the peer's new connections there, and the peer cannot reach this node (for the idle timeout,
/// 30 s, and longer while its tries keep the old path alive: found by bench/soak.py).
#[derive(Clone, Debug, Default)]
struct Incoming(Arc<std::sync::Mutex<HashMap<PublicKey, HashMap<usize, Connection>>>>);

impl Incoming {
    fn add(&self, connection: &Connection) -> IncomingGuard {
        let (peer, id) = (connection.remote_id(), connection.stable_id());
        self.0.lock().expect("incoming").entry(peer).or_default().insert(id, connection.clone());
        IncomingGuard { incoming: self.clone(), peer, id }
    }

    fn close_all(&self, peer: &PublicKey) {
        let gone = self.0.lock().expect("incoming").remove(peer).unwrap_or_default();
        for connection in gone.into_values() {
            connection.close(0u32.into(), b"you moved: open a new connection");
        }
    }
}

/// Takes a connection out of [`Incoming`] when its handler ends.
struct IncomingGuard {
    incoming: Incoming,
    peer: PublicKey,
    id: usize,
}

impl Drop for IncomingGuard {
    fn drop(&mut self) {
        let mut map = self.incoming.0.lock().expect("incoming");
        if let Some(of_peer) = map.get_mut(&self.peer) {
            of_peer.remove(&self.id);
            if of_peer.is_empty() {
                map.remove(&self.peer);
            }
        }
    }
}

/// How long a connection from an endpoint that is not a member may stay open (every request on
/// it refused), in seconds.
pub const REFUSED_CONNECTION_S: u64 = 10;
/// The reason a refused endpoint reads when its connection is closed.
const REFUSED_REASON: &[u8] = b"not a member of this mesh";

impl ProtocolHandler for MembersOnly {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let peer = connection.remote_id();
        let _registered = self.incoming.add(&connection);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(REFUSED_CONNECTION_S);
        let mut refused = 0u64;
        loop {
            let next = connection.accept_bi();
            let accepted = if self.members.contains(&peer) {
                next.await
            } else {
                match tokio::time::timeout_at(deadline, next).await {
                    Ok(accepted) => accepted,
                    Err(_) if self.members.contains(&peer) => continue,
                    Err(_) => {
                        debug!(peer = %peer.fmt_short(), refused, "closing a non-member's blob connection");
                        connection.close(iroh_blobs::protocol::ERR_PERMISSION, REFUSED_REASON);
                        return Ok(());
                    }
                }
            };
            // The requester closed the connection (or it broke).
            let Ok((mut send, mut recv)) = accepted else { return Ok(()) };
            if self.members.contains(&peer) {
                let pair = StreamPair::new(connection.stable_id() as u64, recv, send, EventSender::DEFAULT);
                tokio::spawn(iroh_blobs::provider::handle_stream(pair, self.store.clone()));
                continue;
            }
            if refused == 0 {
                info!(peer = %peer.fmt_short(), "refused a blob request from an endpoint that is not a member of the mesh");
            }
            refused += 1;
            // Either fails only when the stream is gone already: nothing to refuse then.
            let _ = recv.stop(iroh_blobs::protocol::ERR_PERMISSION);
            let _ = send.reset(iroh_blobs::protocol::ERR_PERMISSION);
        }
    }

    async fn shutdown(&self) {
        // What iroh-blobs' own handler does when the router stops.
        if let Err(e) = self.store.shutdown().await {
            warn!("blob store shutdown: {e}");
        }
    }
}

impl Store {
    /// Starts an iroh endpoint bound to `bind` whose identity is the ed25519 `secret` (the same
    /// secret as the node's libp2p identity), serving this store's blobs to the endpoints
    /// admitted with [`BlobNode::admit`] (none at first) and refusing every other.
    pub async fn serve_blobs(&self, secret: [u8; 32], bind: SocketAddr) -> Result<BlobNode, NetError> {
        let bind_error = |reason: String| NetError::Bind { bind, reason };
        let lookup = MemoryLookup::new();
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::from_bytes(&secret))
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .address_lookup(lookup.clone())
            .portmapper_config(PortmapperConfig::Disabled)
            .net_report_config(NetReportConfig::minimal())
            // Without this the builder also binds the unspecified address of the other family.
            .clear_ip_transports()
            .bind_addr(bind)
            .map_err(|e| bind_error(e.to_string()))?
            .bind()
            .await
            .map_err(|e| bind_error(error_chain(&e)))?;
        let members = Members::default();
        let incoming = Incoming::default();
        let handler = MembersOnly { store: self.iroh().clone(), members: members.clone(), incoming: incoming.clone() };
        let router = Router::builder(endpoint.clone()).accept(iroh_blobs::ALPN, handler).spawn();
        let mut options = connection_pool::Options::default();
        options.connect_timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        options.idle_timeout = Duration::from_secs(CONNECTION_IDLE_TIMEOUT_S);
        options.max_connections = CONNECTIONS_MAX;
        options.max_pending_connections = CONNECTS_PENDING_MAX;
        let pool = ConnectionPool::new(endpoint.clone(), iroh_blobs::ALPN, options);
        debug!(id = %endpoint.id(), addrs = ?endpoint.bound_sockets(), "blob endpoint started");
        let moved = Default::default();
        Ok(BlobNode {
            inner: Arc::new(NodeInner {
                store: self.clone(),
                endpoint,
                router,
                lookup,
                pool,
                members,
                moved,
                incoming,
                dialer: std::sync::OnceLock::new(),
                iroh_unreachable: Default::default(),
                streams_served: Arc::new(tokio::sync::Semaphore::new(stream::STREAMS_SERVED_MAX)),
            }),
        })
    }
}

/// Why one attempt at one provider failed (its `Debug` is what `retry_busy` inspects).
#[derive(Debug)]
enum Failure {
    Connect(PoolConnectError),
    Get(GetError),
    Stalled,
    Ended,
    /// No stream to the peer got as far as the request.
    StreamOpen(stream::OpenFailure),
    /// The stream path failed (iroh was found unreachable earlier).
    OverMesh(Box<Failure>),
    /// Neither path delivered: why over iroh, and why over the stream.
    Both(Box<Failure>, Box<Failure>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(PoolConnectError::Timeout { .. }) => {
                write!(f, "no connection within {CONNECT_TIMEOUT_MS} ms (down, or a wrong address?)")
            }
            Failure::Connect(e) => write!(f, "cannot connect: {}", error_chain(e)),
            Failure::Get(e) if e.iroh_error_code() == Some(iroh_blobs::protocol::ERR_PERMISSION) => write!(
                f,
                "refused us: it serves blobs only to members of its mesh, the peers it has met over the mesh's \
                 libp2p connections (which need the mesh key); join its mesh first"
            ),
            Failure::Get(GetError::AtBlobHeaderNext { source: AtBlobHeaderNextError::NotFound { .. }, .. }) => {
                write!(f, "does not have it")
            }
            Failure::Get(GetError::Decode {
                source: DecodeError::LeafHashMismatch { .. } | DecodeError::ParentHashMismatch { .. },
                ..
            }) => write!(f, "sent bytes that do not match the hash (refused; only verified bytes are kept)"),
            Failure::Get(GetError::Decode {
                source:
                    DecodeError::ChunkNotFound { .. }
                    | DecodeError::LeafNotFound { .. }
                    | DecodeError::ParentNotFound { .. },
                ..
            }) => write!(f, "has only part of it"),
            // iroh-blobs' provider answers a hash it does not have with a reset, code 3, as it does
            // when reading its store fails.
            Failure::Get(e) if e.iroh_error_code() == Some(iroh_blobs::protocol::ERR_INTERNAL) => {
                write!(
                    f,
                    "does not have it (it reset the request: iroh-blobs error 3, also sent when it cannot read its store)"
                )
            }
            Failure::Get(e) => write!(f, "{}", error_chain(e)),
            Failure::Stalled => write!(f, "sent nothing for {FETCH_STALL_TIMEOUT_S} s"),
            Failure::Ended => write!(f, "the transfer ended without a result"),
            Failure::StreamOpen(e) => write!(f, "{e}"),
            Failure::OverMesh(stream) => {
                write!(f, "over the mesh (its blob endpoint was unreachable when last tried): {stream}")
            }
            Failure::Both(iroh, stream) => write!(f, "over iroh: {iroh}; over the mesh: {stream}"),
        }
    }
}

/// An error and its causes, each once.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let t = cause.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = cause.source();
    }
    text
}

type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Runs one transfer to its end, reporting progress, with no more than
/// [`FETCH_STALL_TIMEOUT_S`] between two steps.
async fn drive(
    transfer: impl futures_lite::Stream<Item = GetProgressItem>,
    received: &AtomicU64,
    progress: &(impl Fn(u64) + Send + Sync),
) -> Result<(), Failure> {
    let mut transfer = std::pin::pin!(transfer);
    let base = received.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(Duration::from_secs(FETCH_STALL_TIMEOUT_S), transfer.next()).await {
            Err(_) => return Err(Failure::Stalled),
            Ok(None) => return Err(Failure::Ended),
            Ok(Some(GetProgressItem::Progress(n))) => {
                received.store(base + n, Ordering::Relaxed);
                progress(base + n);
            }
            Ok(Some(GetProgressItem::Done(_))) => return Ok(()),
            Ok(Some(GetProgressItem::Error(e))) => return Err(Failure::Get(e)),
        }
    }
}

impl BlobNode {
    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Our endpoint id and the addresses peers reach us at.
    pub fn me(&self) -> BlobPeer {
        let ep = &self.inner.endpoint;
        let mut addrs: Vec<SocketAddr> = ep.bound_sockets().into_iter().filter(|a| !a.ip().is_unspecified()).collect();
        // Bound to an unspecified address, the endpoint lists the interfaces' addresses here.
        for a in ep.addr().ip_addrs() {
            if !a.ip().is_unspecified() && !addrs.contains(a) {
                addrs.push(*a);
            }
        }
        BlobPeer { id: *ep.id().as_bytes(), addrs }
    }

    /// Makes a peer's addresses known (replacing what was known of it). A peer whose id is not
    /// an ed25519 public key is ignored with a warning; so is this node itself.
    pub fn add_peer(&self, peer: &BlobPeer) {
        let Ok(id) = PublicKey::from_bytes(&peer.id) else {
            warn!(peer = %hex::encode(peer.id), "ignoring a blob peer whose id is not an ed25519 public key");
            return;
        };
        if id == self.inner.endpoint.id() {
            return;
        }
        let addr = EndpointAddr::from_parts(id, peer.addrs.iter().copied().map(TransportAddr::Ip));
        let known = self.inner.lookup.get_endpoint_info(id).map(|info| info.to_endpoint_addr());
        let moved = known.as_ref().is_some_and(|k| k.addrs != addr.addrs);
        self.inner.lookup.set_endpoint_info(addr);
        if moved {
            // Back on another address (restarted on port 0): a pooled connection to the old one
            // would be handed out until it timed out, and a fetch would wait on it.
            debug!(peer = %id.fmt_short(), addrs = ?peer.addrs, "blob peer moved; its pooled connection is dropped");
            self.forget_connection(id);
            // Now, not at our next fetch from it: while a connection to its old address is open,
            // its own connections to us are answered there, and it can reach us no more.
            self.inner.incoming.close_all(&id);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let pool = self.inner.pool.clone();
                rt.spawn(async move {
                    let _ = pool.close(id).await;
                });
            }
        }
    }

    /// Has the next connection to `id` dialled afresh: a pooled one goes first.
    fn forget_connection(&self, id: PublicKey) {
        self.inner.moved.lock().expect("moved peers").insert(id);
    }

    /// A pooled connection to `id`, closed first and dialled again when `id` moved or failed.
    async fn connection(&self, id: PublicKey) -> Result<ConnectionRef, PoolConnectError> {
        let moved = self.inner.moved.lock().expect("moved peers").remove(&id);
        if moved {
            let _ = self.inner.pool.close(id).await;
        }
        self.inner.pool.get_or_connect(id).await
    }

    /// Lets the endpoint `id` fetch this store's blobs from now on (it stays admitted until the
    /// endpoint shuts down). The caller admits only members of its mesh. Returns whether `id` is
    /// new; an id that is not an ed25519 public key is ignored with a warning.
    pub fn admit(&self, id: &[u8; 32]) -> bool {
        let Ok(key) = PublicKey::from_bytes(id) else {
            warn!(peer = %hex::encode(id), "not admitting a blob peer whose id is not an ed25519 public key");
            return false;
        };
        let new = self.inner.members.insert(key);
        if new {
            debug!(peer = %key.fmt_short(), "admitted to fetch blobs");
        }
        new
    }

    /// Whether the endpoint `id` was admitted ([`BlobNode::admit`]).
    pub fn is_admitted(&self, id: &[u8; 32]) -> bool {
        PublicKey::from_bytes(id).is_ok_and(|key| self.inner.members.contains(&key))
    }

    /// Fetches one blob into the local store, verified, trying `providers` in order (this node
    /// itself is skipped). Nothing is fetched when the blob is complete here already. Returns the
    /// bytes that arrived (0 when it was here).
    pub async fn fetch(&self, hash: Hash, providers: &[[u8; 32]]) -> Result<u64, NetError> {
        self.fetch_with_progress(hash, providers, |_| {}).await
    }

    /// [`BlobNode::fetch`], calling `progress` with the bytes received so far.
    pub async fn fetch_with_progress(
        &self,
        hash: Hash,
        providers: &[[u8; 32]],
        progress: impl Fn(u64) + Send + Sync,
    ) -> Result<u64, NetError> {
        let store = self.store();
        if store.has(hash).await? {
            return Ok(0);
        }
        if store.is_corrupt(hash) {
            return self.refetch_corrupt(hash, providers).await;
        }
        let remote = store.iroh().remote();
        let before = retry_busy(|| remote.local(to_iroh(hash)))
            .await
            .map_err(|e| StoreError::blobs("checking a partial blob")(&e))?
            .local_bytes();
        let me = self.inner.endpoint.id();
        let received = AtomicU64::new(0);
        let mut tried = Vec::new();
        for peer in providers {
            let Ok(id) = PublicKey::from_bytes(peer) else {
                tried
                    .push(ProviderFailure { peer: *peer, reason: "not an endpoint id (an ed25519 public key)".into() });
                continue;
            };
            if id == me {
                continue;
            }
            let outcome = self.fetch_from_peer(hash, id, &received, &progress).await;
            let reason = match outcome {
                Ok(()) if store.has(hash).await? => {
                    let after = store.size(hash).await?.unwrap_or(0);
                    debug!(%hash, peer = %id.fmt_short(), bytes = after.saturating_sub(before), "fetched blob");
                    return Ok(after.saturating_sub(before));
                }
                Ok(()) => "answered, but the blob is still incomplete here".to_owned(),
                Err(f) => f.to_string(),
            };
            debug!(%hash, peer = %id.fmt_short(), %reason, "provider failed");
            tried.push(ProviderFailure { peer: *peer, reason });
        }
        if tried.is_empty() { Err(NetError::NoProviders { hash }) } else { Err(NetError::Unavailable { hash, tried }) }
    }

    /// The right bytes of a blob found corrupted here, from the first provider that has them
    /// (verified while they stream), written over the bad copy. iroh-blobs' own fetch would
    /// skip it: its database says the blob is complete.
    async fn refetch_corrupt(&self, hash: Hash, providers: &[[u8; 32]]) -> Result<u64, NetError> {
        let me = self.inner.endpoint.id();
        let mut tried = Vec::new();
        for peer in providers {
            let Ok(id) = PublicKey::from_bytes(peer) else { continue };
            if id == me {
                continue;
            }
            let got = async {
                let conn = self.connection(id).await.map_err(|e| e.to_string())?;
                iroh_blobs::get::request::get_blob((*conn).clone(), to_iroh(hash))
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(Duration::from_secs(FETCH_STALL_TIMEOUT_S), got).await {
                Ok(Ok(bytes)) => {
                    let n = bytes.len() as u64;
                    self.store().put_bytes(bytes).await?;
                    if !self.store().is_corrupt(hash) {
                        tracing::info!(%hash, peer = %id.fmt_short(), "a corrupted blob was fetched again from a peer");
                        return Ok(n);
                    }
                    tried.push(ProviderFailure { peer: *peer, reason: "its copy could not replace the corrupted one here (kept inside the blob database: run `shoal gc`)".into() });
                }
                Ok(Err(e)) => tried.push(ProviderFailure { peer: *peer, reason: e }),
                Err(_) => tried.push(ProviderFailure { peer: *peer, reason: "stalled".into() }),
            }
        }
        if tried.is_empty() { Err(NetError::NoProviders { hash }) } else { Err(NetError::Unavailable { hash, tried }) }
    }

    /// Sets the second path to peers, tried when a peer's iroh endpoint cannot be reached. Set
    /// once; a later call is ignored (returns false).
    pub fn set_stream_dialer(&self, dialer: Arc<dyn StreamDialer>) -> bool {
        self.inner.dialer.set(dialer).is_ok()
    }

    /// Whether `id`'s iroh endpoint was found unreachable recently enough not to try it again.
    fn iroh_unreachable(&self, id: &PublicKey) -> bool {
        self.inner.iroh_unreachable.lock().expect("unreachable peers").holds(id, tokio::time::Instant::now())
    }

    fn note_iroh_unreachable(&self, id: PublicKey) {
        self.inner.iroh_unreachable.lock().expect("unreachable peers").note(id, tokio::time::Instant::now());
    }

    /// One provider, by iroh and then by the stream path: whatever of the blob is missing here.
    async fn fetch_from_peer(
        &self,
        hash: Hash,
        id: PublicKey,
        received: &AtomicU64,
        progress: &(impl Fn(u64) + Send + Sync),
    ) -> Result<(), Failure> {
        let dialer = self.inner.dialer.get();
        if dialer.is_some() && self.iroh_unreachable(&id) {
            return retry_busy(|| self.fetch_over_stream(hash, id, received, progress))
                .await
                .map_err(|f| Failure::OverMesh(Box::new(f)));
        }
        let over_iroh = match retry_busy(|| self.fetch_from(hash, id, received, progress)).await {
            Err(f @ (Failure::Stalled | Failure::Connect(_))) => {
                // A dead connection or a stale address: the next fetch from it dials anew.
                self.forget_connection(id);
                f
            }
            other => {
                // Reached over iroh (served or not): no longer unreachable.
                self.inner.iroh_unreachable.lock().expect("unreachable peers").reached(&id);
                return other;
            }
        };
        if dialer.is_none() {
            return Err(over_iroh);
        }
        debug!(%hash, peer = %id.fmt_short(), reason = %over_iroh, "iroh cannot reach the peer: fetching over the mesh");
        self.note_iroh_unreachable(id);
        retry_busy(|| self.fetch_over_stream(hash, id, received, progress))
            .await
            .map_err(|over_stream| Failure::Both(Box::new(over_iroh), Box::new(over_stream)))
    }

    /// One transfer from one provider over the stream path.
    async fn fetch_over_stream(
        &self,
        hash: Hash,
        id: PublicKey,
        received: &AtomicU64,
        progress: &(impl Fn(u64) + Send + Sync),
    ) -> Result<(), Failure> {
        let Some(dialer) = self.inner.dialer.get() else {
            return Err(Failure::StreamOpen(stream::OpenFailure::Open("this node has no stream transport".into())));
        };
        let stream = stream::open_serving(&**dialer, *id.as_bytes()).await.map_err(Failure::StreamOpen)?;
        let remote = self.store().iroh().remote();
        let transfer = remote.fetch(stream::requester_pair(stream), to_iroh(hash)).stream();
        drive(transfer, received, progress).await
    }

    /// One transfer from one provider over iroh: whatever of the blob is missing here.
    async fn fetch_from(
        &self,
        hash: Hash,
        id: PublicKey,
        received: &AtomicU64,
        progress: &(impl Fn(u64) + Send + Sync),
    ) -> Result<(), Failure> {
        let conn = self.connection(id).await.map_err(Failure::Connect)?;
        let remote = self.store().iroh().remote();
        drive(remote.fetch((*conn).clone(), to_iroh(hash)).stream(), received, progress).await
    }

    /// Fetches a tree blob and, recursively, every file and subtree it names, at most
    /// [`TREE_FETCHES_IN_FLIGHT_MAX`] at once; each tree is checked (decoded) and recorded as a
    /// tree, as [`Store::put_tree`] does. Blobs already here are not fetched again. Returns the
    /// bytes that arrived.
    pub async fn fetch_tree(&self, hash: Hash, providers: &[[u8; 32]]) -> Result<u64, NetError> {
        self.fetch_tree_with_progress(hash, providers, |_| {}).await
    }

    /// [`BlobNode::fetch_tree`], calling `progress` with the bytes received so far, all blobs of
    /// the tree together.
    pub async fn fetch_tree_with_progress(
        &self,
        hash: Hash,
        providers: &[[u8; 32]],
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<u64, NetError> {
        let providers: Arc<[[u8; 32]]> = providers.into();
        let progress: Progress = Arc::new(progress);
        let received = Arc::new(AtomicU64::new(0));
        let mut seen = HashSet::from([hash]);
        let mut queue = VecDeque::from([(hash, true)]);
        let mut tasks = JoinSet::new();
        let mut total = 0u64;
        loop {
            while tasks.len() < TREE_FETCHES_IN_FLIGHT_MAX
                && let Some((h, is_tree)) = queue.pop_front()
            {
                let (node, providers, progress, received) =
                    (self.clone(), providers.clone(), progress.clone(), received.clone());
                tasks.spawn(async move { node.fetch_tree_part(h, is_tree, &providers, progress, &received).await });
            }
            let Some(joined) = tasks.join_next().await else { break };
            let (bytes, children) = joined.map_err(|e| StoreError::Blobs {
                op: "fetching a tree",
                message: format!("a fetch task failed: {e}"),
            })??;
            total += bytes;
            for child in children {
                if seen.insert(child.0) {
                    queue.push_back(child);
                }
            }
        }
        debug!(%hash, bytes = total, blobs = seen.len(), "fetched tree");
        Ok(total)
    }

    /// One blob of a tree; for a tree blob, also its checked entries: (hash, is a tree).
    async fn fetch_tree_part(
        &self,
        hash: Hash,
        is_tree: bool,
        providers: &[[u8; 32]],
        progress: Progress,
        received: &AtomicU64,
    ) -> Result<(u64, Vec<(Hash, bool)>), NetError> {
        let last = AtomicU64::new(0);
        let bytes = self
            .fetch_with_progress(hash, providers, |n| {
                let delta = n.saturating_sub(last.swap(n, Ordering::Relaxed));
                progress(received.fetch_add(delta, Ordering::Relaxed) + delta);
            })
            .await?;
        if !is_tree {
            return Ok((bytes, Vec::new()));
        }
        let store = self.store();
        let tree =
            Tree::decode(&store.need_bytes(hash).await?).map_err(|reason| NetError::NotATree { hash, reason })?;
        store.mark_tree(hash)?;
        let children = tree
            .entries
            .into_iter()
            .filter_map(|e| match e.kind {
                EntryKind::File { hash, .. } => Some((hash, false)),
                EntryKind::Dir { hash } => Some((hash, true)),
                EntryKind::Symlink { .. } => None,
            })
            .collect();
        Ok((bytes, children))
    }

    /// A file digest's blob ([`BlobNode::fetch`]) or a tree digest's tree
    /// ([`BlobNode::fetch_tree`]).
    pub async fn fetch_digest(&self, d: &Digest, providers: &[[u8; 32]]) -> Result<u64, NetError> {
        match d.kind {
            DigestKind::File => self.fetch(d.hash, providers).await,
            DigestKind::Tree => self.fetch_tree(d.hash, providers).await,
        }
    }

    /// An image: its blob, checked, then its rootfs tree. Afterwards [`Store::get_image`] and
    /// [`Store::rootfs`] work here. The image is indexed as an image (without tag or OCI
    /// digests), like an untagged import: tag or pin it to keep it through `gc`.
    pub async fn fetch_image(&self, id: Hash, providers: &[[u8; 32]]) -> Result<u64, NetError> {
        let mut bytes = self.fetch(id, providers).await?;
        let store = self.store();
        let image =
            Image::decode(&store.need_bytes(id).await?).map_err(|reason| NetError::NotAnImage { id, reason })?;
        bytes += self.fetch_tree(image.rootfs, providers).await?;
        let m = store.meta();
        if !m.image_blobs.contains_key(id.0).map_err(StoreError::meta("read"))? {
            let info = ImageInfo {
                keeps: Vec::new(),
                oci_digest: image.oci_digest.clone(),
                arch: Some(image.config.arch.clone()),
            };
            let mut cbor = Vec::new();
            ciborium::into_writer(&info, &mut cbor).expect("writing to a Vec cannot fail");
            Meta::put(&m.image_blobs, &id.0, &cbor)?;
            m.flush_async().await?;
        }
        Ok(bytes)
    }

    /// Stops serving and closes the endpoint (connections to peers end).
    pub async fn shutdown(self) {
        if let Err(e) = self.inner.router.shutdown().await {
            warn!("blob endpoint shutdown: {e}");
        }
        self.inner.endpoint.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_iroh_keeps_failing_to_reach_is_tried_less_and_less_often() {
        let id = SecretKey::from_bytes(&[7; 32]).public();
        let t0 = tokio::time::Instant::now();
        let s = |n: u64| Duration::from_secs(n);
        let mut u = Unreachable::default();
        assert!(!u.holds(&id, t0));
        u.note(id, t0);
        assert!(u.holds(&id, t0 + s(IROH_UNREACHABLE_RETRY_S - 1)));
        assert!(!u.holds(&id, t0 + s(IROH_UNREACHABLE_RETRY_S)), "tried again after the first wait");
        // The retry failed too: twice the wait, and so on up to the longest.
        let t1 = t0 + s(IROH_UNREACHABLE_RETRY_S);
        u.note(id, t1);
        assert!(u.holds(&id, t1 + s(2 * IROH_UNREACHABLE_RETRY_S - 1)));
        assert!(!u.holds(&id, t1 + s(2 * IROH_UNREACHABLE_RETRY_S)));
        for _ in 0..20 {
            u.note(id, t1);
        }
        assert!(u.holds(&id, t1 + s(IROH_UNREACHABLE_RETRY_MAX_S - 1)));
        assert!(!u.holds(&id, t1 + s(IROH_UNREACHABLE_RETRY_MAX_S)));
        // Reached over iroh: the next failure starts from the first wait again.
        u.reached(&id);
        assert!(!u.holds(&id, t1));
        u.note(id, t1);
        assert!(!u.holds(&id, t1 + s(IROH_UNREACHABLE_RETRY_S)));
    }

    #[test]
    fn the_unreachable_peers_are_bounded() {
        let t0 = tokio::time::Instant::now();
        let mut u = Unreachable::default();
        for i in 0..(CONNECTIONS_MAX + 10) {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            u.note(SecretKey::from_bytes(&b).public(), t0);
        }
        assert_eq!(u.0.len(), CONNECTIONS_MAX);
    }
}
