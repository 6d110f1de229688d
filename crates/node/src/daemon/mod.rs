//! `shoal node`: one peer of a mesh. It drives the sans-IO machines of `shoal-mesh` (the
//! scheduler [`NodeCore`], anti-entropy [`Sync`], heartbeats and the failure detector
//! [`Liveness`], the choice of replica holders [`Replicas`], the lost-output policy) from one
//! `tokio::select!` loop that owns them: it only moves bytes and time in and out of them, around
//! the libp2p swarm (facts and announcements by gossipsub, anti-entropy by request-response), the
//! iroh endpoint serving this store's blobs, the job executor, and the HTTP API, which talks to
//! the loop only through [`Cmd`]s.
//!
//! Two clocks: the scheduler core gets Unix ms (its hybrid logical clock and leases are shared
//! with other nodes), from [`crate::clock`]: the system's, or with `--clock-from-mesh` the local
//! clock plus the median offset of the peers' announced clocks ([`MeshClock`]), and then no claim
//! before a peer's time is heard; sync and liveness get ms since this node started (a monotonic
//! clock, so a change of the wall clock never makes every peer look dead).
//!
//! # Layout
//! - this file: options, start-up (identity, mesh key, ledger reloaded from sled), the loop, and
//!   what it does after every event (persist and gossip facts, start and stop jobs, fetch DAGs).
//! - `cmd`: the commands the API sends the loop ([`Cmd`]) and how the loop answers them.
//! - `peers`: the loop's side of the mesh: connections, gossip, anti-entropy, announcements.
//! - `views`: what the loop shows of its state (DAGs and jobs, peers, facts, events, metrics).
//! - `keys`: the mesh key file.
//! - `api`: the HTTP API (axum), which asks the loop by [`Cmd`]s.
//! - `auth`: who may use it: Host and Origin, body types, bearer tokens and their scopes.
//! - `exec`: runs one claimed job: fetches its DAG's upstream records, inputs and image from
//!   peers, then runs it as `shoal run` does.
//! - `pin`: turns a submitted DAG into one whose every reference is a hash.
//! - `hold`: before a submit is acknowledged, other nodes hold the blobs the DAG needs.
//! - `local`: the routes a CLI uses on the home this node holds (`shoal run`, `get`, `image`...).
//! - `serve`: the API's accept loop (connection cap, header timeout).
//! - `testing` (tests only): the router and server with the test in the loop's place.

mod api;
pub mod auth;
mod budget;
mod cmd;
mod exec;
mod hold;
mod keys;
mod local;
mod peers;
pub mod pin;
pub mod serve;
#[cfg(test)]
pub(crate) mod testing;
mod topics;
mod uploads;
mod verify;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use crate::clock::now_unix_ms;

use crate::mesh::net::{Net, NetConfig, Refusal, SyncRequest, Topic};
use anyhow::{Context, Result, anyhow, bail};
use libp2p::{Multiaddr, PeerId};
use shoal_blobs::Store;
use shoal_blobs::net::BlobNode;
use shoal_dag::{Dag, Hash};
use shoal_mesh::Settings;
use shoal_mesh::capabilities::Capabilities;
use shoal_mesh::clock::MeshClock;
use shoal_mesh::core::{Action, Finished, NodeCore};
use shoal_mesh::ledger::{Body, Fact, JobState, NodeId};
use shoal_mesh::liveness::Liveness;
use shoal_mesh::replicas::{Copy, Replicas};
use shoal_mesh::sync::{CatchUp, CatchUpEnd, Sync};
use shoal_mesh::wire::{self, Announce, DagText, FactBatch, SyncReq};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::identity;
use crate::run::{RunOptions, RunSource, Runner};

/// Peers a node dials directly when it hears of them: a mesh up to this size is fully connected,
/// so every heartbeat is one hop (`shoal_mesh::liveness`); beyond it a node hears the others by
/// gossip (their mesh announcements, facts).
const DIRECT_PEERS_MAX: usize = 64;
/// Commands from the API waiting for the loop.
const COMMANDS_QUEUED_MAX: usize = 256;
/// Events kept for slow SSE subscribers before they miss some.
const EVENTS_QUEUED_MAX: usize = 4096;
/// A DAG's content as its fetch ended: the DAG, or why it could not be had.
type FetchedDag = (Hash, Result<Dag, String>);

/// How long a DAG whose content could not be fetched waits before the next try, in ms.
const DAG_FETCH_RETRY_MS: u64 = 1_000;
/// Copies of other nodes' outputs being fetched at once.
const REPLICATIONS_IN_FLIGHT_MAX: usize = 4;
/// Attempts a job gets before it fails for good, unless the submitter says otherwise.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 3;
/// How long a submit may take to have another node hold the DAG's blobs before it is refused,
/// unless the node is told otherwise (`--submit-replication-timeout-s`), in seconds.
pub const SUBMIT_REPLICATION_TIMEOUT_S_DEFAULT: u64 = 300;

