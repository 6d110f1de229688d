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
//! # Nodes behind NAT: relay, DCUtR, AutoNAT
//!
//! A node that no peer can dial (behind NAT, in another cloud) is reached through a *relay*, a mesh
//! node started with [`NetConfig::relay_server`] (`shoal node --relay-server`) on a public address.
//! AutoNAT tells a node whether its addresses can be dialed from outside: it asks a peer to dial
//! it back (relays, and with only global IPs any connected peer at one), first
//! [`AUTONAT_BOOT_DELAY_S`] after start, then every [`AUTONAT_RETRY_S`] until sure, every
//! [`AUTONAT_REFRESH_S`] after. A confirmed address becomes an external address, which identify
//! announces. A dial-back to a node behind NAT is dropped and fails only at the prober's dial
//! timeout, so a node whose verdict is unknown and whose dial-back has not come within
//! [`AUTONAT_DIAL_BACK_PATIENCE_S`] presumes it is private until a verdict. A node found (or
//! presumed) *private* reserves a slot on up to [`RELAYS_WANTED`] relays by itself
//! (`relays.rs`): peers whose identify lists the relay hop protocol, joined or met through the mesh,
//! dialed at an address others can dial (or the one it is connected to them at). It listens on
//! `<relay>/p2p/<relay id>/p2p-circuit` through each, reported as [`NetEvent::Listening`] (the daemon
//! announces it at once), and peers reach it at `<that>/p2p/<its id>`. A reservation refused or lost
//! (the relay died) is replaced by one on another relay at once, and that relay is tried again
//! [`RELAY_RETRY_S`] later or as soon as a connection to it comes up; the lost address is reported
//! as [`NetEvent::NotListening`]. Found public again, the node gives its reservations up. A relay
//! named with [`Net::listen_via_relay`] (or such an address in [`NetConfig::listen`]) is kept
//! whatever AutoNAT says, renewed by itself and made again when lost, and counts towards
//! [`RELAYS_WANTED`].
//!
//! Once a relayed connection stands, DCUtR tries to replace it with a direct one (a TCP hole punch:
//! both ends dial each other's observed addresses at once, which works through NATs that keep a
//! source port whatever the destination, not through symmetric ones). Where it works the relayed
//! connection is closed, so the traffic leaves the relay; where it fails the relayed one stays.
//! [`Net::path`] says which a peer's connection is; [`Net::hole_punches`] counts both outcomes.
//! A relay names the addresses it is reachable at: those AutoNAT confirmed and its listen addresses
//! (of a listener on an unspecified IP, all but the loopback ones).
//!
//! On a lab or a private WAN between sites every address is non-global, which AutoNAT ignores by
//! default: [`NetConfig::autonat_private_ips`] (`--autonat-private-ips`) makes it probe those too,
//! asking relays only (a peer on our own LAN would confirm a LAN address nobody beyond it can dial).
//!
//! How the mesh stays closed with relays in it:
//! - The hop to a relay is an ordinary connection of this transport, TCP + pnet + noise + yamux.
//!   Without the mesh key nobody reaches a relay, so nobody outside the mesh can reserve a slot, open
//!   a circuit, or be reached through one; a relay has no listener of its own, it is one more
//!   protocol on connections that have passed pnet. For the same reason a node cannot use a relay
//!   outside the mesh (our TCP speaks pnet first).
//! - A circuit end to end is noise + yamux inside the two pnet-protected hops, without a pnet layer
//!   of its own: the relay, itself a key holder, forwards noise ciphertext it can neither read nor
//!   alter undetected. Noise authenticates both ends: the dialer gets exactly the peer id named after
//!   `/p2p-circuit` (the swarm drops a connection to any other), and the listener learns the
//!   dialer's id from noise, not from the relay's word.
//! - The allow list and the block list judge relayed connections at both ends as they judge direct
//!   ones (by the peer id noise proved); a relay refuses the peers on its own lists before they can
//!   reserve or open anything.
//! - DCUtR's direct connection is a dial of this same TCP transport: pnet again. It, AutoNAT and the
//!   relay dial only addresses given in the configuration or told by peers (their listen and observed
//!   addresses). AutoNAT asks only connected peers (no fixed servers): relays, and peers seen at
//!   global IPs unless `autonat_private_ips`; its dial-back goes only to the asking peer's own
//!   observed IP.
//! - No QUIC, as above: every hop has pnet under it.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::ListenerId;
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionDenied, ConnectionId, DialError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, Transport, allow_block_list, autonat, dcutr, gossipsub, identify, kad,
    mdns, noise, relay, tcp, yamux,
};
use shoal_dag::Hash;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::behaviour::{Behaviour, BehaviourEvent};
pub use super::codec::{SyncRequest, SyncResponse};
use super::keys::keypair_of;
pub use super::keys::{format_psk, parse_psk, peer_id_of};
use super::relays::{AutoRelays, relay_dialable};
pub use super::relays::{RELAY_RETRY_S, RELAYS_WANTED, Reachability};
use super::traffic::{Counted, Traffic};

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
/// How often libp2p's ping measures a connection's round trip, in seconds (its default is 15 s;
/// liveness has its own heartbeats every 10 s, which also keep connections from idling out).
pub const PING_INTERVAL_S: u64 = 60;
/// Bytes of BLAKE3 a gossip message's id keeps (128 bits: no collision among the messages a
/// node remembers).
pub const GOSSIP_MESSAGE_ID_BYTES: usize = 16;
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
/// How long a relay keeps one circuit open, in seconds. Relays serve only the mesh, so a circuit
/// has no byte limit (a sync response is up to 32 MiB); the time limit recycles circuits whose ends
/// are long gone, and when one ends the peers dial again (and DCUtR gets another chance).
pub const RELAY_CIRCUIT_S: u64 = 3600;
/// Circuits a relay keeps open at once, in all and per peer (as either end: a node at a site
/// behind a symmetric NAT talks to every other such node through its relay, so a site of N
/// nodes needs N - 1 per peer; 32 stopped a 32-node lab).
pub const RELAY_CIRCUITS_MAX: usize = 4096;
pub const RELAY_CIRCUITS_PER_PEER_MAX: usize = 256;
/// Reservations a relay holds at once (libp2p's default, 128, would turn away the 129th node
/// behind NAT), and how many one peer may make in a burst, then one per
/// [`RELAY_RESERVATION_REFILL_S`]. Per peer only, not per IP (libp2p's default also allows one
/// per IP a minute): a whole site shares one IP, and every reserver holds the mesh key.
pub const RELAY_RESERVATIONS_MAX: usize = 1024;
pub(super) const RELAY_RESERVATION_BURST: u32 = 30;
pub(super) const RELAY_RESERVATION_REFILL_S: u64 = 60;
/// Circuits one peer may open in a burst, then one per [`RELAY_CIRCUIT_REFILL_S`] (per peer, not
/// per IP: many mesh nodes may sit behind one NAT).
pub(super) const RELAY_CIRCUIT_BURST: u32 = 64;
pub(super) const RELAY_CIRCUIT_REFILL_S: u64 = 10;
/// AutoNAT's first probe, in seconds after start: long enough for the join connections and
/// identify (which tells our observed address and which peers are relays), short so that a node
/// behind NAT reserves on a relay within seconds.
pub const AUTONAT_BOOT_DELAY_S: u64 = 2;
/// Between probes while the verdict is unknown or not yet confirmed by
/// [`AUTONAT_CONFIDENCE_MAX`] in a row, in seconds. A probe is one dial-back to one peer. Longer
/// than a dial-back to a node behind NAT takes to fail ([`UPGRADE_TIMEOUT_S`]): a server still
/// dialing refuses the next probe ("dial-back already ongoing", an unknown verdict), and with a
/// 5-s period every other probe of such a node was refused and it never settled.
pub const AUTONAT_RETRY_S: u64 = UPGRADE_TIMEOUT_S + 2;
/// Between probes once confirmed, in seconds: how long a node that became reachable (or stopped
/// being) may take to notice.
pub const AUTONAT_REFRESH_S: u64 = 60;
/// How long one peer is not asked again, in seconds: a mesh may know a single relay, which must be
/// asked at every retry.
pub const AUTONAT_THROTTLE_SERVER_S: u64 = AUTONAT_RETRY_S;
/// How long a probe's dial-back may take before a node whose reachability is unknown presumes it
/// is private and reserves on relays, in seconds. A dial-back to a node behind NAT is dropped, so
/// the probe fails only when the prober's dial times out ([`UPGRADE_TIMEOUT_S`]); one to a
/// reachable node takes a few round trips. Found public later, the node gives the relays up.
pub const AUTONAT_DIAL_BACK_PATIENCE_S: u64 = 3;
const _: () = assert!(AUTONAT_DIAL_BACK_PATIENCE_S < UPGRADE_TIMEOUT_S);
/// Probes that must agree before a verdict counts as confirmed (libp2p's value; the first
/// answer already flips an unknown verdict).
pub const AUTONAT_CONFIDENCE_MAX: usize = 3;

