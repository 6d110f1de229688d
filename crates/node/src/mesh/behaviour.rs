//! The swarm's behaviours, one per concern, combined with `#[derive(NetworkBehaviour)]`, and
//! how each is configured (the limits are [`super::net`]'s constants).

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, allow_block_list, autonat, dcutr, gossipsub, identify, identity, kad, mdns, ping, relay,
};

use super::codec::{SyncRequest, SyncResponse};
use super::net::{
    AUTONAT_BOOT_DELAY_S, AUTONAT_REFRESH_S, AUTONAT_RETRY_S, AUTONAT_THROTTLE_SERVER_S, GOSSIP_BYTES_MAX,
    GOSSIP_HEARTBEAT_INITIAL_MS, GOSSIP_HEARTBEAT_MS, GOSSIP_MESH_N, GOSSIP_MESH_N_HIGH, GOSSIP_MESH_N_LOW,
    GOSSIP_MESH_OUTBOUND_MIN, GOSSIP_MESSAGE_ID_BYTES, KAD_PROTOCOL, PING_INTERVAL_S, RELAY_CIRCUIT_BURST,
    RELAY_CIRCUIT_REFILL_S, RELAY_CIRCUIT_S, RELAY_CIRCUITS_MAX, RELAY_CIRCUITS_PER_PEER_MAX, RELAY_RESERVATION_BURST,
    RELAY_RESERVATION_REFILL_S, RELAY_RESERVATIONS_MAX, SYNC_REQUEST_BYTES_MAX, SYNC_RESPONSE_BYTES_MAX,
    SYNC_TIMEOUT_S, Topic,
};

/// The swarm's behaviours. Each field's events arrive as a variant of the generated
/// `BehaviourEvent`.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// Deny list first: a blocked peer is refused before any other behaviour sees it.
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Reservations on relays and circuits through them (the other half of the relay transport).
    pub(super) relay_client: relay::client::Behaviour,
    /// Serving as a relay ([`NetConfig::relay_server`]).
    pub(super) relay: Toggle<relay::Behaviour>,
    /// Observed addresses as they were observed, for DCUtR ([`super::observed`]).
    pub(super) observed: super::observed::Observed,
    pub(super) dcutr: dcutr::Behaviour,
    pub(super) autonat: autonat::Behaviour,
    /// Blob streams (`/shoal/blobs/1`, [`super::blobs`]).
    pub(super) blobs: libp2p_stream::Behaviour,
}

impl Behaviour {
    pub(super) fn new(
        key: &identity::Keypair,
        allow: Option<BTreeSet<PeerId>>,
        mdns_on: bool,
        relay_client: relay::client::Behaviour,
        relay_server: bool,
        autonat_private_ips: bool,
        protocol: u32,
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
            // A message's id is 16 bytes of BLAKE3 of its data, not libp2p's default (the source's
            // base58 id and its sequence number as text, ~70 bytes): every IHAVE names each
            // recent message by id, so the id's size is much of gossip's idle cost. Identical
            // data from two sources is one message, which facts (idempotent) allow.
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(&blake3::hash(&m.data).as_bytes()[..GOSSIP_MESSAGE_ID_BYTES])
            })
            .build()?;
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)?;
        for topic in Topic::ALL {
            gossipsub.subscribe(&topic.ident())?;
        }

        let identify = identify::Behaviour::new(
            // The mesh protocol version: a peer of another one is refused (`Net::judge_protocol`).
            identify::Config::new(shoal_mesh::wire::protocol_name(protocol), key.public())
                .with_agent_version(format!("shoal/{}", env!("CARGO_PKG_VERSION"))),
        );

        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(StreamProtocol::new(KAD_PROTOCOL)),
        );
        // Server mode from the start: AutoNAT confirms only global addresses, and only after its
        // boot delay, so on a LAN or loopback a client-mode node would answer no DHT query.
        kad.set_mode(Some(kad::Mode::Server));

        let codec = request_response::cbor::codec::Codec::<SyncRequest, SyncResponse>::default()
            .set_request_size_maximum(SYNC_REQUEST_BYTES_MAX)
            .set_response_size_maximum(SYNC_RESPONSE_BYTES_MAX);
        let sync = request_response::Behaviour::with_codec(
            codec,
            [(StreamProtocol::try_from_owned(super::net::sync_protocol(protocol))?, ProtocolSupport::Full)],
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

        let relay = relay_server.then(|| {
            let burst = NonZeroU32::new(RELAY_CIRCUIT_BURST).expect("a positive constant");
            let reservations = NonZeroU32::new(RELAY_RESERVATION_BURST).expect("a positive constant");
            relay::Behaviour::new(
                peer_id,
                relay::Config {
                    max_circuits: RELAY_CIRCUITS_MAX,
                    max_circuits_per_peer: RELAY_CIRCUITS_PER_PEER_MAX,
                    max_circuit_duration: Duration::from_secs(RELAY_CIRCUIT_S),
                    // 0 is no limit (libp2p's default, 128 KiB, is for public relays of strangers).
                    max_circuit_bytes: 0,
                    circuit_src_rate_limiters: Vec::new(),
                    max_reservations: RELAY_RESERVATIONS_MAX,
                    reservation_rate_limiters: Vec::new(),
                    ..relay::Config::default()
                }
                .circuit_src_per_peer(burst, Duration::from_secs(RELAY_CIRCUIT_REFILL_S))
                .reservation_rate_per_peer(reservations, Duration::from_secs(RELAY_RESERVATION_REFILL_S)),
            )
        });

        let autonat = autonat::Behaviour::new(peer_id, autonat_config(autonat_private_ips));

        Ok(Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            allowed: Toggle::from(allowed),
            gossipsub,
            identify,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(PING_INTERVAL_S))),
            kad,
            sync,
            mdns: Toggle::from(mdns),
            relay_client,
            relay: Toggle::from(relay),
            observed: super::observed::Observed::default(),
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat,
            blobs: libp2p_stream::Behaviour::new(),
        })
    }
}

/// AutoNAT's settings. A probe asks a peer to dial back our observed IP at our listen and observed
/// ports; no fixed servers. The timings let a node learn it is private within seconds of meeting a
/// relay (libp2p's defaults wait 15 s, then 90 s between probes) and see a change within a minute.
///
/// Servers: with only global IPs (the default), any connected peer seen at a global IP. With
/// `private_ips` (a lab, a private WAN), a peer on our own LAN would confirm a LAN address nobody
/// beyond it can dial, so probes go only to the relays [`super::net::Net`] adds as servers: a
/// node runs `--relay-server` because it is reachable.
fn autonat_config(private_ips: bool) -> autonat::Config {
    autonat::Config {
        boot_delay: Duration::from_secs(AUTONAT_BOOT_DELAY_S),
        retry_interval: Duration::from_secs(AUTONAT_RETRY_S),
        refresh_interval: Duration::from_secs(AUTONAT_REFRESH_S),
        throttle_server_period: Duration::from_secs(AUTONAT_THROTTLE_SERVER_S),
        use_connected: !private_ips,
        only_global_ips: !private_ips,
        ..autonat::Config::default()
    }
}
