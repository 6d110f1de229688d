//! `shoal node`: one peer of a mesh. It drives the sans-IO machines of `shoal-mesh` (the
//! scheduler [`NodeCore`], anti-entropy [`Sync`], heartbeats and the failure detector
//! [`Liveness`], the choice of replica holders [`Replicas`], the lost-output policy) from one
//! `tokio::select!` loop that owns them: it only moves bytes and time in and out of them, around
//! the libp2p swarm (facts and announcements by gossipsub, anti-entropy by request-response), the
//! iroh endpoint serving this store's blobs, the job executor, and the HTTP API, which talks to
//! the loop only through [`Cmd`]s.
//!
//! Two clocks: the scheduler core gets Unix ms (its hybrid logical clock and leases are shared
//! with other nodes); sync and liveness get ms since this node started (a monotonic clock, so a
//! change of the wall clock never makes every peer look dead).
//!
//! # Layout
//! - this file: options, start-up (identity, mesh key, ledger reloaded from sled) and the loop.
//! - `api`: the HTTP API (axum) and the commands it sends the loop.
//! - `auth`: who may use it: Host and Origin, body types, bearer tokens and their scopes.
//! - `exec`: runs one claimed job: fetches its DAG's upstream records, inputs and image from
//!   peers, then runs it as `shoal run` does.
//! - `pin`: turns a submitted DAG into one whose every reference is a hash.
//! - `hold`: before a submit is acknowledged, other nodes hold the blobs the DAG needs.
//! - `local`: the routes a CLI uses on the home this node holds (`shoal run`, `get`, `image`...).

mod api;
pub mod auth;
mod exec;
mod hold;
mod local;
pub mod pin;
pub mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use crate::clock::now_unix_ms;

use crate::mesh::net::{Net, NetConfig, NetEvent, SyncRequest, SyncResponse, Topic};
use anyhow::{Context, Result, anyhow, bail};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use shoal_blobs::Store;
use shoal_blobs::net::{BlobNode, BlobPeer};
use shoal_dag::{Dag, Hash};
use shoal_mesh::Settings;
use shoal_mesh::capabilities::Capabilities;
use shoal_mesh::core::{Action, Finished, NodeCore};
use shoal_mesh::ledger::{Body, Fact, JobState, NodeId};
use shoal_mesh::liveness::{Heartbeat, Liveness};
use shoal_mesh::lost::{self, Unfetchable, Verdict};
use shoal_mesh::replicas::{Copy, Replicas};
use shoal_mesh::sync::{Inbound, Sync};
use shoal_mesh::wire::{self, Announce, DagText, FactBatch, SyncReq, SyncResp, WIRE_VERSION};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::identity;
use crate::run::{BackendChoice, RunOptions, RunSource, Runner};

/// Peers a node dials directly when it hears of them (beyond these it relies on gossip relaying).
const DIRECT_PEERS_MAX: usize = 32;
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
    pub run: RunOptions,
    pub labels: BTreeMap<String, String>,
    /// Speed per core announced to the mesh (see `Capabilities::speed`); None measures it.
    pub speed: Option<u32>,
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
}

/// `--upload-size-max` unless told otherwise, bytes.
pub const UPLOAD_BYTES_MAX_DEFAULT: u64 = 4 << 30;
/// `--dag-size-max` (and `shoal run`'s) unless told otherwise, bytes: a DAG file's located parse
/// takes about 8 times its size in memory.
pub const DAG_BYTES_MAX_DEFAULT: usize = 16 << 20;

pub use local::LOCAL_UPLOAD_BYTES_MAX_DEFAULT;

