//! The libp2p layer of a `shoal node` (DESIGN section 4): one swarm that carries the mesh's
//! gossip (facts and capabilities), its anti-entropy request-response, and peer discovery.
//!
//! The transport is TCP + pnet + noise + yamux and nothing else: libp2p's QUIC would bypass the
//! pre-shared key (DESIGN section 7), so a node without the mesh key could connect over it. The
//! key is applied to the raw TCP stream before noise, so a peer with another key never gets as far
//! as a handshake; it sees a reset or an EOF, which is why every upgrade has a timeout.
//!
//! [`Net`] owns the swarm and hands out [`NetEvent`]s from [`Net::next_event`], which the caller
//! drives in its event loop (it is cancel-safe, for `tokio::select!`). Payloads are opaque bytes:
//! the caller encodes facts and capabilities (canonical CBOR) and decides what a sync request
//! means; this module only moves them, bounded in size.
//!
//! Not here yet: relay client, DCUtR and AutoNAT (nodes behind NAT, cross-cloud). They need the
//! relay-client phase of the builder, a relay server on some nodes, and a decision about pnet on
//! relayed circuits (the hop to the relay is pnet-protected, the end-to-end circuit is noise only);
//! until then a node must be reachable directly over TCP by at least one peer.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionDenied, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport, allow_block_list, gossipsub, identify, identity,
    kad, mdns, noise, ping, tcp, yamux,
};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, warn};

/// Largest gossip RPC frame, in bytes (payload plus gossipsub's envelope and signature). Facts
/// and capabilities are small; a larger fact belongs in a blob, named by its hash.
pub const GOSSIP_BYTES_MAX: usize = 1 << 20;
/// Largest anti-entropy request (a digest of held facts), in bytes, CBOR envelope included.
pub const SYNC_REQUEST_BYTES_MAX: u64 = 4 << 20;
/// Largest anti-entropy response (the facts a peer lacks), in bytes, CBOR envelope included. A
/// peer far behind catches up in several rounds rather than in one unbounded reply.
pub const SYNC_RESPONSE_BYTES_MAX: u64 = 32 << 20;
/// How long a connection may take from TCP connect through pnet, noise and yamux, in seconds. A
/// peer with another mesh key shows only as a reset, an EOF or a stall (multistream-select reads
/// a garbled length prefix and waits for bytes that never come): without a bound it would hang.
pub const UPGRADE_TIMEOUT_S: u64 = 10;
/// How long a sync request may wait for its response, in seconds (32 MiB over a slow link).
pub const SYNC_TIMEOUT_S: u64 = 30;
/// Gossipsub heartbeat, in milliseconds: mesh maintenance and IHAVE gossip. A heartbeat with
/// nothing to say sends nothing, so a short one costs no idle traffic.
pub const GOSSIP_HEARTBEAT_MS: u64 = 1000;
/// Delay before the first heartbeat, in milliseconds (libp2p's default is 5 s, which would leave
/// a freshly started node without a mesh for that long).
pub const GOSSIP_HEARTBEAT_INITIAL_MS: u64 = 100;
/// How long a connection with no open stream stays up, in seconds. Gossipsub keeps its mesh
/// peers' connections alive by itself; this keeps the others from flapping.
pub const IDLE_CONNECTION_TIMEOUT_S: u64 = 60;
/// How often a node with no peer at all dials its `join` addresses again, in seconds (the peer it
/// joins may start later, or restart). No shorter than the upgrade timeout: a dial to a node with
/// another mesh key can stall that long, and dials should not pile up.
pub const REJOIN_INTERVAL_S: u64 = 10;
const _: () = assert!(REJOIN_INTERVAL_S >= UPGRADE_TIMEOUT_S);

/// Gossipsub mesh degree: small meshes (2-4 nodes) must work, so the lower bound is low; larger
/// meshes keep about `GOSSIP_MESH_N` peers per topic.
const GOSSIP_MESH_N: usize = 4;
const GOSSIP_MESH_N_LOW: usize = 2;
const GOSSIP_MESH_N_HIGH: usize = 8;
const GOSSIP_MESH_OUTBOUND_MIN: usize = 1;

/// The request-response protocol of anti-entropy.
pub const SYNC_PROTOCOL: &str = "/shoal/sync/1";
/// Our own Kademlia protocol, so a shoal DHT never merges with another one.
pub const KAD_PROTOCOL: &str = "/shoal/kad/1";
/// What identify announces as protocol version.
pub const IDENTIFY_PROTOCOL: &str = "/shoal/1";