/// Gossipsub mesh degree: small meshes (2-4 nodes) must work, so the lower bound is low; larger
/// meshes keep about `GOSSIP_MESH_N` peers per topic.
pub(super) const GOSSIP_MESH_N: usize = 4;
pub(super) const GOSSIP_MESH_N_LOW: usize = 2;
pub(super) const GOSSIP_MESH_N_HIGH: usize = 8;
pub(super) const GOSSIP_MESH_OUTBOUND_MIN: usize = 1;

/// The request-response protocol of anti-entropy: `/shoal/sync/<protocol version>`, so nodes
/// of different protocols cannot exchange facts even in the moment between connecting and
/// identify's refusal (`/shoal/sync/1` for protocol 1, as before the version was in the name).
pub fn sync_protocol(protocol: u32) -> String {
    format!("/shoal/sync/{protocol}")
}
/// Our own Kademlia protocol, so a shoal DHT never merges with another one.
pub const KAD_PROTOCOL: &str = "/shoal/kad/1";
/// How long a peer refused for speaking another protocol stays refused (neither dialed nor
/// accepted), in seconds: long enough not to redial it in a loop, short enough to take it back
/// soon after its stick was rewritten.
pub const REFUSED_RETRY_S: u64 = 600;
/// How long a peer refused for its protocol stays connected before it is cut off, in ms: long
/// enough for our identify to reach it, so that a node of this build at the other end refuses us
/// too and says why, rather than seeing a connection close for no reason. Nothing crosses
/// meanwhile (the sync protocol's name differs, gossip of another version is dropped).
const REFUSAL_GRACE_MS: u64 = 1_000;
/// Refused peers remembered and kept off (each logged once); past it the oldest refusal ends
/// early.
const REFUSED_PEERS_MAX: usize = 1024;

/// A gossip topic of the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Ledger facts (Submit, Claim, Alive, Done, Fail, Cancel, Lost, Release), as signed CBOR:
    /// all of them for DAGs on the mesh's one topic, and the Submit and Cancel of the others.
    Facts,
    /// Node capabilities, re-gossiped with a TTL.
    Caps,
    /// The facts of one DAG that has a topic of its own (`Body::Submit::topic_nodes`),
    /// subscribed by the group that schedules it and by nodes watching it.
    Dag(Hash),
}

impl Topic {
    /// The topics every node subscribes to.
    pub const ALL: [Topic; 2] = [Topic::Facts, Topic::Caps];

    /// The gossipsub topic name.
    pub fn name(self) -> String {
        match self {
            Topic::Facts => "shoal/facts/1".into(),
            Topic::Caps => "shoal/caps/1".into(),
            Topic::Dag(dag) => format!("shoal/dag/{dag}/1"),
        }
    }