/// What the API asks of the loop; each is answered on its `reply` channel.
pub(crate) enum Cmd {
    /// A pinned DAG (stored as a blob already) to submit from here; answered once other nodes
    /// hold the blobs it needs (or none is connected) and the Submit fact is durable, or with
    /// why the blobs could not be copied (then nothing was submitted).
    Submit {
        hash: Hash,
        dag: Dag,
        max_attempts: u32,
        reply: oneshot::Sender<Result<SubmitAck, String>>,
    },
    /// The ledger's view: of one DAG (with every run of each job), or of all.
    Status {
        dag: Option<Hash>,
        reply: oneshot::Sender<StatusView>,
    },
    Cancel {
        dag: Hash,
        reply: oneshot::Sender<bool>,
    },
    /// Every fact about each job of one DAG, in clock order; None if the ledger has no such DAG.
    Facts {
        dag: Hash,
        reply: oneshot::Sender<Option<BTreeMap<String, Vec<FactView>>>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerView>>,
    },
    /// Counters for `/v1/metrics`.
    Metrics {
        reply: oneshot::Sender<serde_json::Value>,
    },
    /// Test-only (`--test-partitions`): refuse (or accept again) these peers at the swarm.
    Block {
        peers: Vec<PeerId>,
        block: bool,
        reply: oneshot::Sender<()>,
    },
    /// Who may hold the blobs of a run record: its runner first, then every live peer.
    Providers {
        first: Option<NodeId>,
        reply: oneshot::Sender<Vec<NodeId>>,
    },
    /// A completion's outputs could be fetched from no live peer: reported lost, so the job runs
    /// again, when `shoal_mesh::lost::judge` says so (not if its runner is alive: then the failure
    /// is taken as passing). Answers whether it was reported.
    Lost {
        output: Unfetchable,
        reply: oneshot::Sender<bool>,
    },
}

/// An acknowledged submit.
#[derive(Clone, Debug)]
pub(crate) struct SubmitAck {
    /// The other nodes that hold every blob the DAG needs; empty when no other node was
    /// connected (the DAG then depends on this node until a peer has fetched them).
    pub holders: Vec<NodeId>,
}

/// The ledger's view as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StatusView {
    pub node: String,
    pub dags: BTreeMap<String, DagView>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DagView {
    pub jobs: BTreeMap<String, JobView>,
    /// Whether this node has the DAG's content (it fetches it by hash).
    pub known: bool,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct JobView {
    /// open, claimed, done, failed, cancelled, or unschedulable.
    pub state: &'static str,
    pub node: Option<String>,
    pub record: Option<Hash>,
    pub failures: Vec<String>,
    /// Every run record reported done for the job, when more than one run finished (a race or
    /// a partition): equal outputs are one result, unequal ones a non-deterministic job.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<DoneRun>,
    /// Set by the API once it compared the runs' outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nondeterministic: Option<bool>,
    /// Why no node of the mesh can run it, when none can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One fact about a job, as `/v1/dags/{dag}/facts` shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FactView {
    /// claim, renew, done, fail, lost or release.
    pub kind: &'static str,
    /// Its author.
    pub node: String,
    /// Its hybrid logical clock: its author's wall clock (Unix ms) and a counter.
    pub at_unix_ms: u64,
    pub counter: u32,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DoneRun {
    pub node: String,
    pub record: Hash,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PeerView {
    pub node: String,
    pub peer_id: String,
    pub hostname: String,
    pub me: bool,
    pub connected: bool,
    /// None until an announcement with capabilities arrived.
    pub caps: Option<Capabilities>,
    pub http: Option<String>,
    pub running: u32,
    pub free_cores: u32,
    pub facts: u64,
    pub last_seen_ms_ago: u64,
}

/// A change the ledger saw, for `shoal watch` (SSE).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    pub kind: &'static str,
    pub dag: Hash,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the fact was made, by its author's clock (its HLC's wall time, Unix ms).
    pub at_unix_ms: u64,
}

/// CPU this process has used: (user, system) ms.
fn cpu_ms() -> (u64, u64) {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    // RUSAGE_SELF cannot fail; zeros if it somehow did.
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|ru| (ru.user_time().num_milliseconds() as u64, ru.system_time().num_milliseconds() as u64))
        .unwrap_or_default()
}

/// The libp2p peer id of a node id (both are the node's ed25519 public key).
pub(crate) fn peer_id_of_node(node: &NodeId) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(node).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// The node id of a libp2p peer id, when it names an ed25519 key (an identity multihash of the
/// key's protobuf encoding, as every shoal node's does).
pub(crate) fn node_of_peer(peer: &PeerId) -> Option<NodeId> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