#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub listen: Vec<Multiaddr>,
    pub join: Vec<Multiaddr>,
    pub http: SocketAddr,
    pub blobs: SocketAddr,
    /// The mesh key file (`shoal mesh init`); default `$SHOAL_HOME/mesh.key`.
    pub mesh_key: PathBuf,
    pub allow: Option<BTreeSet<PeerId>>,
    pub mdns: bool,
    /// Serve as a relay for mesh peers behind NAT (`--relay-server`).
    pub relay_server: bool,
    /// AutoNAT confirms non-global addresses too, asking relays only (`--autonat-private-ips`).
    pub autonat_private_ips: bool,
    pub run: RunOptions,
    pub labels: BTreeMap<String, String>,
    /// Speed per core announced to the mesh (see `Capabilities::speed`); None measures it.
    pub speed: Option<u32>,
    /// Memory offered to the mesh, in bytes (`--memory`); None (or more than the machine has)
    /// offers all of it.
    pub memory_bytes: Option<u64>,
    /// The mesh protocol's settings: `--replicas` (nodes that keep a copy of every output, the
    /// runner included; a submitted DAG's images and inputs are held by `replicas - 1` other
    /// nodes, at least one, before the submit is acknowledged), `--lease-ms`,
    /// `--claim-stagger-ms`; the rest as `Settings::default()`.
    pub settings: Settings,
    /// How long a submit may wait for other nodes to hold the DAG's blobs, in seconds.
    pub submit_replication_timeout_s: u64,
    /// Where to write a JSON line with this node's addresses once it is ready (for scripts).
    pub ready_file: Option<PathBuf>,
    /// Serve `POST /v1/test/block`, which cuts this node off from given peers (partition tests).
    pub test_partitions: bool,
    /// Names (with a port, or any port) the API answers to besides its address and `localhost`
    /// (`--http-host`): the names a reverse proxy or DNS gives it.
    pub http_hosts: Vec<(String, Option<u16>)>,
    /// Require tokens even on loopback (`--http-auth`); always so on other addresses.
    pub http_auth: bool,
    /// The explorer: public or not, and the limits of anonymous runs.
    pub explorer: crate::explorer::PublicOptions,
    /// Connections the HTTP API serves at once, and how long one may take to send its headers.
    pub http_limits: serve::HttpLimits,
    /// Stops the node when notified (an embedded node, `shoal run --join`); signals always do.
    pub shutdown: Option<Arc<tokio::sync::Notify>>,
    /// Largest body of one `POST /v1/blobs`, bytes (`--upload-size-max`).
    pub upload_bytes_max: u64,
    /// Largest DAG file a submit may carry, bytes (`--dag-size-max`).
    pub dag_bytes_max: usize,
    /// The largest upload a CLI using this node's home may send (a file, a directory or an image
    /// archive), in bytes.
    pub local_upload_bytes_max: u64,
    /// Take the mesh's time when this machine's clock is wrong (`--clock-from-mesh`, which the
    /// live image passes when NTP failed): now is the local clock plus the median offset of the
    /// peers' announced clocks, and the node claims no job before it has heard one.
    pub clock_from_mesh: bool,
    /// Which other nodes' results the mesh-wide cache takes (`--trust-node`, `--cache-agree`).
    pub cache_trust: exec::CacheTrust,
    /// The store's budget for blobs, bytes (`--store-size-max`); None: a share of its file
    /// system ([`store_budget_default`]).
    pub store_bytes_max: Option<u64>,
    /// Tests: the protocol version this node claims to speak (`--test-protocol-version`).
    pub protocol: u32,
    /// Tests: how far this machine's clock reads off the system's, in ms (`--test-clock-offset-ms`).
    pub test_clock_offset_ms: i64,
}

/// `--upload-size-max` unless told otherwise, bytes.
pub const UPLOAD_BYTES_MAX_DEFAULT: u64 = 4 << 30;
/// `--dag-size-max` (and `shoal run`'s) unless told otherwise, bytes: a DAG file's located parse
/// takes about 8 times its size in memory.
pub const DAG_BYTES_MAX_DEFAULT: usize = 16 << 20;

pub use local::LOCAL_UPLOAD_BYTES_MAX_DEFAULT;

pub(crate) use crate::mesh::keys::{node_of_peer, peer_id_of_node};
pub use budget::{STORE_SHARE_OF_DISK_PERCENT, store_budget_default};
pub(crate) use cmd::{Cmd, SubmitAck};
pub use exec::CacheTrust;
pub use keys::{read_mesh_key, write_mesh_key};

/// Everything the loop's helpers share with the API.
pub(crate) struct Shared {
    pub store: Store,
    pub blobs: Arc<BlobNode>,
    pub cmds: mpsc::Sender<Cmd>,
    pub events: broadcast::Sender<crate::api::Event>,
    pub node: NodeId,
    /// Trees and images fetched complete (see `exec::fetch_digest`).
    pub complete: exec::Complete,
    /// The process's runner: mesh jobs, explorer runs and local runs all run through it, so
    /// they share its `--cores`.
    pub runner: Arc<Runner>,
    /// How this node's runs go (`--backend`, `--cores`, ...).
    pub run: RunOptions,
    /// The explorer's public access and limits.
    pub explorer: crate::explorer::PublicOptions,
    /// See [`NodeOptions::upload_bytes_max`] and [`NodeOptions::dag_bytes_max`].
    pub upload_bytes_max: u64,
    pub dag_bytes_max: usize,
    /// See [`NodeOptions::local_upload_bytes_max`].
    pub local_upload_bytes_max: u64,
    /// `Settings::lost_recheck_ms`: how long a claimed job waits before it asks again for an
    /// input nobody served.
    pub lost_recheck_ms: u64,
    /// See [`NodeOptions::cache_trust`].
    pub cache_trust: exec::CacheTrust,
}