    pub(super) fn ident(self) -> gossipsub::IdentTopic {
        gossipsub::IdentTopic::new(self.name())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// How a node joins the mesh.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The node's ed25519 secret (the same one is its iroh identity).
    pub secret: [u8; 32],
    /// The mesh's pre-shared key (`shoal mesh init`).
    pub psk: [u8; 32],
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` (tests: `/ip4/127.0.0.1/tcp/0`), or
    /// through a relay, `/ip4/ADDR/tcp/PORT/p2p/RELAY_ID/p2p-circuit` (see [`Net::listen_via_relay`]).
    pub listen: Vec<Multiaddr>,
    /// Addresses of peers to dial at start (`--join`), with or without `/p2p/<peer id>`.
    pub join: Vec<Multiaddr>,
    /// If set, only these peers may connect (both directions); everyone else is refused even
    /// with the right mesh key.
    pub allow: Option<BTreeSet<PeerId>>,
    /// Discover peers on the LAN by multicast DNS. Off by default: it multicasts on every
    /// interface (DESIGN section 7, network hygiene).
    pub mdns: bool,
    /// Serve as a relay for mesh peers behind NAT: they reserve a slot here and are reached through
    /// it (`/p2p-circuit`). Only peers holding the mesh key can reach it (see the module doc).
    pub relay_server: bool,
    /// The mesh protocol version this node speaks (identify announces it as `/shoal/<version>`;
    /// a peer announcing another is refused): [`shoal_mesh::wire::PROTOCOL_VERSION`] but in tests.
    pub protocol: u32,
    /// AutoNAT probes and confirms non-global addresses too (10/8, 198.18/15, ...), and asks only
    /// relays (`--autonat-private-ips`): for a lab or a private WAN. Off, only global IPs count and
    /// a node behind NAT on such a network never learns it is private.
    pub autonat_private_ips: bool,
    /// Behave as if AutoNAT had found this node private, without waiting for it: reserve on relays
    /// at once and never give them up (for tests on loopback, where every address is reachable).
    pub force_private: bool,
}

/// What the network tells the node.
#[derive(Debug)]
pub enum NetEvent {
    /// The node listens on this address (once per address, e.g. after port 0 resolves). A relayed
    /// one is `<relay>/p2p/<relay id>/p2p-circuit`, without our own id, like a direct one; it comes
    /// once the relay accepted the reservation.
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
    /// A peer speaks another protocol: it is cut off a moment later ([`NetEvent::Disconnected`]
    /// follows) and refused for [`REFUSED_RETRY_S`].
    Refused(Refusal),
    /// The node no longer listens on this relayed address (the reservation was lost or given up);
    /// as in [`NetEvent::Listening`], without our own id.
    NotListening(Multiaddr),
}

/// How this node is connected to a peer now, as `shoal peers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// At least one direct connection; `hole_punched` if DCUtR made it out of a relayed one.
    Direct { hole_punched: bool },
    /// Only through a relay.
    Relayed { relay: PeerId },
}

/// Hole punches (DCUtR) so far: relayed connections replaced by direct ones, and attempts that
/// failed (the relayed connection stayed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HolePunches {
    pub upgraded: u64,
    pub failed: u64,
}

/// A peer refused for its protocol, as `shoal peers` lists it.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub peer: PeerId,
    /// Where its connection went.
    pub addr: Option<Multiaddr>,
    /// Its release, as identify's agent version says it (`shoal/0.1.0`).
    pub agent: String,
    pub error: shoal_mesh::wire::Incompatible,
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
        "cannot listen on {addr}: {reason}; use a free port, or /ip4/ADDR/tcp/PORT, or \
         /ip4/ADDR/tcp/PORT/p2p/RELAY_ID/p2p-circuit through a relay (only TCP is supported)"
    )]
    Listen { addr: Multiaddr, reason: String },
    #[error(
        "cannot dial {addr}: {reason}; a join address looks like /ip4/ADDR/tcp/PORT[/p2p/PEER_ID], \
         or /ip4/ADDR/tcp/PORT/p2p/RELAY_ID/p2p-circuit/p2p/PEER_ID through a relay (only TCP is supported)"
    )]
    Dial { addr: Multiaddr, reason: String },
    #[error("cannot publish on {topic}: {reason}")]
    Publish { topic: Topic, reason: String },
}

/// One node's libp2p swarm. Create it inside a tokio runtime; drive it with
/// [`Net::next_event`].
pub struct Net {
    swarm: Swarm<Behaviour>,
    join: Vec<Multiaddr>,
    rejoin: Interval,
    traffic: Arc<Traffic>,
    /// Listening through relays: kept to listen again when a reservation is lost.
    relayed: Vec<RelayedListen>,
    /// Whether this node serves as a relay (its listen addresses are then external addresses).
    relay_server: bool,
    /// Listeners on an unspecified IP (0.0.0.0, ::), whose loopback addresses a relay does not offer.
    wildcard: HashSet<ListenerId>,
    /// Listen addresses already reported (a relay reservation's renewal reports them again).
    reported: HashSet<Multiaddr>,
    /// Each open connection: its peer and where it goes ([`Net::connection_addrs`]).
    connections: HashMap<ConnectionId, (PeerId, Multiaddr)>,
    /// The protocol version this node speaks.
    protocol: u32,
    /// Peers refused for their protocol: until when, and the addresses they were reached at
    /// (join addresses leading there are not redialed meanwhile).
    refused: HashMap<PeerId, (tokio::time::Instant, Vec<Multiaddr>)>,
    /// Peers whose refusal was logged (once per peer, not per connection).
    refusal_logged: HashSet<PeerId>,
    /// Refused peers to cut off once [`REFUSAL_GRACE_MS`] has passed, in order.
    cut_off: VecDeque<(tokio::time::Instant, PeerId)>,
    /// Relays reserved on by themselves while this node is private.
    relays: AutoRelays,
    /// Non-global addresses count for AutoNAT and relay candidates ([`NetConfig::autonat_private_ips`]).
    private_ips: bool,
    /// The direct connection DCUtR made to each peer it upgraded.
    hole_punched: HashMap<PeerId, ConnectionId>,
    hole_punches: HolePunches,
    /// When this node presumes it is private if the probe under way has not answered.
    presume_private_at: Option<tokio::time::Instant>,
    /// The topics subscribed to, by gossipsub's hash of their name.
    topics: HashMap<gossipsub::TopicHash, Topic>,
    /// Each peer's last [`Net::dial_peer`] until a connection: made again when it did not get
    /// its chance (see [`PeerDial`]).
    dials: HashMap<PeerId, PeerDial>,
}

/// A dial of [`Net::dial_peer`] that may have to be made again: when the swarm aborted it (a
/// `disconnect_peer_id` of ours, "reconnecting afresh", aborts the dials to the peer under way),
/// or when it was not made because another dial to the peer was under way (DCUtR's, to an
/// address that may never answer) and that one failed. At most [`DIAL_RETRIES`] times in a row.
struct PeerDial {
    addrs: Vec<Multiaddr>,
    retries: u32,
    /// Not made: another dial to the peer was under way.
    deferred: bool,
}