/// A gossip topic of the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Ledger facts (Submit, Claim, Renew, Done, Fail, Cancel), as signed CBOR.
    Facts,
    /// Node capabilities, re-gossiped with a TTL.
    Caps,
}

impl Topic {
    pub const ALL: [Topic; 2] = [Topic::Facts, Topic::Caps];

    /// The gossipsub topic name.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Facts => "shoal/facts/1",
            Topic::Caps => "shoal/caps/1",
        }
    }

    fn ident(self) -> gossipsub::IdentTopic {
        gossipsub::IdentTopic::new(self.name())
    }

    fn from_hash(hash: &gossipsub::TopicHash) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.ident().hash() == *hash)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An anti-entropy request: opaque CBOR the caller encodes (on the wire as one CBOR byte string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest(pub Vec<u8>);

/// An anti-entropy response: opaque CBOR the caller encodes (on the wire as one CBOR byte string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResponse(pub Vec<u8>);

// By hand rather than derived: serde serializes a `Vec<u8>` as an array of integers, which would
// nearly double the bytes on the wire; a byte string is one header and the bytes.
macro_rules! bytes_newtype_serde {
    ($t:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_byte_buf(BytesVisitor).map($t)
            }
        }
    };
}
bytes_newtype_serde!(SyncRequest);
bytes_newtype_serde!(SyncResponse);

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    // Accepted too, so a peer that encodes the bytes as an array still interoperates.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(v)
    }
}