/// Runs the node until ctrl-c or SIGTERM.
pub async fn run_node(store: Store, opts: NodeOptions) -> Result<()> {
    // Tokens are needed off loopback, and when asked for; checked before anything listens.
    let loopback = opts.http.ip().is_loopback();
    let tokens =
        (opts.http_auth || opts.explorer.enabled || !loopback).then(|| Arc::new(auth::TokenCheck::new(store.home())));
    if let Some(t) = &tokens
        && !loopback
    {
        let home = store.home().display();
        match t.count() {
            Ok(0) => bail!(
                "the HTTP API would listen on {}, which other machines can reach, and no API token exists: create \
                 one first (`SHOAL_HOME={home} shoal token create --name NAME --scope admin`; give its secret to the \
                 API's users), or keep the API on loopback (--http 127.0.0.1:7170)",
                opts.http
            ),
            Ok(_) => {}
            Err(e) => bail!("the HTTP API would listen on {} and its token list cannot be read: {e}", opts.http),
        }
    }
    crate::clock::set_test_offset_ms(opts.test_clock_offset_ms);
    let key = identity::load_or_create(store.home())?;
    let node_id: NodeId = key.verifying_key().to_bytes();
    let psk = read_mesh_key(&opts.mesh_key)?;
    let net = Net::new(NetConfig {
        secret: key.to_bytes(),
        psk,
        listen: opts.listen.clone(),
        join: opts.join.clone(),
        allow: opts.allow.clone(),
        mdns: opts.mdns,
        relay_server: opts.relay_server,
        protocol: opts.protocol,
        autonat_private_ips: opts.autonat_private_ips,
        force_private: false,
    })
    .context("starting the mesh network")?;
    let blobs = Arc::new(store.serve_blobs(key.to_bytes(), opts.blobs).await.context("starting the blob endpoint")?);
    // The second path to peers' blobs, through the mesh, where their iroh endpoint is out of reach.
    blobs.set_stream_dialer(Arc::new(crate::mesh::blobs::MeshDialer::new(net.blob_streams())));
    tokio::spawn(crate::mesh::blobs::serve(net.blob_streams(), blobs.clone()));
    // The cores announced to the mesh are the runner's budget, which explorer and local runs share.
    let runner = Runner::new(&store, &opts.run)?;
    let machine = runner.machine();
    let speed = opts.speed.unwrap_or_else(crate::machine::core_speed);
    let caps = Capabilities {
        arch: crate::machine::dag_arch(),
        cores: runner.cores_total(),
        memory_bytes: opts.memory_bytes.map_or(machine.memory_bytes, |m| m.min(machine.memory_bytes)),
        cpu_flags: machine.cpu_flags.iter().cloned().collect(),
        gpus: crate::gpu::host().iter().map(crate::gpu::Gpu::cap).collect(),
        labels: opts.labels.clone(),
        microvm: opts.run.backend.has_microvm(),
        vm_accel: opts.run.backend.has_microvm().then(|| {
            let (accel, why) = shoal_vm::microvm::Accel::without_probe();
            info!(accel = accel.as_str(), "microVMs under {}: {why}", accel.as_str());
            match accel {
                shoal_vm::microvm::Accel::Kvm => shoal_mesh::capabilities::VmAccel::Kvm,
                shoal_vm::microvm::Accel::Tcg => shoal_mesh::capabilities::VmAccel::Tcg,
            }
        }),
        speed,
        emulated: crate::machine::emulated_arches()
            .iter()
            .map(|(arch, _)| shoal_mesh::capabilities::Emulated {
                arch: *arch,
                speed: speed * shoal_mesh::capabilities::EMULATED_SPEED_PER_MILLE / 1000,
            })
            .collect(),
    };
    let settings = opts.settings.clone();
    let mut core = NodeCore::with_config(key.clone(), caps, settings.core);
    // The DAGs this node submits carry its trust policy: the mesh folds them by it.
    core.set_quorum(opts.cache_trust.agree, opts.cache_trust.trusted.iter().copied());
    if opts.clock_from_mesh {
        // Until a peer's time is heard this node's clock is one it knows may be wrong.
        core.set_claiming(now_unix_ms(), false);
        info!("clock: taking the mesh's time (--clock-from-mesh); no job is claimed before a peer's time is heard");
    }
    let started = Instant::now();
    let mut reloaded = 0usize;
    let stored = store.facts()?;
    // A restart: the stored view has every other node's lease run out, so no claim before the
    // mesh said what it did meanwhile (`CatchUp`); no claim while the facts are folded in either.
    let restarted = !stored.is_empty();
    if restarted {
        core.set_claiming(now_unix_ms(), false);
    }
    // DAGs compacted before: their tombstones first, so their facts stay out (a kill may have
    // left some in the store); their summaries are read after the start (`Cmd::Summary`): one
    // blob each, a second for a thousand DAGs, which the start need not wait for.
    let compacted = store.compacted()?;
    for (dag, summary) in &compacted {
        core.adopt_compacted(now_unix_ms(), *dag, shoal_mesh::ledger::Compacted { summary: *summary, last_ms: 0 });
    }
    let stored_ids: Vec<Hash> = stored.iter().map(|(id, _)| *id).collect();
    let mut others = false;
    for (id, bytes) in stored {
        match wire::decode::<Fact>(&bytes) {
            Ok(fact) if fact.id() == id => match fact.verified() {
                Ok(fact) => {
                    others |= fact.fact().author != node_id;
                    core.restore_fact(now_unix_ms(), fact);
                    reloaded += 1;
                }
                Err(e) => warn!(%id, "a stored fact does not verify ({e}); ignored"),
            },
            _ => warn!(%id, "a stored fact does not decode or match its id; ignored"),
        }
    }
    // Stored facts the ledger did not take back (of a compacted DAG: a kill came between a
    // compaction and the deletion of its facts; an `Alive` a later one replaced) leave the store.
    let stale: Vec<Hash> = stored_ids.into_iter().filter(|id| core.ledger().get(id).is_none()).collect();
    if !stale.is_empty() {
        store.forget_facts(&stale).await?;
        info!(facts = stale.len(), "deleted stored facts the ledger no longer holds");
    }
    let _ = core.take_replaced_facts();
    let claim_waits = ClaimWaits {
        store_full: false,
        clock: opts.clock_from_mesh,
        catch_up: CatchUp::after_restart(started.elapsed().as_millis() as u64, others, &settings),
    };
    if restarted && claim_waits.catch_up.is_none() && !claim_waits.clock {
        // Only its own facts: nobody to catch up with.
        core.set_claiming(now_unix_ms(), true);
    }
    // Facts we reload were persisted before: the core re-emits none of them, but drain what it
    // decided while folding them (claims of jobs found open).
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
    let (events, _) = broadcast::channel(EVENTS_QUEUED_MAX);
    let shared = Arc::new(Shared {
        store: store.clone(),
        blobs: blobs.clone(),
        cmds: cmd_tx,
        events,
        node: node_id,
        complete: exec::Complete::default(),
        runner,
        run: opts.run.clone(),
        explorer: opts.explorer.clone(),
        upload_bytes_max: opts.upload_bytes_max,
        dag_bytes_max: opts.dag_bytes_max,
        local_upload_bytes_max: opts.local_upload_bytes_max,
        lost_recheck_ms: opts.settings.lost_recheck_ms,
        cache_trust: opts.cache_trust.clone(),
    });
    let listener = tokio::net::TcpListener::bind(opts.http)
        .await
        .with_context(|| format!("cannot listen for the HTTP API on {} (pass --http ADDR)", opts.http))?;
    let http_addr = listener.local_addr()?;
    let guard = Arc::new(auth::Guard {
        hosts: auth::Hosts { bound: http_addr, names: opts.http_hosts.clone() },
        tokens: tokens.clone(),
        explorer_public: opts.explorer.enabled,
    });
    let app = api::router(shared.clone(), opts.test_partitions, guard);
    let http_limits = serve::HttpLimits {
        connections_max: serve::fit_connections_to_files(opts.http_limits.connections_max),
        ..opts.http_limits
    };
    tokio::spawn(serve::serve(listener, app, http_limits));
    let budget = opts.store_bytes_max.unwrap_or_else(|| budget::store_budget_default(shared.store.home()));
    tokio::spawn(budget::keep_within(shared.clone(), budget));
    tokio::spawn(uploads::keep_sending(shared.clone()));
    let read = shared.clone();
    tokio::spawn(async move {
        for (dag, summary) in compacted {
            match read.store.get_bytes(summary).await {
                Ok(Some(bytes)) => match shoal_mesh::ledger::DagSummary::from_cbor(&bytes) {
                    Ok(s) => {
                        let _ = read.cmds.send(Cmd::Summary { summary: Box::new(s) }).await;
                    }
                    Err(e) => warn!(%dag, %summary, "the summary of a compacted DAG does not decode ({e})"),
                },
                Ok(None) => debug!(%dag, %summary, "the summary of a compacted DAG is not here (a peer's word)"),
                Err(e) => warn!(%dag, %summary, "cannot read the summary of a compacted DAG: {e}"),
            }
        }
    });
    if let Some(t) = tokens {
        // When each token was last used, for `shoal token ls`: written off the request path.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(auth::USED_FLUSH_MS));
            loop {
                tick.tick().await;
                let t = t.clone();
                let _ = tokio::task::spawn_blocking(move || t.flush_used()).await;
            }
        });
    }
    info!(node = %hex::encode(node_id), peer = %net.peer_id(), http = %http_addr, facts = reloaded,
        "node started in {} ms", started.elapsed().as_millis());
    let mut node = Node {
        core,
        sync: Sync::new(&settings),
        liveness: Liveness::new(&settings),
        replicas: Replicas::new(node_id, &settings),
        net,
        shared,
        opts,
        http_addr,
        peers: BTreeMap::new(),
        connected: BTreeSet::new(),
        listen_addrs: Vec::new(),
        jobs: JoinSet::new(),
        running: BTreeMap::new(),
        dag_fetches: BTreeMap::new(),
        fetched: mpsc::channel(64),
        ctxs: BTreeMap::new(),
        to_persist: Vec::new(),
        inline_dags: Vec::new(),
        started,
        hostname: crate::machine::describe("", "").hostname,
        replications: Arc::new(tokio::sync::Semaphore::new(REPLICATIONS_IN_FLIGHT_MAX)),
        hold: hold::Holding::default(),
        refused: BTreeMap::new(),
        mesh_clock: MeshClock::new(),
        clock_warned: false,
        ahead_logged: BTreeSet::new(),
        dag_topics: topics::DagTopics::default(),
        claim_waits,
        ledger_dropped: false,
    };
    node.run(cmd_rx).await
}