/// The mesh key: 32 bytes in libp2p's pre-shared key file format.
pub fn read_mesh_key(path: &std::path::Path) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no mesh key at {}: create one with `shoal mesh init` and copy it to every node of the mesh \
             (or pass --mesh-key PATH)",
            path.display()
        )
    })?;
    crate::mesh::net::parse_psk(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Writes a fresh mesh key (32 random bytes in libp2p's key file format), mode 0600, atomically.
pub fn write_mesh_key(path: &std::path::Path) -> Result<()> {
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    crate::identity::write_private(path, crate::mesh::net::format_psk(&key).as_bytes())
}

/// Everything the loop's helpers share with the API.
pub(crate) struct Shared {
    pub store: Store,
    pub blobs: Arc<BlobNode>,
    pub cmds: mpsc::Sender<Cmd>,
    pub events: broadcast::Sender<Event>,
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
    })
    .context("starting the mesh network")?;
    let blobs = Arc::new(store.serve_blobs(key.to_bytes(), opts.blobs).await.context("starting the blob endpoint")?);
    // The cores announced to the mesh are the runner's budget, which explorer and local runs share.
    let runner = Runner::new(&store, &opts.run)?;
    let machine = runner.machine();
    let caps = Capabilities {
        arch: crate::machine::dag_arch(),
        cores: runner.cores_total(),
        memory_bytes: machine.memory_bytes,
        cpu_flags: machine.cpu_flags.iter().cloned().collect(),
        gpus: Vec::new(),
        labels: opts.labels.clone(),
        microvm: opts.run.backend == BackendChoice::Microvm,
        speed: opts.speed.unwrap_or_else(crate::machine::core_speed),
    };
    let settings = opts.settings.clone();
    let mut core = NodeCore::with_config(key.clone(), caps, settings.core);
    let started = Instant::now();
    let mut reloaded = 0usize;
    for (id, bytes) in store.facts()? {
        match wire::decode::<Fact>(&bytes) {
            Ok(fact) if fact.id() == id => {
                if core.handle_fact(now_unix_ms(), fact).is_ok() {
                    reloaded += 1;
                }
            }
            _ => warn!(%id, "a stored fact does not decode or match its id; ignored"),
        }
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
    ctxs: BTreeMap<Hash, Arc<crate::run::Ctx>>,
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
}

impl Node {
    /// Drops the prepared runner of `dag` once none of its jobs runs here.
    fn drop_ctx_unless_running(&mut self, dag: &Hash) {
        if !self.running.values().any(|(d, _)| d == dag) {
            self.ctxs.remove(dag);
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
            let mesh_wake = [self.sync.poll_timeout(), self.liveness.poll_timeout()]
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
            for chunk in own.chunks(wire::FACTS_PER_MESSAGE_MAX) {
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
                let batch = FactBatch { v: WIRE_VERSION, facts: chunk.to_vec(), dags };
                if let Err(e) = self.net.publish(Topic::Facts, wire::encode(&batch)) {
                    debug!("gossip: {e} (anti-entropy will carry it)");
                }
            }
            self.to_persist.extend(own);
        }
        if !self.to_persist.is_empty() {
            let facts = std::mem::take(&mut self.to_persist);
            for f in &facts {
                self.note_event(f);
            }
            let rows: Vec<(Hash, Vec<u8>)> = facts.iter().map(|f| (f.id(), wire::encode(f))).collect();
            if let Err(e) = self.shared.store.put_facts(&rows).await {
                warn!("cannot persist {} facts: {e:#}", rows.len());
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
                    }
                }
                Err(e) => warn!(dag = %d.hash, "a DAG sent inline does not parse: {e}"),
            }
        }
        self.drive_mesh();
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

    fn note_event(&self, fact: &Fact) {
        let node = hex::encode(fact.author);
        let at = fact.hlc.wall_ms;
        let claim_job = |claim: &Hash| match self.core.ledger().get(claim).map(|f| &f.body) {
            Some(Body::Claim { dag, job, .. }) => Some((*dag, job.clone())),
            _ => None,
        };
        let event = match &fact.body {
            Body::Submit { dag, jobs, .. } => Event {
                kind: "submitted",
                dag: *dag,
                job: None,
                node,
                detail: Some(format!("{} jobs", jobs.len())),
                at_unix_ms: at,
            },
            Body::Claim { dag, job, .. } => {
                Event { kind: "claimed", dag: *dag, job: Some(job.clone()), node, detail: None, at_unix_ms: at }
            }
            Body::Done { claim, record, .. } => match claim_job(claim) {
                Some((dag, job)) => {
                    Event { kind: "done", dag, job: Some(job), node, detail: Some(record.to_string()), at_unix_ms: at }
                }
                None => return,
            },
            Body::Fail { claim, reason } => match claim_job(claim) {
                Some((dag, job)) => {
                    Event { kind: "failed", dag, job: Some(job), node, detail: Some(reason.clone()), at_unix_ms: at }
                }
                None => return,
            },
            Body::Cancel { dag } => {
                Event { kind: "cancelled", dag: *dag, job: None, node, detail: None, at_unix_ms: at }
            }
            Body::Lost { dag, job, record } => Event {
                kind: "lost",
                dag: *dag,
                job: Some(job.clone()),
                node,
                detail: Some(format!("no node holds the outputs of {record}: the job runs again")),
                at_unix_ms: at,
            },
            Body::Release { claim } => match claim_job(claim) {
                Some((dag, job)) => Event { kind: "released", dag, job: Some(job), node, detail: None, at_unix_ms: at },
                None => return,
            },
            Body::Renew { .. } => return,
        };
        let _ = self.shared.events.send(event);
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
        let ctx = match self.ctxs.get(&dag_hash) {
            Some(c) => c.clone(),
            None => {
                let mut opts = self.opts.run.clone();
                opts.json = true;
                let c = self.shared.runner.prepare(dag, PathBuf::new(), &opts, RunSource::default());
                self.ctxs.insert(dag_hash, c.clone());
                c
            }
        };
        info!(%claim, dag = %dag_hash, job, "starting");
        let shared = self.shared.clone();
        let peers = self.live_peers();
        let stale = self.core.ledger().lost_records(&dag_hash, &job);
        let handle = self.jobs.spawn(async move {
            let result = exec::run_claimed(&shared, &ctx, idx, &upstream, &peers, &stale).await;
            (claim, result)
        });
        self.running.insert(claim, (dag_hash, handle));
    }

    fn on_net(&mut self, ev: NetEvent) {
        let now = now_unix_ms();
        match ev {
            NetEvent::Listening(addr) => {
                self.listen_addrs.push(addr);
                self.write_ready_file();
            }
            NetEvent::Connected(peer) => {
                self.connected.insert(peer);
                // It passed pnet (the mesh key) and noise (its id): a member, so it may fetch
                // this node's blobs.
                if let Some(node) = node_of_peer(&peer) {
                    self.shared.blobs.admit(&node);
                    self.sync.handle_connected(self.mono_ms(), node);
                }
                self.liveness.handle_connected(self.mono_ms());
            }
            NetEvent::Disconnected(peer) => {
                self.connected.remove(&peer);
                if let Some(node) = node_of_peer(&peer) {
                    self.sync.handle_disconnected(self.mono_ms(), node);
                }
            }
            NetEvent::Gossip { topic: Topic::Facts, from, data } => match wire::decode::<FactBatch>(&data) {
                Ok(batch) if batch.v == WIRE_VERSION => {
                    self.take_facts(now, batch.facts, &from);
                    self.inline_dags.extend(batch.dags);
                }
                Ok(_) => debug!(%from, "a fact batch of another wire version; ignored"),
                Err(e) => warn!(%from, "{e}"),
            },
            NetEvent::Gossip { topic: Topic::Caps, from, data } => match wire::decode::<Announce>(&data) {
                Ok(a) if a.v == WIRE_VERSION => {
                    if peer_id_of_node(&a.node) != Some(from) {
                        warn!(%from, "an announcement for another node's id; ignored");
                        return;
                    }
                    self.shared.blobs.add_peer(&BlobPeer { id: a.node, addrs: a.blob_addrs.clone() });
                    // Signed by its author and carried only over connections that passed pnet: the
                    // author is a member (this reaches peers we have no direct connection to),
                    // unless `--allow` leaves it out of this node's mesh.
                    if self.opts.allow.as_ref().is_none_or(|allow| allow.contains(&from)) {
                        self.shared.blobs.admit(&a.node);
                    }
                    // Gossip reached us through others: connect directly, so the mesh stays
                    // whole when the node everyone joined through leaves.
                    if !self.connected.contains(&from) && self.connected.len() < DIRECT_PEERS_MAX {
                        for addr in a.listen.iter().filter_map(|t| t.parse::<Multiaddr>().ok()) {
                            let addr = addr.with_p2p(from).unwrap_or_else(|a| a);
                            if let Err(e) = self.net.dial(addr) {
                                debug!(%from, "cannot dial an announced address: {e}");
                            }
                        }
                    }
                    let node = a.node;
                    // A new peer also gets a heartbeat of ours at once (`drive_mesh`).
                    let new = self.liveness.handle_heard(self.mono_ms(), node);
                    let had_caps = self.peers.get(&node).and_then(|p| p.caps.as_ref()).is_some();
                    let caps = a.caps.clone().or_else(|| self.peers.get(&a.node).and_then(|p| p.caps.clone()));
                    self.peers.insert(a.node, PeerInfo { announce: a, caps });
                    if had_caps != self.peers.get(&node).and_then(|p| p.caps.as_ref()).is_some() || new {
                        let caps: Vec<(NodeId, Capabilities)> =
                            self.peers.iter().filter_map(|(n, p)| Some((*n, p.caps.clone()?))).collect();
                        self.core.handle_peer_caps(now, caps);
                    }
                    if new {
                        let live = self.live_peers();
                        self.core.handle_peers(now, live);
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(%from, "{e}"),
            },
            NetEvent::Request { peer, request, channel } => {
                let resp = match wire::decode::<SyncReq>(&request.0) {
                    // Answered once held, or with its progress a moment later.
                    Ok(SyncReq::Hold { dag }) => return self.hold(dag, &peer, channel),
                    Ok(req) => match self.sync.handle_request(self.mono_ms(), self.core.ledger(), req) {
                        Inbound::Answer(resp) => resp,
                        Inbound::Store(facts) => {
                            let (added, refused) = self.take_facts(now, facts, &peer);
                            SyncResp::Stored { added, refused }
                        }
                    },
                    Err(e) => SyncResp::Refused { reason: e.to_string() },
                };
                self.net.respond(channel, SyncResponse(wire::encode(&resp)));
            }
            NetEvent::Response { peer, id, response } => {
                if let Some((dag, node)) = self.hold.requests.remove(&id) {
                    self.on_hold_response(dag, node, &response.0);
                } else {
                    self.on_sync_response(now, &peer, &response.0);
                }
            }
            NetEvent::RequestFailed { peer, id, error } => {
                if let Some((dag, node)) = self.hold.requests.remove(&id) {
                    self.hold_failed(dag, node, format!("the request failed: {error}"));
                } else {
                    debug!(%peer, "sync request failed: {error}");
                }
            }
        }
    }

    fn take_facts(&mut self, now: u64, facts: Vec<Fact>, from: &PeerId) -> (u64, u64) {
        let (mut added, mut refused) = (0, 0);
        for fact in facts {
            let id = fact.id();
            if self.core.ledger().get(&id).is_some() {
                continue;
            }
            match self.core.handle_fact(now, fact.clone()) {
                Ok(()) => {
                    added += 1;
                    if let Body::Done { record, .. } = &fact.body {
                        let live = self.live_peers();
                        self.replicas.handle_done(self.mono_ms(), *record, fact.author, &live);
                    }
                    self.to_persist.push(fact);
                }
                Err(e) => {
                    refused += 1;
                    warn!(%from, "refused a fact: {e}");
                }
            }
        }
        (added, refused)
    }

    fn on_sync_response(&mut self, now: u64, peer: &PeerId, bytes: &[u8]) {
        let resp = match wire::decode::<SyncResp>(bytes) {
            Ok(r) => r,
            Err(e) => return warn!(%peer, "{e}"),
        };
        if let SyncResp::Refused { reason } = &resp {
            warn!(%peer, "the peer refused our sync request: {reason}");
        }
        let Some(node) = node_of_peer(peer) else { return };
        let facts = self.sync.handle_response(self.mono_ms(), self.core.ledger(), node, resp);
        if !facts.is_empty() {
            self.take_facts(now, facts, peer);
        }
    }

    fn announce(&mut self, beat: Heartbeat) {
        let ledger = self.core.ledger();
        let a = Announce {
            v: WIRE_VERSION,
            node: self.core.id(),
            hostname: self.hostname.clone(),
            caps: beat.with_caps.then(|| self.core.caps().clone()),
            blob_addrs: self.shared.blobs.me().addrs,
            listen: self.listen_addrs.iter().map(ToString::to_string).collect(),
            http: Some(format!("http://{}", self.http_addr)),
            running: self.core.running_count() as u32,
            free_cores: self.core.free_cores(),
            facts: ledger.len() as u64,
            ledger_digest: ledger.digest(),
            sent_unix_ms: now_unix_ms(),
        };
        if let Err(e) = self.net.publish(Topic::Caps, wire::encode(&a)) {
            debug!("announce: {e}");
        }
    }

    /// Writes where this node listens to `$SHOAL_HOME/node.json` (so local commands find it) and
    /// to `--ready-file`.
    fn write_ready_file(&self) {
        let ready = serde_json::json!({
            "node": hex::encode(self.core.id()),
            "peer_id": self.net.peer_id().to_string(),
            "listen": self.listen_addrs.iter().map(|a| format!("{a}/p2p/{}", self.net.peer_id())).collect::<Vec<_>>(),
            "http": format!("http://{}", self.http_addr),
            "blobs": self.shared.blobs.me().addrs,
        });
        let home_file = self.shared.store.home().join("node.json");
        for path in std::iter::once(&home_file).chain(self.opts.ready_file.as_ref()) {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, format!("{ready}\n")).and_then(|()| std::fs::rename(&tmp, path)).is_err() {
                warn!("cannot write {}", path.display());
            }
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        let now = now_unix_ms();
        match cmd {
            Cmd::Submit { hash, dag, max_attempts, reply } => self.start_submit(hash, dag, max_attempts, reply).await,
            Cmd::Status { dag, reply } => {
                let _ = reply.send(self.status_view(now, dag));
            }
            Cmd::Cancel { dag, reply } => {
                let known = self.core.ledger().has_dag(&dag);
                if known {
                    self.core.cancel(now, dag);
                    self.after_step().await;
                }
                let _ = reply.send(known);
            }
            Cmd::Peers { reply } => {
                let _ = reply.send(self.peer_views());
            }
            Cmd::Facts { dag, reply } => {
                let ledger = self.core.ledger();
                let view = ledger.has_dag(&dag).then(|| {
                    let fact = |f: &&Fact| FactView {
                        kind: f.body.kind(),
                        node: hex::encode(f.author),
                        at_unix_ms: f.hlc.wall_ms,
                        counter: f.hlc.counter,
                    };
                    ledger
                        .history(&dag)
                        .into_iter()
                        .map(|(job, facts)| (job, facts.iter().map(fact).collect()))
                        .collect()
                });
                let _ = reply.send(view);
            }
            Cmd::Metrics { reply } => {
                let (bytes_in, bytes_out) = self.net.traffic();
                let (user_ms, sys_ms) = cpu_ms();
                let _ = reply.send(serde_json::json!({
                    "node": hex::encode(self.core.id()),
                    "uptime_ms": self.started.elapsed().as_millis() as u64,
                    "cpu_user_ms": user_ms,
                    "cpu_sys_ms": sys_ms,
                    "libp2p_bytes_in": bytes_in,
                    "libp2p_bytes_out": bytes_out,
                    "facts": self.core.ledger().len(),
                    // Equal on two nodes exactly when they hold the same facts (the soak compares them).
                    "ledger_digest": self.core.ledger().digest().to_string(),
                    "peers_live": self.live_peers().len(),
                    "connected": self.connected.len(),
                    "running": self.core.running_count(),
                    // DAGs whose run (context on the runner) this node keeps: those with a job running here.
                    "prepared_dags": self.ctxs.len(),
                    // Runs alive on this node's runner, of every kind: mesh DAGs, explorer and local runs.
                    "runs_live": self.shared.runner.runs_live(),
                }));
            }
            Cmd::Block { peers, block, reply } => {
                for p in peers {
                    if block {
                        self.net.block(p);
                    } else {
                        self.net.unblock(p);
                    }
                }
                if !block {
                    for a in self.opts.join.clone() {
                        let _ = self.net.dial(a);
                    }
                }
                let _ = reply.send(());
            }
            Cmd::Lost { output, reply } => {
                let verdict = lost::judge(self.core.ledger(), now, self.core.id(), &self.live_peers(), &output);
                let report = verdict == Verdict::Report;
                if report {
                    let Unfetchable { dag, job, record, .. } = output;
                    warn!(%dag, job, %record, "no live peer holds a job's outputs: reporting them lost");
                    self.core.report_lost(now, dag, job, record);
                    self.after_step().await;
                }
                let _ = reply.send(report);
            }
            Cmd::Providers { first, reply } => {
                let mut list: Vec<NodeId> = first.into_iter().collect();
                list.extend(self.live_peers().into_iter().filter(|p| Some(*p) != first));
                let _ = reply.send(list);
            }
        }
    }

    /// Every DAG's jobs, or one DAG's with every run of each job (which costs a pass over the facts).
    fn status_view(&self, now: u64, only: Option<Hash>) -> StatusView {
        let ledger = self.core.ledger();
        let dag_states: BTreeMap<Hash, shoal_mesh::ledger::DagState> = match only {
            Some(d) => ledger.dag_state(&d, now).map(|s| (d, s)).into_iter().collect(),
            None => ledger.state(now).dags,
        };
        let mesh: Vec<(String, Capabilities)> =
            std::iter::once((hex::encode(self.core.id()), self.core.caps().clone()))
                .chain(
                    self.live_peers()
                        .iter()
                        .filter_map(|n| self.peers.get(n).and_then(|p| Some((hex::encode(n), p.caps.clone()?)))),
                )
                .collect();
        // Every Done of every job of the one DAG asked for (the fold keeps only the winner).
        let none = BTreeSet::new();
        let mut done_runs: BTreeMap<(Hash, String), Vec<DoneRun>> = BTreeMap::new();
        let mut lost: BTreeSet<Hash> = BTreeSet::new();
        for f in ledger.missing_from(&none).filter(|_| only.is_some()) {
            if let Body::Lost { dag, record, .. } = &f.body
                && Some(*dag) == only
            {
                lost.insert(*record);
            }
            if let Body::Done { claim, record, .. } = &f.body
                && let Some(c) = ledger.get(claim)
                && c.author == f.author
                && let Body::Claim { dag, job, .. } = &c.body
                && Some(*dag) == only
            {
                let runs = done_runs.entry((*dag, job.clone())).or_default();
                if !runs.iter().any(|r| r.record == *record) {
                    runs.push(DoneRun { node: hex::encode(f.author), record: *record });
                }
            }
        }
        let mut dags = BTreeMap::new();
        for (hash, ds) in dag_states {
            let dag = self.core.dag(&hash);
            let mut jobs = BTreeMap::new();
            for (id, js) in ds.jobs {
                let (state, node, record, failures) = match js {
                    JobState::Open { failures } => ("open", None, None, failures),
                    JobState::Claimed { node, failures, .. } => ("claimed", Some(hex::encode(node)), None, failures),
                    JobState::Done { node, record, .. } => ("done", Some(hex::encode(node)), Some(record), vec![]),
                    JobState::Failed { failures } => ("failed", None, None, failures),
                    JobState::Cancelled => ("cancelled", None, None, vec![]),
                };
                let reason = if state == "open" {
                    dag.and_then(|d| d.jobs.iter().find(|j| j.id == id))
                        .and_then(|j| shoal_mesh::capabilities::unschedulable(&j.requirements, &mesh))
                } else {
                    None
                };
                let state = if reason.is_some() { "unschedulable" } else { state };
                let mut runs = done_runs.remove(&(hash, id.clone())).unwrap_or_default();
                runs.retain(|r| !lost.contains(&r.record));
                let runs = if runs.len() > 1 { runs } else { Vec::new() };
                jobs.insert(id, JobView { state, node, record, failures, runs, nondeterministic: None, reason });
            }
            dags.insert(hash.to_string(), DagView { jobs, known: dag.is_some() });
        }
        StatusView { node: hex::encode(self.core.id()), dags }
    }

    fn peer_views(&self) -> Vec<PeerView> {
        let ledger = self.core.ledger();
        let me = PeerView {
            node: hex::encode(self.core.id()),
            peer_id: self.net.peer_id().to_string(),
            hostname: self.hostname.clone(),
            me: true,
            connected: true,
            caps: Some(self.core.caps().clone()),
            http: Some(format!("http://{}", self.http_addr)),
            running: self.core.running_count() as u32,
            free_cores: self.core.free_cores(),
            facts: ledger.len() as u64,
            last_seen_ms_ago: 0,
        };
        let others = self.peers.iter().map(|(id, p)| {
            let peer_id = peer_id_of_node(id);
            PeerView {
                node: hex::encode(id),
                peer_id: peer_id.map(|p| p.to_string()).unwrap_or_default(),
                hostname: p.announce.hostname.clone(),
                me: false,
                connected: peer_id.is_some_and(|p| self.connected.contains(&p)),
                caps: p.caps.clone(),
                http: p.announce.http.clone(),
                running: p.announce.running,
                free_cores: p.announce.free_cores,
                facts: p.announce.facts,
                last_seen_ms_ago: self.liveness.last_heard(id).map_or(0, |t| self.mono_ms().saturating_sub(t)),
            }
        });
        std::iter::once(me).chain(others).collect()
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