/// How a node joins the mesh.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The node's ed25519 secret (the same one is its iroh identity).
    pub secret: [u8; 32],
    /// The mesh's pre-shared key (`shoal mesh init`).
    pub psk: [u8; 32],
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` (tests: `/ip4/127.0.0.1/tcp/0`).
    pub listen: Vec<Multiaddr>,
    /// Addresses of peers to dial at start (`--join`), with or without `/p2p/<peer id>`.
    pub join: Vec<Multiaddr>,
    /// If set, only these peers may connect (both directions); everyone else is refused even
    /// with the right mesh key.
    pub allow: Option<BTreeSet<PeerId>>,
    /// Discover peers on the LAN by multicast DNS. Off by default: it multicasts on every
    /// interface (DESIGN section 7, network hygiene).
    pub mdns: bool,
}

/// What the network tells the node.
#[derive(Debug)]
pub enum NetEvent {
    /// The node listens on this address (one event per address, e.g. after port 0 resolves).
    Listening(Multiaddr),
    /// The first connection to this peer is up.
    Connected(PeerId),
    /// The last connection to this peer is gone.
    Disconnected(PeerId),
    /// A gossip message from `from` (its signed author, not the peer that forwarded it).
    Gossip { topic: Topic, from: PeerId, data: Vec<u8> },
    /// A peer asks; answer with [`Net::respond`] (dropping the channel fails its request).
    Request { peer: PeerId, request: SyncRequest, channel: ResponseChannel<SyncResponse> },
    /// The answer to our request `id`.
    Response { peer: PeerId, id: OutboundRequestId, response: SyncResponse },
    /// Our request `id` got no answer (dial failure, timeout, closed connection, too large).
    RequestFailed { peer: PeerId, id: OutboundRequestId, error: String },
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "the mesh key is malformed: {0}; expected three lines `/key/swarm/psk/1.0.0/`, \
         `/base16/` and 64 hex digits, as `shoal mesh init` writes them"
    )]
    Psk(String),
    #[error("the node secret is not a valid ed25519 key: {0}; delete it to have a new one made")]
    Identity(String),
    #[error("could not set up the network ({what}): {reason}")]
    Setup { what: &'static str, reason: String },
    #[error(
        "cannot listen on {addr}: {reason}; use a free port, or /ip4/ADDR/tcp/PORT \
         (only TCP is supported)"
    )]
    Listen { addr: Multiaddr, reason: String },
    #[error(
        "cannot dial {addr}: {reason}; a join address looks like /ip4/ADDR/tcp/PORT[/p2p/PEER_ID] \
         (only TCP is supported)"
    )]
    Dial { addr: Multiaddr, reason: String },
    #[error("cannot publish on {topic}: {reason}")]
    Publish { topic: Topic, reason: String },
}

/// The swarm's behaviours. Each field's events arrive as a variant of the generated
/// `BehaviourEvent`.
#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Deny list first: a blocked peer is refused before any other behaviour sees it.
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// One node's libp2p swarm. Create it inside a tokio runtime; drive it with
/// [`Net::next_event`].
pub struct Net {
    swarm: Swarm<Behaviour>,
    join: Vec<Multiaddr>,
    rejoin: Interval,
    traffic: Arc<Traffic>,
}

/// The libp2p identity of a node secret. Copies it: libp2p zeroes the buffer it is given.
fn keypair_of(secret: &[u8; 32]) -> Result<identity::Keypair, NetError> {
    let mut bytes = *secret;
    identity::Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| NetError::Identity(e.to_string()))
}

/// The peer id a node secret gives.
pub fn peer_id_of(secret: &[u8; 32]) -> PeerId {
    // Every 32-byte string is an ed25519 secret key: this cannot fail.
    keypair_of(secret).expect("32 bytes are an ed25519 secret key").public().to_peer_id()
}

const PSK_HEADER: &str = "/key/swarm/psk/1.0.0/";
const PSK_ENCODING: &str = "/base16/";

/// Reads a mesh key in libp2p's key file format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex
/// digits), as go-libp2p's and rust-libp2p's private networks write it. Surrounding whitespace and
/// CRLF line ends are accepted.
pub fn parse_psk(text: &str) -> Result<[u8; 32], NetError> {
    let mut lines = text.trim().lines().map(str::trim);
    let (header, encoding, key) = match (lines.next(), lines.next(), lines.next(), lines.next()) {
        (Some(h), Some(e), Some(k), None) => (h, e, k),
        _ => return Err(NetError::Psk("it does not have exactly three lines".into())),
    };
    if header != PSK_HEADER {
        return Err(NetError::Psk(format!("the first line is {header:?}")));
    }
    if encoding != PSK_ENCODING {
        return Err(NetError::Psk(format!("the encoding line is {encoding:?} (only base16 is read)")));
    }
    let bytes = hex::decode(key).map_err(|e| NetError::Psk(format!("the key line is not hex ({e})")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| NetError::Psk(format!("the key is {} bytes, not 32", bytes.len())))
}

/// Writes a mesh key in libp2p's key file format (what [`parse_psk`] reads).
pub fn format_psk(key: &[u8; 32]) -> String {
    PreSharedKey::new(*key).to_key_file()
}

impl Net {
    /// Builds the swarm, listens on `cfg.listen` and dials `cfg.join`. Must be called inside a
    /// tokio runtime (the TCP listeners are tokio's).
    pub fn new(cfg: NetConfig) -> Result<Net, NetError> {
        let keypair = keypair_of(&cfg.secret)?;
        let psk = PreSharedKey::new(cfg.psk);
        debug!(psk_fingerprint = %psk.fingerprint(), "mesh key");
        let mdns = cfg.mdns;
        let allow = cfg.allow.clone();
        let traffic = Arc::new(Traffic::default());
        let counted = traffic.clone();

        let swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            // pnet wraps the raw TCP stream, before noise: without the key, nothing else is reachable.
            .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                Ok(tcp::tokio::Transport::new(tcp::Config::new())
                    // Counted below pnet: the bytes that really cross the wire.
                    .and_then(move |socket, _| {
                        PnetConfig::new(psk).handshake(Counted { inner: socket, traffic: counted.clone() })
                    })
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    // Covers TCP connect, pnet, noise and yamux together.
                    .timeout(Duration::from_secs(UPGRADE_TIMEOUT_S)))
            })
            .map_err(|e| NetError::Setup { what: "transport", reason: e.to_string() })?
            .with_behaviour(|key| Behaviour::new(key, allow, mdns))
            .map_err(|e| NetError::Setup { what: "behaviours", reason: e.to_string() })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(IDLE_CONNECTION_TIMEOUT_S)))
            .build();

        // The first tick one period from now: `new` has just dialed the join addresses.
        let period = Duration::from_secs(REJOIN_INTERVAL_S);
        let mut rejoin = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        rejoin.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut net = Net { swarm, join: cfg.join, rejoin, traffic };
        for addr in cfg.listen {
            net.swarm.listen_on(addr.clone()).map_err(|e| NetError::Listen { addr, reason: e.to_string() })?;
        }
        for addr in net.join.clone() {
            net.dial(addr)?;
        }
        Ok(net)
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Bytes received and sent over every libp2p connection so far (TCP payload, below pnet).
    pub fn traffic(&self) -> (u64, u64) {
        (self.traffic.bytes_in.load(Ordering::Relaxed), self.traffic.bytes_out.load(Ordering::Relaxed))
    }

    /// The addresses listened on so far (port 0 resolved once [`NetEvent::Listening`] came).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.swarm.listeners().cloned().collect()
    }

    /// Gossips `data` on `topic`. No subscribed peer yet is not an error (the ledger's
    /// anti-entropy delivers the fact later); a message too large or full queues are.
    pub fn publish(&mut self, topic: Topic, data: Vec<u8>) -> Result<(), NetError> {
        match self.swarm.behaviour_mut().gossipsub.publish(topic.ident(), data) {
            Ok(_) => Ok(()),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                debug!(%topic, "published with no peer subscribed yet");
                Ok(())
            }
            // Already on the network: what the caller wanted.
            Err(gossipsub::PublishError::Duplicate) => Ok(()),
            Err(gossipsub::PublishError::MessageTooLarge) => Err(NetError::Publish {
                topic,
                reason: format!(
                    "the message is larger than {GOSSIP_BYTES_MAX} bytes; put the payload in a \
                     blob and gossip its hash"
                ),
            }),
            Err(e) => Err(NetError::Publish { topic, reason: e.to_string() }),
        }
    }

    /// Sends a sync request to `peer` (dialing it if needed and its address is known). The
    /// answer arrives as [`NetEvent::Response`] or [`NetEvent::RequestFailed`] with this id.
    pub fn request(&mut self, peer: &PeerId, req: SyncRequest) -> OutboundRequestId {
        self.swarm.behaviour_mut().sync.send_request(peer, req)
    }

    /// Answers a [`NetEvent::Request`]. A requester gone in the meantime is only logged.
    pub fn respond(&mut self, channel: ResponseChannel<SyncResponse>, resp: SyncResponse) {
        if self.swarm.behaviour_mut().sync.send_response(channel, resp).is_err() {
            debug!("sync response dropped: the requester's connection or stream is gone");
        }
    }

    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.swarm.connected_peers().copied().collect()
    }

    /// Dials an address (e.g. a peer met out of band, or after [`Net::unblock`]).
    pub fn dial(&mut self, addr: Multiaddr) -> Result<(), NetError> {
        debug!(%addr, "dialing");
        self.swarm.dial(addr.clone()).map_err(|e| NetError::Dial { addr, reason: e.to_string() })
    }

    /// Closes every connection to `peer` and refuses new ones (both directions) until
    /// [`Net::unblock`].
    pub fn block(&mut self, peer: PeerId) {
        debug!(%peer, "blocking");
        self.swarm.behaviour_mut().blocked.block_peer(peer);
    }

    /// Accepts `peer` again; it does not reconnect by itself (dial it).
    pub fn unblock(&mut self, peer: PeerId) {
        debug!(%peer, "unblocking");
        self.swarm.behaviour_mut().blocked.unblock_peer(peer);
    }

    /// Drives the swarm until something the node cares about happens. Cancel-safe: dropping the
    /// future loses no event (the swarm keeps what it has not handed out).
    pub async fn next_event(&mut self) -> NetEvent {
        loop {
            let event = tokio::select! {
                event = self.swarm.select_next_some() => event,
                _ = self.rejoin.tick() => {
                    self.rejoin_if_alone();
                    continue;
                }
            };
            if let Some(event) = self.handle(event) {
                return event;
            }
        }
    }

    fn rejoin_if_alone(&mut self) {
        if self.swarm.connected_peers().next().is_some() {
            return;
        }
        for addr in self.join.clone() {
            if let Err(e) = self.dial(addr) {
                debug!("rejoin: {e}");
            }
        }
    }

    fn handle(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<NetEvent> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                debug!(%address, "listening");
                Some(NetEvent::Listening(address))
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                (num_established.get() == 1).then_some(NetEvent::Connected(peer_id))
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                (num_established == 0).then_some(NetEvent::Disconnected(peer_id))
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, peer_id, .. } => {
                match &error {
                    libp2p::swarm::ListenError::Denied { cause } => {
                        warn!(addr = %send_back_addr, "refused a connection: {}", denial(cause));
                    }
                    // A wrong mesh key shows here, as a failed or timed-out handshake.
                    _ => debug!(peer = ?peer_id, addr = %send_back_addr, "incoming connection failed: {error}"),
                }
                None
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                match &error {
                    libp2p::swarm::DialError::Denied { cause } => {
                        warn!("refused to connect: {}", denial(cause));
                    }
                    _ => debug!(peer = ?peer_id, "dial failed: {error}"),
                }
                None
            }
            SwarmEvent::Behaviour(event) => self.handle_behaviour(event),
            _ => None,
        }
    }

    fn handle_behaviour(&mut self, event: BehaviourEvent) -> Option<NetEvent> {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message, .. }) => {
                let Some(topic) = Topic::from_hash(&message.topic) else {
                    debug!(topic = %message.topic, "gossip on a topic we do not know");
                    return None;
                };
                // Signed messages always carry their author.
                let from = message.source.unwrap_or(propagation_source);
                Some(NetEvent::Gossip { topic, from, data: message.data })
            }
            BehaviourEvent::Gossipsub(_) => None,
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // Only peers that speak our DHT go into its routing table.
                if info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    for addr in info.listen_addrs {
                        kad.add_address(&peer_id, addr);
                    }
                }
                None
            }
            BehaviourEvent::Identify(_) | BehaviourEvent::Ping(_) => None,
            BehaviourEvent::Kad(event) => {
                if let kad::Event::RoutingUpdated { peer, is_new_peer: true, .. } = event {
                    debug!(%peer, "new peer in the DHT routing table");
                }
                None
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => Some(match message {
                request_response::Message::Request { request, channel, .. } => {
                    NetEvent::Request { peer, request, channel }
                }
                request_response::Message::Response { request_id, response } => {
                    NetEvent::Response { peer, id: request_id, response }
                }
            }),
            BehaviourEvent::Sync(request_response::Event::OutboundFailure { peer, request_id, error, .. }) => {
                Some(NetEvent::RequestFailed { peer, id: request_id, error: error.to_string() })
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure { peer, error, .. }) => {
                debug!(%peer, "inbound sync request failed: {error}");
                None
            }
            BehaviourEvent::Sync(request_response::Event::ResponseSent { .. }) => None,
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if self.swarm.is_connected(&peer) {
                        continue;
                    }
                    debug!(%peer, %addr, "found on the LAN");
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if let Err(e) = self.swarm.dial(addr) {
                        debug!(%peer, "cannot dial a peer found on the LAN: {e}");
                    }
                }
                None
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => None,
            BehaviourEvent::Blocked(never) | BehaviourEvent::Allowed(never) => match never {},
        }
    }
}

/// Why a connection was denied, in words.
fn denial(cause: &ConnectionDenied) -> String {
    if let Some(b) = cause.downcast_ref::<allow_block_list::Blocked>() {
        b.to_string()
    } else if let Some(n) = cause.downcast_ref::<allow_block_list::NotAllowed>() {
        n.to_string()
    } else {
        cause.to_string()
    }
}

impl Behaviour {
    fn new(
        key: &identity::Keypair,
        allow: Option<BTreeSet<PeerId>>,
        mdns_on: bool,
    ) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
        let peer_id = key.public().to_peer_id();

        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_millis(GOSSIP_HEARTBEAT_MS))
            .heartbeat_initial_delay(Duration::from_millis(GOSSIP_HEARTBEAT_INITIAL_MS))
            .max_transmit_size(GOSSIP_BYTES_MAX)
            .mesh_n(GOSSIP_MESH_N)
            .mesh_n_low(GOSSIP_MESH_N_LOW)
            .mesh_n_high(GOSSIP_MESH_N_HIGH)
            .mesh_outbound_min(GOSSIP_MESH_OUTBOUND_MIN)
            .gossip_lazy(GOSSIP_MESH_N)
            // Our own messages reach every subscribed peer at once, not only the mesh: in a
            // small mesh that is the fastest delivery, and facts are small.
            .flood_publish(true)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .build()?;
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)?;
        for topic in Topic::ALL {
            gossipsub.subscribe(&topic.ident())?;
        }

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(format!("shoal/{}", env!("CARGO_PKG_VERSION"))),
        );

        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(StreamProtocol::new(KAD_PROTOCOL)),
        );
        // Server mode from the start: without AutoNAT no external address is ever confirmed,
        // and a client-mode node would answer no DHT query.
        kad.set_mode(Some(kad::Mode::Server));

        let codec = request_response::cbor::codec::Codec::<SyncRequest, SyncResponse>::default()
            .set_request_size_maximum(SYNC_REQUEST_BYTES_MAX)
            .set_response_size_maximum(SYNC_RESPONSE_BYTES_MAX);
        let sync = request_response::Behaviour::with_codec(
            codec,
            [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(SYNC_TIMEOUT_S)),
        );

        let allowed = allow.map(|peers| {
            let mut list = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
            for peer in peers {
                list.allow_peer(peer);
            }
            list
        });

        let mdns = if mdns_on { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };

        Ok(Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            allowed: Toggle::from(allowed),
            gossipsub,
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            sync,
            mdns: Toggle::from(mdns),
        })
    }
}

/// Byte counters of all connections together.
#[derive(Default)]
struct Traffic {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A stream that counts what it reads and writes into [`Traffic`].
struct Counted<S> {
    inner: S,
    traffic: Arc<Traffic>,
}

impl<S: futures::AsyncRead + Unpin> futures::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.traffic.bytes_in.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: futures::AsyncWrite + Unpin> futures::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.traffic.bytes_out.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}