struct PeerInfo {
    announce: Announce,
    /// Its capabilities, from the last announcement that carried them.
    caps: Option<Capabilities>,
}

struct Node {
    core: NodeCore,
    /// Anti-entropy with the connected peers (monotonic ms, see the module doc).
    sync: Sync,
    /// Heartbeats and which peers are alive (monotonic ms); `peers` holds what they announced.
    liveness: Liveness,
    /// Which runs' outputs this node keeps copies of.
    replicas: Replicas,
    net: Net,
    shared: Arc<Shared>,
    opts: NodeOptions,
    http_addr: SocketAddr,
    /// What the nodes heard from by announcement (and not forgotten by `liveness`) said, this
    /// one excluded.
    peers: BTreeMap<NodeId, PeerInfo>,
    connected: BTreeSet<PeerId>,
    listen_addrs: Vec<Multiaddr>,
    /// Claimed jobs being run: claim -> its task.
    jobs: JoinSet<(Hash, Finished)>,
    /// claim -> (its DAG, its task).
    running: BTreeMap<Hash, (Hash, AbortHandle)>,
    /// DAG contents being fetched (or waiting to retry): hash -> when the next try may start.
    dag_fetches: BTreeMap<Hash, Option<Instant>>,
    /// DAG contents as their fetches end, by DAG hash.
    fetched: (mpsc::Sender<FetchedDag>, mpsc::Receiver<FetchedDag>),
    /// The runs (per-DAG contexts on the runner) of the DAGs with a job running here, dropped
    /// with their last job: a node that kept every DAG's grew without end; preparing again
    /// costs microseconds (the key, machine facts, cores and work directories are the runner's).
    ctxs: BTreeMap<(Hash, bool), Arc<crate::run::Ctx>>,
    /// Facts received or made since the last persist.
    to_persist: Vec<Fact>,
    /// DAG contents that came inline with gossip, to store and hand to the core.
    inline_dags: Vec<DagText>,
    started: Instant,
    /// This machine's name, for announcements (read once).
    hostname: String,
    /// Bounds the copies being made at once.
    replications: Arc<tokio::sync::Semaphore>,
    /// Submits waiting for other nodes to hold their DAG's blobs, and the blobs this node
    /// holds for other submitters.
    hold: hold::Holding,
    /// Peers refused for their protocol, and when (Unix ms), for `shoal peers`.
    refused: BTreeMap<PeerId, (Refusal, u64)>,
    /// The peers' clocks as their announcements tell them.
    mesh_clock: MeshClock,
    /// Whether this node said that the mesh's clock disagrees with its own (once).
    clock_warned: bool,
    /// Authors whose facts were refused for a clock far ahead, each named once in the log.
    ahead_logged: BTreeSet<NodeId>,
    /// The groups of DAGs with topics of their own, and the DAGs this node watches.
    dag_topics: topics::DagTopics,
    /// What keeps this node from claiming jobs for now.
    claim_waits: ClaimWaits,
    /// Facts left the ledger outside a compaction (a peer's word that a DAG was compacted): the
    /// next step deletes them from the store.
    ledger_dropped: bool,
}