/// How many times in a row a peer's dial is made again (see [`PeerDial`]).
const DIAL_RETRIES: u32 = 3;
/// Peers whose last dial is remembered, at most.
const DIALS_REMEMBERED_MAX: usize = 1024;

/// One `<relay>/p2p-circuit` listen address and its listener while it has one.
struct RelayedListen {
    addr: Multiaddr,
    relay: PeerId,
    listener: Option<ListenerId>,
    /// Attempts that failed in a row (only the second is a warning).
    failures: u32,
}

impl Net {
    /// Builds the swarm, listens on `cfg.listen` and dials `cfg.join`. Must be called inside a
    /// tokio runtime (the TCP listeners are tokio's).
    pub fn new(cfg: NetConfig) -> Result<Net, NetError> {
        let keypair = keypair_of(&cfg.secret)?;
        let psk = PreSharedKey::new(cfg.psk);
        debug!(psk_fingerprint = %psk.fingerprint(), "mesh key");
        let mdns = cfg.mdns;
        let relay_server = cfg.relay_server;
        let allow = cfg.allow.clone();
        let traffic = Arc::new(Traffic::default());
        let counted = traffic.clone();
        // The relay client is a transport (dialing and listening on `/p2p-circuit` addresses) and a
        // behaviour (reservations and circuits over connections to relays) that talk to each other.
        let (relay_transport, relay_client) = relay::client::new(keypair.public().to_peer_id());

        let swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            // pnet wraps the raw TCP stream, before noise: without the key, nothing else is reachable.
            .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let direct = tcp::tokio::Transport::new(tcp::Config::new())
                    // Counted below pnet: the bytes that really cross the wire.
                    .and_then(move |socket, _| {
                        PnetConfig::new(psk).handshake(Counted { inner: socket, traffic: counted.clone() })
                    })
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    // Covers TCP connect, pnet, noise and yamux together.
                    .timeout(Duration::from_secs(UPGRADE_TIMEOUT_S));
                // A circuit runs over connections of `direct` (to the relay, pnet under them), so it
                // is not counted again, and has no pnet of its own: noise end to end (module doc).
                // What `SwarmBuilder::with_relay_client` builds, plus the same upgrade timeout.
                let relayed = relay_transport
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    // Covers reaching the relay, opening the circuit, noise and yamux.
                    .timeout(Duration::from_secs(UPGRADE_TIMEOUT_S));
                Ok(direct
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                    .or_transport(relayed.map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
                    .map(|either, _| either.into_inner()))
            })
            .map_err(|e| NetError::Setup { what: "transport", reason: e.to_string() })?
            .with_behaviour(|key| {
                Behaviour::new(key, allow, mdns, relay_client, relay_server, cfg.autonat_private_ips, cfg.protocol)
            })
            .map_err(|e| NetError::Setup { what: "behaviours", reason: e.to_string() })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(IDLE_CONNECTION_TIMEOUT_S)))
            .build();

        // The first tick one period from now: `new` has just dialed the join addresses.
        let period = Duration::from_secs(REJOIN_INTERVAL_S);
        let mut rejoin = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        rejoin.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut net = Net {
            swarm,
            join: cfg.join,
            rejoin,
            traffic,
            relayed: Vec::new(),
            relay_server,
            wildcard: HashSet::new(),
            reported: HashSet::new(),
            connections: HashMap::new(),
            protocol: cfg.protocol,
            refused: HashMap::new(),
            refusal_logged: HashSet::new(),
            cut_off: VecDeque::new(),
            relays: AutoRelays::new(cfg.force_private),
            private_ips: cfg.autonat_private_ips,
            hole_punched: HashMap::new(),
            dials: HashMap::new(),
            hole_punches: HolePunches::default(),
            topics: Topic::ALL.into_iter().map(|t| (t.ident().hash(), t)).collect(),
            presume_private_at: None,
        };
        for addr in cfg.listen {
            if is_circuit(&addr) {
                net.listen_via_relay(addr)?;
                continue;
            }
            let id = net
                .swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen { addr: addr.clone(), reason: e.to_string() })?;
            if addr.iter().any(|p| {
                matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())
                    || matches!(p, Protocol::Ip6(ip) if ip.is_unspecified())
            }) {
                net.wildcard.insert(id);
            }
        }
        for addr in net.join.clone() {
            net.dial(addr)?;
        }
        Ok(net)
    }

    /// Listens through a relay: reserves a slot on it (dialing it if needed) and takes connections
    /// it forwards. `relay` is the relay's address with its peer id, with or without the trailing
    /// `/p2p-circuit`, e.g. `/ip4/203.0.113.5/tcp/7171/p2p/12D3Koo.../p2p-circuit`. The relay must
    /// serve as one ([`NetConfig::relay_server`]) and hold the mesh key. The address arrives as
    /// [`NetEvent::Listening`] once the relay accepted; a reservation lost (the relay restarted, the
    /// connection broke) is made again every [`REJOIN_INTERVAL_S`] seconds.
    pub fn listen_via_relay(&mut self, relay: Multiaddr) -> Result<(), NetError> {
        let (addr, relay_id) = circuit_listen_addr(&relay)?;
        if self.relayed.iter().any(|r| r.addr == addr) {
            return Ok(());
        }
        let id =
            self.swarm.listen_on(addr.clone()).map_err(|e| NetError::Listen { addr: relay, reason: e.to_string() })?;
        debug!(%addr, "listening through a relay");
        self.relayed.push(RelayedListen { addr, relay: relay_id, listener: Some(id), failures: 0 });
        Ok(())
    }

    /// Where each open connection to `peer` goes: the address dialed or dialed from for a direct
    /// one, the circuit for a relayed one (it contains `/p2p-circuit`).
    pub fn connection_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.connections.values().filter(|(p, _)| p == peer).map(|(_, addr)| addr.clone()).collect()
    }

    /// Opens and accepts the swarm's blob streams ([`super::blobs`]).
    pub fn blob_streams(&self) -> libp2p_stream::Control {
        self.swarm.behaviour().blobs.new_control()
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// How this node is connected to `peer` now (None: not connected): direct if any connection
    /// is (a hole punch if DCUtR made one of them: DCUtR tells the side that dialed the relayed
    /// connection), else through the relay of a relayed one.
    pub fn path(&self, peer: &PeerId) -> Option<Path> {
        let mine = || self.connections.iter().filter(move |(_, (p, _))| p == peer);
        if mine().any(|(_, (_, addr))| !is_circuit(addr)) {
            let hole_punched = self.hole_punched.get(peer).is_some_and(|c| self.connections.contains_key(c));
            return Some(Path::Direct { hole_punched });
        }
        mine().find_map(|(_, (_, addr))| relay_of(addr)).map(|relay| Path::Relayed { relay })
    }

    /// What AutoNAT found (or the configuration forced), and the relays this node holds a
    /// reservation on by itself (those of `--listen …/p2p-circuit` are not among them).
    pub fn reachability(&self) -> (Reachability, Vec<PeerId>) {
        (self.relays.reachability(), self.relays.held())
    }

    pub fn hole_punches(&self) -> HolePunches {
        self.hole_punches
    }

    /// Bytes received and sent over every libp2p connection so far (TCP payload, below pnet).
    pub fn traffic(&self) -> (u64, u64) {
        (self.traffic.bytes_in.load(Ordering::Relaxed), self.traffic.bytes_out.load(Ordering::Relaxed))
    }

    /// The addresses listened on so far (port 0 resolved once [`NetEvent::Listening`] came).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.swarm.listeners().cloned().collect()
    }

    /// Subscribes to `topic` (a DAG's), so its gossip arrives as [`NetEvent::Gossip`]. Idempotent.
    pub fn subscribe(&mut self, topic: Topic) {
        let ident = topic.ident();
        if self.topics.insert(ident.hash(), topic).is_none()
            && let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&ident)
        {
            warn!(%topic, "cannot subscribe: {e}");
            self.topics.remove(&ident.hash());
        }
    }

    /// Leaves a topic [`Net::subscribe`] joined (never one of [`Topic::ALL`]).
    pub fn unsubscribe(&mut self, topic: Topic) {
        if Topic::ALL.contains(&topic) {
            return;
        }
        let ident = topic.ident();
        if self.topics.remove(&ident.hash()).is_some() {
            self.swarm.behaviour_mut().gossipsub.unsubscribe(&ident);
        }
    }

    /// The DAG topics subscribed to.
    pub fn dag_topics(&self) -> impl Iterator<Item = Hash> + '_ {
        self.topics.values().filter_map(|t| match t {
            Topic::Dag(d) => Some(*d),
            _ => None,
        })
    }

    /// The connected peers that subscribe to `topic`, as gossipsub learnt it from them.
    pub fn topic_peers(&self, topic: Topic) -> Vec<PeerId> {
        let hash = topic.ident().hash();
        self.swarm.behaviour().gossipsub.all_peers().filter(|(_, t)| t.contains(&&hash)).map(|(p, _)| *p).collect()
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

    /// Dials `peer` at `addrs` (several at once, the first connection wins) unless it is connected
    /// or being dialed already: announcements and heartbeats from a peer come every few seconds,
    /// and a dial per announced address each time would open a relay circuit per address per
    /// announcement (libp2p-relay refuses more than 10 at once on one connection to a relay).
    pub fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        debug!(%peer, ?addrs, "dialing a peer");
        if self.dials.len() >= DIALS_REMEMBERED_MAX && !self.dials.contains_key(&peer) {
            self.dials.clear();
        }
        let retries = self.dials.get(&peer).filter(|d| d.addrs == addrs).map_or(0, |d| d.retries);
        self.dials.insert(peer, PeerDial { addrs: addrs.clone(), retries, deferred: false });
        let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::NoAddresses) => Ok(()),
            Err(DialError::DialPeerConditionFalse(_)) => {
                if !self.swarm.is_connected(&peer)
                    && let Some(d) = self.dials.get_mut(&peer)
                {
                    d.deferred = true;
                }
                Ok(())
            }
            Err(e) => Err(NetError::Dial { addr: Multiaddr::empty().with(Protocol::P2p(peer)), reason: e.to_string() }),
        }
    }

    /// Addresses a peer announced (relayed ones included): the swarm dials it there when it
    /// needs a connection it lacks (a blob stream to a runner this node never connected to; the
    /// DHT's table keeps them).
    pub fn add_peer_addresses(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        for addr in addrs {
            kad.add_address(&peer, addr);
        }
    }

    /// Closes every connection to `peer` and refuses new ones (both directions) until
    /// [`Net::unblock`].
    pub fn block(&mut self, peer: PeerId) {
        debug!(%peer, "blocking");
        self.swarm.behaviour_mut().blocked.block_peer(peer);
    }

    /// Whether `peer` is blocked ([`Net::block`], or refused for its protocol).
    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        self.swarm.behaviour().blocked.blocked_peers().contains(peer)
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
            let cut_off_at = self.cut_off.front().map(|(at, _)| *at);
            let presume_at = self.presume_private_at;
            let event = tokio::select! {
                event = self.swarm.select_next_some() => event,
                _ = tokio::time::sleep_until(presume_at.unwrap_or_else(tokio::time::Instant::now)), if presume_at.is_some() => {
                    self.presume_private();
                    continue;
                }
                _ = tokio::time::sleep_until(cut_off_at.unwrap_or_else(tokio::time::Instant::now)), if cut_off_at.is_some() => {
                    if let Some((_, peer)) = self.cut_off.pop_front()
                        && self.refused.contains_key(&peer)
                    {
                        // Closes its connections, and refuses new ones both ways until forgiven.
                        self.swarm.behaviour_mut().blocked.block_peer(peer);
                    }
                    continue;
                }
                _ = self.rejoin.tick() => {
                    self.forgive_refused();
                    self.rejoin_if_alone();
                    self.relisten(None);
                    self.reserve_relays();
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
            // A join address that led to a peer refused for its protocol waits out the refusal.
            let joined = addr.to_string();
            let refused = self.refused.values().flat_map(|(_, addrs)| addrs).any(|a| {
                let a = a.to_string();
                a.starts_with(&joined) || joined.starts_with(&a)
            });
            if refused {
                continue;
            }
            if let Err(e) = self.dial(addr) {
                debug!("rejoin: {e}");
            }
        }
    }

    /// Takes back the peers refused for their protocol longer than [`REFUSED_RETRY_S`] ago (their
    /// node may have been updated); each is judged again when it connects.
    fn forgive_refused(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<PeerId> = self.refused.iter().filter(|(_, (until, _))| *until <= now).map(|(p, _)| *p).collect();
        for peer in due {
            self.refused.remove(&peer);
            debug!(%peer, "refused for its protocol {REFUSED_RETRY_S} s ago: accepted and dialed again");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
    }

    /// Judges a peer's protocol as identify tells it: another one is refused (disconnected, not
    /// dialed nor accepted for [`REFUSED_RETRY_S`], cut off after [`REFUSAL_GRACE_MS`]), with one
    /// line at ERROR level per peer.
    fn judge_protocol(&mut self, peer: PeerId, info: &identify::Info) -> Option<NetEvent> {
        let error = shoal_mesh::wire::check_protocol(self.protocol, &info.protocol_version).err()?;
        let addrs = self.connection_addrs(&peer);
        let refusal = Refusal { peer, addr: addrs.first().cloned(), agent: info.agent_version.clone(), error };
        if self.refusal_logged.len() >= REFUSED_PEERS_MAX {
            self.refusal_logged.clear();
        }
        let addr = refusal.addr.as_ref().map_or_else(|| "an unknown address".to_string(), ToString::to_string);
        if self.refusal_logged.insert(peer) {
            tracing::error!(
                %peer, %addr, agent = %refusal.agent,
                "refused peer {peer} at {addr} ({}): {}; it is refused for {REFUSED_RETRY_S} s, then tried again",
                refusal.agent, refusal.error
            );
        } else {
            debug!(%peer, %addr, "refused again: {}", refusal.error);
        }
        let now = tokio::time::Instant::now();
        if self.refused.len() >= REFUSED_PEERS_MAX
            && !self.refused.contains_key(&peer)
            && let Some(first) = self.refused.iter().min_by_key(|(_, (until, _))| *until).map(|(p, _)| *p)
        {
            // The refusal nearest its end ends now: the list stays bounded whoever connects.
            self.refused.remove(&first);
            self.swarm.behaviour_mut().blocked.unblock_peer(first);
        }
        if self.refused.insert(peer, (now + Duration::from_secs(REFUSED_RETRY_S), addrs)).is_none() {
            self.cut_off.push_back((now + Duration::from_millis(REFUSAL_GRACE_MS), peer));
        }
        Some(NetEvent::Refused(refusal))
    }

    /// Listens again through the relays whose reservation was lost (`only`: through that relay).
    fn relisten(&mut self, only: Option<PeerId>) {
        for r in self.relayed.iter_mut().filter(|r| r.listener.is_none() && only.is_none_or(|p| p == r.relay)) {
            match self.swarm.listen_on(r.addr.clone()) {
                Ok(id) => r.listener = Some(id),
                Err(e) => debug!(addr = %r.addr, "cannot listen through the relay again: {e}"),
            }
        }
    }

    fn handle(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<NetEvent> {
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                // A relayed address comes as `.../p2p-circuit/p2p/<our id>`; reported like a direct
                // one, without our id (callers append it).
                let mut address = address;
                if address.iter().last() == Some(Protocol::P2p(*self.swarm.local_peer_id())) {
                    address.pop();
                }
                if let Some(r) = self.relayed.iter_mut().find(|r| r.listener == Some(listener_id)) {
                    r.failures = 0;
                }
                if let Some(relay) = self.relays.accepted(listener_id) {
                    info!(%relay, %address, "private: reachable through this relay");
                }
                // A relay names its external addresses in reservations: offer where it listens.
                let loopback = address.iter().any(|p| {
                    matches!(p, Protocol::Ip4(ip) if ip.is_loopback())
                        || matches!(p, Protocol::Ip6(ip) if ip.is_loopback())
                });
                if self.relay_server && !is_circuit(&address) && !(loopback && self.wildcard.contains(&listener_id)) {
                    self.swarm.add_external_address(address.clone());
                }
                if !self.reported.insert(address.clone()) {
                    return None;
                }
                debug!(%address, "listening");
                Some(NetEvent::Listening(address))
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                debug!(%address, "no longer listening");
                if self.relay_server {
                    self.swarm.remove_external_address(&address);
                }
                None
            }
            SwarmEvent::ListenerClosed { listener_id, reason, addresses } => {
                let gone = self.not_listening(&addresses);
                if let Some(relay) = self.relays.closed(listener_id, tokio::time::Instant::now()) {
                    self.on_relay_lost(relay, &reason);
                    return gone;
                }
                if let Some(r) = self.relayed.iter_mut().find(|r| r.listener == Some(listener_id)) {
                    r.listener = None;
                    r.failures += 1;
                    let why = match &reason {
                        Ok(()) => "the relay could not be reached, or the connection to it closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    // The first failure may be the benign race below: a warning only when the next
                    // attempt fails too.
                    if r.failures == 2 {
                        warn!(
                            relay = %r.addr,
                            "not listening through this relay ({why}); trying again every {REJOIN_INTERVAL_S} s \
                             (the relay must hold the mesh key and run with --relay-server)"
                        );
                    } else {
                        debug!(relay = %r.addr, "still not listening through this relay: {why}");
                    }
                    // The reservation's own dial to the relay is refused while another dial to it
                    // (a join address) is under way; once connected, reserving uses that connection.
                    // Right away only after a first failure, so a relay that refuses is not hammered.
                    let relay = r.relay;
                    if r.failures == 1 && self.swarm.is_connected(&relay) {
                        self.relisten(Some(relay));
                    }
                }
                gone
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                // For a relayed inbound connection, the remote address is only `/p2p/<peer>`: keep
                // the circuit it came through instead.
                let path = match &endpoint {
                    libp2p::core::ConnectedPoint::Listener { local_addr, .. } if endpoint.is_relayed() => {
                        local_addr.clone()
                    }
                    _ => endpoint.get_remote_address().clone(),
                };
                debug!(peer = %peer_id, addr = %path, "connected");
                self.connections.insert(connection_id, (peer_id, path));
                // A relay we lost (or never got) a reservation on is back: reserve now.
                if !endpoint.is_relayed() {
                    self.relisten(Some(peer_id));
                    if self.relays.is_relay(&peer_id) {
                        self.relays.reachable_again(&peer_id);
                        self.reserve_relays();
                    }
                }
                self.dials.remove(&peer_id);
                (num_established.get() == 1).then_some(NetEvent::Connected(peer_id))
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                let closed = self.connections.remove(&connection_id);
                // gossipsub tells a peer what we subscribe to over its first connection only. A
                // peer that restarted while its old connection lingered (a PC powered off, a
                // cable pulled) comes back on a second connection and never learns it: it would
                // send us none of its gossip for as long as that connection lives. So when a
                // peer's oldest connection closes and newer ones remain, close those too: the
                // next connection (its rejoin, or our dial) starts gossipsub afresh.
                // Not when a relayed one closes while a direct one remains: that is a hole punch
                // replacing the circuit (`on_hole_punch` closes it at the end that dialed it; the
                // other end learns only this way), not a restart.
                let oldest =
                    self.connections.iter().filter(|(_, (p, _))| *p == peer_id).all(|(c, _)| *c > connection_id);
                let replaced = closed.is_some_and(|(_, addr)| is_circuit(&addr))
                    && self.connections.values().any(|(p, addr)| *p == peer_id && !is_circuit(addr));
                if self.hole_punched.get(&peer_id) == Some(&connection_id) {
                    self.hole_punched.remove(&peer_id);
                }
                if num_established > 0 && oldest && !replaced {
                    debug!(peer = %peer_id, "its first connection closed: reconnecting afresh");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
                // A peer refused for its protocol whose end cut the connection first: refused from
                // now on, not only once our grace is over (a dial meanwhile would connect again).
                if num_established == 0 && self.refused.contains_key(&peer_id) {
                    self.swarm.behaviour_mut().blocked.block_peer(peer_id);
                }
                (num_established == 0).then_some(NetEvent::Disconnected(peer_id))
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, peer_id, .. } => {
                match &error {
                    libp2p::swarm::ListenError::Denied { cause } => {
                        if peer_id.is_some_and(|p| self.refused.contains_key(&p)) {
                            debug!(addr = %send_back_addr, "refused a connection: {}", denial(cause));
                        } else {
                            warn!(addr = %send_back_addr, "refused a connection: {}", denial(cause));
                        }
                    }
                    // A wrong mesh key shows here, as a failed or timed-out handshake.
                    _ => debug!(peer = ?peer_id, addr = %send_back_addr, "incoming connection failed: {error}"),
                }
                None
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                match &error {
                    libp2p::swarm::DialError::Denied { cause } => {
                        if peer_id.is_some_and(|p| self.refused.contains_key(&p)) {
                            debug!("refused to connect: {}", denial(cause));
                        } else {
                            warn!("refused to connect: {}", denial(cause));
                        }
                    }
                    _ => debug!(peer = ?peer_id, "dial failed: {error}"),
                }
                let aborted = matches!(error, DialError::Aborted);
                if let Some(peer) = peer_id
                    && !self.swarm.is_connected(&peer)
                    && let Some(d) = self.dials.get_mut(&peer)
                    && (aborted || d.deferred)
                    && d.retries < DIAL_RETRIES
                {
                    d.retries += 1;
                    let addrs = d.addrs.clone();
                    debug!(%peer, aborted, "our dial did not get its chance: dialing again");
                    let _ = self.dial_peer(peer, addrs);
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
                let Some(&topic) = self.topics.get(&message.topic) else {
                    debug!(topic = %message.topic, "gossip on a topic we do not know");
                    return None;
                };
                // Signed messages always carry their author.
                let from = message.source.unwrap_or(propagation_source);
                Some(NetEvent::Gossip { topic, from, data: message.data })
            }
            BehaviourEvent::Gossipsub(_) => None,
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if let Some(refused) = self.judge_protocol(peer_id, &info) {
                    return Some(refused);
                }
                self.note_relay(peer_id, &info);
                // identify hands DCUtR this address with our listen port in place of a port that
                // differs; the NAT may have had to give our listen port another one.
                if !is_circuit(&info.observed_addr) {
                    self.swarm.behaviour_mut().observed.report(info.observed_addr.clone());
                }
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
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if renewal {
                    debug!(relay = %relay_peer_id, "relay reservation renewed");
                } else {
                    info!(relay = %relay_peer_id, "reachable through a relay");
                }
                None
            }
            BehaviourEvent::RelayClient(event) => {
                debug!("relay client: {event:?}");
                None
            }
            BehaviourEvent::Relay(event) => {
                debug!("relay: {event:?}");
                None
            }
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => {
                self.on_hole_punch(remote_peer_id, result);
                None
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                self.on_reachability(old, new);
                None
            }
            BehaviourEvent::Autonat(autonat::Event::OutboundProbe(probe)) => {
                self.on_probe(probe);
                None
            }
            BehaviourEvent::Autonat(event) => {
                debug!("autonat: {event:?}");
                None
            }
            BehaviourEvent::Blocked(never) | BehaviourEvent::Allowed(never) => match never {},
            BehaviourEvent::Blobs(()) => None,
        }
    }
}

/// Nodes behind NAT: AutoNAT's verdict, relays reserved on by themselves, hole punches.
impl Net {
    /// Reserves on relays while private, until [`RELAYS_WANTED`] are held or asked for (counting
    /// those named in the configuration). The address arrives as [`NetEvent::Listening`] once the
    /// relay accepts.
    fn reserve_relays(&mut self) {
        let explicit: HashSet<PeerId> = self.relayed.iter().map(|r| r.relay).collect();
        let swarm = &self.swarm;
        let wanted = self.relays.wanted(tokio::time::Instant::now(), &explicit, |p| swarm.is_connected(p));
        for (relay, addr) in wanted {
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    debug!(%relay, %addr, "private: reserving a slot on a relay");
                    self.relays.reserving(relay, id);
                }
                Err(e) => debug!(%relay, %addr, "cannot listen through this relay: {e}"),
            }
        }
    }

    /// A reservation of ours ended (refused, the relay unreachable or gone): another relay takes
    /// its place now; this one is tried again after [`RELAY_RETRY_S`].
    fn on_relay_lost(&mut self, relay: PeerId, reason: &Result<(), std::io::Error>) {
        let why = match reason {
            Ok(()) => "the relay could not be reached, or the connection to it closed".to_string(),
            Err(e) => e.to_string(),
        };
        if self.relays.reachability() == Reachability::Private {
            info!(%relay, "not reachable through this relay any more ({why}); reserving on another, this one again in {RELAY_RETRY_S} s");
        }
        self.reserve_relays();
    }

    /// Identify says what a peer speaks: one that serves as a relay becomes a candidate, at its
    /// addresses that others can dial (or the one we are connected to it at), and an AutoNAT
    /// server (a node runs `--relay-server` because it is reachable).
    fn note_relay(&mut self, peer: PeerId, info: &identify::Info) {
        if !info.protocols.contains(&relay::HOP_PROTOCOL_NAME) || self.relays.is_relay(&peer) {
            return;
        }
        let connected_at: Vec<Multiaddr> = self
            .connection_addrs(&peer)
            .into_iter()
            .filter(|a| !is_circuit(a))
            .map(|mut a| {
                if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                    a.pop();
                }
                a
            })
            .collect();
        let mut addrs: Vec<Multiaddr> =
            info.listen_addrs.iter().filter(|a| connected_at.contains(a)).cloned().collect();
        addrs.extend(
            info.listen_addrs
                .iter()
                .filter(|a| !connected_at.contains(a) && relay_dialable(a, self.private_ips))
                .cloned(),
        );
        if addrs.is_empty() {
            debug!(%peer, addrs = ?info.listen_addrs, "a relay with no address others can dial: not used");
            return;
        }
        if self.relays.learn(peer, addrs.clone()) {
            debug!(%peer, ?addrs, "a relay of the mesh");
            self.swarm.behaviour_mut().autonat.add_server(peer, None);
            self.reserve_relays();
        }
    }

    /// A probe of ours was sent or answered: while the verdict is unknown, a dial-back that has not
    /// come within [`AUTONAT_DIAL_BACK_PATIENCE_S`] makes the node presume it is private.
    fn on_probe(&mut self, probe: autonat::OutboundProbeEvent) {
        debug!("autonat: {probe:?}");
        match probe {
            autonat::OutboundProbeEvent::Request { .. } if self.relays.reachability() == Reachability::Unknown => {
                self.presume_private_at
                    .get_or_insert(tokio::time::Instant::now() + Duration::from_secs(AUTONAT_DIAL_BACK_PATIENCE_S));
            }
            autonat::OutboundProbeEvent::Request { .. } => {}
            autonat::OutboundProbeEvent::Response { .. } | autonat::OutboundProbeEvent::Error { .. } => {
                self.presume_private_at = None;
            }
        }
    }

    fn presume_private(&mut self) {
        self.presume_private_at = None;
        if self.relays.presume_private() {
            info!(
                "no dial-back within {AUTONAT_DIAL_BACK_PATIENCE_S} s (AutoNAT): presumed private, reserving on up to \
                 {RELAYS_WANTED} relays until a probe says otherwise"
            );
            self.reserve_relays();
        }
    }

    /// AutoNAT's verdict changed: private, reserve on relays; public, give them up.
    fn on_reachability(&mut self, old: autonat::NatStatus, new: autonat::NatStatus) {
        let now = match &new {
            autonat::NatStatus::Public(addr) => {
                info!(%addr, "reachable from outside (AutoNAT): public, no relay needed");
                Reachability::Public
            }
            autonat::NatStatus::Private => {
                info!("not reachable from outside (AutoNAT): private, reached through up to {RELAYS_WANTED} relays");
                Reachability::Private
            }
            autonat::NatStatus::Unknown => {
                debug!(?old, "reachability from outside unknown again (AutoNAT)");
                Reachability::Unknown
            }
        };
        for listener in self.relays.set_reachability(now) {
            self.swarm.remove_listener(listener);
        }
        self.reserve_relays();
    }

    /// DCUtR's attempt on a relayed connection ended. A direct connection replaces the relayed one
    /// (closed, so traffic leaves the relay); a failed one leaves it as it is.
    fn on_hole_punch(&mut self, peer: PeerId, result: Result<ConnectionId, dcutr::Error>) {
        match result {
            Ok(direct) => {
                self.hole_punches.upgraded += 1;
                self.hole_punched.insert(peer, direct);
                let relayed: Vec<ConnectionId> = self
                    .connections
                    .iter()
                    .filter(|(_, (p, addr))| *p == peer && is_circuit(addr))
                    .map(|(id, _)| *id)
                    .collect();
                info!(%peer, "hole punched: a direct connection replaces the relayed one");
                for id in relayed {
                    self.swarm.close_connection(id);
                }
            }
            Err(e) => {
                self.hole_punches.failed += 1;
                info!(%peer, "no direct connection (the NATs between us allow no hole punch), staying relayed: {e}");
            }
        }
    }

    /// The relayed addresses of a listener that closed, reported so the node stops announcing
    /// them (one at most per listener).
    fn not_listening(&mut self, addresses: &[Multiaddr]) -> Option<NetEvent> {
        let me = *self.swarm.local_peer_id();
        let mut gone = None;
        for addr in addresses.iter().filter(|a| is_circuit(a)) {
            let mut addr = addr.clone();
            if addr.iter().last() == Some(Protocol::P2p(me)) {
                addr.pop();
            }
            if self.reported.remove(&addr) {
                gone = Some(NetEvent::NotListening(addr));
            }
        }
        gone
    }
}

/// The relay a circuit address goes through: the peer id just before `/p2p-circuit`.
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// Whether an address goes through a relay.
fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// `<relay>/p2p/<relay id>/p2p-circuit` from a relay's address, with or without the circuit part,
/// and the relay's peer id.
fn circuit_listen_addr(relay: &Multiaddr) -> Result<(Multiaddr, PeerId), NetError> {
    let mut addr = relay.clone();
    if addr.iter().last() == Some(Protocol::P2pCircuit) {
        addr.pop();
    }
    match addr.iter().last() {
        Some(Protocol::P2p(relay_id)) if addr.iter().count() >= 2 && !is_circuit(&addr) => {
            Ok((addr.with(Protocol::P2pCircuit), relay_id))
        }
        _ => Err(NetError::Listen {
            addr: relay.clone(),
            reason: "a relay address is the relay's own address ending in its peer id, then /p2p-circuit".into(),
        }),
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