/// Why a node claims no job yet; it claims when none holds.
struct ClaimWaits {
    /// `--clock-from-mesh` and no peer's time heard yet.
    clock: bool,
    /// Restarted from stored facts naming other nodes, and not caught up with the mesh yet.
    catch_up: Option<CatchUp>,
    /// The store is over its budget with nothing left to evict (see `budget.rs`).
    store_full: bool,
}

impl Node {
    /// Claims jobs once nothing in [`ClaimWaits`] holds any more.
    fn update_claiming(&mut self) {
        if let Some(wait) = self.claim_waits.catch_up {
            let now = self.mono_ms();
            let waited = Duration::from_millis(now);
            let end = wait.poll(now, self.sync.caught_up());
            match end {
                Some(CatchUpEnd::CaughtUp) => info!(?waited, "restarted: caught up with the mesh, claiming jobs again"),
                Some(CatchUpEnd::PeersSilent) => {
                    info!(?waited, "restarted: no peer answered anti-entropy; claiming jobs from the stored view")
                }
                Some(CatchUpEnd::Alone) => warn!(
                    ?waited,
                    "restarted: no peer heard since the start; claiming jobs from the stored view alone \
                     (check this node's network and its --join addresses)"
                ),
                None => {}
            }
            if end.is_some() {
                self.claim_waits.catch_up = None;
            }
        }
        let on = !self.claim_waits.clock && self.claim_waits.catch_up.is_none() && !self.claim_waits.store_full;
        if on != self.core.claiming() {
            self.core.set_claiming(now_unix_ms(), on);
        }
    }

    /// Compacts the ledger (`NodeCore::compact`): each summary is stored before the facts it
    /// replaces are deleted (by the caller, with the replaced facts), so a kill between the two
    /// leaves both (the next start compacts again), never neither. Whether any DAG left.
    async fn compact_ledger(&mut self) -> bool {
        let summaries = self.core.compact(now_unix_ms());
        let rows = summaries.iter().map(|s| (s.dag, s.to_cbor())).collect();
        if let Err(e) = self.shared.store.put_compacted(rows).await {
            // Their facts stay stored: the next start holds the DAGs again and compacts them anew.
            warn!(dags = summaries.len(), "cannot store the summaries of compacted DAGs, keeping their facts: {e:#}");
            let _ = self.core.take_replaced_facts();
            return false;
        }
        if !summaries.is_empty() {
            info!(dags = summaries.len(), facts = self.core.ledger().len(), "compacted ended DAGs out of the ledger");
        }
        !summaries.is_empty()
    }

    /// Drops the prepared runner of `dag` once none of its jobs runs here.
    fn drop_ctx_unless_running(&mut self, dag: &Hash) {
        if !self.running.values().any(|(d, _)| d == dag) {
            self.ctxs.remove(&(*dag, false));
            self.ctxs.remove(&(*dag, true));
        }
    }

    /// Milliseconds since this node started: the clock of sync and liveness.
    fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(&mut self, mut cmds: mpsc::Receiver<Cmd>) -> Result<()> {
        let mut holds = tokio::time::interval(Duration::from_millis(hold::HOLD_TICK_MS));
        holds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = self.opts.shutdown.clone().unwrap_or_default();
        self.after_step().await;
        loop {
            let now = now_unix_ms();
            let wake = self.core.poll_timeout(now).map(|t| t.saturating_sub(now)).unwrap_or(60_000).min(60_000);
            let mono = self.mono_ms();
            let catch_up = self.claim_waits.catch_up.map(|c| c.poll_timeout());
            let mesh_wake = [self.sync.poll_timeout(), self.liveness.poll_timeout(), catch_up]
                .into_iter()
                .flatten()
                .min()
                .map_or(60_000, |t| t.saturating_sub(mono).min(60_000));
            tokio::select! {
                ev = self.net.next_event() => self.on_net(ev),
                Some(cmd) = cmds.recv() => self.on_cmd(cmd).await,
                Some(joined) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    match joined {
                        Ok((claim, result)) => {
                            if let Some((dag, _)) = self.running.remove(&claim) {
                                self.drop_ctx_unless_running(&dag);
                            }
                            match &result {
                                Finished::Failed(why) => warn!(%claim, "job failed: {why}"),
                                Finished::Lost { job, record } => warn!(%claim, upstream = job, %record,
                                    "no node holds an input any more: its job runs again, this claim is released"),
                                Finished::Done { .. } => {}
                            }
                            self.core.handle_job_finished(now_unix_ms(), claim, result);
                        }
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => warn!("a job task panicked: {e}"),
                    }
                }
                Some((hash, result)) = self.fetched.1.recv() => match result {
                    Ok(dag) => {
                        self.dag_fetches.remove(&hash);
                        self.core.handle_dag(now_unix_ms(), hash, dag);
                        self.dag_topics.dirty();
                    }
                    Err(why) => {
                        debug!(%hash, "DAG fetch failed: {why}");
                        self.dag_fetches.insert(hash, Some(Instant::now() + Duration::from_millis(DAG_FETCH_RETRY_MS)));
                    }
                },
                _ = tokio::time::sleep(Duration::from_millis(wake)) => self.core.handle_tick(now_unix_ms()),
                _ = tokio::time::sleep(Duration::from_millis(mesh_wake)) => {
                    let mono = self.mono_ms();
                    self.liveness.handle_tick(mono);
                    self.sync.handle_tick(mono, self.core.ledger());
                }
                _ = holds.tick(), if self.hold.active() => self.hold_tick().await,
                Some((dag, state)) = self.hold.updates.1.recv() => self.on_hold_update(dag, state),
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
                _ = shutdown.notified() => break,
            }
            self.after_step().await;
            if std::mem::take(&mut self.hold.dirty) {
                self.drive_submits().await;
            }
        }
        info!("node stopping");
        let _ = std::fs::remove_file(self.shared.store.home().join("node.json"));
        self.shared.store.shutdown().await;
        Ok(())
    }

    /// After every event: persist and gossip new facts, start and stop jobs, fetch DAGs, and
    /// carry out what sync, liveness and replicas decided.
    async fn after_step(&mut self) {
        let mut own = Vec::new();
        while let Some(fact) = self.core.poll_fact() {
            own.push(fact);
        }
        if !own.is_empty() {
            // Each on its topic: a DAG's own, or the mesh's (which every node follows, and which
            // carries every submit and cancel; see `topics`).
            let mut by_topic: BTreeMap<String, (Topic, Vec<Fact>)> = BTreeMap::new();
            for f in &own {
                let topic = self.topic_of(f);
                by_topic.entry(topic.name()).or_insert((topic, Vec::new())).1.push(f.clone());
            }
            for (topic, facts) in by_topic.into_values() {
                self.gossip_facts(topic, &facts).await;
            }
            self.to_persist.extend(own);
        }
        let compacted = (now_unix_ms() >= self.core.next_compact_ms() && self.compact_ledger().await)
            | std::mem::take(&mut self.ledger_dropped);
        if !self.to_persist.is_empty() || compacted {
            let facts = std::mem::take(&mut self.to_persist);
            for f in &facts {
                self.note_event(f);
            }
            let rows: Vec<(Hash, Vec<u8>)> = facts.iter().map(|f| (f.id(), wire::encode(f))).collect();
            if let Err(e) = self.shared.store.put_facts(&rows).await {
                warn!("cannot persist {} facts: {e:#}", rows.len());
            }
            // Stored after the facts that replaced them, so a kill between the two leaves both
            // (the ledger keeps the later one when it reloads them), never neither.
            let replaced = self.core.take_replaced_facts();
            if let Err(e) = self.shared.store.forget_facts(&replaced).await {
                warn!("cannot delete {} replaced facts: {e:#}", replaced.len());
            }
        }
        for d in std::mem::take(&mut self.inline_dags) {
            if self.core.dag(&d.hash).is_some() || Hash::of(d.text.as_bytes()) != d.hash {
                continue;
            }
            match shoal_dag::parse_dag(&d.hash.to_string(), &d.text) {
                Ok(dag) => {
                    let stored = self.shared.store.put_bytes(d.text.into_bytes()).await;
                    if stored.is_ok() && self.shared.store.pin(d.hash).is_ok() {
                        self.dag_fetches.remove(&d.hash);
                        self.core.handle_dag(now_unix_ms(), d.hash, dag);
                        self.dag_topics.dirty();
                    }
                }
                Err(e) => warn!(dag = %d.hash, "a DAG sent inline does not parse: {e}"),
            }
        }
        self.drive_topics();
        self.drive_mesh();
        if self.claim_waits.catch_up.is_some() {
            self.update_claiming();
        }
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Start { claim, dag, job } => self.start_job(claim, dag, job),
                Action::Stop { claim } => {
                    if let Some((dag, h)) = self.running.remove(&claim) {
                        info!(%claim, "stopping a run whose claim lost (or whose DAG was cancelled)");
                        h.abort();
                        self.drop_ctx_unless_running(&dag);
                    }
                }
            }
        }
        let now = Instant::now();
        for hash in self.core.wanted_dags(now_unix_ms()) {
            match self.dag_fetches.get(&hash) {
                Some(None) => continue,
                Some(Some(retry)) if *retry > now => continue,
                _ => {}
            }
            self.dag_fetches.insert(hash, None);
            let shared = self.shared.clone();
            let providers = self.live_peers();
            let tx = self.fetched.0.clone();
            tokio::spawn(async move {
                let result = fetch_dag(&shared, hash, &providers).await.map_err(|e| format!("{e:#}"));
                let _ = tx.send((hash, result)).await;
            });
        }
    }

    /// Gossips facts on `topic`, a message per [`wire::FACTS_PER_MESSAGE_MAX`], a submit with its
    /// DAG's text when that is small (so peers need not fetch it).
    async fn gossip_facts(&mut self, topic: Topic, facts: &[Fact]) {
        for chunk in facts.chunks(wire::FACTS_PER_MESSAGE_MAX) {
            let mut dags = Vec::new();
            for f in chunk {
                if let Body::Submit { dag, .. } = &f.body
                    && let Ok(Some(bytes)) = self.shared.store.get_bytes(*dag).await
                    && bytes.len() <= wire::DAG_INLINE_BYTES_MAX
                    && let Ok(text) = String::from_utf8(bytes.to_vec())
                {
                    dags.push(DagText { hash: *dag, text });
                }
            }
            let batch = FactBatch { v: self.opts.protocol, facts: chunk.to_vec(), dags };
            if let Err(e) = self.net.publish(topic, wire::encode(&batch)) {
                debug!("gossip: {e} (anti-entropy will carry it)");
            }
        }
    }

    /// Sends what the mesh machines decided: heartbeats, anti-entropy requests, copies of other
    /// nodes' outputs to keep; tells the core about forgotten peers.
    fn drive_mesh(&mut self) {
        let mono = self.mono_ms();
        while let Some(beat) = self.liveness.poll_heartbeat(mono) {
            self.announce(beat);
        }
        let mut forgot = false;
        while let Some(node) = self.liveness.poll_forgotten() {
            // Forget peers long gone, so ranks and providers stay among the living.
            self.peers.remove(&node);
            self.mesh_clock.forget(&node);
            forgot = true;
        }
        if forgot {
            let live = self.live_peers();
            self.core.handle_peers(now_unix_ms(), live);
        }
        while let Some((node, req)) = self.sync.poll_request() {
            let Some(peer) = peer_id_of_node(&node) else { continue };
            match &req {
                SyncReq::Get { ids } => debug!(%peer, n = ids.len(), "anti-entropy: fetching facts we lack"),
                SyncReq::Put { facts } => debug!(%peer, n = facts.len(), "anti-entropy: pushing facts the peer lacks"),
                _ => {}
            }
            self.net.request(&peer, SyncRequest(wire::encode(&req)));
        }
        while let Some(copy) = self.replicas.poll_copy() {
            self.replicate(copy);
        }
    }

    /// Keeps a copy of the outputs of a run finished elsewhere (see [`Replicas`]).
    fn replicate(&mut self, Copy { record, providers }: Copy) {
        let shared = self.shared.clone();
        let permits = self.replications.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire().await else { return };
            match exec::replicate(&shared, record, &providers).await {
                Ok(bytes) => debug!(%record, bytes, "kept a copy of a run's outputs"),
                Err(e) => warn!(%record, "cannot keep a copy of a run's outputs: {e:#}"),
            }
        });
    }

    /// Live peers' node ids, freshest first.
    fn live_peers(&self) -> Vec<NodeId> {
        self.liveness.live(self.mono_ms())
    }

    fn start_job(&mut self, claim: Hash, dag_hash: Hash, job: String) {
        let Some(dag) = self.core.dag(&dag_hash).cloned() else {
            self.core.handle_job_finished(
                now_unix_ms(),
                claim,
                Finished::Failed("this node lost the DAG's content".into()),
            );
            return;
        };
        let Some(idx) = dag.jobs.iter().position(|j| j.id == job) else {
            self.core.handle_job_finished(
                now_unix_ms(),
                claim,
                Finished::Failed(format!("the DAG has no job `{job}`")),
            );
            return;
        };
        let now = now_unix_ms();
        let deps = dag.all_dependencies();
        let mut upstream = Vec::new();
        for &d in &deps[idx] {
            let dep = &dag.jobs[d].id;
            match self.core.ledger().job_state(&dag_hash, dep, now) {
                Some(JobState::Done { record, node, .. }) => upstream.push((dep.clone(), record, node)),
                _ => {
                    self.core.handle_job_finished(
                        now_unix_ms(),
                        claim,
                        Finished::Failed(format!("dependency `{dep}` is not done in this node's view")),
                    );
                    return;
                }
            }
        }
        // Under the DAG's quorum a run that confirms another node's is made afresh: an answer
        // from a cache would be that node's result again, or this node's, agreeing with itself.
        let confirming = self.core.ledger().confirming(&dag_hash, &job, now);
        let ctx = match self.ctxs.get(&(dag_hash, confirming)) {
            Some(c) => c.clone(),
            None => {
                let mut opts = self.opts.run.clone();
                opts.json = true;
                opts.use_cache &= !confirming;
                let source = RunSource {
                    remote_cache: Some(Arc::new(exec::MeshCache(self.shared.clone()))),
                    mesh_dag: Some(dag_hash),
                    ..RunSource::default()
                };
                let c = self.shared.runner.prepare(dag, PathBuf::new(), &opts, source);
                self.ctxs.insert((dag_hash, confirming), c.clone());
                c
            }
        };
        info!(%claim, dag = %dag_hash, job, "starting");
        let shared = self.shared.clone();
        let peers = self.live_peers();
        let stale = self.core.ledger().lost_records(&dag_hash, &job);
        let handle = self.jobs.spawn(async move {
            let result = exec::run_claimed(&shared, &ctx, dag_hash, idx, &upstream, &peers, &stale).await;
            (claim, result)
        });
        self.running.insert(claim, (dag_hash, handle));
    }
}

/// A DAG's content by its hash: from this store, or fetched from peers.
async fn fetch_dag(shared: &Shared, hash: Hash, providers: &[NodeId]) -> Result<Dag> {
    if !shared.store.has(hash).await? {
        shared.blobs.fetch(hash, providers).await?;
    }
    let bytes = shared.store.need_bytes(hash).await?;
    let text = std::str::from_utf8(&bytes).context("the DAG blob is not UTF-8")?;
    let dag = shoal_dag::parse_dag(&hash.to_string(), text).map_err(|d| anyhow!("the DAG blob does not parse: {d}"))?;
    shared.store.pin(hash)?;
    Ok(dag)
}
